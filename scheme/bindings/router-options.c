/* router-options.c — make-router's keywords → moe_router_config, and a
 * router's metrics → an alist. Shared by every binding that builds a router
 * (make-router, make-moe-layer #:router-options) so they take exactly the
 * same options and fail with the same messages.
 *
 * Options are a keyword list (#:score sigmoid #:top-k 2 …). #:preset is
 * applied first wherever it appears (a preset sets conventions, the user's
 * explicit keywords override them); the other keywords apply in order.
 * Values: enums as symbols or strings; #f for "none" (groups, group-top-k,
 * capacity-factor, debug-routing, preset); 'auto where the contract has it.
 * Boolean keywords may be written with or without their trailing '?'.
 * Range checks (K > E, cf <= 0, …) are moe_router_config_validate's job. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bindings.h"


/* #f for NaN ("none", "not yet"). */
static SCM real_or_false(double v) { return isnan(v) ? SCM_BOOL_F : scm_from_double(v); }

/* ---- the keyword table ----------------------------------------------------------- */

typedef enum opt_kind {
    OPT_INT,          /* int64 */
    OPT_INT_OR_NONE,  /* int64; #f = 0 */
    OPT_INT_OR_AUTO,  /* int64; 'auto = 0 */
    OPT_REAL,         /* double */
    OPT_REAL_OR_NONE, /* double; #f = MOE_CAPACITY_NONE */
    OPT_BOOL,
    OPT_SEED,         /* uint64 */
    OPT_DTYPE,
    OPT_SCORE,
    OPT_NORMALIZE,    /* 'auto #t #f (or auto on off) */
    OPT_CAPACITY_FORMULA,
    OPT_DROP_POLICY,
    OPT_COUNT_FROM,
    OPT_GRAD_MODE,
    OPT_DEBUG_ROUTING, /* #f = none */
    OPT_LOSSES,
    OPT_PRESET,
    OPT_CONVENTION,
    OPT_ROUTING,
    OPT_REPLAY,       /* #f = off */
} opt_kind;

typedef struct opt_spec {
    const char *name; /* keyword without #: (booleans end in '?') */
    opt_kind kind;
    size_t offset;    /* field in moe_router_config */
} opt_spec;

#define FIELD(f) offsetof(moe_router_config, f)

static const opt_spec specs[] = {
    {"hidden", OPT_INT, FIELD(hidden)},
    {"experts", OPT_INT, FIELD(experts)},
    {"top-k", OPT_INT, FIELD(top_k)},
    {"dtype", OPT_DTYPE, FIELD(dtype)},
    {"score", OPT_SCORE, FIELD(score)},
    {"pre-softmax?", OPT_BOOL, FIELD(pre_softmax)},
    {"normalize?", OPT_NORMALIZE, FIELD(normalize)},
    {"norm-eps", OPT_REAL, FIELD(norm_eps)},
    {"norm-p", OPT_REAL, FIELD(norm_p)},
    {"groups", OPT_INT_OR_NONE, FIELD(groups)},
    {"group-top-k", OPT_INT_OR_NONE, FIELD(group_topk)},
    {"group-score-top", OPT_INT_OR_AUTO, FIELD(group_score_top)},
    {"scaling-factor", OPT_REAL, FIELD(scaling_factor)},
    {"jitter", OPT_REAL, FIELD(jitter)},
    {"score-offset", OPT_REAL, FIELD(score_offset)},
    {"sinkhorn?", OPT_BOOL, FIELD(sinkhorn)},
    {"debug-routing", OPT_DEBUG_ROUTING, FIELD(debug_routing)},
    {"debug-skew", OPT_REAL, FIELD(debug_skew)},
    {"debug-keep-weights?", OPT_BOOL, FIELD(debug_keep_weights)},
    {"routing", OPT_ROUTING, FIELD(routing)},
    {"qb-ema", OPT_REAL, FIELD(qb_ema)},
    {"replay", OPT_REPLAY, FIELD(replay)},
    {"capacity-factor", OPT_REAL_OR_NONE, FIELD(capacity_factor)},
    {"capacity-formula", OPT_CAPACITY_FORMULA, FIELD(capacity_formula)},
    {"ep-size", OPT_INT, FIELD(ep_size)},
    {"drop-policy", OPT_DROP_POLICY, FIELD(drop_policy)},
    {"pad-to-capacity?", OPT_BOOL, FIELD(pad_to_capacity)},
    {"expert-bias?", OPT_BOOL, FIELD(expert_bias)},
    {"bias-rate", OPT_REAL, FIELD(bias_rate)},
    {"bias-center?", OPT_BOOL, FIELD(bias_center)},
    {"losses", OPT_LOSSES, 0},
    {"count-from", OPT_COUNT_FROM, FIELD(count_from)},
    {"loss-eps", OPT_REAL, FIELD(loss_eps)},
    {"loss-div-factor", OPT_REAL, FIELD(loss_div_factor)},
    {"num-moe-layers", OPT_INT, FIELD(num_moe_layers)},
    {"k-in-f?", OPT_BOOL, FIELD(k_in_f)},
    {"global-buffer?", OPT_BOOL, FIELD(global_buffer)},
    {"convention", OPT_CONVENTION, FIELD(convention)},
    {"z-loss-div?", OPT_BOOL, FIELD(z_loss_div)},
    {"grad-mode", OPT_GRAD_MODE, FIELD(grad_mode)},
    {"grad-accum", OPT_INT, FIELD(grad_accum)},
    {"per-token-loss?", OPT_BOOL, FIELD(per_token_loss)},
    {"pp-size", OPT_INT, FIELD(pp_size)},
    {"training?", OPT_BOOL, FIELD(training)},
    {"seed", OPT_SEED, FIELD(seed)},
    {"preset", OPT_PRESET, 0},
};
#define N_SPECS (sizeof specs / sizeof *specs)

