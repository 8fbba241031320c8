/* check_router.c — the router: configuration, presets and every bad input
 * of the router contract; selection rules on hand-made logits (ties, groups, capacity
 * policies, expert bias, debug routing, jitter); gradient delivery (inject
 * equals add, the injected gradient is α·∇L and reaches the weight through
 * either output, the 1/M, ×cp and per-token scales, tp/cp/dp independence on
 * the threads backend); the bias update, recomputation, state save/load,
 * metrics and their logging reduction; finite-difference gradients.
 *
 * Most cases set W = I (hidden = experts), so the logits are x itself. */
#include <omp.h>
#include <string.h>

#include "dist/comm.h"
#include "moe/metrics.h"
#include "moe/router.h"
#include "testutil.h"

static moe_routing *bad_out;
static moe_router *bad_router;

static moe_router_config cfg_of(int64_t D, int64_t E, int64_t K)
{
    moe_router_config c;
    moe_router_config_default(&c);
    c.hidden = D;
    c.experts = E;
    c.top_k = K;
    return c;
}

/* A router with W = I (D = E): logits = x. */
static moe_router *eye_router(moe_router_config *c)
{
    moe_router *r;
    OK(moe_router_new(&r, c));
    moe_tensor *eye;
    OK(moe_tensor_eye(&eye, MOE_F64, MOE_CPU, c->experts, c->hidden));
    OK(moe_router_set_weight(r, eye));
    moe_tensor_release(eye);
    return r;
}

static void set_losses(moe_router_config *c, int n, const moe_aux_term *t)
{
    OK(moe_router_config_set_losses(c, n, t));
}

static double item(moe_tensor *t)
{
    double v;
    OK(moe_tensor_item(t, &v));
    return v;
}

static moe_tensor *leaf_randn(int ndim, const int64_t *shape, uint64_t seed, moe_dtype dt)
{
    moe_tensor *t = tu_randn(dt, ndim, shape, seed);
    OK(moe_tensor_requires_grad_(t, true));
    return t;
}

/* Σ a⊙R for a fixed random R (seeded). */
static moe_tensor *objective(moe_tensor *a, uint64_t seed)
{
    moe_tensor *R = tu_randn(a->dtype, a->ndim, a->shape, seed), *p, *s;
    OK(moe_mul(&p, a, R));
    OK(moe_sum(&s, p, 0, NULL, false));
    RELEASE(R, p);
    return s;
}

/* ---- configuration --------------------------------------------------------------------- */

START_TEST(test_config_defaults_and_names)
{
    moe_router_config c;
    moe_router_config_default(&c);
    ck_assert(c.dtype == MOE_F32 && c.score == MOE_SCORE_SOFTMAX && !c.pre_softmax);
    ck_assert(isnan(c.capacity_factor) && c.grad_mode == MOE_GRAD_INJECT && c.count_from == MOE_COUNT_TOPK);
    ck_assert(c.bias_rate == 1e-3 && c.k_in_f && c.global_buffer && c.training && c.grad_accum == 1);
    moe_norm_mode nm;
    ck_assert(moe_norm_mode_parse("auto", &nm) && nm == MOE_NORM_AUTO);
    moe_capacity_formula cf;
    ck_assert(moe_capacity_formula_parse("megablocks", &cf) && cf == MOE_CAPACITY_MEGABLOCKS);
    moe_drop_policy dp;
    ck_assert(moe_drop_policy_parse("position", &dp) && dp == MOE_DROP_POSITION);
    moe_count_from cnt;
    ck_assert(moe_count_from_parse("actual", &cnt) && cnt == MOE_COUNT_ACTUAL);
    moe_grad_mode gm;
    ck_assert(moe_grad_mode_parse("add", &gm) && gm == MOE_GRAD_ADD && !moe_grad_mode_parse("both", &gm));
    moe_debug_routing dr;
    ck_assert(moe_debug_routing_parse("imbalance", &dr) && dr == MOE_DEBUG_IMBALANCE);
    ck_assert_str_eq(moe_drop_policy_name(MOE_DROP_PROBS), "probs");
    ck_assert_str_eq(moe_count_from_name(MOE_COUNT_TOPK), "topk");
}
END_TEST

START_TEST(test_presets)
{
    const char *names[] = {"megatron", "olmo-core", "torchtitan", "megablocks", "deepseek-v3", "qwen-global"};
    for (int i = 0; i < 6; i++) {
        moe_router_config c = cfg_of(8, 8, 2);
        OK(moe_router_config_preset(&c, names[i]));
        ck_assert_str_eq(c.preset, names[i]);
        ck_assert(c.hidden == 8 && c.experts == 8 && c.top_k == 2); /* shape untouched */
        ck_assert(c.k_in_f);                                        /* every reference uses 1/K */
        moe_router *r;
        OK(moe_router_new(&r, &c));
        moe_router_free(r);
    }
    moe_router_config c = cfg_of(8, 8, 2);
    OK(moe_router_config_preset(&c, "torchtitan"));
    ck_assert(c.score == MOE_SCORE_SIGMOID && c.expert_bias && c.bias_center && c.group_score_top == 2 &&
              c.count_from == MOE_COUNT_ACTUAL && c.n_losses == 0);
    OK(moe_router_config_preset(&c, "deepseek-v3"));
    ck_assert(c.scaling_factor == 2.5 && c.expert_bias && !c.bias_center && c.n_losses == 1 &&
              c.losses[0].kind == MOE_AUX_SEQUENCE && c.losses[0].coeff == 1e-4 && c.loss_eps == 0);
    OK(moe_router_config_preset(&c, "megablocks"));
    ck_assert(c.capacity_formula == MOE_CAPACITY_MEGABLOCKS && c.drop_policy == MOE_DROP_POSITION &&
              c.pre_softmax && c.grad_mode == MOE_GRAD_ADD && c.losses[0].kind == MOE_AUX_MEGABLOCKS);
    OK(moe_router_config_preset(&c, "olmo-core"));
    ck_assert(c.score_offset == 1e-7 && c.count_from == MOE_COUNT_ACTUAL && c.n_losses == 2 &&
              c.losses[1].kind == MOE_AUX_Z && !c.expert_bias);
    OK(moe_router_config_preset(&c, "qwen-global"));
    ck_assert(c.losses[0].kind == MOE_AUX_GLOBAL_BATCH && c.global_buffer && c.normalize == MOE_NORM_ON);
    OK(moe_router_config_preset(&c, "megatron"));
    ck_assert(!c.pre_softmax && c.group_score_top == 0 && c.capacity_formula == MOE_CAPACITY_MEGATRON &&
              c.drop_policy == MOE_DROP_PROBS && c.losses[0].kind == MOE_AUX_MICRO_BATCH && !c.expert_bias);
    FAILS(moe_router_config_preset(&c, "switch"), MOE_ERR_ARG, "make-router: unknown preset 'switch'; known: megatron olmo-core");
}
END_TEST

/* Every kind of bad input: a clear status and message, no router. */
START_TEST(test_bad_config)
{
    moe_router_config c;
#define BADCFG(setup, needle)                                              \
    do {                                                                   \
        c = cfg_of(8, 8, 2);                                               \
        setup;                                                             \
        bad_router = (moe_router *)1;                                      \
        FAILS(moe_router_new(&bad_router, &c), MOE_ERR_ARG, needle);       \
        ck_assert_ptr_null(bad_router);                                    \
    } while (0)
    BADCFG(c.top_k = 9, "top-k 9 exceeds the 8 experts");
    BADCFG(c.top_k = 0, "top-k must be >= 1");
    BADCFG((c.groups = 3, c.group_topk = 1), "must divide into groups (3)");
    BADCFG((c.groups = 4, c.group_topk = 5), "group-top-k 5 exceeds the 4 groups");
    BADCFG((c.groups = 4, c.group_topk = 1, c.top_k = 3, c.pre_softmax = true),
           "top-k 3 is larger than the 2 experts left by group limiting");
    BADCFG(c.top_k = 1, "post-softmax top-1 routing has a zero gradient");
    BADCFG(c.top_k = 1, "pre-softmax");
    BADCFG(c.capacity_factor = 0, "capacity factor must be > 0");
    BADCFG(c.capacity_factor = -1, "capacity factor must be > 0");
    BADCFG((c.sinkhorn = true, set_losses(&c, 1, (moe_aux_term[]){{MOE_AUX_MICRO_BATCH, 0.01}})),
           "sinkhorn routing balances by itself");
    BADCFG((c.pp_size = 2, c.grad_mode = MOE_GRAD_ADD, set_losses(&c, 1, (moe_aux_term[]){{MOE_AUX_GLOBAL_BATCH, 0.01}})),
           "use grad-mode inject");
    BADCFG((c.groups = 4, c.group_topk = 2, c.top_k = 1, c.pre_softmax = true), "set group-score-top explicitly");
    BADCFG(c.scaling_factor = 0, "scaling factor");
    BADCFG(c.jitter = 1.5, "jitter");
    BADCFG(c.hidden = 0, "hidden size");
    BADCFG(c.dtype = MOE_BF16, "router dtype must be f32 or f64");
    BADCFG(c.group_topk = 2, "without groups");
    BADCFG(c.grad_accum = 0, "grad-accum");
#undef BADCFG
    /* sinkhorn with a zero coefficient or the z-loss is fine; K = 1 pre-softmax too */
    c = cfg_of(8, 8, 1);
    c.sinkhorn = true;
    set_losses(&c, 2, (moe_aux_term[]){{MOE_AUX_MICRO_BATCH, 0}, {MOE_AUX_Z, 1e-3}});
    OK(moe_router_config_validate(&c));
    c = cfg_of(8, 8, 1);
    c.pre_softmax = true;
    OK(moe_router_config_validate(&c));
    /* loss lists */
    FAILS(moe_router_config_set_losses(&c, 2, (moe_aux_term[]){{MOE_AUX_Z, 1}, {MOE_AUX_Z, 2}}), MOE_ERR_ARG,
          "listed twice");
    FAILS(moe_router_config_set_losses(&c, 1, (moe_aux_term[]){{MOE_AUX_Z, -1}}), MOE_ERR_ARG, ">= 0");
}
END_TEST

