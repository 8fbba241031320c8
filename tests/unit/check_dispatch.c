/* check_dispatch.c — dispatch plans, permute and combine (core/moe/dispatch.c). */
#include <omp.h>
#include <string.h>

#include "moe/dispatch.h"
#include "testutil.h"

/* Release every tensor listed (NULLs allowed, unlike RELEASE). */
#define FREE_ALL(...)                                                                    \
    do {                                                                                 \
        moe_tensor *fa_[] = {__VA_ARGS__};                                               \
        for (size_t i_ = 0; i_ < sizeof fa_ / sizeof *fa_; i_++) moe_tensor_release(fa_[i_]); \
    } while (0)

static void assert_i64(const int64_t *got, int n, const int64_t *expect, const char *what)
{
    for (int i = 0; i < n; i++)
        ck_assert_msg(got[i] == expect[i], "%s[%d] = %lld, expected %lld", what, i, (long long)got[i],
                      (long long)expect[i]);
}
#define ASSERT_I64(got, ...)                                                              \
    assert_i64((got), (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)),           \
               (int64_t[]){__VA_ARGS__}, #got)

/* ids [[1 0] [0 2] [1 2]]: T=3, K=2, E=4 (expert 3 empty). */
static moe_tensor *ids3(void) { return T(MOE_I64, 2, SHAPE(3, 2), 1, 0, 0, 2, 1, 2); }

START_TEST(plan_dropless)
{
    moe_tensor *ids = ids3();
    moe_dispatch *d;
    OK(moe_dispatch_plan(&d, ids, NULL, 4, 0, false));
    ck_assert_int_eq(d->rows, 6);
    ck_assert_int_eq(d->n_kept, 6);
    ck_assert_int_eq(d->n_dropped, 0);
    ASSERT_I64(d->counts, 2, 2, 2, 0);
    ASSERT_I64(d->routed, 2, 2, 2, 0);
    ASSERT_I64(d->offsets, 0, 2, 4, 6, 6);
    /* expert 0: slots 1 (t0), 2 (t1); expert 1: 0 (t0), 4 (t2); expert 2: 3 (t1), 5 (t2) */
    ASSERT_I64(d->row_token, 0, 1, 0, 2, 1, 2);
    ASSERT_I64(d->row_slot, 1, 2, 0, 4, 3, 5);
    ASSERT_I64(d->slot_row, 2, 0, 1, 4, 3, 5);
    ck_assert(moe_dispatch_dropped_fraction(d) == 0.0);
    moe_tensor *c, *g, *r, *k;
    OK(moe_dispatch_counts(&c, d));
    ASSERT_VALUES(c, 0, 2, 2, 2, 0);
    OK(moe_dispatch_group_sizes(&g, d));
    ASSERT_VALUES(g, 0, 2, 2, 2, 0);
    OK(moe_dispatch_routed(&r, d));
    ASSERT_VALUES(r, 0, 2, 2, 2, 0);
    OK(moe_dispatch_kept(&k, d));
    ck_assert_int_eq(k->dtype, MOE_BOOL);
    ASSERT_VALUES(k, 0, 1, 1, 1, 1, 1, 1);
    FREE_ALL(c, g, r, k, ids);
    moe_dispatch_release(d);
}
END_TEST