/* The spec for keyword NAME (a boolean also answers without its '?'). */
static const opt_spec *find_spec(const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < N_SPECS; i++) {
        const char *s = specs[i].name;
        size_t m = strlen(s);
        if (strcmp(s, name) == 0) return &specs[i];
        if (specs[i].kind == OPT_BOOL && m == n + 1 && s[n] == '?' && strncmp(s, name, n) == 0)
            return &specs[i];
    }
    return NULL;
}

/* ---- errors -------------------------------------------------------------------------- */

/* OBJ as `write` shows it, into BUF (cut short when long). */
static void written(SCM obj, char *buf, size_t size)
{
    char *s = scm_to_utf8_string(scm_object_to_string(obj, SCM_UNDEFINED));
    snprintf(buf, size, "%s", s);
    free(s);
}

static SCM_NORETURN void bad_value(const char *subr, const char *key, SCM value, const char *expected)
{
    char shown[256];
    written(value, shown, sizeof shown);
    moelab_throw(subr, MOE_ERR_ARG, "#:%s expects %s, got %s", key, expected, shown);
}

/* The last C error (e.g. an unknown preset) as moelab-error naming KEY. */
static SCM_NORETURN void bad_value_last(const char *subr, const char *key)
{
    moe_status code = moe_last_status();
    char text[1024];
    const char *m = moe_last_error();
    const char *colon = strstr(m, ": ");
    if (colon && !memchr(m, ' ', (size_t)(colon - m))) m = colon + 2; /* drop the C op's "op: " */
    snprintf(text, sizeof text, "%s", m);
    moe_clear_error();
    moelab_throw(subr, code == MOE_OK ? MOE_ERR_ARG : code, "#:%s: %s", key, text);
}

/* ---- values --------------------------------------------------------------------------- */

static int64_t int_value(const char *subr, const char *key, SCM value)
{
    if (!scm_is_signed_integer(value, INT64_MIN, INT64_MAX)) bad_value(subr, key, value, "an integer");
    return scm_to_int64(value);
}

static double real_value(const char *subr, const char *key, SCM value)
{
    if (!scm_is_real(value)) bad_value(subr, key, value, "a real number");
    return scm_to_double(value);
}

/* One reader per enum: the value parsed by PARSE, or a moelab-error listing CHOICES. */
#define ENUM_READER(fn, type, parse, choices)                                  \
    static type fn(const char *subr, const char *key, SCM value)               \
    {                                                                          \
        char name[64];                                                         \
        type v;                                                                \
        if (!moelab_name_text(value, name, sizeof name) || !parse(name, &v))   \
            bad_value(subr, key, value, "one of " choices);                    \
        return v;                                                              \
    }

ENUM_READER(dtype_value, moe_dtype, moe_dtype_parse, "f32 f64")
ENUM_READER(score_value, moe_score_fn, moe_score_fn_parse, "softmax sigmoid sqrtsoftplus")
ENUM_READER(norm_value, moe_norm_mode, moe_norm_mode_parse, "auto #t #f (or auto on off)")
ENUM_READER(formula_value, moe_capacity_formula, moe_capacity_formula_parse, "megatron megablocks")
ENUM_READER(drop_value, moe_drop_policy, moe_drop_policy_parse, "probs position")
ENUM_READER(count_value, moe_count_from, moe_count_from_parse, "topk actual")
ENUM_READER(grad_value, moe_grad_mode, moe_grad_mode_parse, "inject add")
ENUM_READER(debug_value, moe_debug_routing, moe_debug_routing_parse, "#f none uniform imbalance random")
ENUM_READER(convention_value, moe_convention, moe_convention_parse, "exact megatron")
ENUM_READER(routing_value, moe_routing_mode, moe_routing_mode_parse, "topk quantile-balancing")
ENUM_READER(replay_value, moe_replay_mode, moe_replay_mode_parse, "#f record")