/* ---- selection -------------------------------------------------------------------------- */

START_TEST(test_forward_shapes)
{
    moe_router_config c = cfg_of(16, 8, 3);
    set_losses(&c, 2, (moe_aux_term[]){{MOE_AUX_MICRO_BATCH, 0.01}, {MOE_AUX_Z, 0.001}});
    moe_router *r;
    OK(moe_router_new(&r, &c));
    ASSERT_SHAPE(moe_router_weight(r), 2, 8, 16);
    ck_assert(moe_router_weight(r)->requires_grad && moe_router_weight(r)->dtype == MOE_F32);
    ck_assert_ptr_null(moe_router_bias(r));
    moe_tensor *x = tu_randn(MOE_BF16, 3, SHAPE(2, 5, 16), 1);
    moe_routing *o;
    OK(moe_router_forward(&o, r, x, NULL, NULL));
    ASSERT_SHAPE(o->weights, 2, 10, 3);
    ASSERT_SHAPE(o->experts, 2, 10, 3);
    ASSERT_SHAPE(o->logits, 2, 10, 8);
    ASSERT_SHAPE(o->counts, 1, 8);
    ck_assert(o->weights->dtype == MOE_F32 && o->logits->dtype == MOE_F32 && o->experts->dtype == MOE_I64);
    ck_assert(o->tokens == 10 && o->capacity == -1 && o->dropped == 0 && o->n_aux == 2);
    ck_assert(moe_routing_aux(o, MOE_AUX_Z) == o->aux[1] && moe_routing_aux(o, MOE_AUX_SEQUENCE) == NULL);
    /* post-softmax weights sum to 1; ids in descending logit order; counts */
    float *w = moe_tensor_data(o->weights), *z = moe_tensor_data(o->logits);
    int64_t *id = moe_tensor_data(o->experts), *cnt = moe_tensor_data(o->counts), tot = 0;
    for (int t = 0; t < 10; t++) {
        ck_assert(fabs(w[3 * t] + w[3 * t + 1] + w[3 * t + 2] - 1) < 1e-6);
        for (int k = 0; k < 2; k++) ck_assert(z[8 * t + id[3 * t + k]] >= z[8 * t + id[3 * t + k + 1]]);
        for (int j = 0; j < 8; j++) /* nothing unselected beats the K-th */
            if (j != id[3 * t] && j != id[3 * t + 1] && j != id[3 * t + 2])
                ck_assert(z[8 * t + j] <= z[8 * t + id[3 * t + 2]]);
    }
    for (int e = 0; e < 8; e++) tot += cnt[e];
    ck_assert_int_eq(tot, 30);
    OK(moe_routing_dense(o));
    ASSERT_SHAPE(o->probs, 2, 10, 8);
    ck_assert(o->map->dtype == MOE_BOOL);
    moe_routing_free(o);
    /* [B S D] rows are b-major: the same as the flattened [T D] input */
    moe_tensor *x2;
    OK(moe_reshape(&x2, x, 2, SHAPE(10, 16)));
    moe_routing *o2, *o3;
    OK(moe_router_forward(&o2, r, x2, NULL, NULL));
    OK(moe_router_forward(&o3, r, x, NULL, NULL));
    ASSERT_CLOSE(o2->weights, o3->weights, 0);
    ASSERT_CLOSE(o2->experts, o3->experts, 0);
    moe_routing_free(o2);
    moe_routing_free(o3);
    RELEASE(x, x2);
    moe_router_free(r);
}
END_TEST

START_TEST(test_ties_lower_index)
{
    /* all logits equal: experts 0..K-1, for every score function */
    for (int sc = 0; sc < 3; sc++) {
        moe_router_config c = cfg_of(6, 6, 3);
        c.score = sc == 2 ? MOE_SCORE_SIGMOID : MOE_SCORE_SOFTMAX;
        c.pre_softmax = sc == 1;
        moe_router *r = eye_router(&c);
        moe_tensor *x = T(MOE_F32, 2, SHAPE(2, 6), 1, 1, 1, 1, 1, 1, 0, 2, 2, 0, 2, 2);
        moe_routing *o;
        OK(moe_router_forward(&o, r, x, NULL, NULL));
        ASSERT_VALUES(o->experts, 0, 0, 1, 2, 1, 2, 4);
        moe_routing_free(o);
        moe_tensor_release(x);
        moe_router_free(r);
    }
}
END_TEST

START_TEST(test_group_limited)
{
    /* E = 8 in 4 groups of 2, keep 2 groups, K = 2; post-softmax selects on
     * the logits. token: [5 0 | 3 3 | 4 1 | 0 0]: group scores with m = 1
     * (⌊K/2⌋, Megatron): 5 3 4 0 → groups 0 and 2 → experts 0 and 4; with
     * m = 2 (torchtitan): 5 6 5 0 → groups 1 and 0 (tie 5 = 5 → lower) →
     * experts 0 and 2 (tie 3 = 3 → lower: 2). */
    moe_router_config c = cfg_of(8, 8, 2);
    c.groups = 4;
    c.group_topk = 2;
    moe_router *r = eye_router(&c);
    moe_tensor *x = T(MOE_F64, 2, SHAPE(1, 8), 5, 0, 3, 3, 4, 1, 0, 0);
    moe_routing *o;
    OK(moe_router_forward(&o, r, x, NULL, NULL));
    ASSERT_VALUES(o->experts, 0, 0, 4);
    moe_routing_free(o);
    moe_router_free(r);
    c.group_score_top = 2;
    r = eye_router(&c);
    OK(moe_router_forward(&o, r, x, NULL, NULL));
    ASSERT_VALUES(o->experts, 0, 0, 2);
    moe_routing_free(o);
    moe_router_free(r);
    moe_tensor_release(x);
}
END_TEST

