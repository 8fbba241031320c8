/* layer.c — the MoE layer: router + dispatch + grouped experts + combine
 * (+ shared experts), single rank or expert-parallel (see layer.h).
 *
 * Dimension letters: T tokens, D hidden, F expert ffn dim, Fs shared ffn
 * dim, E experts, El local experts, K top-k, N dispatched rows. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../device.h"
#include "internal.h"
#include "layer.h"

struct moe_layer {
    moe_layer_config cfg; /* router fields filled from the layer's */
    moe_router *router;
    moe_experts *experts; /* El local experts */
    moe_group *ep;        /* retained; NULL without expert parallelism */
    int ep_size, ep_rank;
    int64_t Fs;                                 /* shared ffn width (0: none) */
    moe_tensor *s_wg, *s_wu, *s_wd;             /* [D Fs] [D Fs] [Fs D] */
    moe_tensor *s_bg, *s_bu, *s_bd, *s_gate;    /* [Fs] [Fs] [D] [D 1] */
    moe_routing *last;                          /* routing of the last forward */
    moe_dispatch *last_plan;
};

void moe_layer_config_default(moe_layer_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->activation = MOE_ACT_SWIGLU;
    cfg->dtype = MOE_F32;
    cfg->device = MOE_CPU;
    moe_router_config_default(&cfg->router);
}

const moe_layer_config *moe_layer_get_config(const moe_layer *l) { return &l->cfg; }
moe_router *moe_layer_router(moe_layer *l) { return l->router; }
moe_experts *moe_layer_experts(moe_layer *l) { return l->experts; }
const moe_routing *moe_layer_last_routing(const moe_layer *l) { return l->last; }
const moe_dispatch *moe_layer_last_dispatch(const moe_layer *l) { return l->last_plan; }
moe_tensor *moe_layer_aux_loss(const moe_layer *l) { return l->last ? l->last->aux_total : NULL; }

/* ---- parameters -------------------------------------------------------------------- */

typedef struct pentry {
    const char *name;
    moe_tensor *t;
    bool sharded; /* experts.*: [El ...] under expert parallelism */
} pentry;

#define MAX_PARAMS 14

static int param_list(const moe_layer *l, pentry *p)
{
    int n = 0;
    const moe_experts *ex = l->experts;
    p[n++] = (pentry){"router.weight", moe_router_weight(l->router), false};
#define ADD(nm, t, sh)                                                                             \
    do {                                                                                           \
        if (t) p[n++] = (pentry){nm, t, sh};                                                       \
    } while (0)
    ADD("experts.w-gate", ex->w_gate, true);
    ADD("experts.w-up", ex->w_up, true);
    ADD("experts.w-down", ex->w_down, true);
    ADD("experts.b-gate", ex->b_gate, true);
    ADD("experts.b-up", ex->b_up, true);
    ADD("experts.b-down", ex->b_down, true);
    ADD("shared.w-gate", l->s_wg, false);
    ADD("shared.w-up", l->s_wu, false);
    ADD("shared.w-down", l->s_wd, false);
    ADD("shared.b-gate", l->s_bg, false);
    ADD("shared.b-up", l->s_bu, false);
    ADD("shared.b-down", l->s_bd, false);
    ADD("shared.gate", l->s_gate, false);
#undef ADD
    return n;
}

int moe_layer_parameter_count(const moe_layer *l)
{
    pentry p[MAX_PARAMS];
    return param_list(l, p);
}

moe_status moe_layer_parameter(const moe_layer *l, int i, const char **name, moe_tensor **t)
{
    pentry p[MAX_PARAMS];
    int n = param_list(l, p);
    if (i < 0 || i >= n)
        return moe_fail(MOE_ERR_INDEX, "moe-parameters", "index %d out of range [0, %d)", i, n);
    if (name) *name = p[i].name;
    if (t) *t = p[i].t;
    return MOE_OK;
}

moe_tensor *moe_layer_parameter_get(const moe_layer *l, const char *name)
{
    pentry p[MAX_PARAMS];
    int n = param_list(l, p);
    for (int i = 0; i < n; i++)
        if (name && strcmp(p[i].name, name) == 0) return p[i].t;
    return NULL;
}

