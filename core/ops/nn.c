/* nn.c — fused neural-net ops: rms_norm, layer_norm, cross_entropy and
 * embedding, each forward beside its analytic backward.
 *
 * Dimension letters: R rows (all leading dims of x, flattened), D the
 * normalised last dim (embedding: the row width), N samples and C classes of
 * cross_entropy, V rows of the embedding table, I ids (all ids, flattened),
 * H chunks of CHUNK rows.
 *
 * The loops live in kernels/cpu/nn.c and their CUDA twins, with the same
 * arguments, in kernels/cuda/nn.cu (embedding's backward uses the CUDA index
 * kernels); the innermost call picks one by device (core/device.h). Both keep
 * row sums in double and parameter gradients as fixed chunks of CHUNK rows
 * summed in chunk order, so results do not depend on the thread count or the
 * launch shape. bf16 computes in f32. The host-side checks of ids and
 * targets are CPU kernels too (kernels/cpu/index.c, kernels/cpu/nn.c). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cpu/gemm.h"
#include "../../kernels/cpu/index.h"
#include "../../kernels/cpu/nn.h"
#include "../../kernels/cuda/index.h"
#include "../../kernels/cuda/nn.h"
#include "device.h"
#include "internal.h"

#define CHUNK 32 /* rows per partial sum of a parameter gradient */

/* The innermost call: the CUDA twin when ON lives on a GPU, else the CPU
 * loop, same arguments: KERNEL(rms_fwd, on, dt, args…). Needs st and a done
 * label. */
