/* check_threads.c — libmoelab used from several threads at once: backward
 * passes into one shared parameter sum exactly, walks through a shared
 * retained graph wait for each other, references are dropped from other
 * threads, and a walk that fails gives its nodes back. Also run under ThreadSanitizer (./configure
 * --enable-tsan, see scripts/test).
 *
 * Check's assertions must run on the test's own thread: worker threads only
 * record the first failure, which the test then reports. */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "testutil.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define THREADS 4
#define PASSES 300      /* per thread, into a shared leaf */
#define SHARED_PASSES 100 /* per thread, through a shared node */

/* Dimension letters: N rows of x, I inputs, O outputs. */
enum { N = 2, I = 256, O = 256 };

/* Workers start together, so that their passes overlap. */
static pthread_barrier_t start_line;

typedef struct worker {
    int id;
    moe_tensor *w;      /* shared leaf [I O] */
    moe_tensor *shared; /* shared non-leaf (retained graph), or NULL */
    int passes;
    bool together; /* wait at start_line first */
    moe_status st;
    char error[256];
} worker;

/* Integer-valued input of pass P on thread K, so every gradient is a sum of
 * small integers: exact in f64 whatever the order of additions. */
static moe_status pass_input(moe_tensor **x, int k, int p)
{
    double v[N * I];
    for (int i = 0; i < N * I; i++) v[i] = (double)((i * 7 + k * 3 + p) % 5 - 2);
    return moe_tensor_from_data(x, MOE_F64, MOE_CPU, 2, (int64_t[]){N, I}, v);
}

/* One pass: loss = sum(x @ m) with m = w (or the shared non-leaf); backward. */
static moe_status one_pass(worker *wk, int p)
{
    moe_tensor *x = NULL, *y = NULL, *loss = NULL;
    moe_tensor *m = wk->shared ? wk->shared : wk->w;
    moe_status st = pass_input(&x, wk->id, p);
    if (st == MOE_OK) st = moe_matmul(&y, x, m);
    if (st == MOE_OK) st = moe_sum(&loss, y, 0, NULL, false);
    /* a shared node is walked again by the next pass: keep its graph */
    if (st == MOE_OK) st = moe_backward(loss, NULL, wk->shared != NULL);
    moe_tensor_release(loss);
    moe_tensor_release(y);
    moe_tensor_release(x);
    return st;
}

static void *run_passes(void *arg)
{
    worker *wk = arg;
#ifdef _OPENMP
    /* one OpenMP thread per worker: four teams on a two-core machine spin
     * against each other for seconds */
    if (wk->together) omp_set_num_threads(1);
#endif
    if (wk->together) pthread_barrier_wait(&start_line);
    for (int p = 0; p < wk->passes && wk->st == MOE_OK; p++) {
        wk->st = one_pass(wk, p);
        if (wk->st != MOE_OK) snprintf(wk->error, sizeof wk->error, "%s", moe_last_error());
    }
    return NULL;
}

static moe_tensor *shared_leaf(void)
{
    moe_tensor *w = tu_randn(MOE_F64, 2, SHAPE(I, O), 5);
    OK(moe_tensor_requires_grad_(w, true));
    return w;
}

/* The gradient the passes of all threads give, run one after another on this
 * thread into a leaf of its own. */
static moe_tensor *sequential_grad(void)
{
    moe_tensor *w = shared_leaf();
    for (int k = 0; k < THREADS; k++) {
        worker wk = {.id = k, .w = w, .passes = PASSES};
        run_passes(&wk);
        ck_assert_msg(wk.st == MOE_OK, "sequential passes: %s", wk.error);
    }
    moe_tensor *g = moe_tensor_grad(w);
    moe_tensor_release(w);
    return g;
}

/* The same by hand, for PASSES passes per thread through w * SCALE:
 * d sum(x @ (scale w)) / dw[i][o] = scale * (sum over rows of x[., i]). All
 * terms are small integers, so any order of additions gives this exactly. */
