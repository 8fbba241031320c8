/* check_mesh.c — the device mesh on the threads backend: coordinates, the
 * group of every dimension and combination, and the errors. */
#include "../unit/testutil.h"
#include "cases.h"

/* Sum of the world ranks of G's members, through an all-reduce over G. */
static moe_status member_sum(moe_group *g, int64_t *out)
{
    moe_tensor *t;
    MOE_TRY(moe_tensor_full(&t, MOE_I64, MOE_CPU, 1, (int64_t[]){1}, moe_group_world_rank(g, moe_group_rank(g))));
    moe_status st = moe_all_reduce_(t, MOE_REDUCE_SUM, g);
    *out = *(int64_t *)moe_tensor_data(t);
    moe_tensor_release(t);
    return st;
}

/* Check group DIMS: its size, this rank's position, its members' world ranks
 * (EXPECT, in group order) and a real all-reduce over it. */
static moe_status expect_group(const moe_mesh *m, const char *dims, int r, int size, const int *expect)
{
    moe_group *g;
    RTRY(moe_mesh_group(&g, m, dims));
    RCHECK(moe_group_size(g) == size, "rank %d: group '%s' has %d ranks, expected %d", r, dims, moe_group_size(g), size);
    int64_t sum = 0;
    int pos = -1;
    for (int i = 0; i < size; i++) {
        RCHECK(moe_group_world_rank(g, i) == expect[i], "rank %d: member %d of '%s' is world rank %d, expected %d", r, i,
               dims, moe_group_world_rank(g, i), expect[i]);
        sum += expect[i];
        if (expect[i] == r) pos = i;
    }
    RCHECK(moe_group_rank(g) == pos, "rank %d: rank in '%s' is %d, expected %d", r, dims, moe_group_rank(g), pos);
    int64_t got;
    RTRY(member_sum(g, &got));
    RCHECK(got == sum, "rank %d: all_reduce over '%s' gave %lld, expected %lld", r, dims, (long long)got, (long long)sum);
    moe_group_release(g);
    return MOE_OK;
}

/* dp=2 cp=2 tp=2 on 8 ranks: tp = r%2, cp = r/2%2, dp = r/4 */
static moe_status mesh_dp_cp_tp(int r, moe_group *world, void *ctx)
{
    (void)ctx;
    moe_mesh *m;
    RTRY(moe_mesh_parse(&m, world, "dp=2, cp=2 tp=2"));
    RCHECK(strcmp(moe_mesh_str(m), "dp=2 cp=2 tp=2 (8 ranks)") == 0, "mesh_str: %s", moe_mesh_str(m));
    int tp = r % 2, cp = r / 2 % 2, dp = r / 4;
    RCHECK(moe_mesh_coord(m, "tp") == tp && moe_mesh_coord(m, "cp") == cp && moe_mesh_coord(m, "dp") == dp,
           "rank %d: coords tp %d cp %d dp %d", r, moe_mesh_coord(m, "tp"), moe_mesh_coord(m, "cp"), moe_mesh_coord(m, "dp"));
    RCHECK(moe_mesh_coord(m, "ep") == 0 && moe_mesh_size(m, "ep") == 1 && moe_mesh_size(m, "dp") == 2,
           "absent ep: coord %d size %d", moe_mesh_coord(m, "ep"), moe_mesh_size(m, "ep"));
    RCHECK(moe_mesh_coord(m, "xp") == -1 && moe_mesh_size(m, "xp") == -1, "unknown dims give -1");
    int c[MOE_MESH_MAX_DIMS];
    RTRY(moe_mesh_coords(m, 6, c)); /* 6 = tp 0, cp 1, dp 1 */
    RCHECK(c[0] == 0 && c[1] == 1 && c[2] == 0 && c[3] == 1 && c[4] == 0, "coords of 6: %d %d %d %d %d", c[0], c[1],
           c[2], c[3], c[4]);
    RCHECK(moe_mesh_rank_at(m, c) == 6, "rank_at");
    c[0] = 2;
    RCHECK(moe_mesh_rank_at(m, c) == -1, "rank_at out of range");
    RFAILS(moe_mesh_coords(m, 8, c), MOE_ERR_INDEX, "rank 8");

    int base_tp = r - tp, base_cp = r - 2 * cp, base_dp = r - 4 * dp;
    RTRY(expect_group(m, "tp", r, 2, (int[]){base_tp, base_tp + 1}));
    RTRY(expect_group(m, "cp", r, 2, (int[]){base_cp, base_cp + 2}));
    RTRY(expect_group(m, "dp", r, 2, (int[]){base_dp, base_dp + 4}));
    RTRY(expect_group(m, "dp cp", r, 4, (int[]){tp, tp + 2, tp + 4, tp + 6}));
    RTRY(expect_group(m, "cp,dp", r, 4, (int[]){tp, tp + 2, tp + 4, tp + 6}));
    RTRY(expect_group(m, "tp cp", r, 4, (int[]){4 * dp, 4 * dp + 1, 4 * dp + 2, 4 * dp + 3}));
    RTRY(expect_group(m, "dp tp", r, 4, (int[]){2 * cp, 2 * cp + 1, 2 * cp + 4, 2 * cp + 5}));
    RTRY(expect_group(m, "dp-cp-tp", r, 8, (int[]){0, 1, 2, 3, 4, 5, 6, 7}));
    RTRY(expect_group(m, "", r, 1, (int[]){r}));
    RTRY(expect_group(m, "ep", r, 1, (int[]){r}));      /* absent: size 1 */
    RTRY(expect_group(m, "tp ep pp", r, 2, (int[]){base_tp, base_tp + 1}));
    moe_group *g;
    RTRY(moe_mesh_group(&g, m, "dp cp"));
    RCHECK(strcmp(moe_group_name(g), "dp cp") == 0, "group name '%s'", moe_group_name(g));
    moe_group_release(g);
    RFAILS(moe_mesh_group(&g, m, "dp zz"), MOE_ERR_ARG, "unknown dimension 'zz'");
    RCHECK(g == NULL, "no group on failure");
    RCHECK(moe_mesh_world(m) == world, "mesh world");
    moe_mesh_free(m); /* groups taken from the mesh outlive it */
    RFAILS(moe_mesh_group(&g, NULL, "dp"), MOE_ERR_ARG, "mesh is NULL");
    return MOE_OK;
}

