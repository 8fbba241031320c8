/* check_model.c — the MoE transformer (core/nn/model.h) against an
 * independent PyTorch implementation (tests/reference/gen_model_refs.py):
 * logits, loss, aux losses and every parameter's gradient, in f64 (1e-9)
 * and f32 (1e-4), with both aux-gradient modes and both attention paths;
 * plus parameter names and shapes, the initialisation, the per-step calls
 * and the bad-input errors. */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "../reference/refs.h"
#include "nn/model.h"
#include "testutil.h"

static ref_case *cases;
static int n_cases;

static void load_refs(void)
{
    n_cases = refs_load(MOE_MODEL_REFS, &cases);
    ck_assert_msg(n_cases >= 2, "cannot read %s: %s", MOE_MODEL_REFS, moe_last_error());
}

static void free_refs(void) { refs_free(cases, n_cases); }

static int64_t geti(const ref_case *c, const char *key) { return (int64_t)ref_getd(c, key, -1); }

/* The model configuration of a case. */
static void config_of(moe_model_config *cfg, const ref_case *c, moe_dtype dt, moe_grad_mode gm,
                      moe_attention_impl impl)
{
    moe_model_config_default(cfg);
    cfg->vocab = geti(c, "vocab");
    cfg->layers = geti(c, "layers");
    cfg->hidden = geti(c, "hidden");
    cfg->heads = geti(c, "heads");
    cfg->kv_heads = geti(c, "kv_heads");
    cfg->ffn = geti(c, "ffn");
    cfg->experts = geti(c, "experts");
    cfg->top_k = geti(c, "top_k");
    cfg->moe_every = geti(c, "moe_every");
    cfg->first_dense = geti(c, "first_dense");
    cfg->dense_ffn = geti(c, "dense_ffn");
    cfg->shared_experts = geti(c, "shared_experts");
    cfg->max_seq = geti(c, "max_seq");
    cfg->rope_theta = ref_getd(c, "rope_theta", 0);
    cfg->norm_eps = ref_getd(c, "eps", 0);
    cfg->tie_embeddings = geti(c, "tie") != 0;
    moe_aux_term terms[2] = {{MOE_AUX_MICRO_BATCH, ref_getd(c, "coeff_micro", 0)},
                             {MOE_AUX_Z, ref_getd(c, "coeff_z", 0)}};
    OK(moe_router_config_set_losses(&cfg->router, 2, terms));
    cfg->router.grad_mode = gm;
    cfg->attention = impl;
    cfg->dtype = dt;
}

/* A model of case C with every parameter set from the reference. */
static moe_model *reference_model(const ref_case *c, moe_dtype dt, moe_grad_mode gm, moe_attention_impl impl)
{
    moe_model_config cfg;
    config_of(&cfg, c, dt, gm, impl);
    moe_model *m;
    OK(moe_model_new(&m, &cfg));
    int n_ref = 0;
    for (int i = 0; i < c->ntens; i++)
        if (strncmp(c->tname[i], "p:", 2) == 0) {
            n_ref++;
            OK(moe_model_set_parameter(m, c->tname[i] + 2, c->tens[i]));
        }
    ck_assert_int_eq(moe_model_parameter_count(m), n_ref); /* names and shapes: all there, none extra */
    return m;
}