START_TEST(test_capacity_policies)
{
    /* T = 4, E = 2, K = 1, cf = 1: C = ⌈4·1/2·1⌉ = 2. Every token prefers
     * expert 0 with weights σ-ordered 0.9 > 0.6 > 0.8 > 0.7 (logit gaps). */
    moe_tensor *x = T(MOE_F64, 2, SHAPE(4, 2), 2.2, 0, 0.4, 0, 1.4, 0, 0.85, 0);
    for (int pol = 0; pol < 2; pol++) {
        moe_router_config c = cfg_of(2, 2, 1);
        c.score = MOE_SCORE_SIGMOID;
        c.capacity_factor = 1.0;
        c.drop_policy = pol ? MOE_DROP_POSITION : MOE_DROP_PROBS;
        c.pad_to_capacity = true;
        c.dtype = MOE_F64;
        moe_router *r = eye_router(&c);
        moe_routing *o;
        OK(moe_router_forward(&o, r, x, NULL, NULL));
        ck_assert(o->capacity == 2 && o->dropped == 2);
        if (pol == 0) ASSERT_VALUES(o->kept, 0, 1, 0, 1, 0); /* highest weights: tokens 0 and 2 */
        else ASSERT_VALUES(o->kept, 0, 1, 1, 0, 0);         /* earliest: tokens 0 and 1 */
        ASSERT_VALUES(o->counts, 0, 2, 0);
        OK(moe_routing_dense(o));
        /* pad to capacity: expert 1 gets the 2 earliest tokens as filler */
        if (pol == 0) ASSERT_VALUES(o->map, 0, 1, 1, 0, 1, 1, 0, 0, 0);
        else ASSERT_VALUES(o->map, 0, 1, 1, 1, 1, 0, 0, 0, 0);
        double *w = moe_tensor_data(o->weights), *p = moe_tensor_data(o->probs);
        uint8_t *kp = moe_tensor_data(o->kept);
        for (int t = 0; t < 4; t++) {
            ck_assert(kp[t] ? w[t] > 0.5 : w[t] == 0);
            ck_assert(p[2 * t + 1] == 0); /* filler carries no weight */
        }
        moe_router_metrics m;
        OK(moe_router_metrics_get(&m, r));
        ck_assert(fabs(m.dropped_fraction - 0.5) < 1e-15);
        moe_router_metrics_release(&m);
        moe_routing_free(o);
        moe_router_free(r);
    }
    /* a huge factor drops nothing and sizes C at T */
    moe_router_config c = cfg_of(2, 2, 1);
    c.pre_softmax = true;
    c.capacity_factor = 1e12;
    moe_router *r = eye_router(&c);
    moe_routing *o;
    OK(moe_router_forward(&o, r, x, NULL, NULL));
    ck_assert(o->capacity == 4 && o->dropped == 0);
    moe_routing_free(o);
    moe_router_free(r);
    /* MegaBlocks: ⌊cf·K·T/E⌋ = ⌊0.9·1·4/2⌋ = 1; a factor giving 0 is dropless */
    c.capacity_formula = MOE_CAPACITY_MEGABLOCKS;
    c.capacity_factor = 0.9;
    r = eye_router(&c);
    OK(moe_router_forward(&o, r, x, NULL, NULL));
    ck_assert(o->capacity == 1 && o->dropped == 3);
    moe_routing_free(o);
    moe_router_free(r);
    c.capacity_factor = 0.2;
    r = eye_router(&c);
    OK(moe_router_forward(&o, r, x, NULL, NULL));
    ck_assert(o->capacity == -1 && o->dropped == 0);
    moe_routing_free(o);
    moe_router_free(r);
    moe_tensor_release(x);
}
END_TEST

START_TEST(test_padding_tokens)
{
    moe_router_config c = cfg_of(4, 4, 2);
    c.pre_softmax = true;
    set_losses(&c, 1, (moe_aux_term[]){{MOE_AUX_MICRO_BATCH, 1}});
    moe_router *r;
    OK(moe_router_new(&r, &c));
    moe_tensor *x = tu_randn(MOE_F32, 3, SHAPE(2, 3, 4), 5), *valid = T(MOE_BOOL, 2, SHAPE(2, 3), 1, 1, 0, 1, 0, 0);
    moe_routing *o;
    OK(moe_router_forward(&o, r, x, valid, NULL));
    ck_assert_int_eq(o->tokens, 3);
    ASSERT_VALUES(o->kept, 0, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0);
    float *w = moe_tensor_data(o->weights);
    for (int i = 4; i < 6; i++) ck_assert(w[i] == 0);
    int64_t *cnt = moe_tensor_data(o->counts), tot = 0;
    for (int e = 0; e < 4; e++) tot += cnt[e];
    ck_assert_int_eq(tot, 6);
    moe_routing_free(o);
    /* the wrong mask shape */
    moe_tensor *v5 = T(MOE_BOOL, 1, SHAPE(5), 1, 1, 1, 1, 1);
    FAILS(moe_router_forward(&bad_out, r, x, v5, NULL), MOE_ERR_SHAPE, "valid mask must be [6] or [B S]");
    ck_assert_ptr_null(bad_out);
    RELEASE(x, valid, v5);
    moe_router_free(r);
}
END_TEST

START_TEST(test_expert_bias)
{
    /* the bias steers selection only: weights stay σ of the logits */
    moe_router_config c = cfg_of(4, 4, 2);
    c.score = MOE_SCORE_SIGMOID;
    c.expert_bias = true;
    c.dtype = MOE_F64;
    moe_router *r = eye_router(&c);
    ASSERT_SHAPE(moe_router_bias(r), 1, 4);
    moe_tensor *b = T(MOE_F32, 1, SHAPE(4), 0, 0, 0, 5), *x = T(MOE_F64, 2, SHAPE(1, 4), 2, 1, 0, -1);
    OK(moe_router_set_bias(r, b));
    moe_routing *o;
    OK(moe_router_forward(&o, r, x, NULL, NULL));
    ASSERT_VALUES(o->experts, 0, 3, 0);
    double s3 = 1 / (1 + exp(1.0)), s0 = 1 / (1 + exp(-2.0));
    ASSERT_VALUES(o->weights, 1e-15, s3 / (s3 + s0 + 1e-20), s0 / (s3 + s0 + 1e-20));
    moe_routing_free(o);
    /* the update: counts [1 0 0 1] → mean 0.5 → b += u·sign(0.5 − c) */
    OK(moe_router_step(r));
    ASSERT_VALUES(moe_router_bias(r), 1e-6, -1e-3, 1e-3, 1e-3, 5 - 1e-3);
    /* no tokens this step: sign(0) = 0, nothing moves */
    OK(moe_router_step(r));
    ASSERT_VALUES(moe_router_bias(r), 1e-6, -1e-3, 1e-3, 1e-3, 5 - 1e-3);
    moe_tensor *b3 = T(MOE_F32, 1, SHAPE(3), 0, 0, 0);
    FAILS(moe_router_set_bias(r, b3), MOE_ERR_SHAPE, "expected shape [4]");
    moe_router_free(r);
    c.expert_bias = false;
    r = eye_router(&c);
    FAILS(moe_router_set_bias(r, b), MOE_ERR_STATE, "no expert bias");
    moe_router_free(r);
    RELEASE(b, b3, x);
}
END_TEST

/* Centering shifts all biases alike: every step selects the same experts. */
START_TEST(test_bias_center_same_selection)
{
    moe_router *r[2];
    for (int i = 0; i < 2; i++) {
        moe_router_config c = cfg_of(12, 8, 2);
        c.score = MOE_SCORE_SIGMOID;
        c.expert_bias = true;
        c.bias_center = i == 1;
        c.bias_rate = 0.05;
        c.groups = 4;
        c.group_topk = 2;
        c.group_score_top = 2;
        c.seed = 3;
        OK(moe_router_new(&r[i], &c));
    }
    bool moved = false;
    for (int step = 0; step < 6; step++) {
        moe_tensor *x = tu_randn(MOE_F32, 2, SHAPE(24, 12), 100 + step);
        moe_routing *o[2];
        for (int i = 0; i < 2; i++) OK(moe_router_forward(&o[i], r[i], x, NULL, NULL));
        ASSERT_CLOSE(o[0]->experts, o[1]->experts, 0);
        for (int i = 0; i < 2; i++) {
            moe_routing_free(o[i]);
            OK(moe_router_step(r[i]));
        }
        moe_tensor_release(x);
    }
    float *b0 = moe_tensor_data(moe_router_bias(r[0])), *b1 = moe_tensor_data(moe_router_bias(r[1]));
    double sum1 = 0;
    for (int e = 0; e < 8; e++) {
        moved |= b0[e] != 0;
        sum1 += b1[e];
    }
    ck_assert(moved);
    ck_assert(fabs(sum1) < 1e-6); /* the centered bias stays centered */
    moe_router_free(r[0]);
    moe_router_free(r[1]);
}
END_TEST

START_TEST(test_debug_routing)
{
    moe_router_config c = cfg_of(8, 4, 3);
    c.debug_routing = MOE_DEBUG_UNIFORM;
    c.pre_softmax = true;
    moe_router *r;
    OK(moe_router_new(&r, &c));
    moe_tensor *x = tu_randn(MOE_F32, 2, SHAPE(4, 8), 7);
    moe_routing *o;
    OK(moe_router_forward(&o, r, x, NULL, NULL));
    ASSERT_VALUES(o->experts, 0, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3);
    ASSERT_VALUES(o->counts, 0, 3, 3, 3, 3);
    moe_router_metrics m;
    OK(moe_router_metrics_get(&m, r));
    ck_assert(m.max_violation_batch == 0 && m.cv == 0 && m.dead_fraction == 0 && m.max_over_mean == 1);
    moe_router_metrics_release(&m);
    moe_routing_free(o);
    moe_router_free(r);
    /* seeded imbalance: reproducible, skewed toward expert 0, distinct ids */
    moe_router_config ci = cfg_of(8, 16, 2);
    ci.debug_routing = MOE_DEBUG_IMBALANCE;
    ci.debug_skew = 6;
    ci.seed = 9;
    ci.pre_softmax = true;
    moe_router *r1, *r2;
    OK(moe_router_new(&r1, &ci));
    OK(moe_router_new(&r2, &ci));
    moe_tensor *xl = tu_randn(MOE_F32, 2, SHAPE(400, 8), 8);
    moe_routing *o1, *o2;
    OK(moe_router_forward(&o1, r1, xl, NULL, NULL));
    OK(moe_router_forward(&o2, r2, xl, NULL, NULL));
    ASSERT_CLOSE(o1->experts, o2->experts, 0);
    int64_t *cnt = moe_tensor_data(o1->counts), *id = moe_tensor_data(o1->experts);
    ck_assert(cnt[0] > 4 * cnt[15]);
    for (int t = 0; t < 400; t++) ck_assert(id[2 * t] != id[2 * t + 1]);
    moe_routing_free(o1);
    moe_routing_free(o2);
    moe_router_free(r1);
    moe_router_free(r2);
    RELEASE(x, xl);
}
END_TEST

