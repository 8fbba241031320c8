/* grad_sync.c — bucketed data-parallel gradient all-reduce, started from
 * leaf gradient hooks during the last micro-batch's backward (see
 * grad_sync.h for the contract).
 *
 * State of an armed step, per parameter p: count[p] contributions seen so
 * far, and whether its hook wrote its slice of the bucket buffer; per
 * bucket: how many of its parameters are complete, whether its all-reduce
 * has started (in bucket order: next_start) and whether a contribution came
 * after that (stale). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "grad_sync.h"

#include "../autograd.h"
#include "../internal.h"
#include "../ops.h"

typedef struct param_slot {
    moe_grad_sync *s;
    int p;
} param_slot;

typedef struct bucket {
    moe_tensor *buf;     /* [numel] flat, the params' dtype and device */
    moe_tensor *divisor; /* 0-d, same dtype and device */
    int n;               /* parameters */
    int *members;        /* [n] parameter indices, in bucket order */
    int64_t numel;
    int ready;           /* complete parameters in this armed step */
    bool started;
    bool stale;
    moe_work *work;      /* in flight, or NULL */
} bucket;

struct moe_grad_sync {
    moe_group *group;
    int n;
    moe_tensor **params;    /* [n] retained */
    moe_tensor **slices;    /* [n] views of the bucket buffers, param-shaped */
    param_slot *slots;      /* [n] hook contexts */
    int *hook_ids;          /* [n] 0: none */
    int *bucket_of;         /* [n] */
    int64_t *count;         /* [n] contributions in this armed backward */
    int64_t *expected;      /* [n] contributions in the previous armed backward */
    bool *written;          /* [n] the hook wrote the slice in this armed step */
    int nb;
    bucket *b;              /* [nb] in start order */
    moe_tensor *stale_flags; /* i32 [nb] on the host */
    double divisor;
    bool armed;
    bool learned;           /* expected[] holds the counts of an armed backward */
    int next_start;         /* buckets [0, next_start) have started */
    moe_status failed;      /* a collective failed during backward */
    char failure[512];
    moe_grad_sync_stats stats;
};

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- packing ---------------------------------------------------------------- */

/* Slice of P ← P's accumulated gradient (zeros when it has none). */
static moe_status pack_from_grad(moe_grad_sync *s, int p)
{
    moe_tensor *g = moe_tensor_grad(s->params[p]);
    moe_status st = g ? moe_tensor_copy_(s->slices[p], g) : moe_tensor_fill_(s->slices[p], 0.0);
    moe_tensor_release(g);
    return st;
}

/* Slice of P ← accumulated gradient + INCOMING (not yet accumulated). */
static moe_status pack_with_incoming(moe_grad_sync *s, int p, moe_tensor *incoming)
{
    moe_tensor *acc = moe_tensor_grad(s->params[p]), *sum = NULL;
    moe_status st = MOE_OK;
    if (acc) st = moe_add(&sum, acc, incoming);
    if (st == MOE_OK) st = moe_tensor_copy_(s->slices[p], sum ? sum : incoming);
    moe_tensor_release(sum);
    moe_tensor_release(acc);
    return st;
}

/* ---- starting buckets ----------------------------------------------------- */

static const char *bucket_text(const moe_grad_sync *s, int i)
{
    static _Thread_local char text[160];
    const bucket *b = &s->b[i];
    snprintf(text, sizeof text, "bucket %d of %d (%d parameter%s, %s, %lld bytes)", i, s->nb, b->n,
             b->n == 1 ? "" : "s", moe_dtype_name(b->buf->dtype),
             (long long)moe_tensor_nbytes(b->buf));
    return text;
}

