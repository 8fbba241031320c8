/* check_gpu_moe.c — the MoE kernels of the CUDA backend against the CPU:
 * the fused router (every score function, group rule, K, with/without
 * expert bias and padding: ids and counts exact, weights, loss values and the
 * gradient w.r.t. x to f32 tolerance), the router reference vectors the
 * fused kernel covers, the device dispatch plan and permute / un-permute
 * (forward, backward, round trip), the grouped expert MLP (f32 and
 * bf16, forward and every gradient), and the whole MoE layer on a CUDA
 * device against the same layer on the CPU (output, input gradient and
 * every parameter gradient).
 *
 * Each case prints its normalised error max|g−c|/max(1, max|c|). Without a
 * GPU (or without CUDA in the build): "skipped: no GPU", exit 77.
 *
 * Dimension letters: T tokens, D hidden, E experts, K top-k, G groups, F
 * expert ffn dim, N permuted rows. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/dispatch.h"
#include "moe/experts.h"
#include "moe/layer.h"
#include "moe/router.h"
#include "../reference/refs.h"
#include "../unit/testutil.h"

#ifdef MOELAB_HAVE_CUDA
#include "../../kernels/cuda/cuda.h"
#include "../../kernels/cuda/grouped_gemm.h"
#include "../../kernels/cuda/permute.h"
#include "../../kernels/cuda/router.h"

#ifndef MOE_REFS_FILE
#define MOE_REFS_FILE "tests/reference/router_refs.txt"
#endif

/* ---- helpers ---------------------------------------------------------------------- */

static moe_tensor *to_dev(moe_tensor *t)
{
    moe_tensor *d;
    OK(moe_to_device(&d, t, MOE_CUDA));
    return d;
}

static moe_tensor *dev_empty(moe_dtype dt, int nd, const int64_t *shape)
{
    moe_tensor *d;
    OK(moe_tensor_empty(&d, dt, MOE_CUDA, nd, shape));
    return d;
}

static double *host_doubles(moe_tensor *d)
{
    moe_tensor *h;
    OK(moe_to_device(&h, d, MOE_CPU));
    int64_t n = moe_tensor_numel(h);
    double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
    OK(moe_tensor_to_doubles(h, v));
    moe_tensor_release(h);
    return v;
}

static double *cpu_doubles(moe_tensor *t)
{
    int64_t n = moe_tensor_numel(t);
    double *v = malloc(sizeof(double) * (size_t)(n ? n : 1));
    OK(moe_tensor_to_doubles(t, v));
    return v;
}

/* max|g−c| / max(1, max|c|), printed, asserted <= TOL. */
static double check_close(const char *what, const double *g, const double *c, int64_t n, double tol)
{
    double d = 0, m = 0;
    int64_t worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs(g[i] - c[i]);
        if (!(e <= d)) {
            d = e;
            worst = i;
        }
        m = fabs(c[i]) > m ? fabs(c[i]) : m;
    }
    double err = d / (m > 1 ? m : 1);
    printf("check_gpu_moe: %-52s err %.3g\n", what, err);
    ck_assert_msg(err <= tol, "%s: normalised error %.3g > %.3g (element %lld: gpu %.9g, cpu %.9g)", what, err, tol,
                  (long long)worst, n ? g[worst] : 0.0, n ? c[worst] : 0.0);
    return err;
}

static void check_exact(const char *what, const double *g, const double *c, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(g[i] == c[i], "%s: element %lld is %.17g on the GPU, %.17g on the CPU", what, (long long)i, g[i],
                      c[i]);
    printf("check_gpu_moe: %-52s exact (%lld)\n", what, (long long)n);
}

/* ---- the fused router -------------------------------------------------------------- */

/* The fused kernel's arguments for a router configuration (router.c's rules). */
static moe_cuda_router_args args_of(const moe_router_config *c, int64_t T, const moe_tensor *z, const moe_tensor *valid,
                                    const moe_tensor *bias)
{
    moe_cuda_router_args a = {
        .T = T, .E = c->experts, .K = c->top_k, .z_bf16 = z->dtype == MOE_BF16, .z = moe_tensor_data(z),
        .valid = valid ? moe_tensor_data(valid) : NULL, .score = c->score, .score_offset = c->score_offset,
        .loss_eps = c->loss_eps, .wmode = MOE_WMODE_GATHER, .wnorm = MOE_WNORM_NONE,
        .norm_eps = c->norm_eps, .norm_p = c->norm_p, .scaling = c->scaling_factor,
        .bias = bias ? moe_tensor_data(bias) : NULL, .groups = c->groups, .group_topk = c->group_topk,
        .group_m = c->groups ? (c->group_score_top ? c->group_score_top : c->top_k / c->group_topk) : 0,
        .count_topk = c->count_from == MOE_COUNT_TOPK,
    };
    if (c->score == MOE_SCORE_SOFTMAX && !c->pre_softmax) {
        a.select_on_logits = true;
        a.wmode = MOE_WMODE_POST_SOFTMAX;
    } else if (c->normalize == MOE_NORM_ON ||
               (c->normalize == MOE_NORM_AUTO && c->score == MOE_SCORE_SIGMOID && c->top_k > 1)) {
        a.wnorm = c->norm_p == 1.0 ? MOE_WNORM_SUM : MOE_WNORM_PNORM;
    }
    if (c->score == MOE_SCORE_SOFTMAX) a.score_offset = 0;
    return a;
}

/* What one GPU routing pass gives back on the host. */
typedef struct gpu_route {
    double *ids, *weights, *counts, *loss_counts, *stats, *dz;
    int bad;
} gpu_route;

static void gpu_route_free(gpu_route *g)
{
    free(g->ids), free(g->weights), free(g->counts), free(g->loss_counts), free(g->stats), free(g->dz);
}

/* Forward and backward on the GPU for logits Z [T E] (CPU), with DW [T K]
 * the weights' gradient (CPU f32, or NULL), balance coefficient ALPHA_MB and
 * z coefficient ALPHA_Z. */