/* a group kept after its mesh is freed still works */
static moe_status mesh_group_outlives(int r, moe_group *world, void *ctx)
{
    (void)ctx;
    moe_mesh *m;
    moe_group *g;
    RTRY(moe_mesh_new(&m, world, 2, (const char *[]){"tp", "dp"}, (int[]){2, 2}));
    RTRY(moe_mesh_group(&g, m, "dp"));
    moe_mesh_free(m);
    int64_t sum;
    RTRY(member_sum(g, &sum));
    RCHECK(sum == (r % 2) + (r % 2) + 2, "dp sum %lld", (long long)sum);
    moe_group_release(g);
    return MOE_OK;
}

/* pp=2 ep=2 on 4 ranks: ep varies faster than pp */
static moe_status mesh_pp_ep(int r, moe_group *world, void *ctx)
{
    (void)ctx;
    moe_mesh *m;
    RTRY(moe_mesh_parse(&m, world, "pp:2 ep:2"));
    RCHECK(moe_mesh_coord(m, "ep") == r % 2 && moe_mesh_coord(m, "pp") == r / 2, "rank %d: ep %d pp %d", r,
           moe_mesh_coord(m, "ep"), moe_mesh_coord(m, "pp"));
    RTRY(expect_group(m, "ep", r, 2, (int[]){r - r % 2, r - r % 2 + 1}));
    RTRY(expect_group(m, "pp", r, 2, (int[]){r % 2, r % 2 + 2}));
    moe_mesh_free(m);
    return MOE_OK;
}

