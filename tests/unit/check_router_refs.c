/* check_router_refs.c — moelab's router and load-balancing losses against
 * reference vectors written by the independent PyTorch implementation
 * tests/reference/gen_router_refs.py. Built twice: check_router_refs reads
 * router_refs.txt (the exact forms; tolerances 1e-6 relative for f64, 1e-4
 * for f32), check_router_conv_refs reads router_conv_refs.txt (the
 * frameworks' conventions and the newer routing modes; 1e-10 and 1e-5). Each
 * tolerance has a floor for entries that cancel to ~0: 1e-2 × the tensor's
 * largest magnitude (f32 in the second file: 1 ×, as f32 arithmetic errors
 * scale with the tensor, not with the entry).
 *
 * Router cases run twice, in inject and in add mode: weights, expert ids,
 * dense probs and map, counts, dropped slots, the reported capacity and every
 * unscaled aux value per micro-batch, then the gradients of Σ w⊙R + Σ probs⊙Rp
 * (+ Σ α·L in add mode) w.r.t. x and the router weight, the expert bias and
 * the quantile-balancing β after each step. Cases with replay_ids route with
 * them; cases with dp > 1 run on that many thread ranks sharing the step;
 * cases with aux_exact.* values run a third time under the exact convention
 * (where the framework's convention agrees with it, or differs). Loss cases
 * compare values and gradients w.r.t. the logits. The reader itself: a file
 * of another format is refused, and a mismatch reports its largest
 * difference and the first values of both sides. */
#include "tmpdir.h" /* first: it defines _GNU_SOURCE */

#include <string.h>

#include "moe/aux_loss.h"
#include "moe/router.h"
#include "../reference/refs.h"
#include "testutil.h"

#ifndef MOE_REFS_FILE
#define MOE_REFS_FILE "tests/reference/router_refs.txt"
#endif

static ref_case *cases;
static int ncases;

#ifndef MOE_REFS_RTOL_F64
#define MOE_REFS_RTOL_F64 1e-6
#endif
#ifndef MOE_REFS_RTOL_F32
#define MOE_REFS_RTOL_F32 1e-4
#endif
#ifndef MOE_REFS_FLOOR_F32 /* f32 tolerance floor, × the tensor's largest magnitude */
#define MOE_REFS_FLOOR_F32 1e-2
#endif
#ifndef MOE_REFS_MIN_CASES
#define MOE_REFS_MIN_CASES 60 /* the first file's cases */
#endif

/* ---- comparison -------------------------------------------------------------------------- */

/* False with a message in ERR when GOT differs from EXP (no Check calls: rank
 * threads use it too). */
static bool differs(char *err, size_t len, const ref_case *c, const char *what, int m, moe_tensor *got,
                    moe_tensor *exp, double rtol)
{
    if (!got || !exp) {
        snprintf(err, len, "%s: %s#%d %s", c->name, what, m, got ? "has no expected value" : "missing");
        return true;
    }
    char name[200];
    snprintf(name, sizeof name, "%s: %s#%d", c->name, what, m);
    /* tolerance rtol·(|e| + floor·max|e|); rtol < 0: exact */
    int64_t n = moe_tensor_numel(exp);
    double *e = malloc(sizeof(double) * (size_t)(n + 1)), mx = 0;
    if (moe_tensor_to_doubles(exp, e) != MOE_OK) n = 0;
    for (int64_t i = 0; i < n; i++) mx = fabs(e[i]) > mx ? fabs(e[i]) : mx;
    free(e);
    double floor = rtol >= MOE_REFS_RTOL_F32 ? MOE_REFS_FLOOR_F32 : 1e-2;
    return rtol < 0 ? ref_mismatch(err, len, name, got, exp, 0, 0)
                    : ref_mismatch(err, len, name, got, exp, rtol * floor * mx + 1e-300, rtol);
}

