/* check_aux_loss.c — the standalone load-balancing losses, the z-loss, the
 * balance tracker and the balance statistics: hand-computed values (checked
 * with torch 1.13), the invariants of the spec (uniform counts give exactly 1,
 * sequence-wise with B = 1 is the micro-batch loss, padding changes nothing,
 * the global-batch buffer counts micro-batches 1..m and never advances on
 * recomputation, data-parallel ranks reproduce the concatenated batch's
 * gradient), finite-difference gradients of every variant, and every error. */
#include <string.h>

#include "dist/comm.h"
#include "moe/aux_loss.h"
#include "moe/metrics.h"
#include "testutil.h"

static moe_tensor *bad;

static moe_tensor *leaf(moe_tensor *t)
{
    OK(moe_tensor_requires_grad_(t, true));
    return t;
}

static moe_tensor *ids_tensor(int64_t T, int64_t K, const int64_t *v)
{
    moe_tensor *t;
    OK(moe_tensor_from_data(&t, MOE_I64, MOE_CPU, 2, (int64_t[]){T, K}, v));
    return t;
}

static moe_aux_options opts(int64_t K, moe_score_fn score)
{
    moe_aux_options o;
    moe_aux_options_default(&o);
    o.top_k = K;
    o.score = score;
    return o;
}

static double value(moe_tensor *t)
{
    double v;
    OK(moe_tensor_item(t, &v));
    return v;
}

/* ---- names and defaults ------------------------------------------------------------- */

START_TEST(test_names)
{
    for (int k = 0; k < MOE_AUX_KIND_COUNT; k++) {
        moe_aux_kind back;
        ck_assert(moe_aux_kind_parse(moe_aux_kind_name((moe_aux_kind)k), &back));
        ck_assert_int_eq(back, k);
    }
    moe_aux_kind k;
    ck_assert(!moe_aux_kind_parse("switch", &k));
    ck_assert_str_eq(moe_aux_kind_name(MOE_AUX_GLOBAL_BATCH), "global-batch");
    ck_assert_str_eq(moe_aux_kind_name(MOE_AUX_OLMO_INSTANCE), "olmo-instance");
    moe_score_fn f;
    ck_assert(moe_score_fn_parse("sigmoid", &f) && f == MOE_SCORE_SIGMOID);
    ck_assert(!moe_score_fn_parse("tanh", &f));
    ck_assert(moe_aux_kind_is_sequence(MOE_AUX_SEQUENCE) && !moe_aux_kind_is_sequence(MOE_AUX_MICRO_BATCH));
    moe_aux_options o;
    moe_aux_options_default(&o);
    ck_assert(o.k_in_f && o.top_k == 1 && o.num_layers == 1 && o.sigmoid_eps == 1e-20);
}
END_TEST

/* ---- hand-computed values --------------------------------------------------------------- */

#define HAND_LOGITS 1, 2, 0, 0, 1, 3, 2, 0, 1, 1, 1.5, 0.5

START_TEST(test_micro_softmax_hand)
{
    /* softmax, K = 1: counts [1 2 1]; value and gradient from torch */
    moe_tensor *z = leaf(T(MOE_F64, 2, SHAPE(4, 3), HAND_LOGITS)), *L;
    moe_aux_options o = opts(1, MOE_SCORE_SOFTMAX);
    OK(moe_load_balancing_loss(&L, MOE_AUX_MICRO_BATCH, z, &o));
    ASSERT_SHAPE(L, 0);
    ASSERT_VALUES(L, 1e-14, 1.0079900848847718);
    OK(moe_backward(L, NULL, false));
    ASSERT_VALUES(z->grad, 1e-15, -0.030525637873088308, 0.041755392475241924, -0.011229754602153542,
                  -0.0008995027271886877, 0.018966497966645103, -0.01806699523945639, -0.01122975460215354,
                  0.01536095044968623, -0.004131195847532677, -0.0291728798117612, 0.046867125849706086,
                  -0.017694246037944887);
    RELEASE(z, L);
}
END_TEST

START_TEST(test_micro_sigmoid_hand)
{
    /* sigmoid, K = 2: loss scores σ/(Σσ + 1e-20), counts [3 3 2] */
    moe_tensor *z = leaf(T(MOE_F64, 2, SHAPE(4, 3), HAND_LOGITS)), *L;
    moe_aux_options o = opts(2, MOE_SCORE_SIGMOID);
    OK(moe_load_balancing_loss(&L, MOE_AUX_MICRO_BATCH, z, &o));
    ASSERT_VALUES(L, 1e-14, 1.0025752131445373);
    OK(moe_backward(L, NULL, false));
    ASSERT_VALUES(z->grad, 1e-15, 0.002066439485677584, 0.0011035082512219159, -0.008470498507169352,
                  0.004682209973339277, 0.0036823134188031293, -0.001093465113195679, 0.0016134583472895516,
                  0.0038418021946026067, -0.005706667207283451, 0.0024340837843402365, 0.0018464543554962674,
                  -0.007238322271106098);
    RELEASE(z, L);
}
END_TEST