moe_status moe_layer_set_parameter(moe_layer *l, const char *name, moe_tensor *value)
{
    static const char *op = "set-moe-parameter!";
    MOE_CHECK_NOT_NULL(op, value);
    pentry p[MAX_PARAMS];
    int n = param_list(l, p), i = 0;
    while (i < n && !(name && strcmp(p[i].name, name) == 0)) i++;
    if (i == n) {
        char known[512] = "";
        for (int j = 0; j < n; j++) {
            strncat(known, j ? ", " : "", sizeof known - strlen(known) - 1);
            strncat(known, p[j].name, sizeof known - strlen(known) - 1);
        }
        return moe_fail(MOE_ERR_ARG, op, "no parameter named '%s' in this layer (known: %s)",
                        name ? name : "(null)", known);
    }
    MOE_CHECK_FLOAT(op, value); /* any device: the copy moves it */
    if (strcmp(p[i].name, "router.weight") == 0) {
        if (!moe_tensor_same_shape(value, p[i].t))
            return moe_fail(MOE_ERR_SHAPE, op, "'%s' is %s, got a %s tensor", name, moe_shape_str(p[i].t),
                            moe_shape_str(value));
        return moe_router_set_weight(l->router, value);
    }
    moe_tensor *dst = p[i].t, *src = moe_tensor_retain(value);
    /* A full [E ...] tensor for a shard: take this rank's experts. */
    if (p[i].sharded && l->ep_size > 1 && value->ndim == dst->ndim && value->ndim > 0 &&
        value->shape[0] == l->cfg.experts) {
        moe_tensor *s;
        MOE_NO_GRAD_BEGIN;
        moe_status st = moe_narrow(&s, value, 0, l->experts->first, l->experts->E);
        MOE_NO_GRAD_END;
        moe_tensor_release(src);
        MOE_TRY(st);
        src = s;
    }
    if (!moe_tensor_same_shape(src, dst)) {
        moe_status st = moe_fail(MOE_ERR_SHAPE, op, "'%s' is %s%s, got a %s tensor", name,
                                 moe_shape_str(dst),
                                 p[i].sharded && l->ep_size > 1 ? " here (this rank's shard)" : "",
                                 moe_shape_str(value));
        moe_tensor_release(src);
        return st;
    }
    MOE_NO_GRAD_BEGIN;
    moe_status st = moe_tensor_copy_(dst, src);
    MOE_NO_GRAD_END;
    moe_tensor_release(src);
    moe_tensor_zero_grad(dst);
    return st;
}

void moe_layer_zero_grad(moe_layer *l)
{
    pentry p[MAX_PARAMS];
    int n = param_list(l, p);
    for (int i = 0; i < n; i++) moe_tensor_zero_grad(p[i].t);
}

void moe_layer_set_training(moe_layer *l, bool training) { moe_router_set_training(l->router, training); }

/* ---- creation ------------------------------------------------------------------------ */

/* A leaf of SHAPE: N(0, 1)·SCALE from its own stream of SEED, or zeros when
 * SCALE is 0. */
static moe_status param_new(moe_tensor **out, moe_dtype dt, int ndim, const int64_t *shape,
                            double scale, uint64_t seed, uint64_t stream)
{
    *out = NULL;
    if (scale == 0) {
        MOE_TRY(moe_tensor_zeros(out, dt, MOE_CPU, ndim, shape));
    } else {
        moe_rng rng;
        moe_rng_init(&rng, moe_splitmix64(seed ^ moe_splitmix64(stream)));
        moe_tensor *r;
        MOE_TRY(moe_tensor_randn(&r, &rng, dt, MOE_CPU, ndim, shape));
        moe_status st = moe_mul_scalar(out, r, scale);
        moe_tensor_release(r);
        MOE_TRY(st);
    }
    return moe_tensor_requires_grad_(*out, true);
}

/* Move the parameter *P (if any) to DEVICE as a fresh leaf requiring grad. */
static moe_status param_to(moe_tensor **p, moe_device device)
{
    if (!*p || (*p)->device == device) return MOE_OK;
    moe_tensor *d;
    MOE_NO_GRAD_BEGIN;
    moe_status st = moe_to_device(&d, *p, device);
    MOE_NO_GRAD_END;
    MOE_TRY(st);
    moe_tensor_release(*p);
    *p = d;
    return moe_tensor_requires_grad_(d, true);
}

