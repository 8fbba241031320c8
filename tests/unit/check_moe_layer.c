/* check_moe_layer.c — the MoE layer (core/moe/layer.c, expert_parallel.c)
 * against a naive dense reference: every token through every expert, masked
 * by the routing, composed from moelab's basic ops. Outputs and the
 * gradients of the input, the router weight and every expert (and shared)
 * weight; dropless and capacity modes; K = 1, 2, 8; empty experts; all
 * tokens to one expert; T = 1; a finite-difference check of the whole layer;
 * expert parallelism over 2 and 4 ranks equal to one rank, on the threads
 * backend here and on MPI when this program runs under mpirun (layer.mk). */
#include <string.h>

#include "dist/comm.h"
#include "moe/layer.h"
#include "moe/metrics.h"
#include "testutil.h"

/* Release every tensor listed (NULLs allowed, unlike RELEASE). */
#define FREE_ALL(...)                                                                    \
    do {                                                                                 \
        moe_tensor *fa_[] = {__VA_ARGS__};                                               \
        for (size_t i_ = 0; i_ < sizeof fa_ / sizeof *fa_; i_++) moe_tensor_release(fa_[i_]); \
    } while (0)

/* ---- the dense reference ------------------------------------------------------- */

/* Routing weights [T K] and ids [T K] from logits Z [T E], for the router
 * configurations the tests use (no groups, no bias, scaling 1). */
static moe_status ref_route(moe_tensor **w, moe_tensor **ids, moe_tensor *z, const moe_router_config *rc)
{
    int64_t K = rc->top_k;
    moe_tensor *v = NULL, *s = NULL, *sum = NULL, *sum2 = NULL;
    moe_status st = MOE_OK;
    if (rc->score == MOE_SCORE_SIGMOID) {
        MOE_TRYG(moe_sigmoid(&s, z));
        MOE_TRYG(moe_topk(&v, ids, s, K, 1, true));
        if (K > 1 || rc->normalize == MOE_NORM_ON) { /* renormalised by Σ + eps */
            MOE_TRYG(moe_sum(&sum, v, 1, (int[]){1}, true));
            MOE_TRYG(moe_add_scalar(&sum2, sum, rc->norm_eps));
            MOE_TRYG(moe_div(w, v, sum2));
        } else {
            *w = moe_tensor_retain(v);
        }
    } else if (rc->pre_softmax) { /* full softmax, then top-k, no renormalisation */
        MOE_TRYG(moe_softmax(&s, z, 1));
        MOE_TRYG(moe_topk(w, ids, s, K, 1, true));
    } else { /* top-k of the logits, softmax over the K */
        MOE_TRYG(moe_topk(&v, ids, z, K, 1, true));
        MOE_TRYG(moe_softmax(w, v, 1));
    }
done:
    FREE_ALL(v, s, sum, sum2);
    return st;
}

/* x·W (+ b) */
static moe_status proj(moe_tensor **out, moe_tensor *x, moe_tensor *w, moe_tensor *b)
{
    moe_tensor *p;
    MOE_TRY(moe_matmul(&p, x, w));
    if (!b) {
        *out = p;
        return MOE_OK;
    }
    moe_status st = moe_add(out, p, b);
    moe_tensor_release(p);
    return st;
}

/* One MLP on every row of X: weights wg (may be NULL), wu, wd, biases or NULL. */
static moe_status ref_mlp(moe_tensor **out, moe_tensor *x, moe_tensor *wg, moe_tensor *wu, moe_tensor *wd,
                          moe_tensor *bg, moe_tensor *bu, moe_tensor *bd, moe_activation act)
{
    moe_tensor *g = NULL, *u = NULL, *sg = NULL, *h = NULL;
    moe_status st = MOE_OK;
    MOE_TRYG(proj(&u, x, wu, bu));
    if (act == MOE_ACT_SWIGLU) {
        MOE_TRYG(proj(&g, x, wg, bg));
        MOE_TRYG(moe_silu(&sg, g));
        MOE_TRYG(moe_mul(&h, sg, u));
    } else {
        MOE_TRYG(moe_gelu(&h, u, act == MOE_ACT_GELU ? MOE_GELU_ERF : MOE_GELU_TANH));
    }
    MOE_TRYG(proj(out, h, wd, bd));
done:
    FREE_ALL(g, u, sg, h);
    return st;
}

static moe_tensor *sel(moe_tensor *t, int64_t e)
{
    if (!t) return NULL;
    moe_tensor *s;
    OK(moe_select(&s, t, 0, e));
    return s;
}

/* The layer's output for X computed densely from the same parameters; KEEP
 * [T K] bool is the router's drop decision (NULL: keep all). IDS_OUT gets the
 * reference's expert ids. */