START_TEST(test_z_loss_hand)
{
    /* lse = ln 2 and ln 4: mean of squares */
    moe_tensor *z = leaf(T(MOE_F64, 2, SHAPE(2, 2), 0, 0, log(3.0), 0)), *L, *L2;
    OK(moe_z_loss(&L, z, NULL));
    ASSERT_VALUES(L, 1e-14, 1.2011325347955035);
    OK(moe_backward(L, NULL, false));
    /* d/dz = 2·lse·softmax / T */
    double l2 = log(2.0), l4 = log(4.0);
    ASSERT_VALUES(z->grad, 1e-14, l2 / 2, l2 / 2, l4 * 0.75, l4 * 0.25);
    /* the same through load-balancing-loss 'z, and padding leaves a row out */
    moe_aux_options o = opts(1, MOE_SCORE_SOFTMAX);
    moe_tensor *v = T(MOE_BOOL, 1, SHAPE(2), 0, 1);
    o.valid = v;
    OK(moe_load_balancing_loss(&L2, MOE_AUX_Z, z, &o));
    ASSERT_VALUES(L2, 1e-14, l4 * l4);
    RELEASE(z, L, L2, v);
}
END_TEST

/* ---- invariants ----------------------------------------------------------------------- */

/* Every expert gets exactly K·T/E slots: every balance variant is exactly 1. */
START_TEST(test_uniform_counts_give_one)
{
    /* T = 8 tokens (B = 2, S = 4), E = 4, K = 2; each sequence routes uniformly */
    int64_t ids[16] = {0, 1, 2, 3, 0, 1, 2, 3, 1, 0, 3, 2, 2, 3, 0, 1};
    moe_tensor *rid = ids_tensor(8, 2, ids);
    moe_aux_kind kinds[] = {MOE_AUX_MICRO_BATCH, MOE_AUX_SEQUENCE, MOE_AUX_OLMO_LOCAL_BATCH,
                            MOE_AUX_OLMO_INSTANCE, MOE_AUX_GLOBAL_BATCH, MOE_AUX_MEGABLOCKS};
    for (int sc = 0; sc < 2; sc++)
        for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) {
            moe_tensor *z = tu_randn(MOE_F64, 3, SHAPE(2, 4, 4), 11 + i), *L;
            moe_aux_options o = opts(2, sc ? MOE_SCORE_SIGMOID : MOE_SCORE_SOFTMAX);
            o.routing_ids = rid;
            moe_balance_tracker *tr = NULL;
            OK(moe_balance_tracker_new(&tr, 4, NULL));
            o.tracker = tr;
            OK(moe_load_balancing_loss(&L, kinds[i], z, &o));
            double v = value(L);
            ck_assert_msg(fabs(v - 1.0) < 1e-12, "%s/%d: uniform counts give %.17g, not 1",
                          moe_aux_kind_name(kinds[i]), sc, v);
            moe_balance_tracker_free(tr);
            RELEASE(z, L);
        }
    moe_tensor_release(rid);
}
END_TEST

START_TEST(test_sequence_b1_is_micro_batch)
{
    for (int sc = 0; sc < 2; sc++) {
        moe_tensor *z3 = leaf(tu_randn(MOE_F64, 3, SHAPE(1, 9, 5), 3)), *z2, *Ls, *Lm;
        OK(moe_reshape(&z2, z3, 2, SHAPE(9, 5)));
        moe_aux_options o = opts(2, sc ? MOE_SCORE_SIGMOID : MOE_SCORE_SOFTMAX);
        OK(moe_load_balancing_loss(&Ls, MOE_AUX_SEQUENCE, z3, &o));
        OK(moe_load_balancing_loss(&Lm, MOE_AUX_MICRO_BATCH, z2, &o));
        ck_assert(fabs(value(Ls) - value(Lm)) < 1e-14);
        OK(moe_backward(Ls, NULL, false));
        moe_tensor *g1;
        OK(moe_clone(&g1, z3->grad));
        moe_tensor_zero_grad(z3);
        OK(moe_backward(Lm, NULL, false));
        ASSERT_CLOSE(z3->grad, g1, 1e-15);
        /* olmo-instance with one sequence, default divisor, is the same too */
        moe_tensor *Li;
        OK(moe_load_balancing_loss(&Li, MOE_AUX_OLMO_INSTANCE, z3, &o));
        ck_assert(fabs(value(Li) - value(Lm)) < 1e-14);
        RELEASE(z3, z2, Ls, Lm, g1, Li);
    }
}
END_TEST

/* Padded tokens enter neither counts, scores nor T: the loss equals the loss
 * of the valid rows alone, and padded rows get no gradient. */
