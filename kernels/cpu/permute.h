/* permute.h — token movement on the CPU (dispatch and combine) and the
 * plans it follows: the CPU side of core/moe/dispatch.c, the twin of
 * kernels/cuda/permute.h's row kernels (a plan is always made on the host).
 * Buffers are contiguous row-major, DTYPE f32 or f64. */
#ifndef MOELAB_CPU_PERMUTE_H
#define MOELAB_CPU_PERMUTE_H

#include <stdbool.h>
#include <stdint.h>

#include "../../core/dtype.h"

/* T tokens, K slots per token, N permuted rows, D row length. ROW_TOKEN [N]
 * gives each permuted row's token (-1: a padding row), ROW_SLOT [N] its flat
 * slot t*K + k, SLOT_ROW [T*K] each slot's row (-1: dropped). Every output
 * row is written by one thread in a fixed order (deterministic). */

/* ---- plans: S = T*K slots, expert ids IDS [S] in [0, E) ---------------- */

/* Count the slots in slot order: ROUTED [E] every slot, COUNTS [E] the kept
 * ones (KEEP [S] or NULL, and at most CAPACITY per expert when CAPACITY > 0;
 * both zero on entry); SLOT_ROW [S] = -2 for a kept slot (its row comes from
 * moe_cpu_plan_place), -1 for a dropped one. Returns the kept slots. */
int64_t moe_cpu_plan_count(int64_t *routed, int64_t *counts, int64_t *slot_row, const int64_t *ids,
                           const uint8_t *keep, int64_t S, int64_t capacity);
/* Rows for the kept slots: expert e's block starts at OFFSETS [E] and holds
 * its slots in slot order (stable). ROW_TOKEN [N] and ROW_SLOT [N] get each
 * row's token and slot (-1 for padding rows), SLOT_ROW [S] each kept slot's
 * row. CURSOR is scratch of E. */
void moe_cpu_plan_place(int64_t *row_token, int64_t *row_slot, int64_t *slot_row, int64_t *cursor,
                        const int64_t *ids, const int64_t *offsets, int64_t S, int64_t K, int64_t N,
                        int64_t E);
/* KEPT [S] = 1 where SLOT_ROW [S] holds a row. */
void moe_cpu_plan_kept(uint8_t *kept, const int64_t *slot_row, int64_t S);

/* Expert parallelism: rows that arrive grouped by source rank, block (s, j)
 * of COUNTS [P El] rows for local expert j starting at START [P El], put in
 * local-expert order (expert-major, then source, arrival order within):
 * FWD [R] gives each regrouped row's arrival row, INV [R] the inverse. */
void moe_cpu_regroup_rows(int64_t *fwd, int64_t *inv, const int64_t *counts, const int64_t *start, int64_t P,
                          int64_t El);

/* ---- rows ------------------------------------------------------------------ */

/* OUT [N D]: row r = X [T D] row ROW_TOKEN[r], times W [T*K] at ROW_SLOT[r]
 * when W is given; padding rows are zero. */
void moe_cpu_rows_gather(moe_dtype dtype, void *out, const void *x, const int64_t *row_token,
                         const int64_t *row_slot, const void *w, int64_t N, int64_t D);
/* OUT [T D]: row t = sum over k = 0..K-1 of W[t K + k] (1 when W is NULL)
 * times Y [N D] row SLOT_ROW[t K + k], skipping dropped slots (zero when
 * all are dropped). */
void moe_cpu_rows_combine(moe_dtype dtype, void *out, const void *y, const int64_t *slot_row,
                          const void *w, int64_t T, int64_t K, int64_t D);
/* OUT [T K]: <G [T D] row t, Y [N D] row SLOT_ROW[t K + k]>, 0 when dropped. */
void moe_cpu_rows_dot(moe_dtype dtype, void *out, const void *g, const void *y,
                      const int64_t *slot_row, int64_t T, int64_t K, int64_t D);

#endif
