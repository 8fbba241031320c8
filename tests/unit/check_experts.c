/* check_experts.c — the fused grouped expert MLP and the experts module
 * (core/moe/experts.c, kernels/cpu/grouped_gemm.c), against a per-expert
 * reference composed from moelab's basic ops. */
#include <omp.h>
#include <string.h>

#include "../../kernels/cpu/gemm.h"
#include "../../kernels/cpu/grouped_gemm.h"
#include "moe/experts.h"
#include "testutil.h"

/* Release every tensor listed (NULLs allowed, unlike RELEASE). */
#define FREE_ALL(...)                                                                    \
    do {                                                                                 \
        moe_tensor *fa_[] = {__VA_ARGS__};                                               \
        for (size_t i_ = 0; i_ < sizeof fa_ / sizeof *fa_; i_++) moe_tensor_release(fa_[i_]); \
    } while (0)

/* ---- reference: narrow / matmul / activation per expert, then cat ------------- */

static moe_status ref_act(moe_tensor **h, moe_tensor *g, moe_tensor *u, moe_activation act)
{
    if (act == MOE_ACT_SWIGLU) {
        moe_tensor *s;
        MOE_TRY(moe_silu(&s, g));
        moe_status st = moe_mul(h, s, u);
        moe_tensor_release(s);
        return st;
    }
    return moe_gelu(h, u, act == MOE_ACT_GELU ? MOE_GELU_ERF : MOE_GELU_TANH);
}

/* x·W_e (+ b_e) */
static moe_status ref_proj(moe_tensor **out, moe_tensor *x, moe_tensor *w, moe_tensor *b, int64_t e)
{
    moe_tensor *we, *p;
    MOE_TRY(moe_select(&we, w, 0, e));
    moe_status st = moe_matmul(&p, x, we);
    moe_tensor_release(we);
    MOE_TRY(st);
    if (!b) {
        *out = p;
        return MOE_OK;
    }
    moe_tensor *be;
    st = moe_select(&be, b, 0, e);
    if (st == MOE_OK) st = moe_add(out, p, be);
    moe_tensor_release(be);
    moe_tensor_release(p);
    return st;
}

/* w[0..5] = wg wu wd bg bu bd */
static moe_status ref_mlp(moe_tensor **out, moe_tensor *x, moe_tensor **w, const int64_t *sizes,
                          moe_activation act)
{
    int64_t E = w[1]->shape[0], off = 0;
    moe_tensor *parts[64];
    int np = 0;
    moe_status st = MOE_OK;
    for (int64_t e = 0; e < E && st == MOE_OK; e++) {
        if (sizes[e] == 0) continue;
        moe_tensor *xe = NULL, *g = NULL, *u = NULL, *h = NULL;
        st = moe_narrow(&xe, x, 0, off, sizes[e]);
        if (st == MOE_OK && act == MOE_ACT_SWIGLU) st = ref_proj(&g, xe, w[0], w[3], e);
        if (st == MOE_OK) st = ref_proj(&u, xe, w[1], w[4], e);
        if (st == MOE_OK) st = ref_act(&h, g, u, act);
        if (st == MOE_OK) st = ref_proj(&parts[np++], h, w[2], w[5], e);
        FREE_ALL(xe, g, u, h);
        off += sizes[e];
    }
    if (st == MOE_OK) {
        if (np)
            st = moe_cat(out, np, parts, 0);
        else
            st = moe_tensor_zeros(out, x->dtype, MOE_CPU, 2, SHAPE(0, x->shape[1]));
    }
    for (int i = 0; i < np; i++) moe_tensor_release(parts[i]);
    return st;
}

/* ---- a random problem --------------------------------------------------------- */

typedef struct problem {
    moe_activation act;
    int64_t E, D, F, N;
    int64_t sizes[16];
    moe_tensor *x, *w[6]; /* wg wu wd bg bu bd (NULL where absent) */
} problem;

