/* check_model_parallel.c — the MoE transformer as one rank's part of a
 * parallel model, against the one-rank model of the same seed (f64, 1e-10):
 *   stages   layers [0, 2) and [2, 3) of a 3-layer model: the same tensors
 *            under the same names, the first stage's hidden state fed to the
 *            second gives the full model's loss, and backward through both
 *            (the hidden state a leaf, its gradient sent back) gives every
 *            parameter the full model's gradient;
 *   ep       2 thread ranks, experts sharded over the world (and the routers'
 *            dp group the world): each rank feeds its own rows; its loss,
 *            router and dense gradients are the full model's on those rows,
 *            its expert shards' gradients the slice of the full model's
 *            expert gradients summed over both ranks' rows, and after a step
 *            the expert bias is the full model's after one step over both;
 *   files    a whole model's file loads into a stage (the other stages'
 *            tensors skipped) and into an ep rank (the full expert tensors
 *            give its rows);
 *   errors   configuration and input checks naming the values. */
#include "../unit/tmpdir.h" /* first: it defines _GNU_SOURCE */

#include <string.h>

#include "../unit/testutil.h"
#include "disttest.h"
#include "nn/model.h"
#include "train/model_file.h"

enum { B = 4, S = 5, V = 16, D = 8, E = 4 };
#define TOL 1e-10

static void small_config(moe_model_config *c)
{
    moe_model_config_default(c);
    c->vocab = V;
    c->layers = 2;
    c->hidden = D;
    c->heads = 2;
    c->kv_heads = 1;
    c->ffn = 6;
    c->experts = E;
    c->top_k = 2;
    c->max_seq = 8;
    c->dense_ffn = 10;
    c->dtype = MOE_F64;
    c->seed = 11;
}

/* Rows [first, first + n) of seeded ids in [0, V) [B S]. */
static moe_status ids(moe_tensor **out, uint64_t seed, int64_t first, int64_t n)
{
    moe_rng rng;
    moe_rng_init(&rng, seed);
    moe_tensor *all, *rows;
    MOE_TRY(moe_tensor_randint(&all, &rng, MOE_I64, MOE_CPU, 0, V, 2, (int64_t[]){B, S}));
    moe_status st = moe_narrow(&rows, all, 0, first, n);
    if (st == MOE_OK) st = moe_contiguous(out, rows);
    moe_tensor_release(all);
    moe_tensor_release(rows);
    return st;
}

/* A and B (any shapes with as many elements) agree within TOL. */
static moe_status close_to(const moe_tensor *a, const moe_tensor *b, double tol, const char *what)
{
    if (!a || !b) return moe_fail(MOE_ERR_VALUE, "check", "%s: missing tensor (%p %p)", what, (void *)a, (void *)b);
    int64_t n = moe_tensor_numel(a);
    if (n != moe_tensor_numel(b))
        return moe_fail(MOE_ERR_VALUE, "check", "%s: %s vs %s", what, moe_shape_str(a), moe_shape_str(b));
    double *x = malloc(sizeof(double) * (size_t)(2 * n + 1)), *y = x + n;
    if (!x) return moe_fail(MOE_ERR_NOMEM, "check", "out of memory");
    moe_status st = moe_tensor_to_doubles(a, x);
    if (st == MOE_OK) st = moe_tensor_to_doubles(b, y);
    for (int64_t i = 0; st == MOE_OK && i < n; i++)
        if (!(fabs(x[i] - y[i]) <= tol))
            st = moe_fail(MOE_ERR_VALUE, "check", "%s: element %lld is %.17g, expected %.17g", what, (long long)i,
                          x[i], y[i]);
    free(x);
    return st;
}

/* Rows [first, first + n) of T along dim 0, contiguous. */
static moe_status rows_of(moe_tensor **out, moe_tensor *t, int64_t first, int64_t n)
{
    moe_tensor *v;
    MOE_TRY(moe_narrow(&v, t, 0, first, n));
    moe_status st = moe_contiguous(out, v);
    moe_tensor_release(v);
    return st;
}

/* ---- stages ------------------------------------------------------------------------------- */

