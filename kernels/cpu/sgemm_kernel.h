/* sgemm_kernel.h — what sgemm.c's driver and its per-ISA kernels
 * (sgemm_avx512.c, sgemm_avx2.c) share: one product's job, the block
 * sizes common to every kernel, and the table a kernel fills in.
 *
 * The driver packs op(B) into panels of the kernel's NR columns and cuts
 * the work into units of the kernel's tile rows; a kernel packs a panel,
 * runs a unit, and runs a part of a direct product (A stored transposed,
 * B not), for which the driver packs nothing: the AVX-512 kernel reads
 * both operands where they lie, the AVX2 kernel copies pieces of them into
 * a scratch of each thread's own (unless the product is small). Every
 * kernel sums each element of C the same way — over each block of KC inner
 * indices a chain of FMAs from zero, the blocks added to C in order — so
 * the two give the same bits. */
#ifndef MOELAB_CPU_SGEMM_KERNEL_H
#define MOELAB_CPU_SGEMM_KERNEL_H

#include <stdbool.h>
#include <stdint.h>

#include "int_math.h"

#define KC 256          /* inner indices per micro-kernel call */
#define KS (16 * KC)    /* inner indices packed at a time, */
#define PACK_CAP (1 << 20) /* and at most this many floats of op(B) (4 MiB) */

/* One product's operands and the block of op(B) packed now: inner indices
 * [k0, k0 + ks), columns [j0, j0 + nc), in PANELS panels of the kernel's
 * NR columns. */
typedef struct sgemm_job {
    const struct sgemm_kernel *kern;
    bool ta, tb;
    int64_t m, k;
    float alpha, beta;
    const float *a, *b;
    int64_t rsa, csa, ldb; /* op(A)(i, p) at a[i*rsa + p*csa] */
    float *c;
    int64_t ldc;
    float *pack;
    int64_t k0, ks, j0, nc, panels;
} sgemm_job;

typedef struct sgemm_kernel {
    const char *name;
    int mr, nr;    /* the micro-tile: rows of A, columns of a packed panel */
    int tile_rows; /* rows of a unit of work, a multiple of MR */
    /* Panel P of the current block into jb->pack, as [ks NR], zeros past nc. */
    void (*pack_panel)(const sgemm_job *jb, int64_t p);
    /* Rows [r0, r1) (at most tile_rows) by panels [p0, p1) of the block. */
    void (*run_unit)(const sgemm_job *jb, int64_t r0, int64_t r1, int64_t p0, int64_t p1);
    /* Rows [r0, r1) by panels [p0, p1) of a direct product, all inner
     * blocks, with SCRATCH (direct_scratch floats) its own. */
    void (*direct_part)(const sgemm_job *jb, float *scratch, int64_t r0, int64_t r1, int64_t p0,
                        int64_t p1);
    int64_t direct_scratch; /* floats of scratch a thread's direct part needs (0: none) */
} sgemm_kernel;

extern const sgemm_kernel moe_sgemm_avx512, moe_sgemm_avx2;

/* The micro-kernel reads MR rows of op(A) over KC inner indices again for
 * every panel, so they should stay in L1. Where their lines lie a multiple
 * of 4 KiB apart they crowd a few sets of L1 and evict each other before
 * the next panel reuses them: so for A stored transposed (whose KC rows
 * the kernel walks lie a whole row apart) and for A stored as is with
 * rows a multiple of 4 KiB long, a unit's rows are first copied into one
 * [kc MR] block per MR rows. */
static inline bool copies_a(const sgemm_job *jb)
{
    return jb->ta || jb->rsa % 1024 == 0;
}

#endif
