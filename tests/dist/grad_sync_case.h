/* grad_sync_case.h — the grad sync scenario of grad_sync_case.c. */
#ifndef MOELAB_GRAD_SYNC_CASE_H
#define MOELAB_GRAD_SYNC_CASE_H

#include "disttest.h"
#include "dist/grad_sync.h"

#define NPARAM 5
#define DIVISOR 3.0
#define BUCKET_BYTES 24

typedef struct rank_state {
    moe_tensor *w[NPARAM];
} rank_state;

/* Five steps of a grad sync over WORLD, checking every gradient exactly,
 * the bucket layout and the stats (early starts, a stale bucket). */
moe_status grad_sync_case(int r, moe_group *world, void *ctx);

/* The parameters of rank R (leaves that require grad) and their release. */
moe_status make_params(rank_state *rs, int r);
void free_params(rank_state *rs);
void zero_grads(rank_state *rs);
/* Forward and backward of micro-batch M on rank R. */
moe_status micro_batch(rank_state *rs, int r, int m);
/* Micro-batch 0, arm, micro-batch 1, (EXTRA on rank 1: one more backward
 * into W2 after every bucket has left), wait. */
moe_status step(moe_grad_sync *s, rank_state *rs, int r, bool extra);

#endif