START_TEST(plan_keep_and_capacity)
{
    moe_tensor *ids = ids3();
    moe_tensor *keep = T(MOE_BOOL, 2, SHAPE(3, 2), 1, 1, 0, 1, 1, 1); /* drop slot (1,0) */
    moe_dispatch *d;
    OK(moe_dispatch_plan(&d, ids, keep, 4, 0, false));
    ck_assert_int_eq(d->rows, 5);
    ck_assert_int_eq(d->n_dropped, 1);
    ASSERT_I64(d->counts, 1, 2, 2, 0);
    ASSERT_I64(d->routed, 2, 2, 2, 0);
    ASSERT_I64(d->slot_row, 1, 0, -1, 3, 2, 4);
    moe_dispatch_release(d);

    /* capacity 1, no mask: each expert keeps its earliest slot */
    OK(moe_dispatch_plan(&d, ids, NULL, 4, 1, false));
    ck_assert_int_eq(d->capacity, 1);
    ck_assert_int_eq(d->rows, 3);
    ck_assert_int_eq(d->n_dropped, 3);
    ck_assert(fabs(moe_dispatch_dropped_fraction(d) - 0.5) < 1e-15);
    ASSERT_I64(d->counts, 1, 1, 1, 0);
    ASSERT_I64(d->slot_row, 1, 0, -1, 2, -1, -1);
    ASSERT_I64(d->row_token, 0, 0, 1);
    moe_dispatch_release(d);

    /* capacity 2 padded: blocks of 2 rows; expert 3 all padding */
    OK(moe_dispatch_plan(&d, ids, keep, 4, 2, true));
    ck_assert(d->padded);
    ck_assert_int_eq(d->rows, 8);
    ASSERT_I64(d->offsets, 0, 2, 4, 6, 8);
    ASSERT_I64(d->counts, 1, 2, 2, 0);
    ASSERT_I64(d->row_token, 0, -1, 0, 2, 1, 2, -1, -1);
    ASSERT_I64(d->row_slot, 1, -1, 0, 4, 3, 5, -1, -1);
    moe_tensor *g;
    OK(moe_dispatch_group_sizes(&g, d));
    ASSERT_VALUES(g, 0, 2, 2, 2, 2);
    moe_tensor_release(g);
    moe_dispatch_release(d);

    /* an absurd capacity is clamped to T*K */
    OK(moe_dispatch_plan(&d, ids, NULL, 4, 1000000000, true));
    ck_assert_int_eq(d->capacity, 6);
    ck_assert_int_eq(d->rows, 24);
    ck_assert_int_eq(d->n_dropped, 0);
    moe_dispatch_release(d);
    FREE_ALL(ids, keep);
}
END_TEST

START_TEST(plan_edge_cases)
{
    /* all tokens to one expert, i32 ids */
    moe_tensor *ids = T(MOE_I32, 2, SHAPE(4, 1), 2, 2, 2, 2);
    moe_dispatch *d;
    OK(moe_dispatch_plan(&d, ids, NULL, 3, 0, false));
    ASSERT_I64(d->offsets, 0, 0, 0, 4);
    ASSERT_I64(d->row_token, 0, 1, 2, 3);
    moe_dispatch_release(d);
    moe_tensor_release(ids);
    /* T = 1, K = 3 */
    ids = T(MOE_I64, 2, SHAPE(1, 3), 2, 0, 1);
    OK(moe_dispatch_plan(&d, ids, NULL, 3, 0, false));
    ASSERT_I64(d->slot_row, 2, 0, 1);
    moe_dispatch_release(d);
    moe_tensor_release(ids);
    /* T = 0 */
    OK(moe_tensor_empty(&ids, MOE_I64, MOE_CPU, 2, SHAPE(0, 2)));
    OK(moe_dispatch_plan(&d, ids, NULL, 3, 0, false));
    ck_assert_int_eq(d->rows, 0);
    moe_tensor *x, *xp, *w, *y;
    OK(moe_tensor_zeros(&x, MOE_F64, MOE_CPU, 2, SHAPE(0, 4)));
    OK(moe_dispatch_permute(&xp, x, d));
    ASSERT_SHAPE(xp, 2, 0, 4);
    OK(moe_tensor_zeros(&w, MOE_F64, MOE_CPU, 2, SHAPE(0, 2)));
    OK(moe_dispatch_combine(&y, xp, w, d));
    ASSERT_SHAPE(y, 2, 0, 4);
    moe_dispatch_release(d);
    FREE_ALL(ids, x, xp, w, y);
    /* non-contiguous ids (a transposed view) */
    moe_tensor *base = T(MOE_I64, 2, SHAPE(2, 3), 1, 0, 1, 0, 2, 2), *idt;
    OK(moe_transpose(&idt, base, 0, 1)); /* [[1 0] [0 2] [1 2]] */
    OK(moe_dispatch_plan(&d, idt, NULL, 4, 0, false));
    ASSERT_I64(d->slot_row, 2, 0, 1, 4, 3, 5);
    moe_dispatch_release(d);
    FREE_ALL(base, idt);
}
END_TEST

