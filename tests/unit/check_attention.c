/* check_attention.c — RoPE and attention (core/nn): the fused kernel against
 * the plain composition of ops (values and gradients, f32 and f64, causal
 * and not, grouped-query heads, sequences that are not a multiple of the
 * kernel's blocks or longer than its chunks), f64 finite differences of
 * both, hand-computed RoPE values, determinism over thread counts, and the
 * argument checks. */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "nn/attention.h"
#include "nn/rope.h"
#include "testutil.h"

/* Dimension letters: B batch, S sequence, H query heads, KV kv heads, hd head dim. */

static moe_tensor *qkv(moe_dtype dt, int64_t B, int64_t S, int64_t N, int64_t hd, uint64_t seed)
{
    moe_tensor *t = tu_randn(dt, 4, SHAPE(B, S, N, hd), seed);
    OK(moe_tensor_requires_grad_(t, true));
    return t;
}

/* <attention(q, k, v), W> for a fixed random W, with gradients of q, k, v. */
static void run(moe_attention_impl impl, moe_tensor *q, moe_tensor *k, moe_tensor *v, bool causal,
                moe_tensor **out, moe_tensor **grads)
{
    moe_tensor *o;
    moe_tensor_zero_grad(q);
    moe_tensor_zero_grad(k);
    moe_tensor_zero_grad(v);
    OK(moe_attention(&o, q, k, v, causal, impl));
    moe_tensor *w = tu_randn(o->dtype, o->ndim, o->shape, 99);
    OK(moe_backward(o, w, false));
    moe_tensor *in[3] = {q, k, v};
    for (int i = 0; i < 3; i++) OK(moe_clone(&grads[i], in[i]->grad));
    OK(moe_detach(out, o));
    RELEASE(o, w);
}

static void compare(moe_dtype dt, int64_t B, int64_t S, int64_t H, int64_t KV, int64_t hd, bool causal,
                    double tol)
{
    moe_tensor *q = qkv(dt, B, S, H, hd, 1), *k = qkv(dt, B, S, KV, hd, 2), *v = qkv(dt, B, S, KV, hd, 3);
    moe_tensor *of, *op, *gf[3], *gp[3];
    run(MOE_ATTENTION_FUSED, q, k, v, causal, &of, gf);
    run(MOE_ATTENTION_PLAIN, q, k, v, causal, &op, gp);
    tu_assert_close(of, op, tol, tol, "fused vs plain output");
    const char *names[3] = {"dq", "dk", "dv"};
    for (int i = 0; i < 3; i++) {
        tu_assert_close(gf[i], gp[i], tol, tol, names[i]);
        RELEASE(gf[i], gp[i]);
    }
    RELEASE(q, k, v, of, op);
}

START_TEST(fused_matches_plain)
{
    compare(MOE_F64, 2, 5, 2, 2, 4, true, 1e-12);
    compare(MOE_F64, 1, 140, 4, 2, 8, true, 1e-12);  /* three key blocks, a partial one, GQA */
    compare(MOE_F64, 1, 70, 2, 1, 6, false, 1e-12);  /* one kv head, not causal */
    compare(MOE_F32, 2, 70, 2, 2, 16, true, 2e-5);
    compare(MOE_F32, 1, 45, 4, 2, 12, true, 2e-5); /* Kᵀ's transpose with partial 16 x 16 blocks */
    /* head dims that are a multiple of 16 (on AVX2 CPUs, the micro-tile
     * path): a sequence of whole and partial 6-row tiles, 16-key panels and
     * 48-key blocks, GQA, three heads' width and the model's shape */
    compare(MOE_F32, 2, 53, 4, 2, 32, true, 2e-5);
    compare(MOE_F32, 1, 61, 2, 1, 48, false, 2e-5);
    compare(MOE_F32, 2, 256, 4, 4, 64, true, 2e-5);
    /* longer than the kernel's key chunks and query chunks (256): the forward's
     * online softmax over several chunks, the backward's dK, dV summed over them */
    compare(MOE_F64, 1, 600, 2, 1, 4, true, 1e-12);
    compare(MOE_F64, 1, 300, 2, 2, 4, false, 1e-12);
    compare(MOE_F32, 1, 600, 2, 1, 16, true, 2e-5);
    compare(MOE_F32, 1, 300, 2, 2, 32, false, 2e-5);
}
END_TEST

