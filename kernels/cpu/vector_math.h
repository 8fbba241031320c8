/* vector_math.h — what the vectorised row loops of the CPU kernels share:
 * an exp for f32 written in plain arithmetic (so a loop calling it
 * vectorises, unlike one calling expf) and its f64 twin; SIMD_CLONES, which
 * compiles a loop for AVX-512, AVX2 and baseline x86-64 and picks the widest
 * the CPU runs when the library loads (GCC function multiversioning); and
 * SUM16, a row sum over fixed lanes.
 *
 * OpenMP outlines the body of a `parallel` region into a function of its
 * own that does not inherit the clones: call the cloned function inside the
 * region (a block of rows per call, as row_blocks.h's loop does), not
 * around it. */
#ifndef MOELAB_CPU_VECTOR_MATH_H
#define MOELAB_CPU_VECTOR_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Not under ThreadSanitizer: it instruments the resolver, which the dynamic
 * loader runs before TSan has started, and the program crashes at load. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && \
    defined(__linux__) && !defined(__SANITIZE_THREAD__)
#define SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SIMD_CLONES
#endif

/* e^x = 2^n · p(r) with x = n ln2 + r, |r| <= ln2/2 (ln 2 split in two
 * parts so that r is exact), p the degree-6 Taylor polynomial (relative
 * error ~2e-7), 2^n built in the exponent bits. Inputs are clamped to
 * [-87, 88], where the result is a normal float. Always inlined, so each
 * clone of a calling loop gets its own vector code.
 *
 * A file whose loops call it compiles with
 *   #pragma GCC optimize("no-trapping-math")
 * Under trapping math GCC keeps the clamp's comparisons as branches unless
 * it has AVX-512's masks, and the AVX2 and baseline clones stay scalar. */
static inline __attribute__((always_inline)) float exp_f32(float x)
{
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float shift = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float t = x * 1.44269504088896341f + shift;
    float n = t - shift;
    float r = x - n * 0.693145751953125f;
    r = r - n * 1.42860682030941723212e-6f;
    float p = 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t ti;
    memcpy(&ti, &t, sizeof ti);
    int32_t bits = (ti - 0x4B400000 + 127) << 23; /* n + 127 in the exponent field */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* The f64 twin, so that a loop template can call exp_##SFX for either dtype. */
static inline __attribute__((always_inline)) double exp_f64(double x) { return exp(x); }

/* OUT = the sum over jj in [0, N) of EXPR (which reads index jj), accumulated
 * in ACC over 16 lanes (two AVX-512 registers of doubles; more lanes spill)
 * folded in a fixed tree: every clone adds in the same order whatever its
 * vector width, so results depend on neither the clone nor the threads. */
#define SUM16(ACC, out, n, EXPR)                                                       \
    do {                                                                               \
        ACC l_[16] = {0}, t_ = 0;                                                      \
        int64_t j_ = 0;                                                                \
        for (; j_ + 16 <= (n); j_ += 16)                                               \
            for (int k_ = 0; k_ < 16; k_++) {                                          \
                int64_t jj = j_ + k_;                                                  \
                l_[k_] += (EXPR);                                                      \
            }                                                                          \
        for (; j_ < (n); j_++) {                                                       \
            int64_t jj = j_;                                                           \
            t_ += (EXPR);                                                              \
        }                                                                              \
        ACC a_ = ((l_[0] + l_[8]) + (l_[4] + l_[12])) + ((l_[2] + l_[10]) + (l_[6] + l_[14])); \
        ACC b_ = ((l_[1] + l_[9]) + (l_[5] + l_[13])) + ((l_[3] + l_[11]) + (l_[7] + l_[15])); \
        (out) = (a_ + b_) + t_;                                                        \
    } while (0)

#endif
