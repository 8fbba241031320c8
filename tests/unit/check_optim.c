/* check_optim.c — AdamW, SGD, gradient clipping and the learning-rate
 * schedules against PyTorch (tests/reference/optim_refs.txt, written by
 * gen_optim_refs.py), plus what PyTorch does not check: parameters keep
 * their identity, state save and load, and every bad input failing with
 * nothing changed. */
#include <omp.h>
#include <string.h>

#include "../reference/refs.h"
#include "testutil.h"

static ref_case *cases;
static int n_cases;

static void load_refs(void)
{
    n_cases = refs_load(MOE_OPTIM_REFS_FILE, &cases);
    ck_assert_msg(n_cases > 0, "cannot read %s: %s", MOE_OPTIM_REFS_FILE, moe_last_error());
}

static void free_refs(void) { refs_free(cases, n_cases); }

/* The parameter names of a case ("set params a,b,c"). */
static int case_params(const ref_case *c, char names[][64], int max)
{
    const char *list = ref_get(c, "params");
    ck_assert(list != NULL);
    int n = 0;
    for (const char *p = list; *p && n < max; n++) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        snprintf(names[n], 64, "%.*s", (int)len, p);
        p += len + (comma ? 1 : 0);
    }
    return n;
}

/* ref tensor KIND:NAME (#m when m >= 0), or NULL. */
static moe_tensor *ref_named(const ref_case *c, const char *kind, const char *name, int m)
{
    char key[200];
    snprintf(key, sizeof key, "%.60s:%.120s", kind, name);
    return ref_tensor(c, key, m);
}

static moe_tensor *copy_of(moe_tensor *t)
{
    moe_tensor *c;
    OK(moe_clone(&c, t));
    return c;
}

/* GOT within TOL of WANT relative to WANT's largest magnitude (small
 * elements of an f32 tensor carry the rounding of the large ones). */
static void close_to(const moe_tensor *got, moe_tensor *want, double tol, const char *what)
{
    int64_t n = moe_tensor_numel(want);
    double *e = malloc(sizeof *e * (size_t)(n ? n : 1)), mx = 0;
    OK(moe_tensor_to_doubles(want, e));
    for (int64_t i = 0; i < n; i++) mx = fmax(mx, fabs(e[i]));
    free(e);
    REF_ASSERT_CLOSE(got, want, tol * mx, tol, what);
}

static double tol_for(const ref_case *c) { return strcmp(ref_get(c, "dtype"), "f32") == 0 ? 1e-6 : 1e-12; }

static moe_status make_from_case(moe_optimizer **opt, const ref_case *c, int n, const char *const *names,
                                 moe_tensor **params)
{
    if (strcmp(ref_get(c, "optimizer"), "adamw") == 0) {
        moe_adamw_config cfg;
        moe_adamw_config_default(&cfg);
        cfg.lr = ref_getd(c, "lr", -1);
        cfg.beta1 = ref_getd(c, "beta1", -1);
        cfg.beta2 = ref_getd(c, "beta2", -1);
        cfg.eps = ref_getd(c, "eps", -1);
        cfg.weight_decay = ref_getd(c, "weight_decay", -1);
        ck_assert_str_eq(ref_get(c, "no_decay"), "norm,bias"); /* the defaults */
        return moe_adamw_new(opt, n, names, params, &cfg);
    }
    moe_sgd_config cfg;
    moe_sgd_config_default(&cfg);
    cfg.lr = ref_getd(c, "lr", -1);
    cfg.momentum = ref_getd(c, "momentum", -1);
    cfg.dampening = ref_getd(c, "dampening", -1);
    cfg.weight_decay = ref_getd(c, "weight_decay", -1);
    cfg.nesterov = ref_getd(c, "nesterov", 0) != 0;
    return moe_sgd_new(opt, n, names, params, &cfg);
}

/* The state entry NAME of OPT (a new reference), or NULL. */
static moe_tensor *state_entry(moe_optimizer *opt, const char *name)
{
    for (int j = 0; j < moe_optimizer_state_count(opt); j++) {
        const char *nm;
        moe_tensor *t;
        OK(moe_optimizer_state(opt, j, &nm, &t));
        if (strcmp(nm, name) == 0) return t;
        moe_tensor_release(t);
    }
    return NULL;
}

static void run_optimizer_case(const ref_case *c)
{
    char names[8][64];
    const char *np[8];
    moe_tensor *params[8], *data0[8];
    int n = case_params(c, names, 8);
    for (int i = 0; i < n; i++) {
        np[i] = names[i];
        params[i] = copy_of(ref_named(c, "param", names[i], 0));
        OK(moe_tensor_requires_grad_(params[i], true));
        data0[i] = params[i];
    }
    moe_optimizer *opt;
    OK(make_from_case(&opt, c, n, np, params));
    double tol = tol_for(c);
    int steps = (int)ref_getd(c, "steps", 0);
    for (int s = 0; s < steps; s++) {
        for (int i = 0; i < n; i++) {
            moe_tensor *g = ref_named(c, "grad", names[i], s);
            moe_tensor_zero_grad(params[i]);
            if (g) params[i]->grad = copy_of(g);
        }
        OK(moe_optimizer_step(opt));
        for (int i = 0; i < n; i++) {
            char what[200];
            snprintf(what, sizeof what, "%s: %s after step %d", c->name, names[i], s);
            close_to(params[i], ref_named(c, "param", names[i], s + 1), tol, what);
        }
    }
    ck_assert_int_eq(moe_optimizer_steps(opt), steps);
    static const char *const slots[] = {"exp_avg", "exp_avg_sq", "momentum_buffer", "step"};
    for (int i = 0; i < n; i++) {
        ck_assert_ptr_eq(moe_optimizer_param(opt, i), data0[i]); /* identity kept */
        for (int k = 0; k < 4; k++) {
            moe_tensor *want = ref_named(c, slots[k], names[i], -1);
            char key[200];
            snprintf(key, sizeof key, "%s.%s", names[i], slots[k]);
            moe_tensor *got = state_entry(opt, key);
            ck_assert_msg((want == NULL) == (got == NULL), "%s: state %s present: %d, expected %d", c->name, key,
                          got != NULL, want != NULL);
            if (want) close_to(got, want, k == 3 ? 0 : tol, key);
            moe_tensor_release(got);
        }
    }
    moe_optimizer_free(opt);
    for (int i = 0; i < n; i++) moe_tensor_release(params[i]);
}

