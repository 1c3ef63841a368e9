/* device.c — the --device names shared by every build (with or without the CUDA backend). */
#include <limits.h>
#include <string.h>

#include "model/model.h"

bool model_device_parse(const char *name, int *device)
{
    if (!name)
        return false;
    if (strcmp(name, "cpu") == 0) {
        *device = -1;
        return true;
    }
    if (strcmp(name, "cuda") == 0) {
        *device = 0;
        return true;
    }
    if (strncmp(name, "cuda:", 5) != 0)
        return false;
    const char *p = name + 5;
    /* a decimal without sign or leading zeros */
    if (*p < '0' || *p > '9' || (p[0] == '0' && p[1]))
        return false;
    long v = 0;
    for (; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        v = v * 10 + (*p - '0');
        if (v > INT_MAX)
            return false;
    }
    *device = (int)v;
    return true;
}