static void problem_init(problem *p, moe_dtype dt, moe_activation act, int64_t E, int64_t D, int64_t F,
                         const int64_t *sizes, bool bias, uint64_t seed)
{
    memset(p, 0, sizeof *p);
    p->act = act;
    p->E = E;
    p->D = D;
    p->F = F;
    for (int64_t e = 0; e < E; e++) {
        p->sizes[e] = sizes[e];
        p->N += sizes[e];
    }
    p->x = tu_randn(dt, 2, SHAPE(p->N, D), seed);
    int64_t edf[3] = {E, D, F}, efd[3] = {E, F, D};
    if (act == MOE_ACT_SWIGLU) p->w[0] = tu_randn(dt, 3, edf, seed + 1);
    p->w[1] = tu_randn(dt, 3, edf, seed + 2);
    p->w[2] = tu_randn(dt, 3, efd, seed + 3);
    if (bias) {
        if (act == MOE_ACT_SWIGLU) p->w[3] = tu_randn(dt, 2, SHAPE(E, F), seed + 4);
        p->w[4] = tu_randn(dt, 2, SHAPE(E, F), seed + 5);
        p->w[5] = tu_randn(dt, 2, SHAPE(E, D), seed + 6);
    }
    OK(moe_tensor_requires_grad_(p->x, true));
    for (int i = 0; i < 6; i++)
        if (p->w[i]) OK(moe_tensor_requires_grad_(p->w[i], true));
}

static void problem_free(problem *p)
{
    moe_tensor_release(p->x);
    for (int i = 0; i < 6; i++) moe_tensor_release(p->w[i]);
}

static void zero_grads(problem *p)
{
    moe_tensor_zero_grad(p->x);
    for (int i = 0; i < 6; i++)
        if (p->w[i]) moe_tensor_zero_grad(p->w[i]);
}

/* Take the gradients (references) after a backward. */
static void take_grads(problem *p, moe_tensor **g)
{
    g[0] = moe_tensor_retain(p->x->grad);
    for (int i = 0; i < 6; i++) g[1 + i] = p->w[i] ? moe_tensor_retain(p->w[i]->grad) : NULL;
}

static moe_status fused(moe_tensor **out, problem *p)
{
    return moe_grouped_mlp(out, p->x, p->w[0], p->w[1], p->w[2], p->w[3], p->w[4], p->w[5], p->sizes,
                           p->act);
}

/* Outputs and all gradients, fused vs reference, with loss = sum(y * R). */
static void compare(problem *p, double tol)
{
    moe_tensor *y, *yr, *r, *l, *prod;
    OK(fused(&y, p));
    OK(ref_mlp(&yr, p->x, p->w, p->sizes, p->act));
    ck_assert_int_eq(y->dtype, p->x->dtype);
    tu_assert_close(y, yr, tol, tol, "grouped_mlp vs reference");
    r = tu_randn(p->x->dtype, 2, SHAPE(p->N, p->D), 99);
    moe_tensor *gf[7], *gr[7];
    zero_grads(p);
    OK(moe_mul(&prod, y, r));
    OK(moe_sum(&l, prod, 0, NULL, false));
    OK(moe_backward(l, NULL, false));
    take_grads(p, gf);
    FREE_ALL(prod, l);
    zero_grads(p);
    if (p->N > 0) {
        OK(moe_mul(&prod, yr, r));
        OK(moe_sum(&l, prod, 0, NULL, false));
        OK(moe_backward(l, NULL, false));
        take_grads(p, gr);
        FREE_ALL(prod, l);
    } else { /* the reference is a constant: no graph at all */
        for (int i = 0; i < 7; i++) gr[i] = NULL;
    }
    static const char *names[7] = {"dx", "dw_gate", "dw_up", "dw_down", "db_gate", "db_up", "db_down"};
    for (int i = 0; i < 7; i++) {
        if (i == 0 && p->N == 0) continue;
        if (!gr[i] && !gf[i]) continue;
        ck_assert_msg(gf[i] != NULL, "%s missing", names[i]);
        if (!gr[i]) { /* reference never touched it (all experts empty): must be zero */
            moe_tensor *z;
            OK(moe_tensor_zeros_like(&z, gf[i]));
            tu_assert_close(gf[i], z, 0, 0, names[i]);
            moe_tensor_release(z);
        } else {
            tu_assert_close(gf[i], gr[i], tol, tol, names[i]);
        }
    }
    /* weight gradients of empty experts are exactly zero */
    for (int64_t e = 0; e < p->E; e++) {
        if (p->sizes[e]) continue;
        for (int i = 1; i < 7; i++) {
            if (!gf[i]) continue;
            moe_tensor *s, *a, *m;
            OK(moe_select(&s, gf[i], 0, e));
            OK(moe_abs(&a, s));
            OK(moe_max_all(&m, a));
            double v;
            OK(moe_tensor_item(m, &v));
            ck_assert_msg(v == 0.0, "%s of empty expert %lld is not zero", names[i], (long long)e);
            FREE_ALL(s, a, m);
        }
    }
    for (int i = 0; i < 7; i++) {
        moe_tensor_release(gf[i]);
        moe_tensor_release(gr[i]);
    }
    FREE_ALL(y, yr, r);
}

