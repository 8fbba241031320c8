/* check_nn.c — rms_norm, layer_norm, cross_entropy, embedding: values
 * (references from torch 1.13, pasted), dtypes, layouts, errors, gradients. */
#include <omp.h>

#include "testutil.h"

#define EPS 1e-5

static moe_tensor *x24(moe_dtype dt) { return T(dt, 2, SHAPE(2, 4), 1, 2, 3, 4, -1, 0.5, 2, -3); }
static moe_tensor *w4(moe_dtype dt) { return T(dt, 1, SHAPE(4), 1, 0.5, 2, -1); }
static moe_tensor *b4(moe_dtype dt) { return T(dt, 1, SHAPE(4), 0.1, 0.2, -0.3, 0); }
static moe_tensor *g24(void) { return T(MOE_F64, 2, SHAPE(2, 4), 1, 0, -1, 2, 0.5, 1, 1, -1); }

/* ---- rms_norm ------------------------------------------------------------------ */

START_TEST(test_rms_values)
{
    moe_dtype dts[] = {MOE_F64, MOE_F32, MOE_BF16};
    double tol[] = {1e-14, 1e-6, 2e-2};
    for (int i = 0; i < 3; i++) {
        moe_tensor *x = x24(dts[i]), *w = w4(dts[i]), *y, *y0;
        OK(moe_rms_norm(&y, x, w, EPS));
        ck_assert_int_eq(y->dtype, dts[i]);
        ASSERT_SHAPE(y, 2, 2, 4);
        ASSERT_VALUES(y, tol[i], 0.3651481282381064, 0.3651481282381064, 2.1908887694286383,
                      -1.4605925129524255, -0.5298121992304703, 0.13245304980761757,
                      2.119248796921881, 1.5894365976914109);
        OK(moe_rms_norm(&y0, x, NULL, EPS));
        ASSERT_VALUES(y0, tol[i], 0.3651481282381064, 0.7302962564762128, 1.0954443847143192,
                      1.4605925129524255, -0.5298121992304703, 0.26490609961523515,
                      1.0596243984609406, -1.5894365976914109);
        RELEASE(x, w, y, y0);
    }
}
END_TEST

START_TEST(test_rms_grad_values)
{
    moe_tensor *x = x24(MOE_F64), *w = w4(MOE_F64), *g = g24(), *y;
    OK(moe_tensor_requires_grad_(x, true));
    OK(moe_tensor_requires_grad_(w, true));
    OK(moe_rms_norm(&y, x, w, EPS));
    OK(moe_backward(y, g, false));
    ASSERT_VALUES(x->grad, 1e-13, 0.5233787728337597, 0.3164612891913066, -0.2556043226892528,
                  -0.09737367809359954, 0.29279087393326175, 0.25096371245622184,
                  1.0038548498248874, 0.6134665221845503);
    ASSERT_VALUES(w->grad, 1e-13, 0.10024202862287124, 0.26490609961523515,
                  -0.035819986253378566, 4.510621623596262);
    RELEASE(x, w, g, y);
}
END_TEST

/* Rows wide enough for the vectorised row sums (16 lanes, then a tail) and
 * more rows than one chunk of the weight gradient, against the formulas
 * evaluated here in double: y = x r w, dx = r (g w - x r² mean(g w x)),
 * dw = sum over rows of g x r, with r = 1/sqrt(mean(x²) + eps). */