static moe_tensor *reference(moe_layer *l, moe_tensor *x, moe_tensor *keep, moe_tensor **ids_out)
{
    const moe_layer_config *c = moe_layer_get_config(l);
    const moe_router_config *rc = &c->router;
    moe_experts *ex = moe_layer_experts(l);
    int64_t D = c->hidden, E = c->experts, T = moe_tensor_numel(x) / D;
    moe_tensor *x2, *xr, *z, *w, *ids, *oh, *ohf, *w3, *pm, *P, *out = NULL;
    OK(moe_reshape(&x2, x, 2, SHAPE(T, D)));
    OK(moe_to_dtype(&xr, x2, rc->dtype));
    OK(moe_linear(&z, xr, moe_layer_parameter_get(l, "router.weight"), NULL));
    OK(ref_route(&w, &ids, z, rc));
    if (keep) {
        moe_tensor *kf, *wk;
        OK(moe_to_dtype(&kf, keep, w->dtype));
        OK(moe_mul(&wk, w, kf));
        FREE_ALL(kf, w);
        w = wk;
    }
    /* P [T E] = Σ_k one_hot(ids[t k]) · w[t k] */
    OK(moe_one_hot(&oh, ids, E));
    OK(moe_to_dtype(&ohf, oh, w->dtype));
    OK(moe_unsqueeze(&w3, w, 2));
    OK(moe_mul(&pm, ohf, w3));
    OK(moe_sum(&P, pm, 1, (int[]){1}, false));
    for (int64_t e = 0; e < E; e++) {
        moe_tensor *wg = sel(ex->w_gate, e), *wu = sel(ex->w_up, e), *wd = sel(ex->w_down, e);
        moe_tensor *bg = sel(ex->b_gate, e), *bu = sel(ex->b_up, e), *bd = sel(ex->b_down, e);
        moe_tensor *y, *pe, *pe2, *term, *acc;
        OK(ref_mlp(&y, x2, wg, wu, wd, bg, bu, bd, c->activation));
        OK(moe_narrow(&pe, P, 1, e, 1));
        OK(moe_to_dtype(&pe2, pe, y->dtype));
        OK(moe_mul(&term, y, pe2));
        if (out) {
            OK(moe_add(&acc, out, term));
            moe_tensor_release(out);
            out = acc;
        } else {
            out = moe_tensor_retain(term);
        }
        FREE_ALL(wg, wu, wd, bg, bu, bd, y, pe, pe2, term);
    }
    moe_tensor *swu = moe_layer_parameter_get(l, "shared.w-up");
    if (swu) {
        moe_tensor *s, *acc;
        OK(ref_mlp(&s, x2, moe_layer_parameter_get(l, "shared.w-gate"), swu,
                   moe_layer_parameter_get(l, "shared.w-down"), moe_layer_parameter_get(l, "shared.b-gate"),
                   moe_layer_parameter_get(l, "shared.b-up"), moe_layer_parameter_get(l, "shared.b-down"),
                   c->activation));
        moe_tensor *gate = moe_layer_parameter_get(l, "shared.gate");
        if (gate) {
            moe_tensor *gz, *gs, *sg;
            OK(moe_matmul(&gz, x2, gate));
            OK(moe_sigmoid(&gs, gz));
            OK(moe_mul(&sg, s, gs));
            FREE_ALL(gz, gs, s);
            s = sg;
        }
        OK(moe_add(&acc, out, s));
        FREE_ALL(out, s);
        out = acc;
    }
    moe_tensor *res;
    OK(moe_reshape(&res, out, x->ndim, x->shape));
    *ids_out = ids;
    FREE_ALL(x2, xr, z, w, oh, ohf, w3, pm, P, out);
    return res;
}

/* ---- comparing the layer with the reference ----------------------------------------- */

#define MAXP 16

typedef struct grads {
    int n;
    const char *name[MAXP];
    moe_tensor *g[MAXP]; /* [0] the input's, then the parameters' */
} grads;

static void grads_take(grads *gr, moe_layer *l, moe_tensor *x)
{
    gr->n = 1 + moe_layer_parameter_count(l);
    gr->name[0] = "input";
    gr->g[0] = moe_tensor_retain(x->grad);
    for (int i = 1; i < gr->n; i++) {
        moe_tensor *p;
        OK(moe_layer_parameter(l, i - 1, &gr->name[i], &p));
        gr->g[i] = moe_tensor_retain(p->grad);
    }
}

static void grads_free(grads *gr)
{
    for (int i = 0; i < gr->n; i++) moe_tensor_release(gr->g[i]);
}

/* loss = Σ out ⊙ R, backward, take the grads (zeroed first). */
static void backprop(grads *gr, moe_layer *l, moe_tensor *x, moe_tensor *out, moe_tensor *r)
{
    moe_layer_zero_grad(l);
    moe_tensor_zero_grad(x);
    moe_tensor *prod, *loss;
    OK(moe_mul(&prod, out, r));
    OK(moe_sum(&loss, prod, 0, NULL, false));
    OK(moe_backward(loss, NULL, false));
    grads_take(gr, l, x);
    FREE_ALL(prod, loss);
}

/* Forward + backward through the layer and the reference; everything close. */
static void check_against_reference(moe_layer *l, moe_tensor *x, double tol)
{
    moe_tensor *y, *yr, *ids;
    OK(moe_layer_forward(&y, l, x, NULL));
    ASSERT_SHAPE(y, x->ndim, x->shape[0], x->shape[1], x->ndim > 2 ? x->shape[2] : 0);
    ck_assert_int_eq(y->dtype, x->dtype);
    const moe_routing *rt = moe_layer_last_routing(l);
    ck_assert_ptr_nonnull(rt);
    yr = reference(l, x, rt->kept, &ids);
    tu_assert_close(rt->experts, ids, 0, 0, "router ids vs reference ids");
    tu_assert_close(y, yr, tol, tol, "layer vs dense reference");
    moe_tensor *r = tu_randn(x->dtype, x->ndim, x->shape, 4242);
    grads a, b;
    backprop(&a, l, x, y, r);
    backprop(&b, l, x, yr, r);
    ck_assert_int_eq(a.n, b.n);
    for (int i = 0; i < a.n; i++) {
        char what[96];
        snprintf(what, sizeof what, "gradient of %s", a.name[i]);
        ck_assert_msg(a.g[i] != NULL, "%s missing", what);
        if (!b.g[i]) { /* the reference never reached it: zero */
            moe_tensor *z;
            OK(moe_tensor_zeros_like(&z, a.g[i]));
            tu_assert_close(a.g[i], z, tol, tol, what);
            moe_tensor_release(z);
        } else {
            tu_assert_close(a.g[i], b.g[i], tol, tol, what);
        }
    }
    grads_free(&a);
    grads_free(&b);
    FREE_ALL(y, yr, ids, r);
}

static moe_layer_config small_config(moe_dtype dt, int64_t E, int64_t K)
{
    moe_layer_config c;
    moe_layer_config_default(&c);
    c.hidden = 6;
    c.ffn = 5;
    c.experts = E;
    c.top_k = K;
    c.dtype = dt;
    c.router.dtype = dt;
    c.seed = 11;
    if (K == 1) c.router.pre_softmax = true; /* post-softmax K=1 has no router gradient */
    return c;
}

static moe_tensor *input(moe_dtype dt, int64_t T, int64_t D, uint64_t seed)
{
    moe_tensor *x = tu_randn(dt, 2, SHAPE(T, D), seed);
    OK(moe_tensor_requires_grad_(x, true));
    return x;
}