START_TEST(test_optimizers_match_torch)
{
    int ran = 0;
    for (int k = 0; k < n_cases; k++)
        if (ref_get(&cases[k], "optimizer")) {
            run_optimizer_case(&cases[k]);
            ran++;
        }
    ck_assert_int_eq(ran, 10);
}
END_TEST

START_TEST(test_clip_matches_torch)
{
    int ran = 0;
    for (int k = 0; k < n_cases; k++) {
        const ref_case *c = &cases[k];
        if (strncmp(c->name, "clip-", 5) != 0) continue;
        char names[8][64];
        moe_tensor *params[8];
        int n = case_params(c, names, 8);
        for (int i = 0; i < n; i++) {
            OK(moe_tensor_zeros(&params[i], MOE_F64, MOE_CPU, 1, SHAPE(1)));
            params[i]->grad = copy_of(ref_named(c, "grad", names[i], -1));
        }
        double norm, tol = tol_for(c);
        OK(moe_clip_grad_norm(&norm, n, params, ref_getd(c, "max", -1)));
        double want;
        OK(moe_tensor_item(ref_tensor(c, "norm", -1), &want));
        ck_assert_msg(fabs(norm - want) <= tol * want, "%s: norm %.17g, expected %.17g", c->name, norm, want);
        for (int i = 0; i < n; i++) {
            close_to(params[i]->grad, ref_named(c, "clipped", names[i], -1), tol, c->name);
            moe_tensor_release(params[i]);
        }
        ran++;
    }
    ck_assert_int_eq(ran, 4);
}
END_TEST

START_TEST(test_schedules_match_formulas)
{
    int ran = 0;
    for (int k = 0; k < n_cases; k++) {
        const ref_case *c = &cases[k];
        if (strncmp(c->name, "schedule-", 9) != 0) continue;
        moe_lr_schedule s;
        moe_lr_schedule_default(&s);
        ck_assert(moe_lr_kind_parse(ref_get(c, "kind"), &s.kind));
        ck_assert(moe_wsd_decay_parse(ref_get(c, "decay_type"), &s.decay_type));
        s.lr = ref_getd(c, "lr", -1);
        s.min_lr = ref_getd(c, "min_lr", -1);
        s.warmup = (int64_t)ref_getd(c, "warmup", -1);
        s.total = (int64_t)ref_getd(c, "total", -1);
        s.decay_fraction = ref_getd(c, "decay_fraction", -1);
        OK(moe_lr_schedule_validate(&s));
        moe_tensor *want = ref_tensor(c, "lr", -1);
        ck_assert_int_eq(moe_tensor_numel(want), 50);
        for (int64_t step = 0; step < 50; step++) {
            double lr, e;
            OK(moe_lr_schedule_at(&s, step, &lr));
            OK(moe_tensor_get(want, &step, &e));
            ck_assert_msg(fabs(lr - e) <= 1e-15 * fabs(e), "%s: step %lld: %.17g, expected %.17g", c->name,
                          (long long)step, lr, e);
        }
        ran++;
    }
    ck_assert_int_eq(ran, 5);
}
END_TEST

/* ---- hand-checked values ---------------------------------------------------------------- */

START_TEST(test_adamw_first_step_by_hand)
{
    /* Step 1: m̂ = g and v̂ = g² (the bias corrections undo the (1−β)), so
     * p ← p(1 − lr·wd) − lr·g/(|g| + eps): a step of lr against the sign of
     * g; a zero gradient only decays. "final-norm.weight" gets no decay. */
    moe_tensor *w = T(MOE_F64, 1, SHAPE(3), 1.0, -2.0, 0.5), *nb = T(MOE_F64, 1, SHAPE(2), 1.0, 1.0);
    OK(moe_tensor_requires_grad_(w, true));
    OK(moe_tensor_requires_grad_(nb, true));
    w->grad = T(MOE_F64, 1, SHAPE(3), 0.3, -4.0, 0.0);
    nb->grad = T(MOE_F64, 1, SHAPE(2), 2.0, -1.0);
    moe_adamw_config cfg;
    moe_adamw_config_default(&cfg);
    cfg.lr = 0.1;
    moe_optimizer *opt;
    OK(moe_adamw_new(&opt, 2, (const char *[]){"w", "final-norm.weight"}, (moe_tensor *[]){w, nb}, &cfg));
    ck_assert(moe_optimizer_param_decays(opt, 0));
    ck_assert(!moe_optimizer_param_decays(opt, 1));
    ck_assert_int_eq(moe_optimizer_kind(opt), MOE_OPTIM_ADAMW);
    ck_assert_str_eq(moe_optim_kind_name(moe_optimizer_kind(opt)), "adamw");
    ck_assert(moe_optimizer_adamw_config(opt)->beta2 == 0.95 && moe_optimizer_sgd_config(opt) == NULL);
    OK(moe_optimizer_step(opt));
    double d = 1 - 0.1 * 0.1;
    ASSERT_VALUES(w, 1e-7, 1.0 * d - 0.1, -2.0 * d + 0.1, 0.5 * d);
    ASSERT_VALUES(nb, 1e-7, 1.0 - 0.1, 1.0 + 0.1);
    moe_optimizer_free(opt);
    RELEASE(w, nb);
}
END_TEST

