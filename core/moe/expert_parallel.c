/* expert_parallel.c — the grouped expert MLP with experts sharded over an
 * expert-parallel group (see experts.h, moe_ep_grouped_mlp).
 *
 * Dimension letters: P ranks of the ep group, E experts (global), El = E/P
 * experts per rank, N rows this rank dispatches (global expert order), R rows
 * this rank receives (source-rank order, then local expert), D model dim.
 *
 *   counts [P El] --all_to_all--> recv [P El]   (recv[s][j]: rows rank s sends
 *                                                to local expert j)
 *   X [N D] --all_to_all(uneven)--> XR [R D]    (source-major)
 *   XR --regroup--> XG [R D]                    (local-expert-major, sources in order)
 *   XG --grouped MLP (El experts)--> YG [R D]
 *   YG --regroup⁻¹--> YR --all_to_all(reverse)--> Y [N D]  (X's order)
 * Every step is differentiable: the all-to-alls' backward is the reverse
 * all-to-all (core/dist/comm.h), the regroup's backward its inverse. */
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cpu/permute.h"
#include "../dist/comm.h"
#include "experts.h"
#include "internal.h"

/* ---- a row permutation op (forward beside backward) --------------------------------- */

typedef struct perm {
    int refcount;
    int64_t n;
    int64_t *fwd; /* [n] out row r = in row fwd[r] */
    int64_t *inv; /* [n] the inverse */
} perm;

