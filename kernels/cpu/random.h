/* random.h — random fills on the CPU (random.c): the loops behind rand,
 * randn, randint and permutation, and the router's jitter and debug logits.
 *
 * Every draw is counter-based (kernels/rng.h): element i uses counter
 * BASE + i (BASE + 2i and 2i + 1 for normals) of stream SEED, so the result
 * depends neither on the thread count nor on the device. */
#ifndef MOELAB_CPU_RANDOM_H
#define MOELAB_CPU_RANDOM_H

#include <stdint.h>

#include "../../core/dtype.h"

typedef enum moe_cpu_random_kind {
    MOE_CPU_RANDOM_UNIFORM, /* [0, 1) */
    MOE_CPU_RANDOM_NORMAL,  /* N(0, 1), Box–Muller on two draws */
    MOE_CPU_RANDOM_INT,     /* integers in [LOW, HIGH) */
} moe_cpu_random_kind;

/* OUT [N] (contiguous, any DTYPE) filled with draws of KIND. */
void moe_cpu_random(moe_dtype dt, void *out, int64_t n, moe_cpu_random_kind kind, uint64_t seed,
                    uint64_t base, int64_t low, int64_t high);

/* OUT [N] = LO + SCALE·u_i with u_i uniform in [0, 1), computed in double
 * and stored in DTYPE. */
void moe_cpu_uniform(moe_dtype dt, void *out, int64_t n, uint64_t seed, uint64_t base, double lo,
                     double scale);

/* P [N]: a random permutation of 0 … N-1 (Fisher–Yates, counter BASE + i
 * for position i). */
void moe_cpu_permutation(int64_t *p, int64_t n, uint64_t seed, uint64_t base);

/* ORDER [N]: 0 … N-1 shuffled by Fisher–Yates, position i trading places
 * with floor(u·(i+1)) for u the uniform draw at counter BASE + i: the
 * dataset sampler's visiting order. (It scales a uniform draw where
 * permutation takes a modulus; each keeps its sequence so that runs replay.) */
void moe_cpu_shuffle(uint32_t *order, int64_t n, uint64_t seed, uint64_t base);

#endif