#define KERNEL(name, on, dt, ...)                                                   \
    do {                                                                            \
        if (moe_on_cuda(on))                                                        \
            MOE_TRYG(MOE_CUDA(moe_cuda_##name((dt), __VA_ARGS__)));                 \
        else                                                                        \
            moe_cpu_##name((dt), __VA_ARGS__);                                      \
    } while (0)

/* ---- shared helpers ------------------------------------------------------------------------ */

static inline void *dp(const moe_tensor *t) { return t ? moe_tensor_data(t) : NULL; }

/* Product of all dims but the last (the rows of a row-wise op). */
static int64_t leading_rows(const moe_tensor *t)
{
    int64_t r = 1;
    for (int i = 0; i + 1 < t->ndim; i++) r *= t->shape[i];
    return r;
}

/* Hand G (compute dtype) back in the dtype of input T. */
static moe_status to_input_dtype(moe_tensor **gin, moe_tensor *g, const moe_tensor *t)
{
    if (g->dtype == t->dtype) {
        *gin = moe_tensor_retain(g);
        return MOE_OK;
    }
    return moe_to_dtype(gin, g, t->dtype);
}

/* R converted to dtype ODT (or R itself) as the op's result. */
static moe_status to_result(moe_tensor **res, moe_tensor **r, moe_dtype odt)
{
    if ((*r)->dtype == odt) {
        *res = *r;
        *r = NULL;
        return MOE_OK;
    }
    return moe_to_dtype(res, *r, odt);
}

/* A per-feature parameter (weight/bias) [D] in compute dtype, or FILL when
 * absent (so the kernels need no NULL branches). */
static moe_status param_or_fill(moe_tensor **out, moe_tensor *p, moe_dtype cdt, moe_device dev,
                                int64_t d, double fill)
{
    if (p) return moe_as_compute(out, p, cdt);
    return moe_tensor_full(out, cdt, dev, 1, &d, fill);
}

static moe_status check_param(const char *op, const char *what, const moe_tensor *x,
                              const moe_tensor *p)
{
    if (!p) return MOE_OK;
    MOE_CHECK_SAME_DEVICE(op, x, p);
    MOE_CHECK_FLOAT(op, p);
    int64_t d = x->shape[x->ndim - 1];
    if (p->ndim != 1 || p->shape[0] != d)
        return moe_fail(MOE_ERR_SHAPE, op, "%s %s does not match the last dim of x %s (expected [%lld])",
                        what, moe_shape_str(p), moe_shape_str(x), (long long)d);
    return MOE_OK;
}

static moe_status check_norm_args(const char *op, moe_tensor *x, moe_tensor *w, moe_tensor *b,
                                  double eps)
{
    MOE_CHECK_NOT_NULL(op, x);
    MOE_CHECK_FLOAT(op, x);
    if (x->ndim == 0) return moe_fail(MOE_ERR_SHAPE, op, "x needs at least 1 dim, got []");
    MOE_TRY(check_param(op, "weight", x, w));
    MOE_TRY(check_param(op, "bias", x, b));
    if (!(eps >= 0) || isinf(eps))
        return moe_fail(MOE_ERR_ARG, op, "eps must be finite and >= 0, got %g", eps);
    return MOE_OK;
}

/* A [H D] f64 scratch for chunked parameter-gradient sums. */
static moe_status chunk_buffer(moe_tensor **out, moe_device dev, int64_t rows, int64_t d)
{
    int64_t shape[2] = {(rows + CHUNK - 1) / CHUNK, d};
    return moe_tensor_empty(out, MOE_F64, dev, 2, shape);
}

/* The elements of contiguous T readable on the host in *V: T's own data, or
 * a copy in *HOST (free it) for a device tensor. */
static moe_status host_view(const char *op, const moe_tensor *t, const void **v, void **host)
{
    size_t nbytes = moe_tensor_nbytes(t);
    *host = NULL;
    *v = moe_tensor_data(t);
    if (t->device == MOE_CPU || nbytes == 0) return MOE_OK;
    *host = malloc(nbytes);
    if (!*host) return moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of a host copy of %s", nbytes, moe_shape_str(t));
    *v = *host;
    return moe_bytes_to_host(*host, moe_tensor_data(t), nbytes, t->device);
}

/* ---- rms_norm ---------------------------------------------------------------------------------- */

/* saved: x [R D], weight [D] (NULL: none), rinv [R], all in compute dtype. */
static moe_status rms_norm_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    moe_tensor *cx = n->saved[0], *cw = n->saved[1], *rinv = n->saved[2];
    moe_tensor *x = n->inputs[0], *w = n->inputs[1];
    moe_dtype cdt = cx->dtype;
    int64_t D = cx->shape[cx->ndim - 1], R = leading_rows(cx);
    moe_tensor *cg = NULL, *ones = NULL, *dx = NULL, *part = NULL, *dw = NULL;
    moe_status st = MOE_OK;
    moe_device dev = cx->device;
    MOE_TRYG(moe_as_compute(&cg, g, cdt));
    if (!cw) MOE_TRYG(param_or_fill(&ones, NULL, cdt, dev, D, 1.0));
    if (x) MOE_TRYG(moe_tensor_empty(&dx, cdt, dev, cx->ndim, cx->shape));
    if (w) {
        MOE_TRYG(chunk_buffer(&part, dev, R, D));
        MOE_TRYG(moe_tensor_empty(&dw, cdt, dev, 1, &D));
    }
    KERNEL(rms_bwd, cx, cdt, dp(dx), dp(part), dp(cg), dp(cx), dp(cw ? cw : ones), dp(rinv), R, D,
           CHUNK);
    if (x) MOE_TRYG(to_input_dtype(&gin[0], dx, x));
    if (w) {
        KERNEL(chunks_sum, part, cdt, dp(dw), dp(part), part->shape[0], D);
        MOE_TRYG(to_input_dtype(&gin[1], dw, w));
    }
done:
    moe_tensor_release(cg);
    moe_tensor_release(ones);
    moe_tensor_release(dx);
    moe_tensor_release(part);
    moe_tensor_release(dw);
    return st;
}

moe_status moe_rms_norm(moe_tensor **out, moe_tensor *x, moe_tensor *weight, double eps)
{
    *out = NULL;
    MOE_TRY(check_norm_args("rms-norm", x, weight, NULL, eps));
    moe_dtype odt = weight ? moe_dtype_promote(x->dtype, weight->dtype) : x->dtype;
    moe_dtype cdt = moe_dtype_compute(odt);
    int64_t D = x->shape[x->ndim - 1], R = leading_rows(x);
    moe_tensor *cx = NULL, *cw = NULL, *y = NULL, *rinv = NULL, *res = NULL;
    moe_status st = MOE_OK;
    MOE_TRYG(moe_as_compute(&cx, x, cdt));
    MOE_TRYG(param_or_fill(&cw, weight, cdt, x->device, D, 1.0));
    MOE_TRYG(moe_tensor_empty(&y, cdt, x->device, x->ndim, x->shape));
    MOE_TRYG(moe_tensor_empty(&rinv, cdt, x->device, 1, &R));
    KERNEL(rms_fwd, y, cdt, dp(y), dp(rinv), dp(cx), dp(cw), R, D, eps);
    MOE_TRYG(to_result(&res, &y, odt));
    moe_tensor *inputs[2] = {x, weight}, *saved[3] = {cx, weight ? cw : NULL, rinv};
    MOE_TRYG(moe_autograd_record(res, "rms-norm", rms_norm_backward, 2, inputs, 3, saved, NULL, NULL));
    if (res->grad_fn) res->grad_fn->dargs[0] = eps;
    *out = res;
    res = NULL;
done:
    moe_tensor_release(cx);
    moe_tensor_release(cw);
    moe_tensor_release(y);
    moe_tensor_release(rinv);
    moe_tensor_release(res);
    return st;
}

/* ---- layer_norm -------------------------------------------------------------------------------- */

/* saved: x [R D], weight [D] (NULL: none), mean [R], rstd [R], compute dtype. */
static moe_status layer_norm_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    moe_tensor *cx = n->saved[0], *cw = n->saved[1], *mean = n->saved[2], *rstd = n->saved[3];
    moe_tensor *x = n->inputs[0], *w = n->inputs[1], *b = n->inputs[2];
    moe_dtype cdt = cx->dtype;
    int64_t D = cx->shape[cx->ndim - 1], R = leading_rows(cx);
    moe_tensor *cg = NULL, *ones = NULL, *dx = NULL, *pw = NULL, *pb = NULL, *dw = NULL, *db = NULL;
    moe_status st = MOE_OK;
    moe_device dev = cx->device;
    MOE_TRYG(moe_as_compute(&cg, g, cdt));
    if (!cw) MOE_TRYG(param_or_fill(&ones, NULL, cdt, dev, D, 1.0));
    if (x) MOE_TRYG(moe_tensor_empty(&dx, cdt, dev, cx->ndim, cx->shape));
    if (w) {
        MOE_TRYG(chunk_buffer(&pw, dev, R, D));
        MOE_TRYG(moe_tensor_empty(&dw, cdt, dev, 1, &D));
    }
    if (b) {
        MOE_TRYG(chunk_buffer(&pb, dev, R, D));
        MOE_TRYG(moe_tensor_empty(&db, cdt, dev, 1, &D));
    }
    KERNEL(ln_bwd, cx, cdt, dp(dx), dp(pw), dp(pb), dp(cg), dp(cx), dp(cw ? cw : ones), dp(mean),
           dp(rstd), R, D, CHUNK);
    if (x) MOE_TRYG(to_input_dtype(&gin[0], dx, x));
    if (w) {
        KERNEL(chunks_sum, pw, cdt, dp(dw), dp(pw), pw->shape[0], D);
        MOE_TRYG(to_input_dtype(&gin[1], dw, w));
    }
    if (b) {
        KERNEL(chunks_sum, pb, cdt, dp(db), dp(pb), pb->shape[0], D);
        MOE_TRYG(to_input_dtype(&gin[2], db, b));
    }
done:
    moe_tensor_release(cg);
    moe_tensor_release(ones);
    moe_tensor_release(dx);
    moe_tensor_release(pw);
    moe_tensor_release(pb);
    moe_tensor_release(dw);
    moe_tensor_release(db);
    return st;
}