/* What a layer on DEVICE needs beyond the CPU checks. */
static moe_status check_device(const char *op, const moe_layer_config *cfg, int P)
{
    if ((unsigned)cfg->device >= MOE_DEVICE_COUNT)
        return moe_fail(MOE_ERR_DEVICE, op, "unknown device %d", (int)cfg->device);
    if (cfg->device == MOE_CPU) return MOE_OK;
    if (!moe_built_with_cuda())
        return moe_fail(MOE_ERR_DEVICE, op, "device %s requested but moelab was built without CUDA support",
                        moe_device_name(cfg->device));
    if (moe_device_count(cfg->device) < 1)
        return moe_fail(MOE_ERR_DEVICE, op, "device %s requested but no CUDA GPU is available",
                        moe_device_name(cfg->device));
    if (cfg->dtype != MOE_F32)
        return moe_fail(MOE_ERR_DTYPE, op, "a layer on %s needs f32 parameters, got %s",
                        moe_device_name(cfg->device), moe_dtype_name(cfg->dtype));
    if (cfg->bias)
        return moe_fail(MOE_ERR_UNSUPPORTED, op, "expert biases are not supported on %s yet",
                        moe_device_name(cfg->device));
    if (P > 1)
        return moe_fail(MOE_ERR_UNSUPPORTED, op, "expert parallelism is not supported on %s yet",
                        moe_device_name(cfg->device));
    return MOE_OK;
}

moe_status moe_layer_new(moe_layer **out, const moe_layer_config *cfg)
{
    static const char *op = "make-moe-layer";
    *out = NULL;
    MOE_CHECK_NOT_NULL(op, cfg);
    if (cfg->hidden < 1 || cfg->ffn < 1 || cfg->experts < 1 || cfg->top_k < 1)
        return moe_fail(MOE_ERR_ARG, op, "hidden, ffn, experts and top-k must be >= 1 (got %lld %lld %lld %lld)",
                        (long long)cfg->hidden, (long long)cfg->ffn, (long long)cfg->experts,
                        (long long)cfg->top_k);
    if (cfg->shared_experts < 0 || cfg->shared_ffn < 0)
        return moe_fail(MOE_ERR_ARG, op, "shared-experts and shared-ffn must be >= 0");
    if ((unsigned)cfg->activation >= MOE_ACTIVATION_COUNT)
        return moe_fail(MOE_ERR_ARG, op, "unknown activation %d", (int)cfg->activation);
    if (cfg->dtype != MOE_F32 && cfg->dtype != MOE_F64)
        return moe_fail(MOE_ERR_DTYPE, op, "parameters must be f32 or f64, got %s", moe_dtype_name(cfg->dtype));
    if (cfg->shared_gate && cfg->shared_experts == 0 && cfg->shared_ffn == 0)
        return moe_fail(MOE_ERR_ARG, op, "a shared gate needs shared experts (shared-experts > 0)");
    int P = moe_group_size(cfg->ep_group), rank = moe_group_rank(cfg->ep_group);
    if (cfg->experts % P != 0)
        return moe_fail(MOE_ERR_ARG, op, "%lld experts cannot be split evenly over an ep group of %d ranks",
                        (long long)cfg->experts, P);
    MOE_TRY(check_device(op, cfg, P));

    moe_layer *l = calloc(1, sizeof *l);
    if (!l) return moe_fail_nomem(op, sizeof *l, "the layer");
    moe_status st = MOE_OK;
    l->cfg = *cfg;
    l->cfg.router.hidden = cfg->hidden;
    l->cfg.router.experts = cfg->experts;
    l->cfg.router.top_k = cfg->top_k;
    l->cfg.router.seed = cfg->seed;
    l->ep = moe_group_retain(cfg->ep_group);
    l->ep_size = P;
    l->ep_rank = rank;
    MOE_TRYG(moe_router_new(&l->router, &l->cfg.router));
    int64_t El = cfg->experts / P;
    MOE_TRYG(moe_experts_new(&l->experts, El, (int64_t)rank * El, cfg->hidden, cfg->ffn, cfg->activation,
                             cfg->bias, cfg->dtype, cfg->seed));
    l->Fs = cfg->shared_ffn ? cfg->shared_ffn : cfg->shared_experts * cfg->ffn;
    if (l->Fs > 0) {
        int64_t D = cfg->hidden, Fs = l->Fs, dfs[2] = {D, Fs}, fsd[2] = {Fs, D}, d1[2] = {D, 1};
        double sd = 1.0 / sqrt((double)D), sf = 1.0 / sqrt((double)Fs);
        moe_dtype dt = cfg->dtype;
        uint64_t seed = cfg->seed;
        if (moe_activation_gated(cfg->activation)) MOE_TRYG(param_new(&l->s_wg, dt, 2, dfs, sd, seed, 101));
        MOE_TRYG(param_new(&l->s_wu, dt, 2, dfs, sd, seed, 102));
        MOE_TRYG(param_new(&l->s_wd, dt, 2, fsd, sf, seed, 103));
        if (cfg->bias) {
            if (moe_activation_gated(cfg->activation)) MOE_TRYG(param_new(&l->s_bg, dt, 1, &Fs, 0, seed, 0));
            MOE_TRYG(param_new(&l->s_bu, dt, 1, &Fs, 0, seed, 0));
            MOE_TRYG(param_new(&l->s_bd, dt, 1, &D, 0, seed, 0));
        }
        if (cfg->shared_gate) MOE_TRYG(param_new(&l->s_gate, dt, 2, d1, sd, seed, 104));
    }
    /* The router stays on the host (see layer.h); the rest moves. */
    moe_experts *ex = l->experts;
    moe_tensor **move[] = {&ex->w_gate, &ex->w_up, &ex->w_down, &ex->b_gate, &ex->b_up, &ex->b_down,
                           &l->s_wg, &l->s_wu, &l->s_wd, &l->s_bg, &l->s_bu, &l->s_bd, &l->s_gate};
    for (size_t i = 0; i < sizeof move / sizeof *move; i++) MOE_TRYG(param_to(move[i], cfg->device));
    *out = l;
    return MOE_OK;
done:
    moe_layer_free(l);
    return st;
}