START_TEST(test_sgd_momentum_by_hand)
{
    /* lr 0.5, μ 0.9: b1 = g1, p1 = p0 − 0.5 g1; b2 = 0.9 b1 + g2, p2 = p1 − 0.5 b2 */
    moe_tensor *p = T(MOE_F32, 1, SHAPE(2), 1.0, 2.0);
    OK(moe_tensor_requires_grad_(p, true));
    moe_sgd_config cfg;
    moe_sgd_config_default(&cfg);
    cfg.lr = 0.5;
    cfg.momentum = 0.9;
    moe_optimizer *opt;
    OK(moe_sgd_new(&opt, 1, (const char *[]){"p"}, &p, &cfg));
    void *data = moe_tensor_data(p);
    p->grad = T(MOE_F32, 1, SHAPE(2), 1.0, -1.0);
    OK(moe_optimizer_step(opt));
    ASSERT_VALUES(p, 1e-7, 0.5, 2.5);
    moe_optimizer_zero_grad(opt);
    ck_assert_ptr_null(p->grad);
    OK(moe_optimizer_step(opt)); /* no gradient: nothing moves, the step counts */
    ASSERT_VALUES(p, 1e-7, 0.5, 2.5);
    ck_assert_int_eq(moe_optimizer_steps(opt), 2);
    p->grad = T(MOE_F32, 1, SHAPE(2), 2.0, 0.0);
    OK(moe_optimizer_step(opt));
    ASSERT_VALUES(p, 1e-6, 0.5 - 0.5 * (0.9 * 1.0 + 2.0), 2.5 - 0.5 * (0.9 * -1.0));
    ck_assert_ptr_eq(moe_tensor_data(p), data);
    moe_tensor *st = state_entry(opt, "p.step");
    ASSERT_VALUES(st, 0, 2);
    moe_tensor_release(st);
    OK(moe_optimizer_set_lr(opt, 0.25));
    ck_assert(moe_optimizer_lr(opt) == 0.25);
    FAILS(moe_optimizer_set_lr(opt, -1), MOE_ERR_ARG, "set-optimizer-lr!: the learning rate must be finite and >= 0, got -1");
    FAILS(moe_optimizer_set_lr(opt, NAN), MOE_ERR_ARG, "got nan");
    ck_assert(moe_optimizer_lr(opt) == 0.25);
    moe_optimizer_free(opt);
    RELEASE(p);
}
END_TEST

START_TEST(test_non_contiguous_gradient)
{
    /* A gradient that is a transposed view is read through its strides. */
    moe_tensor *a = T(MOE_F64, 2, SHAPE(2, 2), 0, 0, 0, 0), *g = T(MOE_F64, 2, SHAPE(2, 2), 1, 2, 3, 4);
    OK(moe_tensor_requires_grad_(a, true));
    OK(moe_transpose(&a->grad, g, 0, 1));
    moe_sgd_config cfg;
    moe_sgd_config_default(&cfg);
    cfg.lr = 1;
    moe_optimizer *opt;
    OK(moe_sgd_new(&opt, 1, (const char *[]){"a"}, &a, &cfg));
    OK(moe_optimizer_step(opt));
    ASSERT_VALUES(a, 0, -1, -3, -2, -4);
    moe_optimizer_free(opt);
    RELEASE(a, g);
}
END_TEST

/* ---- state ---------------------------------------------------------------------------- */

static moe_optimizer *small_adamw(moe_tensor **p, uint64_t seed)
{
    p[0] = tu_randn(MOE_F32, 2, SHAPE(3, 2), seed);
    p[1] = tu_randn(MOE_F32, 1, SHAPE(2), seed + 1);
    for (int i = 0; i < 2; i++) OK(moe_tensor_requires_grad_(p[i], true));
    moe_adamw_config cfg;
    moe_adamw_config_default(&cfg);
    cfg.lr = 1e-2;
    moe_optimizer *opt;
    OK(moe_adamw_new(&opt, 2, (const char *[]){"w", "ln.bias"}, p, &cfg));
    return opt;
}

static void give_grads(moe_tensor **p, uint64_t seed)
{
    for (int i = 0; i < 2; i++) {
        moe_tensor_zero_grad(p[i]);
        p[i]->grad = tu_randn(MOE_F32, p[i]->ndim, p[i]->shape, seed + (uint64_t)i);
    }
}