moe_status moe_layer_norm(moe_tensor **out, moe_tensor *x, moe_tensor *weight, moe_tensor *bias,
                          double eps)
{
    *out = NULL;
    MOE_TRY(check_norm_args("layer-norm", x, weight, bias, eps));
    moe_dtype odt = x->dtype;
    if (weight) odt = moe_dtype_promote(odt, weight->dtype);
    if (bias) odt = moe_dtype_promote(odt, bias->dtype);
    moe_dtype cdt = moe_dtype_compute(odt);
    int64_t D = x->shape[x->ndim - 1], R = leading_rows(x);
    moe_tensor *cx = NULL, *cw = NULL, *cb = NULL, *y = NULL, *mean = NULL, *rstd = NULL, *res = NULL;
    moe_status st = MOE_OK;
    MOE_TRYG(moe_as_compute(&cx, x, cdt));
    MOE_TRYG(param_or_fill(&cw, weight, cdt, x->device, D, 1.0));
    MOE_TRYG(param_or_fill(&cb, bias, cdt, x->device, D, 0.0));
    MOE_TRYG(moe_tensor_empty(&y, cdt, x->device, x->ndim, x->shape));
    MOE_TRYG(moe_tensor_empty(&mean, cdt, x->device, 1, &R));
    MOE_TRYG(moe_tensor_empty(&rstd, cdt, x->device, 1, &R));
    KERNEL(ln_fwd, y, cdt, dp(y), dp(mean), dp(rstd), dp(cx), dp(cw), dp(cb), R, D, eps);
    MOE_TRYG(to_result(&res, &y, odt));
    moe_tensor *inputs[3] = {x, weight, bias}, *saved[4] = {cx, weight ? cw : NULL, mean, rstd};
    MOE_TRYG(moe_autograd_record(res, "layer-norm", layer_norm_backward, 3, inputs, 4, saved, NULL,
                                 NULL));
    if (res->grad_fn) res->grad_fn->dargs[0] = eps;
    *out = res;
    res = NULL;
done:
    moe_tensor_release(cx);
    moe_tensor_release(cw);
    moe_tensor_release(cb);
    moe_tensor_release(y);
    moe_tensor_release(mean);
    moe_tensor_release(rstd);
    moe_tensor_release(res);
    return st;
}

