/* router.c — the router object: its lifetime, accessors and setters. The
 * forward is router_forward.c; the optimizer step and the saved state are
 * router_state.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "moe_internal.h"

/* The weight's draw: a counter stream of its own (router_forward.c mixes the
 * jitter's and the debug routing's). */
#define INIT_SEED_MIX 0x3c6ef372fe94f82bULL

/* ---- lifetime ------------------------------------------------------------------------ */

void moe_router_clear_recomputation(moe_router *r)
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
    if (!r) return moe_fail_nomem("make-router", sizeof *r, "the router");
    r->cfg = *cfg;
    int64_t E = cfg->experts, D = cfg->hidden;
    r->bias_counts = calloc((size_t)E, sizeof(double));
    r->batch_counts = calloc((size_t)E, sizeof(double));
    r->step_counts = calloc((size_t)E, sizeof(double));
    r->global_counts = calloc((size_t)E, sizeof(double));
    r->ended_counts = calloc((size_t)E, sizeof(double));
    moe_status st = MOE_OK;
    if (!r->bias_counts || !r->batch_counts || !r->step_counts || !r->global_counts || !r->ended_counts)
        st = moe_fail_nomem("make-router", 5 * sizeof(double) * (size_t)E, "the router's expert counters");
    moe_rng rng;
    moe_rng_init(&rng, cfg->seed ^ INIT_SEED_MIX);
    if (st == MOE_OK) st = init_weight(&r->weight, &rng, cfg->dtype, E, D);
    if (st == MOE_OK) st = moe_tensor_requires_grad_(r->weight, true);
    if (st == MOE_OK && cfg->expert_bias) st = moe_tensor_zeros(&r->bias, MOE_F32, MOE_CPU, 1, &E);
    if (st == MOE_OK && cfg->routing == MOE_ROUTING_QUANTILE_BALANCING) {
        st = moe_tensor_zeros(&r->qb_beta, MOE_F32, MOE_CPU, 1, &E);
        r->qb_sum = calloc((size_t)E, sizeof(double));
        if (st == MOE_OK && !r->qb_sum)
            st = moe_fail_nomem("make-router", sizeof(double) * (size_t)E, "the quantile sums");
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
    moe_router_clear_recomputation(r);
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
        return moe_fail(MOE_ERR_ARG, "router-set-grad-scale!", "grad-accum must be >= 1, got %lld",
                        (long long)grad_accum);
    r->cfg.grad_accum = grad_accum;
    r->cfg.per_token_loss = per_token_loss;
    return MOE_OK;
}

moe_status moe_router_copy_into(const char *op, moe_tensor *dst, moe_tensor *src)
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
    MOE_TRY(moe_router_copy_into("set-router-weight!", r->weight, w));
    moe_tensor_zero_grad(r->weight);
    return MOE_OK;
}

moe_status moe_router_set_bias(moe_router *r, moe_tensor *bias)
{
    if (!r->bias)
        return moe_fail(MOE_ERR_STATE, "set-router-bias!", "the router has no expert bias (#:expert-bias? #f)");
    return moe_router_copy_into("set-router-bias!", r->bias, bias);
}

moe_status moe_router_set_qb_beta(moe_router *r, moe_tensor *beta)
{
    if (!r->qb_beta)
        return moe_fail(MOE_ERR_STATE, "set-router-qb-beta!",
                        "the router has no quantile-balancing bias (#:routing 'quantile-balancing)");
    return moe_router_copy_into("set-router-qb-beta!", r->qb_beta, beta);
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
