/* check_autograd.c — the tape: chains, shared subgraphs, accumulation,
 * retained and freed graphs, hooks, custom functions, no-grad, and the
 * backward of every view op (finite differences in f64). */
#include "testutil.h"

static moe_tensor *leaf(int ndim, const int64_t *shape, uint64_t seed)
{
    moe_tensor *t = tu_randn(MOE_F64, ndim, shape, seed);
    OK(moe_tensor_requires_grad_(t, true));
    return t;
}

START_TEST(test_chain_rule)
{
    /* y = sum(x * x + x) → dy/dx = 2x + 1 */
    moe_tensor *x = T(MOE_F64, 1, SHAPE(3), 1, -2, 0.5), *sq, *s, *y;
    OK(moe_tensor_requires_grad_(x, true));
    OK(moe_mul(&sq, x, x));
    OK(moe_add(&s, sq, x));
    OK(moe_sum(&y, s, 0, NULL, false));
    ck_assert(y->requires_grad && y->grad_fn != NULL);
    OK(moe_backward(y, NULL, false));
    ASSERT_VALUES(x->grad, 1e-15, 3, -3, 2);
    RELEASE(x, sq, s, y);
}
END_TEST

START_TEST(test_shared_subgraph_and_accumulation)
{
    /* z = a*b used twice: y = sum(z + z*z); dy/da = b(1 + 2ab) */
    moe_tensor *a = T(MOE_F64, 1, SHAPE(2), 1, 2), *b = T(MOE_F64, 1, SHAPE(2), 3, -1);
    moe_tensor *z, *zz, *s, *y;
    OK(moe_tensor_requires_grad_(a, true));
    OK(moe_tensor_requires_grad_(b, true));
    OK(moe_mul(&z, a, b));
    OK(moe_mul(&zz, z, z));
    OK(moe_add(&s, z, zz));
    OK(moe_sum(&y, s, 0, NULL, false));
    OK(moe_backward(y, NULL, true));
    ASSERT_VALUES(a->grad, 1e-12, 3 * (1 + 2 * 3), -1 * (1 - 2 * 2));
    ASSERT_VALUES(b->grad, 1e-12, 1 * (1 + 2 * 3), 2 * (1 - 2 * 2));
    /* retained graph: a second backward accumulates (doubles) */
    OK(moe_backward(y, NULL, false));
    ASSERT_VALUES(a->grad, 1e-12, 42, 6);
    /* now the graph is freed */
    FAILS(moe_backward(y, NULL, false), MOE_ERR_STATE, "freed by an earlier backward");
    moe_tensor_zero_grad(a);
    ck_assert_ptr_null(a->grad);
    RELEASE(a, b, z, zz, s, y);
}
END_TEST