static moe_status mesh_errors(int r, moe_group *world, void *ctx)
{
    (void)ctx;
    (void)r;
    moe_mesh *m = (moe_mesh *)1;
    RFAILS(moe_mesh_parse(&m, world, "dp=3 tp=2"), MOE_ERR_SHAPE, "dims dp=3 tp=2 make 6 ranks but the world has 4");
    RCHECK(m == NULL, "no mesh on failure");
    RFAILS(moe_mesh_parse(&m, world, "xp=4"), MOE_ERR_ARG, "unknown dimension 'xp'");
    RFAILS(moe_mesh_parse(&m, world, "dp=2 dp=2"), MOE_ERR_ARG, "dp given twice");
    RFAILS(moe_mesh_parse(&m, world, "dp=0 tp=4"), MOE_ERR_ARG, "size 0");
    RFAILS(moe_mesh_parse(&m, world, "dp 4"), MOE_ERR_ARG, "cannot parse");
    RFAILS(moe_mesh_parse(&m, world, ""), MOE_ERR_SHAPE, "(none) make 1 ranks but the world has 4");
    /* the world is still usable after these (consistent) failures */
    int64_t sum;
    RTRY(member_sum(world, &sum));
    RCHECK(sum == 6, "world sum %lld", (long long)sum);
    return MOE_OK;
}

START_TEST(test_mesh_8) { OK(moe_threads_run(8, mesh_dp_cp_tp, NULL, NULL)); }
END_TEST

START_TEST(test_mesh_group_outlives) { OK(moe_threads_run(4, mesh_group_outlives, NULL, NULL)); }
END_TEST

START_TEST(test_mesh_pp_ep) { OK(moe_threads_run(4, mesh_pp_ep, NULL, NULL)); }
END_TEST

START_TEST(test_mesh_errors) { OK(moe_threads_run(4, mesh_errors, NULL, NULL)); }
END_TEST

START_TEST(test_mesh_one_rank)
{
    moe_mesh *m;
    OK(moe_mesh_parse(&m, NULL, ""));
    moe_group *g = (moe_group *)1;
    OK(moe_mesh_group(&g, m, "dp cp"));
    ck_assert_ptr_null(g); /* the trivial group */
    ck_assert_int_eq(moe_mesh_coord(m, "dp"), 0);
    ck_assert_str_eq(moe_mesh_str(m), "(no dims) (1 ranks)");
    moe_mesh_free(m);
    OK(moe_mesh_parse(&m, NULL, "dp=1 tp=1"));
    ck_assert_int_eq(moe_mesh_size(m, "tp"), 1);
    moe_mesh_free(m);
    FAILS(moe_mesh_parse(&m, NULL, "dp=2"), MOE_ERR_SHAPE, "world has 1");
}
END_TEST

/* The spec alone, without a world: names in their order, sizes as given. */
START_TEST(test_mesh_spec_parse)
{
    const char *names[MOE_MESH_MAX_DIMS];
    int sizes[MOE_MESH_MAX_DIMS], n = -1;
    OK(moe_mesh_spec_parse(" pp=2, dp:4 ep=3", &n, names, sizes));
    ck_assert_int_eq(n, 3);
    ck_assert_str_eq(names[0], "pp");
    ck_assert_str_eq(names[1], "dp");
    ck_assert_str_eq(names[2], "ep");
    ck_assert_int_eq(sizes[0], 2);
    ck_assert_int_eq(sizes[1], 4);
    ck_assert_int_eq(sizes[2], 3);
    OK(moe_mesh_spec_parse("", &n, names, sizes));
    ck_assert_int_eq(n, 0);
    FAILS(moe_mesh_spec_parse("pp=2,,dp", &n, names, sizes), MOE_ERR_ARG, "cannot parse 'pp=2,,dp'");
    FAILS(moe_mesh_spec_parse("dp=2 xp=2", &n, names, sizes), MOE_ERR_ARG, "unknown dimension 'xp' in 'dp=2 xp=2'");
    FAILS(moe_mesh_spec_parse("dp=2 dp:2", &n, names, sizes), MOE_ERR_ARG, "dp given twice in 'dp=2 dp:2'");
    FAILS(moe_mesh_spec_parse("tp=0", &n, names, sizes), MOE_ERR_ARG, "size 0 in 'tp=0'");
    FAILS(moe_mesh_spec_parse("tp=1 cp=1 ep=1 dp=1 pp=1 tp=1", &n, names, sizes), MOE_ERR_ARG, "cannot parse");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("mesh");
    TCase *tc = tcase_create("mesh");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_mesh_8);
    tcase_add_test(tc, test_mesh_group_outlives);
    tcase_add_test(tc, test_mesh_pp_ep);
    tcase_add_test(tc, test_mesh_errors);
    tcase_add_test(tc, test_mesh_one_rank);
    tcase_add_test(tc, test_mesh_spec_parse);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