START_TEST(test_jitter)
{
    moe_router_config c = cfg_of(8, 4, 2);
    c.pre_softmax = true;
    c.seed = 4;
    moe_router *plain;
    OK(moe_router_new(&plain, &c));
    c.jitter = 0.1;
    moe_router *jit, *jit2;
    OK(moe_router_new(&jit, &c));
    OK(moe_router_new(&jit2, &c));
    moe_tensor *x = tu_randn(MOE_F32, 2, SHAPE(6, 8), 2);
    moe_routing *a, *b, *b2;
    OK(moe_router_forward(&a, plain, x, NULL, NULL));
    OK(moe_router_forward(&b, jit, x, NULL, NULL));
    OK(moe_router_forward(&b2, jit2, x, NULL, NULL));
    ASSERT_CLOSE(b->logits, b2->logits, 0); /* seeded */
    float *za = moe_tensor_data(a->logits), *zb = moe_tensor_data(b->logits);
    bool differ = false;
    for (int i = 0; i < 24; i++) differ |= za[i] != zb[i];
    ck_assert(differ);
    moe_routing_free(b);
    /* eval: no jitter */
    moe_router_set_training(jit, false);
    OK(moe_router_forward(&b, jit, x, NULL, NULL));
    ASSERT_CLOSE(b->logits, a->logits, 0);
    moe_routing_free(a);
    moe_routing_free(b);
    moe_routing_free(b2);
    moe_router_free(plain);
    moe_router_free(jit);
    moe_router_free(jit2);
    moe_tensor_release(x);
}
END_TEST

START_TEST(test_forward_errors_leave_state)
{
    moe_router_config c = cfg_of(4, 4, 2);
    c.pre_softmax = true;
    c.expert_bias = true;
    c.score = MOE_SCORE_SIGMOID;
    set_losses(&c, 2, (moe_aux_term[]){{MOE_AUX_SEQUENCE, 0.01}, {MOE_AUX_GLOBAL_BATCH, 0.01}});
    moe_router *r;
    OK(moe_router_new(&r, &c));
    moe_tensor *x = tu_randn(MOE_F32, 3, SHAPE(2, 3, 4), 3);
    moe_routing *o;
    OK(moe_router_forward(&o, r, x, NULL, NULL));
    moe_routing_free(o);
    moe_tensor *bias0, *cnt0, *bias1, *cnt1;
    OK(moe_router_state_save(r, &bias0, &cnt0));
    /* NaN and Inf in x: the error counts them and names the first place */
    float *xd = moe_tensor_data(x);
    float keep = xd[5];
    xd[5] = NAN;
    FAILS(moe_router_forward(&bad_out, r, x, NULL, NULL), MOE_ERR_VALUE, "NaN");
    FAILS(moe_router_forward(&bad_out, r, x, NULL, NULL), MOE_ERR_VALUE, "(first at token 1, expert 0)");
    xd[5] = INFINITY;
    FAILS(moe_router_forward(&bad_out, r, x, NULL, NULL), MOE_ERR_VALUE, "Inf values");
    xd[5] = keep;
    /* a sequence loss on 2-D input; the wrong hidden size; bad bounds */
    moe_tensor *x2, *xw = tu_randn(MOE_F32, 2, SHAPE(6, 5), 3), *bd = T(MOE_I64, 1, SHAPE(2), 0, 7);
    OK(moe_reshape(&x2, x, 2, SHAPE(6, 4)));
    FAILS(moe_router_forward(&bad_out, r, x2, NULL, NULL), MOE_ERR_SHAPE, "2-D input");
    FAILS(moe_router_forward(&bad_out, r, xw, NULL, NULL), MOE_ERR_SHAPE, "x must be [T 4] or [B S 4]");
    FAILS(moe_router_forward(&bad_out, r, x, NULL, bd), MOE_ERR_VALUE, "document bounds");
    ck_assert_ptr_null(bad_out);
    OK(moe_router_state_save(r, &bias1, &cnt1));
    ASSERT_CLOSE(cnt1, cnt0, 0); /* nothing counted by the failures */
    ASSERT_CLOSE(bias1, bias0, 0);
    ck_assert_int_eq(moe_balance_tracker_micro_batches(moe_router_tracker(r)), 1);
    /* packed documents: 2-D input with bounds is fine */
    moe_tensor *bd2 = T(MOE_I64, 1, SHAPE(3), 0, 2, 6);
    OK(moe_router_forward(&o, r, x2, NULL, bd2));
    moe_routing_free(o);
    RELEASE(x, x2, xw, bd, bd2, bias0, cnt0, bias1, cnt1);
    moe_router_free(r);
}
END_TEST

/* ---- gradient delivery --------------------------------------------------------------------- */

/* The router weight's gradient of objective(out) (+ aux_total in add mode). */
static moe_tensor *weight_grad(moe_router_config *c, moe_tensor *x, bool use_probs, double obj_scale)
{
    moe_router *r;
    OK(moe_router_new(&r, c));
    moe_routing *o;
    OK(moe_router_forward(&o, r, x, NULL, NULL));
    moe_tensor *obj, *tmp;
    if (use_probs) {
        OK(moe_routing_dense(o));
        obj = objective(o->probs, 5);
    } else {
        obj = objective(o->weights, 5);
    }
    OK(moe_mul_scalar(&tmp, obj, obj_scale));
    moe_tensor_release(obj);
    obj = tmp;
    if (c->grad_mode == MOE_GRAD_ADD) {
        OK(moe_add(&tmp, obj, o->aux_total));
        moe_tensor_release(obj);
        obj = tmp;
    }
    OK(moe_backward(obj, NULL, false));
    moe_tensor *g;
    OK(moe_clone(&g, moe_router_weight(r)->grad));
    moe_tensor_release(obj);
    moe_routing_free(o);
    moe_router_free(r);
    return g;
}

START_TEST(test_inject_equals_add)
{
    moe_tensor *x = tu_randn(MOE_F64, 3, SHAPE(2, 6, 10), 12);
    for (int v = 0; v < 2; v++) {
        moe_router_config c = cfg_of(10, 6, 2);
        c.dtype = MOE_F64;
        c.score = v ? MOE_SCORE_SIGMOID : MOE_SCORE_SOFTMAX;
        set_losses(&c, 3, (moe_aux_term[]){{MOE_AUX_MICRO_BATCH, 0.3}, {MOE_AUX_SEQUENCE, 0.2}, {MOE_AUX_Z, 0.1}});
        moe_tensor *gi = weight_grad(&c, x, false, 1.0), *gip = weight_grad(&c, x, true, 1.0);
        c.grad_mode = MOE_GRAD_ADD;
        moe_tensor *ga = weight_grad(&c, x, false, 1.0), *gap = weight_grad(&c, x, true, 1.0);
        ASSERT_CLOSE(gi, ga, 1e-14);
        ASSERT_CLOSE(gip, gap, 1e-14);
        /* the injected gradient alone is exactly α·∇L (objective × 0): non-zero */
        c.grad_mode = MOE_GRAD_INJECT;
        moe_tensor *g0 = weight_grad(&c, x, true, 0.0);
        c.grad_mode = MOE_GRAD_ADD;
        moe_tensor *a0 = weight_grad(&c, x, true, 0.0);
        ASSERT_CLOSE(g0, a0, 1e-15);
        double *gd = moe_tensor_data(g0), mx = 0;
        for (int i = 0; i < 60; i++) mx = fabs(gd[i]) > mx ? fabs(gd[i]) : mx;
        ck_assert(mx > 1e-6);
        RELEASE(gi, gip, ga, gap, g0, a0);
    }
    moe_tensor_release(x);
}
END_TEST