static void check_case(const ref_case *c, moe_dtype dt, moe_grad_mode gm, moe_attention_impl impl, double tol)
{
    moe_model *m = reference_model(c, dt, gm, impl);
    moe_tensor *tokens = ref_tensor(c, "tokens", -1), *targets = ref_tensor(c, "targets", -1);
    moe_tensor *logits, *loss;
    char what[160];
    snprintf(what, sizeof what, "%s %s %s %s", c->name, moe_dtype_name(dt), moe_grad_mode_name(gm),
             moe_attention_impl_name(impl));
    OK(moe_model_forward(&logits, m, tokens));
    REF_ASSERT_CLOSE(logits, ref_tensor(c, "logits", -1), tol, tol, what);
    moe_tensor_release(logits);
    OK(moe_model_loss(&loss, m, tokens, targets, -100));
    ck_assert(loss->dtype == dt && loss->ndim == 0);
    REF_ASSERT_CLOSE(loss, ref_tensor(c, gm == MOE_GRAD_ADD ? "total" : "ce", -1), tol, tol, what);
    /* the unscaled aux losses of each MoE layer */
    for (int i = 0; i < moe_model_moe_layer_count(m); i++) {
        int64_t l;
        const moe_routing *r = moe_layer_last_routing(moe_model_moe_layer(m, i, &l));
        ck_assert_int_eq(r->n_aux, 2);
        for (int a = 0; a < r->n_aux; a++) {
            char name[64];
            snprintf(name, sizeof name, "aux:%lld:%s", (long long)l, moe_aux_kind_name(r->aux_kind[a]));
            moe_tensor *want = ref_tensor(c, name, -1);
            ck_assert_msg(want != NULL, "%s: no reference for %s", what, name);
            REF_ASSERT_CLOSE(r->aux[a], want, tol, tol, name);
        }
    }
    OK(moe_backward(loss, NULL, false));
    moe_tensor_release(loss);
    for (int i = 0; i < moe_model_parameter_count(m); i++) {
        const char *name;
        moe_tensor *t;
        OK(moe_model_parameter(m, i, &name, &t));
        char gname[320];
        snprintf(gname, sizeof gname, "g:%s", name);
        moe_tensor *want = ref_tensor(c, gname, -1);
        ck_assert_msg(want && t->grad, "%s: %s has no gradient or no reference", what, name);
        snprintf(gname, sizeof gname, "%s: grad of %s", what, name);
        REF_ASSERT_CLOSE(t->grad, want, tol, tol, gname);
    }
    moe_model_free(m);
}

START_TEST(matches_reference_f64)
{
    for (int i = 0; i < n_cases; i++) {
        check_case(&cases[i], MOE_F64, MOE_GRAD_INJECT, MOE_ATTENTION_FUSED, 1e-9);
        check_case(&cases[i], MOE_F64, MOE_GRAD_ADD, MOE_ATTENTION_FUSED, 1e-9);
        check_case(&cases[i], MOE_F64, MOE_GRAD_INJECT, MOE_ATTENTION_PLAIN, 1e-9);
    }
}
END_TEST

START_TEST(matches_reference_f32)
{
    for (int i = 0; i < n_cases; i++) check_case(&cases[i], MOE_F32, MOE_GRAD_INJECT, MOE_ATTENTION_FUSED, 1e-4);
}
END_TEST

/* ---- names, init, buffers, step ------------------------------------------------------------ */

static moe_model *small_model(uint64_t seed, bool tie, bool bias)
{
    moe_model_config cfg;
    moe_model_config_default(&cfg);
    cfg.vocab = 32;
    cfg.layers = 2;
    cfg.hidden = 16;
    cfg.heads = 4;
    cfg.kv_heads = 2;
    cfg.ffn = 8;
    cfg.experts = 4;
    cfg.dense_ffn = 24;
    cfg.first_dense = 1;
    cfg.max_seq = 8;
    cfg.tie_embeddings = tie;
    cfg.router.expert_bias = bias;
    cfg.seed = seed;
    moe_model *m;
    OK(moe_model_new(&m, &cfg));
    return m;
}

