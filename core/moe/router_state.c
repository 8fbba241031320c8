/* router_state.c — the router's state across steps: the optimizer step
 * (the expert-bias update, quantile balancing's β, the closed step window
 * the metrics read) and the state a checkpoint saves and loads. */
#include <stdlib.h>
#include <string.h>

#include "moe_internal.h"

/* ---- optimizer step ---------------------------------------------------------------------- */

moe_status moe_router_step(moe_router *r)
{
    int64_t E = r->cfg.experts;
    double *buf = malloc(sizeof(double) * (size_t)(2 * (E + 1))); /* [bias counts, tok | step counts, tok] */
    if (!buf) return moe_fail_nomem("router-step!", sizeof(double) * (size_t)(2 * (E + 1)), "the step's counts");
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
        if (!qb) st = moe_fail_nomem("router-step!", sizeof(double) * (size_t)(E + 1), "the step's quantiles");
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
            return moe_fail_nomem("router-step!", sizeof(float) * (size_t)E, "the expert-bias update");
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
    moe_router_clear_recomputation(r);
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
    if (!buf) return moe_fail_nomem("router-state", sizeof(double) * (size_t)(rows * (E + 1)), "the router's counters");
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
        if (!buf) return moe_fail_nomem(op, sizeof(double) * (size_t)(rows * (E + 1)), "the counters");
        moe_status st = moe_tensor_to_doubles(counters, buf);
        if (st != MOE_OK) {
            free(buf);
            return st;
        }
    }
    if (bias) {
        moe_status st = moe_router_copy_into(op, r->bias, bias);
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
