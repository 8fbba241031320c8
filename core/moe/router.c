/* router.c — the router object: its lifetime, accessors and setters, the
 * optimizer step (expert bias, quantile-balancing β) and the saved state.
 * The forward is router_forward.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "moe_internal.h"

/* The weight's draw: a counter stream of its own (router_forward.c mixes the
 * jitter's and the debug routing's). */
#define INIT_SEED_MIX 0x3c6ef372fe94f82bULL

/* ---- lifetime ------------------------------------------------------------------------ */

/* Forget the forwards recorded for recomputation (and their given ids). */
static void clear_records(moe_router *r)
{
    for (int64_t i = 0; i < r->n_rec; i++) moe_tensor_release(r->rec_given[i]);
    r->n_rec = 0;
}

static bool has_loss(const moe_router_config *c, moe_aux_kind k)
{
    for (int i = 0; i < c->n_losses; i++)
        if (c->losses[i].kind == k) return true;
    return false;
}

static moe_status make_tracker(moe_router *r)
{
    moe_balance_tracker *old = r->tracker, *tr;
    MOE_TRY(moe_balance_tracker_new(&tr, r->cfg.experts, r->cp));
    moe_status st = moe_balance_tracker_add_group(tr, r->tp);
    if (st == MOE_OK) st = moe_balance_tracker_add_group(tr, r->dp);
    if (st != MOE_OK) {
        moe_balance_tracker_free(tr);
        return st;
    }
    moe_balance_tracker_set_buffer(tr, r->cfg.global_buffer);
    if (old) {
        moe_tensor *c;
        double tok;
        st = moe_balance_tracker_counts(&c, &tok, old);
        if (st == MOE_OK) st = moe_balance_tracker_load(tr, c, tok, moe_balance_tracker_micro_batches(old));
        moe_tensor_release(c);
        if (st != MOE_OK) {
            moe_balance_tracker_free(tr);
            return st;
        }
        moe_balance_tracker_free(old);
    }
    r->tracker = tr;
    return MOE_OK;
}

/* W [E D] ~ N(0, 0.02²): a standard normal draw in DTYPE, scaled in double
 * and rounded to DTYPE again. */
static moe_status init_weight(moe_tensor **w, moe_rng *rng, moe_dtype dtype, int64_t E, int64_t D)
{
    moe_tensor *draw = NULL, *wide = NULL, *scaled = NULL;
    moe_status st = moe_tensor_randn(&draw, rng, dtype, MOE_CPU, 2, (int64_t[]){E, D});
    if (st == MOE_OK) st = moe_to_dtype(&wide, draw, MOE_F64);
    if (st == MOE_OK) st = moe_mul_scalar(&scaled, wide, 0.02);
    if (st == MOE_OK) st = moe_to_dtype(w, scaled, dtype);
    moe_tensor_release(draw);
    moe_tensor_release(wide);
    moe_tensor_release(scaled);
    return st;
}

moe_status moe_router_new(moe_router **out, const moe_router_config *cfg)
{
    *out = NULL;
    MOE_TRY(moe_router_config_validate(cfg));
    moe_router *r = calloc(1, sizeof *r);
    if (!r) return moe_fail(MOE_ERR_NOMEM, "make-router", "out of memory");
    r->cfg = *cfg;
    int64_t E = cfg->experts, D = cfg->hidden;
    r->bias_counts = calloc((size_t)E, sizeof(double));
    r->batch_counts = calloc((size_t)E, sizeof(double));
    r->step_counts = calloc((size_t)E, sizeof(double));
    r->global_counts = calloc((size_t)E, sizeof(double));
    r->ended_counts = calloc((size_t)E, sizeof(double));
    moe_status st = MOE_OK;
    if (!r->bias_counts || !r->batch_counts || !r->step_counts || !r->global_counts || !r->ended_counts)
        st = moe_fail(MOE_ERR_NOMEM, "make-router", "out of memory");
    moe_rng rng;
    moe_rng_init(&rng, cfg->seed ^ INIT_SEED_MIX);
    if (st == MOE_OK) st = init_weight(&r->weight, &rng, cfg->dtype, E, D);
    if (st == MOE_OK) st = moe_tensor_requires_grad_(r->weight, true);
    if (st == MOE_OK && cfg->expert_bias) st = moe_tensor_zeros(&r->bias, MOE_F32, MOE_CPU, 1, &E);
    if (st == MOE_OK && cfg->routing == MOE_ROUTING_QUANTILE_BALANCING) {
        st = moe_tensor_zeros(&r->qb_beta, MOE_F32, MOE_CPU, 1, &E);
        r->qb_sum = calloc((size_t)E, sizeof(double));
        if (st == MOE_OK && !r->qb_sum) st = moe_fail(MOE_ERR_NOMEM, "make-router", "out of memory");
    }
    if (st == MOE_OK && has_loss(cfg, MOE_AUX_GLOBAL_BATCH)) st = make_tracker(r);
    r->n_aux = cfg->n_losses;
    for (int i = 0; i < cfg->n_losses; i++) r->aux_kind[i] = cfg->losses[i].kind;
    if (st != MOE_OK) {
        moe_router_free(r);
        return st;
    }
    *out = r;
    return MOE_OK;
}

