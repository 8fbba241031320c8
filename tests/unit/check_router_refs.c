/* check_router_refs.c — moelab's router and load-balancing losses against
 * the reference vectors of tests/reference/router_refs.txt, written by the
 * independent PyTorch implementation tests/reference/gen_router_refs.py.
 *
 * Router cases run twice, in inject and in add mode: weights, expert ids,
 * dense probs and map, counts, dropped slots and every unscaled aux value per
 * micro-batch, then the gradients of Σ w⊙R + Σ probs⊙Rp (+ Σ α·L in add mode)
 * w.r.t. x and the router weight, and the expert bias after each step. Loss
 * cases compare values and gradients w.r.t. the logits. Tolerances: 1e-6
 * relative for f64, 1e-4 for f32 (with a floor of 1e-2 × the tensor's largest
 * magnitude for entries that cancel to ~0). */
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

/* ---- comparison -------------------------------------------------------------------------- */

static void compare(const ref_case *c, const char *what, int m, moe_tensor *got, moe_tensor *exp,
                    double rtol)
{
    ck_assert_msg(got != NULL, "%s: %s#%d missing", c->name, what, m);
    ck_assert_msg(exp != NULL, "%s: no expected %s#%d", c->name, what, m);
    ck_assert_msg(moe_tensor_numel(got) == moe_tensor_numel(exp), "%s: %s#%d has %lld elements, expected %lld",
                  c->name, what, m, (long long)moe_tensor_numel(got), (long long)moe_tensor_numel(exp));
    int64_t n = moe_tensor_numel(exp);
    double *g = malloc(sizeof(double) * (size_t)(n + 1)), *e = malloc(sizeof(double) * (size_t)(n + 1));
    OK(moe_tensor_to_doubles(got, g));
    OK(moe_tensor_to_doubles(exp, e));
    double mx = 0;
    for (int64_t i = 0; i < n; i++) mx = fabs(e[i]) > mx ? fabs(e[i]) : mx;
    for (int64_t i = 0; i < n; i++) {
        double tol = rtol < 0 ? 0 : rtol * (fabs(e[i]) + 1e-2 * mx) + 1e-300;
        if (!(fabs(g[i] - e[i]) <= tol)) {
            double gi = g[i], ei = e[i];
            free(g), free(e);
            ck_abort_msg("%s: %s#%d element %lld is %.17g, expected %.17g (tol %.3g)", c->name, what, m,
                         (long long)i, gi, ei, tol);
        }
    }
    free(g), free(e);
}

/* ---- runners ------------------------------------------------------------------------------- */

static moe_tensor *leaf_copy(moe_tensor *t)
{
    moe_tensor *c;
    OK(moe_clone(&c, t));
    OK(moe_tensor_requires_grad_(c, true));
    return c;
}

/* Σ a⊙R with R converted to a's dtype. */
static moe_tensor *weighted_sum(moe_tensor *a, moe_tensor *R)
{
    moe_tensor *rc, *prod, *s;
    OK(moe_to_dtype(&rc, R, a->dtype));
    OK(moe_mul(&prod, a, rc));
    OK(moe_sum(&s, prod, 0, NULL, false));
    RELEASE(rc, prod);
    return s;
}

