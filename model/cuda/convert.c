/* convert.c — the CUDA backend's host conversions between fp32 and its element types: weights on
 * their way to the device, results on their way back, and the CUDA tests' inputs and outputs
 * (the emulated test builds compile this file too). */
#include "model/cuda/cuda_internal.h"

void cu_host_from_f32(void *dst, enum cu_dtype t, const float *src, size_t n)
{
    if (t == CU_F32) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    uint16_t *h = dst;
    for (size_t i = 0; i < n; i++)
        h[i] = cu_f32_to_bf16(src[i]);
}

void cu_host_to_f32(float *dst, const void *src, enum cu_dtype t, size_t n)
{
    if (t == CU_F32) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    const uint16_t *h = src;
    for (size_t i = 0; i < n; i++)
        dst[i] = cu_bf16_to_f32(h[i]);
}
