/* check_comm.c — collectives on the threads backend (1 to 4 ranks), the
 * trivial NULL group, and the failure paths: a failing rank, a timeout, a
 * rank that returns early, collectives out of order. */
#include <omp.h>
#include <time.h>
#include <unistd.h>

#include "../unit/testutil.h"
#include "cases.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int64_t live_tensors(void)
{
    moe_memory_stats s;
    moe_memory_stats_get(MOE_CPU, &s);
    return s.live_tensors;
}

/* Every case on 1 to 4 ranks, each in a fresh world. */
static void run_case(int i)
{
    const dist_case *c = &dist_cases[i];
    for (int n = 1; n <= 4; n++) {
        int64_t before = live_tensors();
        moe_status st = moe_threads_run(n, c->fn, NULL, NULL);
        ck_assert_msg(st == MOE_OK, "case %s on %d ranks: %s", c->name, n, moe_last_error());
        ck_assert_msg(live_tensors() == before, "case %s on %d ranks leaked %lld tensors", c->name, n,
                      (long long)(live_tensors() - before));
    }
}

START_TEST(test_case) { run_case(_i); }
END_TEST

/* All cases back to back in one world: it stays consistent. */
static moe_status all_cases(int rank, moe_group *world, void *ctx)
{
    (void)ctx;
    for (const dist_case *c = dist_cases; c->name; c++) {
        moe_status st = c->fn(rank, world, NULL);
        if (st != MOE_OK) return dt_rethrow(st, c->name);
    }
    /* the mismatch (last) poisoned the world: later collectives fail at once */
    if (moe_group_size(world) > 1) {
        moe_tensor *t;
        RTRY(moe_tensor_zeros(&t, MOE_F32, MOE_CPU, 1, (int64_t[]){1}));
        RFAILS(moe_all_reduce_(t, MOE_REDUCE_SUM, world), MOE_ERR_SHAPE, "size mismatch");
        moe_tensor_release(t);
    }
    return MOE_OK;
}

START_TEST(test_all_cases_one_world)
{
    for (int n = 2; n <= 4; n++) OK(moe_threads_run(n, all_cases, NULL, NULL));
}
END_TEST

/* ---- the NULL (one-rank) group -------------------------------------------- */

START_TEST(test_null_group)
{
    ck_assert_int_eq(moe_group_size(NULL), 1);
    ck_assert_int_eq(moe_group_rank(NULL), 0);
    ck_assert_str_eq(moe_group_backend(NULL), "self");
    ck_assert_int_eq(moe_group_world_rank(NULL, 0), 0);
    moe_tensor *t = T(MOE_F32, 1, SHAPE(3), 1, -2, 3), *y, *z;
    for (int op = 0; op < MOE_REDUCE_OP_COUNT; op++) {
        OK(moe_all_reduce_(t, (moe_reduce_op)op, NULL));
        ASSERT_VALUES(t, 0, 1, -2, 3);
    }
    OK(moe_all_gather(&y, t, NULL));
    ASSERT_SHAPE(y, 1, 3);
    ASSERT_VALUES(y, 0, 1, -2, 3);
    moe_tensor_release(y);
    OK(moe_reduce_scatter(&y, t, MOE_REDUCE_SUM, NULL));
    ASSERT_VALUES(y, 0, 1, -2, 3);
    moe_tensor_release(y);
    int64_t recv[1] = {-1};
    OK(moe_all_to_all(&y, recv, t, (int64_t[]){3}, NULL));
    ck_assert_int_eq(recv[0], 3);
    ASSERT_VALUES(y, 0, 1, -2, 3);
    moe_tensor_release(y);
    FAILS(moe_all_to_all(&y, recv, t, (int64_t[]){2}, NULL), MOE_ERR_SHAPE, "sum to 2");
    OK(moe_broadcast_(t, 0, NULL));
    FAILS(moe_broadcast_(t, 1, NULL), MOE_ERR_ARG, "root 1");
    OK(moe_barrier(NULL));
    moe_group *g = (moe_group *)1;
    OK(moe_group_split(&g, NULL, 0, 0));
    ck_assert_ptr_null(g);
    /* a 0-dim tensor gathers into [1] */
    OK(moe_tensor_scalar(&z, MOE_F64, MOE_CPU, 5));
    OK(moe_all_gather(&y, z, NULL));
    ASSERT_SHAPE(y, 1, 1);
    ASSERT_VALUES(y, 0, 5);
    RELEASE(y, z);
    /* errors */
    FAILS(moe_all_reduce_(NULL, MOE_REDUCE_SUM, NULL), MOE_ERR_ARG, "NULL");
    FAILS(moe_all_reduce_(t, MOE_REDUCE_OP_COUNT, NULL), MOE_ERR_ARG, "unknown reduce op");
    moe_tensor *b;
    OK(moe_tensor_zeros(&b, MOE_BOOL, MOE_CPU, 1, SHAPE(2)));
    FAILS(moe_all_reduce_(b, MOE_REDUCE_SUM, NULL), MOE_ERR_DTYPE, "bool");
    OK(moe_all_reduce_(b, MOE_REDUCE_MAX, NULL));
    OK(moe_tensor_requires_grad_(t, true));
    FAILS(moe_all_reduce_(t, MOE_REDUCE_SUM, NULL), MOE_ERR_STATE, "requires grad");
    /* autograd on the trivial group: identity gradients */
    OK(moe_all_reduce(&y, t, MOE_REDUCE_SUM, NULL));
    moe_tensor *seed = T(MOE_F32, 1, SHAPE(3), 1, 2, 3);
    OK(moe_backward(y, seed, false));
    ASSERT_VALUES(t->grad, 0, 1, 2, 3);
    RELEASE(y, t, b, seed);
    /* names */
    ck_assert_str_eq(moe_reduce_op_name(MOE_REDUCE_AVG), "avg");
    moe_reduce_op op;
    ck_assert(moe_reduce_op_parse("min", &op) && op == MOE_REDUCE_MIN);
    ck_assert(!moe_reduce_op_parse("prod", &op));
}
END_TEST

