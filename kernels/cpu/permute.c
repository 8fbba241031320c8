/* permute.c — token movement on the CPU (permute.h): the row gathers and
 * combines of dispatch / un-permute and their backwards, the twin of the
 * row kernels in kernels/cuda/permute.cu. */
#include "permute.h"
#include "row_blocks.h"
#include "vector_math.h"

#include <string.h>

#define ROW_BLOCK 32 /* rows (tokens) per call of a row loop */

/* The row loops are vectorised clones (vector_math.h), a block of rows per
 * call from row_blocks.h's parallel loop. rows_dot sums in T over SUM16's
 * lanes. */
#define DEFINE_ROWS(T, SFX)                                                                   \
    /* rows [r0, r1) of the gather */                                                         \
    SIMD_CLONES static void gather_block_##SFX(T *restrict out, const T *restrict x,          \
                                               const int64_t *restrict row_token,             \
                                               const int64_t *restrict row_slot,              \
                                               const T *restrict w, int64_t r0,               \
                                               int64_t r1, int64_t D)                         \
    {                                                                                         \
        for (int64_t r = r0; r < r1; r++) {                                                   \
            T *o = out + r * D;                                                               \
            int64_t t = row_token[r];                                                         \
            if (t < 0) {                                                                      \
                memset(o, 0, (size_t)D * sizeof(T));                                          \
            } else if (w) {                                                                   \
                const T *xr = x + t * D;                                                      \
                T s = w[row_slot[r]];                                                         \
                _Pragma("omp simd")                                                           \
                for (int64_t j = 0; j < D; j++) o[j] = s * xr[j];                             \
            } else {                                                                          \
                memcpy(o, x + t * D, (size_t)D * sizeof(T));                                  \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
    static void rows_gather_##SFX(T *out, const T *x, const int64_t *row_token,               \
                                  const int64_t *row_slot, const T *w, int64_t N, int64_t D)  \
    {                                                                                         \
        PARALLEL_ROW_BLOCKS(N, ROW_BLOCK, N * D, r0, r1,                                      \
                            gather_block_##SFX(out, x, row_token, row_slot, w, r0, r1, D));   \
    }                                                                                         \
    /* tokens [t0, t1) of the combine */                                                      \
    SIMD_CLONES static void combine_block_##SFX(T *restrict out, const T *restrict y,         \
                                                const int64_t *restrict slot_row,             \
                                                const T *restrict w, int64_t t0,              \
                                                int64_t t1, int64_t K, int64_t D)             \
    {                                                                                         \
        for (int64_t t = t0; t < t1; t++) {                                                   \
            T *o = out + t * D;                                                               \
            bool first = true;                                                                \
            for (int64_t k = 0; k < K; k++) {                                                 \
                int64_t r = slot_row[t * K + k];                                              \
                if (r < 0) continue;                                                          \
                const T *yr = y + r * D;                                                      \
                T s = w ? w[t * K + k] : (T)1;                                                \
                if (first) {                                                                  \
                    _Pragma("omp simd")                                                       \
                    for (int64_t j = 0; j < D; j++) o[j] = s * yr[j];                         \
                } else {                                                                      \
                    _Pragma("omp simd")                                                       \
                    for (int64_t j = 0; j < D; j++) o[j] += s * yr[j];                        \
                }                                                                             \
                first = false;                                                                \
            }                                                                                 \
            if (first) memset(o, 0, (size_t)D * sizeof(T));                                   \
        }                                                                                     \
    }                                                                                         \
    static void rows_combine_##SFX(T *out, const T *y, const int64_t *slot_row, const T *w,   \
                                   int64_t ntok, int64_t K, int64_t D)                        \
    {                                                                                         \
        PARALLEL_ROW_BLOCKS(ntok, ROW_BLOCK, ntok * K * D, t0, t1,                            \
                            combine_block_##SFX(out, y, slot_row, w, t0, t1, K, D));          \
    }                                                                                         \
    /* tokens [t0, t1) of the dot products */                                                 \
    SIMD_CLONES static void dot_block_##SFX(T *restrict out, const T *restrict g,             \
                                            const T *restrict y,                              \
                                            const int64_t *restrict slot_row, int64_t t0,     \
                                            int64_t t1, int64_t K, int64_t D)                 \
    {                                                                                         \
        for (int64_t t = t0; t < t1; t++)                                                     \
            for (int64_t k = 0; k < K; k++) {                                                 \
                int64_t r = slot_row[t * K + k];                                              \
                T acc = 0;                                                                    \
                if (r >= 0) {                                                                 \
                    const T *gr = g + t * D, *yr = y + r * D;                                 \
                    SUM16(T, acc, D, gr[jj] * yr[jj]);                                        \
                }                                                                             \
                out[t * K + k] = acc;                                                         \
            }                                                                                 \
    }                                                                                         \
    static void rows_dot_##SFX(T *out, const T *g, const T *y, const int64_t *slot_row,       \
                               int64_t ntok, int64_t K, int64_t D)                            \
    {                                                                                         \
        PARALLEL_ROW_BLOCKS(ntok, ROW_BLOCK, ntok * K * D, t0, t1,                            \
                            dot_block_##SFX(out, g, y, slot_row, t0, t1, K, D));              \
    }

DEFINE_ROWS(float, f32)
DEFINE_ROWS(double, f64)

void moe_cpu_rows_gather(moe_dtype dtype, void *out, const void *x, const int64_t *row_token,
                         const int64_t *row_slot, const void *w, int64_t N, int64_t D)
{
    if (dtype == MOE_F32)
        rows_gather_f32(out, x, row_token, row_slot, w, N, D);
    else
        rows_gather_f64(out, x, row_token, row_slot, w, N, D);
}

void moe_cpu_rows_combine(moe_dtype dtype, void *out, const void *y, const int64_t *slot_row,
                          const void *w, int64_t T, int64_t K, int64_t D)
{
    if (dtype == MOE_F32)
        rows_combine_f32(out, y, slot_row, w, T, K, D);
    else
        rows_combine_f64(out, y, slot_row, w, T, K, D);
}

void moe_cpu_rows_dot(moe_dtype dtype, void *out, const void *g, const void *y,
                      const int64_t *slot_row, int64_t T, int64_t K, int64_t D)
{
    if (dtype == MOE_F32)
        rows_dot_f32(out, g, y, slot_row, T, K, D);
    else
        rows_dot_f64(out, g, y, slot_row, T, K, D);
}

/* ---- plans ---------------------------------------------------------------------- */

int64_t moe_cpu_plan_count(int64_t *routed, int64_t *counts, int64_t *slot_row, const int64_t *ids,
                           const uint8_t *keep, int64_t S, int64_t capacity)
{
    int64_t n_kept = 0;
    for (int64_t s = 0; s < S; s++) {
        int64_t e = ids[s];
        routed[e]++;
        bool kept = !keep || keep[s];
        if (kept && capacity > 0 && counts[e] >= capacity) kept = false;
        if (kept) {
            counts[e]++;
            slot_row[s] = -2;
            n_kept++;
        } else {
            slot_row[s] = -1;
        }
    }
    return n_kept;
}

void moe_cpu_plan_place(int64_t *row_token, int64_t *row_slot, int64_t *slot_row, int64_t *cursor,
                        const int64_t *ids, const int64_t *offsets, int64_t S, int64_t K, int64_t N,
                        int64_t E)
{
    for (int64_t r = 0; r < N; r++) row_token[r] = row_slot[r] = -1;
    memcpy(cursor, offsets, sizeof *cursor * (size_t)E);
    for (int64_t s = 0; s < S; s++) {
        if (slot_row[s] != -2) continue;
        int64_t r = cursor[ids[s]]++;
        slot_row[s] = r;
        row_token[r] = s / K;
        row_slot[r] = s;
    }
}

void moe_cpu_plan_kept(uint8_t *kept, const int64_t *slot_row, int64_t S)
{
    for (int64_t s = 0; s < S; s++) kept[s] = slot_row[s] >= 0;
}

void moe_cpu_regroup_rows(int64_t *fwd, int64_t *inv, const int64_t *counts, const int64_t *start, int64_t P,
                          int64_t El)
{
    for (int64_t j = 0, r = 0; j < El; j++)
        for (int64_t s = 0; s < P; s++)
            for (int64_t i = 0; i < counts[s * El + j]; i++, r++) {
                fwd[r] = start[s * El + j] + i;
                inv[start[s * El + j] + i] = r;
            }
}
