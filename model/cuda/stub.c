/* stub.c — the CUDA engine's API in a build without the CUDA backend (no nvcc, or
 * NETLM_CUDA=OFF): no device is visible and creating an engine says why, so callers need no
 * #ifdef. */
#include <stdio.h>

#include "model/model.h"

int model_cuda_device_count(void) { return 0; }

bool model_cuda_describe(int device, char *out, size_t len)
{
    (void)device;
    if (len)
        out[0] = '\0';
    return false;
}

bool model_cuda_versions(char *out, size_t len)
{
    if (len)
        out[0] = '\0';
    return false;
}

struct model_cuda *model_cuda_create(const struct model *m, const struct model_cuda_options *o,
                                     char *err, size_t errlen)
{
    (void)m;
    snprintf(err, errlen, "cuda:%d: this netlm was built without CUDA (no nvcc at build time, or "
             "NETLM_CUDA=OFF)", o ? o->device : 0);
    return NULL;
}

void model_cuda_free(struct model_cuda *e) { (void)e; }

bool model_cuda_reload_weights(struct model_cuda *e)
{
    (void)e;
    return false;
}

size_t model_cuda_bytes(const struct model_cuda *e)
{
    (void)e;
    return 0;
}

bool model_cuda_classify(struct model_cuda *e, const uint32_t *ids, const uint32_t *lengths,
                         uint32_t batch, uint32_t seq, float *pooled, float *scores)
{
    (void)e, (void)ids, (void)lengths, (void)batch, (void)seq, (void)pooled, (void)scores;
    return false;
}

bool model_cuda_classify_submit(struct model_cuda *e, const uint32_t *ids, const uint32_t *lengths,
                                uint32_t batch, uint32_t seq, float *pooled, float *scores)
{
    (void)e, (void)ids, (void)lengths, (void)batch, (void)seq, (void)pooled, (void)scores;
    return false;
}

bool model_cuda_classify_wait(struct model_cuda *e)
{
    (void)e;
    return false;
}

bool model_cuda_last_logits(struct model_cuda *e, const uint32_t *ids, const uint32_t *lengths,
                            uint32_t batch, uint32_t seq, float *logits)
{
    (void)e, (void)ids, (void)lengths, (void)batch, (void)seq, (void)logits;
    return false;
}

bool model_cuda_generate(struct model_cuda *e, const uint32_t *ids, const uint32_t *lengths,
                         uint32_t batch, uint32_t seq, const struct model_sampling *sampling,
                         uint32_t max_new, uint32_t *out, uint32_t *out_len)
{
    (void)e, (void)ids, (void)lengths, (void)batch, (void)seq, (void)sampling, (void)max_new;
    (void)out, (void)out_len;
    return false;
}

const char *model_cuda_error(const struct model_cuda *e)
{
    (void)e;
    return "this netlm was built without CUDA";
}

bool model_cuda_kernel_choices(const struct model_cuda *e, char *out, size_t len)
{
    (void)e;
    if (len)
        out[0] = '\0';
    return false;
}