void moe_router_free(moe_router *r)
{
    if (!r) return;
    moe_tensor_release(r->weight);
    moe_tensor_release(r->bias);
    moe_tensor_release(r->qb_beta);
    free(r->qb_sum);
    moe_replay_free(r);
    moe_group_release(r->tp);
    moe_group_release(r->cp);
    moe_group_release(r->dp);
    moe_balance_tracker_free(r->tracker);
    clear_records(r);
    free(r->rec_offsets);
    free(r->rec_given);
    free(r->bias_counts);
    free(r->batch_counts);
    free(r->step_counts);
    free(r->global_counts);
    free(r->ended_counts);
    free(r);
}

const moe_router_config *moe_router_get_config(const moe_router *r) { return &r->cfg; }
moe_tensor *moe_router_weight(moe_router *r) { return r->weight; }
moe_tensor *moe_router_bias(moe_router *r) { return r->bias; }
moe_balance_tracker *moe_router_tracker(moe_router *r) { return r->tracker; }
moe_tensor *moe_router_qb_beta(moe_router *r) { return r->qb_beta; }
void moe_router_set_training(moe_router *r, bool training) { r->cfg.training = training; }

void moe_router_set_recomputing(moe_router *r, bool recomputing)
{
    r->recomputing = recomputing;
    if (r->tracker) moe_balance_tracker_set_recomputing(r->tracker, recomputing);
}

moe_status moe_router_set_grad_scale(moe_router *r, int64_t grad_accum, bool per_token_loss)
{
    if (grad_accum < 1)
        return moe_fail(MOE_ERR_ARG, "router-grad-scale!", "grad-accum must be >= 1, got %lld",
                        (long long)grad_accum);
    r->cfg.grad_accum = grad_accum;
    r->cfg.per_token_loss = per_token_loss;
    return MOE_OK;
}

static moe_status copy_into(const char *op, moe_tensor *dst, moe_tensor *src)
{
    MOE_CHECK_NOT_NULL(op, src);
    if (!moe_tensor_same_shape(dst, src))
        return moe_fail(MOE_ERR_SHAPE, op, "expected shape %s, got %s", moe_shape_str(dst), moe_shape_str(src));
    if (!moe_dtype_is_float(src->dtype) && dst->dtype != MOE_F64)
        return moe_fail(MOE_ERR_DTYPE, op, "expected a floating tensor, got %s", moe_dtype_name(src->dtype));
    bool prev = moe_grad_set_enabled(false);
    moe_status st = moe_tensor_copy_(dst, src);
    moe_grad_set_enabled(prev);
    return st;
}

moe_status moe_router_set_weight(moe_router *r, moe_tensor *w)
{
    MOE_TRY(copy_into("set-router-weight!", r->weight, w));
    moe_tensor_zero_grad(r->weight);
    return MOE_OK;
}

moe_status moe_router_set_bias(moe_router *r, moe_tensor *bias)
{
    if (!r->bias)
        return moe_fail(MOE_ERR_STATE, "set-router-bias!", "the router has no expert bias (#:expert-bias? #f)");
    return copy_into("set-router-bias!", r->bias, bias);
}

moe_status moe_router_set_qb_beta(moe_router *r, moe_tensor *beta)
{
    if (!r->qb_beta)
        return moe_fail(MOE_ERR_STATE, "set-router-qb-beta!",
                        "the router has no quantile-balancing bias (#:routing 'quantile-balancing)");
    return copy_into("set-router-qb-beta!", r->qb_beta, beta);
}

moe_status moe_router_set_groups(moe_router *r, moe_group *tp, moe_group *cp, moe_group *dp)
{
    moe_group *old[3] = {r->tp, r->cp, r->dp};
    r->tp = moe_group_retain(tp);
    r->cp = moe_group_retain(cp);
    r->dp = moe_group_retain(dp);
    for (int i = 0; i < 3; i++) moe_group_release(old[i]);
    return r->tracker ? make_tracker(r) : MOE_OK;
}

/* ---- optimizer step ---------------------------------------------------------------------- */