START_TEST(test_padding_excluded)
{
    moe_aux_kind kinds[] = {MOE_AUX_MICRO_BATCH, MOE_AUX_OLMO_LOCAL_BATCH, MOE_AUX_MEGABLOCKS, MOE_AUX_Z};
    for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) {
        moe_tensor *z = leaf(tu_randn(MOE_F64, 2, SHAPE(6, 4), 5)), *L, *zv, *Lv;
        double *d = moe_tensor_data(z);
        for (int j = 0; j < 4; j++) d[1 * 4 + j] = 40.0 * (j + 1), d[4 * 4 + j] = -30.0 * j;
        moe_tensor *valid = T(MOE_BOOL, 1, SHAPE(6), 1, 0, 1, 1, 0, 1);
        moe_aux_options o = opts(2, MOE_SCORE_SOFTMAX);
        o.valid = valid;
        OK(moe_load_balancing_loss(&L, kinds[i], z, &o));
        /* the valid rows 0 2 3 5 */
        zv = T(MOE_F64, 2, SHAPE(4, 4), d[0], d[1], d[2], d[3], d[8], d[9], d[10], d[11], d[12], d[13],
               d[14], d[15], d[20], d[21], d[22], d[23]);
        o.valid = NULL;
        OK(moe_load_balancing_loss(&Lv, kinds[i], zv, &o));
        ck_assert_msg(fabs(value(L) - value(Lv)) < 1e-14, "%s: %.17g vs %.17g", moe_aux_kind_name(kinds[i]),
                      value(L), value(Lv));
        OK(moe_backward(L, NULL, false));
        double *g = moe_tensor_data(z->grad);
        for (int j = 0; j < 4; j++) ck_assert(g[4 + j] == 0 && g[16 + j] == 0);
        RELEASE(z, L, zv, Lv, valid);
    }
    /* the sequence loss uses each sequence's own valid length */
    moe_tensor *z = tu_randn(MOE_F64, 3, SHAPE(2, 4, 3), 8), *L, *a, *b, *La, *Lb;
    moe_tensor *valid = T(MOE_BOOL, 2, SHAPE(2, 4), 1, 1, 1, 1, 1, 1, 0, 0);
    moe_aux_options o = opts(1, MOE_SCORE_SOFTMAX);
    o.valid = valid;
    OK(moe_load_balancing_loss(&L, MOE_AUX_SEQUENCE, z, &o));
    OK(moe_narrow(&a, z, 0, 0, 1));
    OK(moe_narrow(&b, z, 1, 0, 2));
    moe_tensor *b1;
    OK(moe_narrow(&b1, b, 0, 1, 1));
    o.valid = NULL;
    OK(moe_load_balancing_loss(&La, MOE_AUX_SEQUENCE, a, &o));
    OK(moe_load_balancing_loss(&Lb, MOE_AUX_SEQUENCE, b1, &o));
    ck_assert(fabs(value(L) - 0.5 * (value(La) + value(Lb))) < 1e-14);
    RELEASE(z, L, a, b, b1, La, Lb, valid);
}
END_TEST

START_TEST(test_k_in_f_and_divisors)
{
    moe_tensor *z = tu_randn(MOE_F64, 3, SHAPE(2, 6, 5), 9), *L1, *L2, *L3, *L4, *L5;
    moe_aux_options o = opts(3, MOE_SCORE_SOFTMAX);
    OK(moe_load_balancing_loss(&L1, MOE_AUX_MICRO_BATCH, z, &o));
    o.k_in_f = false; /* the convention without 1/K in f: K × the canonical value */
    OK(moe_load_balancing_loss(&L2, MOE_AUX_MICRO_BATCH, z, &o));
    ck_assert(fabs(value(L2) - 3 * value(L1)) < 1e-13);
    o.k_in_f = true;
    /* olmo-local-batch with the default divisor is the micro-batch loss; an
     * explicit divisor rescales it by T/div */
    OK(moe_load_balancing_loss(&L3, MOE_AUX_OLMO_LOCAL_BATCH, z, &o));
    ck_assert(fabs(value(L3) - value(L1)) < 1e-14);
    o.loss_div_factor = 48.0;
    OK(moe_load_balancing_loss(&L4, MOE_AUX_OLMO_LOCAL_BATCH, z, &o));
    ck_assert(fabs(value(L4) - value(L1) * 12.0 / 48.0) < 1e-14);
    /* megablocks with L layers is the micro-batch loss / L */
    o.loss_div_factor = 0;
    o.num_layers = 4;
    OK(moe_load_balancing_loss(&L5, MOE_AUX_MEGABLOCKS, z, &o));
    ck_assert(fabs(value(L5) - value(L1) / 4) < 1e-14);
    RELEASE(z, L1, L2, L3, L4, L5);
}
END_TEST

START_TEST(test_megablocks_batched)
{
    /* three layers of one stage: the batched loss is Σ per-layer micro-batch / L */
    moe_tensor *lg[3], *L, *Lm;
    double sum = 0;
    moe_aux_options o = opts(2, MOE_SCORE_SOFTMAX);
    for (int l = 0; l < 3; l++) {
        lg[l] = leaf(tu_randn(MOE_F64, 2, SHAPE(10, 6), 20 + l));
        OK(moe_load_balancing_loss(&Lm, MOE_AUX_MICRO_BATCH, lg[l], &o));
        sum += value(Lm);
        moe_tensor_release(Lm);
    }
    o.num_layers = 3;
    OK(moe_megablocks_batched_loss(&L, 3, lg, NULL, &o));
    ck_assert(fabs(value(L) - sum / 3) < 1e-14);
    OK(moe_backward(L, NULL, false));
    for (int l = 0; l < 3; l++) ck_assert(lg[l]->grad != NULL);
    /* a stage holding 3 of 6 layers contributes half as much */
    moe_tensor *L6;
    o.num_layers = 6;
    OK(moe_megablocks_batched_loss(&L6, 3, lg, NULL, &o));
    ck_assert(fabs(value(L6) - sum / 6) < 1e-14);
    moe_tensor *diff = tu_randn(MOE_F64, 2, SHAPE(9, 6), 1);
    FAILS(moe_megablocks_batched_loss(&bad, 2, (moe_tensor *[]){lg[0], diff}, NULL, &o), MOE_ERR_SHAPE, "differ");
    RELEASE(L, L6, lg[0], lg[1], lg[2], diff);
}
END_TEST