START_TEST(test_rms_wide_rows)
{
    const int64_t R = 70, Ds[] = {37, 256};
    for (int di = 0; di < 2; di++)
        for (int k = 0; k < 2; k++) {
            int64_t D = Ds[di];
            moe_dtype dt = k ? MOE_F32 : MOE_F64;
            double tol = k ? 2e-5 : 1e-12;
            moe_tensor *x = tu_randn(dt, 2, SHAPE(R, D), 41), *w = tu_randn(dt, 1, SHAPE(D), 42);
            moe_tensor *g = tu_randn(dt, 2, SHAPE(R, D), 43), *y;
            OK(moe_tensor_requires_grad_(x, true));
            OK(moe_tensor_requires_grad_(w, true));
            OK(moe_rms_norm(&y, x, w, EPS));
            OK(moe_backward(y, g, false));
            double *xv = malloc(sizeof(double) * (size_t)(R * D)), *gv = malloc(sizeof(double) * (size_t)(R * D));
            double *yv = malloc(sizeof(double) * (size_t)(R * D)), *dxv = malloc(sizeof(double) * (size_t)(R * D));
            double *wv = malloc(sizeof(double) * (size_t)D), *dwv = calloc((size_t)D, sizeof(double));
            OK(moe_tensor_to_doubles(x, xv));
            OK(moe_tensor_to_doubles(g, gv));
            OK(moe_tensor_to_doubles(w, wv));
            for (int64_t r = 0; r < R; r++) {
                const double *xr = xv + r * D, *gr = gv + r * D;
                double ss = 0, dot = 0;
                for (int64_t j = 0; j < D; j++) ss += xr[j] * xr[j], dot += gr[j] * wv[j] * xr[j];
                double ri = 1 / sqrt(ss / (double)D + EPS);
                for (int64_t j = 0; j < D; j++) {
                    yv[r * D + j] = xr[j] * ri * wv[j];
                    dxv[r * D + j] = ri * (gr[j] * wv[j] - xr[j] * ri * ri * dot / (double)D);
                    dwv[j] += gr[j] * xr[j] * ri;
                }
            }
            moe_tensor *ye, *dxe, *dwe;
            OK(moe_tensor_from_data(&ye, MOE_F64, MOE_CPU, 2, SHAPE(R, D), yv));
            OK(moe_tensor_from_data(&dxe, MOE_F64, MOE_CPU, 2, SHAPE(R, D), dxv));
            OK(moe_tensor_from_data(&dwe, MOE_F64, MOE_CPU, 1, SHAPE(D), dwv));
            tu_assert_close(y, ye, tol, tol, "y");
            tu_assert_close(x->grad, dxe, tol, tol, "dx");
            tu_assert_close(w->grad, dwe, 10 * tol, tol, "dw");
            free(xv), free(gv), free(yv), free(dxv), free(wv), free(dwv);
            RELEASE(x, w, g, y, ye, dxe, dwe);
        }
}
END_TEST

START_TEST(test_rms_layouts)
{
    /* leading dims and a transposed (non-contiguous) x give the row results */
    moe_tensor *x = tu_randn(MOE_F64, 3, SHAPE(2, 3, 5), 1), *w = tu_randn(MOE_F64, 1, SHAPE(3), 2);
    moe_tensor *xt, *xc, *y1, *y2;
    OK(moe_transpose(&xt, x, 1, 2)); /* [2 5 3] */
    OK(moe_contiguous(&xc, xt));
    OK(moe_rms_norm(&y1, xt, w, EPS));
    OK(moe_rms_norm(&y2, xc, w, EPS));
    ASSERT_SHAPE(y1, 3, 2, 5, 3);
    ASSERT_CLOSE(y1, y2, 0);
    /* row 0 by hand: x / rms(x) * w */
    double xv[3], yv[3], wv[3], ss = 0;
    OK(moe_tensor_to_doubles(w, wv));
    for (int j = 0; j < 3; j++) OK(moe_tensor_get(xc, SHAPE(1, 4, j), &xv[j]));
    for (int j = 0; j < 3; j++) ss += xv[j] * xv[j];
    for (int j = 0; j < 3; j++) OK(moe_tensor_get(y1, SHAPE(1, 4, j), &yv[j]));
    for (int j = 0; j < 3; j++) ck_assert_double_eq_tol(yv[j], xv[j] / sqrt(ss / 3 + EPS) * wv[j], 1e-14);
    RELEASE(x, w, xt, xc, y1, y2);
}
END_TEST

