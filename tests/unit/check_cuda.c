/* check_cuda.c — the CUDA device path: allocation and copies both ways,
 * with gradients flowing back across the move. Skips without a GPU. */
#include "testutil.h"

START_TEST(test_roundtrip)
{
    moe_tensor *a = T(MOE_F32, 2, SHAPE(2, 3), 1, 2, 3, 4, 5, 6), *t, *d, *h;
    OK(moe_transpose(&t, a, 0, 1)); /* non-contiguous source */
    OK(moe_to_device(&d, t, MOE_CUDA));
    ck_assert_int_eq(d->device, MOE_CUDA);
    OK(moe_to_device(&h, d, MOE_CPU));
    ASSERT_VALUES(h, 0, 1, 4, 2, 5, 3, 6);
    double v;
    FAILS(moe_tensor_item(d, &v), MOE_ERR_SHAPE, "one-element");
    OK(moe_tensor_get(d, SHAPE(0, 1), &v)); /* element access copies through the host */
    ck_assert_msg(v == 4, "tensor-ref on the device gave %g, expected 4", v);
    RELEASE(a, t, d, h);
}
END_TEST

START_TEST(test_grad_across_devices)
{
    moe_tensor *x = T(MOE_F32, 1, SHAPE(3), 1, 2, 3), *d, *back, *g;
    OK(moe_tensor_requires_grad_(x, true));
    OK(moe_to_device(&d, x, MOE_CUDA));
    OK(moe_to_device(&back, d, MOE_CPU));
    g = T(MOE_F32, 1, SHAPE(3), 0.5, -1, 2);
    OK(moe_backward(back, g, false));
    ASSERT_VALUES(x->grad, 0, 0.5, -1, 2);
    RELEASE(x, d, back, g);
}
END_TEST

int main(void)
{
    if (moe_device_count(MOE_CUDA) == 0) {
        printf("check_cuda: skipped: no GPU (%s)\n",
               moe_built_with_cuda() ? "CUDA build, no visible device" : "built without CUDA");
        return 77;
    }
    Suite *s = suite_create("cuda");
    TCase *c = tcase_create("device");
    tcase_add_test(c, test_roundtrip);
    tcase_add_test(c, test_grad_across_devices);
    suite_add_tcase(s, c);
    return tu_run(s);
}
