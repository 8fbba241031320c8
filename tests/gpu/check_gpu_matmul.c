/* check_gpu_matmul.c — matmul, bmm and linear on the GPU (cuBLASLt through
 * kernels/cuda/blaslt.cu) against the CPU, forward and backward, f32 and
 * bf16: odd sizes (1, non-multiples of 16), 1-D operands, transposed and
 * non-contiguous inputs, broadcast batch dims (whose gradients reduce), bias
 * epilogue, an empty inner dim; plus the heuristic cache and the TF32
 * switch. Skips without a GPU (MOELAB_GPU_TEST_ON_CPU=1: see gpucheck.h). */
#include "gpucheck.h"

#include "config.h"
#include "../../kernels/cuda/blaslt.h"

static const moe_dtype dtypes[] = {MOE_F32, MOE_BF16};
#define N_DTYPES 2

/* How the operands reach the op: as given, or through a view. */
enum { PLAIN, A_T, B_T, BOTH_T, A_NARROW, A_EXPANDED };

typedef struct mm_case {
    const char *name;
    int kind; /* 0 matmul, 1 bmm, 2 linear (in[2] bias when n_in == 3) */
    int view;
} mm_case;

/* A view of T: its last two dims swapped (T holds the swapped shape). */
static moe_status swapped(moe_tensor **out, moe_tensor *t)
{
    return moe_transpose(out, t, -1, -2);
}

static moe_status run_mm(moe_tensor **out, moe_tensor **in, void *ctx)
{
    const mm_case *c = ctx;
    moe_tensor *a = in[0], *b = in[1], *va = NULL, *vb = NULL;
    moe_status st = MOE_OK;
    if (c->view == A_T || c->view == BOTH_T) MOE_TRYG(swapped(&va, a));
    if (c->view == B_T || c->view == BOTH_T) MOE_TRYG(swapped(&vb, b));
    if (c->view == A_NARROW) /* columns 1..: row stride above the width, offset 1 */
        MOE_TRYG(moe_narrow(&va, a, -1, 1, a->shape[a->ndim - 1] - 1));
    if (c->view == A_EXPANDED) /* [M 1] expanded to [M K]: column stride 0, copied first */
        MOE_TRYG(moe_expand(&va, a, 2, (int64_t[]){a->shape[0], b->shape[0]}));
    if (va) a = va;
    if (vb) b = vb;
    if (c->kind == 0)
        st = moe_matmul(out, a, b);
    else if (c->kind == 1)
        st = moe_bmm(out, a, b);
    else
        st = moe_linear(out, a, b, c->view == PLAIN && in[2] ? in[2] : NULL);
done:
    moe_tensor_release(va);
    moe_tensor_release(vb);
    return st;
}

static moe_status run_linear_bias(moe_tensor **out, moe_tensor **in, void *ctx)
{
    (void)ctx;
    return moe_linear(out, in[0], in[1], in[2]);
}

/* One case: A of shape SA, B of shape SB (as stored), gradients of both. */
static void mm_check(const mm_case *c, moe_dtype dt, int na, const int64_t *sa, int nb, const int64_t *sb,
                     uint64_t seed)
{
    moe_tensor *in[2] = {gc_uniform(dt, na, sa, seed, -1, 1), gc_uniform(dt, nb, sb, seed + 1, -1, 1)};
    char name[128];
    snprintf(name, sizeof name, "%s %s @ %s", c->name, moe_dims_str(na, sa), moe_dims_str(nb, sb));
    gc_check(name, run_mm, (void *)c, 2, in, 3, GC_TOL(dt));
    RELEASE(in[0], in[1]);
}

START_TEST(test_matmul_2d)
{
    static const int64_t sizes[][3] = {{1, 1, 1}, {1, 7, 1}, {17, 33, 5}, {64, 48, 80}, {3, 100, 129}, {31, 1, 19}};
    mm_case c = {"matmul", 0, PLAIN};
    for (int k = 0; k < N_DTYPES; k++)
        for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
            int64_t M = sizes[i][0], K = sizes[i][1], N = sizes[i][2];
            mm_check(&c, dtypes[k], 2, SHAPE(M, K), 2, SHAPE(K, N), 10 + i);
        }
}
END_TEST