/* ---- layer_norm -------------------------------------------------------------------- */

START_TEST(test_layer_norm_values)
{
    moe_dtype dts[] = {MOE_F64, MOE_F32, MOE_BF16};
    double tol[] = {1e-14, 1e-6, 2e-2};
    for (int i = 0; i < 3; i++) {
        moe_tensor *x = x24(dts[i]), *w = w4(dts[i]), *b = b4(dts[i]), *y, *y0;
        OK(moe_layer_norm(&y, x, w, b, EPS));
        ck_assert_int_eq(y->dtype, dts[i]);
        ASSERT_VALUES(y, tol[i], -1.241635419968927, -0.023605903328154543, 0.5944236133126177,
                      -1.3416354199689269, -0.2378681955114161, 0.4365077368579913,
                      2.2677982858867627, 1.4190464211479479);
        OK(moe_layer_norm(&y0, x, NULL, NULL, EPS));
        ASSERT_VALUES(y0, tol[i], -1.341635419968927, -0.4472118066563091, 0.4472118066563089,
                      1.3416354199689269, -0.3378681955114161, 0.4730154737159826,
                      1.2838991429433813, -1.4190464211479479);
        RELEASE(x, w, b, y, y0);
    }
}
END_TEST

START_TEST(test_layer_norm_grad_values)
{
    moe_tensor *x = x24(MOE_F64), *w = w4(MOE_F64), *b = b4(MOE_F64), *g = g24(), *y;
    OK(moe_tensor_requires_grad_(x, true));
    OK(moe_tensor_requires_grad_(w, true));
    OK(moe_tensor_requires_grad_(b, true));
    OK(moe_layer_norm(&y, x, w, b, EPS));
    OK(moe_backward(y, g, false));
    ASSERT_VALUES(x->grad, 1e-13, 0.08945416762850722, 0.1788886580949387, -0.6261004647512476,
                  0.3577576390278019, -0.21475474137292577, -0.34805029745982285,
                  0.32953781568067886, 0.23326722315206982);
    ASSERT_VALUES(w->grad, 1e-13, -1.5105695177246352, 0.4730154737159826, 0.8366873362870724,
                  4.102317261085801);
    ASSERT_VALUES(b->grad, 1e-13, 1.5, 1.0, 0.0, 1.0);
    RELEASE(x, w, b, g, y);
}
END_TEST

START_TEST(test_norm_deterministic)
{
    /* parameter gradients reduce in fixed chunks: bit-identical for any thread count */
    moe_tensor *x = tu_randn(MOE_F32, 2, SHAPE(300, 130), 3), *w = tu_randn(MOE_F32, 1, SHAPE(130), 4);
    moe_tensor *b = tu_randn(MOE_F32, 1, SHAPE(130), 5), *g = tu_randn(MOE_F32, 2, SHAPE(300, 130), 6);
    OK(moe_tensor_requires_grad_(w, true));
    OK(moe_tensor_requires_grad_(b, true));
    moe_tensor *grads[2][2];
    int saved = omp_get_max_threads();
    for (int run = 0; run < 2; run++) {
        omp_set_num_threads(run == 0 ? 1 : 3);
        moe_tensor *y;
        OK(moe_layer_norm(&y, x, w, b, EPS));
        OK(moe_backward(y, g, false));
        grads[run][0] = w->grad;
        grads[run][1] = b->grad;
        w->grad = b->grad = NULL;
        moe_tensor_release(y);
    }
    omp_set_num_threads(saved);
    for (int k = 0; k < 2; k++) {
        float *p = moe_tensor_data(grads[0][k]), *q = moe_tensor_data(grads[1][k]);
        ck_assert_int_eq(memcmp(p, q, 130 * sizeof(float)), 0);
    }
    RELEASE(grads[0][0], grads[0][1], grads[1][0], grads[1][1]);
    /* rms_norm: the weight's and the input's gradients */
    OK(moe_tensor_requires_grad_(x, true));
    for (int run = 0; run < 2; run++) {
        omp_set_num_threads(run == 0 ? 1 : 3);
        moe_tensor *y;
        OK(moe_rms_norm(&y, x, w, EPS));
        OK(moe_backward(y, g, false));
        grads[run][0] = w->grad;
        grads[run][1] = x->grad;
        w->grad = x->grad = NULL;
        moe_tensor_release(y);
    }
    omp_set_num_threads(saved);
    ck_assert_int_eq(memcmp(moe_tensor_data(grads[0][0]), moe_tensor_data(grads[1][0]), 130 * sizeof(float)), 0);
    ck_assert_int_eq(memcmp(moe_tensor_data(grads[0][1]), moe_tensor_data(grads[1][1]), 300 * 130 * sizeof(float)), 0);
    RELEASE(x, w, b, g, grads[0][0], grads[0][1], grads[1][0], grads[1][1]);
}
END_TEST