START_TEST(plan_errors)
{
    moe_dispatch *d = (moe_dispatch *)1;
    moe_tensor *ids = ids3(), *bad = T(MOE_I64, 2, SHAPE(1, 2), 0, 4);
    moe_tensor *f = T(MOE_F64, 2, SHAPE(1, 2), 0, 1), *v = T(MOE_I64, 1, SHAPE(2), 0, 1);
    moe_tensor *keep_f = T(MOE_F32, 2, SHAPE(3, 2), 1, 1, 1, 1, 1, 1);
    moe_tensor *keep_s = T(MOE_BOOL, 2, SHAPE(2, 2), 1, 1, 1, 1);
    FAILS(moe_dispatch_plan(&d, bad, NULL, 4, 0, false), MOE_ERR_INDEX, "moe-forward: expert id 4 at [0 1]");
    ck_assert_ptr_null(d);
    FAILS(moe_dispatch_plan(&d, f, NULL, 4, 0, false), MOE_ERR_DTYPE, "i64 or i32");
    FAILS(moe_dispatch_plan(&d, v, NULL, 4, 0, false), MOE_ERR_SHAPE, "[T K]");
    FAILS(moe_dispatch_plan(&d, ids, NULL, 0, 0, false), MOE_ERR_ARG, "experts must be >= 1");
    FAILS(moe_dispatch_plan(&d, ids, NULL, 4, -1, false), MOE_ERR_ARG, "capacity");
    FAILS(moe_dispatch_plan(&d, ids, NULL, 4, 0, true), MOE_ERR_ARG, "padding to capacity");
    FAILS(moe_dispatch_plan(&d, ids, keep_f, 4, 0, false), MOE_ERR_DTYPE, "bool");
    FAILS(moe_dispatch_plan(&d, ids, keep_s, 4, 0, false), MOE_ERR_SHAPE, "keep mask [2 2]");

    OK(moe_dispatch_plan(&d, ids, NULL, 4, 0, false));
    moe_tensor *x = T(MOE_F64, 2, SHAPE(2, 2), 1, 2, 3, 4), *xi = T(MOE_I64, 2, SHAPE(3, 1), 1, 2, 3);
    moe_tensor *y = NULL, *w = T(MOE_F64, 2, SHAPE(3, 1), 1, 1, 1), *y6 = tu_randn(MOE_F64, 2, SHAPE(6, 2), 1);
    FAILS(moe_dispatch_permute(&y, x, d), MOE_ERR_SHAPE, "must be [3 D]");
    ck_assert_ptr_null(y);
    FAILS(moe_dispatch_permute(&y, xi, d), MOE_ERR_DTYPE, "floating");
    FAILS(moe_dispatch_combine(&y, x, NULL, d), MOE_ERR_SHAPE, "must be [6 D]");
    FAILS(moe_dispatch_combine(&y, y6, w, d), MOE_ERR_SHAPE, "weights [3 1]");
    moe_dispatch_release(d);
    FREE_ALL(ids, bad, f, v, keep_f, keep_s, x, xi, w, y6);
}
END_TEST