START_TEST(test_inject_scales)
{
    moe_tensor *x = tu_randn(MOE_F64, 2, SHAPE(9, 6), 14);
    moe_router_config c = cfg_of(6, 4, 2);
    c.dtype = MOE_F64;
    set_losses(&c, 2, (moe_aux_term[]){{MOE_AUX_MICRO_BATCH, 0.5}, {MOE_AUX_Z, 0.25}});
    moe_tensor *g1 = weight_grad(&c, x, false, 0.0);
    /* 1/M for gradient accumulation */
    c.grad_accum = 4;
    moe_tensor *g4 = weight_grad(&c, x, false, 0.0), *g1q;
    OK(moe_mul_scalar(&g1q, g1, 0.25));
    ASSERT_CLOSE(g4, g1q, 1e-16);
    /* per-token-loss mode: × the valid local tokens (× |tp×cp| = 1) */
    c.grad_accum = 1;
    c.per_token_loss = true;
    moe_tensor *gt = weight_grad(&c, x, false, 0.0), *g9;
    OK(moe_mul_scalar(&g9, g1, 9.0));
    ASSERT_CLOSE(gt, g9, 1e-14);
    /* the same through moe_router_set_grad_scale */
    moe_router *r;
    c.per_token_loss = false;
    OK(moe_router_new(&r, &c));
    OK(moe_router_set_grad_scale(r, 4, false));
    FAILS(moe_router_set_grad_scale(r, 0, false), MOE_ERR_ARG, "router-set-grad-scale!: grad-accum");
    moe_routing *o;
    OK(moe_router_forward(&o, r, x, NULL, NULL));
    moe_tensor *obj = objective(o->weights, 5), *z0;
    OK(moe_mul_scalar(&z0, obj, 0.0));
    OK(moe_backward(z0, NULL, false));
    ASSERT_CLOSE(moe_router_weight(r)->grad, g1q, 1e-16);
    RELEASE(obj, z0, g1, g4, g1q, gt, g9, x);
    moe_routing_free(o);
    moe_router_free(r);
}
END_TEST

/* tp × cp × dp on the threads backend (8 ranks, rank = 4·dp + 2·cp + tp):
 * tp and cp each split every sequence (sequence parallelism), dp = 2
 * replicas. With the inject scale ×cp, the gradient summed over tp (the
 * sequence-parallel reduction) and averaged over dp×cp (the data-parallel
 * one), the router weight gradient equals the single-rank gradient of the
 * mean over replicas of the unsplit loss — independent of tp and cp — for
 * the micro-batch, sequence, global-batch and z losses. */
typedef struct mesh_ctx {
    moe_tensor *x[2]; /* per dp replica: [B S D] */
    moe_router_config cfg;
    moe_tensor *w;
    moe_tensor *grad[8];
} mesh_ctx;

static moe_status mesh_rank(int rank, moe_group *world, void *vctx)
{
    mesh_ctx *c = vctx;
    int dpr = rank / 4, cpr = (rank / 2) % 2, tpr = rank % 2;
    moe_group *tp = NULL, *cp = NULL, *dp = NULL, *dpcp = NULL;
    moe_router *r = NULL;
    moe_routing *o = NULL;
    moe_tensor *part = NULL, *x = NULL, *obj = NULL, *z0 = NULL, *avg = NULL, *sum = NULL;
    moe_status st = moe_group_split(&tp, world, dpr * 2 + cpr, tpr);
    if (st == MOE_OK) st = moe_group_split(&cp, world, dpr * 2 + tpr, cpr);
    if (st == MOE_OK) st = moe_group_split(&dp, world, cpr * 2 + tpr, dpr);
    if (st == MOE_OK) st = moe_group_split(&dpcp, world, tpr, dpr * 2 + cpr);
    if (st == MOE_OK) st = moe_router_new(&r, &c->cfg);
    if (st == MOE_OK) st = moe_router_set_weight(r, c->w);
    if (st == MOE_OK) st = moe_router_set_groups(r, tp, cp, dp);
    int64_t S = c->x[0]->shape[1];
    if (st == MOE_OK) st = moe_narrow(&part, c->x[dpr], 1, (cpr * 2 + tpr) * (S / 4), S / 4);
    if (st == MOE_OK) st = moe_clone(&x, part);
    if (st == MOE_OK) st = moe_router_forward(&o, r, x, NULL, NULL);
    if (st == MOE_OK) { /* the injected gradient only */
        st = moe_sum(&obj, o->weights, 0, NULL, false);
        if (st == MOE_OK) st = moe_mul_scalar(&z0, obj, 0.0);
        if (st == MOE_OK) st = moe_backward(z0, NULL, false);
    }
    if (st == MOE_OK) st = moe_all_reduce(&sum, moe_router_weight(r)->grad, MOE_REDUCE_SUM, tp);
    if (st == MOE_OK) st = moe_all_reduce(&avg, sum, MOE_REDUCE_AVG, dpcp);
    if (st == MOE_OK) c->grad[rank] = moe_tensor_retain(avg);
    RELEASE(part, x, obj, z0, avg, sum);
    moe_routing_free(o);
    moe_router_free(r);
    moe_group_release(tp);
    moe_group_release(cp);
    moe_group_release(dp);
    moe_group_release(dpcp);
    return st;
}

START_TEST(test_parallel_invariant)
{
    moe_aux_kind kinds[] = {MOE_AUX_MICRO_BATCH, MOE_AUX_SEQUENCE, MOE_AUX_GLOBAL_BATCH, MOE_AUX_Z};
    for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) {
        mesh_ctx c = {0};
        c.cfg = cfg_of(6, 4, 2);
        c.cfg.dtype = MOE_F64;
        c.cfg.score = MOE_SCORE_SIGMOID;
        set_losses(&c.cfg, 1, (moe_aux_term[]){{kinds[i], 0.5}});
        c.w = tu_randn(MOE_F64, 2, SHAPE(4, 6), 50);
        c.x[0] = tu_randn(MOE_F64, 3, SHAPE(2, 8, 6), 51);
        c.x[1] = tu_randn(MOE_F64, 3, SHAPE(2, 8, 6), 52);
        OK(moe_threads_run(8, mesh_rank, &c, NULL));
        for (int q = 1; q < 8; q++) ASSERT_CLOSE(c.grad[q], c.grad[0], 1e-15);
        /* single rank: the mean over the two replicas of the unsplit loss
         * (global-batch: the micro-batch loss of the concatenated batch) */
        moe_router_config sc = c.cfg;
        moe_tensor *expect = NULL;
        if (kinds[i] == MOE_AUX_GLOBAL_BATCH) {
            moe_tensor *xc;
            OK(moe_cat(&xc, 2, c.x, 0));
            set_losses(&sc, 1, (moe_aux_term[]){{MOE_AUX_MICRO_BATCH, 0.5}});
            moe_router *r;
            OK(moe_router_new(&r, &sc));
            OK(moe_router_set_weight(r, c.w));
            moe_routing *o;
            OK(moe_router_forward(&o, r, xc, NULL, NULL));
            moe_tensor *obj = objective(o->weights, 1), *z0;
            OK(moe_mul_scalar(&z0, obj, 0.0));
            OK(moe_backward(z0, NULL, false));
            OK(moe_clone(&expect, moe_router_weight(r)->grad));
            RELEASE(xc, obj, z0);
            moe_routing_free(o);
            moe_router_free(r);
        } else {
            moe_router *r;
            OK(moe_router_new(&r, &sc));
            OK(moe_router_set_weight(r, c.w));
            OK(moe_router_set_grad_scale(r, 2, false)); /* mean over the 2 replicas: M = 2 */
            for (int d = 0; d < 2; d++) {
                moe_routing *o;
                OK(moe_router_forward(&o, r, c.x[d], NULL, NULL));
                moe_tensor *obj = objective(o->weights, 1), *z0;
                OK(moe_mul_scalar(&z0, obj, 0.0));
                OK(moe_backward(z0, NULL, false));
                RELEASE(obj, z0);
                moe_routing_free(o);
            }
            OK(moe_clone(&expect, moe_router_weight(r)->grad));
            moe_router_free(r);
        }
        ASSERT_CLOSE(c.grad[0], expect, 1e-15);
        RELEASE(expect, c.w, c.x[0], c.x[1]);
        for (int q = 0; q < 8; q++) moe_tensor_release(c.grad[q]);
    }
}
END_TEST

/* The sequence loss counts the top-k map, not the capacity-dropped one:
 * dropping changes the routing but not the loss. */
START_TEST(test_loss_counts_before_dropping)
{
    moe_tensor *x = tu_randn(MOE_F64, 3, SHAPE(2, 8, 6), 61);
    double v[2][2];
    for (int cf = 0; cf < 2; cf++)
        for (int cnt = 0; cnt < 2; cnt++) {
            moe_router_config c = cfg_of(6, 4, 2);
            c.dtype = MOE_F64;
            c.count_from = cnt ? MOE_COUNT_ACTUAL : MOE_COUNT_TOPK;
            c.capacity_factor = cf ? 0.5 : MOE_CAPACITY_NONE;
            set_losses(&c, 1, (moe_aux_term[]){{MOE_AUX_SEQUENCE, 1}});
            moe_router *r;
            OK(moe_router_new(&r, &c));
            moe_routing *o;
            OK(moe_router_forward(&o, r, x, NULL, NULL));
            ck_assert(cf == 0 || o->dropped > 0);
            v[cf][cnt] = item(o->aux[0]);
            moe_routing_free(o);
            moe_router_free(r);
        }
    ck_assert(v[0][0] == v[1][0] && v[0][1] == v[1][1]);
    moe_tensor_release(x);
}
END_TEST