/* Every parameter of PART has the same name in FULL with the same value
 * and, when GRADS, the same gradient. */
static void expect_same_tensors(const moe_model *part, const moe_model *full, bool grads)
{
    for (int i = 0; i < moe_model_parameter_count(part); i++) {
        const char *name;
        moe_tensor *t, *f;
        OK(moe_model_parameter(part, i, &name, &t));
        f = moe_model_parameter_get(full, name);
        ck_assert_msg(f != NULL, "stage parameter %s is not in the full model", name);
        OK(close_to(t, f, 0, name));
        if (grads) OK(close_to(t->grad, f->grad, TOL, name));
    }
}

START_TEST(test_stages)
{
    moe_model_config c;
    small_config(&c);
    c.layers = 3;
    c.first_dense = 1; /* layer 0 dense, layers 1 and 2 MoE: one on each stage */
    c.router.expert_bias = true; /* a buffer per MoE layer */
    moe_model *full, *s0, *s1;
    OK(moe_model_new(&full, &c));
    c.stage_first = 0;
    c.stage_last = 2;
    OK(moe_model_new(&s0, &c));
    c.stage_first = 2;
    c.stage_last = 3;
    OK(moe_model_new(&s1, &c));

    int64_t f, l;
    moe_model_stage(s1, &f, &l);
    ck_assert(f == 2 && l == 3);
    moe_model_stage(full, &f, &l);
    ck_assert(f == 0 && l == 3);
    /* the stages split the full model's tensors exactly */
    ck_assert_int_eq(moe_model_parameter_count(s0) + moe_model_parameter_count(s1), moe_model_parameter_count(full));
    ck_assert_int_eq(moe_model_buffer_count(s0) + moe_model_buffer_count(s1), moe_model_buffer_count(full));
    ck_assert_int_eq(moe_model_buffer_count(s1), 1);
    ck_assert_ptr_nonnull(moe_model_parameter_get(s0, "embed"));
    ck_assert_ptr_nonnull(moe_model_parameter_get(s0, "layers.0.mlp.w-up"));
    ck_assert_ptr_null(moe_model_parameter_get(s0, "norm"));
    ck_assert_ptr_null(moe_model_parameter_get(s0, "layers.2.attn.wq"));
    ck_assert_ptr_null(moe_model_parameter_get(s1, "embed"));
    ck_assert_ptr_null(moe_model_parameter_get(s1, "layers.1.attn.wq"));
    ck_assert_ptr_nonnull(moe_model_parameter_get(s1, "lm-head"));
    ck_assert_ptr_nonnull(moe_model_parameter_get(s1, "layers.2.moe.router.expert-bias"));
    /* layer numbers stay global, routers keep the global MoE layer count */
    int64_t ell = -1;
    ck_assert_int_eq(moe_model_moe_layer_count(s0), 1);
    ck_assert_int_eq(moe_model_moe_layer_count(s1), 1);
    moe_layer *moe = moe_model_moe_layer(s1, 0, &ell);
    ck_assert_int_eq(ell, 2);
    ck_assert_int_eq(moe_router_get_config(moe_layer_router(moe))->num_moe_layers, 2);
    expect_same_tensors(s0, full, false);
    expect_same_tensors(s1, full, false);

    moe_tensor *tok, *tgt, *loss_full, *h, *hleaf, *loss, *logits_full, *logits;
    OK(ids(&tok, 1, 0, B));
    OK(ids(&tgt, 2, 0, B));
    OK(moe_model_loss(&loss_full, full, tok, tgt, -100));
    OK(moe_backward(loss_full, NULL, false));
    OK(moe_model_forward(&h, s0, tok));
    ck_assert_int_eq(h->ndim, 3);
    ck_assert(h->shape[0] == B && h->shape[1] == S && h->shape[2] == D);
    OK(moe_detach(&hleaf, h));
    OK(moe_tensor_requires_grad_(hleaf, true));
    OK(moe_model_loss(&loss, s1, hleaf, tgt, -100));
    OK(close_to(loss, loss_full, TOL, "stage loss"));
    OK(moe_backward(loss, NULL, false));
    OK(moe_backward(h, hleaf->grad, false));
    expect_same_tensors(s0, full, true);
    expect_same_tensors(s1, full, true);
    /* the last stage's forward gives the logits */
    OK(moe_model_forward(&logits_full, full, tok));
    OK(moe_model_forward(&logits, s1, hleaf));
    OK(close_to(logits, logits_full, TOL, "stage logits"));

    /* wrong inputs: tokens on a later stage, hidden states of the wrong width
     * or dtype, the loss on a stage without the head */
    moe_tensor *narrow_h, *h32, *bad = NULL;
    OK(moe_tensor_zeros(&narrow_h, MOE_F64, MOE_CPU, 3, SHAPE(B, S, D - 2)));
    OK(moe_tensor_zeros(&h32, MOE_F32, MOE_CPU, 3, SHAPE(B, S, D)));
    FAILS(moe_model_forward(&bad, s1, tok), MOE_ERR_DTYPE, "hidden state [B S 8] (f64), got a i64 [4 5] tensor");
    FAILS(moe_model_forward(&bad, s1, narrow_h), MOE_ERR_SHAPE, "layers [2, 3) of 3");
    FAILS(moe_model_forward(&bad, s1, h32), MOE_ERR_DTYPE, "got a f32 [4 5 8]");
    FAILS(moe_model_forward(&bad, s0, hleaf), MOE_ERR_DTYPE,
          "tokens must be i64 (or i32), got a f64 [4 5 8] tensor: this stage (layers [0, 2) of 3) holds \"embed\"");
    FAILS(moe_model_loss(&bad, s0, tok, tgt, -100), MOE_ERR_STATE, "layers [0, 2) of 3 and not the head");
    moe_tensor *short_tgt;
    OK(ids(&short_tgt, 2, 0, B - 1));
    FAILS(moe_model_loss(&bad, s1, hleaf, short_tgt, -100), MOE_ERR_SHAPE, "targets [3 5] must be [B S] of the hidden state [4 5 8]");

    /* a whole model's file (another seed) loads into each stage */
    moe_model *other;
    c.stage_first = c.stage_last = 0;
    c.seed = 12;
    OK(moe_model_new(&other, &c));
    tu_tmpdir();
    OK(moe_model_save_file(other, tu_path("whole.safetensors"), 0, NULL, NULL));
    OK(moe_model_load_file(s0, tu_path("whole.safetensors")));
    OK(moe_model_load_file(s1, tu_path("whole.safetensors")));
    expect_same_tensors(s0, other, false);
    expect_same_tensors(s1, other, false);
    OK(close_to(moe_model_parameter_get(s1, "layers.2.moe.router.expert-bias"),
                moe_model_parameter_get(other, "layers.2.moe.router.expert-bias"), 0, "bias"));
    /* a stage's own file loads into it; names of no stage still fail */
    OK(moe_model_save_file(s1, tu_path("stage.safetensors"), 0, NULL, NULL));
    OK(moe_model_load_file(s1, tu_path("stage.safetensors")));
    FAILS(moe_model_load_file(s0, tu_path("stage.safetensors")), MOE_ERR_ARG, "tensor \"embed\" of the model is missing from the file");
    moe_model_free(other);
    tu_rmtmp();

    tu_release_all(tok, tgt, loss_full, h, hleaf, loss, logits_full, logits, narrow_h, h32, short_tgt, NULL);
    moe_model_free(full);
    moe_model_free(s0);
    moe_model_free(s1);
}
END_TEST