/* The first query row attends only to itself: out[b 0 h] = v[b 0 g]. */
START_TEST(first_row_is_its_value)
{
    moe_tensor *q = qkv(MOE_F64, 1, 3, 2, 2, 4), *k = qkv(MOE_F64, 1, 3, 1, 2, 5), *v = qkv(MOE_F64, 1, 3, 1, 2, 6);
    moe_tensor *o;
    OK(moe_attention(&o, q, k, v, true, MOE_ATTENTION_FUSED));
    for (int h = 0; h < 2; h++)
        for (int d = 0; d < 2; d++) {
            double got, want;
            OK(moe_tensor_get(o, (int64_t[]){0, 0, h, d}, &got));
            OK(moe_tensor_get(v, (int64_t[]){0, 0, 0, d}, &want));
            ck_assert_msg(fabs(got - want) < 1e-15, "head %d dim %d: %g vs %g", h, d, got, want);
        }
    RELEASE(q, k, v, o);
}
END_TEST

/* Two keys with scores 0 and ln 3 (q·k/√hd): weights 1/4 and 3/4. */
START_TEST(hand_computed)
{
    double l3 = log(3.0) * sqrt(2.0);
    moe_tensor *q = T(MOE_F64, 4, SHAPE(1, 2, 1, 2), 0, 0, 1, 0);
    moe_tensor *k = T(MOE_F64, 4, SHAPE(1, 2, 1, 2), 0, 5, l3, 0);
    moe_tensor *v = T(MOE_F64, 4, SHAPE(1, 2, 1, 2), 4, 8, 0, 4);
    moe_tensor *o;
    OK(moe_attention(&o, q, k, v, true, MOE_ATTENTION_FUSED));
    ASSERT_VALUES(o, 1e-14, 4, 8, 1, 5);
    RELEASE(q, k, v, o);
}
END_TEST

typedef struct {
    moe_attention_impl impl;
    bool causal;
} att_ctx;

static moe_status att_fn(moe_tensor **out, moe_tensor **in, void *ctx)
{
    att_ctx *c = ctx;
    return moe_attention(out, in[0], in[1], in[2], c->causal, c->impl);
}

START_TEST(finite_differences)
{
    for (int impl = 0; impl < 2; impl++) {
        moe_tensor *in[3] = {qkv(MOE_F64, 1, 6, 4, 4, 7), qkv(MOE_F64, 1, 6, 2, 4, 8), qkv(MOE_F64, 1, 6, 2, 4, 9)};
        att_ctx c = {(moe_attention_impl)impl, true};
        GRADCHECK(att_fn, 3, in, &c);
        RELEASE(in[0], in[1], in[2]);
    }
}
END_TEST

/* Bit-identical results on 1 and 2 threads, for a head dim of 8 (the
 * general path) and of 16 (the micro-tile path on AVX2 CPUs). */
START_TEST(thread_count_does_not_matter)
{
    for (int64_t hd = 8; hd <= 16; hd += 8) {
        moe_tensor *q = qkv(MOE_F32, 2, 70, 4, hd, 11), *k = qkv(MOE_F32, 2, 70, 2, hd, 12),
                   *v = qkv(MOE_F32, 2, 70, 2, hd, 13);
        moe_tensor *o1, *o2, *g1[3], *g2[3];
        int prev = omp_get_max_threads();
        omp_set_num_threads(1);
        run(MOE_ATTENTION_FUSED, q, k, v, true, &o1, g1);
        omp_set_num_threads(2);
        run(MOE_ATTENTION_FUSED, q, k, v, true, &o2, g2);
        omp_set_num_threads(prev);
        ck_assert(memcmp(moe_tensor_data(o1), moe_tensor_data(o2), moe_tensor_nbytes(o1)) == 0);
        for (int i = 0; i < 3; i++) {
            ck_assert_msg(memcmp(moe_tensor_data(g1[i]), moe_tensor_data(g2[i]), moe_tensor_nbytes(g1[i])) == 0,
                          "hd %d: gradient %d differs between 1 and 2 threads", (int)hd, i);
            RELEASE(g1[i], g2[i]);
        }
        RELEASE(q, k, v, o1, o2);
    }
}
END_TEST

