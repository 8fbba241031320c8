/* cases.c — collective test cases written once, run on every backend: by
 * check_comm (threads, 2/3/4 ranks) and by mpi_comm (under mpirun -np 2/4).
 * Each case is a rank function: it computes on its rank and checks the
 * numbers it gets against hand formulas in the rank r and group size N.
 * (On failure a case returns early and may leak; the run is failing anyway.) */
#include "cases.h"

static const moe_dtype all_dtypes[] = {MOE_F32, MOE_F64, MOE_I64, MOE_I32, MOE_BF16};

/* rank r holds (r+1)*(i+1), i = 0..4; the four reductions */
static moe_status case_all_reduce(int r, moe_group *g, void *ctx)
{
    (void)ctx;
    int n = moe_group_size(g);
    for (size_t k = 0; k < sizeof all_dtypes / sizeof *all_dtypes; k++) {
        moe_dtype dt = all_dtypes[k];
        for (int op = 0; op < MOE_REDUCE_OP_COUNT; op++) {
            double v[5], e[5];
            for (int i = 0; i < 5; i++) {
                v[i] = (r + 1) * (i + 1);
                double sum = (i + 1) * n * (n + 1) / 2.0;
                e[i] = op == MOE_REDUCE_SUM ? sum
                     : op == MOE_REDUCE_AVG ? (moe_dtype_is_float(dt) ? sum / n : floor(sum / n))
                     : op == MOE_REDUCE_MAX ? n * (i + 1) : (i + 1);
            }
            moe_tensor *t;
            RTRY(dt_tensor(&t, dt, 1, (int64_t[]){5}, v));
            RTRY(moe_all_reduce_(t, (moe_reduce_op)op, g));
            double tol = dt == MOE_BF16 ? 0.06 * e[4] : 1e-6;
            moe_status st = dt_expect(t, 5, e, tol, moe_dtype_name(dt));
            moe_tensor_release(t);
            if (st != MOE_OK) return dt_rethrow(st, moe_reduce_op_name((moe_reduce_op)op));
        }
    }
    /* a transposed (non-contiguous) view reduced in place: t = [[0 1 2] [3 4 5]] + r, viewed [3 2] */
    double v[6];
    for (int i = 0; i < 6; i++) v[i] = i + r;
    moe_tensor *base, *tt;
    RTRY(dt_tensor(&base, MOE_F64, 2, (int64_t[]){2, 3}, v));
    RTRY(moe_transpose(&tt, base, 0, 1));
    RTRY(moe_all_reduce_(tt, MOE_REDUCE_SUM, g));
    double off = n * (n - 1) / 2.0; /* sum of r */
    DT_EXPECT(tt, 1e-12, 0 * n + off, 3 * n + off, 1 * n + off, 4 * n + off, 2 * n + off, 5 * n + off);
    DT_EXPECT(base, 1e-12, 0 * n + off, 1 * n + off, 2 * n + off, 3 * n + off, 4 * n + off, 5 * n + off);
    moe_tensor_release(tt);
    moe_tensor_release(base);
    /* out of place leaves the input alone */
    moe_tensor *x, *y;
    RTRY(dt_tensor(&x, MOE_F32, 1, (int64_t[]){2}, (double[]){r, 1}));
    RTRY(moe_all_reduce(&y, x, MOE_REDUCE_MAX, g));
    DT_EXPECT(y, 0, n - 1, 1);
    DT_EXPECT(x, 0, r, 1);
    moe_tensor_release(x);
    moe_tensor_release(y);
    return MOE_OK;
}

/* The reduction order is rank order, whichever rank reduces which slice:
 * f32 1e8 + 1 - 1e8 + 1 … gives the sequential f32 result everywhere. */
