/* fuzz_sensor_config.c — libFuzzer target for the sensor's configuration loader (config/), the
 * reader of netlm.conf: libconfig's parser, the pre-scan for @include and wide integer literals,
 * and the walk that checks every key.
 *
 * The input, made a C string, is loaded. A failure must leave one terminated line that starts
 * with the file's name and the output untouched; a success must pass cfg_validate and load the
 * same way again. Needs only config.c and libconfig, e.g.
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -I. \
 *     tests/fuzz/fuzz_sensor_config.c config/config.c -lconfig -lm */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"

/* libconfig 1.5 leaks the string token a syntax error stops at (`"x"` where a setting name
 * belongs): a few bytes per failed load, in the library, not in what this target tests. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:libconfig.so\n";
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0'; /* the loader takes a C string: a NUL in the input ends it */

    static struct cfg_sensor loaded, again, untouched;
    memset(&loaded, 0xa5, sizeof(loaded));
    memcpy(&untouched, &loaded, sizeof(loaded));
    char err[256];
    memset(err, 'x', sizeof(err));
    if (cfg_load_buffer("fuzz", text, &loaded, err, sizeof(err)) != 0) {
        if (!memchr(err, '\0', sizeof(err)) || strncmp(err, "fuzz", 4) != 0 ||
            memcmp(&loaded, &untouched, sizeof(loaded)) != 0)
            abort();
        for (const char *p = err; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                abort();
        free(text);
        return 0;
    }
    if (strcmp(loaded.path, "fuzz") != 0 || cfg_validate(&loaded, err, sizeof(err)) != 0)
        abort();
    if (cfg_load_buffer("fuzz", text, &again, err, sizeof(err)) != 0 ||
        memcmp(&loaded, &again, sizeof(loaded)) != 0)
        abort();
    free(text);
    return 0;
}