/* Messages name the operation as (moelab dist) does, never the C function. */
static moe_status never_runs(int rank, moe_group *world, void *p) { return MOE_OK; }

START_TEST(test_scheme_names)
{
    moe_tensor *t = T(MOE_F32, 1, SHAPE(2), 1, 2), *b, *y = NULL;
    OK(moe_tensor_zeros(&b, MOE_BOOL, MOE_CPU, 1, SHAPE(2)));
    FAILS(moe_all_reduce_(b, MOE_REDUCE_SUM, NULL), MOE_ERR_DTYPE, "all-reduce: sum of a bool");
    FAILS(moe_all_gather(&y, NULL, NULL), MOE_ERR_ARG, "all-gather: tensor argument is NULL");
    FAILS(moe_reduce_scatter(&y, NULL, MOE_REDUCE_SUM, NULL), MOE_ERR_ARG, "reduce-scatter: tensor argument");
    FAILS(moe_all_to_all(&y, NULL, t, (int64_t[]){1}, NULL), MOE_ERR_SHAPE, "all-to-all: send splits sum to 1");
    FAILS(moe_broadcast_(t, 1, NULL), MOE_ERR_ARG, "broadcast: root 1");
    FAILS(moe_send(t, 0, 0, NULL), MOE_ERR_ARG, "send!: rank 0 cannot send to itself");
    FAILS(moe_recv_(t, 0, 0, NULL), MOE_ERR_ARG, "recv!: rank 0 cannot receive from itself");
    moe_group *g = NULL;
    FAILS(moe_group_subset(&g, NULL, 2, (int[]){0, 1}), MOE_ERR_ARG, "group-subset: 2 ranks requested");
    ck_assert_ptr_null(g);
    ck_assert(moe_group_attach_nccl(NULL, 0) != MOE_OK);
    ck_assert_msg(strncmp(moe_last_error(), "attach-nccl: ", 13) == 0, "%s", moe_last_error());
    FAILS(moe_identity_all_reduce_grad(&y, NULL, NULL), MOE_ERR_ARG, "identity-all-reduce-grad: tensor");
    FAILS(moe_comm_set_timeout(-1), MOE_ERR_ARG, "set-comm-timeout!: -1 s is not a timeout");
    FAILS(moe_threads_run(0, never_runs, NULL, NULL), MOE_ERR_ARG, "with-ranks: 0 ranks requested");
    FAILS(moe_mesh_group(&g, NULL, "dp"), MOE_ERR_ARG, "mesh-group: mesh is NULL");
    OK(moe_tensor_requires_grad_(t, true));
    FAILS(moe_all_reduce(&y, t, MOE_REDUCE_MAX, NULL), MOE_ERR_UNSUPPORTED, "all-reduce: max is not differentiable");
    FAILS(moe_reduce_scatter(&y, t, MOE_REDUCE_MIN, NULL), MOE_ERR_UNSUPPORTED, "reduce-scatter: min is not");
    ck_assert_ptr_null(y);
    RELEASE(t, b);
}
END_TEST