/* ---- tests --------------------------------------------------------------------- */

static const int64_t uneven[4] = {3, 0, 5, 1};

START_TEST(swiglu_f64)
{
    problem p;
    problem_init(&p, MOE_F64, MOE_ACT_SWIGLU, 4, 6, 10, uneven, false, 10);
    compare(&p, 1e-10);
    problem_free(&p);
    problem_init(&p, MOE_F64, MOE_ACT_SWIGLU, 4, 6, 10, uneven, true, 20);
    compare(&p, 1e-10);
    problem_free(&p);
}
END_TEST

START_TEST(gelu_f64)
{
    problem p;
    problem_init(&p, MOE_F64, MOE_ACT_GELU, 4, 5, 7, uneven, true, 30);
    compare(&p, 1e-10);
    problem_free(&p);
    problem_init(&p, MOE_F64, MOE_ACT_GELU_TANH, 4, 5, 7, uneven, false, 40);
    compare(&p, 1e-10);
    problem_free(&p);
}
END_TEST

START_TEST(f32_tolerance)
{
    problem p;
    problem_init(&p, MOE_F32, MOE_ACT_SWIGLU, 4, 16, 24, uneven, true, 50);
    compare(&p, 1e-4);
    problem_free(&p);
    problem_init(&p, MOE_F32, MOE_ACT_GELU, 4, 16, 24, uneven, true, 60);
    compare(&p, 1e-4);
    problem_free(&p);
}
END_TEST

START_TEST(edge_groups)
{
    problem p;
    int64_t one[3] = {0, 7, 0}, tiny[3] = {1, 0, 0}, none[2] = {0, 0};
    problem_init(&p, MOE_F64, MOE_ACT_SWIGLU, 3, 4, 5, one, true, 70); /* all rows to one expert */
    compare(&p, 1e-10);
    problem_free(&p);
    problem_init(&p, MOE_F64, MOE_ACT_SWIGLU, 3, 4, 5, tiny, false, 80); /* a single row */
    compare(&p, 1e-10);
    problem_free(&p);
    problem_init(&p, MOE_F64, MOE_ACT_GELU, 2, 4, 5, none, true, 90); /* no rows at all */
    compare(&p, 1e-10);
    problem_free(&p);
}
END_TEST

/* Only the down projection trains (a frozen x and up/gate projections): the
 * backward then skips dh and evaluates h alone for dWd and dbd. */
START_TEST(down_projection_only)
{
    for (int a = 0; a < 3; a++) {
        problem p;
        problem_init(&p, MOE_F64, (moe_activation)a, 4, 5, 6, uneven, true, 110 + a);
        OK(moe_tensor_requires_grad_(p.x, false));
        for (int i = 0; i < 6; i++)
            if (p.w[i] && i != 2 && i != 5) OK(moe_tensor_requires_grad_(p.w[i], false));
        compare(&p, 1e-10);
        /* and w_down alone */
        OK(moe_tensor_requires_grad_(p.w[5], false));
        compare(&p, 1e-10);
        problem_free(&p);
    }
}
END_TEST

/* Groups of very unequal sizes (empty ones, ones smaller than a 32-row
 * tile, one of 200 rows that a thread's share of the rows cuts) under both
 * schedules, side by side on 2 and 3 threads (the forward then cuts a
 * group between threads, and on moelab's kernel takes it in chunks; the
 * last run has each thread first take a chunk from the back of another's
 * share; the backward runs its two loops of tasks, largest first). In
 * f64 each run matches the
 * reference (values, every gradient, zeros for the empty experts); in f32
 * the side-by-side runs match the one-at-a-time run up to rounding (a cut
 * group's rows go through two BLAS calls; the BLAS thread count differs,
 * which may change rounding in some BLAS builds). */
