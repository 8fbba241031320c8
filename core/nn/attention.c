/* attention.c — scaled-dot-product attention: the fused node (forward
 * beside backward, loops in kernels/cpu/attention.c) and the plain
 * composition of ops kept as its oracle.
 *
 * Dimension letters: B batch, S sequence, H query heads, KV kv heads, G =
 * H/KV query heads per kv head, hd head dim.
 * Fused node: saved q, k, v, out (compute dtype, contiguous), lse [B H S];
 * iargs[0] causal. */
#include <math.h>
#include <string.h>

#include "../../kernels/cpu/attention.h"
#include "../names.h"
#include "attention.h"
#include "internal.h"

NAME_TABLE(moe_attention_impl, attention_impl, MOE_ATTENTION_IMPL_COUNT, "fused", "plain")

static moe_cpu_attention problem(const moe_tensor *q, const moe_tensor *k, moe_dtype cd, bool causal)
{
    return (moe_cpu_attention){.dtype = cd, .B = q->shape[0], .S = q->shape[1], .H = q->shape[2],
                               .KV = k->shape[2], .hd = q->shape[3],
                               .scale = 1.0 / sqrt((double)q->shape[3]), .causal = causal};
}

static moe_status scratch_for(moe_tensor **out, const moe_cpu_attention *p)
{
    int64_t n = moe_cpu_attention_scratch(p);
    return moe_tensor_empty(out, p->dtype, MOE_CPU, 1, &n);
}

/* ---- fused ------------------------------------------------------------------------------ */

static moe_status fused_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    moe_tensor *cq = n->saved[0], *ck = n->saved[1], *cv = n->saved[2], *o = n->saved[3], *lse = n->saved[4];
    moe_dtype cd = cq->dtype;
    moe_cpu_attention p = problem(cq, ck, cd, n->iargs[0] != 0);
    moe_tensor *cg = NULL, *dq = NULL, *dk = NULL, *dv = NULL, *scratch = NULL;
    moe_status st = MOE_OK;
    MOE_TRYG(moe_as_compute(&cg, g, cd));
    MOE_TRYG(moe_tensor_empty(&dq, cd, MOE_CPU, 4, cq->shape));
    MOE_TRYG(moe_tensor_empty(&dk, cd, MOE_CPU, 4, ck->shape));
    MOE_TRYG(moe_tensor_empty(&dv, cd, MOE_CPU, 4, cv->shape));
    MOE_TRYG(scratch_for(&scratch, &p));
    moe_cpu_attention_backward(&p, moe_tensor_data(dq), moe_tensor_data(dk), moe_tensor_data(dv),
                               moe_tensor_data(cg), moe_tensor_data(cq), moe_tensor_data(ck),
                               moe_tensor_data(cv), moe_tensor_data(o), moe_tensor_data(lse),
                               moe_tensor_data(scratch));
    moe_tensor *grads[3] = {dq, dk, dv};
    for (int i = 0; i < 3; i++) {
        if (n->inputs[i]) {
            st = moe_from_compute(&gin[i], grads[i], n->inputs[i]->dtype); /* takes it over */
        } else {
            moe_tensor_release(grads[i]);
        }
        grads[i] = NULL;
        if (st != MOE_OK) {
            for (int j = i + 1; j < 3; j++) moe_tensor_release(grads[j]);
            break;
        }
    }
    dq = dk = dv = NULL;
done:
    moe_tensor_release(cg);
    moe_tensor_release(dq);
    moe_tensor_release(dk);
    moe_tensor_release(dv);
    moe_tensor_release(scratch);
    return st;
}

static moe_status fused(moe_tensor **out, moe_tensor *q, moe_tensor *k, moe_tensor *v, bool causal,
                        moe_dtype odt)
{
    moe_dtype cd = moe_dtype_compute(odt);
    moe_cpu_attention p = problem(q, k, cd, causal);
    int64_t lshape[3] = {p.B, p.H, p.S};
    moe_tensor *cq = NULL, *ck = NULL, *cv = NULL, *o = NULL, *lse = NULL, *scratch = NULL, *res = NULL;
    moe_status st = MOE_OK;
    MOE_NO_GRAD_BEGIN;
    MOE_TRYG(moe_as_compute(&cq, q, cd));
    MOE_TRYG(moe_as_compute(&ck, k, cd));
    MOE_TRYG(moe_as_compute(&cv, v, cd));
    MOE_TRYG(moe_tensor_empty(&o, cd, MOE_CPU, 4, q->shape));
    MOE_TRYG(moe_tensor_empty(&lse, cd, MOE_CPU, 3, lshape));
    MOE_TRYG(scratch_for(&scratch, &p));
    moe_cpu_attention_forward(&p, moe_tensor_data(o), moe_tensor_data(lse), moe_tensor_data(cq),
                              moe_tensor_data(ck), moe_tensor_data(cv), moe_tensor_data(scratch));
    MOE_TRYG(moe_as_compute(&res, o, odt));
    moe_grad_set_enabled(moe_prev_grad_);
    moe_tensor *inputs[3] = {q, k, v}, *saved[5] = {cq, ck, cv, o, lse};
    MOE_TRYG(moe_autograd_record(res, "attention", fused_backward, 3, inputs, 5, saved, NULL, NULL));
    if (res->grad_fn) res->grad_fn->iargs[0] = causal;
    *out = res;
    res = NULL;
done:
    MOE_NO_GRAD_END;
    moe_tensor_release(cq);
    moe_tensor_release(ck);
    moe_tensor_release(cv);
    moe_tensor_release(o);
    moe_tensor_release(lse);
    moe_tensor_release(scratch);
    moe_tensor_release(res);
    return st;
}

