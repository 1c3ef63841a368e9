/* main.c — the netlm binary: dispatches git-style subcommands. */
#include <pcap/pcap.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "model/model.h"

struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
};

static const struct command commands[] = {
    {"sessions", cmd_sessions, "the sessions of captures, one line each (TSV or JSON)"},
    {"corpus", cmd_corpus, "captures -> the seed's pretraining corpus text"},
    {"dataset", cmd_dataset, "class-per-folder captures -> train/valid/test TSVs (understanding|generation)"},
    {"preprocess", cmd_preprocess, "corpus text or TSV -> token shards for pretraining"},
    {"classify", cmd_classify, "a classification model over a dataset TSV or the sessions of captures"},
    {"generate", cmd_generate, "continue each row of a dataset TSV with a model's LM head"},
    {"pretrain", cmd_pretrain, "pretrain a causal language model on token shards"},
    {"finetune", cmd_finetune, "train a classifier (understanding) or a header-field generator (generation) on dataset TSVs"},
    {"eval", cmd_eval, "accuracy, macro-F1 and per-class metrics of a model on a labelled TSV"},
    {"sensor", cmd_sensor, "the live sensor: capture, classify sessions, JSON-line events (-c netlm.conf)"},
    {"replay", cmd_replay, "the sensor's pipeline over capture files; events to stdout or -o"},
    {"convert", cmd_convert, "Hugging Face GPT-2/Qwen2 checkpoint (or a config) -> netlm model directory"},
};

/* The version, what this build can do and the GPUs it sees: what an operator checks first when
 * --device cuda or mpirun does not behave as expected. */
static void print_version(void)
{
    printf("netlm %s\n", NETLM_VERSION);
    char cuda[128];
    const bool have_cuda = model_cuda_versions(cuda, sizeof cuda);
    printf("build: CUDA backend %s", have_cuda ? "yes (" : "no");
    if (have_cuda)
        printf("%s)", cuda);
#ifdef NETLM_HAVE_NCCL
    printf(", NCCL yes");
#else
    printf(", NCCL no");
#endif
#ifdef NETLM_HAVE_MPI
    printf(", MPI yes");
#else
    printf(", MPI no");
#endif
    const char *dpdk = cap_dpdk_version();
    printf(", capture %s, %s%s\n", pcap_lib_version(), dpdk ? dpdk : "DPDK", dpdk ? "" : " no");
    const int gpus = model_cuda_device_count();
    if (gpus == 0)
        printf("GPUs: none visible\n");
    for (int g = 0; g < gpus; g++) {
        char line[384];
        if (model_cuda_describe(g, line, sizeof line))
            printf("GPU cuda:%d: %s\n", g, line);
    }
}

static void observe_model_temp(const char *tmp_path, bool live)
{
    if (live)
        cli_temp_track(tmp_path);
    else
        cli_temp_untrack(tmp_path);
}

static void usage(FILE *out)
{
    fprintf(out, "usage: netlm [--version] [--help] COMMAND [OPTIONS] [ARGS]\n\n"
                 "netlm: a network-traffic language model and the sensor that runs it.\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\n'netlm COMMAND --help' lists the options of a command.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        print_version();
        return 0;
    }
    /* model files written by pretrain, finetune and convert (and their checkpoints) are removed
     * as the commands' own outputs are when a signal ends the run */
    model_set_temp_observer(observe_model_temp);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "netlm: unknown command '%s' (see 'netlm --help')\n", argv[1]);
    return 2;
}