START_TEST(permute_combine_values)
{
    moe_tensor *ids = ids3();
    moe_dispatch *d;
    OK(moe_dispatch_plan(&d, ids, NULL, 4, 0, false));
    for (int dt = 0; dt < 3; dt++) {
        moe_dtype dtype = dt == 0 ? MOE_F64 : (dt == 1 ? MOE_F32 : MOE_BF16);
        moe_tensor *x = T(dtype, 2, SHAPE(3, 2), 1, 2, 3, 4, 5, 6), *xp, *out, *out1;
        OK(moe_dispatch_permute(&xp, x, d));
        ck_assert_int_eq(xp->dtype, dtype);
        ASSERT_VALUES(xp, 0, 1, 2, 3, 4, 1, 2, 5, 6, 3, 4, 5, 6);
        /* combine the permuted rows back: weights [[.5 .25] [2 1] [1 -1]] */
        moe_tensor *w = T(MOE_F32, 2, SHAPE(3, 2), 0.5, 0.25, 2, 1, 1, -1);
        OK(moe_dispatch_combine(&out, xp, w, d));
        ck_assert_int_eq(out->dtype, dtype);
        ASSERT_VALUES(out, 0, 0.75, 1.5, 9, 12, 0, 0);
        OK(moe_dispatch_combine(&out1, xp, NULL, d)); /* plain un-permute: K x */
        ASSERT_VALUES(out1, 0, 2, 4, 6, 8, 10, 12);
        FREE_ALL(x, xp, w, out, out1);
    }
    moe_dispatch_release(d);
    /* capacity 1 padded to 2 rows: dropped slots contribute zero */
    OK(moe_dispatch_plan(&d, ids, NULL, 4, 1, true));
    moe_tensor *x = T(MOE_F64, 2, SHAPE(3, 2), 1, 2, 3, 4, 5, 6), *xp, *out;
    OK(moe_dispatch_permute(&xp, x, d));
    ASSERT_VALUES(xp, 0, 1, 2, 1, 2, 3, 4, 0, 0);
    moe_tensor *w = T(MOE_F64, 2, SHAPE(3, 2), 0.5, 0.25, 2, 1, 1, -1);
    OK(moe_dispatch_combine(&out, xp, w, d));
    ASSERT_VALUES(out, 1e-15, 0.75, 1.5, 3, 4, 0, 0);
    moe_dispatch_release(d);
    FREE_ALL(x, xp, w, out, ids);
}
END_TEST

START_TEST(noncontiguous_inputs)
{
    moe_tensor *ids = ids3();
    moe_dispatch *d;
    OK(moe_dispatch_plan(&d, ids, NULL, 4, 0, false));
    moe_tensor *xt = T(MOE_F64, 2, SHAPE(2, 3), 1, 3, 5, 2, 4, 6), *x, *xp;
    OK(moe_transpose(&x, xt, 0, 1)); /* [[1 2] [3 4] [5 6]] */
    OK(moe_dispatch_permute(&xp, x, d));
    ASSERT_VALUES(xp, 0, 1, 2, 3, 4, 1, 2, 5, 6, 3, 4, 5, 6);
    moe_tensor *wt = T(MOE_F64, 2, SHAPE(2, 3), 0.5, 2, 1, 0.25, 1, -1), *w, *out;
    OK(moe_transpose(&w, wt, 0, 1));
    OK(moe_dispatch_combine(&out, xp, w, d));
    ASSERT_VALUES(out, 0, 0.75, 1.5, 9, 12, 0, 0);
    moe_dispatch_release(d);
    FREE_ALL(ids, xt, x, xp, wt, w, out);
}
END_TEST

/* Rows wider than the vector lanes (with a tail) and more tokens than one
 * block of the row loops, some slots dropped and some rows padding: permute,
 * combine and their backwards against loops in double over the plan. */
