/* router-type.c — the foreign objects of (moelab router): <router>
 * (moe_router), <routing> (moe_routing: the result of one forward) and
 * <balance-tracker>, each holding one C object in its single slot and freeing
 * it in an idempotent finalizer; their predicates and printed forms. A router
 * or tracker holds references to its process groups (the C side takes them;
 * group reference counts are atomic, so a finalizer may drop them). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "bindings.h"

static SCM router_class = SCM_BOOL_F;
static SCM routing_class = SCM_BOOL_F;
static SCM tracker_class = SCM_BOOL_F;


static void finalize_router(SCM obj)
{
    moe_router *r = scm_foreign_object_ref(obj, 0);
    if (!r) return;
    scm_foreign_object_set_x(obj, 0, NULL);
    moe_router_free(r);
}

static void finalize_routing(SCM obj)
{
    moe_routing *o = scm_foreign_object_ref(obj, 0);
    if (!o) return;
    scm_foreign_object_set_x(obj, 0, NULL);
    moe_routing_free(o);
}

static void finalize_tracker(SCM obj)
{
    moe_balance_tracker *t = scm_foreign_object_ref(obj, 0);
    if (!t) return;
    scm_foreign_object_set_x(obj, 0, NULL);
    moe_balance_tracker_free(t);
}

SCM moelab_wrap_router(moe_router *r) { return scm_make_foreign_object_1(router_class, r); }
SCM moelab_wrap_routing(moe_routing *o) { return scm_make_foreign_object_1(routing_class, o); }
SCM moelab_wrap_tracker(moe_balance_tracker *t) { return scm_make_foreign_object_1(tracker_class, t); }

moe_router *moelab_to_router(SCM obj, int pos, const char *subr)
{
    if (!SCM_IS_A_P(obj, router_class)) scm_wrong_type_arg_msg(subr, pos, obj, "router");
    return scm_foreign_object_ref(obj, 0);
}

moe_routing *moelab_to_routing(SCM obj, int pos, const char *subr)
{
    if (!SCM_IS_A_P(obj, routing_class)) scm_wrong_type_arg_msg(subr, pos, obj, "routing");
    return scm_foreign_object_ref(obj, 0);
}

moe_balance_tracker *moelab_to_tracker(SCM obj, int pos, const char *subr)
{
    if (!SCM_IS_A_P(obj, tracker_class)) scm_wrong_type_arg_msg(subr, pos, obj, "balance tracker");
    return scm_foreign_object_ref(obj, 0);
}

SCM_DEFINE(moelab_router_p, "%router?", 1, 0, 0, (SCM obj), "True when @var{obj} is a router.")
{
    return scm_from_bool(SCM_IS_A_P(obj, router_class));
}

SCM_DEFINE(moelab_routing_p, "%routing?", 1, 0, 0, (SCM obj), "True when @var{obj} is a routing.")
{
    return scm_from_bool(SCM_IS_A_P(obj, routing_class));
}

SCM_DEFINE(moelab_balance_tracker_p, "%balance-tracker?", 1, 0, 0, (SCM obj),
           "True when @var{obj} is a balance tracker.")
{
    return scm_from_bool(SCM_IS_A_P(obj, tracker_class));
}

SCM_DEFINE(moelab_router_repr, "%router-repr", 1, 0, 0, (SCM obj), "The printed form of a router.")
#define FUNC_NAME "router-repr"
{
    const moe_router_config *c = moe_router_get_config(moelab_to_router(obj, 1, FUNC_NAME));
    char buf[512], part[96];
    snprintf(buf, sizeof buf, "#<router E=%lld K=%lld D=%lld %s", (long long)c->experts,
             (long long)c->top_k, (long long)c->hidden, moe_score_fn_name(c->score));
#define ADD(...)                                                               \
    do {                                                                       \
        snprintf(part, sizeof part, __VA_ARGS__);                              \
        strncat(buf, part, sizeof buf - strlen(buf) - 1);                      \
    } while (0)
    if (c->dtype != MOE_F32) ADD(" %s", moe_dtype_name(c->dtype));
    if (c->score == MOE_SCORE_SOFTMAX) ADD(c->pre_softmax ? " pre-softmax" : " post-softmax");
    if (c->groups) ADD(" groups=%lld/%lld", (long long)c->group_topk, (long long)c->groups);
    if (c->scaling_factor != 1.0) ADD(" scaling=%g", c->scaling_factor);
    if (c->sinkhorn) ADD(" sinkhorn");
    if (c->debug_routing != MOE_DEBUG_NONE) ADD(" debug=%s", moe_debug_routing_name(c->debug_routing));
    if (!isnan(c->capacity_factor)) ADD(" capacity=%g", c->capacity_factor);
    if (c->expert_bias) ADD(" expert-bias");
    if (c->routing != MOE_ROUTING_TOPK) ADD(" %s", moe_routing_mode_name(c->routing));
    if (c->convention != MOE_CONVENTION_EXACT) ADD(" convention=%s", moe_convention_name(c->convention));
    if (c->replay != MOE_REPLAY_OFF) ADD(" replay=%s", moe_replay_mode_name(c->replay));
    for (int i = 0; i < c->n_losses; i++)
        ADD(" %s=%g", moe_aux_kind_name(c->losses[i].kind), c->losses[i].coeff);
    if (c->preset) ADD(" (%s)", c->preset);
#undef ADD
    strncat(buf, ">", sizeof buf - strlen(buf) - 1);
    scm_remember_upto_here_1(obj);
    return scm_from_utf8_string(buf);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_routing_repr, "%routing-repr", 1, 0, 0, (SCM obj), "The printed form of a routing.")
#define FUNC_NAME "routing-repr"
{
    moe_routing *o = moelab_to_routing(obj, 1, FUNC_NAME);
    char buf[256];
    int n = snprintf(buf, sizeof buf, "#<routing T=%lld K=%lld E=%lld tokens=%lld",
                     (long long)o->experts->shape[0], (long long)o->experts->shape[1],
                     (long long)o->logits->shape[o->logits->ndim - 1], (long long)o->tokens);
    if (o->capacity >= 0)
        n += snprintf(buf + n, sizeof buf - (size_t)n, " capacity=%lld dropped=%lld",
                      (long long)o->capacity, (long long)o->dropped);
    for (int i = 0; i < o->n_aux && n < (int)sizeof buf - 24; i++)
        n += snprintf(buf + n, sizeof buf - (size_t)n, " %s", moe_aux_kind_name(o->aux_kind[i]));
    snprintf(buf + n, sizeof buf - (size_t)n, ">");
    scm_remember_upto_here_1(obj);
    return scm_from_utf8_string(buf);
}
#undef FUNC_NAME

void moelab_init_router_type(void)
{
    router_class = scm_make_foreign_object_type(sym("<router>"), scm_list_1(sym("ptr")), finalize_router);
    routing_class = scm_make_foreign_object_type(sym("<routing>"), scm_list_1(sym("ptr")), finalize_routing);
    tracker_class =
        scm_make_foreign_object_type(sym("<balance-tracker>"), scm_list_1(sym("ptr")), finalize_tracker);
    scm_gc_protect_object(router_class);
    scm_gc_protect_object(routing_class);
    scm_gc_protect_object(tracker_class);
    scm_c_define("<router>", router_class);
    scm_c_define("<routing>", routing_class);
    scm_c_define("<balance-tracker>", tracker_class);
#ifndef SCM_MAGIC_SNARFER
#include "router-type.x"
#endif
}