START_TEST(names_and_shapes)
{
    moe_model *m = small_model(0, false, true);
    static const struct {
        const char *name;
        int nd;
        int64_t s[3];
    } want[] = {{"embed", 2, {32, 16}},
                {"layers.0.attn-norm", 1, {16}},
                {"layers.0.attn.wq", 2, {16, 16}},
                {"layers.0.attn.wk", 2, {8, 16}},
                {"layers.0.attn.wv", 2, {8, 16}},
                {"layers.0.attn.wo", 2, {16, 16}},
                {"layers.0.ffn-norm", 1, {16}},
                {"layers.0.mlp.w-gate", 2, {24, 16}},
                {"layers.0.mlp.w-up", 2, {24, 16}},
                {"layers.0.mlp.w-down", 2, {16, 24}},
                {"layers.1.attn-norm", 1, {16}},
                {"layers.1.attn.wq", 2, {16, 16}},
                {"layers.1.attn.wk", 2, {8, 16}},
                {"layers.1.attn.wv", 2, {8, 16}},
                {"layers.1.attn.wo", 2, {16, 16}},
                {"layers.1.ffn-norm", 1, {16}},
                {"layers.1.moe.router.weight", 2, {4, 16}},
                {"layers.1.moe.experts.w-gate", 3, {4, 16, 8}},
                {"layers.1.moe.experts.w-up", 3, {4, 16, 8}},
                {"layers.1.moe.experts.w-down", 3, {4, 8, 16}},
                {"norm", 1, {16}},
                {"lm-head", 2, {32, 16}}};
    int n = (int)(sizeof want / sizeof *want);
    ck_assert_int_eq(moe_model_parameter_count(m), n);
    for (int i = 0; i < n; i++) {
        const char *name;
        moe_tensor *t;
        OK(moe_model_parameter(m, i, &name, &t));
        ck_assert_str_eq(name, want[i].name);
        tu_assert_shape(t, want[i].nd, want[i].s, name);
        ck_assert(t->requires_grad && t->dtype == MOE_F32);
    }
    ck_assert_int_eq(moe_model_buffer_count(m), 1);
    const char *bname;
    moe_tensor *b;
    OK(moe_model_buffer(m, 0, &bname, &b));
    ck_assert_str_eq(bname, "layers.1.moe.router.expert-bias");
    ck_assert(b->dtype == MOE_F32 && b->ndim == 1 && b->shape[0] == 4);
    moe_model_free(m);
    m = small_model(0, true, false);
    ck_assert_ptr_null(moe_model_parameter_get(m, "lm-head"));
    ck_assert_int_eq(moe_model_buffer_count(m), 0);
    moe_tensor *v = tu_randn(MOE_F32, 2, SHAPE(32, 16), 3);
    FAILS(moe_model_set_parameter(m, "lm-head", v), MOE_ERR_ARG, "tied");
    FAILS(moe_model_set_parameter(m, "layers.0.attn.wq", v), MOE_ERR_SHAPE, "[16 16]");
    moe_tensor_release(v);
    moe_model_free(m);
}
END_TEST

static double stdev(moe_tensor *t, double *mean)
{
    int64_t n = moe_tensor_numel(t);
    double *v = malloc(sizeof *v * (size_t)n), s = 0, s2 = 0;
    OK(moe_tensor_to_doubles(t, v));
    for (int64_t i = 0; i < n; i++) s += v[i], s2 += v[i] * v[i];
    free(v);
    *mean = s / (double)n;
    return sqrt(s2 / (double)n - *mean * *mean);
}

START_TEST(initialisation)
{
    moe_model_config cfg;
    moe_model_config_default(&cfg);
    cfg.layers = 2;
    cfg.hidden = 128; /* enough draws for the spreads to show */
    cfg.ffn = 64;
    cfg.experts = 4;
    moe_model *m, *m2;
    omp_set_num_threads(1);
    OK(moe_model_new(&m, &cfg));
    omp_set_num_threads(2);
    OK(moe_model_new(&m2, &cfg));
    double mean, sd;
    sd = stdev(moe_model_parameter_get(m, "embed"), &mean);
    ck_assert_msg(fabs(sd - 0.02) < 0.0005 && fabs(mean) < 0.0005, "embed: sd %g mean %g", sd, mean);
    sd = stdev(moe_model_parameter_get(m, "layers.1.moe.experts.w-up"), &mean);
    ck_assert_msg(fabs(sd - 0.02) < 0.0005, "experts.w-up: sd %g", sd);
    sd = stdev(moe_model_parameter_get(m, "layers.0.attn.wo"), &mean);
    ck_assert_msg(fabs(sd - 0.01) < 0.0005, "wo: sd %g, expected 0.02/sqrt(4)", sd);
    sd = stdev(moe_model_parameter_get(m, "layers.1.moe.experts.w-down"), &mean);
    ck_assert_msg(fabs(sd - 0.01) < 0.0005, "w-down: sd %g, expected 0.02/sqrt(4)", sd);
    sd = stdev(moe_model_parameter_get(m, "layers.0.moe.router.weight"), &mean);
    ck_assert_msg(fabs(sd - 0.02) < 0.002, "router: sd %g", sd);
    sd = stdev(moe_model_parameter_get(m, "norm"), &mean);
    ck_assert(sd == 0 && mean == 1);
    for (int i = 0; i < moe_model_parameter_count(m); i++) {
        moe_tensor *a, *b;
        const char *name;
        OK(moe_model_parameter(m, i, &name, &a));
        OK(moe_model_parameter(m2, i, NULL, &b));
        ck_assert_msg(memcmp(moe_tensor_data(a), moe_tensor_data(b), moe_tensor_nbytes(a)) == 0,
                      "%s differs between 1 and 2 threads", name);
    }
    /* different parameters are different draws */
    moe_tensor *wq = moe_model_parameter_get(m, "layers.0.attn.wq"), *wo = moe_model_parameter_get(m, "layers.0.attn.wo");
    ck_assert(((float *)moe_tensor_data(wq))[0] * 0.5f != ((float *)moe_tensor_data(wo))[0]);
    moe_model_free(m);
    moe_model_free(m2);
}
END_TEST