START_TEST(wide_rows)
{
    const int64_t Tn = 70, K = 2, E = 4, D = 37, S = Tn * K;
    int64_t idv[140];
    double keepv[140];
    for (int64_t s = 0; s < S; s++) idv[s] = (s * 7 + s / 3) % E, keepv[s] = s % 9 != 4;
    moe_tensor *ids, *keep;
    OK(moe_tensor_from_data(&ids, MOE_I64, MOE_CPU, 2, SHAPE(Tn, K), idv));
    OK(moe_tensor_empty(&keep, MOE_BOOL, MOE_CPU, 2, SHAPE(Tn, K)));
    for (int64_t s = 0; s < S; s++) ((uint8_t *)moe_tensor_data(keep))[s] = (uint8_t)keepv[s];
    moe_dispatch *d;
    OK(moe_dispatch_plan(&d, ids, keep, E, 36, true)); /* some experts overflow, others pad */
    ck_assert(d->n_dropped > 14);
    int64_t N = d->rows;
    for (int k = 0; k < 2; k++) {
        moe_dtype dt = k ? MOE_F32 : MOE_F64;
        double tol = k ? 1e-5 : 1e-12;
        moe_tensor *x = tu_randn(dt, 2, SHAPE(Tn, D), 51), *y = tu_randn(dt, 2, SHAPE(N, D), 52);
        moe_tensor *w = tu_randn(dt, 2, SHAPE(Tn, K), 53), *g = tu_randn(dt, 2, SHAPE(Tn, D), 54);
        moe_tensor *gp = tu_randn(dt, 2, SHAPE(N, D), 55), *xp, *out;
        OK(moe_tensor_requires_grad_(x, true));
        OK(moe_tensor_requires_grad_(y, true));
        OK(moe_tensor_requires_grad_(w, true));
        OK(moe_dispatch_permute(&xp, x, d));
        OK(moe_dispatch_combine(&out, y, w, d));
        OK(moe_backward(xp, gp, false));
        OK(moe_backward(out, g, false));
        double *xv = malloc(sizeof(double) * (size_t)(Tn * D)), *yv = malloc(sizeof(double) * (size_t)(N * D));
        double *wv = malloc(sizeof(double) * (size_t)S), *gv = malloc(sizeof(double) * (size_t)(Tn * D));
        double *gpv = malloc(sizeof(double) * (size_t)(N * D));
        double *e_xp = calloc((size_t)(N * D), sizeof(double)), *e_out = calloc((size_t)(Tn * D), sizeof(double));
        double *e_dx = calloc((size_t)(Tn * D), sizeof(double)), *e_dy = calloc((size_t)(N * D), sizeof(double));
        double *e_dw = calloc((size_t)S, sizeof(double));
        OK(moe_tensor_to_doubles(x, xv));
        OK(moe_tensor_to_doubles(y, yv));
        OK(moe_tensor_to_doubles(w, wv));
        OK(moe_tensor_to_doubles(g, gv));
        OK(moe_tensor_to_doubles(gp, gpv));
        for (int64_t s = 0; s < S; s++) {
            int64_t r = d->slot_row[s], t = s / K;
            if (r < 0) continue;
            for (int64_t j = 0; j < D; j++) {
                e_xp[r * D + j] = xv[t * D + j];
                e_dx[t * D + j] += gpv[r * D + j];
                e_out[t * D + j] += wv[s] * yv[r * D + j];
                e_dy[r * D + j] = wv[s] * gv[t * D + j];
                e_dw[s] += gv[t * D + j] * yv[r * D + j];
            }
        }
        moe_tensor *ref[5];
        OK(moe_tensor_from_data(&ref[0], MOE_F64, MOE_CPU, 2, SHAPE(N, D), e_xp));
        OK(moe_tensor_from_data(&ref[1], MOE_F64, MOE_CPU, 2, SHAPE(Tn, D), e_out));
        OK(moe_tensor_from_data(&ref[2], MOE_F64, MOE_CPU, 2, SHAPE(Tn, D), e_dx));
        OK(moe_tensor_from_data(&ref[3], MOE_F64, MOE_CPU, 2, SHAPE(N, D), e_dy));
        OK(moe_tensor_from_data(&ref[4], MOE_F64, MOE_CPU, 2, SHAPE(Tn, K), e_dw));
        tu_assert_close(xp, ref[0], 0, 0, "permuted rows");
        tu_assert_close(out, ref[1], tol, tol, "combined rows");
        tu_assert_close(x->grad, ref[2], tol, tol, "dx");
        tu_assert_close(y->grad, ref[3], tol, tol, "dy");
        tu_assert_close(w->grad, ref[4], 10 * tol, tol, "dw");
        free(xv), free(yv), free(wv), free(gv), free(gpv);
        free(e_xp), free(e_out), free(e_dx), free(e_dy), free(e_dw);
        FREE_ALL(x, y, w, g, gp, xp, out, ref[0], ref[1], ref[2], ref[3], ref[4]);
    }
    moe_dispatch_release(d);
    FREE_ALL(ids, keep);
}
END_TEST