/* Router weights large enough that routing is far from ties. */
static void sharpen_router(moe_layer *l, uint64_t seed)
{
    moe_tensor *w = moe_layer_parameter_get(l, "router.weight");
    moe_tensor *r = tu_randn(w->dtype, 2, w->shape, seed);
    OK(moe_layer_set_parameter(l, "router.weight", r));
    moe_tensor_release(r);
}

/* ---- reference tests ----------------------------------------------------------------- */

START_TEST(dropless_f64_k2)
{
    moe_layer_config c = small_config(MOE_F64, 4, 2);
    moe_layer *l;
    OK(moe_layer_new(&l, &c));
    sharpen_router(l, 1);
    moe_tensor *x = input(MOE_F64, 9, 6, 2);
    check_against_reference(l, x, 1e-10);
    FREE_ALL(x);
    moe_layer_free(l);
}
END_TEST

START_TEST(dropless_k1_k8)
{
    moe_layer_config c = small_config(MOE_F64, 4, 1); /* pre-softmax K = 1 */
    moe_layer *l;
    OK(moe_layer_new(&l, &c));
    sharpen_router(l, 3);
    moe_tensor *x = input(MOE_F64, 7, 6, 4);
    check_against_reference(l, x, 1e-10);
    moe_layer_free(l);
    FREE_ALL(x);
    c = small_config(MOE_F64, 8, 8); /* every expert on every token */
    OK(moe_layer_new(&l, &c));
    sharpen_router(l, 5);
    x = input(MOE_F64, 5, 6, 6);
    check_against_reference(l, x, 1e-10);
    moe_layer_free(l);
    FREE_ALL(x);
}
END_TEST

START_TEST(sigmoid_gelu_bias_shared)
{
    moe_layer_config c = small_config(MOE_F64, 4, 2);
    c.router.score = MOE_SCORE_SIGMOID;
    c.activation = MOE_ACT_GELU;
    c.bias = true;
    c.shared_experts = 2;
    c.shared_gate = true;
    moe_layer *l;
    OK(moe_layer_new(&l, &c));
    ASSERT_SHAPE(moe_layer_parameter_get(l, "shared.w-up"), 2, 6, 10);
    sharpen_router(l, 7);
    /* biases away from zero so that their gradients are exercised */
    const char *bn[3] = {"experts.b-up", "experts.b-down", "shared.b-down"};
    for (int i = 0; i < 3; i++) {
        moe_tensor *b = moe_layer_parameter_get(l, bn[i]), *r = tu_randn(MOE_F64, b->ndim, b->shape, 20 + i);
        OK(moe_layer_set_parameter(l, bn[i], r));
        moe_tensor_release(r);
    }
    moe_tensor *x = input(MOE_F64, 8, 6, 8);
    check_against_reference(l, x, 1e-10);
    moe_layer_free(l);
    FREE_ALL(x);
    /* SwiGLU with shared experts, [B S D] input */
    c = small_config(MOE_F64, 4, 2);
    c.shared_experts = 1;
    c.bias = true;
    OK(moe_layer_new(&l, &c));
    sharpen_router(l, 9);
    x = tu_randn(MOE_F64, 3, SHAPE(2, 3, 6), 10);
    OK(moe_tensor_requires_grad_(x, true));
    check_against_reference(l, x, 1e-10);
    moe_layer_free(l);
    FREE_ALL(x);
}
END_TEST

START_TEST(capacity_modes)
{
    for (int pad = 0; pad < 2; pad++)
        for (int policy = 0; policy < 2; policy++) {
            moe_layer_config c = small_config(MOE_F64, 4, 2);
            c.router.capacity_factor = 0.75; /* C = ⌈T·K/E · 0.75⌉ = 3 for T = 8 */
            c.router.drop_policy = policy ? MOE_DROP_POSITION : MOE_DROP_PROBS;
            c.router.pad_to_capacity = pad;
            moe_layer *l;
            OK(moe_layer_new(&l, &c));
            sharpen_router(l, 12);
            moe_tensor *x = input(MOE_F64, 8, 6, 13);
            check_against_reference(l, x, 1e-10);
            const moe_routing *rt = moe_layer_last_routing(l);
            const moe_dispatch *d = moe_layer_last_dispatch(l);
            ck_assert_int_eq(rt->capacity, 3);
            ck_assert_msg(rt->dropped > 0, "expected drops at capacity factor 0.75");
            ck_assert_int_eq(d->n_dropped, rt->dropped);
            ck_assert_int_eq(d->n_kept + d->n_dropped, 16);
            ck_assert_int_eq(d->rows, pad ? 12 : d->n_kept);
            for (int64_t e = 0; e < 4; e++) ck_assert_int_le(d->counts[e], 3);
            moe_tensor *cnt;
            OK(moe_dispatch_counts(&cnt, d));
            tu_assert_close(rt->counts, cnt, 0, 0, "router counts vs dispatch counts");
            moe_tensor_release(cnt);
            moe_layer_free(l);
            FREE_ALL(x);
        }
}
END_TEST

/* Router weight rows that send every token to experts 0 and 1 (K = 2), or
 * all to expert 0 (K = 1): column 0 of x is made large and positive. */
static void skew(moe_layer *l, moe_tensor *x, int K)
{
    moe_tensor *w = moe_layer_parameter_get(l, "router.weight");
    int64_t E = w->shape[0], D = w->shape[1];
    moe_tensor *r = tu_randn(w->dtype, 2, w->shape, 77);
    double *rv = moe_tensor_data(r);
    for (int64_t e = 0; e < E; e++) rv[e * D] = e == 0 ? 10 : (e == 1 && K > 1 ? 9 : -10);
    OK(moe_layer_set_parameter(l, "router.weight", r));
    bool prev = moe_grad_set_enabled(false);
    double *xv = moe_tensor_data(x);
    for (int64_t t = 0; t < x->shape[0]; t++) xv[t * D] = 3 + fabs(xv[t * D]);
    moe_grad_set_enabled(prev);
    moe_tensor_release(r);
}