static moe_tensor *closed_form_grad(int passes, double scale)
{
    double *v = malloc(sizeof(double) * I * O);
    for (int i = 0; i < I; i++) {
        double col = 0;
        for (int k = 0; k < THREADS; k++)
            for (int p = 0; p < passes; p++)
                for (int r = 0; r < N; r++) col += (double)(((r * I + i) * 7 + k * 3 + p) % 5 - 2);
        for (int o = 0; o < O; o++) v[i * O + o] = scale * col;
    }
    moe_tensor *g;
    OK(moe_tensor_from_data(&g, MOE_F64, MOE_CPU, 2, SHAPE(I, O), v));
    free(v);
    return g;
}

static void run_threads(worker *wk)
{
    pthread_t th[THREADS];
    ck_assert_int_eq(pthread_barrier_init(&start_line, NULL, THREADS), 0);
    for (int k = 0; k < THREADS; k++) {
        wk[k].together = true;
        ck_assert_int_eq(pthread_create(&th[k], NULL, run_passes, &wk[k]), 0);
    }
    for (int k = 0; k < THREADS; k++) pthread_join(th[k], NULL);
    pthread_barrier_destroy(&start_line);
    for (int k = 0; k < THREADS; k++)
        ck_assert_msg(wk[k].st == MOE_OK, "thread %d: %s", k, wk[k].error);
}

#define assert_bitwise_equal(got, want) assert_same_bits((got), (want), #got " vs " #want)
static void assert_same_bits(moe_tensor *got, moe_tensor *want, const char *what)
{
    ck_assert_ptr_nonnull(got);
    ck_assert(moe_tensor_same_shape(got, want) && got->dtype == MOE_F64);
    ck_assert_msg(memcmp(moe_tensor_data(got), moe_tensor_data(want), moe_tensor_nbytes(want)) == 0,
                  "%s: the gradients differ", what);
}

START_TEST(test_shared_leaf_exact_sum)
{
    moe_tensor *want = sequential_grad(), *by_hand = closed_form_grad(PASSES, 1);
    assert_bitwise_equal(want, by_hand);

    moe_tensor *w = shared_leaf();
    worker wk[THREADS];
    for (int k = 0; k < THREADS; k++) wk[k] = (worker){.id = k, .w = w, .passes = PASSES};
    run_threads(wk);
    moe_tensor *got = moe_tensor_grad(w);
    assert_bitwise_equal(got, want);
    RELEASE(got, want, by_hand, w);
}
END_TEST

/* Every thread walks the node of s = 3w, which they share (with
 * retain-graph): the walks claim it in turn, and the gradient is still the
 * exact sum. */
START_TEST(test_shared_graph_walks_wait)
{
    moe_tensor *want = closed_form_grad(SHARED_PASSES, 3);
    moe_tensor *w = shared_leaf(), *s;
    OK(moe_mul_scalar(&s, w, 3));
    worker wk[THREADS];
    for (int k = 0; k < THREADS; k++)
        wk[k] = (worker){.id = k, .w = w, .shared = s, .passes = SHARED_PASSES};
    run_threads(wk);
    moe_tensor *got = moe_tensor_grad(w);
    assert_bitwise_equal(got, want);
    RELEASE(got, want, s, w);
}
END_TEST

/* References taken and dropped on other threads (as Guile's finalizer thread
 * does): the counts stay exact, so nothing is freed early or leaked. */
static void *churn_views(void *arg)
{
    moe_tensor *t = arg;
    for (int i = 0; i < 2000; i++) {
        moe_tensor *v = NULL;
        if (moe_transpose(&v, t, 0, 1) != MOE_OK) return arg;
        moe_tensor_release(moe_tensor_retain(t));
        moe_tensor_release(v);
    }
    return NULL;
}

START_TEST(test_references_across_threads)
{
    moe_memory_stats before, after;
    moe_tensor *t = tu_randn(MOE_F64, 2, SHAPE(3, 5), 1);
    moe_memory_stats_get(MOE_CPU, &before);
    pthread_t th[THREADS];
    void *res[THREADS];
    for (int k = 0; k < THREADS; k++) ck_assert_int_eq(pthread_create(&th[k], NULL, churn_views, t), 0);
    for (int k = 0; k < THREADS; k++) pthread_join(th[k], &res[k]);
    for (int k = 0; k < THREADS; k++) ck_assert_ptr_null(res[k]);
    moe_memory_stats_get(MOE_CPU, &after);
    ck_assert_int_eq(after.live_tensors, before.live_tensors);
    ck_assert_int_eq(atomic_load(&t->refcount), 1);
    moe_tensor_release(t);
}
END_TEST

