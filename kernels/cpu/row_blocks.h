/* row_blocks.h — the parallel loop of the CPU row kernels (the token
 * gathers and combines of permute.c, rms_norm in nn.c, rope.c): rows
 * [0, n) cut into blocks of a fixed number of rows, one call of the
 * kernel's vectorised row routine per block. The routine is a SIMD_CLONES
 * function (vector_math.h), called inside the parallel region because the
 * region's outlined body does not inherit the clones.
 *
 * The blocks depend on the row count alone, never on the team, and a block
 * writes only its own rows (or its own partial sum of a parameter
 * gradient), so the results have the same bits on any number of threads.
 * The team takes the blocks one at a time as it finishes them (dynamic
 * schedule): these loops are memory-bound and short, and with a fixed
 * share each, a thread slowed by interrupts on its core kept the other
 * waiting at the end; now the faster thread takes more blocks. A block of
 * 16 to 32 rows of a few hundred elements is microseconds of work, far
 * more than taking it costs (one atomic add), and bench-train's 2048 to
 * 4096 rows make 64 to 128 blocks, plenty to even out two threads. */
#ifndef MOELAB_CPU_ROW_BLOCKS_H
#define MOELAB_CPU_ROW_BLOCKS_H

#include <stdint.h>

/* A loop touching at most this many elements stays on the calling thread:
 * it takes a few microseconds, about what waking the team costs. */
#define ROW_BLOCKS_PAR_MIN 32768

/* Runs CALL for each block [R0, R1) of BLOCK rows of [0, N) (the last one
 * shorter), the names R0 and R1 declared for CALL; over the OpenMP team
 * when WORK, the elements the loop touches, exceeds ROW_BLOCKS_PAR_MIN. */
#define PARALLEL_ROW_BLOCKS(N, BLOCK, WORK, R0, R1, CALL)                                   \
    do {                                                                                     \
        const int64_t rb_n_ = (N), rb_size_ = (BLOCK), rb_work_ = (WORK);                    \
        const int64_t rb_count_ = (rb_n_ + rb_size_ - 1) / rb_size_;                         \
        _Pragma("omp parallel for if (rb_work_ > ROW_BLOCKS_PAR_MIN) schedule(dynamic)")     \
        for (int64_t rb_ = 0; rb_ < rb_count_; rb_++) {                                      \
            const int64_t R0 = rb_ * rb_size_;                                               \
            const int64_t R1 = rb_n_ - R0 < rb_size_ ? rb_n_ : R0 + rb_size_;                \
            CALL;                                                                            \
        }                                                                                    \
    } while (0)

#endif
