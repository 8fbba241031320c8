/* check_balance.c — the distributed load-balancing invariants
 * (balance_cases.c) on the threads backend: each case in a fresh world of
 * 4 ranks (mesh dp=2 cp=2) and of 2 ranks (dp=2), leaking no tensor. */
#include "../unit/testutil.h"
#include "balance_cases.h"

static int64_t live_tensors(void)
{
    moe_memory_stats s;
    moe_memory_stats_get(MOE_CPU, &s);
    return s.live_tensors;
}

static const int worlds[] = {4, 2};

START_TEST(test_case)
{
    const dist_case *c = &balance_cases[_i / 2];
    int n = worlds[_i % 2];
    int64_t before = live_tensors();
    moe_status st = moe_threads_run(n, c->fn, NULL, NULL);
    ck_assert_msg(st == MOE_OK, "case %s on %d ranks: %s", c->name, n, moe_last_error());
    ck_assert_msg(live_tensors() == before, "case %s on %d ranks leaked %lld tensors", c->name, n,
                  (long long)(live_tensors() - before));
}
END_TEST

static Suite *balance_suite(void)
{
    Suite *s = suite_create("balance");
    TCase *tc = tcase_create("cases");
    tcase_set_timeout(tc, 240);
    int ncases = 0;
    while (balance_cases[ncases].name) ncases++;
    tcase_add_loop_test(tc, test_case, 0, 2 * ncases);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    moe_comm_set_timeout(60); /* a hang fails instead of blocking the suite */
    return tu_run(balance_suite());
}