START_TEST(schedules_agree)
{
    static const int64_t sizes[16] = {0, 14, 5, 19, 0, 200, 15, 6, 70, 11, 0, 16, 1, 33, 12, 3};
    enum { RUNS = 4 };
    moe_cpu_group_mode modes[RUNS] = {MOE_CPU_GROUP_SERIAL, MOE_CPU_GROUP_PARALLEL,
                                      MOE_CPU_GROUP_PARALLEL, MOE_CPU_GROUP_PARALLEL};
    int threads[RUNS] = {2, 2, 3, 3};
    static const char *names[7] = {"dx", "dw_gate", "dw_up", "dw_down", "db_gate", "db_up", "db_down"};
    int saved = omp_get_max_threads();
    for (int gated = 1; gated >= 0; gated--) { /* SwiGLU with biases; GELU without */
        moe_activation act = gated ? MOE_ACT_SWIGLU : MOE_ACT_GELU;
        problem p, p64;
        problem_init(&p, MOE_F32, act, 16, 32, 48, sizes, gated, 100);
        problem_init(&p64, MOE_F64, act, 16, 12, 20, sizes, gated, 200);
        moe_tensor *y[RUNS], *g[RUNS][7];
        for (int m = 0; m < RUNS; m++) {
            moe_cpu_group_set_mode(modes[m]);
            omp_set_num_threads(threads[m]);
            moe_cpu_ffn_steal_first(m == RUNS - 1);
            compare(&p64, 1e-10);
            zero_grads(&p);
            moe_tensor *l;
            OK(fused(&y[m], &p));
            OK(moe_sum(&l, y[m], 0, NULL, false));
            OK(moe_backward(l, NULL, false));
            take_grads(&p, g[m]);
            moe_tensor_release(l);
        }
        moe_cpu_group_set_mode(MOE_CPU_GROUP_AUTO);
        moe_cpu_ffn_steal_first(false);
        omp_set_num_threads(saved);
        for (int m = 1; m < RUNS; m++) {
            tu_assert_close(y[m], y[0], 1e-2, 1e-5, "y"); /* values reach ~1e3 with cancellation */
            /* On moelab's own kernel a product's rows are independent sums, so
             * the side-by-side forward, which cuts groups between threads,
             * has the bits of the serial one. */
            if (strcmp(moe_cpu_sgemm_kernel(), "blas") != 0)
                ck_assert_msg(memcmp(moe_tensor_data(y[m]), moe_tensor_data(y[0]),
                                     moe_tensor_nbytes(y[0])) == 0,
                              "forward bits differ between schedules (run %d)", m);
            for (int i = 0; i < 7; i++)
                if (g[0][i]) tu_assert_close(g[m][i], g[0][i], 1e-2, 1e-5, names[i]);
        }
        for (int m = 0; m < RUNS; m++) {
            moe_tensor_release(y[m]);
            for (int i = 0; i < 7; i++) moe_tensor_release(g[m][i]);
        }
        problem_free(&p);
        problem_free(&p64);
    }
}
END_TEST

/* The side-by-side backward on 1, 2 and 3 threads gives the same bits:
 * its products take whole groups, never a piece of one. (A 24-row piece
 * of dY Wdᵀ, as a row split on 32-row tiles of this 56-row group gives,
 * gets other bits from OpenBLAS than the whole product.) */