static moe_status case_reduce_order(int r, moe_group *g, void *ctx)
{
    (void)ctx;
    int n = moe_group_size(g);
    const int64_t count = 100003; /* several blocks and uneven slices */
    float mine = r == 0 ? 1e8f : r == 2 ? -1e8f : 1.0f;
    float expect = 0;
    for (int q = 0; q < n; q++) {
        float v = q == 0 ? 1e8f : q == 2 ? -1e8f : 1.0f;
        expect = q == 0 ? v : expect + v;
    }
    moe_tensor *t;
    RTRY(moe_tensor_full(&t, MOE_F32, MOE_CPU, 1, (int64_t[]){count}, mine));
    for (int rep = 0; rep < 3; rep++) {
        moe_tensor *y;
        RTRY(moe_all_reduce(&y, t, MOE_REDUCE_SUM, g));
        const float *p = moe_tensor_data(y);
        for (int64_t i = 0; i < count; i++)
            RCHECK(p[i] == expect, "element %lld is %.9g, expected the rank-order sum %.9g", (long long)i,
                   (double)p[i], (double)expect);
        moe_tensor_release(y);
    }
    moe_tensor_release(t);
    return MOE_OK;
}

/* rank r holds {10r, 10r+1}: all_gather concatenates in rank order */
static moe_status case_all_gather(int r, moe_group *g, void *ctx)
{
    (void)ctx;
    int n = moe_group_size(g);
    moe_dtype dts[] = {MOE_F64, MOE_I64, MOE_F32, MOE_BF16};
    for (size_t k = 0; k < sizeof dts / sizeof *dts; k++) {
        moe_tensor *t, *y;
        RTRY(dt_tensor(&t, dts[k], 2, (int64_t[]){1, 2}, (double[]){10 * r, 10 * r + 1}));
        RTRY(moe_all_gather(&y, t, g));
        RCHECK(y->ndim == 2 && y->shape[0] == n && y->shape[1] == 2 && y->dtype == dts[k],
               "all_gather %s: shape %s", moe_dtype_name(dts[k]), moe_shape_str(y));
        double e[8];
        for (int q = 0; q < n; q++) {
            e[2 * q] = 10 * q;
            e[2 * q + 1] = 10 * q + 1;
        }
        RTRY(dt_expect(y, 2 * n, e, 0, "gathered"));
        moe_tensor_release(t);
        moe_tensor_release(y);
    }
    /* a 0-dim tensor gathers into [N] */
    moe_tensor *s, *y;
    RTRY(moe_tensor_scalar(&s, MOE_I32, MOE_CPU, r * r));
    RTRY(moe_all_gather(&y, s, g));
    RCHECK(y->ndim == 1 && y->shape[0] == n, "scalar gather shape %s", moe_shape_str(y));
    for (int q = 0; q < n; q++) {
        double v;
        RTRY(moe_tensor_get(y, (int64_t[]){q}, &v));
        RCHECK(v == q * q, "element %d is %g, expected %d", q, v, q * q);
    }
    moe_tensor_release(s);
    moe_tensor_release(y);
    return MOE_OK;
}

/* rank r holds (r+1)*(j+1), j < 2N: rank r keeps block r of the reduction */
static moe_status case_reduce_scatter(int r, moe_group *g, void *ctx)
{
    (void)ctx;
    int n = moe_group_size(g);
    double v[8];
    for (int j = 0; j < 2 * n; j++) v[j] = (r + 1) * (j + 1);
    moe_dtype dts[] = {MOE_F32, MOE_F64, MOE_I64};
    for (size_t k = 0; k < sizeof dts / sizeof *dts; k++) {
        moe_tensor *t, *y, *m;
        RTRY(dt_tensor(&t, dts[k], 1, (int64_t[]){2 * n}, v));
        RTRY(moe_reduce_scatter(&y, t, MOE_REDUCE_SUM, g));
        double tri = n * (n + 1) / 2.0;
        DT_EXPECT(y, 1e-9, (2 * r + 1) * tri, (2 * r + 2) * tri);
        RTRY(moe_reduce_scatter(&m, t, MOE_REDUCE_MAX, g));
        DT_EXPECT(m, 1e-9, (double)n * (2 * r + 1), (double)n * (2 * r + 2));
        moe_tensor_release(t);
        moe_tensor_release(y);
        moe_tensor_release(m);
    }
    /* dim 0 that does not divide fails on every rank alike */
    if (n > 1) {
        moe_tensor *t, *y;
        RTRY(moe_tensor_zeros(&t, MOE_F32, MOE_CPU, 1, (int64_t[]){n + 1}));
        RFAILS(moe_reduce_scatter(&y, t, MOE_REDUCE_SUM, g), MOE_ERR_SHAPE, "does not divide");
        moe_tensor_release(t);
    }
    return MOE_OK;
}

