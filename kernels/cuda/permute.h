/* permute.h — token dispatch on the GPU (C API; device pointers): the
 * dispatch plan by a counting sort on the device, and the row movements of
 * permute / un-permute and their backwards (the CUDA side of
 * core/moe/dispatch.c and the twin of kernels/cpu/permute.h).
 *
 * Dimension letters: T tokens, K slots per token, E experts, C capacity, N
 * permuted rows, D row length. A slot is s = t*K + k.
 *
 * The plan matches moe_dispatch_plan exactly: kept slots sorted by expert,
 * stable (slot order inside an expert's block); with a capacity C > 0 an
 * expert keeps its C earliest kept slots; padded blocks hold exactly C rows.
 * Steps: per-chunk expert histograms, a scan per expert over the chunks and
 * an exclusive scan over experts (one small block), then a stable scatter
 * in which one warp walks its chunk in order and ranks equal experts inside
 * each 32-slot step with __match_any_sync. Integer arithmetic only, so the
 * plan is the same on every run. One device-to-host copy (the E counts and
 * offsets, which the grouped GEMMs need on the host anyway). */
#ifndef MOELAB_CUDA_PERMUTE_H
#define MOELAB_CUDA_PERMUTE_H

#include <stdbool.h>
#include <stdint.h>

#include "../../core/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moe_cuda_dispatch {
    int64_t T, K, E;
    int64_t capacity;     /* C; 0: dropless */
    bool padded;
    int64_t rows;         /* N */
    int64_t n_kept, n_dropped;
    /* host copies */
    int64_t *routed;      /* [E] slots that chose expert e */
    int64_t *counts;      /* [E] kept rows of expert e */
    int64_t *offsets;     /* [E+1] first row of expert e's block */
    /* device arrays (one allocation from the CUDA allocator) */
    int64_t *slot_row;    /* [T*K] row of each slot, -1 when dropped */
    int64_t *row_token;   /* [N] token of each row, -1 for padding */
    int64_t *row_slot;    /* [N] slot of each row, -1 for padding */
    void *dev_mem;
    size_t dev_bytes;
} moe_cuda_dispatch;

/* Plan the dispatch of IDS [T K] (device, i64) with KEEP [T K] (device
 * bool bytes, or NULL). Fills *D (free with moe_cuda_dispatch_free). Errors:
 * ids out of [0, E), negative capacity, pad without capacity. Synchronises
 * once (the plan's sizes reach the host). */
moe_status moe_cuda_dispatch_plan(moe_cuda_dispatch *d, const int64_t *ids, const uint8_t *keep, int64_t T,
                                  int64_t K, int64_t E, int64_t capacity, bool pad);
void moe_cuda_dispatch_free(moe_cuda_dispatch *d);

/* OUT [N D] row r = X [T D] row ROW_TOKEN[r], times W [T*K] at ROW_SLOT[r]
 * when W is given (f32); padding rows zero. (Permute; combine's backward.) */
moe_status moe_cuda_rows_gather(bool bf16, void *out, const void *x, const int64_t *row_token,
                                const int64_t *row_slot, const float *w, int64_t N, int64_t D);
/* OUT [T D] row t = Σ_k W[t K + k] (1 when W is NULL) · Y [N D] row
 * SLOT_ROW[t K + k], k in order, dropped slots skipped, f32 accumulation.
 * (Un-permute with the combine weights; permute's backward with W NULL.) */
moe_status moe_cuda_rows_combine(bool bf16, void *out, const void *y, const int64_t *slot_row,
                                 const float *w, int64_t T, int64_t K, int64_t D);
/* OUT [T K] (f32) = <G [T D] row t, Y [N D] row SLOT_ROW[t K + k]>, 0 when
 * dropped: the gradient of the combine weights. One warp per slot, fixed
 * lane order (deterministic). */
moe_status moe_cuda_rows_dot(bool bf16, float *out, const void *g, const void *y, const int64_t *slot_row,
                             int64_t T, int64_t K, int64_t D);

#ifdef __cplusplus
}
#endif
#endif