static void compare(const ref_case *c, const char *what, int m, moe_tensor *got, moe_tensor *exp,
                    double rtol)
{
    char err[1024];
    if (differs(err, sizeof err, c, what, m, got, exp, rtol)) ck_abort_msg("%s", err);
}

/* ---- runners ------------------------------------------------------------------------------- */

static moe_tensor *leaf_copy(moe_tensor *t)
{
    moe_tensor *c;
    OK(moe_clone(&c, t));
    OK(moe_tensor_requires_grad_(c, true));
    return c;
}

/* Σ a⊙R with R converted to a's dtype (NULL on failure). */
static moe_tensor *weighted_sum(moe_tensor *a, moe_tensor *R)
{
    moe_tensor *rc = NULL, *prod = NULL, *s = NULL;
    if (moe_to_dtype(&rc, R, a->dtype) == MOE_OK && moe_mul(&prod, a, rc) == MOE_OK)
        moe_sum(&s, prod, 0, NULL, false);
    moe_tensor_release(rc);
    moe_tensor_release(prod);
    return s;
}

/* One router case on one rank: RANK's micro-batches are records
 * rank·micro + m. False with a message in ERR on the first mismatch. */
typedef struct router_run {
    const ref_case *c;
    moe_grad_mode mode;
    bool exact_only; /* rerun under the exact convention: compare aux_exact.* only */
    char err[8][1024];
} router_run;

