/* config.c — router configuration: defaults, the name tables of the router's
 * and the losses' enums, the reference presets and validation (every bad
 * input is a clear error). See router.h for what each preset sets. */
#include <assert.h>
#include <math.h>
#include <string.h>

#include "../names.h"
#include "moe_internal.h"

/* ---- name tables -------------------------------------------------------------------- */

NAME_TABLE(moe_score_fn, score_fn, MOE_SCORE_FN_COUNT, "softmax", "sigmoid", "sqrtsoftplus")
NAME_TABLE(moe_aux_kind, aux_kind, MOE_AUX_KIND_COUNT, "micro-batch", "sequence", "global-batch",
           "olmo-local-batch", "olmo-instance", "megablocks", "z")
NAME_TABLE(moe_norm_mode, norm_mode, MOE_NORM_MODE_COUNT, "auto", "on", "off")
NAME_TABLE(moe_capacity_formula, capacity_formula, MOE_CAPACITY_FORMULA_COUNT, "megatron", "megablocks")
NAME_TABLE(moe_drop_policy, drop_policy, MOE_DROP_POLICY_COUNT, "probs", "position")
NAME_TABLE(moe_count_from, count_from, MOE_COUNT_FROM_COUNT, "topk", "actual")
NAME_TABLE(moe_grad_mode, grad_mode, MOE_GRAD_MODE_COUNT, "inject", "add")
NAME_TABLE(moe_debug_routing, debug_routing, MOE_DEBUG_ROUTING_COUNT, "none", "uniform", "imbalance", "random")
NAME_TABLE(moe_routing_mode, routing_mode, MOE_ROUTING_MODE_COUNT, "topk", "quantile-balancing")
NAME_TABLE(moe_replay_mode, replay_mode, MOE_REPLAY_MODE_COUNT, "off", "record")
NAME_TABLE(moe_convention, convention, MOE_CONVENTION_COUNT, "exact", "megatron")

/* ---- defaults and presets ------------------------------------------------------------ */

void moe_router_config_default(moe_router_config *c)
{
    memset(c, 0, sizeof *c);
    c->dtype = MOE_F32;
    c->score = MOE_SCORE_SOFTMAX;
    c->normalize = MOE_NORM_AUTO;
    c->norm_eps = 1e-20;
    c->norm_p = 1.0;
    c->scaling_factor = 1.0;
    c->debug_skew = 4.0;
    c->capacity_factor = MOE_CAPACITY_NONE;
    c->capacity_formula = MOE_CAPACITY_MEGATRON;
    c->ep_size = 1;
    c->drop_policy = MOE_DROP_PROBS;
    c->bias_rate = 1e-3;
    c->count_from = MOE_COUNT_TOPK;
    c->loss_eps = 1e-20;
    c->num_moe_layers = 1;
    c->k_in_f = true;
    c->global_buffer = true;
    c->grad_mode = MOE_GRAD_INJECT;
    c->grad_accum = 1;
    c->pp_size = 1;
    c->training = true;
}

static void set_loss(moe_router_config *c, int n, const moe_aux_term *t)
{
    c->n_losses = n;
    for (int i = 0; i < n; i++) c->losses[i] = t[i];
}

static const char *const preset_names[] = {"megatron", "olmo-core", "torchtitan",
                                           "megablocks", "deepseek-v3", "qwen-global"};