START_TEST(test_matmul_views)
{
    mm_case at = {"matmul aT", 0, A_T}, bt = {"matmul bT", 0, B_T}, both = {"matmul aT bT", 0, BOTH_T},
            narrow = {"matmul a[:, 1:]", 0, A_NARROW}, expanded = {"matmul a expanded", 0, A_EXPANDED};
    for (int k = 0; k < N_DTYPES; k++) {
        moe_dtype dt = dtypes[k];
        mm_check(&at, dt, 2, SHAPE(33, 17), 2, SHAPE(33, 9), 20); /* aT [17 33] */
        mm_check(&bt, dt, 2, SHAPE(17, 33), 2, SHAPE(9, 33), 21); /* bT [33 9] */
        mm_check(&both, dt, 2, SHAPE(33, 17), 2, SHAPE(9, 33), 22);
        mm_check(&narrow, dt, 2, SHAPE(13, 24), 2, SHAPE(23, 11), 23);
        mm_check(&expanded, dt, 2, SHAPE(13, 1), 2, SHAPE(23, 11), 25);
        mm_check(&at, dt, 3, SHAPE(3, 20, 5), 3, SHAPE(3, 20, 7), 24); /* batched, transposed */
    }
}
END_TEST

START_TEST(test_matmul_vectors_and_batches)
{
    mm_case mm = {"matmul", 0, PLAIN}, bmm = {"bmm", 1, PLAIN}, bmm_t = {"bmm bT", 1, B_T};
    for (int k = 0; k < N_DTYPES; k++) {
        moe_dtype dt = dtypes[k];
        mm_check(&mm, dt, 1, SHAPE(19), 2, SHAPE(19, 6), 30);         /* row vector */
        mm_check(&mm, dt, 2, SHAPE(6, 19), 1, SHAPE(19), 31);         /* column vector */
        mm_check(&mm, dt, 1, SHAPE(19), 1, SHAPE(19), 32);            /* dot */
        mm_check(&mm, dt, 3, SHAPE(3, 17, 9), 2, SHAPE(9, 13), 33);   /* B broadcast: folds into M */
        mm_check(&mm, dt, 2, SHAPE(17, 9), 3, SHAPE(3, 9, 13), 34);   /* A broadcast: dA reduces */
        mm_check(&mm, dt, 4, SHAPE(2, 1, 5, 7), 3, SHAPE(3, 7, 4), 35); /* both broadcast */
        mm_check(&bmm, dt, 3, SHAPE(4, 17, 33), 3, SHAPE(4, 33, 19), 36);
        mm_check(&bmm_t, dt, 3, SHAPE(5, 1, 16), 3, SHAPE(5, 3, 16), 37);
    }
}
END_TEST

START_TEST(test_linear)
{
    mm_case lin = {"linear", 2, PLAIN}, lin_t = {"linear xT", 2, A_T};
    for (int k = 0; k < N_DTYPES; k++) {
        moe_dtype dt = dtypes[k];
        /* with bias (epilogue on the GPU) */
        moe_tensor *in[3] = {gc_uniform(dt, 3, SHAPE(3, 5, 31), 40, -1, 1), gc_uniform(dt, 2, SHAPE(17, 31), 41, -1, 1),
                             gc_uniform(dt, 1, SHAPE(17), 42, -1, 1)};
        gc_check("linear+bias [3 5 31] W [17 31]", run_linear_bias, NULL, 3, in, 7, GC_TOL(dt));
        RELEASE(in[0], in[1], in[2]);
        moe_tensor *one[3] = {gc_uniform(dt, 2, SHAPE(1, 1), 43, -1, 1), gc_uniform(dt, 2, SHAPE(1, 1), 44, -1, 1),
                              gc_uniform(dt, 1, SHAPE(1), 45, -1, 1)};
        gc_check("linear+bias [1 1] W [1 1]", run_linear_bias, NULL, 3, one, 7, GC_TOL(dt));
        RELEASE(one[0], one[1], one[2]);
        moe_tensor *vec[3] = {gc_uniform(dt, 1, SHAPE(24), 46, -1, 1), gc_uniform(dt, 2, SHAPE(40, 24), 47, -1, 1),
                              gc_uniform(dt, 1, SHAPE(40), 48, -1, 1)};
        gc_check("linear+bias [24] W [40 24]", run_linear_bias, NULL, 3, vec, 7, GC_TOL(dt));
        RELEASE(vec[0], vec[1], vec[2]);
        /* without bias; x transposed (a strided batch that cannot fold) */
        mm_check(&lin, dt, 2, SHAPE(65, 33), 2, SHAPE(18, 33), 49);
        mm_check(&lin_t, dt, 3, SHAPE(2, 33, 7), 2, SHAPE(5, 33), 50);
    }
}
END_TEST