static void gpu_route_run(gpu_route *out, const moe_router_config *c, moe_tensor *z, moe_tensor *valid, moe_tensor *bias,
                          moe_tensor *dw, double alpha_mb, double alpha_z)
{
    int64_t T = z->shape[0], E = c->experts, K = c->top_k;
    moe_tensor *zd = to_dev(z), *vd = NULL, *bd = NULL, *dwd = NULL;
    if (valid) {
        moe_tensor *vb;
        OK(moe_to_dtype(&vb, valid, MOE_BOOL));
        vd = to_dev(vb);
        moe_tensor_release(vb);
    }
    if (bias) bd = to_dev(bias);
    if (dw) dwd = to_dev(dw);
    moe_cuda_router_args a = args_of(c, T, zd, vd, bd);
    moe_tensor *ids = dev_empty(MOE_I64, 2, SHAPE(T, K)), *w = dev_empty(MOE_F32, 2, SHAPE(T, K));
    moe_tensor *cnt = dev_empty(MOE_I32, 1, SHAPE(E)), *lcnt = dev_empty(MOE_I32, 1, SHAPE(E));
    moe_tensor *stats = dev_empty(MOE_F64, 1, SHAPE(E + 2)), *bad = dev_empty(MOE_I32, 1, SHAPE(1));
    int64_t wb = (int64_t)moe_cuda_router_workspace(T, E, c->groups);
    moe_tensor *work = dev_empty(MOE_F64, 1, SHAPE(wb / 8 + 1));
    moe_tensor *aux_w = dev_empty(MOE_F32, 1, SHAPE(E)), *dz = dev_empty(z->dtype, 2, SHAPE(T, E));
    moe_cuda_router_out o = {.ids = moe_tensor_data(ids), .weights = moe_tensor_data(w),
                             .counts = moe_tensor_data(cnt), .loss_counts = moe_tensor_data(lcnt),
                             .stats = moe_tensor_data(stats), .bad_rows = moe_tensor_data(bad),
                             .work = moe_tensor_data(work)};
    OK(moe_cuda_router_forward(&a, &o));
    OK(moe_cuda_router_balance_coeffs(moe_tensor_data(aux_w), moe_tensor_data(lcnt), moe_tensor_data(stats), E, K,
                                      alpha_mb));
    moe_cuda_router_grad g = {.ids = moe_tensor_data(ids), .dweights = dwd ? moe_tensor_data(dwd) : NULL,
                              .aux_w = alpha_mb != 0 ? moe_tensor_data(aux_w) : NULL,
                              .stats = moe_tensor_data(stats), .z_coeff = alpha_z, .dz = moe_tensor_data(dz)};
    OK(moe_cuda_router_backward(&a, &g));
    OK(moe_cuda_synchronize());
    out->ids = host_doubles(ids);
    out->weights = host_doubles(w);
    out->counts = host_doubles(cnt);
    out->loss_counts = host_doubles(lcnt);
    out->stats = host_doubles(stats);
    out->dz = host_doubles(dz);
    double *b = host_doubles(bad);
    out->bad = (int)b[0];
    free(b);
    RELEASE(zd, ids, w, cnt, lcnt, stats, bad, work, aux_w, dz);
    moe_tensor_release(vd);
    moe_tensor_release(bd);
    moe_tensor_release(dwd);
}

/* grad_x = dz [T E] · W [E D] (host, double). */
static double *grad_x_of(const double *dz, moe_tensor *W, int64_t T, int64_t E, int64_t D)
{
    double *w = cpu_doubles(W), *gx = calloc((size_t)(T * D), sizeof(double));
    for (int64_t t = 0; t < T; t++)
        for (int64_t e = 0; e < E; e++) {
            double d = dz[t * E + e];
            if (d != 0)
                for (int64_t j = 0; j < D; j++) gx[t * D + j] += d * w[e * D + j];
        }
    free(w);
    return gx;
}

/* The canonical micro-batch loss from GPU counts and stats. */
static double micro_loss(const gpu_route *g, int64_t E, int64_t K)
{
    double Tv = g->stats[E + 1], v = 0;
    for (int64_t i = 0; i < E; i++) v += g->loss_counts[i] * g->stats[i];
    return Tv > 0 ? (double)E / ((double)K * Tv * Tv) * v : 0.0;
}

typedef struct router_case {
    moe_score_fn score;
    bool pre_softmax;
    int64_t K, G, keep, m;
    bool bias, padded;
    moe_count_from count;
    double scaling;
} router_case;

static const router_case router_cases[] = {
    {MOE_SCORE_SOFTMAX, false, 2, 0, 0, 0, false, false, MOE_COUNT_TOPK, 1.0},
    {MOE_SCORE_SOFTMAX, false, 4, 0, 0, 0, true, true, MOE_COUNT_TOPK, 1.0},
    {MOE_SCORE_SOFTMAX, true, 1, 0, 0, 0, false, false, MOE_COUNT_TOPK, 1.0},
    {MOE_SCORE_SOFTMAX, true, 3, 0, 0, 0, false, true, MOE_COUNT_ACTUAL, 1.0},
    {MOE_SCORE_SOFTMAX, false, 2, 4, 2, 0, false, false, MOE_COUNT_TOPK, 1.0},
    {MOE_SCORE_SOFTMAX, true, 4, 4, 2, 2, true, false, MOE_COUNT_ACTUAL, 1.0},
    {MOE_SCORE_SIGMOID, false, 1, 0, 0, 0, false, false, MOE_COUNT_TOPK, 1.0},
    {MOE_SCORE_SIGMOID, false, 2, 0, 0, 0, true, false, MOE_COUNT_TOPK, 2.5},
    {MOE_SCORE_SIGMOID, false, 8, 0, 0, 0, false, true, MOE_COUNT_ACTUAL, 1.0},
    {MOE_SCORE_SIGMOID, false, 4, 4, 2, 0, false, false, MOE_COUNT_TOPK, 1.0},
    {MOE_SCORE_SIGMOID, false, 8, 8, 4, 2, true, true, MOE_COUNT_TOPK, 2.5},
    {MOE_SCORE_SIGMOID, false, 6, 8, 3, 2, true, false, MOE_COUNT_ACTUAL, 1.0},
};
#define N_ROUTER_CASES ((int)(sizeof router_cases / sizeof *router_cases))