START_TEST(backward_bits_across_threads)
{
    int64_t off[3] = {0, 8, 64}, E = 2, N = 64, D = 32, F = 48;
    moe_tensor *x = tu_randn(MOE_F32, 2, SHAPE(N, D), 1), *g = tu_randn(MOE_F32, 2, SHAPE(N, F), 2),
               *u = tu_randn(MOE_F32, 2, SHAPE(N, F), 3), *dy = tu_randn(MOE_F32, 2, SHAPE(N, D), 4),
               *wg = tu_randn(MOE_F32, 3, SHAPE(E, D, F), 5), *wu = tu_randn(MOE_F32, 3, SHAPE(E, D, F), 6),
               *wd = tu_randn(MOE_F32, 3, SHAPE(E, F, D), 7);
    moe_cpu_ffn p = {MOE_F32, MOE_CPU_FFN_SWIGLU, E, D, F, off, moe_tensor_data(x), moe_tensor_data(wg),
                     moe_tensor_data(wu), moe_tensor_data(wd), NULL, NULL, NULL};
    int64_t ssz =
        moe_cpu_ffn_scratch(MOE_CPU_FFN_SWIGLU, MOE_CPU_GROUP_PARALLEL, 3, 56, N, D, F, true);
    moe_tensor *out[3][4], *scratch;
    OK(moe_tensor_empty(&scratch, MOE_F32, MOE_CPU, 1, &ssz));
    int saved = omp_get_max_threads();
    for (int t = 0; t < 3; t++) {
        OK(moe_tensor_empty(&out[t][0], MOE_F32, MOE_CPU, 2, SHAPE(N, D)));
        for (int i = 1; i < 3; i++) OK(moe_tensor_empty(&out[t][i], MOE_F32, MOE_CPU, 3, SHAPE(E, D, F)));
        OK(moe_tensor_empty(&out[t][3], MOE_F32, MOE_CPU, 3, SHAPE(E, F, D)));
        omp_set_num_threads(t + 1);
        moe_cpu_ffn_backward(&p, moe_tensor_data(g), moe_tensor_data(u), moe_tensor_data(dy),
                             moe_tensor_data(out[t][0]), moe_tensor_data(out[t][1]),
                             moe_tensor_data(out[t][2]), moe_tensor_data(out[t][3]), NULL, NULL, NULL,
                             moe_tensor_data(scratch), MOE_CPU_GROUP_PARALLEL, 56);
    }
    omp_set_num_threads(saved);
    static const char *names[4] = {"dx", "dw_gate", "dw_up", "dw_down"};
    for (int t = 1; t < 3; t++)
        for (int i = 0; i < 4; i++) tu_assert_close(out[t][i], out[0][i], 0, 0, names[i]);
    for (int t = 0; t < 3; t++)
        for (int i = 0; i < 4; i++) moe_tensor_release(out[t][i]);
    RELEASE(x, g, u, dy, wg, wu, wd, scratch);
}
END_TEST

START_TEST(grouped_gemm_kernel)
{
    /* C_e = A_e B_e for row blocks of A; and a weight-gradient form A_eᵀ G_e */
    int64_t off[4] = {0, 2, 2, 5}, E = 3, K = 3, N = 2;
    double A[5 * 3], B[3 * 3 * 2], C[5 * 2], W[3 * 3 * 2];
    for (int i = 0; i < 15; i++) A[i] = i + 1;
    for (int i = 0; i < 18; i++) B[i] = (i % 5) - 2;
    for (int i = 0; i < 18; i++) W[i] = -7;
    moe_cpu_gmat a = {A, MOE_CPU_GROUP_ROWS, K, 0, false}, b = {B, MOE_CPU_GROUP_SLICE, N, K * N, false},
                 c = {C, MOE_CPU_GROUP_ROWS, N, 0, false};
    moe_cpu_grouped_gemm(MOE_F64, E, off, a, b, c, 0, N, K, 1, 0);
    for (int64_t e = 0; e < E; e++)
        for (int64_t r = off[e]; r < off[e + 1]; r++)
            for (int j = 0; j < N; j++) {
                double s = 0;
                for (int k = 0; k < K; k++) s += A[r * K + k] * B[e * K * N + k * N + j];
                ck_assert_msg(fabs(C[r * N + j] - s) < 1e-12, "C[%lld %d]", (long long)r, j);
            }
    /* W_e [K N] = A_eᵀ C_e; the empty group keeps its old contents */
    moe_cpu_gmat at = {A, MOE_CPU_GROUP_ROWS, K, 0, true}, cg = {C, MOE_CPU_GROUP_ROWS, N, 0, false},
                 w = {W, MOE_CPU_GROUP_SLICE, N, K * N, false};
    moe_cpu_grouped_gemm(MOE_F64, E, off, at, cg, w, K, N, 0, 1, 0);
    for (int64_t e = 0; e < E; e++)
        for (int k = 0; k < K; k++)
            for (int j = 0; j < N; j++) {
                double s = 0;
                for (int64_t r = off[e]; r < off[e + 1]; r++) s += A[r * K + k] * C[r * N + j];
                double expect = off[e + 1] > off[e] ? s : -7;
                ck_assert_msg(fabs(W[e * K * N + k * N + j] - expect) < 1e-9, "W[%lld %d %d]",
                              (long long)e, k, j);
            }
    ck_assert(moe_cpu_ffn_flops(MOE_CPU_FFN_SWIGLU, 10, 4, 8, false) == 3 * 2.0 * 10 * 4 * 8);
    ck_assert(moe_cpu_ffn_flops(MOE_CPU_FFN_GELU, 10, 4, 8, true) == 4 * 2.0 * 10 * 4 * 8);
}
END_TEST