START_TEST(empty_and_single_expert)
{
    moe_layer_config c = small_config(MOE_F64, 4, 2);
    moe_layer *l;
    OK(moe_layer_new(&l, &c));
    moe_tensor *x = input(MOE_F64, 6, 6, 14);
    skew(l, x, 2); /* experts 2 and 3 get nothing */
    check_against_reference(l, x, 1e-10);
    const moe_dispatch *d = moe_layer_last_dispatch(l);
    ck_assert_int_eq(d->counts[0], 6);
    ck_assert_int_eq(d->counts[1], 6);
    ck_assert_int_eq(d->counts[2] + d->counts[3], 0);
    moe_layer_free(l);
    FREE_ALL(x);

    c = small_config(MOE_F64, 4, 1); /* all tokens to expert 0 */
    OK(moe_layer_new(&l, &c));
    x = input(MOE_F64, 6, 6, 15);
    skew(l, x, 1);
    check_against_reference(l, x, 1e-10);
    ck_assert_int_eq(moe_layer_last_dispatch(l)->counts[0], 6);
    moe_layer_free(l);
    FREE_ALL(x);

    c = small_config(MOE_F64, 4, 2); /* T = 1 */
    OK(moe_layer_new(&l, &c));
    sharpen_router(l, 16);
    x = input(MOE_F64, 1, 6, 17);
    check_against_reference(l, x, 1e-10);
    moe_layer_free(l);
    FREE_ALL(x);
}
END_TEST

START_TEST(f32_layer)
{
    moe_layer_config c = small_config(MOE_F32, 8, 2);
    c.hidden = 32;
    c.ffn = 48;
    c.shared_experts = 1;
    c.shared_gate = true;
    moe_layer *l;
    OK(moe_layer_new(&l, &c));
    sharpen_router(l, 18);
    moe_tensor *x = input(MOE_F32, 40, 32, 19);
    check_against_reference(l, x, 1e-4);
    /* bf16 activations: computed in f32, returned in bf16, gradients flow */
    moe_tensor *xb, *yb, *y32, *yb32, *loss;
    OK(moe_to_dtype(&xb, x, MOE_BF16));
    moe_tensor *xb_leaf;
    OK(moe_detach(&xb_leaf, xb));
    OK(moe_tensor_requires_grad_(xb_leaf, true));
    OK(moe_layer_forward(&yb, l, xb_leaf, NULL));
    ck_assert_int_eq(yb->dtype, MOE_BF16);
    moe_tensor *x32;
    OK(moe_to_dtype(&x32, xb_leaf, MOE_F32));
    OK(moe_layer_forward(&y32, l, x32, NULL));
    OK(moe_to_dtype(&yb32, yb, MOE_F32));
    tu_assert_close(yb32, y32, 0.02, 0.02, "bf16 layer vs f32 layer");
    OK(moe_sum(&loss, yb, 0, NULL, false));
    moe_layer_zero_grad(l);
    OK(moe_backward(loss, NULL, false));
    ck_assert_int_eq(xb_leaf->grad->dtype, MOE_BF16);
    ck_assert_ptr_nonnull(moe_layer_parameter_get(l, "experts.w-down")->grad);
    moe_layer_free(l);
    FREE_ALL(x, xb, xb_leaf, yb, y32, yb32, loss, x32);
}
END_TEST


/* Padding tokens (valid = false) get no expert: their rows are zero, their
 * slots are counted as dropped by the dispatch, the real tokens match the
 * layer run on them alone. */
START_TEST(valid_mask)
{
    moe_layer_config c = small_config(MOE_F64, 4, 2);
    moe_layer *l;
    OK(moe_layer_new(&l, &c));
    sharpen_router(l, 26);
    moe_tensor *x = input(MOE_F64, 6, 6, 27), *valid = T(MOE_BOOL, 1, SHAPE(6), 1, 1, 0, 1, 0, 1);
    moe_tensor *y, *xs, *ys;
    OK(moe_layer_forward(&y, l, x, valid));
    const moe_dispatch *d = moe_layer_last_dispatch(l);
    ck_assert_int_eq(d->n_dropped, 4);
    ck_assert_int_eq(d->n_kept, 8);
    double v;
    for (int64_t j = 0; j < 6; j++) {
        OK(moe_tensor_get(y, SHAPE(2, j), &v));
        ck_assert(v == 0.0);
        OK(moe_tensor_get(y, SHAPE(4, j), &v));
        ck_assert(v == 0.0);
    }
    /* the real tokens alone give the same rows */
    moe_tensor *idx = T(MOE_I64, 1, SHAPE(4), 0, 1, 3, 5), *yr;
    OK(moe_index_select(&xs, x, 0, idx));
    OK(moe_layer_forward(&ys, l, xs, NULL));
    OK(moe_index_select(&yr, y, 0, idx));
    tu_assert_close(yr, ys, 1e-12, 1e-12, "valid rows vs the real tokens alone");
    moe_layer_free(l);
    FREE_ALL(x, valid, y, xs, ys, idx, yr);
}
END_TEST

/* ---- finite differences --------------------------------------------------------------- */

static moe_status fn_layer(moe_tensor **out, moe_tensor **in, void *ctx)
{
    return moe_layer_forward(out, ctx, in[0], NULL); /* in[1..] are the layer's own parameters */
}

START_TEST(gradcheck_layer)
{
    for (int variant = 0; variant < 2; variant++) {
        moe_layer_config c = small_config(MOE_F64, 4, 2);
        c.hidden = 4;
        c.ffn = 3;
        if (variant) { /* capacity, GELU, biases, gated shared expert */
            c.router.capacity_factor = 0.75;
            c.activation = MOE_ACT_GELU_TANH;
            c.bias = true;
            c.shared_experts = 1;
            c.shared_gate = true;
        }
        moe_layer *l;
        OK(moe_layer_new(&l, &c));
        sharpen_router(l, 21);
        moe_tensor *in[MAXP];
        int n = 1 + moe_layer_parameter_count(l);
        in[0] = input(MOE_F64, 6, 4, 22);
        for (int i = 1; i < n; i++) OK(moe_layer_parameter(l, i - 1, NULL, &in[i]));
        GRADCHECK(fn_layer, n, in, l);
        moe_tensor_release(in[0]);
        moe_layer_free(l);
    }
}
END_TEST