/* The row loops run their blocks of rows on the OpenMP team once a loop is
 * big enough; the blocks follow the row count alone, so permute, combine
 * and their backwards give the same bits on 1 and 3 threads: 301 tokens
 * (more blocks than threads, the last one short) and 20 tokens of 1000 (the
 * combine in a single block), with dropped slots and padding rows. */
START_TEST(thread_count_does_not_matter)
{
    const int64_t K = 2, E = 5, Tns[] = {301, 20}, Ds[] = {130, 1000};
    static const char *names[5] = {"permuted rows", "combined rows", "dx", "dy", "dw"};
    int saved = omp_get_max_threads();
    for (int c = 0; c < 2; c++)
        for (int k = 0; k < 2; k++) {
            int64_t Tn = Tns[c], D = Ds[c], S = Tn * K;
            moe_dtype dt = k ? MOE_F32 : MOE_F64;
            int64_t idv[602];
            for (int64_t s = 0; s < S; s++) idv[s] = s % 7 < 3 ? 0 : s % 7 - 2; /* expert 0 overflows */
            moe_tensor *ids;
            moe_dispatch *d;
            OK(moe_tensor_from_data(&ids, MOE_I64, MOE_CPU, 2, SHAPE(Tn, K), idv));
            OK(moe_dispatch_plan(&d, ids, NULL, E, S / E, true));
            ck_assert(d->n_dropped > 0 && d->rows > d->n_kept);
            int64_t N = d->rows;
            moe_tensor *res[2][5];
            for (int run = 0; run < 2; run++) {
                omp_set_num_threads(run ? 3 : 1);
                moe_tensor *x = tu_randn(dt, 2, SHAPE(Tn, D), 61), *y = tu_randn(dt, 2, SHAPE(N, D), 62);
                moe_tensor *w = tu_randn(dt, 2, SHAPE(Tn, K), 63), *g = tu_randn(dt, 2, SHAPE(Tn, D), 64);
                moe_tensor *gp = tu_randn(dt, 2, SHAPE(N, D), 65);
                OK(moe_tensor_requires_grad_(x, true));
                OK(moe_tensor_requires_grad_(y, true));
                OK(moe_tensor_requires_grad_(w, true));
                OK(moe_dispatch_permute(&res[run][0], x, d));
                OK(moe_dispatch_combine(&res[run][1], y, w, d));
                OK(moe_backward(res[run][0], gp, false));
                OK(moe_backward(res[run][1], g, false));
                res[run][2] = moe_tensor_retain(x->grad);
                res[run][3] = moe_tensor_retain(y->grad);
                res[run][4] = moe_tensor_retain(w->grad);
                FREE_ALL(x, y, w, g, gp);
            }
            omp_set_num_threads(saved);
            for (int i = 0; i < 5; i++) {
                ck_assert_msg(memcmp(moe_tensor_data(res[0][i]), moe_tensor_data(res[1][i]),
                                     moe_tensor_nbytes(res[0][i])) == 0,
                              "%s (%lld tokens, %s) differ between 1 and 3 threads", names[i],
                              (long long)Tn, k ? "f32" : "f64");
                FREE_ALL(res[0][i], res[1][i]);
            }
            moe_dispatch_release(d);
            FREE_ALL(ids);
        }
}
END_TEST

/* ---- gradients ---------------------------------------------------------------- */

typedef struct gctx {
    moe_dispatch *d;
} gctx;

/* in[0] x [T D], in[1] weights [T K]: combine(permute(x) * 1.5 + x_row_scale, w) */
static moe_status fn_roundtrip(moe_tensor **out, moe_tensor **in, void *vctx)
{
    gctx *c = vctx;
    moe_tensor *xp, *sq;
    MOE_TRY(moe_dispatch_permute(&xp, in[0], c->d));
    moe_status st = moe_mul(&sq, xp, xp); /* non-linear, so weights and rows interact */
    moe_tensor_release(xp);
    MOE_TRY(st);
    st = moe_dispatch_combine(out, sq, in[1], c->d);
    moe_tensor_release(sq);
    return st;
}

