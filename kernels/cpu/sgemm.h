/* sgemm.h — moelab's own f32 GEMM for x86-64 CPUs with AVX-512 or AVX2
 * and FMA, which gemm.c's moe_cpu_sgemm runs in place of BLAS where the
 * CPU has them. */
#ifndef MOELAB_CPU_SGEMM_H
#define MOELAB_CPU_SGEMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* True when this build and this CPU run a kernel (x86-64 with AVX-512F,
 * or AVX2 and FMA); checked once. Under valgrind, which hides AVX-512, the
 * AVX2 kernel runs. */
bool moe_cpu_sgemm_native_ok(void);

/* The kernel in use: "avx512", "avx2", or NULL where none runs. The widest
 * the CPU has, unless the environment says MOELAB_SGEMM=avx2. */
const char *moe_cpu_sgemm_native_kernel(void);

/* Use the kernel NAME from now on (for tests and benchmarks, to compare
 * the kernels on one CPU). False, changing nothing, when the CPU does not
 * run it or there is no such kernel. Products already running finish on
 * the kernel they started with. */
bool moe_cpu_sgemm_native_select(const char *name);

/* C [M N] = alpha op(A) op(B) + beta C, row-major, op(A) [M K] (A stored
 * [K M] when TRANS_A), op(B) [K N] (B stored [N K] when TRANS_B). With BETA
 * 0, C is not read. Outside a parallel region, a product of at least
 * MOE_CPU_SGEMM_SPLIT_FLOPS runs over the OpenMP team; inside one, on the
 * calling thread. Each element of C is computed the same way either way,
 * so results have the same bits on any number of threads. Returns false,
 * having done nothing, when it cannot run: no kernel for this CPU, or no
 * memory for the packed op(B) (the caller then uses BLAS). */
bool moe_cpu_sgemm_native(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                          float alpha, const float *a, int64_t lda, const float *b, int64_t ldb,
                          float beta, float *c, int64_t ldc);

/* op(B) [K N] packed ahead, for several products on one thread that share
 * it (an expert's weights, its tokens taken a piece at a time): packing
 * it once, rather than in every product, keeps its copies to one. */
typedef struct moe_cpu_sgemm_packed {
    const void *kernel; /* the kernel that packed it, which runs its products */
    const float *data;
    int64_t k, n;
} moe_cpu_sgemm_packed;

/* Floats op(B) [K N] takes packed, on any kernel this CPU runs (0: none
 * runs here). */
size_t moe_cpu_sgemm_pack_floats(int64_t k, int64_t n);

/* Pack op(B) (B stored [N K] when TRANS_B) into MEM (64-byte aligned, of
 * moe_cpu_sgemm_pack_floats(K, N) floats) on the calling thread, for the
 * kernel in use. False, doing nothing, where no kernel runs. */
bool moe_cpu_sgemm_pack(moe_cpu_sgemm_packed *pb, bool trans_b, int64_t k, int64_t n,
                        const float *b, int64_t ldb, float *mem);

/* C [M N] = alpha A op(B) + beta C, A [M K] as stored (lda), op(B) packed
 * by moe_cpu_sgemm_pack, on the calling thread: the bits of
 * moe_cpu_sgemm_native's product. */
void moe_cpu_sgemm_packed_product(const moe_cpu_sgemm_packed *pb, int64_t m, float alpha,
                                  const float *a, int64_t lda, float beta, float *c, int64_t ldc);

/* Smaller products stay on the calling thread: waking the team costs more. */
#define MOE_CPU_SGEMM_SPLIT_FLOPS 4.0e6

#endif