START_TEST(bad_arguments)
{
    moe_tensor *q = qkv(MOE_F64, 1, 4, 3, 4, 1), *k = qkv(MOE_F64, 1, 4, 2, 4, 2), *o = NULL;
    FAILS(moe_attention(&o, q, k, k, true, MOE_ATTENTION_FUSED), MOE_ERR_SHAPE, "2 kv heads do not divide 3");
    moe_tensor *k5 = qkv(MOE_F64, 1, 5, 3, 4, 3);
    FAILS(moe_attention(&o, q, k5, k5, true, MOE_ATTENTION_PLAIN), MOE_ERR_SHAPE, "differ");
    moe_tensor *c, *s;
    FAILS(moe_rope_tables(&c, &s, 8, 5, 1e4), MOE_ERR_ARG, "got 5");
    OK(moe_rope_tables(&c, &s, 3, 4, 1e4));
    FAILS(moe_rope(&o, q, c, s), MOE_ERR_SHAPE, ">=4");
    ck_assert_ptr_null(o);
    RELEASE(q, k, k5, c, s);
}
END_TEST

/* hd 4, θ 100: pair i turns by pos·100^(−i/2): i = 0 by pos, i = 1 by pos/10. */
START_TEST(rope_values)
{
    moe_tensor *c, *s, *x, *y;
    OK(moe_rope_tables(&c, &s, 4, 4, 100.0));
    x = T(MOE_F64, 4, SHAPE(1, 3, 1, 4), 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4);
    OK(moe_rope(&y, x, c, s));
    double e[12];
    for (int p = 0; p < 3; p++) {
        double a0 = p, a1 = p / 10.0;
        e[4 * p + 0] = 1 * cos(a0) - 3 * sin(a0);
        e[4 * p + 1] = 2 * cos(a1) - 4 * sin(a1);
        e[4 * p + 2] = 3 * cos(a0) + 1 * sin(a0);
        e[4 * p + 3] = 4 * cos(a1) + 2 * sin(a1);
    }
    tu_assert_values(y, 12, e, 1e-15, 0, "rope");
    RELEASE(c, s, x, y);
}
END_TEST

/* Heads wider than the vector lanes (P = 20 pairs) over more positions than
 * one block of the loop, forward and backward (the inverse turn), against
 * the rotation computed here in double from the angles. */