/* rank r sends (r+q) % 3 rows of width 2 to rank q (zero-length sends
 * included); row k of the block for q is 1000r + 100q + 10k + c */
static int64_t a2a_rows(int from, int to) { return (from + to) % 3; }

static moe_status case_all_to_all(int r, moe_group *g, void *ctx)
{
    (void)ctx;
    int n = moe_group_size(g);
    int64_t send[4], recv[4], rows = 0, rrows = 0;
    for (int q = 0; q < n; q++) {
        send[q] = a2a_rows(r, q);
        rows += send[q];
        rrows += a2a_rows(q, r);
    }
    double v[64], e[64];
    int p = 0;
    for (int q = 0; q < n; q++)
        for (int k = 0; k < send[q]; k++)
            for (int c = 0; c < 2; c++) v[p++] = 1000 * r + 100 * q + 10 * k + c;
    p = 0;
    for (int q = 0; q < n; q++)
        for (int k = 0; k < a2a_rows(q, r); k++)
            for (int c = 0; c < 2; c++) e[p++] = 1000 * q + 100 * r + 10 * k + c;
    moe_dtype dts[] = {MOE_F64, MOE_I64, MOE_F32, MOE_BF16};
    for (size_t k = 0; k < sizeof dts / sizeof *dts; k++) {
        if (dts[k] == MOE_BF16) { /* bf16 holds integers exactly only up to 256 */
            for (int i = 0; i < 2 * rows; i++) v[i] = fmod(v[i], 256);
            for (int i = 0; i < 2 * rrows; i++) e[i] = fmod(e[i], 256);
        }
        moe_tensor *t, *y;
        RTRY(dt_tensor(&t, dts[k], 2, (int64_t[]){rows, 2}, v));
        for (int q = 0; q < n; q++) recv[q] = -1;
        RTRY(moe_all_to_all(&y, recv, t, send, g));
        for (int q = 0; q < n; q++)
            RCHECK(recv[q] == a2a_rows(q, r), "recv split %d is %lld, expected %lld", q, (long long)recv[q],
                   (long long)a2a_rows(q, r));
        RCHECK(y->ndim == 2 && y->shape[0] == rrows && y->shape[1] == 2, "all_to_all shape %s, expected [%lld 2]",
               moe_shape_str(y), (long long)rrows);
        RTRY(dt_expect(y, 2 * rrows, e, 0, moe_dtype_name(dts[k])));
        moe_tensor_release(t);
        moe_tensor_release(y);
    }
    /* even split (NULL splits): element q of rank r goes to rank q */
    double ev[4], ee[4];
    for (int q = 0; q < n; q++) {
        ev[q] = 10 * r + q;
        ee[q] = 10 * q + r;
    }
    moe_tensor *t, *y;
    RTRY(dt_tensor(&t, MOE_I64, 1, (int64_t[]){n}, ev));
    RTRY(moe_all_to_all(&y, NULL, t, NULL, g));
    RTRY(dt_expect(y, n, ee, 0, "even all_to_all"));
    moe_tensor_release(t);
    moe_tensor_release(y);
    return MOE_OK;
}

static moe_status case_broadcast(int r, moe_group *g, void *ctx)
{
    (void)ctx;
    int n = moe_group_size(g), root = n - 1;
    moe_tensor *t, *x, *y;
    RTRY(dt_tensor(&t, MOE_F64, 1, (int64_t[]){3}, (double[]){10 * r, 10 * r + 1, 10 * r + 2}));
    RTRY(moe_broadcast_(t, root, g));
    DT_EXPECT(t, 0, 10 * root, 10 * root + 1, 10 * root + 2);
    RTRY(dt_tensor(&x, MOE_I64, 1, (int64_t[]){2}, (double[]){r, -r}));
    RTRY(moe_broadcast(&y, x, 0, g));
    DT_EXPECT(y, 0, 0, 0);
    DT_EXPECT(x, 0, r, -r);
    moe_tensor_release(t);
    moe_tensor_release(x);
    moe_tensor_release(y);
    return MOE_OK;
}