/* Gradient sums are written in place only into tensors nobody else holds. */
START_TEST(test_accumulation_ownership)
{
    moe_tensor *w = T(MOE_F64, 1, SHAPE(3), 1, 2, 3), *c = T(MOE_F64, 1, SHAPE(3), 0.5, -1, 2);
    moe_tensor *p, *y;
    OK(moe_tensor_requires_grad_(w, true));
    OK(moe_mul(&p, w, c));
    OK(moe_sum(&y, p, 0, NULL, false));
    /* the leaf keeps the engine's gradient and sums into it in place */
    OK(moe_backward(y, NULL, true));
    ASSERT_VALUES(w->grad, 0, 0.5, -1, 2);
    const void *first = moe_tensor_data(w->grad);
    OK(moe_backward(y, NULL, true));
    ASSERT_VALUES(w->grad, 0, 1, -2, 4);
    ck_assert_ptr_eq(moe_tensor_data(w->grad), first);
    /* a gradient held elsewhere keeps its values: the sum is a new tensor */
    moe_tensor *held = moe_tensor_grad(w);
    OK(moe_backward(y, NULL, false));
    ASSERT_VALUES(held, 0, 1, -2, 4);
    ASSERT_VALUES(w->grad, 0, 1.5, -3, 6);
    ck_assert_ptr_ne(w->grad, held);
    RELEASE(held, p, y);
    /* add's backward hands one tensor to both of its inputs: with ab = a + b,
     * a = 2x and b = 3x, a's sum of that tensor and of d must leave b's c
     * alone, whichever arrives first and whenever b's node runs. The terms
     * ab c, a d and b e are added up in every order:
     * dx = 2 (c + d) + 3 (c + e) */
    moe_tensor *d = T(MOE_F64, 1, SHAPE(3), 4, 0.25, -1), *e = T(MOE_F64, 1, SHAPE(3), -2, 1, 0.5);
    static const int orders[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
    for (int o = 0; o < 6; o++) {
        moe_tensor *x = T(MOE_F64, 1, SHAPE(3), 1, 1, 1), *a, *b, *ab, *t[3], *s01, *s, *l;
        OK(moe_tensor_requires_grad_(x, true));
        OK(moe_mul_scalar(&a, x, 2));
        OK(moe_mul_scalar(&b, x, 3));
        OK(moe_add(&ab, a, b));
        OK(moe_mul(&t[0], ab, c));
        OK(moe_mul(&t[1], a, d));
        OK(moe_mul(&t[2], b, e));
        OK(moe_add(&s01, t[orders[o][0]], t[orders[o][1]]));
        OK(moe_add(&s, s01, t[orders[o][2]]));
        OK(moe_sum(&l, s, 0, NULL, false));
        OK(moe_backward(l, NULL, false));
        ASSERT_VALUES(x->grad, 1e-15, 2 * (0.5 + 4) + 3 * (0.5 - 2), 2 * (-1 + 0.25) + 3 * (-1 + 1),
                      2 * (2 - 1) + 3 * (2 + 0.5));
        RELEASE(x, a, b, ab, t[0], t[1], t[2], s01, s, l);
    }
    RELEASE(w, c, d, e);
}
END_TEST

START_TEST(test_backward_errors)
{
    moe_tensor *x = T(MOE_F64, 1, SHAPE(2), 1, 2), *y, *g;
    FAILS(moe_backward(x, NULL, false), MOE_ERR_STATE, "does not require grad");
    OK(moe_tensor_requires_grad_(x, true));
    OK(moe_mul_scalar(&y, x, 3));
    FAILS(moe_backward(y, NULL, false), MOE_ERR_SHAPE, "one-element output");
    g = T(MOE_F64, 1, SHAPE(3), 1, 1, 1);
    FAILS(moe_backward(y, g, false), MOE_ERR_SHAPE, "gradient of shape [3] for an output of shape [2]");
    moe_tensor_release(g);
    g = T(MOE_F64, 1, SHAPE(2), 1, 10);
    OK(moe_backward(y, g, false));
    ASSERT_VALUES(x->grad, 0, 3, 30);
    FAILS(moe_tensor_requires_grad_(y, false), MOE_ERR_STATE, "non-leaf");
    RELEASE(x, y, g);
}
END_TEST

START_TEST(test_no_grad_and_detach)
{
    moe_tensor *x = leaf(1, SHAPE(3), 1), *y, *d, *z;
    ck_assert(moe_grad_enabled());
    bool prev = moe_grad_set_enabled(false);
    OK(moe_mul(&y, x, x));
    moe_grad_set_enabled(prev);
    ck_assert(!y->requires_grad && y->grad_fn == NULL);
    OK(moe_detach(&d, x));
    ck_assert(!d->requires_grad);
    ck_assert_ptr_eq(d->storage, x->storage);
    OK(moe_mul(&z, d, d));
    ck_assert(!z->requires_grad);
    RELEASE(x, y, d, z);
}
END_TEST

static moe_status double_grad(moe_tensor **grad, void *ctx)
{
    *(int *)ctx += 1;
    moe_tensor *twice;
    MOE_TRY(moe_mul_scalar(&twice, *grad, 2));
    moe_tensor_release(*grad);
    *grad = twice;
    return MOE_OK;
}

START_TEST(test_hooks)
{
    int leaf_calls = 0, inner_calls = 0;
    moe_tensor *x = T(MOE_F64, 1, SHAPE(2), 1, 2), *h, *y;
    OK(moe_tensor_requires_grad_(x, true));
    OK(moe_tensor_register_hook(x, double_grad, &leaf_calls, NULL, NULL));
    OK(moe_mul_scalar(&h, x, 5));
    int id;
    OK(moe_tensor_register_hook(h, double_grad, &inner_calls, NULL, &id)); /* non-leaf hook */
    OK(moe_sum(&y, h, 0, NULL, false));
    OK(moe_backward(y, NULL, true));
    ck_assert_int_eq(leaf_calls, 1);
    ck_assert_int_eq(inner_calls, 1);
    ASSERT_VALUES(x->grad, 0, 20, 20); /* 5 × 2 × 2 */
    ck_assert(moe_tensor_remove_hook(h, id));
    ck_assert(!moe_tensor_remove_hook(h, id));
    moe_tensor_zero_grad(x);
    OK(moe_backward(y, NULL, false));
    ASSERT_VALUES(x->grad, 0, 10, 10);
    moe_tensor *c = T(MOE_F64, 1, SHAPE(1), 1);
    FAILS(moe_tensor_register_hook(c, double_grad, &leaf_calls, NULL, NULL), MOE_ERR_STATE, "does not require grad");
    RELEASE(x, h, y, c);
}
END_TEST

/* A custom differentiable function written against the public node API:
 * cube(x) = x³ with backward 3x²·g, saving its input. */
static moe_status cube_forward(moe_tensor **out, int n, moe_tensor *const *in, moe_node *node)
{
    moe_tensor *sq;
    MOE_TRY(moe_mul(&sq, in[0], in[0]));
    moe_status st = moe_mul(out, sq, in[0]);
    moe_tensor_release(sq);
    MOE_TRY(st);
    return moe_node_save(node, in[0]);
}

static moe_status cube_backward(moe_node *node, moe_tensor *g, moe_tensor **gin)
{
    moe_tensor *x = node->saved[0], *sq, *sq3;
    MOE_TRY(moe_mul(&sq, x, x));
    moe_status st = moe_mul_scalar(&sq3, sq, 3);
    moe_tensor_release(sq);
    MOE_TRY(st);
    st = moe_mul(&gin[0], sq3, g);
    moe_tensor_release(sq3);
    return st;
}

static const moe_function cube_fn = {"cube", cube_forward, cube_backward};

static moe_status apply_cube(moe_tensor **out, moe_tensor **in, void *ctx)
{
    return moe_function_apply(out, &cube_fn, 1, in, NULL, NULL);
}

START_TEST(test_custom_function)
{
    moe_tensor *x = T(MOE_F64, 1, SHAPE(3), 1, -2, 0.5), *y, *s;
    OK(moe_tensor_requires_grad_(x, true));
    OK(apply_cube(&y, &x, NULL));
    ASSERT_VALUES(y, 1e-15, 1, -8, 0.125);
    ck_assert_str_eq(y->grad_fn->name, "cube");
    OK(moe_sum(&s, y, 0, NULL, false));
    OK(moe_backward(s, NULL, false));
    ASSERT_VALUES(x->grad, 1e-15, 3, 12, 0.75);
    moe_tensor *in[1] = {x};
    GRADCHECK(apply_cube, 1, in, NULL);
    RELEASE(x, y, s);
}
END_TEST

START_TEST(test_deep_chain_no_stack_overflow)
{
    /* 200k nodes: release and backward must not recurse per node. */
    moe_tensor *x = T(MOE_F64, 1, SHAPE(1), 1), *h = moe_tensor_retain(x), *n;
    OK(moe_tensor_requires_grad_(x, true));
    for (int i = 0; i < 200000; i++) {
        OK(moe_add_scalar(&n, h, 1e-6));
        moe_tensor_release(h);
        h = n;
    }
    OK(moe_backward(h, NULL, false));
    ASSERT_VALUES(x->grad, 0, 1);
    RELEASE(x, h);
}
END_TEST

/* ---- finite differences through every view op ------------------------- */

static moe_status f_transpose(moe_tensor **out, moe_tensor **in, void *ctx)
{
    return moe_transpose(out, in[0], 0, 2);
}
static moe_status f_permute(moe_tensor **out, moe_tensor **in, void *ctx)
{
    int perm[3] = {1, 2, 0};
    return moe_permute(out, in[0], perm);
}
static moe_status f_narrow(moe_tensor **out, moe_tensor **in, void *ctx)
{
    return moe_narrow(out, in[0], 1, 1, 2);
}
static moe_status f_select(moe_tensor **out, moe_tensor **in, void *ctx)
{
    return moe_select(out, in[0], -1, 2);
}
static moe_status f_reshape_noncontig(moe_tensor **out, moe_tensor **in, void *ctx)
{
    moe_tensor *t;
    MOE_TRY(moe_transpose(&t, in[0], 0, 1));
    moe_status st = moe_reshape(out, t, 2, SHAPE(-1, 4));
    moe_tensor_release(t);
    return st;
}
static moe_status f_expand(moe_tensor **out, moe_tensor **in, void *ctx)
{
    moe_tensor *t;
    MOE_TRY(moe_narrow(&t, in[0], 1, 0, 1)); /* [2 1 4] */
    moe_status st = moe_expand(out, t, 4, SHAPE(3, 2, 5, 4));
    moe_tensor_release(t);
    return st;
}
static moe_status f_squeeze_unsqueeze(moe_tensor **out, moe_tensor **in, void *ctx)
{
    moe_tensor *u;
    MOE_TRY(moe_unsqueeze(&u, in[0], 1));
    moe_status st = moe_squeeze(out, u, 1);
    moe_tensor_release(u);
    return st;
}
static moe_status f_contiguous_clone(moe_tensor **out, moe_tensor **in, void *ctx)
{
    moe_tensor *t, *c;
    MOE_TRY(moe_transpose(&t, in[0], 1, 2));
    moe_status st = moe_contiguous(&c, t);
    moe_tensor_release(t);
    MOE_TRY(st);
    st = moe_clone(out, c);
    moe_tensor_release(c);
    return st;
}
static moe_status f_dtype_roundtrip(moe_tensor **out, moe_tensor **in, void *ctx)
{
    moe_tensor *f, *s;
    MOE_TRY(moe_mul_scalar(&s, in[0], 2));
    moe_status st = moe_to_dtype(&f, s, MOE_F32);
    moe_tensor_release(s);
    MOE_TRY(st);
    st = moe_to_dtype(out, f, MOE_F64);
    moe_tensor_release(f);
    return st;
}

START_TEST(test_view_gradients)
{
    moe_tensor *x = leaf(3, SHAPE(2, 3, 4), 11);
    moe_tensor *in[1] = {x};
    GRADCHECK(f_transpose, 1, in, NULL);
    GRADCHECK(f_permute, 1, in, NULL);
    GRADCHECK(f_narrow, 1, in, NULL);
    GRADCHECK(f_select, 1, in, NULL);
    GRADCHECK(f_reshape_noncontig, 1, in, NULL);
    GRADCHECK(f_expand, 1, in, NULL);
    GRADCHECK(f_squeeze_unsqueeze, 1, in, NULL);
    GRADCHECK(f_contiguous_clone, 1, in, NULL);
    /* through f32 the numeric derivative is only float-accurate */
    tu_gradcheck(f_dtype_roundtrip, 1, in, NULL, 1e-3, 1e-3, "dtype roundtrip");
    RELEASE(x);
}
END_TEST

START_TEST(test_grad_dtype_bf16_leaf)
{
    /* a bf16 leaf receives a bf16 gradient */
    moe_tensor *x = T(MOE_BF16, 1, SHAPE(2), 1, 2), *f, *y;
    OK(moe_tensor_requires_grad_(x, true));
    OK(moe_to_dtype(&f, x, MOE_F32));
    OK(moe_sum(&y, f, 0, NULL, false));
    OK(moe_backward(y, NULL, false));
    ck_assert_int_eq(x->grad->dtype, MOE_BF16);
    ASSERT_VALUES(x->grad, 0, 1, 1);
    RELEASE(x, f, y);
}
END_TEST

/* A backward that frees the graph lets each intermediate go once its node
 * has run: with only the root held, what stays alive is the leaf, its
 * gradient and the root (the nodes once pinned their inputs to the end). */
START_TEST(test_backward_frees_activations)
{
    moe_tensor *x = leaf(1, SHAPE(1000), 7), *sq, *e, *y;
    OK(moe_mul(&sq, x, x));
    OK(moe_exp(&e, sq));
    OK(moe_sum(&y, e, 0, NULL, false));
    RELEASE(sq, e);
    moe_memory_stats before, after;
    moe_memory_stats_get(MOE_CPU, &before);
    OK(moe_backward(y, NULL, false));
    moe_memory_stats_get(MOE_CPU, &after);
    /* gone: sq and e (8000 bytes each); new: x.grad (8000 bytes) */
    ck_assert_int_eq(after.live_bytes - before.live_bytes, 8000 - 2 * 8000);
    ck_assert_int_eq(after.live_storages - before.live_storages, 1 - 2);
    const double *xv = moe_tensor_data(x), *gv = moe_tensor_data(x->grad);
    for (int i = 0; i < 1000; i++) /* d/dx exp(x²) = 2x exp(x²) */
        ck_assert_double_eq_tol(gv[i], 2 * xv[i] * exp(xv[i] * xv[i]), 1e-12 * (1 + fabs(gv[i])));
    RELEASE(x, y);
}
END_TEST

static Suite *autograd_suite(void)
{
    Suite *s = suite_create("autograd");
    TCase *c = tcase_create("tape");
    tcase_set_timeout(c, 60);
    tcase_add_test(c, test_chain_rule);
    tcase_add_test(c, test_shared_subgraph_and_accumulation);
    tcase_add_test(c, test_accumulation_ownership);
    tcase_add_test(c, test_backward_errors);
    tcase_add_test(c, test_no_grad_and_detach);
    tcase_add_test(c, test_hooks);
    tcase_add_test(c, test_custom_function);
    tcase_add_test(c, test_deep_chain_no_stack_overflow);
    tcase_add_test(c, test_backward_frees_activations);
    suite_add_tcase(s, c);
    c = tcase_create("views");
    tcase_add_test(c, test_view_gradients);
    tcase_add_test(c, test_grad_dtype_bf16_leaf);
    suite_add_tcase(s, c);
    return s;
}

int main(void) { return tu_run(autograd_suite()); }
