/* experts.c — the fused grouped expert MLP (forward beside backward) and the
 * experts module. Loops and BLAS calls: kernels/cpu/grouped_gemm.c; on a
 * CUDA device kernels/cuda/grouped_gemm.cu (f32 compute, no biases yet).
 *
 * Dimension letters: E experts, N rows in expert order, D model dim, F
 * expert ffn dim, S scratch slots. */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cpu/grouped_gemm.h"
#include "../../kernels/cuda/grouped_gemm.h"
#include "../device.h"
#include "../names.h"
#include "experts.h"
#include "internal.h"

NAME_TABLE(moe_activation, activation, MOE_ACTIVATION_COUNT, "swiglu", "gelu", "gelu-tanh")

bool moe_activation_gated(moe_activation a) { return a == MOE_ACT_SWIGLU; }

static moe_cpu_ffn_act cpu_act(moe_activation a)
{
    return a == MOE_ACT_SWIGLU ? MOE_CPU_FFN_SWIGLU
                               : (a == MOE_ACT_GELU ? MOE_CPU_FFN_GELU : MOE_CPU_FFN_GELU_TANH);
}

/* ---- grouped MLP: saved state ------------------------------------------------------ */

enum { IN_X, IN_WG, IN_WU, IN_WD, IN_BG, IN_BU, IN_BD, IN_COUNT };

typedef struct gmlp_ctx {
    moe_activation act;
    int64_t E, D, F;
    int64_t *off;             /* [E+1] */
    moe_tensor *in[IN_COUNT]; /* compute-dtype contiguous copies (or the inputs) */
    moe_tensor *g, *u;        /* [N F] pre-activations (g NULL unless gated) */
    moe_tensor *h;            /* [N F] activations (CUDA only: its backward reads them) */
} gmlp_ctx;

static void gmlp_ctx_free(void *p)
{
    gmlp_ctx *c = p;
    if (!c) return;
    for (int i = 0; i < IN_COUNT; i++) moe_tensor_release(c->in[i]);
    moe_tensor_release(c->g);
    moe_tensor_release(c->u);
    moe_tensor_release(c->h);
    free(c->off);
    free(c);
}

static const void *data_or_null(const moe_tensor *t) { return t ? moe_tensor_data(t) : NULL; }

static void fill_ffn(moe_cpu_ffn *p, const gmlp_ctx *c, moe_dtype dt)
{
    *p = (moe_cpu_ffn){.dtype = dt, .act = cpu_act(c->act), .E = c->E, .D = c->D, .F = c->F,
                       .off = c->off, .x = data_or_null(c->in[IN_X]),
                       .wg = data_or_null(c->in[IN_WG]), .wu = data_or_null(c->in[IN_WU]),
                       .wd = data_or_null(c->in[IN_WD]), .bg = data_or_null(c->in[IN_BG]),
                       .bu = data_or_null(c->in[IN_BU]), .bd = data_or_null(c->in[IN_BD])};
}

/* The same operands for the CUDA kernels (f32, no biases). */
static void fill_cuda_ffn(moe_cuda_ffn *p, const gmlp_ctx *c)
{
    *p = (moe_cuda_ffn){.bf16 = false, .act = (int)cpu_act(c->act), .E = c->E, .D = c->D, .F = c->F,
                        .off = c->off, .x = data_or_null(c->in[IN_X]), .wg = data_or_null(c->in[IN_WG]),
                        .wu = data_or_null(c->in[IN_WU]), .wd = data_or_null(c->in[IN_WD])};
}
_Static_assert((int)MOE_CPU_FFN_SWIGLU == MOE_CUDA_FFN_SWIGLU && (int)MOE_CPU_FFN_GELU == MOE_CUDA_FFN_GELU &&
                   (int)MOE_CPU_FFN_GELU_TANH == MOE_CUDA_FFN_GELU_TANH,
               "CPU and CUDA activation codes agree");

/* ---- grouped MLP: backward -------------------------------------------------------------- */

/* Hand the gradient *G of input IN on: a leaf without hooks (a parameter)
 * gets it added to its grad right here (DESIGN: a backward accumulates into
 * parameter gradients), which spares the engine a copy of every weight
 * gradient; anything else goes through GIN. Takes over *G. */