/* a ring: rank r sends {r, r*r} to r+1 and receives from r-1 */
static moe_status case_send_recv(int r, moe_group *g, void *ctx)
{
    (void)ctx;
    int n = moe_group_size(g);
    if (n < 2) return MOE_OK;
    int next = (r + 1) % n, prev = (r + n - 1) % n;
    moe_tensor *t, *u, *a, *b;
    RTRY(dt_tensor(&t, MOE_F64, 1, (int64_t[]){2}, (double[]){r, r * r}));
    RTRY(dt_tensor(&a, MOE_I64, 1, (int64_t[]){1}, (double[]){100 + r}));
    RTRY(moe_tensor_zeros(&u, MOE_F64, MOE_CPU, 1, (int64_t[]){2}));
    RTRY(moe_tensor_zeros(&b, MOE_I64, MOE_CPU, 1, (int64_t[]){1}));
    if (r % 2 == 0) {
        RTRY(moe_send(t, next, 7, g));
        RTRY(moe_send(a, next, 8, g));
        RTRY(moe_recv_(b, prev, 8, g)); /* tags match out of order */
        RTRY(moe_recv_(u, prev, 7, g));
    } else {
        RTRY(moe_recv_(u, prev, 7, g));
        RTRY(moe_recv_(b, prev, 8, g));
        RTRY(moe_send(t, next, 7, g));
        RTRY(moe_send(a, next, 8, g));
    }
    DT_EXPECT(u, 0, prev, prev * prev);
    DT_EXPECT(b, 0, 100 + prev);
    RFAILS(moe_send(t, r, 0, g), MOE_ERR_ARG, "itself");
    RFAILS(moe_recv_(u, n, 0, g), MOE_ERR_ARG, "not a rank");
    RFAILS(moe_send(t, next, -1, g), MOE_ERR_ARG, "negative");
    moe_tensor_release(t);
    moe_tensor_release(u);
    moe_tensor_release(a);
    moe_tensor_release(b);
    return MOE_OK;
}

static moe_status case_barrier(int r, moe_group *g, void *ctx)
{
    (void)r;
    (void)ctx;
    for (int i = 0; i < 5; i++) RTRY(moe_barrier(g));
    return MOE_OK;
}

/* zero-size tensors through every collective */
static moe_status case_zero_size(int r, moe_group *g, void *ctx)
{
    (void)ctx;
    int n = moe_group_size(g);
    moe_tensor *z, *y;
    RTRY(moe_tensor_empty(&z, MOE_F32, MOE_CPU, 2, (int64_t[]){0, 3}));
    RTRY(moe_all_reduce_(z, MOE_REDUCE_SUM, g));
    RTRY(moe_all_gather(&y, z, g));
    RCHECK(y->ndim == 2 && y->shape[0] == 0 && y->shape[1] == 3, "gather of [0 3]: %s", moe_shape_str(y));
    moe_tensor_release(y);
    RTRY(moe_reduce_scatter(&y, z, MOE_REDUCE_SUM, g));
    RCHECK(y->shape[0] == 0 && y->shape[1] == 3, "reduce_scatter of [0 3]: %s", moe_shape_str(y));
    moe_tensor_release(y);
    int64_t zeros[4] = {0, 0, 0, 0}, recv[4];
    RTRY(moe_all_to_all(&y, recv, z, zeros, g));
    RCHECK(y->shape[0] == 0 && y->shape[1] == 3, "all_to_all of [0 3]: %s", moe_shape_str(y));
    for (int q = 0; q < n; q++) RCHECK(recv[q] == 0, "recv split %d is %lld", q, (long long)recv[q]);
    moe_tensor_release(y);
    RTRY(moe_broadcast_(z, 0, g));
    moe_tensor_release(z);
    /* rank 0 sends nothing to anyone, the others send one row to rank 0 only */
    int64_t send[4] = {0, 0, 0, 0};
    if (r != 0) send[0] = 1;
    RTRY(moe_tensor_full(&z, MOE_F64, MOE_CPU, 1, (int64_t[]){r != 0}, r));
    RTRY(moe_all_to_all(&y, recv, z, send, g));
    RCHECK(y->shape[0] == (r == 0 ? n - 1 : 0), "rank %d got %s", r, moe_shape_str(y));
    if (r == 0) {
        double e[4];
        for (int q = 1; q < n; q++) e[q - 1] = q;
        RTRY(dt_expect(y, n - 1, e, 0, "gathered on 0"));
    }
    moe_tensor_release(y);
    moe_tensor_release(z);
    return MOE_OK;
}