static void gradcheck_plan(moe_tensor *ids, moe_tensor *keep, int64_t E, int64_t cap, bool pad)
{
    gctx c;
    OK(moe_dispatch_plan(&c.d, ids, keep, E, cap, pad));
    int64_t T = ids->shape[0], K = ids->shape[1];
    moe_tensor *in[2] = {tu_randn(MOE_F64, 2, SHAPE(T, 3), 7), tu_randn(MOE_F64, 2, SHAPE(T, K), 8)};
    OK(moe_tensor_requires_grad_(in[0], true));
    OK(moe_tensor_requires_grad_(in[1], true));
    GRADCHECK(fn_roundtrip, 2, in, &c);
    /* dropped slots get a zero weight gradient */
    double *gw = moe_tensor_data(in[1]->grad);
    for (int64_t s = 0; s < T * K; s++)
        if (c.d->slot_row[s] < 0) ck_assert(gw[s] == 0.0);
    FREE_ALL(in[0], in[1]);
    moe_dispatch_release(c.d);
}

START_TEST(gradients)
{
    moe_tensor *ids = T(MOE_I64, 2, SHAPE(5, 2), 1, 0, 0, 2, 1, 2, 3, 1, 1, 0);
    moe_tensor *keep = T(MOE_BOOL, 2, SHAPE(5, 2), 1, 1, 0, 1, 1, 1, 1, 0, 1, 1);
    gradcheck_plan(ids, NULL, 4, 0, false);
    gradcheck_plan(ids, keep, 4, 0, false);
    gradcheck_plan(ids, NULL, 4, 2, false);
    gradcheck_plan(ids, keep, 4, 2, true);
    FREE_ALL(ids, keep);
}
END_TEST

START_TEST(gradient_dtypes)
{
    /* f32 rows with f64 weights: each gradient comes back in its input's dtype */
    moe_tensor *ids = ids3();
    moe_dispatch *d;
    OK(moe_dispatch_plan(&d, ids, NULL, 4, 0, false));
    moe_tensor *x = T(MOE_F32, 2, SHAPE(3, 2), 1, 2, 3, 4, 5, 6);
    moe_tensor *w = T(MOE_F64, 2, SHAPE(3, 2), 0.5, 0.25, 2, 1, 1, -1), *xp, *out, *loss;
    OK(moe_tensor_requires_grad_(x, true));
    OK(moe_tensor_requires_grad_(w, true));
    OK(moe_dispatch_permute(&xp, x, d));
    OK(moe_dispatch_combine(&out, xp, w, d));
    OK(moe_sum(&loss, out, 0, NULL, false));
    OK(moe_backward(loss, NULL, false));
    ck_assert_int_eq(x->grad->dtype, MOE_F32);
    ck_assert_int_eq(w->grad->dtype, MOE_F64);
    /* dx[t] = sum_k w[t k] (each column);  dw[t k] = sum of x[t] */
    ASSERT_VALUES(x->grad, 1e-6, 0.75, 0.75, 3, 3, 0, 0);
    ASSERT_VALUES(w->grad, 1e-12, 3, 3, 7, 7, 11, 11);
    moe_dispatch_release(d);
    FREE_ALL(ids, x, w, xp, out, loss);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("dispatch");
    TCase *tc = tcase_create("plan");
    tcase_add_test(tc, plan_dropless);
    tcase_add_test(tc, plan_keep_and_capacity);
    tcase_add_test(tc, plan_edge_cases);
    tcase_add_test(tc, plan_errors);
    suite_add_tcase(s, tc);
    tc = tcase_create("permute-combine");
    tcase_add_test(tc, permute_combine_values);
    tcase_add_test(tc, noncontiguous_inputs);
    tcase_add_test(tc, wide_rows);
    tcase_add_test(tc, thread_count_does_not_matter);
    suite_add_tcase(s, tc);
    tc = tcase_create("gradients");
    tcase_add_test(tc, gradients);
    tcase_add_test(tc, gradient_dtypes);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