/* Parameter gradients accumulate over backwards; a hooked parameter still
 * sees its gradient through the hook. */
static moe_status count_hook(moe_tensor **grad, void *ctx)
{
    (*(int *)ctx)++;
    return MOE_OK;
}

START_TEST(accumulation_and_hooks)
{
    int64_t sizes[3] = {2, 0, 3};
    problem p;
    problem_init(&p, MOE_F64, MOE_ACT_SWIGLU, 3, 4, 5, sizes, true, 110);
    int calls = 0;
    OK(moe_tensor_register_hook(p.w[1], count_hook, &calls, NULL, NULL));
    moe_tensor *g1[7], *g2[7];
    for (int round = 0; round < 2; round++) {
        moe_tensor *y, *l;
        OK(fused(&y, &p));
        OK(moe_sum(&l, y, 0, NULL, false));
        OK(moe_backward(l, NULL, false));
        FREE_ALL(y, l);
        if (round == 0) { /* copies: the accumulation must not write into them */
            for (int i = 0; i < 7; i++) {
                moe_tensor *g = i == 0 ? p.x->grad : (p.w[i - 1] ? p.w[i - 1]->grad : NULL);
                g1[i] = NULL;
                if (g) OK(moe_clone(&g1[i], g));
            }
        }
    }
    take_grads(&p, g2);
    ck_assert_int_eq(calls, 2);
    for (int i = 0; i < 7; i++) {
        if (!g1[i]) continue;
        moe_tensor *twice;
        OK(moe_mul_scalar(&twice, g1[i], 2));
        tu_assert_close(g2[i], twice, 1e-12, 1e-12, "gradient after two backwards");
        FREE_ALL(twice, g1[i]);
    }
    for (int i = 0; i < 7; i++) moe_tensor_release(g2[i]);
    problem_free(&p);
}
END_TEST

/* ---- gradcheck -------------------------------------------------------------------- */

typedef struct gc_ctx {
    int64_t sizes[4];
    moe_activation act;
} gc_ctx;

static moe_status fn_mlp(moe_tensor **out, moe_tensor **in, void *vctx)
{
    gc_ctx *c = vctx;
    bool gated = c->act == MOE_ACT_SWIGLU;
    return moe_grouped_mlp(out, in[0], gated ? in[1] : NULL, in[2], in[3], gated ? in[4] : NULL,
                           in[5], in[6], c->sizes, c->act);
}

START_TEST(gradcheck_mlp)
{
    for (int a = 0; a < 3; a++) {
        gc_ctx c = {{2, 0, 3, 1}, (moe_activation)a};
        int64_t E = 4, D = 3, F = 4, N = 6;
        moe_tensor *in[7] = {tu_randn(MOE_F64, 2, SHAPE(N, D), 1), tu_randn(MOE_F64, 3, SHAPE(E, D, F), 2),
                             tu_randn(MOE_F64, 3, SHAPE(E, D, F), 3), tu_randn(MOE_F64, 3, SHAPE(E, F, D), 4),
                             tu_randn(MOE_F64, 2, SHAPE(E, F), 5), tu_randn(MOE_F64, 2, SHAPE(E, F), 6),
                             tu_randn(MOE_F64, 2, SHAPE(E, D), 7)};
        for (int i = 0; i < 7; i++) OK(moe_tensor_requires_grad_(in[i], true));
        if (c.act != MOE_ACT_SWIGLU) { /* no gate: those inputs are unused */
            OK(moe_tensor_requires_grad_(in[1], false));
            OK(moe_tensor_requires_grad_(in[4], false));
        }
        GRADCHECK(fn_mlp, 7, in, &c);
        for (int i = 0; i < 7; i++) moe_tensor_release(in[i]);
    }
}
END_TEST

/* ---- dtypes, layouts, errors --------------------------------------------------------- */

