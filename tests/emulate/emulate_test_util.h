/* emulate_test_util.h — what the emulated kernel tests share: a seeded generator of normal
 * values on the bf16 grid, element-type conversions of host vectors, NaN-filled outputs (an
 * entry never written shows), the error measure max |got − ref| / max |ref|, and the emulation's
 * schedules. */
#ifndef NETLM_EMULATE_TEST_UTIL_H
#define NETLM_EMULATE_TEST_UTIL_H

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <cuda_bf16.h>

inline uint64_t rng_state = 0x243f6a8885a308d3ull;
inline double uniform()
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}
inline float normal()
{
    const double u = std::max(uniform(), 1e-300), v = uniform();
    return (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
}
inline float round_bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

template <typename T> inline std::vector<T> as_type(const std::vector<float> &x)
{
    std::vector<T> y(x.size());
    for (size_t i = 0; i < x.size(); i++)
        y[i] = (T)x[i];
    return y;
}
template <> inline std::vector<__nv_bfloat16> as_type(const std::vector<float> &x)
{
    std::vector<__nv_bfloat16> y(x.size());
    for (size_t i = 0; i < x.size(); i++)
        y[i] = __float2bfloat16_rn(x[i]);
    return y;
}
inline float value(float v) { return v; }
inline float value(__nv_bfloat16 v) { return __bfloat162float(v); }

/* max |got − ref| / max |ref| over the entries of the sequences' rows (cols columns of width);
 * got is pre-filled with NaN, so an entry never written fails */
template <typename T>
inline double relative_error(const std::vector<T> &got, const std::vector<double> &ref, size_t rows, size_t width,
                      size_t cols)
{
    double err = 0, top = 0;
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) {
            const double g = value(got[r * width + c]), f = ref[r * width + c];
            if (std::isnan(g))
                return INFINITY;
            err = std::max(err, fabs(g - f));
            top = std::max(top, fabs(f));
        }
    return err / top;
}

/* When the emulation makes asynchronous copies (cp.async, bulk tensor copies) and wgmma's products,
 * and in which order a block's threads resume (cuda_emulate.h) */
struct schedule {
    emu_copy_mode copies, products;
    bool reverse;
    const char *name;
    bool warp_leads = false;
    uint64_t shuffle_seed = 0; /* not 0: threads resume in an order drawn from it */
};
inline void set_schedule(const schedule &s)
{
    emu_copy_timing = s.copies;
    emu_product_timing = s.products;
    emu_reverse_order = s.reverse;
    emu_warp_leads = s.warp_leads;
    emu_shuffle_state = s.shuffle_seed;
}

template <typename T> inline std::vector<T> nan_filled(size_t n)
{
    std::vector<T> v(n);
    memset((void *)v.data(), 0xff, n * sizeof(T));
    return v;
}

#endif
