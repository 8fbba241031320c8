/* simd.h — MOE_SIMD_CLONES: compile a loop function for AVX-512, AVX2 and
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

#endif
