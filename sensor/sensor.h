/* sensor.h — the running pipeline behind `netlm sensor` and `netlm replay`: capture → flow table
 * → bounded ready queue → batcher (tokenizer + model) → sink of JSON-line events, with a manager
 * thread for stats, systemd notification, signals and model reload.
 *
 * Also the one mapping from a model's config.json tokenizer object to tokenizer settings, shared
 * with `netlm classify` so that the sensor and the offline command tokenize a session the same
 * way by construction. */
#ifndef NETLM_SENSOR_H
#define NETLM_SENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

/* The model's tokenizer settings (its config.json "netlm.tokenizer" object) with seq_length ids
 * per sequence. false + one line in err when a value is not one the tokenizer knows. */
bool sensor_tok_settings_from_model(const struct model_config *mc, uint32_t seq_length,
                                    struct tok_settings *out, char *err, size_t errlen);
/* Bytes the flow table must keep of each packet so that the tokenizer sees everything it would
 * use of the whole frame (strip mode reads past the headers, so it needs more). */
uint32_t sensor_bytes_per_packet(const struct tok_settings *tok);

/* A model's vocabulary: the built-in one, or the file its config names inside dir. */
struct tok_vocab *sensor_load_vocab(const char *dir, const struct model_config *mc, char *err,
                                    size_t errlen);

struct sensor_options {
    const char *command;          /* "sensor" or "replay", for messages */
    struct cfg_sensor cfg;        /* after command-line overrides, validated */
    const char *config_path;      /* re-read on SIGUSR2; NULL: reload re-reads nothing but the model */
    const char *model_override;   /* -m: wins over model.path, also on reload */

    /* replay: these files instead of cfg.capture.interface */
    bool replay;
    char **files;
    int n_files;
    uint64_t total_bytes;         /* of the files, for progress */
    bool drop;                    /* replay: a full ready queue skips sessions (live behaviour)
                                     instead of making the reader wait */
    bool emit_tokens;             /* debug: "tokens" (the model input ids) in classification
                                     and generation events */
    const char *output_path;      /* replay to a file: written to a temporary name, renamed at the
                                     end; NULL = cfg.output decides */

    /* progress (replay): called by the reader thread now and then, and once with final = true */
    void (*progress)(void *user, uint64_t bytes, uint64_t frames, bool final);
    void *progress_user;
};

/* Runs until the input ends (replay) or SIGTERM/SIGINT (then drains: every session that got ready
 * is classified, every event written). Returns the exit status: 0, or 1 after one error line on
 * stderr (nothing half-written is left behind). Blocks SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2 and
 * ignores SIGPIPE in the calling thread before it starts any other. */
int sensor_run(const struct sensor_options *opts);

#endif
