/* iter.c — the iteration description of an elementwise loop (iter.h),
 * built on the host and read by the CPU loops and the CUDA kernels alike. */
#include "iter.h"

void moe_iter_init(moe_iter *it, int ndim, const int64_t *shape, int n_in,
                   const moe_tensor *const *ins)
{
    it->n_in = n_in;
    it->numel = 1;
    for (int d = 0; d < ndim; d++) it->numel *= shape[d];
    /* Per-operand strides aligned to the output, size-1 dims dropped. */
    int nd = 0;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] == 1) continue;
        it->shape[nd] = shape[d];
        for (int j = 0; j < n_in; j++) {
            const moe_tensor *t = ins[j];
            int k = d - (ndim - t->ndim);
            it->strides[j][nd] = (k < 0 || t->shape[k] == 1) ? 0 : t->strides[k];
        }
        nd++;
    }
    /* Merge dim d into d+1 when every operand walks them as one. */
    int m = 0;
    for (int d = 0; d < nd; d++) {
        if (m > 0) {
            bool mergeable = true;
            for (int j = 0; j < n_in && mergeable; j++)
                mergeable = it->strides[j][m - 1] == it->strides[j][d] * it->shape[d];
            if (mergeable) {
                it->shape[m - 1] *= it->shape[d];
                for (int j = 0; j < n_in; j++) it->strides[j][m - 1] = it->strides[j][d];
                continue;
            }
        }
        it->shape[m] = it->shape[d];
        for (int j = 0; j < n_in; j++) it->strides[j][m] = it->strides[j][d];
        m++;
    }
    if (m == 0) { /* one element (or a 0-d output) */
        it->shape[0] = it->numel ? 1 : 0;
        for (int j = 0; j < n_in; j++) it->strides[j][0] = 1;
        m = 1;
    }
    it->ndim = m;
}

bool moe_iter_is_flat(const moe_iter *it)
{
    if (it->ndim != 1) return false;
    for (int j = 0; j < it->n_in; j++)
        if (it->strides[j][0] != 1 && it->shape[0] > 1) return false;
    return true;
}