/* ---- finite-difference gradients (counts fixed by explicit routing ids) ----------------- */

typedef struct gc_ctx {
    moe_aux_kind kind;
    moe_aux_options o;
} gc_ctx;

static moe_status gc_fn(moe_tensor **out, moe_tensor **in, void *ctx)
{
    gc_ctx *c = ctx;
    return moe_load_balancing_loss(out, c->kind, in[0], &c->o);
}

START_TEST(test_gradcheck_all)
{
    int64_t ids[24];
    for (int i = 0; i < 12; i++) ids[2 * i] = (i * 3) % 5, ids[2 * i + 1] = (i * 3 + 1 + i % 2) % 5;
    moe_tensor *rid = ids_tensor(12, 2, ids);
    moe_aux_kind kinds[] = {MOE_AUX_MICRO_BATCH, MOE_AUX_SEQUENCE, MOE_AUX_OLMO_LOCAL_BATCH,
                            MOE_AUX_OLMO_INSTANCE, MOE_AUX_MEGABLOCKS, MOE_AUX_GLOBAL_BATCH, MOE_AUX_Z};
    for (int sc = 0; sc < 2; sc++)
        for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) {
            gc_ctx c = {.kind = kinds[i], .o = opts(2, sc ? MOE_SCORE_SIGMOID : MOE_SCORE_SOFTMAX)};
            c.o.routing_ids = rid;
            c.o.score_offset = sc ? 1e-3 : 0;
            moe_tensor *valid = T(MOE_BOOL, 2, SHAPE(3, 4), 1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 0, 0);
            c.o.valid = valid;
            moe_balance_tracker *tr;
            OK(moe_balance_tracker_new(&tr, 5, NULL));
            moe_balance_tracker_set_buffer(tr, false);
            c.o.tracker = tr;
            moe_tensor *z = leaf(tu_randn(MOE_F64, 3, SHAPE(3, 4, 5), 30 + i));
            GRADCHECK(gc_fn, 1, &z, &c);
            moe_balance_tracker_free(tr);
            RELEASE(z, valid);
        }
    /* without routing ids the counts come from the top-k (no near-ties here) */
    gc_ctx c = {.kind = MOE_AUX_MICRO_BATCH, .o = opts(2, MOE_SCORE_SOFTMAX)};
    moe_tensor *z = leaf(tu_randn(MOE_F64, 2, SHAPE(7, 4), 77));
    GRADCHECK(gc_fn, 1, &z, &c);
    RELEASE(z, rid);
}
END_TEST

/* ---- global-batch: the tracker ------------------------------------------------------------ */

/* The micro-batch formula with given counts: E·Σ (acc_i/(K·Tacc))·(P_i/T). */
static double global_formula(moe_tensor *z, const double *acc, double tacc, int64_t K)
{
    int64_t T = z->shape[0], E = z->shape[1];
    moe_tensor *p;
    OK(moe_softmax(&p, z, 1));
    double *pp = moe_tensor_data(p), v = 0;
    for (int64_t i = 0; i < E; i++) {
        double P = 0;
        for (int64_t t = 0; t < T; t++) P += pp[t * E + i];
        v += E * (acc[i] / (K * tacc)) * (P / T);
    }
    moe_tensor_release(p);
    return v;
}

