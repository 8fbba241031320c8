/* dispatch.h — token dispatch for MoE layers: sort the (token, slot) pairs
 * of a routing by expert, permute token rows into expert-contiguous order
 * and combine expert outputs back with the routing weights.
 *
 * Dimension letters: T tokens, K slots per token (top-k), E experts, D model
 * dim, C capacity (rows per expert), N rows of the permuted buffer.
 *
 * A routing is plain tensors: expert ids [T K] (i64 or i32), weights [T K]
 * (any float dtype) and an optional keep mask [T K] (bool; false = the slot
 * was dropped, e.g. by the router's capacity decision). The plan orders the
 * kept slots by expert with a stable counting sort (O(T·K)): inside an
 * expert's block, rows follow slot order t*K + k, so the earliest tokens come
 * first. Three modes:
 *   dropless     capacity 0: every kept slot gets a row; N = kept slots;
 *   capacity     capacity C > 0: an expert keeps at most C rows (the earliest
 *                kept slots: the "position" policy applied after KEEP);
 *   padded       capacity C > 0 and pad: every expert block has exactly C
 *                rows, N = E·C; the rows past an expert's count are zero
 *                padding (they cost compute, never reach the output).
 * Dropped slots contribute zero to the output and are counted.
 *
 * permute and combine are differentiable: permute's backward sums each
 * token's row gradients over its K slots; combine's backward gives the rows
 * their weighted output gradient and the weights <dout_t, y_row>. Both
 * compute f32 and f64 natively; bf16 computes in f32. */
#ifndef MOELAB_MOE_DISPATCH_H
#define MOELAB_MOE_DISPATCH_H

#include <stdbool.h>
#include <stdint.h>

#include "../tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A dispatch plan (refcounted, read-only once made). Arrays are owned by
 * the plan. */
typedef struct moe_dispatch {
    int refcount;
    int64_t T, K, E;
    int64_t capacity;   /* C; 0: dropless */
    bool padded;        /* expert blocks padded to C rows */
    int64_t rows;       /* N: rows of the permuted buffer (padding included) */
    int64_t n_kept;     /* slots that got a row */
    int64_t n_dropped;  /* slots dropped (by KEEP or by capacity) */
    int64_t *routed;    /* [E] slots that chose expert e (before any drop) */
    int64_t *counts;    /* [E] kept slots of expert e (its real rows) */
    int64_t *offsets;   /* [E+1] first row of expert e's block; offsets[E] = N */
    int64_t *row_token; /* [N] token of each row; -1 for a padding row */
    int64_t *row_slot;  /* [N] slot t*K + k of each row; -1 for a padding row */
    int64_t *slot_row;  /* [T*K] row of each slot; -1 when dropped */
    /* Device copy of row_token, row_slot and slot_row (i64 [2N + T*K]),
     * made by the first permute/combine of a CUDA tensor; NULL until then. */
    moe_tensor *device_index;
} moe_dispatch;

/* Plan the dispatch of EXPERTS [T K] (integer ids in [0, E)) with an
 * optional KEEP [T K] bool mask (NULL: keep all), CAPACITY C (0: dropless)
 * and PAD (pad each expert block to C rows; needs C > 0). */
moe_status moe_dispatch_plan(moe_dispatch **out, moe_tensor *experts, moe_tensor *keep, int64_t E,
                             int64_t capacity, bool pad);
moe_dispatch *moe_dispatch_retain(moe_dispatch *d);
void moe_dispatch_release(moe_dispatch *d); /* NULL is fine */

/* Fraction of the T*K slots dropped (0 when T*K == 0). */
double moe_dispatch_dropped_fraction(const moe_dispatch *d);
/* Tensors of the plan (i64, new references): counts [E] (kept rows per
 * expert), group sizes [E] (rows per expert block, padding included),
 * routed [E] (before drops), the keep mask [T K] bool actually applied. */
moe_status moe_dispatch_counts(moe_tensor **out, const moe_dispatch *d);
moe_status moe_dispatch_group_sizes(moe_tensor **out, const moe_dispatch *d);
moe_status moe_dispatch_routed(moe_tensor **out, const moe_dispatch *d);
moe_status moe_dispatch_kept(moe_tensor **out, const moe_dispatch *d);

/* OUT [N D] = the rows of X [T D] in expert order (padding rows zero).
 * Differentiable in X. */
moe_status moe_dispatch_permute(moe_tensor **out, moe_tensor *x, moe_dispatch *d);
/* OUT [T D]: row t = sum over the token's kept slots k of W[t k] · Y row
 * of slot (t, k), with Y [N D] in expert order and W [T K] (NULL: weight 1,
 * a plain un-permute). The result has Y's dtype. Differentiable in Y and W. */
moe_status moe_dispatch_combine(moe_tensor **out, moe_tensor *y, moe_tensor *w, moe_dispatch *d);

#ifdef __cplusplus
}
#endif
#endif