moe_status moe_router_config_preset(moe_router_config *c, const char *name)
{
    int which = -1;
    for (int i = 0; name && i < (int)(sizeof preset_names / sizeof *preset_names); i++)
        if (strcmp(name, preset_names[i]) == 0) which = i;
    if (which < 0)
        return moe_fail(MOE_ERR_ARG, "make-router",
                        "unknown preset '%s'; known: megatron olmo-core torchtitan megablocks "
                        "deepseek-v3 qwen-global",
                        name ? name : "(null)");
    /* conventions common to all, then each reference's own */
    c->normalize = MOE_NORM_AUTO;
    c->norm_eps = 1e-20;
    c->norm_p = 1.0;
    c->scaling_factor = 1.0;
    c->score_offset = 0.0;
    c->sinkhorn = false;
    c->capacity_formula = MOE_CAPACITY_MEGATRON;
    c->drop_policy = MOE_DROP_PROBS;
    c->expert_bias = false;
    c->bias_rate = 1e-3;
    c->bias_center = false;
    c->count_from = MOE_COUNT_TOPK;
    c->loss_eps = 1e-20;
    c->loss_div_factor = 0;
    c->k_in_f = true;
    c->global_buffer = true;
    c->grad_mode = MOE_GRAD_INJECT;
    c->group_score_top = 0;
    c->convention = MOE_CONVENTION_EXACT;
    c->z_loss_div = false;
    c->debug_keep_weights = false;
    switch (which) {
    case 0: /* megatron */
        c->score = MOE_SCORE_SOFTMAX;
        c->pre_softmax = false;
        c->convention = MOE_CONVENTION_MEGATRON;
        set_loss(c, 1, (moe_aux_term[]){{MOE_AUX_MICRO_BATCH, 1e-2}});
        break;
    case 1: /* olmo-core */
        c->score = MOE_SCORE_SOFTMAX;
        c->pre_softmax = true;
        c->normalize = MOE_NORM_OFF;
        c->norm_eps = 0;
        c->score_offset = 1e-7;
        c->loss_eps = 0;
        c->count_from = MOE_COUNT_ACTUAL;
        c->grad_mode = MOE_GRAD_ADD;
        c->z_loss_div = true;
        set_loss(c, 2, (moe_aux_term[]){{MOE_AUX_OLMO_LOCAL_BATCH, 1e-2}, {MOE_AUX_Z, 1e-3}});
        break;
    case 2: /* torchtitan */
        c->score = MOE_SCORE_SIGMOID;
        c->pre_softmax = true;
        c->normalize = MOE_NORM_OFF;
        c->group_score_top = 2;
        c->expert_bias = true;
        c->bias_center = true;
        c->count_from = MOE_COUNT_ACTUAL;
        set_loss(c, 0, NULL);
        break;
    case 3: /* megablocks */
        c->score = MOE_SCORE_SOFTMAX;
        c->pre_softmax = true;
        c->normalize = MOE_NORM_OFF;
        c->capacity_formula = MOE_CAPACITY_MEGABLOCKS;
        c->drop_policy = MOE_DROP_POSITION;
        c->count_from = MOE_COUNT_ACTUAL;
        c->debug_keep_weights = true;
        c->grad_mode = MOE_GRAD_ADD;
        set_loss(c, 1, (moe_aux_term[]){{MOE_AUX_MEGABLOCKS, 0.1}});
        break;
    case 4: /* deepseek-v3 */
        c->score = MOE_SCORE_SIGMOID;
        c->pre_softmax = true;
        c->scaling_factor = 2.5;
        c->group_score_top = 2;
        c->expert_bias = true;
        c->loss_eps = 0;
        c->convention = MOE_CONVENTION_MEGATRON; /* built on Megatron-Core */
        set_loss(c, 1, (moe_aux_term[]){{MOE_AUX_SEQUENCE, 1e-4}});
        break;
    case 5: /* qwen-global */
        c->score = MOE_SCORE_SOFTMAX;
        c->pre_softmax = true;
        c->normalize = MOE_NORM_ON;
        c->norm_eps = 0;
        c->convention = MOE_CONVENTION_MEGATRON; /* built on Megatron-Core */
        set_loss(c, 1, (moe_aux_term[]){{MOE_AUX_GLOBAL_BATCH, 1e-3}});
        break;
    }
    c->preset = preset_names[which];
    return MOE_OK;
}

moe_status moe_router_config_set_losses(moe_router_config *c, int n, const moe_aux_term *terms)
{
    if (n < 0 || n > MOE_ROUTER_MAX_LOSSES)
        return moe_fail(MOE_ERR_ARG, "make-router", "%d losses given; at most %d", n, MOE_ROUTER_MAX_LOSSES);
    for (int i = 0; i < n; i++) {
        if ((unsigned)terms[i].kind >= MOE_AUX_KIND_COUNT)
            return moe_fail(MOE_ERR_ARG, "make-router", "unknown loss kind %d", (int)terms[i].kind);
        if (!(terms[i].coeff >= 0) || isinf(terms[i].coeff))
            return moe_fail(MOE_ERR_ARG, "make-router", "coefficient of '%s' must be finite and >= 0, got %g",
                            moe_aux_kind_name(terms[i].kind), terms[i].coeff);
        for (int j = 0; j < i; j++)
            if (terms[j].kind == terms[i].kind)
                return moe_fail(MOE_ERR_ARG, "make-router", "loss '%s' listed twice",
                                moe_aux_kind_name(terms[i].kind));
    }
    set_loss(c, n, terms);
    return MOE_OK;
}