/* rms_norm's rows in one block (forward) and one chunk (backward), in a
 * loop big enough to run on the team: the same bits on 1 and 3 threads. */
START_TEST(test_rms_one_block_threads)
{
    moe_tensor *x = tu_randn(MOE_F32, 2, SHAPE(9, 4000), 7), *w = tu_randn(MOE_F32, 1, SHAPE(4000), 8);
    moe_tensor *g = tu_randn(MOE_F32, 2, SHAPE(9, 4000), 9), *res[2][3];
    OK(moe_tensor_requires_grad_(x, true));
    OK(moe_tensor_requires_grad_(w, true));
    int saved = omp_get_max_threads();
    for (int run = 0; run < 2; run++) {
        omp_set_num_threads(run == 0 ? 1 : 3);
        OK(moe_rms_norm(&res[run][0], x, w, EPS));
        OK(moe_backward(res[run][0], g, false));
        res[run][1] = x->grad;
        res[run][2] = w->grad;
        x->grad = w->grad = NULL;
    }
    omp_set_num_threads(saved);
    for (int k = 0; k < 3; k++)
        ck_assert_int_eq(memcmp(moe_tensor_data(res[0][k]), moe_tensor_data(res[1][k]),
                                moe_tensor_nbytes(res[0][k])), 0);
    RELEASE(x, w, g, res[0][0], res[0][1], res[0][2], res[1][0], res[1][1], res[1][2]);
}
END_TEST

/* ---- cross_entropy -------------------------------------------------------------------- */

static moe_tensor *logits34(moe_dtype dt)
{
    return T(dt, 2, SHAPE(3, 4), 1, 2, 3, 4, 0, 0, 0, 0, -1, 2, 0.5, 1);
}

START_TEST(test_cross_entropy_values)
{
    moe_tensor *l = logits34(MOE_F64), *lf = logits34(MOE_F32);
    moe_tensor *t_all = T(MOE_I64, 1, SHAPE(3), 0, 1, 2), *t_ign = T(MOE_I64, 1, SHAPE(3), 3, -100, 1);
    moe_tensor *t32 = T(MOE_I32, 1, SHAPE(3), 0, 1, 1), *t_none = T(MOE_I64, 1, SHAPE(3), -100, -100, -100);
    moe_tensor *a, *b, *c, *d, *e;
    OK(moe_cross_entropy(&a, l, t_all, -100));
    ck_assert_int_eq(a->ndim, 0);
    ASSERT_VALUES(a, 1e-14, 2.273888652588981);
    OK(moe_cross_entropy(&b, l, t_ign, -100));
    ASSERT_VALUES(b, 1e-14, 0.4676857983235257);
    OK(moe_cross_entropy(&c, l, t32, 1)); /* i32 targets, ignore_index 1 */
    ASSERT_VALUES(c, 1e-14, 3.4401896985611953);
    OK(moe_cross_entropy(&d, l, t_none, -100)); /* nothing counted */
    ASSERT_VALUES(d, 0, NAN);
    OK(moe_cross_entropy(&e, lf, t_all, -100));
    ck_assert_int_eq(e->dtype, MOE_F32);
    ASSERT_VALUES(e, 1e-6, 2.273888652588981);
    RELEASE(l, lf, t_all, t_ign, t32, t_none, a, b, c, d, e);
}
END_TEST