moe_status moe_router_step(moe_router *r)
{
    int64_t E = r->cfg.experts;
    double *buf = malloc(sizeof(double) * (size_t)(2 * (E + 1))); /* [bias counts, tok | step counts, tok] */
    if (!buf) return moe_fail(MOE_ERR_NOMEM, "router-step!", "out of memory");
    memcpy(buf, r->bias_counts, sizeof(double) * (size_t)E);
    buf[E] = r->bias_tokens;
    memcpy(buf + E + 1, r->step_counts, sizeof(double) * (size_t)E);
    buf[2 * E + 1] = r->step_tokens;
    moe_status st = MOE_OK;
    moe_group *groups[3] = {r->cp, r->tp, r->dp};
    for (int g = 0; g < 3 && st == MOE_OK; g++) {
        if (moe_group_size(groups[g]) <= 1) continue;
        moe_tensor *t;
        int64_t n = 2 * (E + 1);
        st = moe_tensor_from_data(&t, MOE_F64, MOE_CPU, 1, &n, buf);
        if (st == MOE_OK) st = moe_all_reduce_(t, MOE_REDUCE_SUM, groups[g]);
        if (st == MOE_OK) memcpy(buf, moe_tensor_data(t), sizeof(double) * (size_t)n);
        moe_tensor_release(t);
    }
    /* quantile balancing: the step's quantiles summed over dp (every tp×cp rank
     * computed the same ones from the gathered logits) */
    double *qb = NULL;
    if (st == MOE_OK && r->qb_beta) {
        qb = malloc(sizeof(double) * (size_t)(E + 1));
        if (!qb) st = moe_fail(MOE_ERR_NOMEM, "router-step!", "out of memory");
    }
    if (st == MOE_OK && qb) {
        memcpy(qb, r->qb_sum, sizeof(double) * (size_t)E);
        qb[E] = r->qb_micro;
        if (moe_group_size(r->dp) > 1) {
            moe_tensor *t;
            int64_t n = E + 1;
            st = moe_tensor_from_data(&t, MOE_F64, MOE_CPU, 1, &n, qb);
            if (st == MOE_OK) st = moe_all_reduce_(t, MOE_REDUCE_SUM, r->dp);
            if (st == MOE_OK) memcpy(qb, moe_tensor_data(t), sizeof(double) * (size_t)n);
            moe_tensor_release(t);
        }
    }
    if (st != MOE_OK) {
        free(buf);
        free(qb);
        return st;
    }
    if (qb && qb[E] > 0) {
        for (int64_t e = 0; e < E; e++) qb[e] /= qb[E];
        moe_qb_update(moe_tensor_data(r->qb_beta), qb, E, r->cfg.qb_ema);
        moe_tensor_bump_version(r->qb_beta);
    }
    if (qb) {
        memset(r->qb_sum, 0, sizeof(double) * (size_t)E);
        r->qb_micro = 0;
    }
    free(qb);
    if (r->bias && r->cfg.training) {
        double mean = 0, dmean = 0;
        for (int64_t e = 0; e < E; e++) mean += buf[e];
        mean /= (double)E;
        /* the bias is f32: the update is f32 arithmetic, as in the references */
        float *d = malloc(sizeof(float) * (size_t)E);
        if (!d) {
            free(buf);
            return moe_fail(MOE_ERR_NOMEM, "router-step!", "out of memory");
        }
        for (int64_t e = 0; e < E; e++) {
            double off = mean - buf[e];
            d[e] = (float)(r->cfg.bias_rate * (double)((off > 0) - (off < 0)));
            dmean += d[e];
        }
        float dm = (float)(dmean / (double)E);
        float *b = moe_tensor_data(r->bias);
        for (int64_t e = 0; e < E; e++) b[e] = b[e] + (r->cfg.bias_center ? d[e] - dm : d[e]);
        moe_tensor_bump_version(r->bias);
        free(d);
    }
    memcpy(r->global_counts, buf + E + 1, sizeof(double) * (size_t)E);
    r->have_global = true;
    free(buf);
    /* the closed step window stays visible to the metrics */
    memcpy(r->ended_counts, r->step_counts, sizeof(double) * (size_t)E);
    r->ended_tokens = r->step_tokens;
    r->ended_dropped = r->step_dropped;
    r->ended_entropy = r->step_entropy;
    r->ended_mass = r->step_mass;
    r->ended_micro = r->step_micro;
    memcpy(r->ended_aux, r->step_aux, sizeof r->ended_aux);
    memset(r->bias_counts, 0, sizeof(double) * (size_t)E);
    memset(r->step_counts, 0, sizeof(double) * (size_t)E);
    r->bias_tokens = r->step_tokens = r->step_dropped = r->step_entropy = r->step_mass = 0;
    r->step_micro = 0;
    memset(r->step_aux, 0, sizeof r->step_aux);
    if (r->tracker) moe_balance_tracker_reset(r->tracker);
    clear_records(r);
    r->rec_cursor = 0;
    r->steps++;
    return MOE_OK;
}

/* ---- state ---------------------------------------------------------------------------------- */

