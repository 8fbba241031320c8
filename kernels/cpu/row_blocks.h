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
 *
 * The team takes the blocks in shrinking runs (guided schedule): a thread
 * that comes for work takes the blocks left divided by the team size, so
 * the first runs are large and the last are single blocks. These loops are
 * short and memory-bound: with a fixed half each (static), a thread slowed
 * by interrupts on its core kept the other waiting at the end; block by
 * block (dynamic), the loops ran 10 to 25% slower than static even with
 * balanced threads (a block of 16 rows of 256 is about a microsecond of
 * work, and a thread's rows change from loop to loop, so fewer are still
 * in its cache). With runs, two threads take fewer than ten per loop,
 * mostly static's halves, and the thread that finishes first takes the
 * last blocks. bench-train's 2048 to 4096 rows make 64 to 128 blocks. */
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
        _Pragma("omp parallel for if (rb_work_ > ROW_BLOCKS_PAR_MIN) schedule(guided)")      \
        for (int64_t rb_ = 0; rb_ < rb_count_; rb_++) {                                      \
            const int64_t R0 = rb_ * rb_size_;                                               \
            const int64_t R1 = rb_n_ - R0 < rb_size_ ? rb_n_ : R0 + rb_size_;                \
            CALL;                                                                            \
        }                                                                                    \
    } while (0)

#endif