START_TEST(test_router_vs_cpu)
{
    const router_case *rc = &router_cases[_i];
    const int64_t T = 300, D = 16, E = 32, K = rc->K;
    moe_router_config cfg;
    moe_router_config_default(&cfg);
    cfg.hidden = D;
    cfg.experts = E;
    cfg.top_k = K;
    cfg.score = rc->score;
    cfg.pre_softmax = rc->pre_softmax;
    cfg.groups = rc->G;
    cfg.group_topk = rc->keep;
    cfg.group_score_top = rc->m;
    cfg.expert_bias = rc->bias;
    cfg.count_from = rc->count;
    cfg.scaling_factor = rc->scaling;
    cfg.seed = 11 + (uint64_t)_i;
    const double a_mb = 1e-2, a_z = 1e-3;
    OK(moe_router_config_set_losses(&cfg, 2, (moe_aux_term[]){{MOE_AUX_MICRO_BATCH, a_mb}, {MOE_AUX_Z, a_z}}));
    moe_router *r;
    OK(moe_router_new(&r, &cfg));
    moe_tensor *W = tu_randn(MOE_F32, 2, SHAPE(E, D), 100 + (uint64_t)_i);
    OK(moe_router_set_weight(r, W));
    moe_tensor *bias = NULL;
    if (rc->bias) {
        bias = tu_randn(MOE_F32, 1, SHAPE(E), 200 + (uint64_t)_i);
        OK(moe_router_set_bias(r, bias));
    }
    moe_tensor *x = tu_randn(MOE_F32, 2, SHAPE(T, D), 300 + (uint64_t)_i), *valid = NULL;
    OK(moe_tensor_requires_grad_(x, true));
    if (rc->padded) {
        OK(moe_tensor_ones(&valid, MOE_BOOL, MOE_CPU, 1, SHAPE(T)));
        uint8_t *v = moe_tensor_data(valid);
        for (int64_t t = 0; t < T; t += 7) v[t] = 0;
    }
    moe_routing *out;
    OK(moe_router_forward(&out, r, x, valid, NULL));
    moe_tensor *R = tu_randn(MOE_F32, 2, SHAPE(T, K), 400 + (uint64_t)_i), *prod, *obj;
    OK(moe_mul(&prod, out->weights, R));
    OK(moe_sum(&obj, prod, 0, NULL, false));
    OK(moe_backward(obj, NULL, false));

    gpu_route g;
    gpu_route_run(&g, &cfg, out->logits, valid, bias, R, a_mb, a_z);
    char what[96];
    const char *nm = rc->score == MOE_SCORE_SOFTMAX ? (rc->pre_softmax ? "softmax-pre" : "softmax-post") : "sigmoid";
    ck_assert_int_eq(g.bad, 0);
    double *ids = cpu_doubles(out->experts), *w = cpu_doubles(out->weights), *cnt = cpu_doubles(out->counts);
    snprintf(what, sizeof what, "%s K%lld G%lld ids", nm, (long long)K, (long long)rc->G);
    check_exact(what, g.ids, ids, T * K);
    snprintf(what, sizeof what, "%s K%lld G%lld counts", nm, (long long)K, (long long)rc->G);
    check_exact(what, g.counts, cnt, E);
    snprintf(what, sizeof what, "%s K%lld G%lld weights", nm, (long long)K, (long long)rc->G);
    check_close(what, g.weights, w, T * K, 1e-5);
    double lmb, lz, gm = micro_loss(&g, E, K), gz = g.stats[E] / g.stats[E + 1];
    OK(moe_tensor_item(out->aux[0], &lmb));
    OK(moe_tensor_item(out->aux[1], &lz));
    snprintf(what, sizeof what, "%s K%lld G%lld micro-batch loss", nm, (long long)K, (long long)rc->G);
    check_close(what, &gm, &lmb, 1, 1e-5);
    snprintf(what, sizeof what, "%s K%lld G%lld z loss", nm, (long long)K, (long long)rc->G);
    check_close(what, &gz, &lz, 1, 1e-5);
    double *gx = grad_x_of(g.dz, W, T, E, D), *cx = cpu_doubles(x->grad);
    snprintf(what, sizeof what, "%s K%lld G%lld grad x", nm, (long long)K, (long long)rc->G);
    check_close(what, gx, cx, T * D, 1e-5);
    free(ids), free(w), free(cnt), free(gx), free(cx);
    gpu_route_free(&g);
    moe_routing_free(out);
    RELEASE(R, prod, obj, x, W);
    moe_tensor_release(valid);
    moe_tensor_release(bias);
    moe_router_free(r);
}
END_TEST

/* bf16 logits: the same selection as the CPU on the bf16-rounded logits. */
START_TEST(test_router_bf16_logits)
{
    const int64_t T = 257, E = 64, K = 8;
    moe_router_config cfg;
    moe_router_config_default(&cfg);
    cfg.hidden = 4;
    cfg.experts = E;
    cfg.top_k = K;
    cfg.score = MOE_SCORE_SIGMOID;
    cfg.groups = 8;
    cfg.group_topk = 4;
    cfg.group_score_top = 2;
    moe_tensor *z32 = tu_randn(MOE_F32, 2, SHAPE(T, E), 77), *zb, *zr;
    OK(moe_to_dtype(&zb, z32, MOE_BF16));
    OK(moe_to_dtype(&zr, zb, MOE_F32)); /* the values the GPU sees, in f32 */
    gpu_route gb, gf;
    gpu_route_run(&gb, &cfg, zb, NULL, NULL, NULL, 1e-2, 0);
    gpu_route_run(&gf, &cfg, zr, NULL, NULL, NULL, 1e-2, 0);
    check_exact("bf16 logits ids (vs f32 of the same values)", gb.ids, gf.ids, T * K);
    check_close("bf16 logits weights", gb.weights, gf.weights, T * K, 1e-6);
    check_close("bf16 logits dz (stored bf16)", gb.dz, gf.dz, T * E, 1e-2);
    gpu_route_free(&gb);
    gpu_route_free(&gf);
    RELEASE(z32, zb, zr);
}
END_TEST

