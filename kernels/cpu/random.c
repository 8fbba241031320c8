/* random.c — random fills (see random.h). */
#include <math.h>

#include "../rng.h"
#include "random.h"

/* Threads join past this many elements. */
#define PAR_MIN (1 << 16)

void moe_cpu_random(moe_dtype dt, void *out, int64_t n, moe_cpu_random_kind kind, uint64_t seed,
                    uint64_t base, int64_t low, int64_t high)
{
    char *p = out;
    size_t sz = moe_dtype_size(dt);
#pragma omp parallel for if (n > PAR_MIN) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        double v;
        if (kind == MOE_CPU_RANDOM_UNIFORM) {
            v = moe_rng_bits_uniform(seed, base + (uint64_t)i);
        } else if (kind == MOE_CPU_RANDOM_NORMAL) { /* Box–Muller on two counter draws */
            double u1 = moe_rng_bits_uniform(seed, base + 2 * (uint64_t)i);
            double u2 = moe_rng_bits_uniform(seed, base + 2 * (uint64_t)i + 1);
            v = sqrt(-2.0 * log1p(-u1)) * cos(6.283185307179586 * u2);
        } else {
            uint64_t span = (uint64_t)(high - low);
            v = (double)(low + (int64_t)(moe_rng_bits(seed, base + (uint64_t)i) % span));
        }
        /* a draw just below 1 in double can round up to 1.0f: keep [0, 1) */
        if (dt == MOE_F32 && kind == MOE_CPU_RANDOM_UNIFORM && (float)v >= 1.0f) v = 0x1.fffffep-1;
        moe_dtype_store(dt, p + i * (int64_t)sz, v);
    }
}

void moe_cpu_uniform(moe_dtype dt, void *out, int64_t n, uint64_t seed, uint64_t base, double lo,
                     double scale)
{
    char *p = out;
    size_t sz = moe_dtype_size(dt);
#pragma omp parallel for if (n > PAR_MIN) schedule(static)
    for (int64_t i = 0; i < n; i++)
        moe_dtype_store(dt, p + i * (int64_t)sz, lo + scale * moe_rng_bits_uniform(seed, base + (uint64_t)i));
}

void moe_cpu_permutation(int64_t *p, int64_t n, uint64_t seed, uint64_t base)
{
    for (int64_t i = 0; i < n; i++) p[i] = i;
    for (int64_t i = n - 1; i > 0; i--) { /* Fisher–Yates */
        int64_t j = (int64_t)(moe_rng_bits(seed, base + (uint64_t)i) % (uint64_t)(i + 1));
        int64_t tmp = p[i];
        p[i] = p[j];
        p[j] = tmp;
    }
}

void moe_cpu_shuffle(uint32_t *order, int64_t n, uint64_t seed, uint64_t base)
{
    for (int64_t i = 0; i < n; i++) order[i] = (uint32_t)i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(moe_rng_bits_uniform(seed, base + (uint64_t)i) * (double)(i + 1));
        if (j > i) j = i;
        uint32_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}
