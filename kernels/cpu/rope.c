/* rope.c — rotary position embeddings on the CPU (see rope.h).
 *
 * Dimension letters: B batch, S sequence, N heads, hd head dim, P = hd/2. */
#include "rope.h"

#define DEFINE_ROPE(T)                                                                         \
    static void rope_##T(T *out, const T *x, const double *cos, const double *sin, int64_t B, \
                         int64_t S, int64_t N, int64_t hd, bool inverse)                       \
    {                                                                                          \
        int64_t P = hd / 2;                                                                    \
        T sign = inverse ? (T)-1 : (T)1;                                                       \
        _Pragma("omp parallel for collapse(2) if (B * S * N * hd > 32768) schedule(static)")   \
        for (int64_t b = 0; b < B; b++)                                                        \
            for (int64_t s = 0; s < S; s++) {                                                  \
                const double *c = cos + s * P, *sn = sin + s * P;                              \
                for (int64_t n = 0; n < N; n++) {                                              \
                    int64_t base = ((b * S + s) * N + n) * hd;                                 \
                    const T *xr = x + base;                                                    \
                    T *yr = out + base;                                                        \
                    for (int64_t i = 0; i < P; i++) {                                          \
                        T x1 = xr[i], x2 = xr[i + P], ci = (T)c[i], si = sign * (T)sn[i];      \
                        yr[i] = x1 * ci - x2 * si;                                             \
                        yr[i + P] = x2 * ci + x1 * si;                                         \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
    }

DEFINE_ROPE(float)
DEFINE_ROPE(double)

void moe_cpu_rope(moe_dtype dtype, void *out, const void *x, const double *cos, const double *sin,
                  int64_t B, int64_t S, int64_t N, int64_t hd, bool inverse)
{
    if (dtype == MOE_F32)
        rope_float(out, x, cos, sin, B, S, N, hd, inverse);
    else
        rope_double(out, x, cos, sin, B, S, N, hd, inverse);
}