/* ---- router reference vectors ----------------------------------------------------------- */

static ref_case *refs;
static int nrefs;

/* The reference cases the fused kernel covers: f32 router cases, one
 * micro-batch, no Sinkhorn/debug/capacity, losses among micro-batch and z. */
static bool ref_config(moe_router_config *cfg, const ref_case *c)
{
    const char *op = ref_get(c, "op");
    if (!op || strcmp(op, "router") || !ref_router_config(cfg, c)) return false;
    if (ref_getd(c, "micro_batches", 1) != 1 || cfg->loss_div_factor != 0 || cfg->num_moe_layers != 1)
        return false;
    if (cfg->dtype != MOE_F32 || cfg->sinkhorn || cfg->debug_routing != MOE_DEBUG_NONE || !cfg->k_in_f) return false;
    if (!isnan(cfg->capacity_factor)) return false;
    for (int i = 0; i < cfg->n_losses; i++)
        if (cfg->losses[i].kind != MOE_AUX_MICRO_BATCH && cfg->losses[i].kind != MOE_AUX_Z) return false;
    return ref_tensor(c, "x", 0) && ref_tensor(c, "W", -1) && !ref_tensor(c, "bounds", 0) &&
           !ref_tensor(c, "x", 1);
}

START_TEST(test_router_refs)
{
    nrefs = refs_load(MOE_REFS_FILE, &refs);
    ck_assert_msg(nrefs > 0, "cannot read %s: %s", MOE_REFS_FILE, moe_last_error());
    int ran = 0;
    for (int ci = 0; ci < nrefs; ci++) {
        const ref_case *c = &refs[ci];
        moe_router_config cfg;
        if (!ref_config(&cfg, c)) continue;
        moe_tensor *x = ref_tensor(c, "x#0", -1), *W = ref_tensor(c, "W", -1), *valid = ref_tensor(c, "valid#0", -1);
        int64_t D = cfg.hidden, E = cfg.experts, K = cfg.top_k, T = moe_tensor_numel(x) / D;
        moe_tensor *x2, *xf, *Wf, *z, *vflat = NULL;
        OK(moe_reshape(&x2, x, 2, SHAPE(T, D)));
        OK(moe_to_dtype(&xf, x2, MOE_F32));
        OK(moe_to_dtype(&Wf, W, MOE_F32));
        OK(moe_linear(&z, xf, Wf, NULL));
        if (valid) OK(moe_reshape(&vflat, valid, 1, SHAPE(T)));
        /* the weights' gradient: R, plus Rp gathered at the selection (probs' share) */
        double *R = cpu_doubles(ref_tensor(c, "R#0", -1)), *Rp = cpu_doubles(ref_tensor(c, "Rp#0", -1));
        double *ids = cpu_doubles(ref_tensor(c, "ids#0", -1));
        moe_tensor *dw;
        OK(moe_tensor_empty(&dw, MOE_F32, MOE_CPU, 2, SHAPE(T, K)));
        float *dwp = moe_tensor_data(dw);
        for (int64_t i = 0; i < T * K; i++) dwp[i] = (float)(R[i] + Rp[(i / K) * E + (int64_t)ids[i]]);
        double a_mb = 0, a_z = 0;
        for (int i = 0; i < cfg.n_losses; i++) {
            if (cfg.losses[i].kind == MOE_AUX_MICRO_BATCH) a_mb = cfg.losses[i].coeff;
            if (cfg.losses[i].kind == MOE_AUX_Z) a_z = cfg.losses[i].coeff;
        }
        gpu_route g;
        gpu_route_run(&g, &cfg, z, vflat, ref_tensor(c, "bias", -1), dw, a_mb, a_z);
        char what[192];
        double *wr = cpu_doubles(ref_tensor(c, "weights#0", -1)), *cr = cpu_doubles(ref_tensor(c, "counts#0", -1));
        snprintf(what, sizeof what, "ref %s ids", c->name);
        check_exact(what, g.ids, ids, T * K);
        snprintf(what, sizeof what, "ref %s counts", c->name);
        check_exact(what, g.counts, cr, E);
        snprintf(what, sizeof what, "ref %s weights", c->name);
        check_close(what, g.weights, wr, T * K, 1e-4);
        for (int i = 0; i < cfg.n_losses; i++) {
            char nm[64];
            snprintf(nm, sizeof nm, "aux.%s#0", moe_aux_kind_name(cfg.losses[i].kind));
            double want;
            OK(moe_tensor_item(ref_tensor(c, nm, -1), &want));
            double got = cfg.losses[i].kind == MOE_AUX_Z ? g.stats[E] / g.stats[E + 1] : micro_loss(&g, E, K);
            snprintf(what, sizeof what, "ref %s %s", c->name, nm);
            check_close(what, &got, &want, 1, 1e-4);
        }
        double *gx = grad_x_of(g.dz, Wf, T, E, D), *gr = cpu_doubles(ref_tensor(c, "grad_x#0", -1));
        snprintf(what, sizeof what, "ref %s grad_x", c->name);
        check_close(what, gx, gr, T * D, 1e-4);
        free(R), free(Rp), free(ids), free(wr), free(cr), free(gx), free(gr);
        gpu_route_free(&g);
        RELEASE(x2, xf, Wf, z, dw);
        moe_tensor_release(vflat);
        ran++;
    }
    printf("check_gpu_moe: %d reference cases on the GPU\n", ran);
    refs_free(refs, nrefs);
    ck_assert_int_ge(ran, 5);
}
END_TEST