/* ---- API -------------------------------------------------------------------------------- */

START_TEST(parameters_api)
{
    moe_layer_config c = small_config(MOE_F32, 4, 2);
    c.shared_experts = 1;
    c.shared_gate = true;
    moe_layer *l;
    OK(moe_layer_new(&l, &c));
    static const char *names[] = {"router.weight", "experts.w-gate", "experts.w-up", "experts.w-down",
                                  "shared.w-gate", "shared.w-up",    "shared.w-down", "shared.gate"};
    int64_t shapes[8][3] = {{4, 6}, {4, 6, 5}, {4, 6, 5}, {4, 5, 6}, {6, 5}, {6, 5}, {5, 6}, {6, 1}};
    int nd[8] = {2, 3, 3, 3, 2, 2, 2, 2};
    ck_assert_int_eq(moe_layer_parameter_count(l), 8);
    for (int i = 0; i < 8; i++) {
        const char *name;
        moe_tensor *t;
        OK(moe_layer_parameter(l, i, &name, &t));
        ck_assert_str_eq(name, names[i]);
        tu_assert_shape(t, nd[i], shapes[i], name);
        ck_assert(t->requires_grad);
        ck_assert_ptr_eq(moe_layer_parameter_get(l, name), t);
    }
    ck_assert_ptr_null(moe_layer_parameter_get(l, "experts.b-up"));
    FAILS(moe_layer_parameter(l, 8, NULL, NULL), MOE_ERR_INDEX, "out of range");
    /* set: copies (dtype converted), drops the grad, checks the shape */
    moe_tensor *w = tu_randn(MOE_F64, 3, SHAPE(4, 6, 5), 30);
    OK(moe_layer_set_parameter(l, "experts.w-up", w));
    tu_assert_close(moe_layer_parameter_get(l, "experts.w-up"), w, 1e-6, 1e-6, "set experts.w-up");
    ck_assert_int_eq(moe_layer_parameter_get(l, "experts.w-up")->dtype, MOE_F32);
    moe_tensor *bad = tu_randn(MOE_F32, 3, SHAPE(4, 5, 6), 31);
    FAILS(moe_layer_set_parameter(l, "experts.w-up", bad), MOE_ERR_SHAPE, "'experts.w-up' is [4 6 5]");
    FAILS(moe_layer_set_parameter(l, "experts.w_up", w), MOE_ERR_ARG, "known: router.weight, experts.w-gate");
    FAILS(moe_layer_set_parameter(l, "router.weight", w), MOE_ERR_SHAPE, "'router.weight' is [4 6]");
    moe_layer_free(l);
    FREE_ALL(w, bad);
    /* GELU has no gate */
    c = small_config(MOE_F32, 4, 2);
    c.activation = MOE_ACT_GELU;
    c.bias = true;
    OK(moe_layer_new(&l, &c));
    ck_assert_ptr_null(moe_layer_parameter_get(l, "experts.w-gate"));
    ck_assert_ptr_null(moe_layer_parameter_get(l, "experts.b-gate"));
    ASSERT_SHAPE(moe_layer_parameter_get(l, "experts.b-down"), 2, 4, 6);
    ck_assert_int_eq(moe_layer_parameter_count(l), 5);
    moe_layer_free(l);
}
END_TEST

START_TEST(record_and_errors)
{
    moe_layer_config c = small_config(MOE_F64, 4, 2);
    moe_layer *l;
    OK(moe_layer_new(&l, &c));
    ck_assert_ptr_null(moe_layer_last_routing(l));
    ck_assert_ptr_null(moe_layer_aux_loss(l));
    moe_tensor *x = input(MOE_F64, 5, 6, 40), *y = NULL, *xb = tu_randn(MOE_F64, 2, SHAPE(5, 7), 41);
    OK(moe_layer_forward(&y, l, x, NULL));
    const moe_routing *rt = moe_layer_last_routing(l);
    ASSERT_SHAPE(rt->weights, 2, 5, 2);
    ASSERT_SHAPE(rt->experts, 2, 5, 2);
    const moe_dispatch *d = moe_layer_last_dispatch(l);
    ck_assert_int_eq(d->n_kept, 10);
    ck_assert_int_eq(d->n_dropped, 0);
    int64_t total = 0;
    for (int e = 0; e < 4; e++) total += d->counts[e];
    ck_assert_int_eq(total, 10);
    moe_tensor_release(y);
    y = NULL;
    FAILS(moe_layer_forward(&y, l, xb, NULL), MOE_ERR_SHAPE, "input must be [T 6] or [B S 6], got [5 7]");
    ck_assert_ptr_null(y);
    ck_assert_ptr_eq(moe_layer_last_routing(l), rt); /* a failed forward keeps the record */
    moe_layer_free(l);
    FREE_ALL(x, xb);

    moe_layer *bad = NULL;
    c = small_config(MOE_F64, 4, 2);
    c.ffn = 0;
    FAILS(moe_layer_new(&bad, &c), MOE_ERR_ARG, "must be >= 1");
    c = small_config(MOE_F64, 4, 2);
    c.shared_gate = true;
    FAILS(moe_layer_new(&bad, &c), MOE_ERR_ARG, "shared gate needs shared experts");
    c = small_config(MOE_F64, 4, 2);
    c.dtype = MOE_BF16;
    FAILS(moe_layer_new(&bad, &c), MOE_ERR_DTYPE, "f32 or f64");
    ck_assert_ptr_null(bad);
}
END_TEST