/* ---- validation ----------------------------------------------------------------------- */

#define BAD(...) return moe_fail(MOE_ERR_ARG, "make-router", __VA_ARGS__)

moe_status moe_router_config_validate(const moe_router_config *c)
{
    MOE_CHECK_NOT_NULL("make-router", c);
    long long E = c->experts, K = c->top_k, G = c->groups;
    if (c->hidden < 1) BAD("hidden size must be >= 1, got %lld", (long long)c->hidden);
    if (E < 1) BAD("experts must be >= 1, got %lld", E);
    if (K < 1) BAD("top-k must be >= 1, got %lld", K);
    if (K > E) BAD("top-k %lld exceeds the %lld experts", K, E);
    if (c->dtype != MOE_F32 && c->dtype != MOE_F64)
        BAD("router dtype must be f32 or f64, got %s", moe_dtype_name(c->dtype));
    if ((unsigned)c->score >= MOE_SCORE_FN_COUNT) BAD("unknown score function %d", (int)c->score);
    if ((unsigned)c->normalize >= MOE_NORM_MODE_COUNT) BAD("unknown normalize mode %d", (int)c->normalize);
    if (G < 0) BAD("groups must be >= 0, got %lld", G);
    if (G > 0) {
        if (E % G != 0) BAD("experts (%lld) must divide into groups (%lld): %lld %% %lld = %lld", E, G, E, G, E % G);
        if (c->group_topk < 1) BAD("group-top-k must be >= 1 with %lld groups, got %lld", G, (long long)c->group_topk);
        if (c->group_topk > G) BAD("group-top-k %lld exceeds the %lld groups", (long long)c->group_topk, G);
        long long left = c->group_topk * (E / G);
        if (K > left)
            BAD("top-k %lld is larger than the %lld experts left by group limiting (%lld of %lld groups of %lld)",
                K, left, (long long)c->group_topk, G, E / G);
        long long m = c->group_score_top ? c->group_score_top : K / c->group_topk;
        if (m < 1)
            BAD("group score uses the top %lld scores of a group (⌊top-k/group-top-k⌋ = ⌊%lld/%lld⌋); "
                "set group-score-top explicitly",
                m, K, (long long)c->group_topk);
        if (m > E / G) BAD("group-score-top %lld exceeds the %lld experts of a group", m, E / G);
    } else if (c->group_topk != 0) {
        BAD("group-top-k %lld given without groups", (long long)c->group_topk);
    }
    bool post = c->score == MOE_SCORE_SOFTMAX && !c->pre_softmax && !c->sinkhorn;
    if (post && K == 1)
        BAD("post-softmax top-1 routing has a zero gradient (the single weight is always 1); "
            "use pre-softmax (#:pre-softmax? #t)");
    if (!isnan(c->capacity_factor) && !(c->capacity_factor > 0))
        BAD("capacity factor must be > 0 (or none), got %g", c->capacity_factor);
    if (!isnan(c->capacity_factor) && isinf(c->capacity_factor))
        BAD("capacity factor must be finite, got %g", c->capacity_factor);
    if ((unsigned)c->capacity_formula >= MOE_CAPACITY_FORMULA_COUNT) BAD("unknown capacity formula");
    if ((unsigned)c->drop_policy >= MOE_DROP_POLICY_COUNT) BAD("unknown drop policy");
    if (c->ep_size < 1) BAD("ep size must be >= 1, got %lld", (long long)c->ep_size);
    if (!(c->scaling_factor > 0) || isinf(c->scaling_factor))
        BAD("scaling factor must be finite and > 0, got %g", c->scaling_factor);
    if (!(c->jitter >= 0 && c->jitter < 1)) BAD("jitter must be in [0, 1), got %g", c->jitter);
    if (!(c->norm_eps >= 0)) BAD("norm eps must be >= 0, got %g", c->norm_eps);
    if (!(c->norm_p >= 1) || isinf(c->norm_p)) BAD("norm p must be finite and >= 1, got %g", c->norm_p);
    if (!(c->score_offset >= 0)) BAD("score offset must be >= 0, got %g", c->score_offset);
    if (!(c->loss_eps >= 0)) BAD("loss eps must be >= 0, got %g", c->loss_eps);
    if (!(c->loss_div_factor >= 0)) BAD("loss div factor must be >= 0, got %g", c->loss_div_factor);
    if (!(c->bias_rate >= 0) || isinf(c->bias_rate)) BAD("bias rate must be finite and >= 0, got %g", c->bias_rate);
    if (!(c->debug_skew >= 0)) BAD("debug skew must be >= 0, got %g", c->debug_skew);
    if ((unsigned)c->debug_routing >= MOE_DEBUG_ROUTING_COUNT) BAD("unknown debug routing");
    if ((unsigned)c->convention >= MOE_CONVENTION_COUNT) BAD("unknown convention %d", (int)c->convention);
    if ((unsigned)c->routing >= MOE_ROUTING_MODE_COUNT) BAD("unknown routing mode %d", (int)c->routing);
    if ((unsigned)c->replay >= MOE_REPLAY_MODE_COUNT) BAD("unknown replay mode %d", (int)c->replay);
    if ((unsigned)c->count_from >= MOE_COUNT_FROM_COUNT) BAD("unknown count-from");
    if ((unsigned)c->grad_mode >= MOE_GRAD_MODE_COUNT) BAD("unknown grad mode");
    if (c->num_moe_layers < 1) BAD("num-moe-layers must be >= 1, got %lld", (long long)c->num_moe_layers);
    if (c->grad_accum < 1) BAD("grad-accum must be >= 1, got %lld", (long long)c->grad_accum);
    if (c->pp_size < 1) BAD("pp size must be >= 1, got %lld", (long long)c->pp_size);
    if (c->n_losses < 0 || c->n_losses > MOE_ROUTER_MAX_LOSSES)
        BAD("%d losses; at most %d", c->n_losses, MOE_ROUTER_MAX_LOSSES);
    bool batchwise = false;
    for (int i = 0; i < c->n_losses; i++) {
        moe_aux_kind k = c->losses[i].kind;
        if ((unsigned)k >= MOE_AUX_KIND_COUNT) BAD("unknown loss kind %d", (int)k);
        if (!(c->losses[i].coeff >= 0) || isinf(c->losses[i].coeff))
            BAD("coefficient of '%s' must be finite and >= 0, got %g", moe_aux_kind_name(k), c->losses[i].coeff);
        for (int j = 0; j < i; j++)
            if (c->losses[j].kind == k) BAD("loss '%s' listed twice", moe_aux_kind_name(k));
        if (c->sinkhorn && k != MOE_AUX_Z && c->losses[i].coeff != 0)
            BAD("sinkhorn routing balances by itself and takes no aux loss; '%s' has coefficient %g "
                "(set it to 0 or drop it)",
                moe_aux_kind_name(k), c->losses[i].coeff);
        if (k != MOE_AUX_Z && c->losses[i].coeff != 0) batchwise = true;
    }
    if (c->routing == MOE_ROUTING_QUANTILE_BALANCING) {
        const char *qb = "quantile-balancing routing";
        if (!(c->qb_ema >= 0 && c->qb_ema < 1)) BAD("qb-ema must be in [0, 1), got %g", c->qb_ema);
        if (K >= E) BAD("%s needs top-k < experts (the (K+1)-th largest logit), got K = %lld, E = %lld", qb, K, E);
        if (G > 0) BAD("%s takes no group limiting, got %lld groups", qb, G);
        if (c->sinkhorn) BAD("%s and sinkhorn routing exclude each other", qb);
        if (c->expert_bias) BAD("%s keeps its own bias β and takes no expert bias", qb);
        for (int i = 0; i < c->n_losses; i++)
            if (c->losses[i].kind != MOE_AUX_Z && c->losses[i].coeff != 0)
                BAD("%s balances by itself and takes no balancing loss; '%s' has coefficient %g (the "
                    "z-loss is allowed)",
                    qb, moe_aux_kind_name(c->losses[i].kind), c->losses[i].coeff);
    } else if (c->qb_ema != 0) {
        BAD("qb-ema %g given without quantile-balancing routing", c->qb_ema);
    }
    if (batchwise && c->grad_mode == MOE_GRAD_ADD && c->pp_size > 1)
        BAD("add mode cannot carry batch-wise balance losses across %lld pipeline stages (the loss of "
            "a stage's routers never reaches the last stage's loss); use grad-mode inject",
            (long long)c->pp_size);
    return MOE_OK;
}