static moe_status deliver(moe_tensor *in, moe_tensor **g, moe_tensor **gin)
{
    if (in->grad_fn || in->hooks) {
        *gin = *g;
        *g = NULL;
        return MOE_OK;
    }
    moe_tensor *fresh = *g; /* a new tensor nobody else holds */
    *g = NULL;
    return moe_grad_accumulate(in, fresh, true);
}

static moe_status gmlp_backward(moe_node *n, moe_tensor *grad, moe_tensor **gin)
{
    gmlp_ctx *c = n->ctx;
    moe_dtype dt = c->in[IN_X]->dtype;
    moe_tensor *gc = NULL, *scratch = NULL, *res[IN_COUNT] = {0};
    moe_status st = MOE_OK;
    MOE_TRYG(moe_as_compute(&gc, grad, dt));
    for (int i = 0; i < IN_COUNT; i++) {
        if (!n->inputs[i]) continue;
        moe_tensor *like = c->in[i];
        MOE_TRYG(moe_tensor_empty(&res[i], dt, like->device, like->ndim, like->shape));
    }
    void *r[IN_COUNT];
    for (int i = 0; i < IN_COUNT; i++) r[i] = res[i] ? moe_tensor_data(res[i]) : NULL;
    if (moe_on_cuda(gc)) {
        int64_t ssz = 3 * c->off[c->E] * c->F;
        MOE_TRYG(moe_tensor_empty(&scratch, dt, gc->device, 1, &ssz));
        moe_cuda_ffn p;
        fill_cuda_ffn(&p, c);
        MOE_TRYG(MOE_CUDA(moe_cuda_ffn_backward(&p, data_or_null(c->g), moe_tensor_data(c->u),
                                                data_or_null(c->h), moe_tensor_data(gc), r[IN_X], r[IN_WG],
                                                r[IN_WU], r[IN_WD], moe_tensor_data(scratch))));
        goto deliver_all;
    }
    int slots;
    int64_t max_rows;
    moe_cpu_group_mode mode = moe_cpu_group_plan(c->E, c->off, &slots, &max_rows);
    int64_t ssz = moe_cpu_ffn_scratch(cpu_act(c->act), mode, slots, max_rows, c->off[c->E], c->D,
                                       c->F, true);
    MOE_TRYG(moe_tensor_empty(&scratch, dt, MOE_CPU, 1, &ssz));
    moe_cpu_ffn p;
    fill_ffn(&p, c, dt);
    moe_cpu_ffn_backward(&p, data_or_null(c->g), moe_tensor_data(c->u), moe_tensor_data(gc), r[IN_X],
                         r[IN_WG], r[IN_WU], r[IN_WD], r[IN_BG], r[IN_BU], r[IN_BD],
                         moe_tensor_data(scratch), mode, max_rows);
deliver_all:
    moe_tensor_release(scratch);
    scratch = NULL;
    /* Gradients in each input's own dtype. */
    for (int i = 0; i < IN_COUNT; i++) {
        if (!res[i]) continue;
        if (n->inputs[i]->dtype != dt) {
            moe_tensor *cv;
            MOE_TRYG(moe_to_dtype(&cv, res[i], n->inputs[i]->dtype));
            moe_tensor_release(res[i]);
            res[i] = cv;
        }
        MOE_TRYG(deliver(n->inputs[i], &res[i], &gin[i]));
    }
done:
    for (int i = 0; i < IN_COUNT; i++) moe_tensor_release(res[i]);
    moe_tensor_release(scratch);
    moe_tensor_release(gc);
    return st;
}

/* ---- grouped MLP: forward ---------------------------------------------------------------- */

static moe_status check_w(const char *op, const char *name, const moe_tensor *w, int ndim,
                          const int64_t *shape, const moe_tensor *x)
{
    MOE_CHECK_FLOAT(op, w);
    if (w->device != x->device)
        return moe_fail(MOE_ERR_DEVICE, op, "%s is on %s but the input rows are on %s", name,
                        moe_device_name(w->device), moe_device_name(x->device));
    bool same = w->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = w->shape[i] == shape[i];
    if (!same)
        return moe_fail(MOE_ERR_SHAPE, op, "%s is %s, expected %s", name, moe_shape_str(w),
                        moe_dims_str(ndim, shape));
    return MOE_OK;
}