START_TEST(test_cross_entropy_grad_values)
{
    moe_tensor *l = logits34(MOE_F64), *t = T(MOE_I64, 1, SHAPE(3), 3, -100, 1), *loss;
    OK(moe_tensor_requires_grad_(l, true));
    OK(moe_cross_entropy(&loss, l, t, -100));
    OK(moe_backward(loss, NULL, false));
    ASSERT_VALUES(l->grad, 1e-14, 0.016029301640042494, 0.043572159371016286, 0.11844140904495508,
                  -0.17804287005601382, 0.0, 0.0, 0.0, 0.0, 0.015171614279708113,
                  -0.19526998120056144, 0.06799445789675276, 0.11210390902410057);
    RELEASE(l, t, loss);
}
END_TEST

/* ---- embedding ---------------------------------------------------------------------------- */

START_TEST(test_embedding_values)
{
    moe_dtype dts[] = {MOE_F64, MOE_F32, MOE_BF16};
    for (int i = 0; i < 3; i++) {
        moe_tensor *w, *ids = T(MOE_I64, 2, SHAPE(2, 2), 1, 3, 0, 1), *e;
        OK(moe_tensor_arange(&w, dts[i], MOE_CPU, 0, 12, 1));
        moe_tensor *w2;
        OK(moe_reshape(&w2, w, 2, SHAPE(4, 3)));
        OK(moe_embedding(&e, w2, ids));
        ck_assert_int_eq(e->dtype, dts[i]);
        ASSERT_SHAPE(e, 3, 2, 2, 3);
        ASSERT_VALUES(e, 0, 3, 4, 5, 9, 10, 11, 0, 1, 2, 3, 4, 5);
        RELEASE(w, ids, e, w2);
    }
    /* i32 ids, 0-d ids, a transposed table */
    moe_tensor *w = T(MOE_F32, 2, SHAPE(3, 2), 1, 2, 3, 4, 5, 6), *wt, *i32 = T(MOE_I32, 1, SHAPE(3), 2, 2, 0);
    moe_tensor *i0, *e1, *e2, *e3;
    OK(moe_embedding(&e1, w, i32));
    ASSERT_VALUES(e1, 0, 5, 6, 5, 6, 1, 2);
    OK(moe_tensor_scalar(&i0, MOE_I64, MOE_CPU, 1));
    OK(moe_embedding(&e2, w, i0));
    ASSERT_SHAPE(e2, 1, 2);
    ASSERT_VALUES(e2, 0, 3, 4);
    OK(moe_transpose(&wt, w, 0, 1)); /* [2 3]: rows are w's columns */
    moe_tensor *i10 = T(MOE_I32, 1, SHAPE(2), 1, 0);
    OK(moe_embedding(&e3, wt, i10));
    ASSERT_VALUES(e3, 0, 2, 4, 6, 1, 3, 5);
    RELEASE(w, wt, i32, i10, i0, e1, e2, e3);
}
END_TEST

START_TEST(test_embedding_grad_values)
{
    moe_tensor *w = tu_randn(MOE_F64, 2, SHAPE(4, 3), 1), *ids = T(MOE_I64, 2, SHAPE(2, 2), 1, 3, 0, 1), *e, *g;
    OK(moe_tensor_requires_grad_(w, true));
    OK(moe_embedding(&e, w, ids));
    OK(moe_tensor_ones(&g, MOE_F64, MOE_CPU, 3, SHAPE(2, 2, 3)));
    OK(moe_backward(e, g, false));
    ASSERT_VALUES(w->grad, 0, 1, 1, 1, 2, 2, 2, 0, 0, 0, 1, 1, 1); /* how often each row was used */
    RELEASE(w, ids, e, g);
}
END_TEST