static void run_router(const ref_case *c, moe_grad_mode mode)
{
    moe_router_config cfg;
    ck_assert_msg(ref_router_config(&cfg, c), "%s: a setting does not parse", c->name);
    cfg.grad_mode = mode;
    double rtol = cfg.dtype == MOE_F32 ? 1e-4 : 1e-6;
    moe_router *r;
    OK(moe_router_new(&r, &cfg));
    OK(moe_router_set_weight(r, ref_tensor(c, "W", -1)));
    if (ref_tensor(c, "bias", -1)) OK(moe_router_set_bias(r, ref_tensor(c, "bias", -1)));
    int micro = (int)ref_getd(c, "micro_batches", 1), step_every = (int)ref_getd(c, "step_every", 0);
    for (int m = 0; m < micro; m++) {
        moe_tensor *x = leaf_copy(ref_tensor(c, "x", m));
        moe_routing *out;
        OK(moe_router_forward(&out, r, x, ref_tensor(c, "valid", m), ref_tensor(c, "bounds", m)));
        ck_assert(out->probs == NULL && out->map == NULL); /* built on demand */
        OK(moe_routing_dense(out));
        OK(moe_routing_dense(out)); /* idempotent */
        compare(c, "weights", m, out->weights, ref_tensor(c, "weights", m), rtol);
        compare(c, "ids", m, out->experts, ref_tensor(c, "ids", m), -1);
        compare(c, "probs", m, out->probs, ref_tensor(c, "probs", m), rtol);
        compare(c, "map", m, out->map, ref_tensor(c, "map", m), -1);
        compare(c, "counts", m, out->counts, ref_tensor(c, "counts", m), -1);
        int64_t want_dropped = ((int64_t *)moe_tensor_data(ref_tensor(c, "dropped", m)))[0];
        ck_assert_msg(out->dropped == want_dropped, "%s: dropped %lld, expected %lld", c->name,
                      (long long)out->dropped, (long long)want_dropped);
        for (int i = 0; i < out->n_aux; i++) {
            char nm[64];
            snprintf(nm, sizeof nm, "aux.%s", moe_aux_kind_name(out->aux_kind[i]));
            compare(c, nm, m, out->aux[i], ref_tensor(c, nm, m), rtol);
        }
        moe_tensor *o1 = weighted_sum(out->weights, ref_tensor(c, "R", m));
        moe_tensor *o2 = weighted_sum(out->probs, ref_tensor(c, "Rp", m)), *obj, *obj2;
        OK(moe_add(&obj, o1, o2));
        if (mode == MOE_GRAD_ADD) {
            OK(moe_add(&obj2, obj, out->aux_total));
            moe_tensor_release(obj);
            obj = obj2;
        }
        OK(moe_backward(obj, NULL, false));
        compare(c, "grad_x", m, x->grad, ref_tensor(c, "grad_x", m), rtol);
        RELEASE(o1, o2, obj, x);
        moe_routing_free(out);
        if (step_every && (m + 1) % step_every == 0) {
            OK(moe_router_step(r));
            if (ref_tensor(c, "bias_after", m)) compare(c, "bias_after", m, moe_router_bias(r), ref_tensor(c, "bias_after", m), 1e-4); /* f32 */
        }
    }
    compare(c, "grad_W", -1, moe_router_weight(r)->grad, ref_tensor(c, "grad_W", -1), rtol);
    moe_router_free(r);
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
    double rtol = !strcmp(ref_get(c, "dtype"), "f32") ? 1e-4 : 1e-6;
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
    double rtol = !strcmp(ref_get(c, "dtype"), "f32") ? 1e-4 : 1e-6;
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
        run_router(c, MOE_GRAD_INJECT);
        run_router(c, MOE_GRAD_ADD);
    } else if (!strcmp(op, "loss")) {
        run_loss(c);
    } else if (!strcmp(op, "megablocks")) {
        run_megablocks(c);
    } else {
        ck_abort_msg("%s: unknown op %s", c->name, op);
    }
}
END_TEST

START_TEST(test_ref_count)
{
    /* the reference set holds at least 60 cases */
    ck_assert_int_ge(ncases, 60);
}
END_TEST

int main(void)
{
    ncases = refs_load(MOE_REFS_FILE, &cases);
    if (ncases < 0) {
        fprintf(stderr, "check_router_refs: cannot read %s\n", MOE_REFS_FILE);
        return EXIT_FAILURE;
    }
    Suite *s = suite_create("router-refs");
    TCase *tc = tcase_create("reference vectors");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_ref_count);
    tcase_add_loop_test(tc, test_ref_case, 0, ncases);
    suite_add_tcase(s, tc);
    int rc = tu_run(s);
    refs_free(cases, ncases);
    return rc;
}