START_TEST(training_changes_parameters)
{
    /* a few SGD steps on a toy regression: the loss goes down */
    moe_layer_config c = small_config(MOE_F64, 4, 2);
    c.hidden = 8;
    c.ffn = 16;
    moe_layer *l;
    OK(moe_layer_new(&l, &c));
    moe_tensor *x = tu_randn(MOE_F64, 2, SHAPE(32, 8), 50), *target;
    OK(moe_tanh(&target, x));
    double first = 0, last = 0;
    for (int step = 0; step < 30; step++) {
        moe_tensor *y, *d, *sq, *loss;
        moe_layer_zero_grad(l);
        OK(moe_layer_forward(&y, l, x, NULL));
        OK(moe_sub(&d, y, target));
        OK(moe_mul(&sq, d, d));
        OK(moe_mean(&loss, sq, 0, NULL, false));
        OK(moe_backward(loss, NULL, false));
        OK(moe_tensor_item(loss, &last));
        if (step == 0) first = last;
        bool prev = moe_grad_set_enabled(false);
        for (int i = 0; i < moe_layer_parameter_count(l); i++) {
            moe_tensor *p, *u, *np;
            OK(moe_layer_parameter(l, i, NULL, &p));
            if (!p->grad) continue;
            OK(moe_mul_scalar(&u, p->grad, -0.5));
            OK(moe_add(&np, p, u));
            OK(moe_tensor_copy_(p, np));
            FREE_ALL(u, np);
        }
        moe_grad_set_enabled(prev);
        FREE_ALL(y, d, sq, loss);
    }
    ck_assert_msg(last < 0.5 * first, "loss %g -> %g did not halve", first, last);
    moe_layer_free(l);
    FREE_ALL(x, target);
}
END_TEST


/* The router's aux loss rides along: inject mode (the default) and add mode
 * give the same router gradient, which differs from the no-loss one. */
static moe_tensor *router_grad(int mode, moe_tensor *x, moe_tensor *r, double *aux_value)
{
    moe_layer_config c = small_config(MOE_F64, 4, 2);
    if (mode > 0) {
        moe_aux_term t = {MOE_AUX_MICRO_BATCH, 0.5};
        OK(moe_router_config_set_losses(&c.router, 1, &t));
        c.router.grad_mode = mode == 1 ? MOE_GRAD_INJECT : MOE_GRAD_ADD;
    }
    moe_layer *l;
    OK(moe_layer_new(&l, &c));
    sharpen_router(l, 23);
    moe_tensor *y, *prod, *loss;
    OK(moe_layer_forward(&y, l, x, NULL));
    OK(moe_mul(&prod, y, r));
    OK(moe_sum(&loss, prod, 0, NULL, false));
    moe_tensor *aux = moe_layer_aux_loss(l);
    *aux_value = NAN;
    if (mode > 0) {
        ck_assert_ptr_nonnull(aux);
        OK(moe_tensor_item(aux, aux_value));
    }
    if (mode == 2) { /* add mode: the caller adds it */
        ck_assert(aux->requires_grad);
        moe_tensor *total;
        OK(moe_add(&total, loss, aux));
        moe_tensor_release(loss);
        loss = total;
    }
    OK(moe_backward(loss, NULL, false));
    moe_tensor *g = moe_tensor_retain(moe_layer_parameter_get(l, "router.weight")->grad);
    /* metrics: the router saw the same counts as the dispatch */
    moe_router_metrics m;
    OK(moe_router_metrics_get(&m, moe_layer_router(l)));
    const moe_dispatch *d = moe_layer_last_dispatch(l);
    for (int64_t e = 0; e < 4; e++) {
        double v;
        OK(moe_tensor_get(m.tokens_per_expert, &e, &v));
        ck_assert_msg(v == (double)d->counts[e], "metrics count %g vs dispatch %lld", v, (long long)d->counts[e]);
    }
    moe_router_metrics_release(&m);
    FREE_ALL(y, prod, loss);
    moe_layer_free(l);
    return g;
}

START_TEST(aux_loss_attached)
{
    moe_tensor *x = input(MOE_F64, 12, 6, 24), *r = tu_randn(MOE_F64, 2, SHAPE(12, 6), 25);
    double a0, a1, a2;
    moe_tensor *g0 = router_grad(0, x, r, &a0), *g1 = router_grad(1, x, r, &a1), *g2 = router_grad(2, x, r, &a2);
    ck_assert_msg(isfinite(a1) && a1 > 0 && fabs(a1 - a2) < 1e-12, "aux values %g %g", a1, a2);
    tu_assert_close(g1, g2, 1e-12, 1e-10, "router gradient: inject vs add");
    moe_tensor *d;
    OK(moe_sub(&d, g1, g0));
    moe_tensor *a, *mx;
    OK(moe_abs(&a, d));
    OK(moe_max_all(&mx, a));
    double v;
    OK(moe_tensor_item(mx, &v));
    ck_assert_msg(v > 1e-6, "the aux loss did not change the router gradient (%g)", v);
    FREE_ALL(x, r, g0, g1, g2, d, a, mx);
}
END_TEST

/* ---- expert parallelism ------------------------------------------------------------------ */

#define MAXR 4

/* The expert-parallel code below also runs under mpirun, outside Check's
 * runner, where Check's asserts cannot be used: plain checks that end the
 * process instead. */
#define REQ(expr)                                                                            \
    do {                                                                                     \
        moe_status req_s_ = (expr);                                                          \
        if (req_s_ != MOE_OK) {                                                              \
            fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #expr, moe_last_error()); \
            exit(2);                                                                         \
        }                                                                                    \
    } while (0)

static moe_tensor *plain_randn(int ndim, const int64_t *shape, uint64_t seed)
{
    moe_rng rng;
    moe_rng_init(&rng, seed);
    moe_tensor *t;
    REQ(moe_tensor_randn(&t, &rng, MOE_F64, MOE_CPU, ndim, shape));
    return t;
}

typedef struct ep_ctx {
    int P;
    bool capacity, shared;
    moe_tensor *out[MAXR], *gx[MAXR], *grouter[MAXR];
    moe_tensor *gexp[MAXR][6]; /* this rank's expert-weight gradients (parameter order) */
    char err[MAXR][256];
} ep_ctx;

static moe_layer_config ep_config(const ep_ctx *c, moe_group *ep)
{
    moe_layer_config cfg = small_config(MOE_F64, 8, 2);
    cfg.bias = true;
    cfg.ep_group = ep;
    if (c->capacity) cfg.router.capacity_factor = 0.75;
    if (c->shared) cfg.shared_experts = 1;
    return cfg;
}