/* ---- dispatch: plan, permute, un-permute ----------------------------------------------- */

typedef struct plan_case {
    int64_t T, K, E, capacity;
    bool pad, keep;
} plan_case;

static const plan_case plan_cases[] = {
    {50, 3, 7, 0, false, false}, {50, 3, 7, 0, false, true}, {2000, 2, 5, 300, false, true},
    {2000, 2, 5, 300, true, false}, {1, 1, 1, 0, false, false}, {4097, 6, 64, 0, false, false},
};
#define N_PLAN_CASES ((int)(sizeof plan_cases / sizeof *plan_cases))

static void run_rows(const plan_case *pc, moe_dtype dt, moe_dispatch *cp, moe_cuda_dispatch *gp, moe_tensor *keep)
{
    (void)keep;
    const int64_t T = pc->T, K = pc->K, D = 40;
    const bool bf = dt == MOE_BF16;
    const double tol = bf ? 1e-2 : 1e-6;
    char what[96];
    moe_tensor *x0 = tu_randn(MOE_F32, 2, SHAPE(T, D), 5), *w0 = tu_randn(MOE_F32, 2, SHAPE(T, K), 6), *x, *xr;
    OK(moe_to_dtype(&x, x0, dt));
    OK(moe_to_dtype(&xr, x, MOE_F32)); /* CPU reference on the rounded values */
    OK(moe_tensor_requires_grad_(xr, true));
    OK(moe_tensor_requires_grad_(w0, true));
    /* CPU: permute, combine, backward of Σ out⊙Go */
    moe_tensor *perm, *comb, *Go = tu_randn(MOE_F32, 2, SHAPE(T, D), 7), *pr, *obj;
    OK(moe_dispatch_permute(&perm, xr, cp));
    OK(moe_dispatch_combine(&comb, perm, w0, cp));
    OK(moe_mul(&pr, comb, Go));
    OK(moe_sum(&obj, pr, 0, NULL, false));
    OK(moe_backward(obj, NULL, false));
    /* GPU */
    int64_t N = gp->rows;
    moe_tensor *xd = to_dev(x), *wd = to_dev(w0), *Gb, *God;
    OK(moe_to_dtype(&Gb, Go, dt));
    God = to_dev(Gb);
    moe_tensor *pd = dev_empty(dt, 2, SHAPE(N, D)), *cd = dev_empty(dt, 2, SHAPE(T, D));
    moe_tensor *dy = dev_empty(dt, 2, SHAPE(N, D)), *dwt = dev_empty(MOE_F32, 2, SHAPE(T, K));
    moe_tensor *dx = dev_empty(dt, 2, SHAPE(T, D));
    OK(moe_cuda_rows_gather(bf, moe_tensor_data(pd), moe_tensor_data(xd), gp->row_token, gp->row_slot, NULL, N, D));
    OK(moe_cuda_rows_combine(bf, moe_tensor_data(cd), moe_tensor_data(pd), gp->slot_row, moe_tensor_data(wd), T, K, D));
    /* backward: dY = gather(Go, w), dw = <Go, Y>, dX = combine(dY, NULL) */
    OK(moe_cuda_rows_gather(bf, moe_tensor_data(dy), moe_tensor_data(God), gp->row_token, gp->row_slot,
                            moe_tensor_data(wd), N, D));
    OK(moe_cuda_rows_dot(bf, moe_tensor_data(dwt), moe_tensor_data(God), moe_tensor_data(pd), gp->slot_row, T, K, D));
    OK(moe_cuda_rows_combine(bf, moe_tensor_data(dx), moe_tensor_data(dy), gp->slot_row, NULL, T, K, D));
    OK(moe_cuda_synchronize());
    double *a = host_doubles(pd), *b = cpu_doubles(perm);
    snprintf(what, sizeof what, "permute T%lld K%lld E%lld C%lld %s", (long long)T, (long long)K, (long long)pc->E,
             (long long)pc->capacity, moe_dtype_name(dt));
    check_close(what, a, b, N * D, tol);
    free(a), free(b);
    a = host_doubles(cd), b = cpu_doubles(comb);
    snprintf(what, sizeof what, "un-permute T%lld K%lld C%lld %s", (long long)T, (long long)K, (long long)pc->capacity,
             moe_dtype_name(dt));
    check_close(what, a, b, T * D, tol);
    free(a), free(b);
    a = host_doubles(dx), b = cpu_doubles(xr->grad);
    snprintf(what, sizeof what, "permute backward (dx) %s", moe_dtype_name(dt));
    check_close(what, a, b, T * D, bf ? 3e-2 : 1e-5);
    free(a), free(b);
    a = host_doubles(dwt), b = cpu_doubles(w0->grad);
    snprintf(what, sizeof what, "un-permute backward (dw) %s", moe_dtype_name(dt));
    check_close(what, a, b, T * K, bf ? 3e-2 : 1e-5);
    free(a), free(b);
    RELEASE(x0, w0, x, xr, perm, comb, Go, pr, obj, xd, wd, Gb, God, pd, cd, dy, dwt, dx);
}