void moe_layer_free(moe_layer *l)
{
    if (!l) return;
    moe_routing_free(l->last);
    moe_dispatch_release(l->last_plan);
    moe_router_free(l->router);
    moe_experts_free(l->experts);
    moe_tensor *sh[7] = {l->s_wg, l->s_wu, l->s_wd, l->s_bg, l->s_bu, l->s_bd, l->s_gate};
    for (int i = 0; i < 7; i++) moe_tensor_release(sh[i]);
    moe_group_release(l->ep);
    free(l);
}

/* ---- forward --------------------------------------------------------------------------- */

/* The routed experts: permute, grouped MLP (local or expert-parallel),
 * combine with the routing weights. */
static moe_status routed(moe_tensor **out, moe_layer *l, moe_tensor *x2, moe_dispatch *plan,
                         moe_tensor *weights)
{
    moe_experts *ex = l->experts;
    moe_tensor *xp = NULL, *y = NULL;
    int64_t *sizes = malloc(sizeof *sizes * (size_t)plan->E);
    if (!sizes) return moe_fail_nomem("moe-forward", sizeof *sizes * (size_t)plan->E, "the experts' row counts");
    for (int64_t e = 0; e < plan->E; e++) sizes[e] = plan->offsets[e + 1] - plan->offsets[e];
    moe_status st = MOE_OK;
    MOE_TRYG(moe_dispatch_permute(&xp, x2, plan));
    if (l->ep_size > 1)
        MOE_TRYG(moe_ep_grouped_mlp(&y, xp, ex->w_gate, ex->w_up, ex->w_down, ex->b_gate, ex->b_up,
                                    ex->b_down, sizes, ex->activation, l->ep));
    else
        MOE_TRYG(moe_grouped_mlp(&y, xp, ex->w_gate, ex->w_up, ex->w_down, ex->b_gate, ex->b_up,
                                 ex->b_down, sizes, ex->activation));
    MOE_TRYG(moe_dispatch_combine(out, y, weights, plan));
done:
    free(sizes);
    moe_tensor_release(xp);
    moe_tensor_release(y);
    return st;
}