/* Start bucket I's all-reduce (its buffer is packed). */
static moe_status start_bucket(moe_grad_sync *s, int i, bool early)
{
    bucket *b = &s->b[i];
    double t0 = now_seconds();
    moe_status st = moe_all_reduce_async_(&b->work, b->buf, MOE_REDUCE_SUM, s->group);
    if (st == MOE_OK && moe_work_done(b->work)) { /* ran eagerly: its failure shows now */
        st = moe_work_wait(b->work);
        b->work = NULL;
    }
    s->stats.comm_seconds += now_seconds() - t0;
    b->started = true;
    s->next_start = i + 1;
    s->stats.buckets++;
    s->stats.bytes += (int64_t)moe_tensor_nbytes(b->buf);
    if (early) s->stats.buckets_early++;
    return st;
}

/* Record a collective's failure during backward (for wait) and report it. */
static moe_status fail_in_backward(moe_grad_sync *s, moe_status st, int i)
{
    char cause[400];
    snprintf(cause, sizeof cause, "%s", moe_last_error());
    snprintf(s->failure, sizeof s->failure, "the all-reduce of %s started during backward failed: %s",
             bucket_text(s, i), cause);
    s->failed = st;
    return moe_fail(st, "grad-sync", "%s", s->failure);
}

/* Start every complete bucket whose predecessors have all started. */
static moe_status start_ready(moe_grad_sync *s)
{
    while (s->next_start < s->nb) {
        int i = s->next_start;
        bucket *b = &s->b[i];
        if (b->ready < b->n) break;
        moe_status st = MOE_OK;
        for (int k = 0; k < b->n && st == MOE_OK; k++)
            if (!s->written[b->members[k]]) st = pack_from_grad(s, b->members[k]);
        if (st == MOE_OK) st = start_bucket(s, i, true);
        if (st != MOE_OK) return fail_in_backward(s, st, i);
    }
    return MOE_OK;
}

/* Check on the buckets in flight: a backend that overlaps moves on only
 * inside its calls (MPI), and a finished one can be let go now. */
static moe_status poll_started(moe_grad_sync *s)
{
    for (int i = 0; i < s->next_start; i++) {
        bucket *b = &s->b[i];
        if (!b->work || !moe_work_done(b->work)) continue;
        double t0 = now_seconds();
        moe_status st = moe_work_wait(b->work);
        b->work = NULL;
        s->stats.comm_seconds += now_seconds() - t0;
        if (st != MOE_OK) return fail_in_backward(s, st, i);
    }
    return MOE_OK;
}

/* The gradient hook of parameter slot CTX: sees each contribution before it
 * is accumulated into the leaf. */
static moe_status sync_hook(moe_tensor **grad, void *ctx)
{
    param_slot *slot = ctx;
    moe_grad_sync *s = slot->s;
    int p = slot->p;
    if (!s->armed || s->failed != MOE_OK) return MOE_OK;
    s->count[p]++;
    if (!s->learned) return MOE_OK;
    MOE_TRY(poll_started(s));
    if (s->count[p] < s->expected[p]) return MOE_OK;
    bucket *b = &s->b[s->bucket_of[p]];
    if (b->started) { /* more than last time: wait() reduces the bucket again */
        b->stale = true;
        return MOE_OK;
    }
    moe_status st = pack_with_incoming(s, p, *grad);
    if (st != MOE_OK) {
        s->failed = st;
        snprintf(s->failure, sizeof s->failure, "packing a gradient into %s failed: %s",
                 bucket_text(s, s->bucket_of[p]), moe_last_error());
        return moe_fail(st, "grad-sync", "%s", s->failure);
    }
    s->written[p] = true;
    if (s->count[p] == s->expected[p]) b->ready++;
    return start_ready(s);
}

/* ---- construction --------------------------------------------------------- */

static int cmp_desc_first(const void *a, const void *b)
{
    /* buckets by their lowest parameter index, highest first: the order in
     * which a reverse walk completes them */
    const bucket *x = a, *y = b;
    int mx = x->members[x->n - 1], my = y->members[y->n - 1];
    return (mx < my) - (mx > my);
}