START_TEST(test_state_round_trip)
{
    moe_tensor *a[2], *b[2];
    moe_optimizer *oa = small_adamw(a, 1), *ob = small_adamw(b, 1);
    for (int s = 0; s < 3; s++) {
        give_grads(a, 10 + (uint64_t)s);
        OK(moe_optimizer_step(oa));
    }
    /* B takes A's parameters and state, then both take the same two steps. */
    bool prev = moe_grad_set_enabled(false);
    for (int i = 0; i < 2; i++) OK(moe_tensor_copy_(b[i], a[i]));
    moe_grad_set_enabled(prev);
    int n = moe_optimizer_state_count(oa);
    ck_assert_int_eq(n, 1 + 2 * 3);
    const char *names[16];
    moe_tensor *vals[16];
    for (int j = 0; j < n; j++) {
        moe_tensor *live;
        OK(moe_optimizer_state(oa, j, &names[j], &live));
        OK(moe_clone(&vals[j], live));
        moe_tensor_release(live);
    }
    ck_assert_str_eq(names[0], "step");
    ck_assert_str_eq(names[1], "w.step");
    ck_assert_str_eq(names[2], "w.exp_avg");
    ck_assert_str_eq(names[3], "w.exp_avg_sq");
    ck_assert_str_eq(names[4], "ln.bias.step");
    OK(moe_optimizer_load_state(ob, n, names, vals));
    ck_assert_int_eq(moe_optimizer_steps(ob), 3);
    for (int s = 3; s < 5; s++) {
        give_grads(a, 10 + (uint64_t)s);
        give_grads(b, 10 + (uint64_t)s);
        OK(moe_optimizer_step(oa));
        OK(moe_optimizer_step(ob));
    }
    for (int i = 0; i < 2; i++) tu_assert_close(b[i], a[i], 0, 0, "resumed = uninterrupted");
    for (int j = 0; j < n; j++) moe_tensor_release(vals[j]);
    moe_optimizer_free(oa);
    moe_optimizer_free(ob);
    RELEASE(a[0], a[1], b[0], b[1]);
}
END_TEST

START_TEST(test_bad_state_changes_nothing)
{
    moe_tensor *p[2];
    moe_optimizer *opt = small_adamw(p, 3);
    give_grads(p, 4);
    OK(moe_optimizer_step(opt));
    int n = moe_optimizer_state_count(opt);
    const char *names[16];
    moe_tensor *vals[16], *before[16];
    for (int j = 0; j < n; j++) {
        moe_tensor *live;
        OK(moe_optimizer_state(opt, j, &names[j], &live));
        OK(moe_clone(&before[j], live));
        OK(moe_tensor_zeros_like(&vals[j], live)); /* a valid state: all zeros */
        moe_tensor_release(live);
    }
    OK(moe_tensor_fill_(vals[0], 7));
    /* each bad variant is tried once, after a good entry was accepted */
    FAILS(moe_optimizer_load_state(opt, n - 1, names, vals), MOE_ERR_ARG, "state entry \"ln.bias.exp_avg_sq\" is missing");
    const char *renamed[16];
    memcpy(renamed, names, sizeof renamed);
    renamed[2] = "w.exp_avgg";
    FAILS(moe_optimizer_load_state(opt, n, renamed, vals), MOE_ERR_ARG, "unknown state entry \"w.exp_avgg\"");
    renamed[2] = "w.step";
    FAILS(moe_optimizer_load_state(opt, n, renamed, vals), MOE_ERR_ARG, "state entry \"w.step\" given twice");
    moe_tensor *saved = vals[2], *wrong = tu_randn(MOE_F32, 1, SHAPE(6), 1);
    vals[2] = wrong;
    FAILS(moe_optimizer_load_state(opt, n, names, vals), MOE_ERR_SHAPE, "state entry \"w.exp_avg\" is [6], its parameter [3 2]");
    moe_tensor *nan = T(MOE_F64, 2, SHAPE(3, 2), 0, 0, NAN, 0, INFINITY, 0);
    vals[2] = nan;
    FAILS(moe_optimizer_load_state(opt, n, names, vals), MOE_ERR_VALUE, "holds 1 NaN and 1 infinite values");
    vals[2] = saved;
    moe_tensor *neg = T(MOE_I64, 0, NULL, -2);
    moe_tensor *keep = vals[1];
    vals[1] = neg;
    FAILS(moe_optimizer_load_state(opt, n, names, vals), MOE_ERR_VALUE, "\"w.step\" must be a count >= 0, got -2");
    vals[1] = keep;
    ck_assert_int_eq(moe_optimizer_steps(opt), 1);
    for (int j = 0; j < n; j++) {
        moe_tensor *live;
        const char *nm;
        OK(moe_optimizer_state(opt, j, &nm, &live));
        tu_assert_close(live, before[j], 0, 0, nm);
        moe_tensor_release(live);
    }
    /* and the good one loads */
    OK(moe_optimizer_load_state(opt, n, names, vals));
    ck_assert_int_eq(moe_optimizer_steps(opt), 7);
    for (int j = 0; j < n; j++) RELEASE(vals[j], before[j]);
    RELEASE(wrong, nan, neg, p[0], p[1]);
    moe_optimizer_free(opt);
}
END_TEST

/* ---- bad input ------------------------------------------------------------------------ */