START_TEST(step_and_buffers)
{
    moe_model *m = small_model(1, false, true);
    moe_tensor *tok, *loss;
    moe_rng rng;
    moe_rng_init(&rng, 5);
    OK(moe_tensor_randint(&tok, &rng, MOE_I64, MOE_CPU, 0, 32, 2, SHAPE(2, 8)));
    OK(moe_model_loss(&loss, m, tok, tok, -100));
    OK(moe_backward(loss, NULL, false));
    moe_tensor *w = moe_model_parameter_get(m, "layers.1.moe.router.weight");
    ck_assert_ptr_nonnull(w->grad);
    moe_tensor *bias = moe_model_parameter_get(m, "layers.1.moe.router.expert-bias");
    double b0;
    OK(moe_tensor_get(bias, (int64_t[]){0}, &b0));
    ck_assert(b0 == 0);
    OK(moe_model_step(m)); /* b += u·sign(mean c − c): every expert moves by ±u or 0 */
    double s = 0;
    for (int e = 0; e < 4; e++) {
        double v;
        OK(moe_tensor_get(bias, (int64_t[]){e}, &v));
        ck_assert_msg(fabs(fabs(v) - 1e-3) < 1e-9 || v == 0, "bias %d = %g", e, v);
        s += fabs(v);
    }
    ck_assert(s > 0);
    moe_model_zero_grad(m);
    ck_assert_ptr_null(w->grad);
    moe_tensor *nb = T(MOE_F32, 1, SHAPE(4), 1, 2, 3, 4);
    OK(moe_model_set_parameter(m, "layers.1.moe.router.expert-bias", nb));
    OK(moe_tensor_get(bias, (int64_t[]){3}, &b0));
    ck_assert(b0 == 4);
    /* evaluation mode reaches the routers */
    moe_model_set_training(m, false);
    ck_assert(!moe_model_training(m));
    ck_assert(!moe_router_get_config(moe_layer_router(moe_model_moe_layer(m, 0, NULL)))->training);
    ck_assert(moe_model_flops(m, 2, 8, true) == 3 * moe_model_flops(m, 2, 8, false));
    RELEASE(tok, loss, nb);
    moe_model_free(m);
}
END_TEST