static moe_status check_params(int n, moe_tensor *const *params, double divisor, int64_t bucket_bytes)
{
    const char *op = "make-grad-sync";
    if (n < 1 || !params) return moe_fail(MOE_ERR_ARG, op, "no parameters given (%d)", n);
    if (!(divisor > 0) || !isfinite(divisor))
        return moe_fail(MOE_ERR_ARG, op, "divisor %g is not a positive finite number", divisor);
    if (bucket_bytes < 0)
        return moe_fail(MOE_ERR_ARG, op, "bucket size %lld bytes is negative (0: the default, %lld)",
                        (long long)bucket_bytes, (long long)MOE_GRAD_SYNC_DEFAULT_BUCKET_BYTES);
    for (int p = 0; p < n; p++) {
        const moe_tensor *t = params[p];
        if (!t) return moe_fail(MOE_ERR_ARG, op, "parameter %d is NULL", p);
        if (!t->requires_grad)
            return moe_fail(MOE_ERR_ARG, op, "parameter %d (%s %s) does not require grad", p,
                            moe_dtype_name(t->dtype), moe_shape_str(t));
        if (t->grad_fn)
            return moe_fail(MOE_ERR_ARG, op, "parameter %d (%s %s) is not a leaf: it was computed by '%s'", p,
                            moe_dtype_name(t->dtype), moe_shape_str(t), t->grad_fn->name);
        for (int q = 0; q < p; q++)
            if (params[q] == t)
                return moe_fail(MOE_ERR_ARG, op, "parameter %d (%s %s) is parameter %d again", p,
                                moe_dtype_name(t->dtype), moe_shape_str(t), q);
    }
    return MOE_OK;
}

/* Group the parameters into buckets (reverse order, one dtype and device
 * each, closing at CAP bytes) and sort them into start order. */
static moe_status make_buckets(moe_grad_sync *s, int64_t cap)
{
    const char *op = "make-grad-sync";
    int *open = malloc(sizeof *open * (size_t)s->n); /* open bucket per param key, -1: closed */
    s->b = calloc((size_t)s->n, sizeof *s->b);        /* at most one bucket per parameter */
    int64_t *bytes = calloc((size_t)s->n, sizeof *bytes);
    if (!open || !s->b || !bytes) {
        free(open);
        free(bytes);
        return moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of bucket tables (%d parameters)",
                        (sizeof *open + sizeof *s->b + sizeof *bytes) * (size_t)s->n, s->n);
    }
    int nopen = 0;
    moe_status st = MOE_OK;
    for (int p = s->n - 1; p >= 0 && st == MOE_OK; p--) {
        const moe_tensor *t = s->params[p];
        int i = -1, k;
        for (k = 0; k < nopen; k++) {
            const moe_tensor *first = s->params[s->b[open[k]].members[0]];
            if (first->dtype == t->dtype && first->device == t->device) {
                i = open[k];
                break;
            }
        }
        if (i < 0) {
            i = s->nb++;
            s->b[i].members = malloc(sizeof(int) * (size_t)(p + 1));
            if (!s->b[i].members) {
                st = moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of bucket %d's members",
                              sizeof(int) * (size_t)(p + 1), i);
                break;
            }
            k = nopen;
            open[nopen++] = i;
        }
        bucket *b = &s->b[i];
        b->members[b->n++] = p;
        b->numel += moe_tensor_numel(t);
        bytes[i] += (int64_t)moe_tensor_nbytes(t);
        if (bytes[i] >= cap) open[k] = open[--nopen]; /* full: closed */
    }
    free(open);
    free(bytes);
    if (st != MOE_OK) return st;
    qsort(s->b, (size_t)s->nb, sizeof *s->b, cmp_desc_first);
    /* buffers, and each parameter's slice of its bucket's buffer */
    MOE_NO_GRAD_BEGIN;
    for (int i = 0; i < s->nb && st == MOE_OK; i++) {
        bucket *b = &s->b[i];
        const moe_tensor *first = s->params[b->members[0]];
        st = moe_tensor_zeros(&b->buf, first->dtype, first->device, 1, (int64_t[]){b->numel});
        if (st == MOE_OK) st = moe_tensor_scalar(&b->divisor, first->dtype, first->device, s->divisor);
        int64_t off = 0;
        for (int k = 0; k < b->n && st == MOE_OK; k++) {
            int p = b->members[k];
            moe_tensor *t = s->params[p], *flat = NULL;
            int64_t len = moe_tensor_numel(t);
            s->bucket_of[p] = i;
            st = moe_narrow(&flat, b->buf, 0, off, len);
            if (st == MOE_OK) st = moe_view(&s->slices[p], flat, t->ndim, t->shape);
            moe_tensor_release(flat);
            off += len;
        }
    }
    MOE_NO_GRAD_END;
    if (st == MOE_OK) st = moe_tensor_zeros(&s->stale_flags, MOE_I32, MOE_CPU, 1, (int64_t[]){s->nb});
    return st;
}