/* Finite differences through the whole router (add mode, f64): x and W. */
typedef struct rgc {
    moe_router *r;
} rgc;

static moe_status router_fn(moe_tensor **out, moe_tensor **in, void *ctx)
{
    rgc *c = ctx;
    moe_tensor *w = moe_router_weight(c->r);
    /* in[1] is the weight: copy its values in, keep the router's leaf */
    bool prev = moe_grad_set_enabled(false);
    memcpy(moe_tensor_data(w), moe_tensor_data(in[1]), moe_tensor_nbytes(w));
    moe_grad_set_enabled(prev);
    moe_routing *o;
    MOE_TRY(moe_router_forward(&o, c->r, in[0], NULL, NULL));
    moe_tensor *a = NULL, *s = NULL;
    moe_status st = moe_routing_dense(o);
    if (st == MOE_OK) st = moe_add(&a, o->aux_total, o->aux_total);
    if (st == MOE_OK) {
        moe_tensor *pieces[3] = {o->weights, o->probs, a}, *flat[3];
        for (int i = 0; i < 3; i++) OK(moe_reshape(&flat[i], pieces[i], 1, (int64_t[]){-1}));
        st = moe_cat(&s, 3, flat, 0);
        for (int i = 0; i < 3; i++) moe_tensor_release(flat[i]);
    }
    moe_tensor_release(a);
    moe_routing_free(o);
    *out = s;
    return st;
}

/* The weight's gradient lives on the router's own leaf: mirror it into in[1]. */
static moe_status router_fn_w(moe_tensor **out, moe_tensor **in, void *ctx)
{
    rgc *c = ctx;
    moe_tensor_zero_grad(moe_router_weight(c->r));
    MOE_TRY(router_fn(out, in, ctx));
    return MOE_OK;
}

START_TEST(test_gradcheck_router)
{
    for (int v = 0; v < 3; v++) {
        moe_router_config c = cfg_of(5, 6, 2);
        c.dtype = MOE_F64;
        c.grad_mode = MOE_GRAD_ADD;
        if (v == 1) {
            c.score = MOE_SCORE_SIGMOID;
            c.groups = 3;
            c.group_topk = 2;
            c.scaling_factor = 1.7;
        }
        if (v == 2) {
            c.pre_softmax = true;
            c.normalize = MOE_NORM_ON;
            c.norm_p = 2;
        }
        set_losses(&c, 3, (moe_aux_term[]){{MOE_AUX_MICRO_BATCH, 0.3}, {MOE_AUX_SEQUENCE, 0.2}, {MOE_AUX_Z, 0.1}});
        rgc ctx;
        OK(moe_router_new(&ctx.r, &c));
        moe_tensor *x = leaf_randn(3, SHAPE(2, 3, 5), 40 + v, MOE_F64);
        moe_tensor *wcopy;
        OK(moe_clone(&wcopy, moe_router_weight(ctx.r)));
        moe_tensor *in[2] = {x, wcopy};
        GRADCHECK(router_fn_w, 1, in, &ctx); /* d/dx */
        /* d/dW: compare the leaf's gradient with central differences by hand */
        moe_tensor *out;
        moe_tensor_zero_grad(moe_router_weight(ctx.r));
        OK(router_fn(&out, in, &ctx));
        moe_tensor *wt = tu_randn(MOE_F64, out->ndim, out->shape, 77);
        OK(moe_backward(out, wt, false));
        moe_tensor *g;
        OK(moe_clone(&g, moe_router_weight(ctx.r)->grad));
        moe_tensor_release(out);
        double *wv = moe_tensor_data(wcopy), *gd = moe_tensor_data(g);
        bool prev = moe_grad_set_enabled(false);
        for (int i = 0; i < 30; i++) {
            double w0 = wv[i], fp, fm;
            wv[i] = w0 + 1e-6;
            OK(router_fn(&out, in, &ctx));
            fp = tu_dot(out, moe_tensor_data(wt));
            moe_tensor_release(out);
            wv[i] = w0 - 1e-6;
            OK(router_fn(&out, in, &ctx));
            fm = tu_dot(out, moe_tensor_data(wt));
            moe_tensor_release(out);
            wv[i] = w0;
            double num = (fp - fm) / 2e-6;
            ck_assert_msg(fabs(num - gd[i]) <= 1e-6 * (1 + fabs(num)), "variant %d dW[%d]: %.12g vs %.12g", v, i,
                          gd[i], num);
        }
        moe_grad_set_enabled(prev);
        RELEASE(x, wcopy, wt, g);
        moe_router_free(ctx.r);
    }
}
END_TEST

/* ---- steps, recomputation, state, metrics ---------------------------------------------------- */

START_TEST(test_recompute_no_double_count)
{
    moe_router_config c = cfg_of(6, 4, 2);
    c.score = MOE_SCORE_SIGMOID;
    c.expert_bias = true;
    c.jitter = 0.05;
    set_losses(&c, 1, (moe_aux_term[]){{MOE_AUX_GLOBAL_BATCH, 0.01}});
    moe_router *a, *b;
    OK(moe_router_new(&a, &c));
    OK(moe_router_new(&b, &c));
    moe_tensor *x[2] = {tu_randn(MOE_F32, 2, SHAPE(8, 6), 1), tu_randn(MOE_F32, 2, SHAPE(8, 6), 2)};
    moe_routing *oa[2], *ob[2], *rb[2];
    for (int m = 0; m < 2; m++) {
        OK(moe_router_forward(&oa[m], a, x[m], NULL, NULL));
        OK(moe_router_forward(&ob[m], b, x[m], NULL, NULL));
    }
    /* b recomputes both micro-batches (activation checkpointing) */
    moe_router_set_recomputing(b, true);
    for (int m = 0; m < 2; m++) {
        OK(moe_router_forward(&rb[m], b, x[m], NULL, NULL));
        ASSERT_CLOSE(rb[m]->weights, ob[m]->weights, 0); /* same jitter noise */
        ASSERT_CLOSE(rb[m]->aux[0], ob[m]->aux[0], 0);   /* same global buffer view */
    }
    FAILS(moe_router_forward(&bad_out, b, x[0], NULL, NULL), MOE_ERR_STATE, "recomputing forward 3");
    moe_router_set_recomputing(b, false);
    ck_assert_int_eq(moe_balance_tracker_micro_batches(moe_router_tracker(b)), 2);
    moe_router_metrics ma, mb;
    OK(moe_router_metrics_get(&ma, a));
    OK(moe_router_metrics_get(&mb, b));
    ck_assert(ma.tokens == 16 && mb.tokens == 16 && ma.micro_batches == 2 && mb.micro_batches == 2);
    ASSERT_CLOSE(ma.tokens_per_expert_step, mb.tokens_per_expert_step, 0);
    moe_router_metrics_release(&ma);
    moe_router_metrics_release(&mb);
    OK(moe_router_step(a));
    OK(moe_router_step(b));
    ASSERT_CLOSE(moe_router_bias(a), moe_router_bias(b), 0);
    for (int m = 0; m < 2; m++) {
        moe_routing_free(oa[m]);
        moe_routing_free(ob[m]);
        moe_routing_free(rb[m]);
    }
    RELEASE(x[0], x[1]);
    moe_router_free(a);
    moe_router_free(b);
}
END_TEST