static moe_tensor *ep_tokens(int rank)
{
    moe_tensor *x = plain_randn(2, SHAPE(5 + 3 * rank, 6), 300 + rank);
    REQ(moe_tensor_requires_grad_(x, true));
    return x;
}

static moe_status ep_rank(int rank, moe_group *world, void *vctx)
{
    ep_ctx *c = vctx;
    moe_layer_config cfg = ep_config(c, world);
    moe_layer *l = NULL;
    moe_tensor *x = NULL, *y = NULL, *r = NULL, *prod = NULL, *loss = NULL, *w = NULL;
    moe_status st = MOE_OK;
    MOE_TRYG(moe_layer_new(&l, &cfg));
    w = plain_randn(2, SHAPE(8, 6), 60);
    MOE_TRYG(moe_layer_set_parameter(l, "router.weight", w));
    x = ep_tokens(rank);
    MOE_TRYG(moe_layer_forward(&y, l, x, NULL));
    r = plain_randn(2, x->shape, 400 + rank);
    MOE_TRYG(moe_mul(&prod, y, r));
    MOE_TRYG(moe_sum(&loss, prod, 0, NULL, false));
    MOE_TRYG(moe_backward(loss, NULL, false));
    c->out[rank] = moe_tensor_retain(y);
    c->gx[rank] = moe_tensor_retain(x->grad);
    c->grouter[rank] = moe_tensor_retain(moe_layer_parameter_get(l, "router.weight")->grad);
    const char *names[6] = {"experts.w-gate", "experts.w-up", "experts.w-down", "experts.b-gate",
                            "experts.b-up", "experts.b-down"};
    for (int i = 0; i < 6; i++) c->gexp[rank][i] = moe_tensor_retain(moe_layer_parameter_get(l, names[i])->grad);
done:
    if (st != MOE_OK) snprintf(c->err[rank], sizeof c->err[rank], "%s", moe_last_error());
    moe_layer_free(l);
    FREE_ALL(x, y, r, prod, loss, w);
    return st;
}

/* Largest |a - b| / (1 + |b|) over the elements (shapes must agree: else inf). */
static double max_diff(const moe_tensor *a, const moe_tensor *b)
{
    if (!a || !b || !moe_tensor_same_shape(a, b)) return INFINITY;
    int64_t n = moe_tensor_numel(a);
    double *va = malloc(sizeof *va * (size_t)(n ? n : 1)), *vb = malloc(sizeof *vb * (size_t)(n ? n : 1)), m = 0;
    if (moe_tensor_to_doubles(a, va) != MOE_OK || moe_tensor_to_doubles(b, vb) != MOE_OK) m = INFINITY;
    for (int64_t i = 0; i < n && isfinite(m); i++) {
        double d = fabs(va[i] - vb[i]) / (1 + fabs(vb[i]));
        if (!(d <= m)) m = isnan(d) ? INFINITY : d;
    }
    free(va);
    free(vb);
    return m;
}

/* Compare what ranks LO..HI-1 of an expert-parallel run over P ranks left in
 * C with one unsharded layer of the same seed fed each rank's tokens in turn
 * (expert gradients summed over the ranks' losses). Plain C (no Check
 * asserts) so that the MPI run can use it too; false with WHY filled on a
 * mismatch. Releases C's tensors of ranks LO..HI-1. */
static bool ep_verify(ep_ctx *c, int P, int lo, int hi, char *why, size_t why_len)
{
    moe_layer_config cfg = ep_config(c, NULL);
    moe_layer *l;
    REQ(moe_layer_new(&l, &cfg));
    moe_tensor *w = plain_randn(2, SHAPE(8, 6), 60);
    REQ(moe_layer_set_parameter(l, "router.weight", w));
    const char *names[6] = {"experts.w-gate", "experts.w-up", "experts.w-down", "experts.b-gate",
                            "experts.b-up", "experts.b-down"};
    bool ok = true;
    for (int rank = 0; rank < P; rank++) {
        moe_tensor *x = ep_tokens(rank), *y, *r = plain_randn(2, x->shape, 400 + rank), *prod, *loss;
        moe_tensor_zero_grad(moe_layer_parameter_get(l, "router.weight"));
        REQ(moe_layer_forward(&y, l, x, NULL));
        REQ(moe_mul(&prod, y, r));
        REQ(moe_sum(&loss, prod, 0, NULL, false));
        REQ(moe_backward(loss, NULL, false));
        if (rank >= lo && rank < hi) {
            double d[3] = {max_diff(c->out[rank], y), max_diff(c->gx[rank], x->grad),
                           max_diff(c->grouter[rank], moe_layer_parameter_get(l, "router.weight")->grad)};
            static const char *what[3] = {"output", "input gradient", "router gradient"};
            for (int i = 0; i < 3 && ok; i++)
                if (!(d[i] <= 1e-12)) {
                    snprintf(why, why_len, "ep over %d ranks: rank %d %s differs from one rank by %g", P, rank,
                             what[i], d[i]);
                    ok = false;
                }
        }
        FREE_ALL(x, y, r, prod, loss);
    }
    int64_t El = 8 / P;
    for (int rank = lo; rank < hi; rank++)
        for (int i = 0; i < 6; i++) {
            moe_tensor *full = moe_layer_parameter_get(l, names[i])->grad, *shard;
            REQ(moe_narrow(&shard, full, 0, rank * El, El));
            double d = max_diff(c->gexp[rank][i], shard);
            if (ok && !(d <= 1e-12)) {
                snprintf(why, why_len, "ep over %d ranks: rank %d gradient of %s differs from one rank by %g", P,
                         rank, names[i], d);
                ok = false;
            }
            moe_tensor_release(shard);
        }
    for (int rank = lo; rank < hi; rank++) {
        FREE_ALL(c->out[rank], c->gx[rank], c->grouter[rank]);
        for (int i = 0; i < 6; i++) moe_tensor_release(c->gexp[rank][i]);
    }
    moe_layer_free(l);
    moe_tensor_release(w);
    return ok;
}