START_TEST(test_global_buffer)
{
    /* three micro-batches with fixed routing; micro-batch m sees counts 1..m */
    int64_t ids[3][8] = {{0, 1, 0, 2, 0, 3, 1, 0}, {2, 3, 2, 1, 3, 0, 2, 3}, {1, 1, 1, 1, 1, 1, 0, 2}};
    double acc[4] = {0}, tacc = 0, first[3];
    moe_balance_tracker *tr;
    OK(moe_balance_tracker_new(&tr, 4, NULL));
    ck_assert(moe_balance_tracker_buffer(tr));
    moe_tensor *zs[3];
    for (int m = 0; m < 3; m++) {
        moe_tensor *rid = ids_tensor(4, 2, ids[m]), *L;
        zs[m] = tu_randn(MOE_F64, 2, SHAPE(4, 4), 40 + m);
        moe_aux_options o = opts(2, MOE_SCORE_SOFTMAX);
        o.routing_ids = rid;
        o.tracker = tr;
        OK(moe_load_balancing_loss(&L, MOE_AUX_GLOBAL_BATCH, zs[m], &o));
        for (int i = 0; i < 8; i++) acc[ids[m][i]] += 1;
        tacc += 4;
        first[m] = value(L);
        ck_assert_msg(fabs(first[m] - global_formula(zs[m], acc, tacc, 2)) < 1e-14, "micro-batch %d", m);
        ck_assert_int_eq(moe_balance_tracker_micro_batches(tr), m + 1);
        RELEASE(rid, L);
    }
    moe_tensor *cnt;
    double tok;
    OK(moe_balance_tracker_counts(&cnt, &tok, tr));
    ASSERT_VALUES(cnt, 0, acc[0], acc[1], acc[2], acc[3]);
    ck_assert(tok == 12);
    moe_tensor_release(cnt);
    /* recomputation replays the snapshots in order and does not advance */
    moe_balance_tracker_set_recomputing(tr, true);
    for (int m = 0; m < 3; m++) {
        moe_tensor *rid = ids_tensor(4, 2, ids[m]), *L;
        moe_aux_options o = opts(2, MOE_SCORE_SOFTMAX);
        o.routing_ids = rid;
        o.tracker = tr;
        OK(moe_load_balancing_loss(&L, MOE_AUX_GLOBAL_BATCH, zs[m], &o));
        ck_assert_msg(value(L) == first[m], "recomputed micro-batch %d differs", m);
        RELEASE(rid, L);
    }
    ck_assert_int_eq(moe_balance_tracker_micro_batches(tr), 3);
    moe_aux_options o = opts(2, MOE_SCORE_SOFTMAX);
    o.tracker = tr;
    FAILS(moe_load_balancing_loss(&bad, MOE_AUX_GLOBAL_BATCH, zs[0], &o), MOE_ERR_STATE, "recomputing");
    moe_balance_tracker_set_recomputing(tr, false);
    /* reset after the optimizer step */
    moe_balance_tracker_reset(tr);
    ck_assert_int_eq(moe_balance_tracker_micro_batches(tr), 0);
    OK(moe_balance_tracker_counts(&cnt, &tok, tr));
    ASSERT_VALUES(cnt, 0, 0, 0, 0, 0);
    moe_tensor_release(cnt);
    /* without the buffer each micro-batch sees only its own counts */
    moe_balance_tracker_set_buffer(tr, false);
    for (int m = 0; m < 2; m++) {
        moe_tensor *rid = ids_tensor(4, 2, ids[m]), *L;
        o.routing_ids = rid;
        OK(moe_load_balancing_loss(&L, MOE_AUX_GLOBAL_BATCH, zs[m], &o));
        double own[4] = {0};
        for (int i = 0; i < 8; i++) own[ids[m][i]] += 1;
        ck_assert(fabs(value(L) - global_formula(zs[m], own, 4, 2)) < 1e-14);
        RELEASE(rid, L);
    }
    moe_balance_tracker_free(tr);
    RELEASE(zs[0], zs[1], zs[2]);
}
END_TEST

/* Data parallelism simulated by explicit per-rank tensors (M = 1): each rank
 * adds the other ranks' counts; after the data-parallel average (1/dp) the
 * gradients equal the micro-batch formula's on the concatenated batch. */
START_TEST(test_global_dp_explicit)
{
    const int dp = 3;
    int64_t ids[3][10] = {{0, 1, 2, 3, 0, 1, 4, 2, 3, 1}, {4, 4, 4, 0, 1, 2, 4, 3, 2, 4}, {0, 0, 1, 0, 2, 0, 3, 4, 0, 1}};
    moe_tensor *z[3], *rid[3], *cnt[3];
    for (int r = 0; r < dp; r++) {
        z[r] = leaf(tu_randn(MOE_F64, 2, SHAPE(5, 5), 60 + r));
        rid[r] = ids_tensor(5, 2, ids[r]);
        double c[5] = {0};
        for (int i = 0; i < 10; i++) c[ids[r][i]] += 1;
        OK(moe_tensor_from_data(&cnt[r], MOE_F64, MOE_CPU, 1, SHAPE(5), c));
    }
    for (int r = 0; r < dp; r++) {
        moe_balance_tracker *tr;
        OK(moe_balance_tracker_new(&tr, 5, NULL));
        for (int q = 0; q < dp; q++)
            if (q != r) OK(moe_balance_tracker_add_counts(tr, cnt[q], 5));
        moe_aux_options o = opts(2, MOE_SCORE_SOFTMAX);
        o.routing_ids = rid[r];
        o.tracker = tr;
        moe_tensor *L, *Ls;
        OK(moe_load_balancing_loss(&L, MOE_AUX_GLOBAL_BATCH, z[r], &o));
        OK(moe_mul_scalar(&Ls, L, 1.0 / dp)); /* the data-parallel average */
        OK(moe_backward(Ls, NULL, false));
        moe_balance_tracker_free(tr);
        RELEASE(L, Ls);
    }
    /* the concatenated batch through the micro-batch loss */
    moe_tensor *zc, *zcat, *ridc, *Lc;
    OK(moe_cat(&zcat, 3, (moe_tensor *[]){z[0], z[1], z[2]}, 0));
    OK(moe_detach(&zc, zcat));
    zc = leaf(zc);
    OK(moe_cat(&ridc, 3, rid, 0));
    moe_aux_options o = opts(2, MOE_SCORE_SOFTMAX);
    o.routing_ids = ridc;
    OK(moe_load_balancing_loss(&Lc, MOE_AUX_MICRO_BATCH, zc, &o));
    OK(moe_backward(Lc, NULL, false));
    moe_tensor *gcat;
    OK(moe_cat(&gcat, 3, (moe_tensor *[]){z[0]->grad, z[1]->grad, z[2]->grad}, 0));
    ASSERT_CLOSE(gcat, zc->grad, 1e-15);
    RELEASE(zcat, zc, ridc, Lc, gcat);
    for (int r = 0; r < dp; r++) RELEASE(z[r], rid[r], cnt[r]);
}
END_TEST