static moe_status case_async(int r, moe_group *g, void *ctx)
{
    (void)ctx;
    int n = moe_group_size(g);
    moe_tensor *a, *b, *c, *y;
    RTRY(moe_tensor_full(&a, MOE_F64, MOE_CPU, 1, (int64_t[]){1000}, r + 1));
    RTRY(moe_tensor_full(&b, MOE_I64, MOE_CPU, 1, (int64_t[]){3}, r));
    RTRY(dt_tensor(&c, MOE_F32, 1, (int64_t[]){1}, (double[]){r}));
    moe_work *w1, *w2, *w3;
    RTRY(moe_all_reduce_async_(&w1, a, MOE_REDUCE_AVG, g));
    RTRY(moe_all_reduce_async_(&w2, b, MOE_REDUCE_MAX, g));
    RTRY(moe_all_gather_async(&w3, &y, c, g));
    RTRY(moe_work_wait(w2));
    RTRY(moe_work_wait(w1));
    RTRY(moe_work_wait(w3));
    RCHECK(((double *)moe_tensor_data(a))[999] == (n + 1) / 2.0, "async avg: %g",
           ((double *)moe_tensor_data(a))[999]);
    DT_EXPECT(b, 0, n - 1, n - 1, n - 1);
    for (int q = 0; q < n; q++) RCHECK(((float *)moe_tensor_data(y))[q] == q, "async gather element %d", q);
    RCHECK(moe_work_done(NULL), "a NULL work is done");
    RTRY(moe_work_wait(NULL));
    moe_tensor_release(a);
    moe_tensor_release(b);
    moe_tensor_release(c);
    moe_tensor_release(y);
    return MOE_OK;
}

/* even/odd split, ordered by descending world rank; a subset in listed order */
static moe_status case_split(int r, moe_group *g, void *ctx)
{
    (void)ctx;
    int n = moe_group_size(g);
    moe_group *h;
    RTRY(moe_group_split(&h, g, r % 2, -r));
    int members = (n - r % 2 + 1) / 2; /* ranks with my parity */
    RCHECK(moe_group_size(h) == members, "split size %d, expected %d", moe_group_size(h), members);
    int pos = 0; /* ranks of my parity above me come first */
    for (int q = r + 2; q < n; q += 2) pos++;
    RCHECK(moe_group_rank(h) == pos, "split rank %d, expected %d", moe_group_rank(h), pos);
    RCHECK(moe_group_world_rank(h, pos) == moe_group_world_rank(g, r), "world rank of member %d", pos);
    moe_tensor *t;
    RTRY(moe_tensor_full(&t, MOE_I64, MOE_CPU, 1, (int64_t[]){1}, r));
    RTRY(moe_all_reduce_(t, MOE_REDUCE_SUM, h));
    int64_t sum = 0;
    for (int q = r % 2; q < n; q += 2) sum += q;
    RCHECK(*(int64_t *)moe_tensor_data(t) == sum, "sum over my parity %lld, expected %lld",
           (long long)*(int64_t *)moe_tensor_data(t), (long long)sum);
    moe_group_release(h);
    /* subset {N-1, 0}: group rank 0 is world rank N-1 */
    moe_group *s;
    if (n < 2) {
        RFAILS(moe_group_subset(&s, g, 2, (int[]){0, 0}), MOE_ERR_ARG, "2 ranks requested from a group of 1");
        moe_tensor_release(t);
        return MOE_OK;
    }
    RTRY(moe_group_subset(&s, g, 2, (int[]){n - 1, 0}));
    if (r == n - 1 || r == 0) {
        RCHECK(s && moe_group_size(s) == 2, "subset size %d", moe_group_size(s));
        RCHECK(moe_group_rank(s) == (r == 0 ? 1 : 0), "subset rank %d", moe_group_rank(s));
        RTRY(moe_tensor_fill_(t, r + 1));
        RTRY(moe_all_reduce_(t, MOE_REDUCE_SUM, s));
        RCHECK(*(int64_t *)moe_tensor_data(t) == n + 1, "subset sum");
    } else {
        RCHECK(s == NULL, "rank %d is not in the subset", r);
    }
    moe_group_release(s);
    moe_tensor_release(t);
    return MOE_OK;
}