moe_status moe_grad_sync_new(moe_grad_sync **out, moe_group *group, int n, moe_tensor *const *params,
                             double divisor, int64_t bucket_bytes)
{
    *out = NULL;
    MOE_TRY(check_params(n, params, divisor, bucket_bytes));
    moe_grad_sync *s = calloc(1, sizeof *s);
    if (!s) return moe_fail(MOE_ERR_NOMEM, "make-grad-sync", "out of memory for %zu bytes of a grad sync", sizeof *s);
    s->n = n;
    s->divisor = divisor;
    s->params = calloc((size_t)n, sizeof *s->params);
    s->slices = calloc((size_t)n, sizeof *s->slices);
    s->slots = calloc((size_t)n, sizeof *s->slots);
    s->hook_ids = calloc((size_t)n, sizeof *s->hook_ids);
    s->bucket_of = calloc((size_t)n, sizeof *s->bucket_of);
    s->count = calloc((size_t)n, sizeof *s->count);
    s->expected = calloc((size_t)n, sizeof *s->expected);
    s->written = calloc((size_t)n, sizeof *s->written);
    if (!s->params || !s->slices || !s->slots || !s->hook_ids || !s->bucket_of || !s->count || !s->expected ||
        !s->written) {
        moe_grad_sync_free(s);
        return moe_fail(MOE_ERR_NOMEM, "make-grad-sync", "out of memory for %zu bytes of per-parameter state "
                        "(%d parameters)", (sizeof *s->params + sizeof *s->slices + sizeof *s->slots +
                        sizeof *s->hook_ids + sizeof *s->bucket_of + sizeof *s->count + sizeof *s->expected +
                        sizeof *s->written) * (size_t)n, n);
    }
    s->group = moe_group_retain(group);
    for (int p = 0; p < n; p++) s->params[p] = moe_tensor_retain(params[p]);
    moe_status st = make_buckets(s, bucket_bytes ? bucket_bytes : MOE_GRAD_SYNC_DEFAULT_BUCKET_BYTES);
    for (int p = 0; p < n && st == MOE_OK; p++) {
        s->slots[p] = (param_slot){s, p};
        st = moe_tensor_register_hook(s->params[p], sync_hook, &s->slots[p], NULL, &s->hook_ids[p]);
        if (st != MOE_OK) st = moe_fail(st, "make-grad-sync", "parameter %d: %s", p, moe_last_error());
    }
    if (st != MOE_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", moe_last_error());
        moe_grad_sync_free(s);
        return moe_fail(st, "make-grad-sync", "%s", msg);
    }
    *out = s;
    return MOE_OK;
}

/* Wait for the work in flight (statuses dropped). */
static void drain(moe_grad_sync *s)
{
    for (int i = 0; i < s->nb; i++) {
        moe_work_wait(s->b[i].work);
        s->b[i].work = NULL;
    }
}