/* The same with a real process group: the threads backend, 2 ranks. */
typedef struct dp_ctx {
    moe_tensor *z[2], *grad[2];
} dp_ctx;

static moe_status dp_rank(int rank, moe_group *world, void *vctx)
{
    dp_ctx *c = vctx;
    moe_balance_tracker *tr;
    MOE_TRY(moe_balance_tracker_new(&tr, 4, world));
    moe_tensor *z;
    moe_status st = moe_clone(&z, c->z[rank]);
    if (st == MOE_OK) st = moe_tensor_requires_grad_(z, true);
    moe_aux_options o = opts(2, MOE_SCORE_SIGMOID);
    o.tracker = tr;
    moe_tensor *L = NULL, *Ls = NULL;
    if (st == MOE_OK) st = moe_load_balancing_loss(&L, MOE_AUX_GLOBAL_BATCH, z, &o);
    if (st == MOE_OK) st = moe_mul_scalar(&Ls, L, 0.5);
    if (st == MOE_OK) st = moe_backward(Ls, NULL, false);
    if (st == MOE_OK) c->grad[rank] = moe_tensor_retain(z->grad);
    moe_balance_tracker_free(tr);
    RELEASE(z, L, Ls);
    return st;
}

START_TEST(test_global_dp_threads)
{
    dp_ctx c = {0};
    c.z[0] = tu_randn(MOE_F64, 2, SHAPE(6, 4), 90);
    c.z[1] = tu_randn(MOE_F64, 2, SHAPE(6, 4), 91);
    OK(moe_threads_run(2, dp_rank, &c, NULL));
    moe_tensor *zcat, *zc, *L;
    OK(moe_cat(&zcat, 2, c.z, 0));
    OK(moe_clone(&zc, zcat));
    zc = leaf(zc);
    moe_aux_options o = opts(2, MOE_SCORE_SIGMOID);
    OK(moe_load_balancing_loss(&L, MOE_AUX_MICRO_BATCH, zc, &o));
    OK(moe_backward(L, NULL, false));
    moe_tensor *gcat;
    OK(moe_cat(&gcat, 2, c.grad, 0));
    ASSERT_CLOSE(gcat, zc->grad, 1e-15);
    RELEASE(zcat, zc, L, gcat, c.z[0], c.z[1], c.grad[0], c.grad[1]);
}
END_TEST

/* Micro-batch and sequence losses split over a tp×cp group: the ranks'
 * partial losses (and their gradients) add up to the unsplit loss. */
typedef struct split_ctx {
    moe_tensor *z;     /* [B S E] whole micro-batch */
    moe_aux_kind kind;
    double value[2];
    moe_tensor *grad[2];
} split_ctx;

static moe_status split_rank(int rank, moe_group *world, void *vctx)
{
    split_ctx *c = vctx;
    int64_t S = c->z->shape[1];
    moe_tensor *part, *z, *L = NULL;
    MOE_TRY(moe_narrow(&part, c->z, 1, rank * (S / 2), S / 2)); /* the rank's half of every sequence */
    moe_status st = moe_clone(&z, part);
    moe_tensor_release(part);
    if (st == MOE_OK) st = moe_tensor_requires_grad_(z, true);
    moe_aux_options o = opts(2, MOE_SCORE_SOFTMAX);
    o.group = world;
    if (st == MOE_OK) st = moe_load_balancing_loss(&L, c->kind, z, &o);
    if (st == MOE_OK) st = moe_tensor_item(L, &c->value[rank]);
    if (st == MOE_OK) st = moe_backward(L, NULL, false);
    if (st == MOE_OK) c->grad[rank] = moe_tensor_retain(z->grad);
    RELEASE(z, L);
    return st;
}

START_TEST(test_split_partials_add_up)
{
    moe_aux_kind kinds[] = {MOE_AUX_MICRO_BATCH, MOE_AUX_SEQUENCE, MOE_AUX_OLMO_INSTANCE};
    for (size_t i = 0; i < 3; i++) {
        split_ctx c = {.z = tu_randn(MOE_F64, 3, SHAPE(2, 6, 4), 70 + i), .kind = kinds[i]};
        OK(moe_threads_run(2, split_rank, &c, NULL));
        moe_tensor *zc, *L;
        OK(moe_clone(&zc, c.z));
        zc = leaf(zc);
        moe_aux_options o = opts(2, MOE_SCORE_SOFTMAX);
        OK(moe_load_balancing_loss(&L, kinds[i], zc, &o));
        ck_assert_msg(fabs(c.value[0] + c.value[1] - value(L)) < 1e-14, "%s partials", moe_aux_kind_name(kinds[i]));
        OK(moe_backward(L, NULL, false));
        moe_tensor *g;
        OK(moe_cat(&g, 2, c.grad, 1));
        ASSERT_CLOSE(g, zc->grad, 1e-15);
        RELEASE(c.z, zc, L, g, c.grad[0], c.grad[1]);
    }
}
END_TEST