/* ---- runner ----------------------------------------------------------------- */

typedef struct info_ctx {
    int threads[8];
    int size[8], rank[8];
    const char *backend[8];
    bool world_is_current[8];
} info_ctx;

static moe_status record_info(int rank, moe_group *world, void *p)
{
    info_ctx *c = p;
    c->threads[rank] = omp_get_max_threads();
    c->size[rank] = moe_group_size(world);
    c->rank[rank] = moe_group_rank(world);
    c->backend[rank] = moe_group_backend(world);
    c->world_is_current[rank] = moe_comm_world() == world;
    return MOE_OK;
}

START_TEST(test_runner)
{
    int total = omp_get_max_threads();
    for (int n = 1; n <= 8; n *= 2) {
        info_ctx c;
        memset(&c, 0, sizeof c);
        moe_status rs[8];
        OK(moe_threads_run(n, record_info, &c, rs));
        for (int r = 0; r < n; r++) {
            ck_assert_int_eq(rs[r], MOE_OK);
            ck_assert_int_eq(c.threads[r], total / n > 1 ? total / n : 1);
            ck_assert_int_eq(c.size[r], n);
            ck_assert_int_eq(c.rank[r], r);
            ck_assert_str_eq(c.backend[r], "threads");
            ck_assert(c.world_is_current[r]);
        }
    }
    ck_assert_ptr_null(moe_comm_world());
    FAILS(moe_threads_run(0, record_info, NULL, NULL), MOE_ERR_ARG, "0 ranks");
    FAILS(moe_threads_run(2, NULL, NULL, NULL), MOE_ERR_ARG, "NULL");
}
END_TEST

/* ---- failure paths ------------------------------------------------------------ */

typedef struct fail_ctx {
    int failing;     /* the rank that fails */
    double delay;    /* seconds it waits before failing (others are then blocked) */
    char msg[8][512];
    double elapsed[8];
} fail_ctx;

static moe_status fail_rank(int rank, moe_group *world, void *p)
{
    fail_ctx *c = p;
    double t0 = now();
    if (rank == c->failing) {
        if (c->delay > 0) usleep((useconds_t)(c->delay * 1e6));
        return moe_fail(MOE_ERR_VALUE, "model", "boom on rank %d", rank);
    }
    moe_tensor *t;
    moe_status st = moe_tensor_ones(&t, MOE_F32, MOE_CPU, 1, (int64_t[]){4});
    for (int i = 0; i < 3 && st == MOE_OK; i++) st = moe_all_reduce_(t, MOE_REDUCE_SUM, world);
    moe_tensor_release(t);
    c->elapsed[rank] = now() - t0;
    snprintf(c->msg[rank], sizeof c->msg[rank], "%s", moe_last_error());
    return st;
}

START_TEST(test_failing_rank)
{
    moe_comm_set_timeout(30); /* a hang would fail, not block the suite */
    for (int blocked = 0; blocked < 2; blocked++) {
        fail_ctx c = {.failing = 2, .delay = blocked ? 0.2 : 0};
        moe_status rs[4];
        FAILS(moe_threads_run(4, fail_rank, &c, rs), MOE_ERR_VALUE, "with-ranks: rank 2 failed: model: boom on rank 2");
        for (int r = 0; r < 4; r++) {
            ck_assert_int_eq(rs[r], MOE_ERR_VALUE); /* the failing rank's status travels */
            if (r == 2) {
                ck_assert_str_eq(moe_threads_rank_error(r), "model: boom on rank 2");
                continue;
            }
            ck_assert_msg(strstr(moe_threads_rank_error(r), "all-reduce: rank 2 failed: model: boom on rank 2"),
                          "rank %d: %s", r, moe_threads_rank_error(r));
            ck_assert_msg(strstr(c.msg[r], "all-reduce: rank 2 failed: model: boom on rank 2"), "rank %d: %s", r,
                          c.msg[r]);
            ck_assert_msg(c.elapsed[r] < 10, "rank %d waited %.1f s", r, c.elapsed[r]);
        }
        ck_assert_str_eq(moe_threads_rank_error(9), "");
    }
    moe_comm_set_timeout(300);
}
END_TEST

static moe_status sleepy_rank(int rank, moe_group *world, void *p)
{
    fail_ctx *c = p;
    if (rank == c->failing) {
        usleep((useconds_t)(c->delay * 1e6)); /* never enters the collective */
        return MOE_OK;
    }
    double t0 = now();
    moe_status st = moe_barrier(world);
    c->elapsed[rank] = now() - t0;
    snprintf(c->msg[rank], sizeof c->msg[rank], "%s", moe_last_error());
    return st;
}

