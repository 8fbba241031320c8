/* simd.h — helpers of the vectorised CPU loops.
 *
 * MOE_SIMD_CLONES: compile a loop function for AVX-512, AVX2 and
 * baseline x86-64 and let the dynamic loader pick one for the CPU at hand
 * (GCC function multiversioning), so `omp simd` loops run 16 or 8 f32 lanes
 * wide where the CPU has them while the default build stays portable.
 *
 * OpenMP outlines the body of a `parallel` region into a function of its own
 * that does not inherit the clones: put the cloned function inside the
 * region (a block of rows per call), not around it.
 *
 * Not under ThreadSanitizer: it instruments the resolver, which the dynamic
 * loader runs before TSan has started, and the program crashes at load. */
#ifndef MOELAB_CPU_SIMD_H
#define MOELAB_CPU_SIMD_H

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && \
    defined(__linux__) && !defined(__SANITIZE_THREAD__)
#define MOE_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MOE_SIMD_CLONES
#endif

/* OUT = the sum over jj in [0, N) of EXPR (which reads index jj), accumulated
 * in ACC over 16 lanes (two AVX-512 registers of doubles; more lanes spill)
 * folded in a fixed tree: every clone adds in the same order whatever its
 * vector width, so results depend on neither the clone nor the threads. */
#define MOE_SUM16(ACC, out, n, EXPR)                                                       \
    do {                                                                                   \
        ACC l_[16] = {0}, t_ = 0;                                                          \
        int64_t j_ = 0;                                                                    \
        for (; j_ + 16 <= (n); j_ += 16)                                                   \
            for (int k_ = 0; k_ < 16; k_++) {                                              \
                int64_t jj = j_ + k_;                                                      \
                l_[k_] += (EXPR);                                                          \
            }                                                                              \
        for (; j_ < (n); j_++) {                                                           \
            int64_t jj = j_;                                                               \
            t_ += (EXPR);                                                                  \
        }                                                                                  \
        ACC a_ = ((l_[0] + l_[8]) + (l_[4] + l_[12])) + ((l_[2] + l_[10]) + (l_[6] + l_[14])); \
        ACC b_ = ((l_[1] + l_[9]) + (l_[5] + l_[13])) + ((l_[3] + l_[11]) + (l_[7] + l_[15])); \
        (out) = (a_ + b_) + t_;                                                            \
    } while (0)

#endif
