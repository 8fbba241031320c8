/* dispatch.c — dispatch plans, permute and combine (each forward beside its
 * backward). Loops: kernels/cpu/permute.c (plans and token movement); on a CUDA
 * device kernels/cuda/permute.cu with the plan's index arrays copied to the
 * device once per plan. The plan itself is made on the host.
 *
 * Dimension letters: T tokens, K slots per token, E experts, D model dim,
 * C capacity, N permuted rows. */
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cpu/copy.h"
#include "../../kernels/cpu/permute.h"
#include "../../kernels/cuda/permute.h"
#include "../device.h"
#include "internal.h"
#include "dispatch.h"

/* ---- plans --------------------------------------------------------------------- */

moe_dispatch *moe_dispatch_retain(moe_dispatch *d)
{
    if (d) __atomic_add_fetch(&d->refcount, 1, __ATOMIC_RELAXED);
    return d;
}

void moe_dispatch_release(moe_dispatch *d)
{
    if (!d || __atomic_sub_fetch(&d->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
    free(d->routed);
    free(d->counts);
    free(d->offsets);
    free(d->row_token);
    free(d->row_slot);
    free(d->slot_row);
    moe_tensor_release(d->device_index);
    free(d);
}

static void release_ctx(void *ctx) { moe_dispatch_release(ctx); }

static moe_status check_routing_tensor(const char *op, const char *what, const moe_tensor *t,
                                       const moe_tensor *experts)
{
    MOE_CHECK_CPU(op, t); /* plans are made on the host */
    if (t->ndim != 2 || t->shape[0] != experts->shape[0] || t->shape[1] != experts->shape[1])
        return moe_fail(MOE_ERR_SHAPE, op, "%s %s does not match expert ids %s (expected [T K])",
                        what, moe_shape_str(t), moe_shape_str(experts));
    return MOE_OK;
}

moe_status moe_dispatch_plan(moe_dispatch **out, moe_tensor *experts, moe_tensor *keep, int64_t E,
                             int64_t capacity, bool pad)
{
    static const char *op = "moe-forward";
    *out = NULL;
    MOE_CHECK_NOT_NULL(op, experts);
    MOE_CHECK_CPU(op, experts);
    MOE_CHECK_INTEGER(op, experts);
    if (experts->ndim != 2)
        return moe_fail(MOE_ERR_SHAPE, op, "expert ids must be [T K], got %s", moe_shape_str(experts));
    if (E < 1) return moe_fail(MOE_ERR_ARG, op, "number of experts must be >= 1, got %lld", (long long)E);
    if (capacity < 0)
        return moe_fail(MOE_ERR_ARG, op, "capacity must be >= 0 (0: dropless), got %lld",
                        (long long)capacity);
    if (pad && capacity == 0)
        return moe_fail(MOE_ERR_ARG, op, "padding to capacity needs a capacity > 0 (dropless mode has none)");
    if (keep) {
        MOE_TRY(check_routing_tensor(op, "keep mask", keep, experts));
        if (keep->dtype != MOE_BOOL)
            return moe_fail(MOE_ERR_DTYPE, op, "keep mask must be bool, got %s", moe_dtype_name(keep->dtype));
    }
    int64_t T = experts->shape[0], K = experts->shape[1], S = T * K;
    /* An expert can never receive more than S rows: clamp absurd capacities. */
    if (capacity > S) capacity = S > 0 ? S : 1;

    moe_status st = MOE_OK;
    moe_tensor *ids = NULL, *kp = NULL;
    moe_dispatch *d = NULL;
    int64_t *cursor = NULL;
    MOE_TRYG(moe_as_compute(&ids, experts, MOE_I64));
    if (keep) MOE_TRYG(moe_as_compute(&kp, keep, MOE_BOOL));
    const int64_t *id = moe_tensor_data(ids);
    const uint8_t *kv = kp ? moe_tensor_data(kp) : NULL;
    double bad_value;
    int64_t bad = moe_cpu_find_first(ids, 0, (double)(E - 1), false, &bad_value);
    if (bad >= 0) {
        st = moe_fail(MOE_ERR_INDEX, op, "expert id %lld at [%lld %lld] is out of range [0, %lld)",
                      (long long)id[bad], (long long)(bad / K), (long long)(bad % K), (long long)E);
        goto done;
    }

    d = calloc(1, sizeof *d);
    cursor = calloc((size_t)E, sizeof *cursor);
    if (!d || !cursor) goto nomem;
    d->refcount = 1;
    d->T = T;
    d->K = K;
    d->E = E;
    d->capacity = capacity;
    d->padded = pad;
    d->routed = calloc((size_t)E, sizeof *d->routed);
    d->counts = calloc((size_t)E, sizeof *d->counts);
    d->offsets = calloc((size_t)E + 1, sizeof *d->offsets);
    d->slot_row = malloc(sizeof *d->slot_row * (size_t)(S ? S : 1));
    if (!d->routed || !d->counts || !d->offsets || !d->slot_row) goto nomem;

    /* 1. Count, deciding drops in slot order. */
    d->n_kept = moe_cpu_plan_count(d->routed, d->counts, d->slot_row, id, kv, S, capacity);
    d->n_dropped = S - d->n_kept;
    /* 2. Block offsets. */
    for (int64_t e = 0; e < E; e++)
        d->offsets[e + 1] = d->offsets[e] + (pad ? capacity : d->counts[e]);
    int64_t N = d->rows = d->offsets[E];
    d->row_token = malloc(sizeof *d->row_token * (size_t)(N ? N : 1));
    d->row_slot = malloc(sizeof *d->row_slot * (size_t)(N ? N : 1));
    if (!d->row_token || !d->row_slot) goto nomem;
    /* 3. Place the kept slots (stable: slot order inside each block). */
    moe_cpu_plan_place(d->row_token, d->row_slot, d->slot_row, cursor, id, d->offsets, S, K, N, E);
    *out = d;
    d = NULL;
    goto done;
nomem:
    st = moe_fail(MOE_ERR_NOMEM, op, "out of memory for a plan of %lld slots over %lld experts",
                  (long long)S, (long long)E);
done:
    moe_dispatch_release(d);
    free(cursor);
    moe_tensor_release(ids);
    moe_tensor_release(kp);
    return st;
}

double moe_dispatch_dropped_fraction(const moe_dispatch *d)
{
    int64_t S = d->T * d->K;
    return S ? (double)d->n_dropped / (double)S : 0.0;
}

static moe_status i64_tensor(moe_tensor **out, int ndim, const int64_t *shape, const int64_t *v)
{
    return moe_tensor_from_data(out, MOE_I64, MOE_CPU, ndim, shape, v);
}

moe_status moe_dispatch_counts(moe_tensor **out, const moe_dispatch *d)
{
    return i64_tensor(out, 1, &d->E, d->counts);
}

moe_status moe_dispatch_routed(moe_tensor **out, const moe_dispatch *d)
{
    return i64_tensor(out, 1, &d->E, d->routed);
}

moe_status moe_dispatch_group_sizes(moe_tensor **out, const moe_dispatch *d)
{
    MOE_TRY(moe_tensor_empty(out, MOE_I64, MOE_CPU, 1, &d->E));
    int64_t *v = moe_tensor_data(*out);
    for (int64_t e = 0; e < d->E; e++) v[e] = d->offsets[e + 1] - d->offsets[e];
    return MOE_OK;
}

moe_status moe_dispatch_kept(moe_tensor **out, const moe_dispatch *d)
{
    int64_t shape[2] = {d->T, d->K};
    MOE_TRY(moe_tensor_empty(out, MOE_BOOL, MOE_CPU, 2, shape));
    uint8_t *v = moe_tensor_data(*out);
    moe_cpu_plan_kept(v, d->slot_row, d->T * d->K);
    return MOE_OK;
}

/* ---- helpers ------------------------------------------------------------------------ */

/* The plan's row_token, row_slot and slot_row on DEVICE (CUDA), copied on
 * first use and kept with the plan (pointers into d->device_index). */
typedef struct dev_index {
    const int64_t *row_token, *row_slot, *slot_row;
} dev_index;

static moe_status device_index(dev_index *ix, moe_dispatch *d, moe_device device)
{
    int64_t N = d->rows, S = d->T * d->K;
    if (!d->device_index) {
        int64_t n = 2 * N + S;
        moe_tensor *h = NULL, *t = NULL;
        MOE_TRY(moe_tensor_empty(&h, MOE_I64, MOE_CPU, 1, &n));
        int64_t *v = moe_tensor_data(h);
        memcpy(v, d->row_token, sizeof *v * (size_t)N);
        memcpy(v + N, d->row_slot, sizeof *v * (size_t)N);
        memcpy(v + 2 * N, d->slot_row, sizeof *v * (size_t)S);
        moe_status st = moe_to_device(&t, h, device);
        moe_tensor_release(h);
        MOE_TRY(st);
        d->device_index = t;
    }
    const int64_t *v = moe_tensor_data(d->device_index);
    *ix = (dev_index){.row_token = v, .row_slot = v + N, .slot_row = v + 2 * N};
    return MOE_OK;
}

/* Convert RES (compute dtype, no graph) to DTYPE, consuming RES. */
static moe_status finish_dtype(moe_tensor **res, moe_dtype dtype)
{
    if ((*res)->dtype == dtype) return MOE_OK;
    moe_tensor *c;
    MOE_NO_GRAD_BEGIN;
    moe_status st = moe_to_dtype(&c, *res, dtype);
    MOE_NO_GRAD_END;
    moe_tensor_release(*res);
    *res = st == MOE_OK ? c : NULL;
    return st;
}

/* ---- permute ---------------------------------------------------------------------------- */

/* dX [T D]: each token's row gradients summed over its K slots. */
static moe_status permute_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    moe_dispatch *d = n->ctx;
    moe_dtype c = moe_dtype_compute(g->dtype);
    moe_tensor *gc = NULL;
    MOE_TRY(moe_as_compute(&gc, g, c));
    int64_t D = g->shape[1], shape[2] = {d->T, D};
    moe_status st = moe_tensor_empty(&gin[0], c, g->device, 2, shape);
    if (st == MOE_OK && moe_on_cuda(gc)) {
        dev_index ix;
        st = device_index(&ix, d, gc->device);
        if (st == MOE_OK)
            st = MOE_CUDA(moe_cuda_rows_combine(false, moe_tensor_data(gin[0]), moe_tensor_data(gc),
                                                ix.slot_row, NULL, d->T, d->K, D));
    } else if (st == MOE_OK) {
        moe_cpu_rows_combine(c, moe_tensor_data(gin[0]), moe_tensor_data(gc), d->slot_row, NULL,
                             d->T, d->K, D);
    }
    if (st == MOE_OK) st = finish_dtype(&gin[0], n->inputs[0]->dtype);
    moe_tensor_release(gc);
    return st;
}

static moe_status check_rows(const char *op, const moe_tensor *x, int64_t rows, const char *what)
{
    MOE_CHECK_FLOAT(op, x);
    if (moe_on_cuda(x) && moe_dtype_compute(x->dtype) != MOE_F32)
        return moe_fail(MOE_ERR_DTYPE, op, "%s on cuda must be f32 or bf16, got %s", what,
                        moe_dtype_name(x->dtype));
    if (x->ndim != 2 || x->shape[0] != rows)
        return moe_fail(MOE_ERR_SHAPE, op, "%s must be [%lld D] for this plan, got %s", what,
                        (long long)rows, moe_shape_str(x));
    return MOE_OK;
}

moe_status moe_dispatch_permute(moe_tensor **out, moe_tensor *x, moe_dispatch *d)
{
    static const char *op = "moe-forward";
    *out = NULL;
    MOE_CHECK_NOT_NULL(op, x);
    MOE_CHECK_NOT_NULL(op, d);
    MOE_TRY(check_rows(op, x, d->T, "input"));
    moe_dtype c = moe_dtype_compute(x->dtype);
    int64_t D = x->shape[1], shape[2] = {d->rows, D};
    moe_tensor *xc = NULL, *r = NULL;
    moe_status st = MOE_OK;
    MOE_TRYG(moe_as_compute(&xc, x, c));
    MOE_TRYG(moe_tensor_empty(&r, c, x->device, 2, shape));
    if (moe_on_cuda(r)) {
        dev_index ix;
        MOE_TRYG(device_index(&ix, d, r->device));
        MOE_TRYG(MOE_CUDA(moe_cuda_rows_gather(false, moe_tensor_data(r), moe_tensor_data(xc), ix.row_token,
                                               ix.row_slot, NULL, d->rows, D)));
    } else {
        moe_cpu_rows_gather(c, moe_tensor_data(r), moe_tensor_data(xc), d->row_token, d->row_slot, NULL,
                            d->rows, D);
    }
    MOE_TRYG(finish_dtype(&r, x->dtype));
    MOE_TRYG(moe_autograd_record(r, op, permute_backward, 1, &x, 0, NULL, moe_dispatch_retain(d),
                                 release_ctx));
    *out = r;
    r = NULL;
done:
    moe_tensor_release(xc);
    moe_tensor_release(r);
    return st;
}

/* ---- combine ----------------------------------------------------------------------------- */

/* dY [N D]: row of slot (t, k) = W[t k] · dOut[t] (padding rows zero);
 * dW [T K] = <dOut[t], Y row of (t, k)> (dropped slots zero).
 * saved: [0] Y and [1] W (or NULL) in the compute dtype. */
static moe_status combine_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    moe_dispatch *d = n->ctx;
    moe_tensor *yc = n->saved[0], *wc = n->saved[1];
    moe_dtype c = yc->dtype;
    int64_t D = yc->shape[1];
    moe_tensor *gc = NULL;
    moe_status st = MOE_OK;
    bool cuda = moe_on_cuda(yc);
    dev_index ix = {0};
    if (cuda) MOE_TRYG(device_index(&ix, d, yc->device));
    MOE_TRYG(moe_as_compute(&gc, g, c));
    if (n->inputs[0]) {
        int64_t shape[2] = {d->rows, D};
        MOE_TRYG(moe_tensor_empty(&gin[0], c, yc->device, 2, shape));
        if (cuda)
            MOE_TRYG(MOE_CUDA(moe_cuda_rows_gather(false, moe_tensor_data(gin[0]), moe_tensor_data(gc),
                                                   ix.row_token, ix.row_slot,
                                                   wc ? moe_tensor_data(wc) : NULL, d->rows, D)));
        else
            moe_cpu_rows_gather(c, moe_tensor_data(gin[0]), moe_tensor_data(gc), d->row_token,
                                d->row_slot, wc ? moe_tensor_data(wc) : NULL, d->rows, D);
        MOE_TRYG(finish_dtype(&gin[0], n->inputs[0]->dtype));
    }
    if (n->inputs[1]) {
        int64_t shape[2] = {d->T, d->K};
        MOE_TRYG(moe_tensor_empty(&gin[1], c, yc->device, 2, shape));
        if (cuda)
            MOE_TRYG(MOE_CUDA(moe_cuda_rows_dot(false, moe_tensor_data(gin[1]), moe_tensor_data(gc),
                                                moe_tensor_data(yc), ix.slot_row, d->T, d->K, D)));
        else
            moe_cpu_rows_dot(c, moe_tensor_data(gin[1]), moe_tensor_data(gc), moe_tensor_data(yc),
                             d->slot_row, d->T, d->K, D);
        MOE_TRYG(finish_dtype(&gin[1], n->inputs[1]->dtype));
    }
done:
    moe_tensor_release(gc);
    return st;
}