START_TEST(test_bad_config)
{
    moe_model_config c;
    moe_model *m = (moe_model *)1;
    small_config(&c);
    c.stage_first = 1;
    c.stage_last = 1;
    FAILS(moe_model_new(&m, &c), MOE_ERR_ARG, "#:stage (1 . 1) must hold layers [first, last) with 0 <= first < last <= #:layers 2");
    ck_assert_ptr_null(m);
    c.stage_first = 0;
    c.stage_last = 3;
    FAILS(moe_model_new(&m, &c), MOE_ERR_ARG, "#:stage (0 . 3)");
    c.stage_first = -1;
    c.stage_last = 1;
    FAILS(moe_model_new(&m, &c), MOE_ERR_ARG, "#:stage (-1 . 1)");
    c.stage_first = 0;
    c.stage_last = 1;
    c.tie_embeddings = true;
    FAILS(moe_model_new(&m, &c), MOE_ERR_ARG, "would live on two stages");
    c.stage_last = 2; /* one stage with every layer: tying is fine */
    OK(moe_model_new(&m, &c));
    moe_model_free(m);
}
END_TEST

/* ---- expert parallelism on threads ---------------------------------------------------------- */

/* CTX: the file of the one-rank model ("both" before its step). */
static moe_status ep_rank(int rank, moe_group *world, void *ctx)
{
    moe_model_config c;
    small_config(&c);
    c.router.expert_bias = true;
    c.router.bias_rate = 0.01;
    int n = moe_group_size(world);
    int64_t rows = B / n, El = E / n;
    moe_model *full = NULL, *both = NULL, *ep = NULL;
    moe_tensor *tok = NULL, *tgt = NULL, *loss = NULL, *loss_full = NULL, *scaled = NULL, *slice = NULL,
               *scaled_rows = NULL;
    moe_status st = MOE_OK;
    MOE_TRYG(moe_model_new(&full, &c)); /* this rank's rows */
    MOE_TRYG(moe_model_new(&both, &c)); /* every rank's rows, one forward each */
    c.ep_group = world;
    c.dp_group = world;
    MOE_TRYG(moe_model_new(&ep, &c));
    RCHECK(moe_model_expert_offset(ep) == rank * El, "expert offset %lld", (long long)moe_model_expert_offset(ep));
    RCHECK(moe_model_ep_size(ep) == n, "ep size %d", moe_model_ep_size(ep));
    RCHECK(moe_model_parameter_count(ep) == moe_model_parameter_count(full), "parameter counts");

    /* init: the full model's values, the experts' rows of this rank */
    for (int i = 0; i < moe_model_parameter_count(ep); i++) {
        const char *name;
        moe_tensor *t, *f;
        MOE_TRYG(moe_model_parameter(ep, i, &name, &t));
        f = moe_model_parameter_get(full, name);
        RCHECK(f, "%s is not in the full model", name);
        if (strstr(name, ".experts.")) {
            RCHECK(t->shape[0] == El, "%s is %s", name, moe_shape_str(t));
            MOE_TRYG(rows_of(&slice, f, rank * El, El));
            MOE_TRYG(close_to(t, slice, 0, name));
            moe_tensor_release(slice);
            slice = NULL;
        } else {
            MOE_TRYG(close_to(t, f, 0, name));
        }
    }

    /* forward and backward on this rank's rows */
    MOE_TRYG(ids(&tok, 3, rank * rows, rows));
    MOE_TRYG(ids(&tgt, 4, rank * rows, rows));
    MOE_TRYG(moe_model_loss(&loss, ep, tok, tgt, -100));
    MOE_TRYG(moe_backward(loss, NULL, false));
    MOE_TRYG(moe_model_loss(&loss_full, full, tok, tgt, -100));
    MOE_TRYG(moe_backward(loss_full, NULL, false));
    MOE_TRYG(close_to(loss, loss_full, TOL, "ep loss"));
    for (int r = 0; r < n; r++) { /* the full model over every rank's rows: expert grads summed */
        moe_tensor *t = NULL, *y = NULL, *l = NULL;
        st = ids(&t, 3, r * rows, rows);
        if (st == MOE_OK) st = ids(&y, 4, r * rows, rows);
        if (st == MOE_OK) st = moe_model_loss(&l, both, t, y, -100);
        if (st == MOE_OK) st = moe_backward(l, NULL, false);
        tu_release_all(t, y, l, NULL);
        MOE_TRYG(st);
    }
    for (int i = 0; i < moe_model_parameter_count(ep); i++) {
        const char *name;
        moe_tensor *t;
        MOE_TRYG(moe_model_parameter(ep, i, &name, &t));
        if (strstr(name, ".experts.")) {
            MOE_TRYG(rows_of(&slice, (moe_model_parameter_get(both, name))->grad, rank * El, El));
            MOE_TRYG(close_to(t->grad, slice, TOL, name));
            moe_tensor_release(slice);
            slice = NULL;
        } else {
            MOE_TRYG(close_to(t->grad, (moe_model_parameter_get(full, name))->grad, TOL, name));
        }
    }
    /* the routers' dp group: the expert-bias update counts every rank's tokens */
    MOE_TRYG(moe_model_step(ep));
    MOE_TRYG(moe_model_step(both));
    for (int i = 0; i < moe_model_buffer_count(ep); i++) {
        const char *name;
        moe_tensor *t;
        MOE_TRYG(moe_model_buffer(ep, i, &name, &t));
        MOE_TRYG(close_to(t, moe_model_parameter_get(both, name), 1e-7, name)); /* f32 buffers */
    }
    /* set_parameter takes the shard or the full [E ...] tensor */
    moe_tensor *full_up = moe_model_parameter_get(full, "layers.1.moe.experts.w-up");
    MOE_TRYG(moe_mul_scalar(&scaled, full_up, 2.0));
    MOE_TRYG(moe_model_set_parameter(ep, "layers.1.moe.experts.w-up", scaled));
    MOE_TRYG(rows_of(&slice, scaled, rank * El, El));
    MOE_TRYG(close_to(moe_model_parameter_get(ep, "layers.1.moe.experts.w-up"), slice, 0, "set full"));
    RFAILS(moe_model_set_parameter(ep, "layers.1.moe.experts.w-up", tok), MOE_ERR_DTYPE, "");
    moe_tensor_release(slice);
    MOE_TRYG(moe_narrow(&slice, scaled, 0, 0, 3));
    RFAILS(moe_model_set_parameter(ep, "layers.1.moe.experts.w-up", slice), MOE_ERR_SHAPE,
           "this rank's shard of the experts");
    /* the one-rank model's file: each rank takes its experts' rows */
    MOE_TRYG(moe_model_load_file(ep, (const char *)ctx));
    MOE_TRYG(rows_of(&scaled_rows, moe_model_parameter_get(both, "layers.0.moe.experts.w-down"), rank * El, El));
    MOE_TRYG(close_to(moe_model_parameter_get(ep, "layers.0.moe.experts.w-down"), scaled_rows, 0, "loaded shard"));
done:
    tu_release_all(tok, tgt, loss, loss_full, scaled, slice, scaled_rows, NULL);
    moe_model_free(full);
    moe_model_free(both);
    moe_model_free(ep);
    return st;
}

