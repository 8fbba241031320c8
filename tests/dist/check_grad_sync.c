/* check_grad_sync.c — bucketed gradient all-reduce from hooks (grad_sync.h)
 * on 2 and 4 thread ranks and on one (the scenario: grad_sync_case.c), a
 * peer that fails mid-step, and the argument errors. */
#include "../unit/testutil.h"
#include "grad_sync_case.h"

static int64_t live_tensors(void)
{
    moe_memory_stats s;
    moe_memory_stats_get(MOE_CPU, &s);
    return s.live_tensors;
}

START_TEST(test_ranks)
{
    moe_comm_set_timeout(30); /* a hang fails instead of blocking the suite */
    int n = _i == 0 ? 2 : 4;
    int64_t before = live_tensors();
    moe_status st = moe_threads_run(n, grad_sync_case, NULL, NULL);
    ck_assert_msg(st == MOE_OK, "%d ranks: %s", n, moe_last_error());
    ck_assert_msg(live_tensors() == before, "%d ranks leaked %lld tensors", n, (long long)(live_tensors() - before));
    moe_comm_set_timeout(300);
}
END_TEST

/* One rank, the trivial group: the gradients are divided, nothing else. */
START_TEST(test_one_rank)
{
    int64_t before = live_tensors();
    OK(grad_sync_case(0, NULL, NULL));
    ck_assert_int_eq(live_tensors(), before);
}
END_TEST

/* ---- a rank that fails mid-step: its peers' backward and wait fail, never hang ---- */

typedef struct fail_ctx {
    char backward_msg[4][512];
    char wait_msg[4][512];
    moe_status backward_st[4], wait_st[4];
} fail_ctx;

static moe_status failing_rank(int r, moe_group *world, void *p)
{
    fail_ctx *c = p;
    rank_state rs = {{0}};
    moe_grad_sync *s = NULL;
    RTRY(make_params(&rs, r));
    RTRY(moe_grad_sync_new(&s, world, NPARAM, rs.w, DIVISOR, BUCKET_BYTES));
    moe_status st = step(s, &rs, r, false); /* learn the counts */
    if (st == MOE_OK && r == 1) st = moe_fail(MOE_ERR_VALUE, "model", "boom on rank 1");
    if (st == MOE_OK) {
        zero_grads(&rs);
        st = micro_batch(&rs, r, 0);
        if (st == MOE_OK) st = moe_grad_sync_arm(s);
        if (st == MOE_OK) {
            c->backward_st[r] = micro_batch(&rs, r, 1);
            snprintf(c->backward_msg[r], sizeof c->backward_msg[r], "%s", moe_last_error());
            c->wait_st[r] = moe_grad_sync_wait(s);
            snprintf(c->wait_msg[r], sizeof c->wait_msg[r], "%s", moe_last_error());
            st = c->wait_st[r];
        }
    }
    moe_grad_sync_free(s);
    zero_grads(&rs);
    free_params(&rs);
    return st;
}

START_TEST(test_failing_peer)
{
    moe_comm_set_timeout(30);
    fail_ctx c;
    memset(&c, 0, sizeof c);
    int64_t before = live_tensors();
    moe_status st = moe_threads_run(2, failing_rank, &c, NULL);
    moe_comm_set_timeout(300);
    ck_assert_int_ne(st, MOE_OK);
    /* rank 0's hook started a bucket during backward: that failed, naming rank 1 */
    ck_assert_int_ne(c.backward_st[0], MOE_OK);
    ck_assert_msg(strstr(c.backward_msg[0], "grad-sync: the all-reduce of bucket 0 of 4") &&
                      strstr(c.backward_msg[0], "rank 1 failed: model: boom on rank 1"),
                  "%s", c.backward_msg[0]);
    ck_assert_int_ne(c.wait_st[0], MOE_OK);
    ck_assert_msg(strstr(c.wait_msg[0], "grad-sync-wait!: the all-reduce of bucket 0 of 4") &&
                      strstr(c.wait_msg[0], "boom on rank 1"),
                  "%s", c.wait_msg[0]);
    ck_assert_int_eq(live_tensors(), before);
}
END_TEST