moe_status moe_grouped_mlp(moe_tensor **out, moe_tensor *x, moe_tensor *w_gate, moe_tensor *w_up,
                           moe_tensor *w_down, moe_tensor *b_gate, moe_tensor *b_up,
                           moe_tensor *b_down, const int64_t *group_sizes, moe_activation act)
{
    static const char *op = "moe-forward";
    *out = NULL;
    MOE_CHECK_NOT_NULL(op, x);
    MOE_CHECK_NOT_NULL(op, w_up);
    MOE_CHECK_NOT_NULL(op, w_down);
    MOE_CHECK_NOT_NULL(op, group_sizes);
    if ((unsigned)act >= MOE_ACTIVATION_COUNT)
        return moe_fail(MOE_ERR_ARG, op, "unknown activation %d", (int)act);
    MOE_CHECK_FLOAT(op, x);
    if (moe_on_cuda(x) && moe_dtype_compute(x->dtype) != MOE_F32)
        return moe_fail(MOE_ERR_DTYPE, op, "rows on cuda must be f32 or bf16, got %s", moe_dtype_name(x->dtype));
    if (moe_on_cuda(x) && (b_gate || b_up || b_down))
        return moe_fail(MOE_ERR_UNSUPPORTED, op, "expert biases are not supported on cuda yet (make the experts without bias)");
    if (x->ndim != 2) return moe_fail(MOE_ERR_SHAPE, op, "input must be [N D], got %s", moe_shape_str(x));
    if (w_up->ndim != 3)
        return moe_fail(MOE_ERR_SHAPE, op, "w_up must be [E D F], got %s", moe_shape_str(w_up));
    int64_t E = w_up->shape[0], D = w_up->shape[1], F = w_up->shape[2], N = x->shape[0];
    if (x->shape[1] != D)
        return moe_fail(MOE_ERR_SHAPE, op, "input %s does not fit w_up %s (D = %lld)", moe_shape_str(x),
                        moe_shape_str(w_up), (long long)D);
    int64_t s_edf[3] = {E, D, F}, s_efd[3] = {E, F, D}, s_ef[2] = {E, F}, s_ed[2] = {E, D};
    MOE_TRY(check_w(op, "w_up", w_up, 3, s_edf, x));
    MOE_TRY(check_w(op, "w_down", w_down, 3, s_efd, x));
    if (moe_activation_gated(act)) {
        if (!w_gate)
            return moe_fail(MOE_ERR_ARG, op, "%s experts need w_gate [E D F]", moe_activation_name(act));
        MOE_TRY(check_w(op, "w_gate", w_gate, 3, s_edf, x));
    } else if (w_gate || b_gate) {
        return moe_fail(MOE_ERR_ARG, op, "%s experts have no gate projection; pass w_gate = NULL",
                        moe_activation_name(act));
    }
    if (b_gate) MOE_TRY(check_w(op, "b_gate", b_gate, 2, s_ef, x));
    if (b_up) MOE_TRY(check_w(op, "b_up", b_up, 2, s_ef, x));
    if (b_down) MOE_TRY(check_w(op, "b_down", b_down, 2, s_ed, x));
    int64_t total = 0;
    for (int64_t e = 0; e < E; e++) {
        if (group_sizes[e] < 0)
            return moe_fail(MOE_ERR_ARG, op, "group size of expert %lld is negative (%lld)", (long long)e,
                            (long long)group_sizes[e]);
        total += group_sizes[e];
    }
    if (total != N)
        return moe_fail(MOE_ERR_SHAPE, op, "group sizes sum to %lld but the input has %lld rows (%s)",
                        (long long)total, (long long)N, moe_shape_str(x));

    if (N > INT_MAX || D > INT_MAX || F > INT_MAX)
        return moe_fail(MOE_ERR_UNSUPPORTED, op, "%lld rows of %lld -> %lld exceed what BLAS can index (int)",
                        (long long)N, (long long)D, (long long)F);
    moe_dtype dt = moe_dtype_compute(x->dtype);
    moe_tensor *ins[IN_COUNT] = {x, w_gate, w_up, w_down, b_gate, b_up, b_down};
    moe_tensor *y = NULL, *scratch = NULL;
    moe_status st = MOE_OK;
    gmlp_ctx *c = calloc(1, sizeof *c);
    if (!c) return moe_fail_nomem(op, sizeof *c, "the expert MLP's node");
    c->act = act;
    c->E = E;
    c->D = D;
    c->F = F;
    c->off = malloc(sizeof *c->off * (size_t)(E + 1));
    if (!c->off) {
        st = moe_fail_nomem(op, sizeof *c->off * (size_t)(E + 1), "the experts' row offsets");
        goto done;
    }
    c->off[0] = 0;
    for (int64_t e = 0; e < E; e++) c->off[e + 1] = c->off[e] + group_sizes[e];
    for (int i = 0; i < IN_COUNT; i++)
        if (ins[i]) MOE_TRYG(moe_as_compute(&c->in[i], ins[i], dt));

    int64_t s_nf[2] = {N, F}, s_nd[2] = {N, D};
    if (moe_activation_gated(act)) MOE_TRYG(moe_tensor_empty(&c->g, dt, x->device, 2, s_nf));
    MOE_TRYG(moe_tensor_empty(&c->u, dt, x->device, 2, s_nf));
    MOE_TRYG(moe_tensor_empty(&y, dt, x->device, 2, s_nd));
    if (moe_on_cuda(y)) {
        MOE_TRYG(moe_tensor_empty(&c->h, dt, x->device, 2, s_nf));
        moe_cuda_ffn p;
        fill_cuda_ffn(&p, c);
        MOE_TRYG(MOE_CUDA(moe_cuda_ffn_forward(&p, c->g ? moe_tensor_data(c->g) : NULL, moe_tensor_data(c->u),
                                               moe_tensor_data(c->h), moe_tensor_data(y))));
        goto to_input_dtype;
    }
    int slots;
    int64_t max_rows;
    moe_cpu_group_mode mode = moe_cpu_group_plan(E, c->off, &slots, &max_rows);
    int64_t ssz = moe_cpu_ffn_scratch(cpu_act(act), mode, slots, max_rows, N, D, F, false);
    MOE_TRYG(moe_tensor_empty(&scratch, dt, MOE_CPU, 1, &ssz));
    moe_cpu_ffn p;
    fill_ffn(&p, c, dt);
    moe_cpu_ffn_forward(&p, c->g ? moe_tensor_data(c->g) : NULL, moe_tensor_data(c->u), moe_tensor_data(y),
                        moe_tensor_data(scratch), mode, max_rows);
    moe_tensor_release(scratch);
    scratch = NULL;
to_input_dtype:
    if (x->dtype != dt) { /* bf16 rows: the output in the input's dtype */
        moe_tensor *cv;
        MOE_NO_GRAD_BEGIN;
        st = moe_to_dtype(&cv, y, x->dtype);
        MOE_NO_GRAD_END;
        if (st != MOE_OK) goto done;
        moe_tensor_release(y);
        y = cv;
    }
    /* The backward reads the ctx's tensors; saving them too gets their
     * versions checked (an expert weight changed in place before backward). */
    moe_tensor *read[IN_COUNT];
    int n_read = 0;
    for (int i = 0; i < IN_COUNT; i++)
        if (c->in[i]) read[n_read++] = c->in[i];
    st = moe_autograd_record(y, op, gmlp_backward, IN_COUNT, ins, n_read, read, c, gmlp_ctx_free);
    c = NULL; /* owned by the node now (or freed) */
    if (st != MOE_OK) goto done;
    *out = y;
    y = NULL;
done:
    gmlp_ctx_free(c);
    moe_tensor_release(scratch);
    moe_tensor_release(y);
    return st;
}