static void ep_check(int P, bool capacity, bool shared)
{
    ep_ctx c;
    memset(&c, 0, sizeof c);
    c.P = P;
    c.capacity = capacity;
    c.shared = shared;
    moe_status rs[MAXR];
    moe_status st = moe_threads_run(P, ep_rank, &c, rs);
    ck_assert_msg(st == MOE_OK, "ep over %d ranks: %s (rank 0: %s)", P, moe_last_error(), c.err[0]);
    char why[256] = "";
    ck_assert_msg(ep_verify(&c, P, 0, P, why, sizeof why), "%s", why);
}

START_TEST(ep_two_ranks) { ep_check(2, false, true); ep_check(2, true, false); }
END_TEST

START_TEST(ep_four_ranks) { ep_check(4, false, false); ep_check(4, true, true); }
END_TEST

static moe_status ep_shapes_rank(int rank, moe_group *world, void *vctx)
{
    ep_ctx *c = vctx;
    moe_layer_config cfg = ep_config(c, world);
    moe_layer *l;
    MOE_TRY(moe_layer_new(&l, &cfg));
    moe_status st = MOE_OK;
    moe_tensor *wd = moe_layer_parameter_get(l, "experts.w-down");
    if (wd->shape[0] != 8 / c->P) st = moe_fail(MOE_ERR_STATE, "test", "shard has %lld experts", (long long)wd->shape[0]);
    /* a full [E F D] tensor sets this rank's shard */
    moe_tensor *full = NULL, *mine = NULL;
    if (st == MOE_OK) st = moe_tensor_arange(&full, MOE_F64, MOE_CPU, 0, 8 * 5 * 6, 1);
    moe_tensor *full3 = NULL;
    if (st == MOE_OK) st = moe_reshape(&full3, full, 3, SHAPE(8, 5, 6));
    if (st == MOE_OK) st = moe_layer_set_parameter(l, "experts.w-down", full3);
    double v = -1;
    if (st == MOE_OK) st = moe_tensor_get(wd, SHAPE(0, 0, 0), &v);
    if (st == MOE_OK && v != (double)(rank * (8 / c->P) * 30))
        st = moe_fail(MOE_ERR_STATE, "test", "rank %d shard starts with %g", rank, v);
    FREE_ALL(full, full3, mine);
    moe_layer_free(l);
    return st;
}

START_TEST(ep_parameters)
{
    ep_ctx c;
    memset(&c, 0, sizeof c);
    c.P = 4;
    OK(moe_threads_run(4, ep_shapes_rank, &c, NULL));
    /* 8 experts do not split over 3 ranks */
    c.P = 3;
    ck_assert(moe_threads_run(3, ep_shapes_rank, &c, NULL) != MOE_OK);
    ck_assert_msg(strstr(moe_last_error(), "cannot be split evenly") != NULL, "%s", moe_last_error());
}
END_TEST

/* ---- under mpirun: expert parallelism on the MPI backend -----------------------------------
 * When launched by mpirun (see layer.mk: run-mpi.sh runs this program with
 * -np 2 and -np 4), every process is one rank of the ep group: the same
 * configurations as the threads tests, each rank checking its own results
 * against one unsharded layer it runs itself. */
static int mpi_main(void)
{
    moe_group *world;
    if (moe_mpi_world(&world) != MOE_OK) {
        fprintf(stderr, "check_moe_layer: %s\n", moe_last_error());
        return 1;
    }
    int P = moe_group_size(world), rank = moe_group_rank(world), fail = 0;
    if (P > MAXR || 8 % P) {
        if (rank == 0) printf("check_moe_layer: ep over %d MPI ranks not covered (2 or 4): skipped\n", P);
    } else {
        for (int k = 0; k < 2; k++) {
            ep_ctx c;
            memset(&c, 0, sizeof c);
            c.P = P;
            c.capacity = k == 1;
            c.shared = k == 0;
            char why[256] = "";
            if (ep_rank(rank, world, &c) != MOE_OK) {
                snprintf(why, sizeof why, "rank %d: %s", rank, c.err[rank]);
                fail = 1;
            } else if (!ep_verify(&c, P, rank, rank + 1, why, sizeof why)) {
                fail = 1;
            }
            if (why[0]) fprintf(stderr, "check_moe_layer (mpi): %s\n", why);
        }
        moe_tensor *f;
        if (moe_tensor_scalar(&f, MOE_F64, MOE_CPU, fail) == MOE_OK) { /* every rank's verdict */
            if (moe_all_reduce_(f, MOE_REDUCE_MAX, world) == MOE_OK) {
                double v = 1;
                moe_tensor_item(f, &v);
                fail = v != 0;
            } else {
                fail = 1;
            }
            moe_tensor_release(f);
        }
        if (rank == 0)
            printf("check_moe_layer: ep over %d MPI ranks (dropless + shared, capacity) vs one rank: %s\n", P,
                   fail ? "FAILED" : "ok");
    }
    moe_group_release(world);
    moe_mpi_finalize();
    return fail;
}

int main(void)
{
    if (moe_mpi_launched()) return mpi_main();
    Suite *s = suite_create("moe_layer");
    TCase *tc = tcase_create("reference");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, dropless_f64_k2);
    tcase_add_test(tc, dropless_k1_k8);
    tcase_add_test(tc, sigmoid_gelu_bias_shared);
    tcase_add_test(tc, capacity_modes);
    tcase_add_test(tc, empty_and_single_expert);
    tcase_add_test(tc, f32_layer);
    tcase_add_test(tc, valid_mask);
    suite_add_tcase(s, tc);
    tc = tcase_create("gradcheck");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, gradcheck_layer);
    suite_add_tcase(s, tc);
    tc = tcase_create("api");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, parameters_api);
    tcase_add_test(tc, record_and_errors);
    tcase_add_test(tc, training_changes_parameters);
    tcase_add_test(tc, aux_loss_attached);
    suite_add_tcase(s, tc);
    tc = tcase_create("expert-parallel");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, ep_two_ranks);
    tcase_add_test(tc, ep_four_ranks);
    tcase_add_test(tc, ep_parameters);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