START_TEST(test_timeout)
{
    moe_comm_set_timeout(0.5);
    ck_assert(fabs(moe_comm_timeout() - 0.5) < 1e-9);
    fail_ctx c = {.failing = 3, .delay = 1.5};
    moe_status rs[4];
    moe_status st = moe_threads_run(4, sleepy_rank, &c, rs);
    moe_comm_set_timeout(300);
    ck_assert_int_eq(st, MOE_ERR_BACKEND);
    ck_assert_int_eq(rs[3], MOE_OK);
    for (int r = 0; r < 3; r++) {
        ck_assert_int_eq(rs[r], MOE_ERR_BACKEND);
        ck_assert_msg(strstr(c.msg[r], "timed out after 0.5 s") && strstr(c.msg[r], "rank 3"), "rank %d: %s", r,
                      c.msg[r]);
        ck_assert_msg(c.elapsed[r] > 0.45 && c.elapsed[r] < 5, "rank %d failed after %.2f s", r, c.elapsed[r]);
    }
}
END_TEST

START_TEST(test_returned_early)
{
    moe_comm_set_timeout(30);
    fail_ctx c = {.failing = 1, .delay = 0};
    moe_status rs[3];
    FAILS(moe_threads_run(3, sleepy_rank, &c, rs), MOE_ERR_STATE, "rank 1 returned without entering barrier");
    ck_assert_int_eq(rs[1], MOE_OK);
    for (int r = 0; r < 3; r += 2) {
        ck_assert_msg(strstr(c.msg[r], "barrier: rank 1 returned without entering barrier"), "%s", c.msg[r]);
        ck_assert(c.elapsed[r] < 10);
    }
    moe_comm_set_timeout(300);
}
END_TEST

static moe_status out_of_order(int rank, moe_group *world, void *p)
{
    fail_ctx *c = p;
    moe_tensor *t, *y = NULL;
    RTRY(moe_tensor_ones(&t, rank == 1 ? MOE_F64 : MOE_F32, MOE_CPU, 1, (int64_t[]){3}));
    moe_status st = rank == 0 ? moe_all_gather(&y, t, world) : moe_all_reduce_(t, MOE_REDUCE_SUM, world);
    snprintf(c->msg[rank], sizeof c->msg[rank], "%s", moe_last_error());
    moe_tensor_release(t);
    moe_tensor_release(y);
    return st;
}

static moe_status dtype_mismatch(int rank, moe_group *world, void *p)
{
    fail_ctx *c = p;
    moe_tensor *t;
    RTRY(moe_tensor_ones(&t, rank == 1 ? MOE_F64 : MOE_F32, MOE_CPU, 1, (int64_t[]){3}));
    moe_status st = moe_all_reduce_(t, MOE_REDUCE_SUM, world);
    snprintf(c->msg[rank], sizeof c->msg[rank], "%s", moe_last_error());
    moe_tensor_release(t);
    return st;
}

/* rank 1 reduces with max while the others sum */
static moe_status op_mismatch(int rank, moe_group *world, void *p)
{
    fail_ctx *c = p;
    moe_tensor *t;
    RTRY(moe_tensor_ones(&t, MOE_F32, MOE_CPU, 1, (int64_t[]){3}));
    moe_status st = moe_all_reduce_(t, rank == 1 ? MOE_REDUCE_MAX : MOE_REDUCE_SUM, world);
    snprintf(c->msg[rank], sizeof c->msg[rank], "%s", moe_last_error());
    moe_tensor_release(t);
    return st;
}

START_TEST(test_mismatches)
{
    fail_ctx c = {0};
    moe_status rs[3];
    ck_assert_int_ne(moe_threads_run(3, out_of_order, &c, rs), MOE_OK);
    for (int r = 0; r < 3; r++)
        ck_assert_msg(strstr(c.msg[r], "collectives out of order: rank 0 called all-gather, rank 1 called all-reduce"),
                      "rank %d: %s", r, c.msg[r]);
    memset(&c, 0, sizeof c);
    ck_assert_int_ne(moe_threads_run(3, dtype_mismatch, &c, rs), MOE_OK);
    for (int r = 0; r < 3; r++)
        ck_assert_msg(strstr(c.msg[r], "size mismatch: rank 0 has 3 elements (f32), rank 1 has 3 elements (f64)"),
                      "rank %d: %s", r, c.msg[r]);
    memset(&c, 0, sizeof c);
    ck_assert_int_ne(moe_threads_run(3, op_mismatch, &c, rs), MOE_OK);
    for (int r = 0; r < 3; r++)
        ck_assert_msg(strstr(c.msg[r], "all-reduce: reduce op mismatch: rank 0 passed sum, rank 1 passed max"),
                      "rank %d: %s", r, c.msg[r]);
}
END_TEST