START_TEST(test_dispatch)
{
    const plan_case *pc = &plan_cases[_i];
    const int64_t T = pc->T, K = pc->K, E = pc->E, S = T * K;
    moe_tensor *ids, *keep = NULL;
    OK(moe_tensor_empty(&ids, MOE_I64, MOE_CPU, 2, SHAPE(T, K)));
    int64_t *id = moe_tensor_data(ids);
    for (int64_t s = 0; s < S; s++) { /* skewed: expert 0 popular, some experts empty */
        double u = moe_rng_uniform(99 + (uint64_t)_i, (uint64_t)s);
        id[s] = (int64_t)(u * u * (double)E) % E;
    }
    if (pc->keep) {
        OK(moe_tensor_ones(&keep, MOE_BOOL, MOE_CPU, 2, SHAPE(T, K)));
        uint8_t *k = moe_tensor_data(keep);
        for (int64_t s = 0; s < S; s += 5) k[s] = 0;
    }
    moe_dispatch *cp;
    OK(moe_dispatch_plan(&cp, ids, keep, E, pc->capacity, pc->pad));
    moe_tensor *idd = to_dev(ids), *kd = keep ? to_dev(keep) : NULL;
    moe_cuda_dispatch gp;
    OK(moe_cuda_dispatch_plan(&gp, moe_tensor_data(idd), kd ? moe_tensor_data(kd) : NULL, T, K, E, pc->capacity,
                              pc->pad));
    ck_assert_int_eq(gp.rows, cp->rows);
    ck_assert_int_eq(gp.n_kept, cp->n_kept);
    ck_assert_int_eq(gp.n_dropped, cp->n_dropped);
    for (int64_t e = 0; e < E; e++) {
        ck_assert_int_eq(gp.counts[e], cp->counts[e]);
        ck_assert_int_eq(gp.routed[e], cp->routed[e]);
        ck_assert_int_eq(gp.offsets[e + 1], cp->offsets[e + 1]);
    }
    int64_t *h = malloc(sizeof(int64_t) * (size_t)(S + 2 * gp.rows + 1));
    OK(moe_cuda_memcpy(h, gp.slot_row, sizeof(int64_t) * (size_t)(S + 2 * gp.rows), MOE_COPY_D2H));
    for (int64_t s = 0; s < S; s++) ck_assert_int_eq(h[s], cp->slot_row[s]);
    for (int64_t r = 0; r < gp.rows; r++) {
        ck_assert_int_eq(h[S + r], cp->row_token[r]);
        ck_assert_int_eq(h[S + gp.rows + r], cp->row_slot[r]);
    }
    printf("check_gpu_moe: plan T%lld K%lld E%lld C%lld%s%s matches the CPU plan (%lld rows)\n", (long long)T,
           (long long)K, (long long)E, (long long)pc->capacity, pc->pad ? " padded" : "", pc->keep ? " keep" : "",
           (long long)gp.rows);
    free(h);
    run_rows(pc, MOE_F32, cp, &gp, keep);
    run_rows(pc, MOE_BF16, cp, &gp, keep);
    moe_cuda_dispatch_free(&gp);
    moe_dispatch_release(cp);
    RELEASE(ids, idd);
    moe_tensor_release(keep);
    moe_tensor_release(kd);
}
END_TEST

/* Permute then un-permute without weights gives K·x (dropless, no keep mask). */
START_TEST(test_round_trip)
{
    const int64_t T = 333, K = 4, E = 16, D = 24;
    moe_tensor *ids;
    OK(moe_tensor_empty(&ids, MOE_I64, MOE_CPU, 2, SHAPE(T, K)));
    int64_t *id = moe_tensor_data(ids);
    for (int64_t s = 0; s < T * K; s++) id[s] = (s * 7 + s / K) % E;
    moe_tensor *idd = to_dev(ids), *x = tu_randn(MOE_F32, 2, SHAPE(T, D), 3), *xd = to_dev(x);
    moe_cuda_dispatch gp;
    OK(moe_cuda_dispatch_plan(&gp, moe_tensor_data(idd), NULL, T, K, E, 0, false));
    ck_assert_int_eq(gp.rows, T * K);
    moe_tensor *p = dev_empty(MOE_F32, 2, SHAPE(T * K, D)), *back = dev_empty(MOE_F32, 2, SHAPE(T, D));
    OK(moe_cuda_rows_gather(false, moe_tensor_data(p), moe_tensor_data(xd), gp.row_token, gp.row_slot, NULL, T * K, D));
    OK(moe_cuda_rows_combine(false, moe_tensor_data(back), moe_tensor_data(p), gp.slot_row, NULL, T, K, D));
    double *g = host_doubles(back), *c = cpu_doubles(x);
    for (int64_t i = 0; i < T * D; i++) c[i] *= (double)K;
    check_close("round trip permute/un-permute = K·x", g, c, T * D, 1e-6);
    free(g), free(c);
    moe_cuda_dispatch_free(&gp);
    RELEASE(ids, idd, x, xd, p, back);
}
END_TEST

/* ---- grouped expert MLP ------------------------------------------------------------------- */

