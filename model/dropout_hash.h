/* dropout_hash.h — the stateless dropout hash, one definition for the CPU (model_internal.h's
 * op_dropout_factor) and the CUDA kernels (cuda_device.cuh), so that a mask drawn on the GPU is
 * the CPU's bit for bit. Integer arithmetic only. */
#ifndef NETLM_MODEL_DROPOUT_HASH_H
#define NETLM_MODEL_DROPOUT_HASH_H

#include <stdint.h>

#ifdef __CUDACC__
#define NETLM_HOST_DEVICE __host__ __device__
#else
#define NETLM_HOST_DEVICE
#endif

static inline NETLM_HOST_DEVICE uint64_t op_mix64(uint64_t x)
{
    /* splitmix64's finaliser: every input bit reaches every output bit */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* The stream of `part` (a sample, a layer's site, a head) within the stream `parent`. */
static inline NETLM_HOST_DEVICE uint64_t op_dropout_stream(uint64_t parent, uint64_t part)
{
    return op_mix64(parent ^ op_mix64(part + 0x9e3779b97f4a7c15ull));
}

/* Element index's 32-bit hash in stream key: dropped when below p · 2³². */
static inline NETLM_HOST_DEVICE uint32_t op_dropout_hash(uint64_t key, uint64_t index)
{
    return (uint32_t)(op_mix64(key + index * 0x9e3779b97f4a7c15ull) >> 32);
}

#endif
