/* rng.h — the one definition of moelab's counter-based random bits, shared
 * by the host (core/tensor.c's moe_rng_uniform, seeds of expert and layer
 * parameters) and the device (dropout in kernels/cuda/elementwise.cu), so
 * both draw the same numbers. Plain C; in CUDA the functions are also
 * __device__. */
#ifndef MOELAB_KERNELS_RNG_H
#define MOELAB_KERNELS_RNG_H

#include <stdint.h>

#ifdef __CUDACC__
#define MOE_RNG_FN static inline __host__ __device__
#else
#define MOE_RNG_FN static inline
#endif

/* The golden-ratio increment of splitmix64. */
#define MOE_SPLITMIX64_GAMMA 0x9e3779b97f4a7c15ull

/* splitmix64's finaliser: a strong 64-bit mix of Z. */
MOE_RNG_FN uint64_t moe_splitmix64_mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* One splitmix64 step from state Z: the increment, then the mix. */
MOE_RNG_FN uint64_t moe_splitmix64(uint64_t z) { return moe_splitmix64_mix(z + MOE_SPLITMIX64_GAMMA); }

/* 64 random bits for counter I of stream SEED. */
MOE_RNG_FN uint64_t moe_rng_bits(uint64_t seed, uint64_t i)
{
    return moe_splitmix64_mix(moe_splitmix64_mix(seed + MOE_SPLITMIX64_GAMMA)
                              ^ (i * MOE_SPLITMIX64_GAMMA + 0x632be59bd9b4e019ull));
}

/* Uniform in [0, 1) with 53 random bits. */
MOE_RNG_FN double moe_rng_bits_uniform(uint64_t seed, uint64_t i)
{
    return (double)(moe_rng_bits(seed, i) >> 11) * 0x1.0p-53;
}

#endif