/* ---- cross_entropy ------------------------------------------------------------------------------ */

/* saved: logits [N C] (compute dtype), targets [N] i64, lse [N];
 * iargs[0] = ignore_index, dargs[0] = number of counted targets. */
static moe_status cross_entropy_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    moe_tensor *cl = n->saved[0], *tg = n->saved[1], *lse = n->saved[2], *dl = NULL, *cg = NULL;
    double count = n->dargs[0];
    moe_dtype cdt = cl->dtype;
    moe_status st = MOE_OK;
    MOE_TRYG(moe_tensor_empty(&dl, cdt, cl->device, 2, cl->shape));
    MOE_TRYG(moe_as_compute(&cg, g, cdt)); /* the kernel reads g where it lives: no round trip */
    KERNEL(ce_bwd, dl, cdt, dp(dl), dp(cl), dp(lse), dp(tg), cl->shape[0], cl->shape[1], n->iargs[0],
           dp(cg), count);
    MOE_TRYG(to_input_dtype(&gin[0], dl, n->inputs[0]));
done:
    moe_tensor_release(dl);
    moe_tensor_release(cg);
    return st;
}

moe_status moe_cross_entropy(moe_tensor **out, moe_tensor *logits, moe_tensor *targets,
                             int64_t ignore_index)
{
    *out = NULL;
    const char *op = "cross-entropy";
    MOE_CHECK_NOT_NULL(op, logits);
    MOE_CHECK_NOT_NULL(op, targets);
    MOE_CHECK_SAME_DEVICE(op, logits, targets);
    MOE_CHECK_FLOAT(op, logits);
    MOE_CHECK_INTEGER(op, targets);
    if (logits->ndim != 2)
        return moe_fail(MOE_ERR_SHAPE, op, "logits must be [N C], got %s", moe_shape_str(logits));
    int64_t N = logits->shape[0], C = logits->shape[1];
    if (targets->ndim != 1 || targets->shape[0] != N)
        return moe_fail(MOE_ERR_SHAPE, op, "targets %s do not match logits %s (expected [%lld])",
                        moe_shape_str(targets), moe_shape_str(logits), (long long)N);
    moe_dtype cdt = moe_dtype_compute(logits->dtype);
    moe_tensor *cl = NULL, *tg = NULL, *lse = NULL, *loss = NULL, *r = NULL;
    void *t_host = NULL, *loss_host = NULL;
    moe_status st = MOE_OK;
    MOE_TRYG(moe_as_compute(&tg, targets, MOE_I64));
    const int64_t *t;
    MOE_TRYG(host_view(op, tg, (const void **)&t, &t_host)); /* checked and counted on the host */
    int64_t count, bad = moe_cpu_ce_targets(t, N, C, ignore_index, &count);
    if (bad >= 0) {
        st = moe_fail(MOE_ERR_INDEX, op, "target %lld at position %lld is out of range for %lld classes",
                      (long long)t[bad], (long long)bad, (long long)C);
        goto done;
    }
    MOE_TRYG(moe_as_compute(&cl, logits, cdt));
    MOE_TRYG(moe_tensor_empty(&lse, cdt, logits->device, 1, &N));
    MOE_TRYG(moe_tensor_empty(&loss, MOE_F64, logits->device, 1, &N));
    KERNEL(ce_fwd, loss, cdt, dp(loss), dp(lse), dp(cl), dp(tg), N, C, ignore_index);
    double sum; /* in row order on the host: deterministic */
    const double *lv;
    MOE_TRYG(host_view(op, loss, (const void **)&lv, &loss_host));
    moe_cpu_sum_f64_rows(MOE_F64, &sum, lv, N, 1);
    MOE_TRYG(moe_tensor_scalar(&r, logits->dtype, logits->device, count ? sum / (double)count : NAN));
    moe_tensor *inputs[1] = {logits}, *saved[3] = {cl, tg, lse};
    MOE_TRYG(moe_autograd_record(r, op, cross_entropy_backward, 1, inputs, 3, saved, NULL, NULL));
    if (r->grad_fn) {
        r->grad_fn->iargs[0] = ignore_index;
        r->grad_fn->dargs[0] = (double)count;
    }
    *out = r;
    r = NULL;
done:
    free(t_host);
    free(loss_host);
    moe_tensor_release(cl);
    moe_tensor_release(tg);
    moe_tensor_release(lse);
    moe_tensor_release(loss);
    moe_tensor_release(r);
    return st;
}