START_TEST(mixed_dtypes_and_layouts)
{
    /* bf16 rows with f32 weights; a transposed (non-contiguous) f64 input */
    int64_t sizes[2] = {2, 1};
    moe_tensor *wg = tu_randn(MOE_F32, 3, SHAPE(2, 4, 3), 1), *wu = tu_randn(MOE_F32, 3, SHAPE(2, 4, 3), 2);
    moe_tensor *wd = tu_randn(MOE_F32, 3, SHAPE(2, 3, 4), 3), *x32 = tu_randn(MOE_F32, 2, SHAPE(3, 4), 4);
    moe_tensor *xb, *yb, *y32, *yb32;
    OK(moe_to_dtype(&xb, x32, MOE_BF16));
    OK(moe_tensor_requires_grad_(wg, true));
    OK(moe_grouped_mlp(&yb, xb, wg, wu, wd, NULL, NULL, NULL, sizes, MOE_ACT_SWIGLU));
    ck_assert_int_eq(yb->dtype, MOE_BF16);
    ck_assert(yb->requires_grad);
    moe_tensor *xb32;
    OK(moe_to_dtype(&xb32, xb, MOE_F32));
    OK(moe_grouped_mlp(&y32, xb32, wg, wu, wd, NULL, NULL, NULL, sizes, MOE_ACT_SWIGLU));
    OK(moe_to_dtype(&yb32, yb, MOE_F32));
    tu_assert_close(yb32, y32, 0.05, 0.02, "bf16 vs f32");
    moe_tensor *l;
    OK(moe_sum(&l, yb, 0, NULL, false));
    OK(moe_backward(l, NULL, false));
    ck_assert_int_eq(wg->grad->dtype, MOE_F32);
    FREE_ALL(l, xb, yb, y32, yb32, xb32);

    moe_tensor *x64 = tu_randn(MOE_F64, 2, SHAPE(4, 3), 5), *xt, *xc, *y1, *y2;
    OK(moe_transpose(&xt, x64, 0, 1)); /* [3 4], non-contiguous */
    OK(moe_contiguous(&xc, xt));
    OK(moe_grouped_mlp(&y1, xt, wg, wu, wd, NULL, NULL, NULL, sizes, MOE_ACT_SWIGLU));
    OK(moe_grouped_mlp(&y2, xc, wg, wu, wd, NULL, NULL, NULL, sizes, MOE_ACT_SWIGLU));
    ck_assert_int_eq(y1->dtype, MOE_F64);
    tu_assert_close(y1, y2, 0, 0, "transposed input");
    FREE_ALL(x64, xt, xc, y1, y2, wg, wu, wd, x32);
}
END_TEST

START_TEST(errors)
{
    int64_t sizes[2] = {2, 1}, bad_sizes[2] = {2, 2}, neg[2] = {4, -1};
    moe_tensor *x = tu_randn(MOE_F64, 2, SHAPE(3, 4), 1), *wg = tu_randn(MOE_F64, 3, SHAPE(2, 4, 5), 2);
    moe_tensor *wu = tu_randn(MOE_F64, 3, SHAPE(2, 4, 5), 3), *wd = tu_randn(MOE_F64, 3, SHAPE(2, 5, 4), 4);
    moe_tensor *wbad = tu_randn(MOE_F64, 3, SHAPE(2, 4, 4), 5), *b = tu_randn(MOE_F64, 2, SHAPE(2, 4), 6);
    moe_tensor *xi = T(MOE_I64, 2, SHAPE(3, 4), 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12);
    moe_tensor *x5 = tu_randn(MOE_F64, 2, SHAPE(3, 5), 7), *y = NULL;
    FAILS(moe_grouped_mlp(&y, x, NULL, wu, wd, NULL, NULL, NULL, sizes, MOE_ACT_SWIGLU), MOE_ERR_ARG,
          "swiglu experts need w_gate");
    ck_assert_ptr_null(y);
    FAILS(moe_grouped_mlp(&y, x, wg, wu, wd, NULL, NULL, NULL, sizes, MOE_ACT_GELU), MOE_ERR_ARG,
          "no gate projection");
    FAILS(moe_grouped_mlp(&y, x, wg, wu, wbad, NULL, NULL, NULL, sizes, MOE_ACT_SWIGLU), MOE_ERR_SHAPE,
          "w_down is [2 4 4], expected [2 5 4]");
    FAILS(moe_grouped_mlp(&y, x, wg, wu, wd, NULL, b, NULL, sizes, MOE_ACT_SWIGLU), MOE_ERR_SHAPE,
          "b_up is [2 4], expected [2 5]");
    FAILS(moe_grouped_mlp(&y, x, wg, wu, wd, NULL, NULL, NULL, bad_sizes, MOE_ACT_SWIGLU), MOE_ERR_SHAPE,
          "group sizes sum to 4 but the input has 3 rows");
    FAILS(moe_grouped_mlp(&y, x, wg, wu, wd, NULL, NULL, NULL, neg, MOE_ACT_SWIGLU), MOE_ERR_ARG,
          "negative");
    FAILS(moe_grouped_mlp(&y, xi, wg, wu, wd, NULL, NULL, NULL, sizes, MOE_ACT_SWIGLU), MOE_ERR_DTYPE,
          "floating");
    FAILS(moe_grouped_mlp(&y, x5, wg, wu, wd, NULL, NULL, NULL, sizes, MOE_ACT_SWIGLU), MOE_ERR_SHAPE,
          "does not fit w_up");
    FAILS(moe_grouped_mlp(&y, x, wg, wu, wd, NULL, NULL, NULL, sizes, (moe_activation)7), MOE_ERR_ARG,
          "unknown activation");
    FREE_ALL(x, wg, wu, wd, wbad, b, xi, x5);
}
END_TEST

