/* cmd_convert.c — `netlm convert`: a Hugging Face GPT-2 or Qwen2/Qwen2.5 checkpoint (or a fresh
 * model from a config.json, Hugging Face or the seed's UER form) to a netlm model directory with
 * the traffic vocabulary, as the seed's resize_token_embeddings does. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

int cmd_convert(int argc, char **argv)
{
    static const char *const cmd = "convert";
    struct cli_opt opts[] = {
        {"from", "pretrained_model_path", 0, "DIR", "Hugging Face checkpoint directory (GPT-2, Qwen2, Qwen2.5; sharded too)", NULL},
        {"config-path", NULL, 0, "FILE", "instead of --from: a fresh model from this config.json (Hugging Face or UER form)", NULL},
        {"to", "output_model_path", 0, "DIR", "the netlm model directory to write", NULL},
        {"vocab", "vocab_path", 0, "builtin|FILE", "vocabulary of the converted model (default builtin: 65,541 tokens)", NULL},
        {"resize", NULL, 0, "keep-first|init", "embedding rows of the new vocabulary: keep the checkpoint's first rows, as the seed does (default), or initialise all N(0, 0.02)", NULL},
        {"seed", "random_seed", 0, "N", "seed of every fresh weight (default 7)", NULL},
        {"dtype", NULL, 0, "f32|bf16", "weights written as F32 (default) or BF16 (half the size; loads back as fp32)", NULL},
        {0},
    };
    const char **pos = NULL;
    int npos = 0;
    int rc = cli_parse(cmd, "(--from HF_DIR | --config_path FILE) --to OUT_DIR [OPTIONS]",
                       "Imports a Hugging Face GPT-2 or Qwen2/Qwen2.5 checkpoint with the traffic vocabulary:\n"
                       "the embedding (and a tied LM head) is resized to the vocabulary, keeping the first rows\n"
                       "(the seed's resize_token_embeddings) or initialising them. With --config_path it writes a\n"
                       "freshly initialised model of that shape instead.",
                       opts, argc, argv, &pos, &npos);
    if (rc != CLI_PARSED)
        return rc == CLI_HELP_SHOWN ? 0 : 2;
    int status = 2;
    struct model *m = NULL;
    struct tok_vocab *vocab = NULL;
    const char *from = cli_get(opts, "from"), *config_path = cli_get(opts, "config-path");
    const char *to = cli_get(opts, "to"), *vocab_arg = cli_get(opts, "vocab");
    static const char *const resize_choices[] = {"keep-first", "init", NULL};
    int resize = cli_choice(cmd, opts, "resize", "keep-first", resize_choices);
    static const char *const dtype_choices[] = {"f32", "bf16", NULL};
    int dtype = cli_choice(cmd, opts, "dtype", "f32", dtype_choices);
    uint64_t seed;
    char err[1024];
    if (npos > 0) {
        cli_error(cmd, "unexpected argument '%s'", pos[0]);
        goto done;
    }
    if ((from != NULL) == (config_path != NULL)) {
        cli_error(cmd, "give either --from HF_DIR or --config_path FILE, not %s", from ? "both" : "neither");
        goto done;
    }
    if (!to) {
        cli_error(cmd, "--to OUT_DIR is required");
        goto done;
    }
    if (resize < 0 || dtype < 0 || !cli_u64(cmd, opts, "seed", 7, 0, UINT64_MAX, &seed))
        goto done;
    status = 1;
    struct model_config fresh;
    model_config_init(&fresh);
    if (from)
        m = model_load(from, err, sizeof err);
    else if (!model_config_load(config_path, &fresh, err, sizeof err))
        goto fresh_done;
    if (!from && fresh.sizes_note[0]) /* a model larger or other than its file says must not go unnoticed */
        fprintf(stderr, "netlm %s: %s\n", cmd, fresh.sizes_note);
    if (from && !m)
        goto fresh_done;
    /* the vocabulary: --vocab, else the converted model's own vocab.txt, else the built-in one */
    char from_vocab[4096];
    if (m)
        vocab_arg = cli_model_vocab(model_get_config(m), vocab_arg, from, from_vocab, sizeof from_vocab);
    bool builtin = !vocab_arg || !strcmp(vocab_arg, "builtin");
    vocab = builtin ? tok_vocab_builtin() : tok_vocab_load(vocab_arg, err, sizeof err);
    if (vocab && !m) {
        fresh.vocab_size = tok_vocab_size(vocab);
        m = model_create(&fresh, seed, err, sizeof err);
    }
fresh_done:
    model_config_release(&fresh);
    if (!m || !vocab) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    uint32_t vocab_size = tok_vocab_size(vocab);
    const struct model_config *cfg = model_get_config(m);
    uint32_t old_vocab = cfg->vocab_size;
    uint64_t old_params = model_parameter_count(m);
    bool init_all = resize == 1;
    if ((old_vocab != vocab_size || init_all) &&
        !model_resize_vocab(m, vocab_size, init_all, seed, err, sizeof err)) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    cfg = model_get_config(m);
    struct model_tokenizer *tok = &model_config_mut(m)->tokenizer;
    snprintf(tok->vocab, sizeof tok->vocab, "%s", builtin ? "builtin" : "vocab.txt");
    if (!(dtype == 1 ? model_save_bf16(m, to, err, sizeof err) : model_save(m, to, err, sizeof err))) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    if (!builtin) {
        char path[4096];
        snprintf(path, sizeof path, "%s/vocab.txt", to);
        if (!cli_copy_file(cmd, vocab_arg, path))
            goto done;
    }
    fprintf(stderr, "netlm %s: %s, %u layers x %u, vocab %u -> %u (%s), %.1fM -> %.1fM parameters, written to %s\n",
            cmd, model_arch_name(cfg->arch), cfg->layers, cfg->hidden, old_vocab, vocab_size,
            init_all ? "all rows initialised" : old_vocab > vocab_size ? "first rows kept"
                                              : old_vocab < vocab_size ? "new rows initialised" : "unchanged",
            old_params / 1e6, model_parameter_count(m) / 1e6, to);
    status = 0;
done:
    free(pos);
    tok_vocab_free(vocab);
    model_free(m);
    return status;
}