/* ---- plain: the oracle -------------------------------------------------------------------- */

/* K [B S KV hd] repeated to [B S H hd]: query head h sees kv head h / G. */
static moe_status repeat_kv(moe_tensor **out, moe_tensor *k, int64_t H)
{
    int64_t KV = k->shape[2];
    if (KV == H) {
        *out = moe_tensor_retain(k);
        return MOE_OK;
    }
    int64_t B = k->shape[0], S = k->shape[1], hd = k->shape[3];
    int64_t big[5] = {B, S, KV, H / KV, hd}, flat[4] = {B, S, H, hd};
    moe_tensor *u = NULL, *e = NULL;
    moe_status st = MOE_OK;
    MOE_TRYG(moe_unsqueeze(&u, k, 3));
    MOE_TRYG(moe_expand(&e, u, 5, big));
    MOE_TRYG(moe_reshape(out, e, 4, flat));
done:
    moe_tensor_release(u);
    moe_tensor_release(e);
    return st;
}

static moe_status plain(moe_tensor **out, moe_tensor *q, moe_tensor *k, moe_tensor *v, bool causal)
{
    int64_t S = q->shape[1], H = q->shape[2], hd = q->shape[3], ss[2] = {S, S};
    static const int to_heads[4] = {0, 2, 1, 3}, to_keys[4] = {0, 2, 3, 1};
    moe_tensor *kr = NULL, *vr = NULL, *qt = NULL, *kt = NULL, *vt = NULL, *sc = NULL, *scs = NULL;
    moe_tensor *mask = NULL, *masked = NULL, *pr = NULL, *o = NULL, *ot = NULL;
    moe_status st = MOE_OK;
    MOE_TRYG(repeat_kv(&kr, k, H));
    MOE_TRYG(repeat_kv(&vr, v, H));
    MOE_TRYG(moe_permute(&qt, q, to_heads));  /* [B H S hd] */
    MOE_TRYG(moe_permute(&kt, kr, to_keys));  /* [B H hd S] */
    MOE_TRYG(moe_permute(&vt, vr, to_heads)); /* [B H S hd] */
    MOE_TRYG(moe_matmul(&sc, qt, kt));        /* [B H S S] */
    MOE_TRYG(moe_mul_scalar(&scs, sc, 1.0 / sqrt((double)hd)));
    if (causal) {
        MOE_TRYG(moe_tensor_zeros(&mask, MOE_BOOL, MOE_CPU, 2, ss));
        uint8_t *m = moe_tensor_data(mask);
        for (int64_t i = 0; i < S; i++)
            for (int64_t j = i + 1; j < S; j++) m[i * S + j] = 1; /* the future */
        MOE_TRYG(moe_masked_fill(&masked, scs, mask, -INFINITY));
    } else {
        masked = moe_tensor_retain(scs);
    }
    MOE_TRYG(moe_softmax(&pr, masked, -1));
    MOE_TRYG(moe_matmul(&o, pr, vt));         /* [B H S hd] */
    MOE_TRYG(moe_permute(&ot, o, to_heads));  /* [B S H hd] */
    MOE_TRYG(moe_contiguous(out, ot));
done:;
    moe_tensor *all[] = {kr, vr, qt, kt, vt, sc, scs, mask, masked, pr, o, ot};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) moe_tensor_release(all[i]);
    return st;
}

/* ---- the op --------------------------------------------------------------------------------- */

moe_status moe_attention(moe_tensor **out, moe_tensor *q, moe_tensor *k, moe_tensor *v, bool causal,
                         moe_attention_impl impl)
{
    static const char *op = "attention";
    MOE_CHECK_NOT_NULL(op, out);
    *out = NULL;
    MOE_CHECK_NOT_NULL(op, q);
    MOE_CHECK_NOT_NULL(op, k);
    MOE_CHECK_NOT_NULL(op, v);
    MOE_CHECK_FLOAT(op, q);
    MOE_CHECK_FLOAT(op, k);
    MOE_CHECK_FLOAT(op, v);
    MOE_CHECK_CPU(op, q);
    MOE_CHECK_CPU(op, k);
    MOE_CHECK_CPU(op, v);
    if ((unsigned)impl >= MOE_ATTENTION_IMPL_COUNT)
        return moe_fail(MOE_ERR_ARG, op, "unknown implementation %d (fused or plain)", (int)impl);
    if (q->ndim != 4 || k->ndim != 4 || !moe_tensor_same_shape(k, v))
        return moe_fail(MOE_ERR_SHAPE, op, "expected q [B S H hd] and k, v [B S KV hd], got %s %s %s",
                        moe_shape_str(q), moe_shape_str(k), moe_shape_str(v));
    if (k->shape[0] != q->shape[0] || k->shape[1] != q->shape[1] || k->shape[3] != q->shape[3])
        return moe_fail(MOE_ERR_SHAPE, op, "q %s and k %s differ in batch, sequence or head dim",
                        moe_shape_str(q), moe_shape_str(k));
    if (k->shape[2] < 1 || q->shape[2] % k->shape[2])
        return moe_fail(MOE_ERR_SHAPE, op, "%lld kv heads do not divide %lld query heads",
                        (long long)k->shape[2], (long long)q->shape[2]);
    moe_dtype odt = moe_dtype_promote(moe_dtype_promote(q->dtype, k->dtype), v->dtype);
    if (moe_tensor_numel(q) == 0)
        return moe_tensor_zeros(out, odt, MOE_CPU, 4, q->shape);
    if (impl == MOE_ATTENTION_PLAIN) return plain(out, q, k, v, causal);
    return fused(out, q, k, v, causal, odt);
}