/* The loss and every gradient bit for bit the same on 1 and 2 threads. */
START_TEST(thread_count_does_not_matter)
{
    moe_tensor *grads[2][64] = {{0}}, *losses[2];
    int n = 0;
    moe_rng rng;
    moe_rng_init(&rng, 9);
    moe_tensor *tok;
    OK(moe_tensor_randint(&tok, &rng, MOE_I64, MOE_CPU, 0, 32, 2, SHAPE(3, 8)));
    int prev = omp_get_max_threads();
    for (int run = 0; run < 2; run++) {
        omp_set_num_threads(run + 1);
        moe_model *m = small_model(2, false, false);
        OK(moe_model_loss(&losses[run], m, tok, tok, -100));
        OK(moe_backward(losses[run], NULL, false));
        n = moe_model_parameter_count(m);
        ck_assert_int_le(n, 64);
        for (int i = 0; i < n; i++) {
            moe_tensor *t;
            OK(moe_model_parameter(m, i, NULL, &t));
            grads[run][i] = moe_tensor_retain(t->grad);
        }
        moe_model_free(m);
    }
    omp_set_num_threads(prev);
    ck_assert(memcmp(moe_tensor_data(losses[0]), moe_tensor_data(losses[1]), moe_tensor_nbytes(losses[0])) == 0);
    for (int i = 0; i < n; i++) {
        ck_assert_msg(memcmp(moe_tensor_data(grads[0][i]), moe_tensor_data(grads[1][i]),
                             moe_tensor_nbytes(grads[0][i])) == 0,
                      "gradient %d differs between 1 and 2 threads", i);
        RELEASE(grads[0][i], grads[1][i]);
    }
    RELEASE(losses[0], losses[1], tok);
}
END_TEST

START_TEST(bad_input)
{
    moe_model_config cfg;
    moe_model_config_default(&cfg);
    moe_model *m = NULL;
    cfg.heads = 3;
    FAILS(moe_model_new(&m, &cfg), MOE_ERR_ARG, "#:heads 3 does not divide #:hidden 256");
    cfg.heads = 4;
    cfg.kv_heads = 3;
    FAILS(moe_model_new(&m, &cfg), MOE_ERR_ARG, "#:kv-heads 3 does not divide #:heads 4");
    cfg.kv_heads = 4;
    cfg.dtype = MOE_BF16;
    FAILS(moe_model_new(&m, &cfg), MOE_ERR_DTYPE, "bf16");
    ck_assert_ptr_null(m);
    m = small_model(0, false, false);
    moe_tensor *big = T(MOE_I64, 2, SHAPE(1, 3), 1, 32, 2), *logits = NULL;
    FAILS(moe_model_forward(&logits, m, big), MOE_ERR_INDEX, "tokens[0 1] = 32 is outside the vocabulary [0, 32)");
    moe_tensor *neg = T(MOE_I64, 2, SHAPE(1, 2), 1, -100);
    FAILS(moe_model_forward(&logits, m, neg), MOE_ERR_INDEX, "= -100");
    moe_tensor *ok = T(MOE_I64, 2, SHAPE(1, 2), 1, 2), *loss = NULL;
    OK(moe_model_loss(&loss, m, ok, neg, -100)); /* -100 is fine as a target */
    moe_tensor_release(loss);
    moe_tensor *badt = T(MOE_I64, 2, SHAPE(1, 2), 1, 40);
    FAILS(moe_model_loss(&loss, m, ok, badt, -100), MOE_ERR_INDEX, "targets[0 1] = 40");
    moe_tensor *longer = tu_randn(MOE_F64, 2, SHAPE(1, 9), 1), *longer_i;
    OK(moe_to_dtype(&longer_i, longer, MOE_I64));
    FAILS(moe_model_forward(&logits, m, longer_i), MOE_ERR_SHAPE, "sequence length 9 exceeds #:max-seq 8");
    moe_tensor *fl = T(MOE_F32, 2, SHAPE(1, 2), 1, 2);
    FAILS(moe_model_forward(&logits, m, fl), MOE_ERR_DTYPE, "tokens must be i64");
    ck_assert_ptr_null(logits);
    RELEASE(big, neg, ok, badt, longer, longer_i, fl);
    moe_model_free(m);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("reference");
    tcase_add_unchecked_fixture(tc, load_refs, free_refs);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, matches_reference_f64);
    tcase_add_test(tc, matches_reference_f32);
    suite_add_tcase(s, tc);
    TCase *tm = tcase_create("model");
    tcase_set_timeout(tm, 60);
    tcase_add_test(tm, names_and_shapes);
    tcase_add_test(tm, initialisation);
    tcase_add_test(tm, step_and_buffers);
    tcase_add_test(tm, thread_count_does_not_matter);
    tcase_add_test(tm, bad_input);
    suite_add_tcase(s, tm);
    return s;
}

int main(void) { return tu_run(suite()); }