/* ---- the module ------------------------------------------------------------------------ */

/* splitmix64: one well-mixed seed per (seed, parameter, expert). */
static uint64_t mix_seed(uint64_t seed, uint64_t param, uint64_t expert)
{
    return moe_splitmix64(seed ^ (param * MOE_SPLITMIX64_GAMMA) ^ (expert * 0xd1b54a32d192ed03ull));
}

/* A [E R C] parameter whose expert slice e is N(0, 1) · SCALE drawn from
 * (SEED, PARAM, FIRST + e). */
static moe_status init_stacked(moe_tensor **out, moe_dtype dt, int64_t E, int64_t first, int64_t R,
                               int64_t C, double scale, uint64_t seed, uint64_t param)
{
    int64_t shape[3] = {E, R, C}, slice[2] = {R, C};
    MOE_TRY(moe_tensor_empty(out, dt, MOE_CPU, 3, shape));
    size_t es = moe_dtype_size(dt), n = (size_t)(R * C);
    for (int64_t e = 0; e < E; e++) {
        moe_rng rng;
        moe_rng_init(&rng, mix_seed(seed, param, (uint64_t)(first + e)));
        moe_tensor *s = NULL, *sc = NULL;
        moe_status st = moe_tensor_randn(&s, &rng, dt, MOE_CPU, 2, slice);
        if (st == MOE_OK) st = moe_mul_scalar(&sc, s, scale);
        if (st == MOE_OK) memcpy((char *)moe_tensor_data(*out) + (size_t)e * n * es, moe_tensor_data(sc), n * es);
        moe_tensor_release(s);
        moe_tensor_release(sc);
        if (st != MOE_OK) {
            moe_tensor_release(*out);
            *out = NULL;
            return st;
        }
    }
    return moe_tensor_requires_grad_(*out, true);
}