START_TEST(test_grouped_mlp)
{
    const moe_activation act = (moe_activation)(_i % 3);
    const bool bf = _i >= 3;
    const moe_dtype dt = bf ? MOE_BF16 : MOE_F32;
    const int64_t E = 5, D = 48, F = 40, sizes[5] = {17, 0, 33, 5, 64};
    int64_t N = 0, off[6] = {0};
    for (int e = 0; e < E; e++) off[e + 1] = off[e] + sizes[e], N += sizes[e];
    const bool gated = moe_activation_gated(act);
    /* parameters rounded to the GPU dtype, the CPU reference on those values in f32 */
    moe_tensor *src[4] = {tu_randn(MOE_F32, 2, SHAPE(N, D), 1), gated ? tu_randn(MOE_F32, 3, SHAPE(E, D, F), 2) : NULL,
                          tu_randn(MOE_F32, 3, SHAPE(E, D, F), 3), tu_randn(MOE_F32, 3, SHAPE(E, F, D), 4)};
    moe_tensor *lo[4] = {0}, *ref[4] = {0}, *dev[4] = {0};
    double scale[4] = {1.0, 1.0 / sqrt((double)D), 1.0 / sqrt((double)D), 1.0 / sqrt((double)F)};
    for (int i = 0; i < 4; i++) {
        if (!src[i]) continue;
        moe_tensor *sc;
        OK(moe_mul_scalar(&sc, src[i], scale[i]));
        OK(moe_to_dtype(&lo[i], sc, dt));
        OK(moe_to_dtype(&ref[i], lo[i], MOE_F32));
        OK(moe_tensor_requires_grad_(ref[i], true));
        dev[i] = to_dev(lo[i]);
        moe_tensor_release(sc);
    }
    moe_tensor *y, *R = tu_randn(MOE_F32, 2, SHAPE(N, D), 9), *pr, *obj;
    OK(moe_grouped_mlp(&y, ref[0], ref[1], ref[2], ref[3], NULL, NULL, NULL, sizes, act));
    OK(moe_mul(&pr, y, R));
    OK(moe_sum(&obj, pr, 0, NULL, false));
    OK(moe_backward(obj, NULL, false));

    moe_tensor *Rl, *Rd;
    OK(moe_to_dtype(&Rl, R, dt));
    Rd = to_dev(Rl);
    moe_tensor *g = dev_empty(dt, 2, SHAPE(N, F)), *u = dev_empty(dt, 2, SHAPE(N, F)), *h = dev_empty(dt, 2, SHAPE(N, F));
    moe_tensor *yd = dev_empty(dt, 2, SHAPE(N, D)), *dx = dev_empty(dt, 2, SHAPE(N, D));
    moe_tensor *dwg = dev_empty(dt, 3, SHAPE(E, D, F)), *dwu = dev_empty(dt, 3, SHAPE(E, D, F));
    moe_tensor *dwd = dev_empty(dt, 3, SHAPE(E, F, D)), *scr = dev_empty(dt, 1, SHAPE(3 * N * F));
    moe_cuda_ffn p = {.bf16 = bf, .act = (int)act, .E = E, .D = D, .F = F, .off = off,
                      .x = moe_tensor_data(dev[0]), .wg = dev[1] ? moe_tensor_data(dev[1]) : NULL,
                      .wu = moe_tensor_data(dev[2]), .wd = moe_tensor_data(dev[3])};
    OK(moe_cuda_ffn_forward(&p, gated ? moe_tensor_data(g) : NULL, moe_tensor_data(u), moe_tensor_data(h),
                            moe_tensor_data(yd)));
    OK(moe_cuda_ffn_backward(&p, gated ? moe_tensor_data(g) : NULL, moe_tensor_data(u), _i % 2 ? NULL : moe_tensor_data(h),
                             moe_tensor_data(Rd), moe_tensor_data(dx), gated ? moe_tensor_data(dwg) : NULL,
                             moe_tensor_data(dwu), moe_tensor_data(dwd), moe_tensor_data(scr)));
    OK(moe_cuda_synchronize());
    double tol = bf ? 3e-2 : 1e-5;
    char what[96];
    struct {
        const char *name;
        moe_tensor *gpu, *cpu;
    } cmp[5] = {{"y", yd, y}, {"dx", dx, ref[0]->grad}, {"dw_gate", gated ? dwg : NULL, gated ? ref[1]->grad : NULL},
                {"dw_up", dwu, ref[2]->grad}, {"dw_down", dwd, ref[3]->grad}};
    for (int i = 0; i < 5; i++) {
        if (!cmp[i].gpu) continue;
        double *a = host_doubles(cmp[i].gpu), *b = cpu_doubles(cmp[i].cpu);
        snprintf(what, sizeof what, "grouped mlp %s %s %s", moe_activation_name(act), moe_dtype_name(dt), cmp[i].name);
        check_close(what, a, b, moe_tensor_numel(cmp[i].cpu), tol);
        free(a), free(b);
    }
    for (int i = 0; i < 4; i++) {
        moe_tensor_release(src[i]);
        moe_tensor_release(lo[i]);
        moe_tensor_release(ref[i]);
        moe_tensor_release(dev[i]);
    }
    RELEASE(y, R, pr, obj, Rl, Rd, g, u, h, yd, dx, dwg, dwu, dwd, scr);
}
END_TEST

/* The per-group loop and the grouped cuBLAS call give the same products. */
START_TEST(test_grouped_loop_vs_grouped)
{
    const int64_t E = 3, D = 32, F = 16, sizes[3] = {10, 20, 0};
    int64_t N = 30, off[4] = {0, 10, 30, 30};
    moe_tensor *x = tu_randn(MOE_F32, 2, SHAPE(N, D), 1), *w = tu_randn(MOE_F32, 3, SHAPE(E, D, F), 2);
    moe_tensor *xd = to_dev(x), *wd = to_dev(w), *c1 = dev_empty(MOE_F32, 2, SHAPE(N, F)),
               *c2 = dev_empty(MOE_F32, 2, SHAPE(N, F));
    (void)sizes;
    moe_cuda_gmat a = {moe_tensor_data(xd), MOE_CUDA_GROUP_ROWS, D, 0, false};
    moe_cuda_gmat b = {moe_tensor_data(wd), MOE_CUDA_GROUP_SLICE, F, D * F, false};
    moe_cuda_gmat c = {moe_tensor_data(c1), MOE_CUDA_GROUP_ROWS, F, 0, false};
    moe_cuda_grouped_force_loop(false);
    OK(moe_cuda_grouped_gemm(false, E, off, a, b, c, 0, F, D, 1.0f, 0.0f));
    moe_cuda_grouped_force_loop(true);
    c.data = moe_tensor_data(c2);
    OK(moe_cuda_grouped_gemm(false, E, off, a, b, c, 0, F, D, 1.0f, 0.0f));
    moe_cuda_grouped_force_loop(false);
    double *g1 = host_doubles(c1), *g2 = host_doubles(c2);
    check_close("grouped cuBLAS call vs per-expert loop", g1, g2, N * F, 1e-6);
    free(g1), free(g2);
    RELEASE(x, w, xd, wd, c1, c2);
}
END_TEST

/* ---- the MoE layer on the device ------------------------------------------------------------ */

typedef struct layer_case {
    const char *name;
    moe_activation act;
    int64_t shared;          /* shared experts */
    double capacity_factor;  /* 0: dropless */
    bool pad;
    bool batched;            /* [B S D] input */
} layer_case;