/* ---- errors -------------------------------------------------------------------------------- */

START_TEST(test_errors)
{
    moe_tensor *x = x24(MOE_F32), *w3 = T(MOE_F32, 1, SHAPE(3), 1, 2, 3), *out = (moe_tensor *)1;
    moe_tensor *xi, *s0;
    OK(moe_tensor_zeros(&xi, MOE_I64, MOE_CPU, 2, SHAPE(2, 4)));
    OK(moe_tensor_scalar(&s0, MOE_F32, MOE_CPU, 1));
    FAILS(moe_rms_norm(&out, x, w3, EPS), MOE_ERR_SHAPE, "rms-norm: weight [3] does not match the last dim of x [2 4]");
    ck_assert_ptr_null(out);
    FAILS(moe_rms_norm(&out, xi, NULL, EPS), MOE_ERR_DTYPE, "i64");
    FAILS(moe_rms_norm(&out, s0, NULL, EPS), MOE_ERR_SHAPE, "at least 1 dim");
    FAILS(moe_rms_norm(&out, x, NULL, -1), MOE_ERR_ARG, "eps");
    FAILS(moe_layer_norm(&out, x, NULL, w3, EPS), MOE_ERR_SHAPE, "layer-norm: bias [3]");
    FAILS(moe_layer_norm(&out, x, xi, NULL, EPS), MOE_ERR_DTYPE, "layer-norm");

    moe_tensor *l = logits34(MOE_F32), *tbad = T(MOE_I64, 1, SHAPE(3), 0, 1, 7), *tneg = T(MOE_I32, 1, SHAPE(3), 0, -2, 1);
    moe_tensor *tf = T(MOE_F32, 1, SHAPE(3), 0, 1, 2), *t2 = T(MOE_I64, 1, SHAPE(2), 0, 1);
    FAILS(moe_cross_entropy(&out, l, tbad, -100), MOE_ERR_INDEX, "target 7 at position 2 is out of range for 4 classes");
    FAILS(moe_cross_entropy(&out, l, tneg, -100), MOE_ERR_INDEX, "target -2 at position 1");
    FAILS(moe_cross_entropy(&out, l, tf, -100), MOE_ERR_DTYPE, "f32");
    FAILS(moe_cross_entropy(&out, l, t2, -100), MOE_ERR_SHAPE, "targets [2] do not match logits [3 4]");
    FAILS(moe_cross_entropy(&out, w3, t2, -100), MOE_ERR_SHAPE, "logits must be [N C]");
    FAILS(moe_cross_entropy(&out, xi, t2, -100), MOE_ERR_DTYPE, "cross-entropy");

    moe_tensor *ids = T(MOE_I64, 2, SHAPE(2, 2), 0, 1, 2, 12), *fid = T(MOE_F32, 1, SHAPE(1), 0);
    FAILS(moe_embedding(&out, l, ids), MOE_ERR_INDEX, "id 12 at position 3 is out of range for V = 3 rows");
    FAILS(moe_embedding(&out, l, fid), MOE_ERR_DTYPE, "embedding");
    FAILS(moe_embedding(&out, w3, t2), MOE_ERR_SHAPE, "weight must be [V D]");
    ck_assert_ptr_null(out);
    RELEASE(x, w3, xi, s0, l, tbad, tneg, tf, t2, ids, fid);
}
END_TEST

/* ---- gradient checks (f64, every input) ------------------------------------------------------ */

static moe_status f_rms(moe_tensor **out, moe_tensor **in, void *ctx)
{
    return moe_rms_norm(out, in[0], ctx ? in[1] : NULL, 1e-3);
}