static moe_status zeros_param(moe_tensor **out, moe_dtype dt, int64_t E, int64_t C)
{
    int64_t shape[2] = {E, C};
    MOE_TRY(moe_tensor_zeros(out, dt, MOE_CPU, 2, shape));
    return moe_tensor_requires_grad_(*out, true);
}

moe_status moe_experts_new(moe_experts **out, int64_t E, int64_t first, int64_t D, int64_t F,
                           moe_activation act, bool bias, moe_dtype dtype, uint64_t seed)
{
    static const char *op = "make-moe-layer";
    *out = NULL;
    if (E < 1 || D < 1 || F < 1 || first < 0)
        return moe_fail(MOE_ERR_ARG, op, "need E, D, F >= 1 and first >= 0, got E=%lld D=%lld F=%lld first=%lld",
                        (long long)E, (long long)D, (long long)F, (long long)first);
    if (dtype != MOE_F32 && dtype != MOE_F64)
        return moe_fail(MOE_ERR_DTYPE, op, "expert parameters must be f32 or f64, got %s", moe_dtype_name(dtype));
    if ((unsigned)act >= MOE_ACTIVATION_COUNT)
        return moe_fail(MOE_ERR_ARG, op, "unknown activation %d", (int)act);
    moe_experts *ex = calloc(1, sizeof *ex);
    if (!ex) return moe_fail_nomem(op, sizeof *ex, "the experts");
    ex->activation = act;
    ex->E = E;
    ex->D = D;
    ex->F = F;
    ex->first = first;
    ex->dtype = dtype;
    moe_status st = MOE_OK;
    double sd = 1.0 / sqrt((double)D), sf = 1.0 / sqrt((double)F);
    if (moe_activation_gated(act)) MOE_TRYG(init_stacked(&ex->w_gate, dtype, E, first, D, F, sd, seed, 1));
    MOE_TRYG(init_stacked(&ex->w_up, dtype, E, first, D, F, sd, seed, 2));
    MOE_TRYG(init_stacked(&ex->w_down, dtype, E, first, F, D, sf, seed, 3));
    if (bias) {
        if (moe_activation_gated(act)) MOE_TRYG(zeros_param(&ex->b_gate, dtype, E, F));
        MOE_TRYG(zeros_param(&ex->b_up, dtype, E, F));
        MOE_TRYG(zeros_param(&ex->b_down, dtype, E, D));
    }
    *out = ex;
    return MOE_OK;
done:
    moe_experts_free(ex);
    return st;
}

void moe_experts_free(moe_experts *ex)
{
    if (!ex) return;
    moe_tensor_release(ex->w_gate);
    moe_tensor_release(ex->w_up);
    moe_tensor_release(ex->w_down);
    moe_tensor_release(ex->b_gate);
    moe_tensor_release(ex->b_up);
    moe_tensor_release(ex->b_down);
    free(ex);
}

moe_status moe_experts_forward(moe_tensor **out, moe_experts *ex, moe_tensor *x,
                               const int64_t *group_sizes)
{
    *out = NULL;
    MOE_CHECK_NOT_NULL("moe-forward", ex);
    return moe_grouped_mlp(out, x, ex->w_gate, ex->w_up, ex->w_down, ex->b_gate, ex->b_up, ex->b_down,
                           group_sizes, ex->activation);
}