static void set_losses(moe_router_config *cfg, SCM value, const char *subr, const char *key)
{
    const char *expected = "an alist of (kind . coefficient), kind one of micro-batch sequence "
                           "global-batch olmo-local-batch olmo-instance megablocks z";
    moe_aux_term terms[MOE_ROUTER_MAX_LOSSES];
    int n = 0;
    if (scm_is_false(value)) value = SCM_EOL;
    if (scm_ilength(value) < 0) bad_value(subr, key, value, expected);
    for (SCM l = value; scm_is_pair(l); l = SCM_CDR(l)) {
        SCM term = SCM_CAR(l);
        char name[64];
        moe_aux_kind kind;
        if (!scm_is_pair(term) || !moelab_name_text(SCM_CAR(term), name, sizeof name) ||
            !moe_aux_kind_parse(name, &kind) || !scm_is_real(SCM_CDR(term)))
            bad_value(subr, key, term, expected);
        if (n == MOE_ROUTER_MAX_LOSSES)
            moelab_throw(subr, MOE_ERR_ARG, "#:%s: more than %d losses", key, MOE_ROUTER_MAX_LOSSES);
        terms[n].kind = kind;
        terms[n++].coeff = scm_to_double(SCM_CDR(term));
    }
    if (moe_router_config_set_losses(cfg, n, terms) != MOE_OK) bad_value_last(subr, key);
}

static void apply_preset(moe_router_config *cfg, SCM value, const char *subr)
{
    char name[64];
    if (scm_is_false(value)) return;
    if (!moelab_name_text(value, name, sizeof name))
        bad_value(subr, "preset", value,
                  "#f or one of megatron olmo-core torchtitan megablocks deepseek-v3 qwen-global");
    if (moe_router_config_preset(cfg, name) != MOE_OK) bad_value_last(subr, "preset");
}

static void apply_one(moe_router_config *cfg, const opt_spec *spec, SCM value, const char *subr)
{
    const char *key = spec->name;
    char *field = (char *)cfg + spec->offset;
    switch (spec->kind) {
    case OPT_INT:
        *(int64_t *)field = int_value(subr, key, value);
        break;
    case OPT_INT_OR_NONE:
        *(int64_t *)field = scm_is_false(value) ? 0 : int_value(subr, key, value);
        break;
    case OPT_INT_OR_AUTO:
        *(int64_t *)field = scm_is_eq(value, scm_from_utf8_symbol("auto")) || scm_is_false(value)
                                ? 0
                                : int_value(subr, key, value);
        break;
    case OPT_REAL:
        *(double *)field = real_value(subr, key, value);
        break;
    case OPT_REAL_OR_NONE:
        *(double *)field = scm_is_false(value) ? MOE_CAPACITY_NONE : real_value(subr, key, value);
        break;
    case OPT_BOOL:
        if (!scm_is_bool(value)) bad_value(subr, key, value, "#t or #f");
        *(bool *)field = scm_is_true(value);
        break;
    case OPT_SEED:
        if (!scm_is_unsigned_integer(value, 0, UINT64_MAX))
            bad_value(subr, key, value, "a non-negative integer");
        *(uint64_t *)field = scm_to_uint64(value);
        break;
    case OPT_DTYPE:
        *(moe_dtype *)field = dtype_value(subr, key, value);
        break;
    case OPT_SCORE:
        *(moe_score_fn *)field = score_value(subr, key, value);
        break;
    case OPT_NORMALIZE:
        if (scm_is_bool(value))
            *(moe_norm_mode *)field = scm_is_true(value) ? MOE_NORM_ON : MOE_NORM_OFF;
        else
            *(moe_norm_mode *)field = norm_value(subr, key, value);
        break;
    case OPT_CAPACITY_FORMULA:
        *(moe_capacity_formula *)field = formula_value(subr, key, value);
        break;
    case OPT_DROP_POLICY:
        *(moe_drop_policy *)field = drop_value(subr, key, value);
        break;
    case OPT_COUNT_FROM:
        *(moe_count_from *)field = count_value(subr, key, value);
        break;
    case OPT_GRAD_MODE:
        *(moe_grad_mode *)field = grad_value(subr, key, value);
        break;
    case OPT_DEBUG_ROUTING:
        *(moe_debug_routing *)field = scm_is_false(value) ? MOE_DEBUG_NONE : debug_value(subr, key, value);
        break;
    case OPT_LOSSES:
        set_losses(cfg, value, subr, key);
        break;
    case OPT_PRESET:
        break; /* applied first */
    case OPT_CONVENTION:
        *(moe_convention *)field = convention_value(subr, key, value);
        break;
    case OPT_ROUTING:
        *(moe_routing_mode *)field = routing_value(subr, key, value);
        break;
    case OPT_REPLAY:
        *(moe_replay_mode *)field = scm_is_false(value) ? MOE_REPLAY_OFF : replay_value(subr, key, value);
        break;
    }
}