/* ---- autograd through collectives: gradients of sum_r loss_r by hand ---- */

/* loss = sum(y * w) */
static moe_status weighted_backward(moe_tensor *y, const double *w)
{
    moe_tensor *wt, *p, *l;
    MOE_TRY(dt_tensor(&wt, y->dtype, y->ndim, y->shape, w));
    MOE_TRY(moe_mul(&p, y, wt));
    MOE_TRY(moe_sum(&l, p, 0, NULL, false));
    moe_status st = moe_backward(l, NULL, false);
    moe_tensor_release(wt);
    moe_tensor_release(p);
    moe_tensor_release(l);
    return st;
}

static moe_status leaf(moe_tensor **out, int64_t n, const double *v)
{
    MOE_TRY(dt_tensor(out, MOE_F64, 1, (int64_t[]){n}, v));
    return moe_tensor_requires_grad_(*out, true);
}

static moe_status case_autograd(int r, moe_group *g, void *ctx)
{
    (void)ctx;
    int n = moe_group_size(g);
    double tri = n * (n + 1) / 2.0;
    moe_tensor *x, *y;
    /* all_reduce sum: y = sum_q x_q, loss_r = y . [r+1, 1] → dx_r = sum_q w_q */
    RTRY(leaf(&x, 2, (double[]){r + 1, 2 * (r + 1)}));
    RTRY(moe_all_reduce(&y, x, MOE_REDUCE_SUM, g));
    DT_EXPECT(y, 1e-12, tri, 2 * tri);
    RTRY(weighted_backward(y, (double[]){r + 1, 1}));
    DT_EXPECT(x->grad, 1e-12, tri, n);
    moe_tensor_release(y);
    moe_tensor_zero_grad(x);
    /* all_reduce avg: dx_r = mean_q w_q */
    RTRY(moe_all_reduce(&y, x, MOE_REDUCE_AVG, g));
    RTRY(weighted_backward(y, (double[]){r + 1, 1}));
    DT_EXPECT(x->grad, 1e-12, tri / n, 1);
    moe_tensor_release(y);
    moe_tensor_zero_grad(x);
    /* max is not differentiable: refused on every rank alike */
    RFAILS(moe_all_reduce(&y, x, MOE_REDUCE_MAX, g), MOE_ERR_UNSUPPORTED, "not differentiable");
    /* identity forward, sum backward: dx_r = sum_q w_q */
    RTRY(moe_identity_all_reduce_grad(&y, x, g));
    DT_EXPECT(y, 0, r + 1, 2 * (r + 1));
    RTRY(weighted_backward(y, (double[]){r + 1, 1}));
    DT_EXPECT(x->grad, 1e-12, tri, n);
    moe_tensor_release(y);
    moe_tensor_zero_grad(x);
    /* sum forward, identity backward: dx_r = w_r */
    RTRY(moe_all_reduce_identity_grad(&y, x, g));
    DT_EXPECT(y, 1e-12, tri, 2 * tri);
    RTRY(weighted_backward(y, (double[]){r + 1, 1}));
    DT_EXPECT(x->grad, 1e-12, r + 1, 1);
    moe_tensor_release(y);
    moe_tensor_zero_grad(x);
    /* all_gather: loss_r = y . w_r, w_r[j] = (r+1)(j+1) → dx_r[i] = (2r+i+1) * tri */
    double w[8];
    for (int j = 0; j < 2 * n; j++) w[j] = (r + 1) * (j + 1);
    RTRY(moe_all_gather(&y, x, g));
    RTRY(weighted_backward(y, w));
    DT_EXPECT(x->grad, 1e-12, (2 * r + 1) * tri, (2 * r + 2) * tri);
    moe_tensor_release(y);
    moe_tensor_release(x);
    /* broadcast from 0: dx_0 = sum_q w_q, the others get no gradient */
    RTRY(leaf(&x, 2, (double[]){r, r}));
    RTRY(moe_broadcast(&y, x, 0, g));
    DT_EXPECT(y, 0, 0, 0);
    RTRY(weighted_backward(y, (double[]){r + 1, 2 * (r + 1)}));
    if (r == 0) DT_EXPECT(x->grad, 1e-12, tri, 2 * tri);
    else if (x->grad) DT_EXPECT(x->grad, 0, 0, 0);
    moe_tensor_release(y);
    moe_tensor_release(x);
    /* reduce_scatter sum: y_r = block r; loss_r = y_r . [r+1, -(r+1)] →
     * dx_r block q = w_q */
    double v[8], e[8];
    for (int j = 0; j < 2 * n; j++) {
        v[j] = j;
        e[j] = (j % 2 ? -1.0 : 1.0) * (j / 2 + 1);
    }
    RTRY(leaf(&x, 2 * n, v));
    RTRY(moe_reduce_scatter(&y, x, MOE_REDUCE_SUM, g));
    DT_EXPECT(y, 1e-12, 2.0 * r * n, (2.0 * r + 1) * n);
    RTRY(weighted_backward(y, (double[]){r + 1, -(r + 1)}));
    RTRY(dt_expect(x->grad, 2 * n, e, 1e-12, "reduce_scatter grad"));
    moe_tensor_release(y);
    moe_tensor_zero_grad(x);
    /* reduce_scatter avg: the same / N */
    for (int j = 0; j < 2 * n; j++) e[j] /= n;
    RTRY(moe_reduce_scatter(&y, x, MOE_REDUCE_AVG, g));
    RTRY(weighted_backward(y, (double[]){r + 1, -(r + 1)}));
    RTRY(dt_expect(x->grad, 2 * n, e, 1e-12, "reduce_scatter avg grad"));
    moe_tensor_release(y);
    moe_tensor_release(x);
    /* all_to_all: rank r sends q+1 rows to rank q; y_r has N(r+1) rows with
     * loss weights 100r + k. The rows r sent to q sit at offset r(q+1) of y_q,
     * so their gradient is 100q + r(q+1) + k, k < q+1. */
    int64_t send[4], rows = 0;
    for (int q = 0; q < n; q++) rows += send[q] = q + 1;
    double xv[16], ew[16], ww[16];
    int p = 0;
    for (int q = 0; q < n; q++)
        for (int k = 0; k <= q; k++) {
            xv[p] = 10 * r + q;
            ew[p++] = 100 * q + r * (q + 1) + k;
        }
    RTRY(leaf(&x, rows, xv));
    RTRY(moe_all_to_all(&y, NULL, x, send, g));
    RCHECK(y->shape[0] == n * (r + 1), "all_to_all rows %lld", (long long)y->shape[0]);
    for (int k = 0; k < n * (r + 1); k++) ww[k] = 100 * r + k;
    RTRY(weighted_backward(y, ww));
    RTRY(dt_expect(x->grad, rows, ew, 1e-12, "all_to_all grad"));
    moe_tensor_release(y);
    moe_tensor_release(x);
    return MOE_OK;
}

