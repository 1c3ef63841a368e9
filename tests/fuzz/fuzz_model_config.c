/* fuzz_model_config.c — libFuzzer target for config.json parsing, the model's reader of an
 * untrusted model directory's configuration.
 *
 * The input is parsed as a config file; when it parses, it is written back (Hugging Face form)
 * and parsed again, which must succeed and give the same configuration. Needs only config.c and
 * json-c, e.g.
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -I. \
 *     tests/fuzz/fuzz_model_config.c model/config.c -ljson-c -lm */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/model.h"

static bool same(const struct model_config *a, const struct model_config *b)
{
    if (a->arch != b->arch || a->vocab_size != b->vocab_size || a->hidden != b->hidden ||
        a->layers != b->layers || a->heads != b->heads || a->kv_heads != b->kv_heads ||
        a->head_dim != b->head_dim || a->ffn != b->ffn || a->max_positions != b->max_positions ||
        memcmp(&a->norm_eps, &b->norm_eps, sizeof(float)) != 0 ||
        a->tie_embeddings != b->tie_embeddings || a->norm != b->norm || a->act != b->act ||
        a->task != b->task || a->pooling != b->pooling || a->num_labels != b->num_labels ||
        a->seq_length != b->seq_length || a->tgt_seq_length != b->tgt_seq_length ||
        strcmp(a->tokenizer.header_mode, b->tokenizer.header_mode) != 0 ||
        a->tokenizer.stride != b->tokenizer.stride ||
        a->tokenizer.tokens_per_packet != b->tokenizer.tokens_per_packet ||
        a->tokenizer.packets != b->tokenizer.packets ||
        a->tokenizer.sep_between_packets != b->tokenizer.sep_between_packets ||
        strcmp(a->tokenizer.vocab, b->tokenizer.vocab) != 0)
        return false;
    /* rope_theta is part of the Qwen2 form only */
    if (a->arch == MODEL_ARCH_QWEN2 && memcmp(&a->rope_theta, &b->rope_theta, sizeof(double)))
        return false;
    for (uint32_t i = 0; i < a->num_labels; i++)
        if (strcmp(a->labels[i], b->labels[i]) != 0)
            return false;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[64];
    if (!path[0]) /* tmpfs when there is one: the writer fsyncs every file */
        snprintf(path, sizeof(path), "%s/fuzz_model_config.%ld.json",
                 access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp", (long)getpid());
    char err[256];
    memset(err, 'x', sizeof(err));
    struct model_config cfg;
    if (!model_config_parse("fuzz", (const char *)data, size, &cfg, err, sizeof(err))) {
        if (!memchr(err, '\0', sizeof(err)) || strchr(err, '\n') || cfg.labels)
            abort();
        return 0;
    }
    if (!model_config_validate(&cfg, err, sizeof(err)))
        abort();
    struct model_config copy, back;
    if (!model_config_copy(&copy, &cfg) || !same(&cfg, &copy))
        abort();
    if (!model_config_write(&cfg, path, err, sizeof(err)))
        abort();
    if (!model_config_load(path, &back, err, sizeof(err)) || !same(&cfg, &back))
        abort();
    unlink(path);
    model_config_release(&back);
    model_config_release(&copy);
    model_config_release(&cfg);
    return 0;
}