/* ---- embedding ------------------------------------------------------------------------------------ */

/* saved: ids [I] i64; iargs[0] = V, iargs[1] = D. */
static moe_status embedding_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    moe_tensor *w = n->inputs[0], *ids = n->saved[0], *cg = NULL, *dw = NULL;
    moe_dtype cdt = moe_dtype_compute(w->dtype);
    int64_t D = n->iargs[1];
    moe_status st = MOE_OK;
    MOE_TRYG(moe_as_compute(&cg, g, cdt));
    MOE_TRYG(moe_tensor_zeros(&dw, cdt, g->device, 2, (int64_t[]){n->iargs[0], D}));
    if (moe_on_cuda(dw)) /* rows of dw gather their ids' rows of g in id order, as emb_bwd */
        MOE_TRYG(MOE_CUDA(moe_cuda_index_add(cdt, dp(dw), dp(cg), dp(ids), 1, n->iargs[0],
                                             moe_tensor_numel(ids), D)));
    else
        moe_cpu_emb_bwd(cdt, dp(dw), dp(cg), dp(ids), moe_tensor_numel(ids), D);
    MOE_TRYG(to_input_dtype(&gin[0], dw, w));
done:
    moe_tensor_release(cg);
    moe_tensor_release(dw);
    return st;
}

moe_status moe_embedding(moe_tensor **out, moe_tensor *weight, moe_tensor *ids)
{
    *out = NULL;
    const char *op = "embedding";
    MOE_CHECK_NOT_NULL(op, weight);
    MOE_CHECK_NOT_NULL(op, ids);
    MOE_CHECK_SAME_DEVICE(op, weight, ids);
    MOE_CHECK_INTEGER(op, ids);
    if (weight->ndim != 2)
        return moe_fail(MOE_ERR_SHAPE, op, "weight must be [V D], got %s", moe_shape_str(weight));
    if (ids->ndim + 1 > MOE_MAX_DIMS)
        return moe_fail(MOE_ERR_SHAPE, op, "ids %s leave no room for the embedding dim (max %d dims)",
                        moe_shape_str(ids), MOE_MAX_DIMS);
    int64_t V = weight->shape[0], D = weight->shape[1];
    moe_tensor *idx = NULL, *cw = NULL, *r = NULL;
    void *iv_host = NULL;
    moe_status st = MOE_OK;
    MOE_TRYG(moe_as_compute(&idx, ids, MOE_I64));
    const int64_t *iv;
    MOE_TRYG(host_view(op, idx, (const void **)&iv, &iv_host)); /* checked on the host */
    int64_t I = moe_tensor_numel(idx), bad = moe_cpu_index_find_bad(iv, I, V);
    if (bad >= 0) {
        st = moe_fail(MOE_ERR_INDEX, op, "id %lld at position %lld is out of range for V = %lld rows",
                      (long long)iv[bad], (long long)bad, (long long)V);
        goto done;
    }
    MOE_TRYG(moe_as_compute(&cw, weight, weight->dtype)); /* contiguous */
    int64_t shape[MOE_MAX_DIMS];
    memcpy(shape, ids->shape, sizeof(int64_t) * (size_t)ids->ndim);
    shape[ids->ndim] = D;
    MOE_TRYG(moe_tensor_empty(&r, weight->dtype, weight->device, ids->ndim + 1, shape));
    size_t esz = moe_dtype_size(weight->dtype);
    if (moe_on_cuda(r)) /* r [I D] ← rows of cw [V D] */
        MOE_TRYG(MOE_CUDA(moe_cuda_index_select(dp(r), dp(cw), esz, dp(idx), 1, V, I, D)));
    else
        moe_cpu_index_select(dp(r), dp(cw), esz, dp(idx), 1, V, I, D);
    moe_tensor *inputs[1] = {weight}, *saved[1] = {idx};
    MOE_TRYG(moe_autograd_record(r, op, embedding_backward, 1, inputs, 1, saved, NULL, NULL));
    if (r->grad_fn) {
        r->grad_fn->iargs[0] = V;
        r->grad_fn->iargs[1] = D;
    }
    *out = r;
    r = NULL;
done:
    free(iv_host);
    moe_tensor_release(idx);
    moe_tensor_release(cw);
    moe_tensor_release(r);
    return st;
}