void moe_grad_sync_free(moe_grad_sync *s)
{
    if (!s) return;
    if (s->b) drain(s);
    for (int p = 0; p < s->n; p++) {
        if (s->hook_ids && s->hook_ids[p] && s->params[p]) moe_tensor_remove_hook(s->params[p], s->hook_ids[p]);
        if (s->params) moe_tensor_release(s->params[p]);
        if (s->slices) moe_tensor_release(s->slices[p]);
    }
    for (int i = 0; i < s->nb; i++) {
        moe_tensor_release(s->b[i].buf);
        moe_tensor_release(s->b[i].divisor);
        free(s->b[i].members);
    }
    free(s->b);
    moe_tensor_release(s->stale_flags);
    moe_group_release(s->group);
    free(s->params);
    free(s->slices);
    free(s->slots);
    free(s->hook_ids);
    free(s->bucket_of);
    free(s->count);
    free(s->expected);
    free(s->written);
    free(s);
}

/* ---- a step ----------------------------------------------------------------- */

moe_status moe_grad_sync_arm(moe_grad_sync *s)
{
    if (!s) return moe_fail(MOE_ERR_ARG, "grad-sync-arm!", "grad sync is NULL");
    if (s->armed && s->next_start > 0)
        return moe_fail(MOE_ERR_STATE, "grad-sync-arm!", "already armed, and %d of %d buckets have started: "
                        "call grad-sync-wait! to finish the step", s->next_start, s->nb);
    s->armed = true;
    s->failed = MOE_OK;
    s->failure[0] = '\0';
    s->next_start = 0;
    for (int p = 0; p < s->n; p++) {
        s->count[p] = 0;
        s->written[p] = false;
    }
    for (int i = 0; i < s->nb; i++) {
        bucket *b = &s->b[i];
        b->started = b->stale = false;
        b->ready = 0;
        if (s->learned) /* parameters that got nothing last time are complete already */
            for (int k = 0; k < b->n; k++) b->ready += s->expected[b->members[k]] == 0;
    }
    return MOE_OK;
}

/* Reduce again the buckets that any rank found stale (collective: the flags
 * are agreed first). */
static moe_status reduce_stale(moe_grad_sync *s, int *bad)
{
    int32_t *flags = moe_tensor_data(s->stale_flags);
    for (int i = 0; i < s->nb; i++) flags[i] = s->b[i].stale;
    moe_tensor_bump_version(s->stale_flags);
    *bad = -1;
    MOE_TRY(moe_all_reduce_(s->stale_flags, MOE_REDUCE_MAX, s->group));
    for (int i = 0; i < s->nb; i++) {
        if (!flags[i]) continue;
        bucket *b = &s->b[i];
        *bad = i;
        for (int k = 0; k < b->n; k++) MOE_TRY(pack_from_grad(s, b->members[k]));
        MOE_TRY(moe_all_reduce_(b->buf, MOE_REDUCE_SUM, s->group));
        s->stats.buckets++;
        s->stats.buckets_stale++;
        s->stats.bytes += (int64_t)moe_tensor_nbytes(b->buf);
    }
    *bad = -1;
    return MOE_OK;
}

/* The reduced gradients divided by the divisor, into GRADS [n] (new). */
static moe_status unpack(moe_grad_sync *s, moe_tensor **grads)
{
    moe_status st = MOE_OK;
    MOE_NO_GRAD_BEGIN;
    for (int p = 0; p < s->n && st == MOE_OK; p++)
        st = moe_div(&grads[p], s->slices[p], s->b[s->bucket_of[p]].divisor);
    MOE_NO_GRAD_END;
    return st;
}

static void disarm(moe_grad_sync *s)
{
    s->armed = false;
    s->next_start = 0;
    for (int i = 0; i < s->nb; i++) s->b[i].started = s->b[i].stale = false;
}

