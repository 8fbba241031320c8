/* grad_sync_case.c — the grad sync scenario shared by the threads driver
 * (check_grad_sync.c) and the MPI one (mpi_comm.c).
 *
 * Each rank's loss is a sum of sum(C * W) terms, so the gradient of W is
 * the sum of its coefficient tensors C, known by hand. The coefficients are
 * small dyadic numbers: every sum is exact, and the gradients after wait
 * must equal sum / divisor bit for bit. Five parameters: W0 f64 [3], W1 f64
 * [2 2] used twice per micro-batch, W2 f64 [4] unused on rank 1, W3 f64
 * [2], W4 f32 [3]; 24-byte buckets make four of them (W4 alone: another
 * dtype). Two micro-batches per step, armed before the second. */
#include "grad_sync_case.h"

static const moe_dtype param_dtype[NPARAM] = {MOE_F64, MOE_F64, MOE_F64, MOE_F64, MOE_F32};
static const int param_ndim[NPARAM] = {1, 2, 1, 1, 1};
static const int64_t param_shape[NPARAM][2] = {{3}, {2, 2}, {4}, {2}, {3}};

/* Coefficient of element J of param P, use K, on rank R in micro-batch M. */
static double coef(int p, int j, int k, int r, int m)
{
    return (p + 1) + 0.5 * j + 0.25 * r + 2.0 * m + 8.0 * k;
}

/* Whether rank R uses param P (W2 not on rank 1), and how often. */
static int uses(int p, int r)
{
    if (p == 2 && r == 1) return 0;
    return p == 1 ? 2 : 1;
}

moe_status make_params(rank_state *rs, int r)
{
    for (int p = 0; p < NPARAM; p++) {
        RTRY(moe_tensor_empty(&rs->w[p], param_dtype[p], MOE_CPU, param_ndim[p], param_shape[p]));
        RTRY(moe_tensor_fill_(rs->w[p], 0.5 + p + r));
        RTRY(moe_tensor_requires_grad_(rs->w[p], true));
    }
    return MOE_OK;
}

void free_params(rank_state *rs)
{
    for (int p = 0; p < NPARAM; p++) moe_tensor_release(rs->w[p]);
}

/* *ACC += sum(C * W) with C's elements coef(p, j, k, r, m). */
static moe_status add_term(moe_tensor **acc, moe_tensor *w, int p, int k, int r, int m)
{
    int64_t n = moe_tensor_numel(w);
    double vals[8];
    for (int64_t j = 0; j < n; j++) vals[j] = coef(p, (int)j, k, r, m);
    moe_tensor *c, *prod, *s, *sum;
    RTRY(dt_tensor(&c, w->dtype, w->ndim, w->shape, vals));
    RTRY(moe_mul(&prod, c, w));
    RTRY(moe_sum(&s, prod, 0, NULL, false));
    moe_tensor *s64;
    RTRY(moe_to_dtype(&s64, s, MOE_F64));
    if (*acc) {
        RTRY(moe_add(&sum, *acc, s64));
        moe_tensor_release(*acc);
        moe_tensor_release(s64);
        *acc = sum;
    } else {
        *acc = s64;
    }
    moe_tensor_release(c);
    moe_tensor_release(prod);
    moe_tensor_release(s);
    return MOE_OK;
}

moe_status micro_batch(rank_state *rs, int r, int m)
{
    moe_tensor *loss = NULL;
    for (int p = 0; p < NPARAM; p++)
        for (int k = 0; k < uses(p, r); k++) RTRY(add_term(&loss, rs->w[p], p, k, r, m));
    moe_status st = moe_backward(loss, NULL, false);
    moe_tensor_release(loss);
    return st;
}

/* The gradient of element J of P after a step of 2 micro-batches on N
 * ranks (EXTRA: rank 1 also had one use of W2 with k = 0, m = 1). */
static double expected_grad(int p, int j, int n, bool extra)
{
    double sum = 0;
    for (int r = 0; r < n; r++)
        for (int m = 0; m < 2; m++)
            for (int k = 0; k < uses(p, r); k++) sum += coef(p, j, k, r, m);
    if (extra && p == 2 && n > 1) sum += coef(p, j, 0, 1, 1);
    if (param_dtype[p] == MOE_F32) return (float)((float)sum / (float)DIVISOR);
    return sum / DIVISOR;
}

static moe_status check_grads(rank_state *rs, int n, bool extra, const char *when)
{
    for (int p = 0; p < NPARAM; p++) {
        moe_tensor *g = moe_tensor_grad(rs->w[p]);
        RCHECK(g, "%s: param %d has no gradient", when, p);
        RCHECK(g->dtype == param_dtype[p] && moe_tensor_same_shape(g, rs->w[p]), "%s: param %d gradient %s %s",
               when, p, moe_dtype_name(g->dtype), moe_shape_str(g));
        double got[8];
        RTRY(moe_tensor_to_doubles(g, got));
        moe_tensor_release(g);
        for (int64_t j = 0; j < moe_tensor_numel(rs->w[p]); j++) {
            double want = expected_grad(p, (int)j, n, extra);
            RCHECK(got[j] == want, "%s: param %d element %lld is %.17g, expected %.17g", when, p, (long long)j,
                   got[j], want);
        }
    }
    return MOE_OK;
}

void zero_grads(rank_state *rs)
{
    for (int p = 0; p < NPARAM; p++) moe_tensor_zero_grad(rs->w[p]);
}