START_TEST(test_bad_configs)
{
    moe_adamw_config a;
    moe_adamw_config_default(&a);
    ck_assert(a.lr == 3e-4 && a.beta1 == 0.9 && a.beta2 == 0.95 && a.eps == 1e-8 && a.weight_decay == 0.1);
    ck_assert_int_eq(a.n_no_decay, 2);
    a.lr = -1e-3;
    FAILS(moe_adamw_config_validate(&a, NULL), MOE_ERR_ARG, "make-adamw: lr must be finite and >= 0, got -0.001");
    a.lr = 1e-3;
    a.beta2 = 1.0;
    FAILS(moe_adamw_config_validate(&a, NULL), MOE_ERR_ARG, "betas must lie in [0, 1), got (0.9 . 1)");
    a.beta2 = 0.95;
    a.beta1 = -0.1;
    FAILS(moe_adamw_config_validate(&a, NULL), MOE_ERR_ARG, "betas must lie in [0, 1)");
    a.beta1 = 0.9;
    a.eps = -1;
    FAILS(moe_adamw_config_validate(&a, NULL), MOE_ERR_ARG, "eps must be finite and >= 0");
    a.eps = 1e-8;
    a.weight_decay = NAN;
    FAILS(moe_adamw_config_validate(&a, NULL), MOE_ERR_ARG, "weight-decay must be finite and >= 0");
    moe_sgd_config s;
    moe_sgd_config_default(&s);
    s.momentum = -0.5;
    FAILS(moe_sgd_config_validate(&s, NULL), MOE_ERR_ARG, "make-sgd: momentum must be finite and >= 0, got -0.5");
    s.momentum = 0;
    s.nesterov = true;
    FAILS(moe_sgd_config_validate(&s, NULL), MOE_ERR_ARG, "nesterov needs momentum > 0 and dampening 0");

    moe_lr_schedule l;
    moe_lr_schedule_default(&l);
    moe_lr_kind k;
    ck_assert(!moe_lr_kind_parse("linear-warmup", &k));
    ck_assert(moe_lr_kind_parse("wsd", &k) && k == MOE_LR_WSD);
    l.kind = (moe_lr_kind)7;
    FAILS(moe_lr_schedule_validate(&l), MOE_ERR_ARG, "unknown schedule kind 7");
    l.kind = MOE_LR_COSINE;
    l.total = 10;
    l.warmup = 11;
    FAILS(moe_lr_schedule_validate(&l), MOE_ERR_ARG, "make-lr-schedule: cosine: warmup 11 exceeds total 10");
    l.warmup = 2;
    l.lr = -1;
    FAILS(moe_lr_schedule_validate(&l), MOE_ERR_ARG, "cosine: lr must be finite and >= 0, got -1");
    l.lr = 1e-3;
    l.min_lr = 1e-2;
    FAILS(moe_lr_schedule_validate(&l), MOE_ERR_ARG, "min-lr must lie in [0, lr = 0.001], got 0.01");
    l.min_lr = 0;
    l.total = 0;
    FAILS(moe_lr_schedule_validate(&l), MOE_ERR_ARG, "total must be >= 1, got 0");
    l.kind = MOE_LR_WSD;
    l.total = 100;
    l.warmup = 90;
    l.decay_fraction = 0.2;
    FAILS(moe_lr_schedule_validate(&l), MOE_ERR_ARG, "wsd: warmup 90 runs into the decay, which starts at step 80");
    l.warmup = 10;
    l.decay_fraction = 1.5;
    FAILS(moe_lr_schedule_validate(&l), MOE_ERR_ARG, "decay-fraction must lie in [0, 1], got 1.5");
    l.decay_fraction = 0.2;
    double lr;
    FAILS(moe_lr_schedule_at(&l, -1, &lr), MOE_ERR_ARG, "the step must be >= 0, got -1");
    /* warmup == total, and no decay steps: no division by zero */
    l.kind = MOE_LR_COSINE;
    l.warmup = l.total = 4;
    OK(moe_lr_schedule_at(&l, 4, &lr));
    ck_assert(lr == 0);
    l.kind = MOE_LR_WSD;
    l.decay_fraction = 0;
    OK(moe_lr_schedule_at(&l, 3, &lr));
    ck_assert(lr == 1e-3);
}
END_TEST

START_TEST(test_bad_parameters)
{
    moe_adamw_config cfg;
    moe_adamw_config_default(&cfg);
    moe_optimizer *opt = (moe_optimizer *)1;
    moe_tensor *w = tu_randn(MOE_F32, 2, SHAPE(2, 3), 1), *v = tu_randn(MOE_F32, 1, SHAPE(3), 2);
    moe_tensor *ints, *bf, *tr, *y;
    OK(moe_tensor_zeros(&ints, MOE_I64, MOE_CPU, 1, SHAPE(3)));
    OK(moe_tensor_zeros(&bf, MOE_BF16, MOE_CPU, 1, SHAPE(3)));
    OK(moe_transpose(&tr, w, 0, 1));
    OK(moe_tensor_requires_grad_(v, true));
    OK(moe_mul_scalar(&y, v, 2.0));
    FAILS(moe_adamw_new(&opt, 0, NULL, NULL, &cfg), MOE_ERR_ARG, "make-adamw: no parameters to optimize");
    ck_assert_ptr_null(opt);
    FAILS(moe_adamw_new(&opt, 2, (const char *[]){"a", "b"}, (moe_tensor *[]){w, ints}, &cfg), MOE_ERR_DTYPE,
          "parameter \"b\" is i64; parameters must be f32 or f64");
    FAILS(moe_adamw_new(&opt, 1, (const char *[]){"h"}, &bf, &cfg), MOE_ERR_DTYPE, "parameter \"h\" is bf16");
    FAILS(moe_adamw_new(&opt, 1, (const char *[]){"t"}, &tr, &cfg), MOE_ERR_ARG, "parameter \"t\" [3 2] is not contiguous");
    FAILS(moe_adamw_new(&opt, 1, (const char *[]){"y"}, &y, &cfg), MOE_ERR_ARG, "parameter \"y\" is not a leaf");
    FAILS(moe_adamw_new(&opt, 2, (const char *[]){"a", "a"}, (moe_tensor *[]){w, v}, &cfg), MOE_ERR_ARG,
          "parameter name \"a\" appears twice");
    FAILS(moe_adamw_new(&opt, 2, (const char *[]){"a", "b"}, (moe_tensor *[]){w, w}, &cfg), MOE_ERR_ARG,
          "parameters \"a\" and \"b\" share storage");
    FAILS(moe_adamw_new(&opt, 1, (const char *[]){""}, &w, &cfg), MOE_ERR_ARG, "parameter 0 has an empty name");
    FAILS(moe_adamw_new(&opt, 1, (const char *[]){"a"}, (moe_tensor *[]){NULL}, &cfg), MOE_ERR_ARG,
          "parameter \"a\" is NULL");
    cfg.lr = -1;
    FAILS(moe_adamw_new(&opt, 1, (const char *[]){"a"}, &w, &cfg), MOE_ERR_ARG, "lr must be finite and >= 0");
    ck_assert_ptr_null(opt);
    RELEASE(w, v, ints, bf, tr, y);
}
END_TEST