static const layer_case layer_cases[] = {
    {"swiglu dropless", MOE_ACT_SWIGLU, 0, 0, false, false},
    {"gelu + gated shared expert", MOE_ACT_GELU, 1, 0, false, false},
    {"swiglu capacity 1.0", MOE_ACT_SWIGLU, 0, 1.0, false, false},
    {"swiglu capacity 1.0 padded", MOE_ACT_SWIGLU, 0, 1.0, true, false},
    {"gelu-tanh [B S D]", MOE_ACT_GELU_TANH, 0, 0, false, true},
};
#define N_LAYER_CASES ((int)(sizeof layer_cases / sizeof *layer_cases))

/* Forward and backward of Σ y·R through L on X (a leaf on L's device). */
static moe_tensor *layer_run(moe_layer *l, moe_tensor *x, moe_tensor *R)
{
    moe_tensor *y, *pr, *obj;
    OK(moe_layer_forward(&y, l, x, NULL));
    OK(moe_mul(&pr, y, R));
    OK(moe_sum(&obj, pr, 0, NULL, false));
    OK(moe_backward(obj, NULL, false));
    RELEASE(pr, obj);
    return y;
}

START_TEST(test_moe_layer)
{
    const layer_case *lc = &layer_cases[_i];
    const int64_t T = 37, D = 24, F = 20, E = 6, K = 2;
    moe_layer_config cfg;
    moe_layer_config_default(&cfg);
    cfg.hidden = D, cfg.ffn = F, cfg.experts = E, cfg.top_k = K;
    cfg.activation = lc->act;
    cfg.shared_experts = lc->shared;
    cfg.shared_gate = lc->shared > 0;
    cfg.seed = 21;
    if (lc->capacity_factor > 0) cfg.router.capacity_factor = lc->capacity_factor;
    cfg.router.pad_to_capacity = lc->pad;
    moe_layer *lcpu, *lgpu;
    OK(moe_layer_new(&lcpu, &cfg));
    cfg.device = MOE_CUDA;
    OK(moe_layer_new(&lgpu, &cfg));

    moe_tensor *xc = lc->batched ? tu_randn(MOE_F32, 3, SHAPE(1, T, D), 31) : tu_randn(MOE_F32, 2, SHAPE(T, D), 31);
    moe_tensor *Rc = tu_randn(MOE_F32, xc->ndim, xc->shape, 32);
    moe_tensor *xd = to_dev(xc), *Rd = to_dev(Rc);
    OK(moe_tensor_requires_grad_(xc, true));
    OK(moe_tensor_requires_grad_(xd, true));
    moe_tensor *yc = layer_run(lcpu, xc, Rc), *yd = layer_run(lgpu, xd, Rd);
    OK(moe_cuda_synchronize());
    ck_assert_int_eq(yd->device, MOE_CUDA);

    const moe_routing *rc = moe_layer_last_routing(lcpu), *rg = moe_layer_last_routing(lgpu);
    double *a = cpu_doubles(rg->experts), *b = cpu_doubles(rc->experts);
    char what[96];
    snprintf(what, sizeof what, "layer %s: expert ids", lc->name);
    check_exact(what, a, b, T * K);
    free(a), free(b);
    ck_assert_int_eq(moe_layer_last_dispatch(lgpu)->n_dropped, moe_layer_last_dispatch(lcpu)->n_dropped);

    typedef struct {
        const char *name;
        moe_tensor *gpu, *cpu;
    } pair;
    pair cmp[2 + 16];
    int n = 0;
    cmp[n++] = (pair){"y", yd, yc};
    cmp[n++] = (pair){"dx", xd->grad, xc->grad};
    for (int i = 0; i < moe_layer_parameter_count(lcpu); i++) {
        const char *name;
        moe_tensor *pc, *pg;
        OK(moe_layer_parameter(lcpu, i, &name, &pc));
        OK(moe_layer_parameter(lgpu, i, NULL, &pg));
        ck_assert_msg(pc->grad && pg->grad, "layer %s: %s has no gradient", lc->name, name);
        cmp[n++] = (pair){name, pg->grad, pc->grad};
    }
    for (int i = 0; i < n; i++) {
        a = host_doubles(cmp[i].gpu), b = cpu_doubles(cmp[i].cpu);
        snprintf(what, sizeof what, "layer %s: %s", lc->name, cmp[i].name);
        check_close(what, a, b, moe_tensor_numel(cmp[i].cpu), 1e-5);
        free(a), free(b);
    }
    RELEASE(xc, Rc, xd, Rd, yc, yd);
    moe_layer_free(lcpu);
    moe_layer_free(lgpu);
}
END_TEST

int main(void)
{
    if (moe_device_count(MOE_CUDA) == 0 || moe_cuda_init() != MOE_OK) {
        printf("check_gpu_moe: skipped: no GPU\n");
        return 77;
    }
    Suite *s = suite_create("gpu-moe");
    TCase *tc = tcase_create("router");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, test_router_vs_cpu, 0, N_ROUTER_CASES);
    tcase_add_test(tc, test_router_bf16_logits);
    tcase_add_test(tc, test_router_refs);
    suite_add_tcase(s, tc);
    TCase *td = tcase_create("dispatch");
    tcase_set_timeout(td, 600);
    tcase_add_loop_test(td, test_dispatch, 0, N_PLAN_CASES);
    tcase_add_test(td, test_round_trip);
    suite_add_tcase(s, td);
    TCase *tg = tcase_create("experts");
    tcase_set_timeout(tg, 600);
    tcase_add_loop_test(tg, test_grouped_mlp, 0, 6);
    tcase_add_test(tg, test_grouped_loop_vs_grouped);
    suite_add_tcase(s, tg);
    TCase *tl = tcase_create("layer");
    tcase_set_timeout(tl, 600);
    tcase_add_loop_test(tl, test_moe_layer, 0, N_LAYER_CASES);
    suite_add_tcase(s, tl);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK); /* one CUDA context for every test */
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#else /* no CUDA in this build */

int main(void)
{
    printf("check_gpu_moe: skipped: no GPU\n");
    return 77;
}

#endif