/* ---- the entry points ------------------------------------------------------------------ */

static const opt_spec *spec_of(SCM key, const char *subr)
{
    if (!scm_is_keyword(key)) {
        char shown[256];
        written(key, shown, sizeof shown);
        moelab_throw(subr, MOE_ERR_ARG, "expected a keyword such as #:top-k, got %s", shown);
    }
    char name[64];
    moelab_name_text(scm_keyword_to_symbol(key), name, sizeof name);
    const opt_spec *spec = find_spec(name);
    if (!spec) {
        char known[1400] = "";
        for (size_t i = 0; i < N_SPECS; i++) {
            strcat(known, " #:");
            strcat(known, specs[i].name);
        }
        moelab_throw(subr, MOE_ERR_ARG, "unknown keyword #:%s; known:%s", name, known);
    }
    return spec;
}

void moelab_router_options(SCM options, moe_router_config *cfg, const char *subr)
{
    long n = scm_ilength(options);
    if (n < 0 || n % 2) {
        char shown[256];
        written(options, shown, sizeof shown);
        moelab_throw(subr, MOE_ERR_ARG, "options must be keyword/value pairs, got %s", shown);
    }
    /* Check every keyword before touching CFG, then the preset, then the rest. */
    for (SCM l = options; scm_is_pair(l); l = SCM_CDDR(l)) spec_of(SCM_CAR(l), subr);
    for (SCM l = options; scm_is_pair(l); l = SCM_CDDR(l))
        if (spec_of(SCM_CAR(l), subr)->kind == OPT_PRESET) apply_preset(cfg, SCM_CADR(l), subr);
    for (SCM l = options; scm_is_pair(l); l = SCM_CDDR(l))
        apply_one(cfg, spec_of(SCM_CAR(l), subr), SCM_CADR(l), subr);
}

/* ---- metrics ------------------------------------------------------------------------------ */


/* T as a tensor (the alist takes over the reference) or #f for NULL. */
static SCM tensor_or_false(moe_tensor **t)
{
    if (!*t) return SCM_BOOL_F;
    SCM obj = moelab_wrap(*t);
    *t = NULL;
    return obj;
}


SCM moelab_router_metrics_alist(moe_router *r, const char *subr)
{
    moe_router_metrics m;
    MOELAB_CHECK(subr, moe_router_metrics_get(&m, r));
    SCM aux = SCM_EOL;
    for (int i = m.n_aux - 1; i >= 0; i--)
        aux = scm_acons(sym(moe_aux_kind_name(m.aux_kind[i])), real_or_false(m.aux_value[i]), aux);
    /* Plain numbers first: wrapping allocates, and on the way every tensor
     * still in M must be released by us or owned by a Scheme object. A
     * statistic of an empty window (NaN) is #f. */
    SCM tail = scm_list_n(scm_cons(sym("max-violation-batch"), real_or_false(m.max_violation_batch)),
                          scm_cons(sym("max-violation-step"), real_or_false(m.max_violation_step)),
                          scm_cons(sym("max-violation-global"), real_or_false(m.max_violation_global)),
                          scm_cons(sym("cv"), real_or_false(m.cv)),
                          scm_cons(sym("max-over-mean"), real_or_false(m.max_over_mean)),
                          scm_cons(sym("dead-fraction"), real_or_false(m.dead_fraction)),
                          scm_cons(sym("entropy"), real_or_false(m.entropy)),
                          scm_cons(sym("selected-mass"), real_or_false(m.selected_mass)),
                          scm_cons(sym("dropped-fraction"), real_or_false(m.dropped_fraction)),
                          scm_cons(sym("aux-losses"), aux),
                          scm_cons(sym("micro-batches"), scm_from_int64(m.micro_batches)),
                          scm_cons(sym("tokens"), scm_from_int64(m.tokens)),
                          scm_cons(sym("step"), scm_from_int64(m.step)),
                          scm_cons(sym("step-window"), sym(m.step_ended ? "ended" : "current")),
                          SCM_UNDEFINED);
    SCM batch = tensor_or_false(&m.tokens_per_expert);
    SCM step = tensor_or_false(&m.tokens_per_expert_step);
    SCM global = tensor_or_false(&m.tokens_per_expert_global);
    SCM bias = tensor_or_false(&m.bias);
    moe_tensor *beta = moe_router_qb_beta(r);
    SCM qb = SCM_BOOL_F;
    if (beta) {
        moe_tensor *copy = NULL;
        MOELAB_CHECK(subr, moe_clone(&copy, beta));
        qb = moelab_wrap(copy);
    }
    tail = scm_cons(scm_cons(sym("qb-beta"), qb), tail);
    return scm_cons(scm_cons(sym("tokens-per-expert"), batch),
                    scm_cons(scm_cons(sym("tokens-per-expert-step"), step),
                             scm_cons(scm_cons(sym("tokens-per-expert-global"), global),
                                      scm_cons(scm_cons(sym("bias"), bias), tail))));
}