START_TEST(test_ep)
{
    moe_model_config c;
    small_config(&c);
    c.router.expert_bias = true;
    moe_model *m;
    OK(moe_model_new(&m, &c));
    tu_tmpdir();
    OK(moe_model_save_file(m, tu_path("one-rank.safetensors"), 0, NULL, NULL));
    moe_model_free(m);
    moe_status st = moe_threads_run(2, ep_rank, (void *)tu_path("one-rank.safetensors"), NULL);
    tu_rmtmp();
    OK(st);
}
END_TEST

static moe_status ep_bad_rank(int rank, moe_group *world, void *ctx)
{
    (void)rank;
    (void)ctx;
    moe_model_config c;
    small_config(&c);
    c.experts = 3;
    c.top_k = 1;
    c.ep_group = world;
    moe_model *m;
    RFAILS(moe_model_new(&m, &c), MOE_ERR_ARG, "#:experts 3 is not a multiple of the ep group's size 2");
    return MOE_OK;
}

START_TEST(test_ep_bad)
{
    OK(moe_threads_run(2, ep_bad_rank, NULL, NULL));
}
END_TEST

static Suite *model_parallel_suite(void)
{
    Suite *s = suite_create("model-parallel");
    TCase *tc = tcase_create("parts");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_stages);
    tcase_add_test(tc, test_bad_config);
    tcase_add_test(tc, test_ep);
    tcase_add_test(tc, test_ep_bad);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    moe_comm_set_timeout(60); /* a hang fails instead of blocking the suite */
    return tu_run(model_parallel_suite());
}