START_TEST(test_bad_gradient_changes_nothing)
{
    moe_tensor *p[2];
    moe_optimizer *opt = small_adamw(p, 5);
    moe_tensor *w0, *b0;
    OK(moe_clone(&w0, p[0]));
    OK(moe_clone(&b0, p[1]));
    p[0]->grad = tu_randn(MOE_F32, 2, SHAPE(3, 2), 6);
    p[1]->grad = tu_randn(MOE_F32, 1, SHAPE(3), 7);
    FAILS(moe_optimizer_step(opt), MOE_ERR_SHAPE, "optimizer-step!: the gradient of \"ln.bias\" is [3], the parameter [2]");
    moe_tensor_zero_grad(p[1]);
    p[1]->grad = tu_randn(MOE_F64, 1, SHAPE(2), 7);
    FAILS(moe_optimizer_step(opt), MOE_ERR_DTYPE, "the gradient of \"ln.bias\" is f64 on cpu, the parameter f32 on cpu");
    tu_assert_close(p[0], w0, 0, 0, "w unchanged");
    tu_assert_close(p[1], b0, 0, 0, "bias unchanged");
    ck_assert_int_eq(moe_optimizer_steps(opt), 0);
    moe_tensor *st = state_entry(opt, "w.step"), *m = state_entry(opt, "w.exp_avg");
    ASSERT_VALUES(st, 0, 0);
    ASSERT_VALUES(m, 0, 0, 0, 0, 0, 0, 0);
    RELEASE(st, m, w0, b0, p[0], p[1]);
    moe_optimizer_free(opt);
}
END_TEST

/* ---- clipping -------------------------------------------------------------------------- */

START_TEST(test_clip_by_hand)
{
    /* grads (3, 4) and (0, 12): norm 13; max 6.5 → scale 6.5/(13 + 1e-6) */
    moe_tensor *a = T(MOE_F64, 1, SHAPE(2), 0, 0), *b = T(MOE_F32, 1, SHAPE(2), 0, 0), *c = T(MOE_F64, 1, SHAPE(1), 0);
    a->grad = T(MOE_F64, 1, SHAPE(2), 3, 4);
    b->grad = T(MOE_F32, 1, SHAPE(2), 0, 12);
    moe_tensor *ga = a->grad;
    double norm, s = 6.5 / (13 + 1e-6);
    OK(moe_grad_norm(&norm, 3, (moe_tensor *[]){a, b, c}));
    ck_assert(norm == 13);
    OK(moe_clip_grad_norm(&norm, 3, (moe_tensor *[]){a, b, c}, 6.5));
    ck_assert(norm == 13);
    ck_assert_ptr_eq(a->grad, ga); /* in place */
    ASSERT_VALUES(a->grad, 1e-15, 3 * s, 4 * s);
    ASSERT_VALUES(b->grad, 1e-6, 0, 12 * s);
    ck_assert_ptr_null(c->grad);
    /* below the threshold: untouched (even 13 − 1e-7 < max) */
    OK(moe_clip_grad_norm(&norm, 3, (moe_tensor *[]){a, b, c}, 100));
    ASSERT_VALUES(a->grad, 1e-15, 3 * s, 4 * s);
    FAILS(moe_clip_grad_norm(&norm, 1, &a, 0), MOE_ERR_ARG, "clip-grad-norm!: max must be finite and > 0, got 0");
    FAILS(moe_clip_grad_norm(&norm, 1, &a, -1), MOE_ERR_ARG, "got -1");
    RELEASE(a, b, c);
}
END_TEST