/* ---- arguments ------------------------------------------------------------------- */

START_TEST(test_arguments)
{
    int64_t before = live_tensors();
    moe_tensor *w, *v, *plain, *y;
    OK(moe_tensor_zeros(&w, MOE_F32, MOE_CPU, 1, SHAPE(4)));
    OK(moe_tensor_requires_grad_(w, true));
    OK(moe_tensor_zeros(&v, MOE_F64, MOE_CPU, 2, SHAPE(2, 3)));
    OK(moe_tensor_requires_grad_(v, true));
    OK(moe_tensor_zeros(&plain, MOE_F32, MOE_CPU, 1, SHAPE(4)));
    OK(moe_mul_scalar(&y, w, 2.0));
    moe_grad_sync *s = (moe_grad_sync *)&s;
    FAILS(moe_grad_sync_new(&s, NULL, 0, &w, 1, 0), MOE_ERR_ARG, "make-grad-sync: no parameters");
    ck_assert_ptr_null(s);
    FAILS(moe_grad_sync_new(&s, NULL, 1, &w, 0, 0), MOE_ERR_ARG, "make-grad-sync: divisor 0 is not a positive");
    FAILS(moe_grad_sync_new(&s, NULL, 1, &w, NAN, 0), MOE_ERR_ARG, "divisor nan");
    FAILS(moe_grad_sync_new(&s, NULL, 1, &w, INFINITY, 0), MOE_ERR_ARG, "divisor inf");
    FAILS(moe_grad_sync_new(&s, NULL, 1, &w, 1, -5), MOE_ERR_ARG, "bucket size -5 bytes is negative");
    FAILS(moe_grad_sync_new(&s, NULL, 2, (moe_tensor *[]){w, plain}, 1, 0), MOE_ERR_ARG,
          "make-grad-sync: parameter 1 (f32 [4]) does not require grad");
    FAILS(moe_grad_sync_new(&s, NULL, 3, (moe_tensor *[]){w, v, w}, 1, 0), MOE_ERR_ARG,
          "parameter 2 (f32 [4]) is parameter 0 again");
    FAILS(moe_grad_sync_new(&s, NULL, 1, &y, 1, 0), MOE_ERR_ARG, "parameter 0 (f32 [4]) is not a leaf");
    FAILS(moe_grad_sync_new(&s, NULL, 2, (moe_tensor *[]){w, NULL}, 1, 0), MOE_ERR_ARG, "parameter 1 is NULL");
    ck_assert_ptr_null(w->hooks);
    /* two dtypes, the default size: two buckets, started last parameter first */
    OK(moe_grad_sync_new(&s, NULL, 2, (moe_tensor *[]){w, v}, 2, 0));
    ck_assert_int_eq(moe_grad_sync_bucket_count(s), 2);
    ck_assert_int_eq(moe_grad_sync_param_bucket(s, 1), 0);
    ck_assert_int_eq(moe_grad_sync_param_bucket(s, 0), 1);
    ck_assert_ptr_nonnull(w->hooks);
    FAILS(moe_grad_sync_wait(s), MOE_ERR_STATE, "not armed");
    /* a parameter with no gradient anywhere gets zeros */
    OK(moe_grad_sync_arm(s));
    OK(moe_grad_sync_wait(s));
    moe_tensor *g = moe_tensor_grad(v);
    ASSERT_VALUES(g, 0, 0, 0, 0, 0, 0, 0);
    moe_tensor_release(g);
    moe_grad_sync_free(s);
    moe_grad_sync_free(NULL);
    ck_assert_ptr_null(w->hooks);
    moe_tensor_zero_grad(w);
    moe_tensor_zero_grad(v);
    RELEASE(w, v, plain, y);
    ck_assert_int_eq(live_tensors(), before);
}
END_TEST

static Suite *grad_sync_suite(void)
{
    Suite *s = suite_create("grad_sync");
    TCase *tc = tcase_create("ranks");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_ranks, 0, 2);
    tcase_add_test(tc, test_one_rank);
    tcase_add_test(tc, test_failing_peer);
    tcase_add_test(tc, test_arguments);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(grad_sync_suite()); }