/* ---- the configuration as an alist ---------------------------------------------------- */

/* One field of CFG as make-router takes it back. */
static SCM option_value(const moe_router_config *cfg, const opt_spec *spec)
{
    const char *field = (const char *)cfg + spec->offset;
    switch (spec->kind) {
    case OPT_INT: return scm_from_int64(*(const int64_t *)field);
    case OPT_INT_OR_NONE: {
        int64_t v = *(const int64_t *)field;
        return v ? scm_from_int64(v) : SCM_BOOL_F;
    }
    case OPT_INT_OR_AUTO: {
        int64_t v = *(const int64_t *)field;
        return v ? scm_from_int64(v) : sym("auto");
    }
    case OPT_REAL: return scm_from_double(*(const double *)field);
    case OPT_REAL_OR_NONE: return real_or_false(*(const double *)field);
    case OPT_BOOL: return scm_from_bool(*(const bool *)field);
    case OPT_SEED: return scm_from_uint64(*(const uint64_t *)field);
    case OPT_DTYPE: return sym(moe_dtype_name(*(const moe_dtype *)field));
    case OPT_SCORE: return sym(moe_score_fn_name(*(const moe_score_fn *)field));
    case OPT_NORMALIZE: {
        moe_norm_mode m = *(const moe_norm_mode *)field;
        return m == MOE_NORM_AUTO ? sym("auto") : scm_from_bool(m == MOE_NORM_ON);
    }
    case OPT_CAPACITY_FORMULA:
        return sym(moe_capacity_formula_name(*(const moe_capacity_formula *)field));
    case OPT_DROP_POLICY: return sym(moe_drop_policy_name(*(const moe_drop_policy *)field));
    case OPT_COUNT_FROM: return sym(moe_count_from_name(*(const moe_count_from *)field));
    case OPT_GRAD_MODE: return sym(moe_grad_mode_name(*(const moe_grad_mode *)field));
    case OPT_DEBUG_ROUTING: {
        moe_debug_routing d = *(const moe_debug_routing *)field;
        return d == MOE_DEBUG_NONE ? SCM_BOOL_F : sym(moe_debug_routing_name(d));
    }
    case OPT_LOSSES: {
        SCM l = SCM_EOL;
        for (int i = cfg->n_losses - 1; i >= 0; i--)
            l = scm_acons(sym(moe_aux_kind_name(cfg->losses[i].kind)),
                          scm_from_double(cfg->losses[i].coeff), l);
        return l;
    }
    case OPT_PRESET: return cfg->preset ? sym(cfg->preset) : SCM_BOOL_F;
    case OPT_CONVENTION: return sym(moe_convention_name(*(const moe_convention *)field));
    case OPT_ROUTING: return sym(moe_routing_mode_name(*(const moe_routing_mode *)field));
    case OPT_REPLAY: {
        moe_replay_mode m = *(const moe_replay_mode *)field;
        return m == MOE_REPLAY_OFF ? SCM_BOOL_F : sym(moe_replay_mode_name(m));
    }
    }
    return SCM_BOOL_F;
}

SCM moelab_router_config_alist(const moe_router_config *cfg)
{
    SCM l = SCM_EOL;
    for (size_t i = N_SPECS; i-- > 0;)
        l = scm_acons(sym(specs[i].name), option_value(cfg, &specs[i]), l);
    return l;
}