START_TEST(test_clip_views_and_shared_grads)
{
    /* A gradient viewing other memory is replaced, not written through; a
     * gradient shared by two parameters is scaled once for each. */
    moe_tensor *a = T(MOE_F64, 1, SHAPE(2), 0, 0), *b = T(MOE_F64, 1, SHAPE(2), 0, 0), *c = T(MOE_F64, 2, SHAPE(2, 2), 0, 0, 0, 0);
    moe_tensor *g = T(MOE_F64, 1, SHAPE(2), 3, 4), *big = T(MOE_F64, 2, SHAPE(2, 2), 1, 2, 3, 4);
    a->grad = moe_tensor_retain(g);
    b->grad = moe_tensor_retain(g);
    OK(moe_transpose(&c->grad, big, 0, 1));
    double norm;
    OK(moe_clip_grad_norm(&norm, 3, (moe_tensor *[]){a, b, c}, 1.0));
    ck_assert(fabs(norm - sqrt(25 + 25 + 30)) < 1e-12);
    double s = 1.0 / (norm + 1e-6);
    ASSERT_VALUES(a->grad, 1e-15, 3 * s, 4 * s);
    ASSERT_VALUES(b->grad, 1e-15, 3 * s, 4 * s);
    ASSERT_VALUES(c->grad, 1e-15, 1 * s, 3 * s, 2 * s, 4 * s);
    ASSERT_VALUES(big, 0, 1, 2, 3, 4); /* the viewed tensor is untouched */
    RELEASE(a, b, c, g, big);
}
END_TEST

START_TEST(test_clip_non_finite)
{
    moe_tensor *a = T(MOE_F32, 1, SHAPE(2), 0, 0), *i = T(MOE_F32, 1, SHAPE(1), 0);
    a->grad = T(MOE_F32, 1, SHAPE(2), NAN, 1);
    i->grad = T(MOE_I64, 1, SHAPE(1), 1);
    double norm;
    FAILS(moe_clip_grad_norm(&norm, 2, (moe_tensor *[]){a, i}, 1), MOE_ERR_DTYPE,
          "the gradient of parameter 1 is i64; expected f32 or f64");
    OK(moe_clip_grad_norm(&norm, 1, &a, 1));
    ck_assert(isnan(norm));
    ASSERT_VALUES(a->grad, 0, NAN, 1); /* left as it was */
    RELEASE(a, i);
}
END_TEST

/* The norm and the update of a parameter big enough for the parallel loops
 * (100 000 elements) give the same bits on 1 and 2 threads. */
START_TEST(test_thread_count_does_not_matter)
{
    double norm[2];
    moe_tensor *out[2];
    int saved = omp_get_max_threads();
    for (int k = 0; k < 2; k++) {
        omp_set_num_threads(k + 1);
        moe_tensor *p = tu_randn(MOE_F32, 1, SHAPE(100000), 21);
        OK(moe_tensor_requires_grad_(p, true));
        p->grad = tu_randn(MOE_F32, 1, SHAPE(100000), 22);
        OK(moe_clip_grad_norm(&norm[k], 1, &p, 1.0));
        moe_adamw_config cfg;
        moe_adamw_config_default(&cfg);
        moe_optimizer *opt;
        OK(moe_adamw_new(&opt, 1, (const char *[]){"w"}, &p, &cfg));
        OK(moe_optimizer_step(opt));
        out[k] = p;
        moe_optimizer_free(opt);
    }
    omp_set_num_threads(saved);
    ck_assert(norm[0] == norm[1]);
    ck_assert(norm[0] > 300 && norm[0] < 330); /* √100000 ≈ 316 */
    tu_assert_close(out[1], out[0], 0, 0, "1 vs 2 threads");
    RELEASE(out[0], out[1]);
}
END_TEST

/* ---- many parameters in one update, clipping folded in ---------------------------------- */

#define MANY 70 /* more parameters than the kernels take to one parallel region (64) */

/* MANY parameters of assorted sizes (one element, a chunk and a bit, ...;
 * two in f64), from SEED. */
static void make_many(moe_tensor **params, const char **names, char (*buf)[16], uint64_t seed)
{
    for (int i = 0; i < MANY; i++) {
        int64_t n = i == 0 ? 1 : i == 1 ? 16384 + 3 : i == 2 ? 40000 : 97 * i + 5;
        moe_dtype dt = i % 31 == 7 ? MOE_F64 : MOE_F32;
        params[i] = tu_randn(dt, 1, SHAPE(n), seed + (uint64_t)i);
        OK(moe_tensor_requires_grad_(params[i], true));
        snprintf(buf[i], 16, "p%d", i);
        names[i] = buf[i];
    }
}

/* Fresh gradients for the parameters, from SEED. */
static void new_grads(moe_tensor **params, uint64_t seed)
{
    for (int i = 0; i < MANY; i++) {
        moe_tensor_release(params[i]->grad);
        params[i]->grad = tu_randn(params[i]->dtype, 1, params[i]->shape, seed + (uint64_t)i);
    }
}

static moe_optimizer *make_opt(bool adamw, int n, const char **names, moe_tensor **params)
{
    moe_optimizer *o;
    if (adamw) {
        moe_adamw_config cfg;
        moe_adamw_config_default(&cfg);
        cfg.lr = 1e-2;
        OK(moe_adamw_new(&o, n, names, params, &cfg));
    } else {
        moe_sgd_config cfg;
        moe_sgd_config_default(&cfg);
        cfg.momentum = 0.9;
        cfg.weight_decay = 0.01;
        OK(moe_sgd_new(&o, n, names, params, &cfg));
    }
    return o;
}

/* P1 is P0 after a first step from the (clipped) gradient G, by the
 * formulas: AdamW's first step moves each element by lr·g/(|g| + eps) after
 * the decay (the bias corrections undo the (1 − β)); SGD's by lr·(g + wd·p). */
