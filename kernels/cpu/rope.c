/* rope.c — rotary position embeddings on the CPU (see rope.h).
 *
 * Dimension letters: B batch, S sequence, N heads, hd head dim, P = hd/2.
 *
 * The loop over the pairs of a head is a vectorised clone (vector_math.h), a
 * block of positions (b, s) per call from row_blocks.h's parallel loop. It
 * stays correct in place (OUT == X): step i reads and writes only elements
 * i and i + P. */
#include "rope.h"
#include "row_blocks.h"
#include "vector_math.h"

#define POS_BLOCK 16 /* positions (b, s) per call of the row loop */

#define DEFINE_ROPE(T)                                                                         \
    /* positions [q0, q1) of the B·S, each with its N heads */                                 \
    SIMD_CLONES static void rope_rows_##T(T *out, const T *x, const double *cos,               \
                                          const double *sin, int64_t q0, int64_t q1,           \
                                          int64_t S, int64_t N, int64_t hd, bool inverse)      \
    {                                                                                          \
        int64_t P = hd / 2;                                                                    \
        T sign = inverse ? (T)-1 : (T)1;                                                       \
        for (int64_t q = q0; q < q1; q++) {                                                    \
            const double *c = cos + (q % S) * P, *sn = sin + (q % S) * P;                      \
            for (int64_t n = 0; n < N; n++) {                                                  \
                int64_t base = (q * N + n) * hd;                                               \
                const T *xr = x + base;                                                        \
                T *yr = out + base;                                                            \
                _Pragma("omp simd")                                                            \
                for (int64_t i = 0; i < P; i++) {                                              \
                    T x1 = xr[i], x2 = xr[i + P], ci = (T)c[i], si = sign * (T)sn[i];          \
                    yr[i] = x1 * ci - x2 * si;                                                 \
                    yr[i + P] = x2 * ci + x1 * si;                                             \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
    static void rope_##T(T *out, const T *x, const double *cos, const double *sin, int64_t B, \
                         int64_t S, int64_t N, int64_t hd, bool inverse)                       \
    {                                                                                          \
        PARALLEL_ROW_BLOCKS(B * S, POS_BLOCK, B * S * N * hd, q0, q1,                          \
                            rope_rows_##T(out, x, cos, sin, q0, q1, S, N, hd, inverse));       \
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