/* A node hook that runs backward again from the root it is part of: refused
 * (the graph's nodes are claimed by the walk running the hook, which would
 * wait for itself), and the failed walk gives its claims back. */
static moe_status reenter(moe_tensor **grad, void *ctx)
{
    (void)grad;
    return moe_backward(ctx, NULL, true);
}

START_TEST(test_backward_from_hook_on_own_graph)
{
    moe_tensor *w = shared_leaf(), *h, *y;
    OK(moe_mul_scalar(&h, w, 2));
    OK(moe_sum(&y, h, 0, NULL, false));
    int id;
    OK(moe_tensor_register_hook(h, reenter, y, NULL, &id));
    FAILS(moe_backward(y, NULL, true), MOE_ERR_STATE, "inside a gradient hook");
    ck_assert_ptr_null(w->grad);
    /* the claims were given back: without the hook, backward works */
    ck_assert(moe_tensor_remove_hook(h, id));
    OK(moe_backward(y, NULL, false));
    tu_assert_values(w->grad, I * O, (double[I * O]){[0 ... I * O - 1] = 2}, 0, 0, "grad");
    RELEASE(y, h, w);
}
END_TEST

/* Threads stepping one optimizer take turns: SGD (lr 0.25, no momentum)
 * on a gradient of ones, STEPS_EACH steps from each of THREADS threads, ends
 * exactly where as many steps one after another do (0.25 is exact), and
 * counts every step; the learning rate is set meanwhile from the test's
 * thread. The parameter is large enough (a step takes a while) that
 * overlapping steps would lose updates. */
#define STEPS_EACH 50
#define STEP_ELEMS 200000

static void *step_many(void *opt)
{
    for (int s = 0; s < STEPS_EACH; s++)
        if (moe_optimizer_step(opt) != MOE_OK) return (void *)moe_last_error();
    return NULL;
}

START_TEST(test_optimizer_steps_take_turns)
{
    moe_tensor *p, *g;
    OK(moe_tensor_full(&p, MOE_F32, MOE_CPU, 1, SHAPE(STEP_ELEMS), 100));
    OK(moe_tensor_requires_grad_(p, true));
    OK(moe_tensor_ones(&g, MOE_F32, MOE_CPU, 1, SHAPE(STEP_ELEMS)));
    moe_tensor_set_grad(p, g);
    moe_sgd_config cfg;
    moe_sgd_config_default(&cfg);
    cfg.lr = 0.25;
    moe_optimizer *opt;
    OK(moe_sgd_new(&opt, 1, (const char *[]){"p"}, &p, &cfg));
    pthread_t th[THREADS];
    void *res[THREADS];
    for (int k = 0; k < THREADS; k++) ck_assert_int_eq(pthread_create(&th[k], NULL, step_many, opt), 0);
    for (int k = 0; k < 20; k++) OK(moe_optimizer_set_lr(opt, 0.25));
    for (int k = 0; k < THREADS; k++) pthread_join(th[k], &res[k]);
    for (int k = 0; k < THREADS; k++) ck_assert_msg(res[k] == NULL, "a step failed: %s", (const char *)res[k]);
    ck_assert_int_eq(moe_optimizer_steps(opt), THREADS * STEPS_EACH);
    double *v = malloc(sizeof *v * STEP_ELEMS);
    OK(moe_tensor_to_doubles(p, v));
    for (int i = 0; i < STEP_ELEMS; i++)
        ck_assert_msg(v[i] == 100 - 0.25 * THREADS * STEPS_EACH, "element %d is %g", i, v[i]);
    free(v);
    moe_optimizer_free(opt);
    RELEASE(p, g);
}
END_TEST

static Suite *threads_suite(void)
{
    Suite *s = suite_create("threads");
    TCase *c = tcase_create("concurrent autograd");
    tcase_set_timeout(c, 120);
    tcase_add_test(c, test_shared_leaf_exact_sum);
    tcase_add_test(c, test_shared_graph_walks_wait);
    tcase_add_test(c, test_references_across_threads);
    tcase_add_test(c, test_backward_from_hook_on_own_graph);
    tcase_add_test(c, test_optimizer_steps_take_turns);
    suite_add_tcase(s, c);
    return s;
}

int main(void) { return tu_run(threads_suite()); }