START_TEST(test_state_save_load)
{
    moe_router_config c = cfg_of(6, 4, 2);
    c.score = MOE_SCORE_SIGMOID;
    c.expert_bias = true;
    c.bias_rate = 0.1;
    set_losses(&c, 1, (moe_aux_term[]){{MOE_AUX_GLOBAL_BATCH, 0.01}});
    moe_router *a, *b;
    OK(moe_router_new(&a, &c));
    OK(moe_router_new(&b, &c));
    moe_tensor *x = tu_randn(MOE_F32, 2, SHAPE(10, 6), 3);
    moe_routing *o;
    OK(moe_router_forward(&o, a, x, NULL, NULL));
    moe_routing_free(o);
    OK(moe_router_step(a));
    OK(moe_router_forward(&o, a, x, NULL, NULL));
    moe_routing_free(o);
    moe_tensor *bias, *counters, *bias2, *counters2;
    OK(moe_router_state_save(a, &bias, &counters));
    ASSERT_SHAPE(counters, 2, 3, 5);
    double *cd = moe_tensor_data(counters);
    ck_assert(cd[4] == 10 && cd[9] == 10 && cd[14] == 10); /* tokens of each row */
    OK(moe_router_state_load(b, bias, counters));
    OK(moe_router_state_save(b, &bias2, &counters2));
    ASSERT_CLOSE(bias2, bias, 0);
    ASSERT_CLOSE(counters2, counters, 0);
    OK(moe_router_step(a));
    OK(moe_router_step(b));
    ASSERT_CLOSE(moe_router_bias(a), moe_router_bias(b), 0);
    moe_tensor *wrong = T(MOE_F64, 2, SHAPE(2, 5), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    FAILS(moe_router_state_load(b, NULL, wrong), MOE_ERR_SHAPE, "counters must be [3 5]");
    /* a fourth row belongs to quantile balancing only */
    moe_tensor *four;
    OK(moe_tensor_zeros(&four, MOE_F64, MOE_CPU, 2, SHAPE(4, 5)));
    FAILS(moe_router_state_load(b, NULL, four), MOE_ERR_STATE, "does not route by quantile balancing");
    moe_tensor_release(four);
    RELEASE(x, bias, counters, bias2, counters2, wrong);
    moe_router_free(a);
    moe_router_free(b);
}
END_TEST

START_TEST(test_metrics_and_log_reduce)
{
    moe_router_config c = cfg_of(6, 4, 2);
    c.pre_softmax = true;
    set_losses(&c, 2, (moe_aux_term[]){{MOE_AUX_MICRO_BATCH, 0.01}, {MOE_AUX_Z, 0.001}});
    moe_router *r[2];
    OK(moe_router_new(&r[0], &c));
    OK(moe_router_new(&r[1], &c));
    moe_router_metrics m;
    OK(moe_router_metrics_get(&m, r[0]));
    ck_assert(m.micro_batches == 0 && isnan(m.max_violation_global) && !m.tokens_per_expert_global);
    /* nothing routed yet: an empty window, not "all experts dead" */
    ck_assert(!m.step_ended && m.tokens == 0 && isnan(m.dead_fraction) && isnan(m.cv) && isnan(m.entropy));
    ck_assert(isnan(m.max_violation_batch) && isnan(m.max_violation_step) && isnan(m.aux_value[0]));
    moe_router_metrics_release(&m);
    double aux_sum[2] = {0};
    for (int mb = 0; mb < 2; mb++) {
        moe_tensor *x = tu_randn(MOE_F32, 2, SHAPE(12, 6), 10 + mb);
        for (int l = 0; l < 2; l++) {
            moe_routing *o;
            OK(moe_router_forward(&o, r[l], x, NULL, NULL));
            aux_sum[0] += item(o->aux[0]);
            aux_sum[1] += item(o->aux[1]);
            moe_routing_free(o);
        }
        moe_tensor_release(x);
    }
    OK(moe_router_metrics_get(&m, r[0]));
    ck_assert(m.micro_batches == 2 && m.tokens == 24 && m.n_aux == 2);
    ck_assert(m.entropy > 0 && m.entropy < 1);
    ck_assert(m.selected_mass > 0.5 && m.selected_mass < 1); /* the top 2 of 4 */
    ck_assert(m.max_violation_step >= 0 && m.max_over_mean >= 1 && m.dropped_fraction == 0);
    moe_router_metrics_release(&m);
    /* logging: the table [L E] and the aux values averaged over layers and micro-batches */
    moe_tensor *table;
    double vals[MOE_AUX_KIND_COUNT];
    OK(moe_router_log_reduce(&table, vals, 2, r, (int64_t[]){0, 1}, 2, NULL));
    ASSERT_SHAPE(table, 2, 2, 4);
    double *tb = moe_tensor_data(table), tot = 0;
    for (int i = 0; i < 8; i++) tot += tb[i];
    ck_assert(tot == 2 * 24 * 2);
    ck_assert(fabs(vals[MOE_AUX_MICRO_BATCH] - aux_sum[0] / 4) < 1e-6);
    ck_assert(fabs(vals[MOE_AUX_Z] - aux_sum[1] / 4) < 1e-5);
    ck_assert(isnan(vals[MOE_AUX_SEQUENCE]));
    moe_tensor_release(table);
    FAILS(moe_router_log_reduce(&table, vals, 2, r, (int64_t[]){0, 5}, 2, NULL), MOE_ERR_INDEX, "layer id 5");
    ck_assert_ptr_null(table);
    /* the step makes the global view; the step window it closed stays in the
     * metrics until the next forward */
    OK(moe_router_metrics_get(&m, r[0]));
    double cv = m.cv, entropy = m.entropy, aux0 = m.aux_value[0];
    moe_router_metrics_release(&m);
    OK(moe_router_step(r[0]));
    OK(moe_router_metrics_get(&m, r[0]));
    ck_assert(m.tokens_per_expert_global && !isnan(m.max_violation_global) && m.step == 1);
    ck_assert(m.step_ended && m.micro_batches == 2 && m.tokens == 24);
    ck_assert(m.cv == cv && m.entropy == entropy && m.aux_value[0] == aux0);
    moe_router_metrics_release(&m);
    /* a step with no forward: the window it closed is empty */
    OK(moe_router_step(r[0]));
    OK(moe_router_metrics_get(&m, r[0]));
    ck_assert(m.step_ended && m.micro_batches == 0 && m.tokens == 0 && m.step == 2);
    ck_assert(isnan(m.dead_fraction) && isnan(m.cv) && isnan(m.max_over_mean) && isnan(m.selected_mass));
    ck_assert(isnan(m.max_violation_global)); /* the global counts of that step are all 0 */
    moe_router_metrics_release(&m);
    moe_router_free(r[0]);
    moe_router_free(r[1]);
}
END_TEST

START_TEST(test_eval_and_no_grad)
{
    moe_router_config c = cfg_of(6, 4, 2);
    set_losses(&c, 1, (moe_aux_term[]){{MOE_AUX_MICRO_BATCH, 0.01}});
    moe_router *r;
    OK(moe_router_new(&r, &c));
    moe_tensor *x = tu_randn(MOE_F32, 2, SHAPE(5, 6), 1);
    bool prev = moe_grad_set_enabled(false);
    moe_routing *o;
    OK(moe_router_forward(&o, r, x, NULL, NULL)); /* values still there for logging */
    ck_assert(!o->weights->requires_grad && item(o->aux[0]) > 0);
    moe_routing_free(o);
    moe_grad_set_enabled(prev);
    moe_router_set_training(r, false);
    OK(moe_router_forward(&o, r, x, NULL, NULL));
    moe_routing_free(o);
    moe_router_metrics m;
    OK(moe_router_metrics_get(&m, r));
    ck_assert(m.micro_batches == 1); /* the eval forward is not counted */
    moe_router_metrics_release(&m);
    moe_tensor_release(x);
    moe_router_free(r);
}
END_TEST

START_TEST(test_sinkhorn_balances)
{
    /* every token prefers expert 0 a little: plain top-1 sends all there,
     * Sinkhorn spreads them */
    moe_router_config c = cfg_of(4, 4, 1);
    c.sinkhorn = true;
    moe_router *r = eye_router(&c);
    moe_tensor *x = tu_randn(MOE_F32, 2, SHAPE(64, 4), 5), *xs;
    float *d = moe_tensor_data(x);
    for (int t = 0; t < 64; t++) d[4 * t] += 1.5f;
    OK(moe_mul_scalar(&xs, x, 1.0));
    moe_routing *o;
    OK(moe_router_forward(&o, r, xs, NULL, NULL));
    int64_t *cnt = moe_tensor_data(o->counts);
    for (int e = 0; e < 4; e++) ck_assert_msg(cnt[e] >= 8 && cnt[e] <= 28, "expert %d got %lld", e, (long long)cnt[e]);
    /* weights: σ of the chosen logit (K = 1) */
    float *w = moe_tensor_data(o->weights), *z = moe_tensor_data(o->logits);
    int64_t *id = moe_tensor_data(o->experts);
    for (int t = 0; t < 64; t++) ck_assert(fabs(w[t] - 1 / (1 + exp(-z[4 * t + id[t]]))) < 1e-6);
    moe_routing_free(o);
    RELEASE(x, xs);
    moe_router_free(r);
}
END_TEST

/* The same results, bit for bit, on 1 and 2 threads (large enough to run in
 * parallel): weights, aux losses and the logits' gradient (W = I keeps the
 * gate GEMM, whose rounding is BLAS's business, exact: dx = dz). */
START_TEST(test_thread_count_independent)
{
    moe_tensor *res[2][3];
    int saved = omp_get_max_threads();
    for (int th = 0; th < 2; th++) {
        omp_set_num_threads(th + 1);
        moe_router_config c = cfg_of(32, 32, 4);
        c.score = MOE_SCORE_SIGMOID;
        c.groups = 4;
        c.group_topk = 2;
        c.capacity_factor = 1.0;
        set_losses(&c, 4, (moe_aux_term[]){{MOE_AUX_MICRO_BATCH, 0.1}, {MOE_AUX_SEQUENCE, 0.1},
                                           {MOE_AUX_OLMO_INSTANCE, 0.1}, {MOE_AUX_Z, 0.01}});
        moe_router *r = eye_router(&c);
        moe_tensor *x = leaf_randn(3, SHAPE(4, 512, 32), 3, MOE_F32);
        moe_routing *o;
        OK(moe_router_forward(&o, r, x, NULL, NULL));
        moe_tensor *obj = objective(o->weights, 2);
        OK(moe_backward(obj, NULL, false));
        OK(moe_clone(&res[th][0], o->weights));
        OK(moe_stack(&res[th][1], 4, o->aux, 0));
        OK(moe_clone(&res[th][2], x->grad));
        RELEASE(x, obj);
        moe_routing_free(o);
        moe_router_free(r);
    }
    omp_set_num_threads(saved);
    for (int i = 0; i < 3; i++) {
        ASSERT_CLOSE(res[1][i], res[0][i], 0);
        RELEASE(res[0][i], res[1][i]);
    }
}
END_TEST

static bool same_values(moe_tensor *a, moe_tensor *b)
{
    int64_t n = moe_tensor_numel(a);
    if (n != moe_tensor_numel(b)) return false;
    double *u = malloc(sizeof(double) * (size_t)n), *v = malloc(sizeof(double) * (size_t)n);
    OK(moe_tensor_to_doubles(a, u));
    OK(moe_tensor_to_doubles(b, v));
    bool same = memcmp(u, v, sizeof(double) * (size_t)n) == 0;
    free(u), free(v);
    return same;
}

/* Replay and quantile balancing from C: every bad input is an error naming
 * the values and leaves the router as it was (its record, its β). */
START_TEST(test_replay_and_qb_errors)
{
    moe_router_config c = cfg_of(2, 3, 2);
    c.dtype = MOE_F64;
    c.replay = MOE_REPLAY_RECORD;
    moe_router *r;
    OK(moe_router_new(&r, &c));
    moe_tensor *x = T(MOE_F64, 2, SHAPE(2, 2), 1, 0, 0, 1);
    moe_tensor *out_of_range = T(MOE_I64, 2, SHAPE(2, 2), 0, 1, 3, 1);
    moe_tensor *dup = T(MOE_I64, 2, SHAPE(2, 2), 0, 1, 2, 2);
    moe_tensor *shape = T(MOE_I64, 2, SHAPE(1, 2), 0, 1);
    moe_tensor *good = T(MOE_I64, 2, SHAPE(2, 2), 2, 0, 1, 2);
    moe_routing *o = NULL;
    FAILS(moe_router_forward_ids(&o, r, x, NULL, NULL, out_of_range), MOE_ERR_INDEX,
          "id 3 at token 1, slot 0 is outside [0, 3)");
    FAILS(moe_router_forward_ids(&o, r, x, NULL, NULL, dup), MOE_ERR_VALUE, "token 1 lists expert 2 twice");
    FAILS(moe_router_forward_ids(&o, r, x, NULL, NULL, shape), MOE_ERR_SHAPE, "#:experts must be i64 [2 2]");
    int64_t n;
    moe_router_record(r, &n);
    ck_assert_int_eq(n, 0);
    OK(moe_router_replay(r, 1, &good));
    OK(moe_router_forward(&o, r, x, NULL, NULL));
    ck_assert(same_values(o->experts, good));
    moe_routing_free(o);
    moe_tensor *const *rec = moe_router_record(r, &n);
    ck_assert_int_eq(n, 1);
    ck_assert(same_values(rec[0], good));
    moe_router_free(r);

    /* quantile balancing */
    c = cfg_of(4, 4, 1);
    c.pre_softmax = true;
    c.routing = MOE_ROUTING_QUANTILE_BALANCING;
    moe_router_config bad = c;
    bad.groups = 2;
    bad.group_topk = 1;
    FAILS(moe_router_new(&r, &bad), MOE_ERR_ARG, "takes no group limiting");
    bad = c;
    moe_aux_term t = {MOE_AUX_SEQUENCE, 1e-3};
    OK(moe_router_config_set_losses(&bad, 1, &t));
    FAILS(moe_router_new(&r, &bad), MOE_ERR_ARG, "'sequence' has coefficient 0.001");
    bad = c;
    bad.top_k = 4;
    FAILS(moe_router_new(&r, &bad), MOE_ERR_ARG, "needs top-k < experts");
    bad = c;
    bad.qb_ema = -0.5;
    FAILS(moe_router_new(&r, &bad), MOE_ERR_ARG, "qb-ema must be in [0, 1), got -0.5");
    OK(moe_router_new(&r, &c));
    moe_tensor *x3 = tu_randn(MOE_F32, 2, SHAPE(3, 4), 5), *x4 = tu_randn(MOE_F32, 2, SHAPE(4, 4), 6);
    OK(moe_tensor_requires_grad_(x3, true));
    OK(moe_tensor_requires_grad_(x4, true));
    moe_tensor *valid = T(MOE_BOOL, 1, SHAPE(4), 1, 1, 1, 0);
    FAILS(moe_router_forward(&o, r, x3, NULL, NULL), MOE_ERR_SHAPE, "T·K = 3·1 = 3 is not divisible by E = 4");
    FAILS(moe_router_forward(&o, r, x4, valid, NULL), MOE_ERR_ARG, "takes no padding mask");
    OK(moe_router_step(r));
    const float *beta = moe_tensor_data(moe_router_qb_beta(r));
    for (int e = 0; e < 4; e++) ck_assert(beta[e] == 0.0f); /* nothing was accumulated */
    OK(moe_router_forward(&o, r, x4, NULL, NULL));
    moe_routing_free(o);
    /* the quantiles of the step so far travel with the state: a router that
     * loads it ends the step with the same β */
    moe_tensor *qstate;
    moe_router *r2;
    OK(moe_router_state_save(r, NULL, &qstate));
    ASSERT_SHAPE(qstate, 2, 4, 5);
    ck_assert(((double *)moe_tensor_data(qstate))[19] == 1.0); /* one micro-batch */
    OK(moe_router_new(&r2, &c));
    OK(moe_router_state_load(r2, NULL, qstate));
    OK(moe_router_step(r2));
    OK(moe_router_step(r));
    ASSERT_CLOSE(moe_router_qb_beta(r2), moe_router_qb_beta(r), 0);
    /* three rows (an older state) clear the sums: the next step keeps β */
    moe_tensor *three, *beta_before;
    OK(moe_tensor_zeros(&three, MOE_F64, MOE_CPU, 2, SHAPE(3, 5)));
    OK(moe_router_forward(&o, r2, x4, NULL, NULL));
    moe_routing_free(o);
    OK(moe_router_state_load(r2, NULL, three));
    OK(moe_clone(&beta_before, moe_router_qb_beta(r2)));
    OK(moe_router_step(r2));
    ASSERT_CLOSE(moe_router_qb_beta(r2), beta_before, 0);
    RELEASE(three, beta_before);
    moe_router_free(r2);
    moe_tensor_release(qstate);
    float sum = 0;
    bool moved = false;
    for (int e = 0; e < 4; e++) {
        sum += beta[e];
        moved |= beta[e] != 0.0f;
    }
    ck_assert(moved);
    ck_assert(fabsf(sum) < 1e-6f); /* re-centred */
    moe_router_free(r);
    RELEASE(x, out_of_range, dup, shape, good, x3, x4, valid);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("router");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, test_config_defaults_and_names);
    tcase_add_test(tc, test_presets);
    tcase_add_test(tc, test_bad_config);
    suite_add_tcase(s, tc);
    tc = tcase_create("selection");
    tcase_add_test(tc, test_forward_shapes);
    tcase_add_test(tc, test_ties_lower_index);
    tcase_add_test(tc, test_group_limited);
    tcase_add_test(tc, test_capacity_policies);
    tcase_add_test(tc, test_padding_tokens);
    tcase_add_test(tc, test_expert_bias);
    tcase_add_test(tc, test_bias_center_same_selection);
    tcase_add_test(tc, test_debug_routing);
    tcase_add_test(tc, test_jitter);
    tcase_add_test(tc, test_sinkhorn_balances);
    tcase_add_test(tc, test_forward_errors_leave_state);
    tcase_add_test(tc, test_replay_and_qb_errors);
    suite_add_tcase(s, tc);
    tc = tcase_create("gradients");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_inject_equals_add);
    tcase_add_test(tc, test_inject_scales);
    tcase_add_test(tc, test_parallel_invariant);
    tcase_add_test(tc, test_loss_counts_before_dropping);
    tcase_add_test(tc, test_gradcheck_router);
    suite_add_tcase(s, tc);
    tc = tcase_create("state");
    tcase_add_test(tc, test_recompute_no_double_count);
    tcase_add_test(tc, test_state_save_load);
    tcase_add_test(tc, test_metrics_and_log_reduce);
    tcase_add_test(tc, test_eval_and_no_grad);
    tcase_add_test(tc, test_thread_count_independent);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