moe_status moe_router_state_save(moe_router *r, moe_tensor **bias, moe_tensor **counters)
{
    *counters = NULL;
    if (bias) *bias = NULL;
    int64_t E = r->cfg.experts;
    int64_t rows = r->qb_sum ? 4 : 3;
    double *buf = calloc((size_t)(rows * (E + 1)), sizeof(double)); /* [rows E+1] */
    if (!buf) return moe_fail(MOE_ERR_NOMEM, "router-state", "out of memory");
    memcpy(buf, r->bias_counts, sizeof(double) * (size_t)E);
    buf[E] = r->bias_tokens;
    if (r->tracker) memcpy(buf + E + 1, moe_tracker_buffer(r->tracker), sizeof(double) * (size_t)(E + 1));
    memcpy(buf + 2 * (E + 1), r->step_counts, sizeof(double) * (size_t)E);
    buf[3 * (E + 1) - 1] = r->step_tokens;
    if (r->qb_sum) {
        /* the quantiles summed over the step's micro-batches so far, then their count */
        memcpy(buf + 3 * (E + 1), r->qb_sum, sizeof(double) * (size_t)E);
        buf[4 * (E + 1) - 1] = r->qb_micro;
    }
    moe_status st = moe_tensor_from_data(counters, MOE_F64, MOE_CPU, 2, (int64_t[]){rows, E + 1}, buf);
    free(buf);
    if (st == MOE_OK && bias && r->bias) st = moe_clone(bias, r->bias);
    if (st != MOE_OK) {
        moe_tensor_release(*counters);
        *counters = NULL;
    }
    return st;
}

void moe_router_rng_state(const moe_router *r, uint64_t *seed, uint64_t *position)
{
    *seed = r->cfg.seed;
    *position = r->rng_next;
}

void moe_router_set_rng_state(moe_router *r, uint64_t seed, uint64_t position)
{
    r->cfg.seed = seed;
    r->rng_next = position;
}

moe_status moe_router_state_load(moe_router *r, moe_tensor *bias, moe_tensor *counters)
{
    const char *op = "router-load-state!";
    int64_t E = r->cfg.experts;
    if (bias && !r->bias) return moe_fail(MOE_ERR_STATE, op, "the router has no expert bias to load");
    if (bias && (bias->ndim != 1 || bias->shape[0] != E))
        return moe_fail(MOE_ERR_SHAPE, op, "bias must be [%lld], got %s", (long long)E, moe_shape_str(bias));
    double *buf = NULL;
    int64_t rows = 0;
    if (counters) {
        if (counters->ndim != 2 || (counters->shape[0] != 3 && counters->shape[0] != 4) ||
            counters->shape[1] != E + 1)
            return moe_fail(MOE_ERR_SHAPE, op, "counters must be [%d %lld]%s, got %s", r->qb_sum ? 4 : 3,
                            (long long)(E + 1), r->qb_sum ? " (or 3 rows, without the quantile sums)" : "",
                            moe_shape_str(counters));
        rows = counters->shape[0];
        if (rows == 4 && !r->qb_sum)
            return moe_fail(MOE_ERR_STATE, op, "counters %s hold quantile-balancing sums but the router "
                            "does not route by quantile balancing", moe_shape_str(counters));
        buf = malloc(sizeof(double) * (size_t)(rows * (E + 1)));
        if (!buf) return moe_fail(MOE_ERR_NOMEM, op, "out of memory");
        moe_status st = moe_tensor_to_doubles(counters, buf);
        if (st != MOE_OK) {
            free(buf);
            return st;
        }
    }
    if (bias) {
        moe_status st = copy_into(op, r->bias, bias);
        if (st != MOE_OK) {
            free(buf);
            return st;
        }
    }
    if (buf) {
        memcpy(r->bias_counts, buf, sizeof(double) * (size_t)E);
        r->bias_tokens = buf[E];
        if (r->tracker) {
            moe_tensor *tc = NULL;
            moe_status st = moe_tensor_from_data(&tc, MOE_F64, MOE_CPU, 1, &E, buf + E + 1);
            if (st == MOE_OK) st = moe_balance_tracker_load(r->tracker, tc, buf[2 * E + 1], 0);
            moe_tensor_release(tc);
            if (st != MOE_OK) {
                free(buf);
                return st;
            }
        }
        memcpy(r->step_counts, buf + 2 * (E + 1), sizeof(double) * (size_t)E);
        r->step_tokens = buf[3 * (E + 1) - 1];
        if (r->qb_sum) {
            /* three rows (a state saved before the sums were): none accumulated */
            for (int64_t e = 0; e < E; e++) r->qb_sum[e] = rows == 4 ? buf[3 * (E + 1) + e] : 0.0;
            r->qb_micro = rows == 4 ? buf[4 * (E + 1) - 1] : 0.0;
        }
        free(buf);
    }
    return MOE_OK;
}