static void perm_release(void *p)
{
    perm *q = p;
    if (!q || __atomic_sub_fetch(&q->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
    free(q->fwd);
    free(q->inv);
    free(q);
}

static perm *perm_retain(perm *q)
{
    __atomic_add_fetch(&q->refcount, 1, __ATOMIC_RELAXED);
    return q;
}

/* OUT [n D] rows of X [n D] in the order SRC (compute dtype in, same out). */
static moe_status gather_rows(moe_tensor **out, moe_tensor *x, const int64_t *src, int64_t n)
{
    moe_dtype c = moe_dtype_compute(x->dtype);
    moe_tensor *xc = NULL;
    MOE_TRY(moe_as_compute(&xc, x, c));
    int64_t shape[2] = {n, x->shape[1]};
    moe_status st = moe_tensor_empty(out, c, MOE_CPU, 2, shape);
    if (st == MOE_OK)
        moe_cpu_rows_gather(c, moe_tensor_data(*out), moe_tensor_data(xc), src, NULL, NULL, n,
                            x->shape[1]);
    moe_tensor_release(xc);
    if (st == MOE_OK && (*out)->dtype != x->dtype) {
        moe_tensor *cv;
        MOE_NO_GRAD_BEGIN;
        st = moe_to_dtype(&cv, *out, x->dtype);
        MOE_NO_GRAD_END;
        moe_tensor_release(*out);
        *out = st == MOE_OK ? cv : NULL;
    }
    return st;
}

/* iargs[0]: 1 when the forward used the inverse. */
static moe_status regroup_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    perm *p = n->ctx;
    return gather_rows(&gin[0], g, n->iargs[0] ? p->fwd : p->inv, p->n);
}

static moe_status regroup(moe_tensor **out, moe_tensor *x, perm *p, bool inverse)
{
    *out = NULL;
    moe_tensor *r;
    MOE_TRY(gather_rows(&r, x, inverse ? p->inv : p->fwd, p->n));
    moe_status st = moe_autograd_record(r, "ep-regroup", regroup_backward, 1, &x, 0, NULL,
                                        perm_retain(p), perm_release);
    if (st != MOE_OK) {
        moe_tensor_release(r);
        return st;
    }
    if (r->grad_fn) r->grad_fn->iargs[0] = inverse;
    *out = r;
    return MOE_OK;
}

/* ---- the expert-parallel grouped MLP --------------------------------------------------- */

moe_status moe_ep_grouped_mlp(moe_tensor **out, moe_tensor *x, moe_tensor *w_gate, moe_tensor *w_up,
                              moe_tensor *w_down, moe_tensor *b_gate, moe_tensor *b_up,
                              moe_tensor *b_down, const int64_t *group_sizes, moe_activation act,
                              moe_group *ep)
{
    static const char *op = "moe-forward";
    *out = NULL;
    int P = moe_group_size(ep);
    if (P <= 1)
        return moe_grouped_mlp(out, x, w_gate, w_up, w_down, b_gate, b_up, b_down, group_sizes, act);
    MOE_CHECK_NOT_NULL(op, x);
    MOE_CHECK_NOT_NULL(op, w_up);
    MOE_CHECK_NOT_NULL(op, group_sizes);
    MOE_CHECK_CPU(op, x);
    if (x->ndim != 2 || w_up->ndim != 3)
        return moe_fail(MOE_ERR_SHAPE, op, "rows must be [N D] and w_up [El D F], got %s and %s",
                        moe_shape_str(x), moe_shape_str(w_up));
    int64_t El = w_up->shape[0], E = El * P, N = x->shape[0];
    int64_t total = 0;
    for (int64_t e = 0; e < E; e++) {
        if (group_sizes[e] < 0)
            return moe_fail(MOE_ERR_ARG, op, "group size of expert %lld is negative", (long long)e);
        total += group_sizes[e];
    }
    if (total != N)
        return moe_fail(MOE_ERR_SHAPE, op, "group sizes of the %lld experts sum to %lld but the input has %lld rows",
                        (long long)E, (long long)total, (long long)N);

    moe_status st = MOE_OK;
    moe_tensor *cnt = NULL, *rcnt = NULL, *xr = NULL, *xg = NULL, *yg = NULL, *yr = NULL;
    perm *p = NULL;
    int64_t *send = calloc((size_t)P, sizeof *send), *recv = calloc((size_t)P, sizeof *recv);
    int64_t *got = calloc((size_t)P, sizeof *got), *local = calloc((size_t)El, sizeof *local);
    int64_t *start = calloc((size_t)(P * El), sizeof *start);
    if (!send || !recv || !got || !local || !start) {
        st = moe_fail_nomem(op, sizeof(int64_t) * (size_t)(3 * P + El + P * El), "the expert-parallel row counts");
        goto done;
    }
    /* 1. Row counts: rank q gets row q of [P El]. */
    int64_t pe[2] = {P, El};
    MOE_TRYG(moe_tensor_from_data(&cnt, MOE_I64, MOE_CPU, 2, pe, group_sizes));
    MOE_TRYG(moe_all_to_all(&rcnt, NULL, cnt, NULL, ep));
    const int64_t *rc = moe_tensor_data(rcnt); /* [P El]: from source s to local expert j */
    for (int q = 0; q < P; q++)
        for (int64_t j = 0; j < El; j++) {
            send[q] += group_sizes[q * El + j];
            recv[q] += rc[q * El + j];
            local[j] += rc[q * El + j];
        }
    /* 2. The rows. */
    MOE_TRYG(moe_all_to_all(&xr, got, x, send, ep));
    for (int q = 0; q < P; q++)
        if (got[q] != recv[q]) {
            st = moe_fail(MOE_ERR_STATE, op, "rank %d sent %lld rows but announced %lld", q,
                          (long long)got[q], (long long)recv[q]);
            goto done;
        }
    /* 3. Regroup by local expert: block (s, j) starts at start[s·El + j] in XR. */
    int64_t R = xr->shape[0];
    for (int64_t b = 0, o = 0; b < P * El; b++) {
        start[b] = o;
        o += rc[b];
    }
    p = calloc(1, sizeof *p);
    if (!p) {
        st = moe_fail_nomem(op, sizeof *p, "the expert-parallel permutation");
        goto done;
    }
    p->refcount = 1;
    p->n = R;
    p->fwd = malloc(sizeof *p->fwd * (size_t)(R ? R : 1));
    p->inv = malloc(sizeof *p->inv * (size_t)(R ? R : 1));
    if (!p->fwd || !p->inv) {
        st = moe_fail_nomem(op, (sizeof *p->fwd + sizeof *p->inv) * (size_t)(R ? R : 1), "the expert-parallel permutation");
        goto done;
    }
    moe_cpu_regroup_rows(p->fwd, p->inv, rc, start, P, El);
    MOE_TRYG(regroup(&xg, xr, p, false));
    /* 4. The local experts. */
    MOE_TRYG(moe_grouped_mlp(&yg, xg, w_gate, w_up, w_down, b_gate, b_up, b_down, local, act));
    /* 5. Back to arrival order and home. */
    MOE_TRYG(regroup(&yr, yg, p, true));
    MOE_TRYG(moe_all_to_all(out, NULL, yr, recv, ep));
done:
    free(send);
    free(recv);
    free(got);
    free(local);
    free(start);
    if (p) perm_release(p);
    moe_tensor_release(cnt);
    moe_tensor_release(rcnt);
    moe_tensor_release(xr);
    moe_tensor_release(xg);
    moe_tensor_release(yg);
    moe_tensor_release(yr);
    return st;
}