START_TEST(rope_wide_heads)
{
    const int64_t B = 2, S = 37, N = 3, hd = 40, P = hd / 2, n = B * S * N * hd;
    const double theta = 500.0;
    moe_tensor *c, *s;
    OK(moe_rope_tables(&c, &s, S + 3, hd, theta));
    for (int k = 0; k < 2; k++) {
        moe_dtype dt = k ? MOE_F32 : MOE_F64;
        double tol = k ? 2e-6 : 1e-13;
        moe_tensor *x = qkv(dt, B, S, N, hd, 31), *g = qkv(dt, B, S, N, hd, 32), *y;
        OK(moe_rope(&y, x, c, s));
        OK(moe_backward(y, g, false));
        double *xv = malloc(sizeof(double) * (size_t)n), *gv = malloc(sizeof(double) * (size_t)n);
        double *ye = malloc(sizeof(double) * (size_t)n), *dxe = malloc(sizeof(double) * (size_t)n);
        OK(moe_tensor_to_doubles(x, xv));
        OK(moe_tensor_to_doubles(g, gv));
        for (int64_t b = 0; b < B; b++)
            for (int64_t p = 0; p < S; p++)
                for (int64_t h = 0; h < N; h++)
                    for (int64_t i = 0; i < P; i++) {
                        int64_t o = ((b * S + p) * N + h) * hd;
                        double a = (double)p * pow(theta, -2.0 * (double)i / (double)hd);
                        double ca = cos(a), sa = sin(a);
                        ye[o + i] = xv[o + i] * ca - xv[o + i + P] * sa;
                        ye[o + i + P] = xv[o + i + P] * ca + xv[o + i] * sa;
                        dxe[o + i] = gv[o + i] * ca + gv[o + i + P] * sa;
                        dxe[o + i + P] = gv[o + i + P] * ca - gv[o + i] * sa;
                    }
        tu_assert_values(y, (int)n, ye, tol, 0, "rope");
        tu_assert_values(x->grad, (int)n, dxe, tol, 0, "rope backward");
        free(xv), free(gv), free(ye), free(dxe);
        RELEASE(x, g, y);
    }
    RELEASE(c, s);
}
END_TEST

/* Positions in blocks on the OpenMP team: the same bits, forward and
 * backward, on 1 and 3 threads for 111 positions (7 blocks, the last one
 * short) and for 13 (one block), both big enough to run in parallel. */
START_TEST(rope_thread_count_does_not_matter)
{
    const int64_t Bs[] = {3, 1}, Ss[] = {37, 13}, Ns[] = {4, 8}, hds[] = {80, 320};
    int prev = omp_get_max_threads();
    for (int c = 0; c < 2; c++) {
        moe_tensor *cs, *sn, *y[2], *dx[2];
        OK(moe_rope_tables(&cs, &sn, Ss[c], hds[c], 1e4));
        for (int run = 0; run < 2; run++) {
            omp_set_num_threads(run ? 3 : 1);
            moe_tensor *x = qkv(MOE_F32, Bs[c], Ss[c], Ns[c], hds[c], 41);
            moe_tensor *g = qkv(MOE_F32, Bs[c], Ss[c], Ns[c], hds[c], 42);
            OK(moe_rope(&y[run], x, cs, sn));
            OK(moe_backward(y[run], g, false));
            dx[run] = moe_tensor_retain(x->grad);
            RELEASE(x, g);
        }
        omp_set_num_threads(prev);
        ck_assert(memcmp(moe_tensor_data(y[0]), moe_tensor_data(y[1]), moe_tensor_nbytes(y[0])) == 0);
        ck_assert(memcmp(moe_tensor_data(dx[0]), moe_tensor_data(dx[1]), moe_tensor_nbytes(dx[0])) == 0);
        RELEASE(cs, sn, y[0], y[1], dx[0], dx[1]);
    }
}
END_TEST

static moe_tensor *rope_c, *rope_s;
static moe_status rope_fn(moe_tensor **out, moe_tensor **in, void *ctx)
{
    (void)ctx;
    return moe_rope(out, in[0], rope_c, rope_s);
}

START_TEST(rope_gradient)
{
    OK(moe_rope_tables(&rope_c, &rope_s, 6, 6, 10000.0));
    moe_tensor *in[1] = {qkv(MOE_F64, 2, 5, 2, 6, 21)};
    GRADCHECK(rope_fn, 1, in, NULL);
    RELEASE(in[0], rope_c, rope_s);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("attention");
    TCase *tc = tcase_create("attention");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, fused_matches_plain);
    tcase_add_test(tc, first_row_is_its_value);
    tcase_add_test(tc, hand_computed);
    tcase_add_test(tc, finite_differences);
    tcase_add_test(tc, thread_count_does_not_matter);
    tcase_add_test(tc, bad_arguments);
    tcase_add_test(tc, rope_values);
    tcase_add_test(tc, rope_gradient);
    tcase_add_test(tc, rope_wide_heads);
    tcase_add_test(tc, rope_thread_count_does_not_matter);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(suite()); }