#define RUN_TRY(expr)                                                                     \
    do {                                                                                  \
        if ((expr) != MOE_OK) {                                                           \
            snprintf(err, 512, "%s: %s failed: %s", c->name, #expr, moe_last_error());    \
            goto done;                                                                    \
        }                                                                                 \
    } while (0)
#define RUN_CMP(what, m, got, exp, rtol)                                                  \
    do {                                                                                  \
        if (differs(err, 512, c, what, m, got, exp, rtol)) goto done;                     \
    } while (0)

static moe_status run_router_rank(int rank, moe_group *world, void *ctx)
{
    router_run *run = ctx;
    const ref_case *c = run->c;
    char *err = run->err[rank];
    err[0] = 0;
    moe_router_config cfg;
    if (!ref_router_config(&cfg, c)) {
        snprintf(err, 512, "%s: a setting does not parse", c->name);
        return MOE_ERR_ARG;
    }
    cfg.grad_mode = run->mode;
    if (run->exact_only) cfg.convention = MOE_CONVENTION_EXACT;
    double rtol = cfg.dtype == MOE_F32 ? MOE_REFS_RTOL_F32 : MOE_REFS_RTOL_F64;
    moe_router *r = NULL;
    moe_tensor *x = NULL, *o1 = NULL, *o2 = NULL, *obj = NULL, *obj2 = NULL;
    moe_routing *out = NULL;
    RUN_TRY(moe_router_new(&r, &cfg));
    if (world) RUN_TRY(moe_router_set_groups(r, NULL, NULL, world));
    RUN_TRY(moe_router_set_weight(r, ref_tensor(c, "W", -1)));
    if (ref_tensor(c, "bias", -1)) RUN_TRY(moe_router_set_bias(r, ref_tensor(c, "bias", -1)));
    int micro = (int)ref_getd(c, "micro_batches", 1), step_every = (int)ref_getd(c, "step_every", 0);
    for (int m = 0; m < micro; m++) {
        int k = rank * micro + m;
        x = leaf_copy(ref_tensor(c, "x", k));
        RUN_TRY(moe_router_forward_ids(&out, r, x, ref_tensor(c, "valid", k), ref_tensor(c, "bounds", k),
                                       ref_tensor(c, "replay_ids", k)));
        if (run->exact_only) {
            for (int i = 0; i < out->n_aux; i++) {
                char nm[64];
                snprintf(nm, sizeof nm, "aux_exact.%s", moe_aux_kind_name(out->aux_kind[i]));
                if (ref_tensor(c, nm, k)) RUN_CMP(nm, k, out->aux[i], ref_tensor(c, nm, k), rtol);
            }
            moe_routing_free(out);
            out = NULL;
            moe_tensor_release(x);
            x = NULL;
            if (step_every && (m + 1) % step_every == 0) RUN_TRY(moe_router_step(r));
            continue;
        }
        if (out->probs != NULL || out->map != NULL) { /* built on demand */
            snprintf(err, 512, "%s: dense views built eagerly", c->name);
            goto done;
        }
        RUN_TRY(moe_routing_dense(out));
        RUN_TRY(moe_routing_dense(out)); /* idempotent */
        RUN_CMP("weights", k, out->weights, ref_tensor(c, "weights", k), rtol);
        RUN_CMP("ids", k, out->experts, ref_tensor(c, "ids", k), -1);
        RUN_CMP("probs", k, out->probs, ref_tensor(c, "probs", k), rtol);
        RUN_CMP("map", k, out->map, ref_tensor(c, "map", k), -1);
        RUN_CMP("counts", k, out->counts, ref_tensor(c, "counts", k), -1);
        int64_t want_dropped = ((int64_t *)moe_tensor_data(ref_tensor(c, "dropped", k)))[0];
        if (out->dropped != want_dropped) {
            snprintf(err, 512, "%s: dropped %lld, expected %lld", c->name, (long long)out->dropped,
                     (long long)want_dropped);
            goto done;
        }
        moe_tensor *cap = ref_tensor(c, "capacity", k);
        if (cap && out->capacity != ((int64_t *)moe_tensor_data(cap))[0]) {
            snprintf(err, 512, "%s: capacity %lld, expected %lld", c->name, (long long)out->capacity,
                     (long long)((int64_t *)moe_tensor_data(cap))[0]);
            goto done;
        }
        for (int i = 0; i < out->n_aux; i++) {
            char nm[64];
            snprintf(nm, sizeof nm, "aux.%s", moe_aux_kind_name(out->aux_kind[i]));
            RUN_CMP(nm, k, out->aux[i], ref_tensor(c, nm, k), rtol);
        }
        o1 = weighted_sum(out->weights, ref_tensor(c, "R", k));
        o2 = weighted_sum(out->probs, ref_tensor(c, "Rp", k));
        if (!o1 || !o2) RUN_TRY(MOE_ERR_NOMEM);
        RUN_TRY(moe_add(&obj, o1, o2));
        if (run->mode == MOE_GRAD_ADD) {
            RUN_TRY(moe_add(&obj2, obj, out->aux_total));
            moe_tensor_release(obj);
            obj = obj2;
            obj2 = NULL;
        }
        RUN_TRY(moe_backward(obj, NULL, false));
        RUN_CMP("grad_x", k, x->grad, ref_tensor(c, "grad_x", k), rtol);
        moe_tensor *rel[] = {o1, o2, obj, x};
        for (size_t i = 0; i < 4; i++) moe_tensor_release(rel[i]);
        o1 = o2 = obj = x = NULL;
        moe_routing_free(out);
        out = NULL;
        if (step_every && (m + 1) % step_every == 0) {
            RUN_TRY(moe_router_step(r));
            if (ref_tensor(c, "bias_after", k))
                RUN_CMP("bias_after", k, moe_router_bias(r), ref_tensor(c, "bias_after", k), 1e-4); /* f32 */
            if (ref_tensor(c, "qb_beta_after", m))
                RUN_CMP("qb_beta_after", m, moe_router_qb_beta(r), ref_tensor(c, "qb_beta_after", m),
                        MOE_REFS_RTOL_F32); /* β is f32 */
        }
    }
    if (!run->exact_only && ref_tensor(c, "grad_W", -1))
        RUN_CMP("grad_W", -1, moe_router_weight(r)->grad, ref_tensor(c, "grad_W", -1), rtol);
done:
    moe_routing_free(out);
    moe_tensor *rel[] = {o1, o2, obj, obj2, x};
    for (size_t i = 0; i < 5; i++) moe_tensor_release(rel[i]);
    moe_router_free(r);
    return err[0] ? MOE_ERR_VALUE : MOE_OK;
}

static void run_router(const ref_case *c, moe_grad_mode mode, bool exact_only)
{
    router_run run = {.c = c, .mode = mode, .exact_only = exact_only};
    int dp = (int)ref_getd(c, "dp", 1);
    ck_assert(dp >= 1 && dp <= 8);
    if (dp == 1) {
        run_router_rank(0, NULL, &run);
    } else {
        moe_threads_run(dp, run_router_rank, &run, NULL);
    }
    for (int rk = 0; rk < dp; rk++)
        ck_assert_msg(run.err[rk][0] == 0, "%s%s (rank %d of %d)", run.err[rk],
                      exact_only ? " [exact convention]" : "", rk, dp);
}

static void run_loss(const ref_case *c)
{
    moe_aux_options o;
    moe_aux_options_default(&o);
    moe_aux_kind kind;
    ck_assert(moe_aux_kind_parse(ref_get(c, "kind"), &kind));
    o.top_k = (int64_t)ref_getd(c, "top_k", 1);
    ck_assert(moe_score_fn_parse(ref_get(c, "score"), &o.score));
    o.sigmoid_eps = ref_getd(c, "loss_eps", 1e-20);
    o.score_offset = ref_getd(c, "score_offset", 0);
    o.loss_div_factor = ref_getd(c, "loss_div", 0);
    o.num_layers = (int64_t)ref_getd(c, "num_layers", 1);
    o.k_in_f = ref_getd(c, "k_in_f", 1) != 0;
    if (ref_get(c, "convention")) ck_assert(moe_convention_parse(ref_get(c, "convention"), &o.convention));
    double rtol = !strcmp(ref_get(c, "dtype"), "f32") ? MOE_REFS_RTOL_F32 : MOE_REFS_RTOL_F64;
    moe_balance_tracker *tr = NULL;
    moe_tensor *first = ref_tensor(c, "logits", 0);
    if (kind == MOE_AUX_GLOBAL_BATCH) {
        OK(moe_balance_tracker_new(&tr, first->shape[first->ndim - 1], NULL));
        if (ref_tensor(c, "extra_counts", -1)) {
            double et;
            OK(moe_tensor_item(ref_tensor(c, "extra_tokens", -1), &et));
            OK(moe_balance_tracker_add_counts(tr, ref_tensor(c, "extra_counts", -1), et));
        }
        o.tracker = tr;
    }
    int calls = (int)ref_getd(c, "calls", 1);
    for (int m = 0; m < calls; m++) {
        moe_tensor *lg = leaf_copy(ref_tensor(c, "logits", m)), *L;
        o.valid = ref_tensor(c, "valid", m);
        o.doc_bounds = ref_tensor(c, "bounds", m);
        o.routing_ids = ref_tensor(c, "routing_ids", m);
        if (kind == MOE_AUX_Z && ref_get(c, "z_div"))
            OK(moe_z_loss_div(&L, lg, o.valid, ref_getd(c, "z_div", 0)));
        else
            OK(moe_load_balancing_loss(&L, kind, lg, &o));
        compare(c, "value", m, L, ref_tensor(c, "value", m), rtol);
        OK(moe_backward(L, NULL, false));
        compare(c, "grad", m, lg->grad, ref_tensor(c, "grad", m), rtol);
        RELEASE(L, lg);
    }
    moe_balance_tracker_free(tr);
}

static void run_megablocks(const ref_case *c)
{
    int n = (int)ref_getd(c, "layers", 1);
    moe_aux_options o;
    moe_aux_options_default(&o);
    o.top_k = (int64_t)ref_getd(c, "top_k", 1);
    o.num_layers = (int64_t)ref_getd(c, "num_layers", n);
    double rtol = !strcmp(ref_get(c, "dtype"), "f32") ? MOE_REFS_RTOL_F32 : MOE_REFS_RTOL_F64;
    moe_tensor *lg[8], *ids[8], *L;
    for (int l = 0; l < n; l++) {
        lg[l] = leaf_copy(ref_tensor(c, "logits", l));
        ids[l] = ref_tensor(c, "routing_ids", l);
    }
    OK(moe_megablocks_batched_loss(&L, n, lg, ids, &o));
    compare(c, "value", -1, L, ref_tensor(c, "value", -1), rtol);
    OK(moe_backward(L, NULL, false));
    for (int l = 0; l < n; l++) {
        compare(c, "grad", l, lg[l]->grad, ref_tensor(c, "grad", l), rtol);
        moe_tensor_release(lg[l]);
    }
    moe_tensor_release(L);
}

START_TEST(test_ref_case)
{
    const ref_case *c = &cases[_i];
    const char *op = ref_get(c, "op");
    ck_assert_msg(op != NULL, "%s: no op", c->name);
    if (!strcmp(op, "router")) {
        run_router(c, MOE_GRAD_INJECT, false);
        run_router(c, MOE_GRAD_ADD, false);
        bool exact = false;
        for (int i = 0; i < c->ntens; i++) exact |= strncmp(c->tname[i], "aux_exact.", 10) == 0;
        if (exact) run_router(c, MOE_GRAD_INJECT, true);
    } else if (!strcmp(op, "loss")) {
        run_loss(c);
    } else if (!strcmp(op, "megablocks")) {
        run_megablocks(c);
    } else {
        ck_abort_msg("%s: unknown op %s", c->name, op);
    }
}
END_TEST

START_TEST(test_reader)
{
    tu_tmpdir();
    ref_case *rc;
    const char old[] = "# moelab-refs 0\ncase a\ntensor x f64 1 2 1 2\n";
    const char *path = tu_write("old.txt", old, strlen(old));
    ck_assert_int_eq(refs_load(path, &rc), -1);
    ck_assert_msg(strstr(moe_last_error(), "starts with '# moelab-refs 0', expected '# moelab-refs 1'"),
                  "message: %s", moe_last_error());
    const char good[] = "# moelab-refs 1\n# regenerate: none\ncase a\ntensor x f64 2 2 4 0 1 2 3 4 5 6 7\n";
    path = tu_write("good.txt", good, strlen(good));
    ck_assert_int_eq(refs_load(path, &rc), 1);
    moe_tensor *want = ref_tensor(&rc[0], "x", -1), *got;
    OK(moe_clone(&got, want));
    char msg[1024];
    ck_assert(!ref_mismatch(msg, sizeof msg, "x", got, want, 0, 0));
    OK(moe_tensor_set(got, SHAPE(1, 1), 5.5));
    OK(moe_tensor_set(got, SHAPE(0, 2), 2.25));
    ck_assert(ref_mismatch(msg, sizeof msg, "x", got, want, 0.1, 0));
    ck_assert_msg(strstr(msg, "x: 2 of 8 elements off") && strstr(msg, "max |diff| 0.5 at index 5") &&
                      strstr(msg, "got [0 1 2.25 3 4 5.5 …], expected [0 1 2 3 4 5 …]"),
                  "report: %s", msg);
    moe_tensor_release(got);
    refs_free(rc, 1);
    tu_rmtmp();
}
END_TEST

START_TEST(test_ref_count)
{
    ck_assert_int_ge(ncases, MOE_REFS_MIN_CASES);
}
END_TEST

int main(void)
{
    ncases = refs_load(MOE_REFS_FILE, &cases);
    if (ncases < 0) {
        fprintf(stderr, "check_router_refs: cannot read %s: %s\n", MOE_REFS_FILE, moe_last_error());
        return EXIT_FAILURE;
    }
    Suite *s = suite_create("router-refs");
    TCase *tc = tcase_create("reference vectors");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_reader);
    tcase_add_test(tc, test_ref_count);
    tcase_add_loop_test(tc, test_ref_case, 0, ncases);
    suite_add_tcase(s, tc);
    int rc = tu_run(s);
    refs_free(cases, ncases);
    return rc;
}