static void assert_first_step(bool adamw, moe_tensor *p0, moe_tensor *g, moe_tensor *p1)
{
    int64_t n = moe_tensor_numel(p0);
    double *x = malloc(sizeof *x * (size_t)n), *d = malloc(sizeof *d * (size_t)n),
           *y = malloc(sizeof *y * (size_t)n);
    OK(moe_tensor_to_doubles(p0, x));
    OK(moe_tensor_to_doubles(g, d));
    OK(moe_tensor_to_doubles(p1, y));
    for (int64_t i = 0; i < n; i++) {
        double want = adamw ? x[i] * (1 - 1e-2 * 0.1) - 1e-2 * d[i] / (fabs(d[i]) + 1e-8)
                            : x[i] - 1e-2 * (d[i] + 0.01 * x[i]);
        ck_assert_msg(fabs(y[i] - want) <= 1e-6 * (1 + fabs(want)), "element %lld of %lld: %.9g, expected %.9g",
                      (long long)i, (long long)n, y[i], want);
    }
    free(x);
    free(d);
    free(y);
}

/* Two steps three ways, which must give the same bits: (a) clip-grad-norm!
 * then a step, one optimizer over all parameters, one thread; (b) the norm,
 * then a step with the clipping factor as grad scale, three threads; (c) one
 * optimizer per parameter, clipped by the global factor (each parameter's
 * update on its own). The gradients of (b) keep their values. */
START_TEST(test_many_parameters_and_folded_clip)
{
    for (int adamw = 0; adamw < 2; adamw++) {
        moe_tensor *a[MANY], *b[MANY], *c[MANY];
        const char *names[MANY];
        char buf[MANY][16];
        make_many(a, names, buf, 100);
        make_many(b, names, buf, 100);
        make_many(c, names, buf, 100);
        moe_optimizer *oa = make_opt(adamw, MANY, names, a), *ob = make_opt(adamw, MANY, names, b);
        moe_optimizer *oc[MANY];
        for (int i = 0; i < MANY; i++) oc[i] = make_opt(adamw, 1, &names[i], &c[i]);
        int saved = omp_get_max_threads();
        for (int step = 0; step < 2; step++) {
            double na, nb, nc;
            new_grads(a, 1000 + 100 * (uint64_t)step);
            new_grads(b, 1000 + 100 * (uint64_t)step);
            new_grads(c, 1000 + 100 * (uint64_t)step);
            omp_set_num_threads(1);
            OK(moe_clip_grad_norm(&na, MANY, a, 10.0));
            moe_tensor *p0[MANY];
            for (int i = 0; step == 0 && i < MANY; i++) p0[i] = copy_of(a[i]);
            OK(moe_optimizer_step(oa));
            for (int i = 0; step == 0 && i < MANY; i++) {
                assert_first_step(adamw, p0[i], a[i]->grad, a[i]);
                moe_tensor_release(p0[i]);
            }
            omp_set_num_threads(3);
            OK(moe_grad_norm(&nb, MANY, b));
            ck_assert(na == nb && na > 10); /* clipping is on */
            double s = 10.0 / (nb + 1e-6);
            moe_tensor *g0 = NULL;
            OK(moe_clone(&g0, b[2]->grad));
            OK(moe_optimizer_step_scaled(ob, s));
            tu_assert_close(b[2]->grad, g0, 0, 0, "the gradient keeps its values");
            moe_tensor_release(g0);
            OK(moe_grad_norm(&nc, MANY, c));
            ck_assert(nc == na);
            for (int i = 0; i < MANY; i++) OK(moe_optimizer_step_scaled(oc[i], 10.0 / (nc + 1e-6)));
        }
        omp_set_num_threads(saved);
        for (int i = 0; i < MANY; i++) {
            tu_assert_close(b[i], a[i], 0, 0, "folded clip vs clip then step");
            tu_assert_close(c[i], a[i], 0, 0, "one optimizer per parameter");
        }
        FAILS(moe_optimizer_step_scaled(ob, 0), MOE_ERR_ARG, "optimizer-step!: grad-scale must be finite and > 0, got 0");
        FAILS(moe_optimizer_step_scaled(ob, NAN), MOE_ERR_ARG, "got nan");
        ck_assert_int_eq(moe_optimizer_steps(ob), 2); /* the failed steps changed nothing */
        moe_optimizer_free(oa);
        moe_optimizer_free(ob);
        for (int i = 0; i < MANY; i++) {
            moe_optimizer_free(oc[i]);
            RELEASE(a[i], b[i], c[i]);
        }
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("optim");
    TCase *tc = tcase_create("torch");
    tcase_add_unchecked_fixture(tc, load_refs, free_refs);
    tcase_add_test(tc, test_optimizers_match_torch);
    tcase_add_test(tc, test_clip_matches_torch);
    tcase_add_test(tc, test_schedules_match_formulas);
    suite_add_tcase(s, tc);
    tc = tcase_create("by hand");
    tcase_add_test(tc, test_adamw_first_step_by_hand);
    tcase_add_test(tc, test_sgd_momentum_by_hand);
    tcase_add_test(tc, test_non_contiguous_gradient);
    tcase_add_test(tc, test_clip_by_hand);
    tcase_add_test(tc, test_clip_views_and_shared_grads);
    tcase_add_test(tc, test_clip_non_finite);
    tcase_add_test(tc, test_thread_count_does_not_matter);
    tcase_add_test(tc, test_many_parameters_and_folded_clip);
    suite_add_tcase(s, tc);
    tc = tcase_create("state and errors");
    tcase_add_test(tc, test_state_round_trip);
    tcase_add_test(tc, test_bad_state_changes_nothing);
    tcase_add_test(tc, test_bad_configs);
    tcase_add_test(tc, test_bad_parameters);
    tcase_add_test(tc, test_bad_gradient_changes_nothing);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