moe_status moe_grad_sync_wait(moe_grad_sync *s)
{
    const char *op = "grad-sync-wait!";
    if (!s) return moe_fail(MOE_ERR_ARG, op, "grad sync is NULL");
    if (!s->armed)
        return moe_fail(MOE_ERR_STATE, op, "not armed: call grad-sync-arm! before the backward of the "
                        "step's last micro-batch");
    moe_status st = s->failed;
    char why[640] = "";
    if (st != MOE_OK) snprintf(why, sizeof why, "%s", s->failure);
    double t0 = now_seconds();
    /* the rest, packed from the final gradients, in bucket order */
    for (int i = s->next_start; i < s->nb && st == MOE_OK; i++) {
        bucket *b = &s->b[i];
        for (int k = 0; k < b->n && st == MOE_OK; k++) st = pack_from_grad(s, b->members[k]);
        if (st == MOE_OK) st = start_bucket(s, i, false);
        if (st != MOE_OK) {
            char cause[400];
            snprintf(cause, sizeof cause, "%s", moe_last_error());
            snprintf(why, sizeof why, "the all-reduce of %s failed: %s", bucket_text(s, i), cause);
        }
    }
    for (int i = 0; i < s->nb; i++) {
        bucket *b = &s->b[i];
        if (!b->work) continue;
        moe_status ws = moe_work_wait(b->work);
        b->work = NULL;
        if (ws != MOE_OK && st == MOE_OK) {
            st = ws;
            char cause[400];
            snprintf(cause, sizeof cause, "%s", moe_last_error());
            snprintf(why, sizeof why, "the all-reduce of %s failed: %s", bucket_text(s, i), cause);
        }
    }
    if (st == MOE_OK && s->learned) { /* only then can a bucket have left early */
        int bad;
        st = reduce_stale(s, &bad);
        if (st != MOE_OK) {
            char cause[400];
            snprintf(cause, sizeof cause, "%s", moe_last_error());
            if (bad >= 0)
                snprintf(why, sizeof why, "reducing stale %s again failed: %s", bucket_text(s, bad), cause);
            else
                snprintf(why, sizeof why, "agreeing on stale buckets failed: %s", cause);
        }
    }
    double dt = now_seconds() - t0;
    s->stats.wait_seconds += dt;
    s->stats.comm_seconds += dt;
    moe_tensor **grads = NULL;
    if (st == MOE_OK) {
        grads = calloc((size_t)s->n, sizeof *grads);
        if (!grads)
            st = moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of gradient pointers (%d parameters)",
                          sizeof *grads * (size_t)s->n, s->n);
        else st = unpack(s, grads);
        if (st != MOE_OK) snprintf(why, sizeof why, "%s", moe_last_error());
    }
    if (st == MOE_OK) {
        for (int p = 0; p < s->n; p++) moe_tensor_set_grad(s->params[p], grads[p]);
        memcpy(s->expected, s->count, sizeof *s->count * (size_t)s->n);
        s->learned = true;
        s->stats.steps++;
    }
    if (grads)
        for (int p = 0; p < s->n; p++) moe_tensor_release(grads[p]);
    free(grads);
    disarm(s);
    if (st != MOE_OK) return moe_fail(st, op, "%s", why);
    return MOE_OK;
}

/* ---- inspection ------------------------------------------------------------- */

void moe_grad_sync_get_stats(const moe_grad_sync *s, moe_grad_sync_stats *out)
{
    *out = s ? s->stats : (moe_grad_sync_stats){0};
}

int moe_grad_sync_bucket_count(const moe_grad_sync *s) { return s ? s->nb : 0; }

moe_tensor *moe_grad_sync_bucket_buffer(const moe_grad_sync *s, int i)
{
    return s && i >= 0 && i < s->nb ? s->b[i].buf : NULL;
}

int moe_grad_sync_bucket_params(const moe_grad_sync *s, int i)
{
    return s && i >= 0 && i < s->nb ? s->b[i].n : 0;
}

int moe_grad_sync_param_count(const moe_grad_sync *s) { return s ? s->n : 0; }

moe_tensor *moe_grad_sync_param(const moe_grad_sync *s, int p)
{
    return s && p >= 0 && p < s->n ? s->params[p] : NULL;
}

int moe_grad_sync_param_bucket(const moe_grad_sync *s, int p)
{
    return s && p >= 0 && p < s->n ? s->bucket_of[p] : -1;
}

bool moe_grad_sync_armed(const moe_grad_sync *s) { return s && s->armed; }
