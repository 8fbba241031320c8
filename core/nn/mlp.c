/* mlp.c — the dense SwiGLU MLP as a one-expert grouped MLP (see mlp.h).
 *
 * Dimension letters: T rows (all leading dims of x), D model dim, F inner
 * width. The linear-layout weights are handed over as transposed views
 * [1 D F] / [1 F D]; the grouped MLP reads them into contiguous buffers and
 * its gradients flow back through the views. */
#include "internal.h"
#include "mlp.h"
#include "moe/experts.h"

moe_status moe_swiglu_mlp(moe_tensor **out, moe_tensor *x, moe_tensor *w_gate, moe_tensor *w_up,
                          moe_tensor *w_down)
{
    static const char *op = "mlp";
    MOE_CHECK_NOT_NULL(op, out);
    *out = NULL;
    MOE_CHECK_NOT_NULL(op, x);
    MOE_CHECK_NOT_NULL(op, w_gate);
    MOE_CHECK_NOT_NULL(op, w_up);
    MOE_CHECK_NOT_NULL(op, w_down);
    if (x->ndim < 1) return moe_fail(MOE_ERR_SHAPE, op, "input must be [... D], got a scalar");
    int64_t D = x->shape[x->ndim - 1];
    if (w_gate->ndim != 2 || w_gate->shape[1] != D || !moe_tensor_same_shape(w_gate, w_up) ||
        w_down->ndim != 2 || w_down->shape[0] != D || w_down->shape[1] != w_gate->shape[0])
        return moe_fail(MOE_ERR_SHAPE, op,
                        "weights must be w-gate [F %lld], w-up [F %lld], w-down [%lld F]; got %s %s %s for input %s",
                        (long long)D, (long long)D, (long long)D, moe_shape_str(w_gate), moe_shape_str(w_up),
                        moe_shape_str(w_down), moe_shape_str(x));
    int64_t T = D ? moe_tensor_numel(x) / D : 0, s2[2] = {T, D};
    moe_tensor *x2 = NULL, *t[3] = {0}, *w3[3] = {0}, *y = NULL;
    moe_tensor *w[3] = {w_gate, w_up, w_down};
    moe_status st = MOE_OK;
    MOE_TRYG(moe_reshape(&x2, x, 2, s2));
    for (int i = 0; i < 3; i++) {
        MOE_TRYG(moe_transpose(&t[i], w[i], 0, 1));
        MOE_TRYG(moe_unsqueeze(&w3[i], t[i], 0));
    }
    MOE_TRYG(moe_grouped_mlp(&y, x2, w3[0], w3[1], w3[2], NULL, NULL, NULL, &T, MOE_ACT_SWIGLU));
    MOE_TRYG(moe_reshape(out, y, x->ndim, x->shape));
done:
    moe_tensor_release(x2);
    moe_tensor_release(y);
    for (int i = 0; i < 3; i++) {
        moe_tensor_release(t[i]);
        moe_tensor_release(w3[i]);
    }
    return st;
}