/* Zero, negative and NaN timeouts are errors that keep the setting;
 * INFINITY waits forever. */
START_TEST(test_timeout_setting)
{
    ck_assert_int_eq(moe_comm_set_timeout(2.5), MOE_OK);
    const double bad[] = {-1, 0, NAN};
    for (int i = 0; i < 3; i++) {
        FAILS(moe_comm_set_timeout(bad[i]), MOE_ERR_ARG, "is not a timeout");
        ck_assert(moe_comm_timeout() == 2.5);
    }
    ck_assert_int_eq(moe_comm_set_timeout(INFINITY), MOE_OK);
    ck_assert(isinf(moe_comm_timeout()));
    double s = 0;
    ck_assert_int_eq(moe_comm_wait_limit("barrier", &s), MOE_OK);
    ck_assert(isinf(s));
    ck_assert_int_eq(moe_comm_set_timeout(300), MOE_OK);
}
END_TEST

/* a send/recv size mismatch is reported by the receiver */
static moe_status recv_mismatch(int rank, moe_group *world, void *p)
{
    fail_ctx *c = p;
    moe_tensor *t;
    RTRY(moe_tensor_ones(&t, MOE_F32, MOE_CPU, 1, (int64_t[]){rank == 0 ? 2 : 5}));
    moe_status st = rank == 0 ? moe_send(t, 1, 0, world) : moe_recv_(t, 0, 0, world);
    snprintf(c->msg[rank], sizeof c->msg[rank], "%s", moe_last_error());
    moe_tensor_release(t);
    return st;
}

START_TEST(test_recv_mismatch)
{
    fail_ctx c = {0};
    moe_status rs[2];
    FAILS(moe_threads_run(2, recv_mismatch, &c, rs), MOE_ERR_SHAPE,
          "recv!: size mismatch: rank 0 sent 2 elements (f32), rank 1 expects 5 elements (f32)");
    ck_assert_int_eq(rs[0], MOE_OK);
}
END_TEST

/* a timed-out receive */
static moe_status recv_nobody(int rank, moe_group *world, void *p)
{
    fail_ctx *c = p;
    if (rank == 1) {
        usleep(800000);
        return MOE_OK;
    }
    moe_tensor *t;
    RTRY(moe_tensor_ones(&t, MOE_F32, MOE_CPU, 1, (int64_t[]){1}));
    moe_status st = moe_recv_(t, 1, 3, world);
    snprintf(c->msg[rank], sizeof c->msg[rank], "%s", moe_last_error());
    moe_tensor_release(t);
    return st;
}

START_TEST(test_recv_timeout)
{
    moe_comm_set_timeout(0.3);
    fail_ctx c = {0};
    moe_status st = moe_threads_run(2, recv_nobody, &c, NULL);
    moe_comm_set_timeout(300);
    ck_assert_int_eq(st, MOE_ERR_BACKEND);
    ck_assert_msg(strstr(c.msg[0], "recv!: timed out after 0.3 s waiting for rank 1 (tag 3)"), "%s", c.msg[0]);
}
END_TEST

Suite *comm_suite(void)
{
    Suite *s = suite_create("comm");
    TCase *tc = tcase_create("cases");
    tcase_set_timeout(tc, 120);
    int ncases = 0;
    while (dist_cases[ncases].name) ncases++;
    tcase_add_loop_test(tc, test_case, 0, ncases);
    tcase_add_test(tc, test_all_cases_one_world);
    suite_add_tcase(s, tc);
    tc = tcase_create("groups");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_null_group);
    tcase_add_test(tc, test_scheme_names);
    tcase_add_test(tc, test_runner);
    suite_add_tcase(s, tc);
    tc = tcase_create("failures");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_failing_rank);
    tcase_add_test(tc, test_timeout);
    tcase_add_test(tc, test_returned_early);
    tcase_add_test(tc, test_mismatches);
    tcase_add_test(tc, test_timeout_setting);
    tcase_add_test(tc, test_recv_mismatch);
    tcase_add_test(tc, test_recv_timeout);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(comm_suite()); }