/* The last case of a run: sizes differ on the last rank; every rank reports
 * the mismatch naming both ranks and sizes. (Poisons a threads world.) */
static moe_status case_mismatch(int r, moe_group *g, void *ctx)
{
    (void)ctx;
    int n = moe_group_size(g);
    if (n < 2) return MOE_OK;
    moe_tensor *t;
    RTRY(moe_tensor_zeros(&t, MOE_F32, MOE_CPU, 1, (int64_t[]){r == n - 1 ? 4 : 3}));
    char needle[96];
    snprintf(needle, sizeof needle, "rank 0 has 3 elements (f32), rank %d has 4 elements (f32)", n - 1);
    RFAILS(moe_all_reduce_(t, MOE_REDUCE_SUM, g), MOE_ERR_SHAPE, needle);
    moe_tensor_release(t);
    return MOE_OK;
}

const dist_case dist_cases[] = {
    {"all_reduce", case_all_reduce},
    {"reduce_order", case_reduce_order},
    {"all_gather", case_all_gather},
    {"reduce_scatter", case_reduce_scatter},
    {"all_to_all", case_all_to_all},
    {"broadcast", case_broadcast},
    {"send_recv", case_send_recv},
    {"barrier", case_barrier},
    {"zero_size", case_zero_size},
    {"async", case_async},
    {"split", case_split},
    {"autograd", case_autograd},
    {"mismatch", case_mismatch},
    {NULL, NULL},
};