moe_status step(moe_grad_sync *s, rank_state *rs, int r, bool extra)
{
    zero_grads(rs);
    RTRY(micro_batch(rs, r, 0));
    RTRY(moe_grad_sync_arm(s));
    RTRY(micro_batch(rs, r, 1));
    if (extra && r == 1) {
        moe_tensor *loss = NULL;
        RTRY(add_term(&loss, rs->w[2], 2, 0, 1, 1));
        moe_status st = moe_backward(loss, NULL, false);
        moe_tensor_release(loss);
        RTRY(st);
    }
    return moe_grad_sync_wait(s);
}

moe_status grad_sync_case(int r, moe_group *world, void *ctx)
{
    (void)ctx;
    int n = moe_group_size(world);
    rank_state rs = {{0}};
    moe_grad_sync *s = NULL;
    moe_status st = make_params(&rs, r);
    if (st == MOE_OK) st = moe_grad_sync_new(&s, world, NPARAM, rs.w, DIVISOR, BUCKET_BYTES);
    if (st != MOE_OK) {
        free_params(&rs);
        return st;
    }
    /* layout: [W4] [W3 W2] [W1] [W0], started in that order */
    RCHECK(moe_grad_sync_bucket_count(s) == 4, "%d buckets", moe_grad_sync_bucket_count(s));
    static const int bucket_of[NPARAM] = {3, 2, 1, 1, 0};
    for (int p = 0; p < NPARAM; p++)
        RCHECK(moe_grad_sync_param_bucket(s, p) == bucket_of[p], "param %d in bucket %d", p,
               moe_grad_sync_param_bucket(s, p));
    RCHECK(moe_grad_sync_bucket_params(s, 1) == 2 && moe_grad_sync_bucket_buffer(s, 1)->dtype == MOE_F64 &&
               moe_tensor_numel(moe_grad_sync_bucket_buffer(s, 1)) == 6,
           "bucket 1 holds W3 and W2");
    RCHECK(moe_grad_sync_bucket_buffer(s, 0)->dtype == MOE_F32, "bucket 0 is the f32 one");

    moe_grad_sync_stats a, b;
    /* step 1: the counts are learned; nothing starts during backward */
    RTRY(step(s, &rs, r, false));
    RTRY(check_grads(&rs, n, false, "step 1"));
    moe_grad_sync_get_stats(s, &a);
    RCHECK(a.steps == 1 && a.buckets == 4 && a.buckets_early == 0 && a.buckets_stale == 0,
           "step 1: steps %lld buckets %lld early %lld stale %lld", (long long)a.steps, (long long)a.buckets,
           (long long)a.buckets_early, (long long)a.buckets_stale);
    RCHECK(a.bytes == 12 + 48 + 32 + 24, "step 1: %lld bytes", (long long)a.bytes);
    RCHECK(!moe_grad_sync_armed(s), "disarmed after wait");

    /* step 2: every bucket starts during the armed backward */
    RTRY(step(s, &rs, r, false));
    RTRY(check_grads(&rs, n, false, "step 2"));
    moe_grad_sync_get_stats(s, &b);
    RCHECK(b.steps == 2 && b.buckets - a.buckets == 4 && b.buckets_early - a.buckets_early == 4 &&
               b.buckets_stale == 0,
           "step 2: buckets %lld early %lld stale %lld", (long long)(b.buckets - a.buckets),
           (long long)(b.buckets_early - a.buckets_early), (long long)b.buckets_stale);
    RCHECK(b.comm_seconds >= b.wait_seconds && b.wait_seconds >= 0, "times: comm %g wait %g", b.comm_seconds,
           b.wait_seconds);

    /* step 3: on rank 1, W2 (no gradient last time) gets one after its
     * bucket has left: every rank reduces that bucket again */
    RTRY(step(s, &rs, r, true));
    RTRY(check_grads(&rs, n, true, "step 3"));
    moe_grad_sync_get_stats(s, &a);
    RCHECK(a.buckets_stale - b.buckets_stale == (n > 1 ? 1 : 0), "step 3: %lld stale buckets",
           (long long)(a.buckets_stale - b.buckets_stale));

    /* step 4: W2 now counts once on rank 1 but gets nothing: its bucket
     * (and the ones after it) start in wait; still exact */
    RTRY(step(s, &rs, r, false));
    RTRY(check_grads(&rs, n, false, "step 4"));
    moe_grad_sync_get_stats(s, &b);
    RCHECK(b.buckets - a.buckets == 4, "step 4: %lld buckets", (long long)(b.buckets - a.buckets));

    /* without arm, wait refuses; a second arm is fine until a bucket starts */
    RFAILS(moe_grad_sync_wait(s), MOE_ERR_STATE, "grad-sync-wait!: not armed");
    RTRY(moe_grad_sync_arm(s));
    RTRY(moe_grad_sync_arm(s));
    RTRY(micro_batch(&rs, r, 1)); /* every bucket starts: a re-arm is refused */
    RFAILS(moe_grad_sync_arm(s), MOE_ERR_STATE, "grad-sync-arm!: already armed");
    RTRY(moe_grad_sync_wait(s));

    moe_grad_sync_free(s);
    for (int p = 0; p < NPARAM; p++) RCHECK(rs.w[p]->hooks == NULL, "param %d keeps a hook after free", p);
    zero_grads(&rs);
    free_params(&rs);
    return MOE_OK;
}