/* ---- dtypes, layouts, statistics --------------------------------------------------------- */

START_TEST(test_dtypes_and_layouts)
{
    moe_tensor *z64 = tu_randn(MOE_F64, 2, SHAPE(8, 5), 123), *z32, *zb, *L64, *L32, *Lb;
    OK(moe_to_dtype(&z32, z64, MOE_F32));
    OK(moe_to_dtype(&zb, z64, MOE_BF16));
    zb = leaf(zb);
    moe_aux_options o = opts(2, MOE_SCORE_SIGMOID);
    OK(moe_load_balancing_loss(&L64, MOE_AUX_MICRO_BATCH, z64, &o));
    OK(moe_load_balancing_loss(&L32, MOE_AUX_MICRO_BATCH, z32, &o));
    ck_assert_int_eq(L32->dtype, MOE_F32);
    ck_assert(fabs(value(L32) - value(L64)) < 1e-6);
    OK(moe_load_balancing_loss(&Lb, MOE_AUX_MICRO_BATCH, zb, &o)); /* bf16 computes in f32 */
    ck_assert_int_eq(Lb->dtype, MOE_F32);
    OK(moe_backward(Lb, NULL, false));
    ck_assert_int_eq(zb->grad->dtype, MOE_BF16);
    /* a transposed (non-contiguous) input */
    moe_tensor *zt0 = tu_randn(MOE_F64, 2, SHAPE(5, 8), 123), *zt, *Lt, *zc, *Lc;
    OK(moe_transpose(&zt, zt0, 0, 1));
    OK(moe_contiguous(&zc, zt));
    OK(moe_load_balancing_loss(&Lt, MOE_AUX_MICRO_BATCH, zt, &o));
    OK(moe_load_balancing_loss(&Lc, MOE_AUX_MICRO_BATCH, zc, &o));
    ck_assert(value(Lt) == value(Lc));
    RELEASE(z64, z32, zb, L64, L32, Lb, zt0, zt, Lt, zc, Lc);
}
END_TEST

START_TEST(test_balance_stats)
{
    moe_balance_stats s;
    moe_tensor *u = T(MOE_I64, 1, SHAPE(4), 4, 4, 4, 4), *v = T(MOE_F64, 1, SHAPE(4), 8, 0, 4, 4),
               *z = T(MOE_F32, 1, SHAPE(3), 0, 0, 0);
    OK(moe_balance_stats_compute(&s, u));
    ck_assert(s.max_violation == 0 && s.cv == 0 && s.max_over_mean == 1 && s.dead_fraction == 0 && s.total == 16);
    OK(moe_balance_stats_compute(&s, v));
    ck_assert(s.max_violation == 1 && s.max_over_mean == 2 && s.dead_fraction == 0.25);
    ck_assert(fabs(s.cv - sqrt(8.0) / 4) < 1e-15);
    double mv;
    OK(moe_max_violation(&mv, v));
    ck_assert(mv == 1);
    OK(moe_balance_stats_compute(&s, z));
    ck_assert(s.max_violation == 0 && s.dead_fraction == 1);
    moe_tensor *m2 = T(MOE_F64, 2, SHAPE(2, 2), 1, 2, 3, 4);
    FAILS(moe_balance_stats_compute(&s, m2), MOE_ERR_SHAPE, "vector");
    RELEASE(u, v, z, m2);
}
END_TEST

/* ---- errors ------------------------------------------------------------------------------- */