/* The shared MLP on every token, times σ(x·g) when gated: [T D]. */
static moe_status shared(moe_tensor **out, moe_layer *l, moe_tensor *x2)
{
    moe_tensor *w[6] = {l->s_wg, l->s_wu, l->s_wd, l->s_bg, l->s_bu, l->s_bd};
    moe_tensor *w3[6] = {0}, *s = NULL, *xg = NULL, *z = NULL, *g = NULL;
    moe_status st = MOE_OK;
    /* [D Fs] → [1 D Fs], [Fs] → [1 Fs]: one expert holding every token */
    for (int i = 0; i < 6; i++)
        if (w[i]) MOE_TRYG(moe_unsqueeze(&w3[i], w[i], 0));
    int64_t T = x2->shape[0];
    MOE_TRYG(moe_grouped_mlp(&s, x2, w3[0], w3[1], w3[2], w3[3], w3[4], w3[5], &T, l->cfg.activation));
    if (!l->s_gate) {
        *out = s;
        s = NULL;
        goto done;
    }
    MOE_TRYG(moe_to_dtype(&xg, x2, l->s_gate->dtype));
    MOE_TRYG(moe_matmul(&z, xg, l->s_gate)); /* [T 1] */
    MOE_TRYG(moe_sigmoid(&g, z));
    MOE_TRYG(moe_mul(out, s, g));
done:
    for (int i = 0; i < 6; i++) moe_tensor_release(w3[i]);
    moe_tensor_release(s);
    moe_tensor_release(xg);
    moe_tensor_release(z);
    moe_tensor_release(g);
    return st;
}

moe_status moe_layer_forward(moe_tensor **out, moe_layer *l, moe_tensor *x, moe_tensor *valid)
{
    static const char *op = "moe-forward";
    *out = NULL;
    MOE_CHECK_NOT_NULL(op, l);
    MOE_CHECK_NOT_NULL(op, x);
    MOE_CHECK_FLOAT(op, x);
    moe_device dev = l->cfg.device;
    if (x->device != dev)
        return moe_fail(MOE_ERR_DEVICE, op, "input is on %s but the layer is on %s (move it with tensor-to)",
                        moe_device_name(x->device), moe_device_name(dev));
    int64_t D = l->cfg.hidden;
    if ((x->ndim != 2 && x->ndim != 3) || x->shape[x->ndim - 1] != D)
        return moe_fail(MOE_ERR_SHAPE, op, "input must be [T %lld] or [B S %lld], got %s", (long long)D,
                        (long long)D, moe_shape_str(x));
    int64_t T = moe_tensor_numel(x) / D, s2[2] = {T, D};
    moe_tensor *x2 = NULL, *y = NULL, *sh = NULL, *sum = NULL, *res = NULL;
    moe_tensor *xr = NULL, *vr = NULL, *wts = NULL; /* host router input, weights on dev */
    moe_routing *rt = NULL;
    moe_dispatch *plan = NULL;
    moe_status st = MOE_OK;
    MOE_TRYG(moe_reshape(&x2, x, 2, s2));
    /* The router runs on the host: on CPU these are the tensors themselves. */
    MOE_TRYG(moe_to_device(&xr, x, MOE_CPU));
    if (valid) MOE_TRYG(moe_to_device(&vr, valid, MOE_CPU));
    MOE_TRYG(moe_router_forward(&rt, l->router, xr, vr, NULL));
    int64_t C = rt->capacity > 0 ? rt->capacity : 0;
    bool pad = C > 0 && l->cfg.router.pad_to_capacity;
    MOE_TRYG(moe_dispatch_plan(&plan, rt->experts, rt->kept, l->cfg.experts, C, pad));
    MOE_TRYG(moe_to_device(&wts, rt->weights, dev));
    MOE_TRYG(routed(&y, l, x2, plan, wts));
    if (l->Fs > 0) {
        MOE_TRYG(shared(&sh, l, x2));
        MOE_TRYG(moe_add(&sum, y, sh));
    } else {
        sum = moe_tensor_retain(y);
    }
    if (sum->dtype != x->dtype) {
        moe_tensor *c;
        MOE_TRYG(moe_to_dtype(&c, sum, x->dtype));
        moe_tensor_release(sum);
        sum = c;
    }
    MOE_TRYG(moe_reshape(&res, sum, x->ndim, x->shape));
    /* keep the record */
    moe_routing_free(l->last);
    moe_dispatch_release(l->last_plan);
    l->last = rt;
    l->last_plan = plan;
    rt = NULL;
    plan = NULL;
    *out = res;
    res = NULL;
done:
    moe_routing_free(rt);
    moe_dispatch_release(plan);
    moe_tensor_release(x2);
    moe_tensor_release(xr);
    moe_tensor_release(vr);
    moe_tensor_release(wts);
    moe_tensor_release(y);
    moe_tensor_release(sh);
    moe_tensor_release(sum);
    moe_tensor_release(res);
    return st;
}