START_TEST(test_empty_inner)
{
    for (int k = 0; k < N_DTYPES; k++) {
        moe_dtype dt = dtypes[k];
        mm_case c = {"matmul K=0", 0, PLAIN};
        mm_check(&c, dt, 2, SHAPE(3, 0), 2, SHAPE(0, 4), 60);
        moe_tensor *in[3] = {gc_uniform(dt, 2, SHAPE(3, 0), 61, -1, 1), gc_uniform(dt, 2, SHAPE(5, 0), 62, -1, 1),
                             gc_uniform(dt, 1, SHAPE(5), 63, -1, 1)};
        gc_check("linear+bias K=0 (bias rows)", run_linear_bias, NULL, 3, in, 4, GC_TOL(dt));
        RELEASE(in[0], in[1], in[2]);
    }
}
END_TEST

/* A repeated shape reuses its cached descriptors and algorithm; TF32 is off
 * unless asked for and then stays within its own tolerance. */
START_TEST(test_cache_and_tf32)
{
#ifdef MOELAB_HAVE_CUDA
    if (gc_dev != MOE_CUDA) return;
    moe_tensor *a = gc_uniform(MOE_F32, 2, SHAPE(256, 512), 70, -1, 1), *b = gc_uniform(MOE_F32, 2, SHAPE(512, 384), 71, -1, 1);
    moe_tensor *ag = gc_to_dev(a), *bg = gc_to_dev(b), *c, *g1, *g2, *g3;
    OK(moe_matmul(&c, a, b));
    ck_assert(!moe_blaslt_tf32_allowed());
    moe_blaslt_stats s0, s1;
    OK(moe_matmul(&g1, ag, bg));
    moe_blaslt_stats_get(&s0);
    OK(moe_matmul(&g2, ag, bg));
    moe_blaslt_stats_get(&s1);
    ck_assert_int_eq(s1.hits - s0.hits, 1);
    ck_assert_int_eq(s1.misses, s0.misses);
    gc_compare("matmul f32 (no TF32)", g2, c, 1e-5);
    moe_blaslt_allow_tf32(true);
    OK(moe_matmul(&g3, ag, bg));
    moe_blaslt_allow_tf32(false);
    gc_compare("matmul f32 with TF32 allowed", g3, c, 2e-2);
    RELEASE(a, b, ag, bg, c, g1, g2, g3);
#endif
}
END_TEST

int main(void)
{
    int skip = gc_start("check_gpu_matmul");
    if (skip) return skip;
    Suite *s = suite_create("gpu-matmul");
    TCase *c = tcase_create("matmul");
    tcase_set_timeout(c, 300);
    tcase_add_test(c, test_matmul_2d);
    tcase_add_test(c, test_matmul_views);
    tcase_add_test(c, test_matmul_vectors_and_batches);
    tcase_add_test(c, test_linear);
    tcase_add_test(c, test_empty_inner);
    tcase_add_test(c, test_cache_and_tf32);
    suite_add_tcase(s, c);
    return tu_run(s);
}