moe_status moe_dispatch_combine(moe_tensor **out, moe_tensor *y, moe_tensor *w, moe_dispatch *d)
{
    static const char *op = "moe-forward";
    *out = NULL;
    MOE_CHECK_NOT_NULL(op, y);
    MOE_CHECK_NOT_NULL(op, d);
    MOE_TRY(check_rows(op, y, d->rows, "expert output"));
    if (w) {
        MOE_CHECK_FLOAT(op, w);
        if (w->device != y->device)
            return moe_fail(MOE_ERR_DEVICE, op, "weights are on %s but the expert output is on %s",
                            moe_device_name(w->device), moe_device_name(y->device));
        if (w->ndim != 2 || w->shape[0] != d->T || w->shape[1] != d->K)
            return moe_fail(MOE_ERR_SHAPE, op, "weights %s do not match the plan's routing [%lld %lld]",
                            moe_shape_str(w), (long long)d->T, (long long)d->K);
    }
    moe_dtype c = moe_dtype_compute(y->dtype);
    int64_t D = y->shape[1], shape[2] = {d->T, D};
    moe_tensor *yc = NULL, *wc = NULL, *r = NULL;
    moe_status st = MOE_OK;
    MOE_TRYG(moe_as_compute(&yc, y, c));
    if (w) MOE_TRYG(moe_as_compute(&wc, w, c));
    MOE_TRYG(moe_tensor_empty(&r, c, y->device, 2, shape));
    if (moe_on_cuda(r)) {
        dev_index ix;
        MOE_TRYG(device_index(&ix, d, r->device));
        MOE_TRYG(MOE_CUDA(moe_cuda_rows_combine(false, moe_tensor_data(r), moe_tensor_data(yc), ix.slot_row,
                                                wc ? moe_tensor_data(wc) : NULL, d->T, d->K, D)));
    } else {
        moe_cpu_rows_combine(c, moe_tensor_data(r), moe_tensor_data(yc), d->slot_row,
                             wc ? moe_tensor_data(wc) : NULL, d->T, d->K, D);
    }
    MOE_TRYG(finish_dtype(&r, y->dtype));
    moe_tensor *ins[2] = {y, w}, *saved[2] = {yc, wc};
    MOE_TRYG(moe_autograd_record(r, op, combine_backward, 2, ins, 2, saved, moe_dispatch_retain(d),
                                 release_ctx));
    *out = r;
    r = NULL;
done:
    moe_tensor_release(yc);
    moe_tensor_release(wc);
    moe_tensor_release(r);
    return st;
}