START_TEST(module)
{
    moe_experts *ex, *shard;
    OK(moe_experts_new(&ex, 4, 0, 8, 16, MOE_ACT_SWIGLU, true, MOE_F64, 42));
    ASSERT_SHAPE(ex->w_gate, 3, 4, 8, 16);
    ASSERT_SHAPE(ex->w_down, 3, 4, 16, 8);
    ASSERT_SHAPE(ex->b_down, 2, 4, 8);
    ck_assert(ex->w_up->requires_grad);
    /* experts 2..3 as a shard equal the same experts of the full set */
    OK(moe_experts_new(&shard, 2, 2, 8, 16, MOE_ACT_SWIGLU, true, MOE_F64, 42));
    moe_tensor *a;
    OK(moe_narrow(&a, ex->w_down, 0, 2, 2));
    tu_assert_close(shard->w_down, a, 0, 0, "shard");
    /* scale: std of w_up about 1/sqrt(D) */
    moe_tensor *v;
    OK(moe_var(&v, ex->w_up, 0, NULL, 0, false));
    double var;
    OK(moe_tensor_item(v, &var));
    ck_assert_msg(fabs(var - 1.0 / 8) < 0.02, "var %g", var);
    int64_t sizes[4] = {1, 2, 0, 1};
    moe_tensor *x = tu_randn(MOE_F64, 2, SHAPE(4, 8), 3), *y;
    OK(moe_experts_forward(&y, ex, x, sizes));
    ASSERT_SHAPE(y, 2, 4, 8);
    FREE_ALL(a, v, x, y);
    moe_experts *gelu;
    OK(moe_experts_new(&gelu, 2, 0, 4, 4, MOE_ACT_GELU, false, MOE_F32, 1));
    ck_assert_ptr_null(gelu->w_gate);
    ck_assert_ptr_null(gelu->b_up);
    moe_experts_free(gelu);
    moe_experts_free(ex);
    moe_experts_free(shard);
    FAILS(moe_experts_new(&ex, 0, 0, 4, 4, MOE_ACT_GELU, false, MOE_F32, 1), MOE_ERR_ARG, "E, D, F >= 1");
    FAILS(moe_experts_new(&ex, 2, 0, 4, 4, MOE_ACT_GELU, false, MOE_I64, 1), MOE_ERR_DTYPE, "f32 or f64");
    moe_activation act;
    ck_assert(moe_activation_parse("gelu-tanh", &act) && act == MOE_ACT_GELU_TANH);
    ck_assert(!moe_activation_parse("relu2", &act));
    ck_assert_str_eq(moe_activation_name(MOE_ACT_SWIGLU), "swiglu");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("experts");
    TCase *tc = tcase_create("reference");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, swiglu_f64);
    tcase_add_test(tc, gelu_f64);
    tcase_add_test(tc, f32_tolerance);
    tcase_add_test(tc, edge_groups);
    tcase_add_test(tc, down_projection_only);
    tcase_add_test(tc, schedules_agree);
    tcase_add_test(tc, backward_bits_across_threads);
    tcase_add_test(tc, grouped_gemm_kernel);
    tcase_add_test(tc, accumulation_and_hooks);
    suite_add_tcase(s, tc);
    tc = tcase_create("gradcheck");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, gradcheck_mlp);
    suite_add_tcase(s, tc);
    tc = tcase_create("api");
    tcase_add_test(tc, mixed_dtypes_and_layouts);
    tcase_add_test(tc, errors);
    tcase_add_test(tc, module);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