START_TEST(test_errors)
{
    moe_tensor *z = tu_randn(MOE_F64, 2, SHAPE(4, 3), 1), *z3 = tu_randn(MOE_F64, 3, SHAPE(2, 2, 3), 2);
    moe_aux_options o = opts(4, MOE_SCORE_SOFTMAX);
    FAILS(moe_load_balancing_loss(&bad, MOE_AUX_MICRO_BATCH, z, &o), MOE_ERR_ARG, "top-k must be in [1, 3]");
    ck_assert_ptr_null(bad);
    o.top_k = 0;
    FAILS(moe_load_balancing_loss(&bad, MOE_AUX_MICRO_BATCH, z, &o), MOE_ERR_ARG, "got 0");
    o.top_k = 2;
    FAILS(moe_load_balancing_loss(&bad, MOE_AUX_SEQUENCE, z, &o), MOE_ERR_SHAPE, "2-D input");
    FAILS(moe_load_balancing_loss(&bad, MOE_AUX_OLMO_INSTANCE, z, &o), MOE_ERR_SHAPE, "2-D input");
    moe_tensor *v5 = T(MOE_BOOL, 1, SHAPE(5), 1, 1, 1, 1, 1);
    o.valid = v5;
    FAILS(moe_load_balancing_loss(&bad, MOE_AUX_MICRO_BATCH, z, &o), MOE_ERR_SHAPE, "valid mask must be [4]");
    moe_tensor *v22 = T(MOE_BOOL, 2, SHAPE(2, 2), 1, 1, 1, 1);
    o.valid = v22; /* [B S] only for [B S E] logits */
    FAILS(moe_load_balancing_loss(&bad, MOE_AUX_MICRO_BATCH, z, &o), MOE_ERR_SHAPE, "valid mask");
    OK(moe_load_balancing_loss(&bad, MOE_AUX_MICRO_BATCH, z3, &o));
    moe_tensor_release(bad);
    o.valid = NULL;
    double *d = moe_tensor_data(z);
    double keep2 = d[2], keep7 = d[7];
    d[2] = NAN, d[7] = INFINITY;
    FAILS(moe_load_balancing_loss(&bad, MOE_AUX_MICRO_BATCH, z, &o), MOE_ERR_VALUE,
          "1 NaN and 1 Inf values (first at token 0, expert 2)");
    FAILS(moe_z_loss(&bad, z, NULL), MOE_ERR_VALUE, "NaN");
    d[2] = keep2, d[7] = keep7;
    FAILS(moe_load_balancing_loss(&bad, MOE_AUX_GLOBAL_BATCH, z, &o), MOE_ERR_ARG, "tracker");
    moe_balance_tracker *tr;
    OK(moe_balance_tracker_new(&tr, 5, NULL));
    o.tracker = tr;
    FAILS(moe_load_balancing_loss(&bad, MOE_AUX_GLOBAL_BATCH, z, &o), MOE_ERR_SHAPE, "tracker counts 5 experts");
    moe_tensor *c3 = T(MOE_F64, 1, SHAPE(3), 1, 2, 3);
    FAILS(moe_balance_tracker_add_counts(tr, c3, 1), MOE_ERR_SHAPE, "counts must be [5]");
    moe_balance_tracker_free(tr);
    o.tracker = NULL;
    FAILS(moe_balance_tracker_new(&tr, 0, NULL), MOE_ERR_ARG, "experts");
    moe_tensor *rid = T(MOE_I64, 2, SHAPE(4, 1), 0, 1, 2, 0);
    o.routing_ids = rid;
    FAILS(moe_load_balancing_loss(&bad, MOE_AUX_MICRO_BATCH, z, &o), MOE_ERR_SHAPE, "routing ids must be");
    moe_tensor *rid2 = T(MOE_I64, 2, SHAPE(4, 2), 0, 1, 2, 0, 1, 2, 3, 0);
    o.routing_ids = rid2;
    FAILS(moe_load_balancing_loss(&bad, MOE_AUX_MICRO_BATCH, z, &o), MOE_ERR_INDEX, "outside [0, 3)");
    o.routing_ids = NULL;
    moe_tensor *bd = T(MOE_I64, 1, SHAPE(3), 0, 3, 3);
    o.doc_bounds = bd;
    FAILS(moe_load_balancing_loss(&bad, MOE_AUX_SEQUENCE, z, &o), MOE_ERR_VALUE, "rise strictly from 0 to T = 4");
    o.doc_bounds = NULL;
    moe_tensor *zi = T(MOE_I64, 2, SHAPE(2, 2), 1, 2, 3, 4);
    FAILS(moe_load_balancing_loss(&bad, MOE_AUX_MICRO_BATCH, zi, &o), MOE_ERR_DTYPE, "floating");
    moe_tensor *z1 = tu_randn(MOE_F64, 1, SHAPE(4), 1);
    FAILS(moe_load_balancing_loss(&bad, MOE_AUX_MICRO_BATCH, z1, &o), MOE_ERR_SHAPE, "[T E] or [B S E]");
    o.num_layers = 0;
    FAILS(moe_load_balancing_loss(&bad, MOE_AUX_MEGABLOCKS, z, &o), MOE_ERR_ARG, "num_layers");
    FAILS(moe_load_balancing_loss(&bad, (moe_aux_kind)99, z, &o), MOE_ERR_ARG, "unknown");
    RELEASE(z, z3, v5, v22, c3, rid, rid2, bd, zi, z1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("aux-loss");
    TCase *tc = tcase_create("values");
    tcase_add_test(tc, test_names);
    tcase_add_test(tc, test_micro_softmax_hand);
    tcase_add_test(tc, test_micro_sigmoid_hand);
    tcase_add_test(tc, test_z_loss_hand);
    tcase_add_test(tc, test_dtypes_and_layouts);
    tcase_add_test(tc, test_balance_stats);
    suite_add_tcase(s, tc);
    tc = tcase_create("invariants");
    tcase_add_test(tc, test_uniform_counts_give_one);
    tcase_add_test(tc, test_sequence_b1_is_micro_batch);
    tcase_add_test(tc, test_padding_excluded);
    tcase_add_test(tc, test_k_in_f_and_divisors);
    tcase_add_test(tc, test_megablocks_batched);
    suite_add_tcase(s, tc);
    tc = tcase_create("gradients");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_gradcheck_all);
    suite_add_tcase(s, tc);
    tc = tcase_create("global-batch");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_global_buffer);
    tcase_add_test(tc, test_global_dp_explicit);
    tcase_add_test(tc, test_global_dp_threads);
    tcase_add_test(tc, test_split_partials_add_up);
    suite_add_tcase(s, tc);
    tc = tcase_create("errors");
    tcase_add_test(tc, test_errors);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