static moe_status f_ln(moe_tensor **out, moe_tensor **in, void *ctx)
{
    return moe_layer_norm(out, in[0], ctx ? in[1] : NULL, ctx ? in[2] : NULL, 1e-3);
}

static moe_status f_ce(moe_tensor **out, moe_tensor **in, void *ctx)
{
    return moe_cross_entropy(out, in[0], ctx, -1);
}

static moe_status f_emb(moe_tensor **out, moe_tensor **in, void *ctx)
{
    return moe_embedding(out, in[0], ctx);
}

START_TEST(test_grad_norms)
{
    moe_tensor *in[3] = {tu_randn(MOE_F64, 3, SHAPE(2, 3, 5), 10), tu_randn(MOE_F64, 1, SHAPE(5), 11),
                         tu_randn(MOE_F64, 1, SHAPE(5), 12)};
    for (int i = 0; i < 3; i++) OK(moe_tensor_requires_grad_(in[i], true));
    GRADCHECK(f_rms, 2, in, (void *)1);
    GRADCHECK(f_rms, 1, in, NULL);
    GRADCHECK(f_ln, 3, in, (void *)1);
    GRADCHECK(f_ln, 1, in, NULL);
    OK(moe_tensor_requires_grad_(in[0], false)); /* parameters only */
    GRADCHECK(f_ln, 3, in, (void *)1);
    RELEASE(in[0], in[1], in[2]);
}
END_TEST

START_TEST(test_grad_cross_entropy)
{
    moe_tensor *in[1] = {tu_randn(MOE_F64, 2, SHAPE(5, 7), 20)};
    moe_tensor *t = T(MOE_I64, 1, SHAPE(5), 3, -1, 0, 6, 3);
    OK(moe_tensor_requires_grad_(in[0], true));
    GRADCHECK(f_ce, 1, in, t);
    RELEASE(in[0], t);
}
END_TEST

START_TEST(test_grad_embedding)
{
    moe_tensor *in[1] = {tu_randn(MOE_F64, 2, SHAPE(5, 3), 30)};
    moe_tensor *ids = T(MOE_I32, 2, SHAPE(2, 3), 4, 0, 4, 2, 4, 1);
    OK(moe_tensor_requires_grad_(in[0], true));
    GRADCHECK(f_emb, 1, in, ids);
    RELEASE(in[0], ids);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("nn");
    TCase *tr = tcase_create("rms_norm");
    tcase_add_test(tr, test_rms_values);
    tcase_add_test(tr, test_rms_grad_values);
    tcase_add_test(tr, test_rms_layouts);
    tcase_add_test(tr, test_rms_wide_rows);
    tcase_add_test(tr, test_rms_one_block_threads);
    suite_add_tcase(s, tr);
    TCase *tl = tcase_create("layer_norm");
    tcase_add_test(tl, test_layer_norm_values);
    tcase_add_test(tl, test_layer_norm_grad_values);
    tcase_add_test(tl, test_norm_deterministic);
    suite_add_tcase(s, tl);
    TCase *tc = tcase_create("cross_entropy");
    tcase_add_test(tc, test_cross_entropy_values);
    tcase_add_test(tc, test_cross_entropy_grad_values);
    suite_add_tcase(s, tc);
    TCase *te = tcase_create("embedding");
    tcase_add_test(te, test_embedding_values);
    tcase_add_test(te, test_embedding_grad_values);
    suite_add_tcase(s, te);
    TCase *tx = tcase_create("errors");
    tcase_add_test(tx, test_errors);
    suite_add_tcase(s, tx);
    TCase *tg = tcase_create("grad");
    tcase_set_timeout(tg, 60);
    tcase_add_test(tg, test_grad_norms);
    tcase_add_test(tg, test_grad_cross_entropy);
    tcase_add_test(tg, test_grad_embedding);
    suite_add_tcase(s, tg);
    return tu_run(s);
}
