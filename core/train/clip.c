/* clip.c — the global L2 norm of the gradients and clipping to a maximum,
 * as PyTorch's clip_grad_norm_ (norm type 2): scale = max / (norm + 1e-6),
 * applied only when it is below 1. */
#include <math.h>
#include <stdlib.h>

#include "../../kernels/cpu/optim.h"
#include "../internal.h"
#include "optim.h"

static moe_status check_grads(const char *op, int n, moe_tensor *const *params)
{
    if (n < 0) return moe_fail(MOE_ERR_ARG, op, "negative parameter count %d", n);
    if (n > 0) MOE_CHECK_NOT_NULL(op, params);
    for (int i = 0; i < n; i++) {
        if (!params[i]) return moe_fail(MOE_ERR_ARG, op, "parameter %d is NULL", i);
        moe_tensor *g = params[i]->grad;
        if (!g) continue;
        if (g->dtype != MOE_F32 && g->dtype != MOE_F64)
            return moe_fail(MOE_ERR_DTYPE, op, "the gradient of parameter %d is %s; expected f32 or f64", i,
                            moe_dtype_name(g->dtype));
        if (g->device != MOE_CPU)
            return moe_fail(MOE_ERR_DEVICE, op, "the gradient of parameter %d is on %s: no %s kernel for %s yet", i,
                            moe_device_name(g->device), moe_device_name(g->device), op);
    }
    return MOE_OK;
}

/* The L2 norm of all gradients (any layout: a view is summed from a
 * contiguous copy), summed in one pass over all of them. */
static moe_status norm_of(const char *op, double *total_norm, int n, moe_tensor *const *params)
{
    MOE_TRY(check_grads(op, n, params));
    if (n == 0) {
        *total_norm = 0;
        return MOE_OK;
    }
    moe_cpu_span *spans = malloc((size_t)n * sizeof *spans);
    moe_tensor **copies = calloc((size_t)n, sizeof *copies);
    moe_status st = MOE_OK;
    if (!spans || !copies)
        st = moe_fail(MOE_ERR_NOMEM, op, "out of memory for the spans of %d gradients", n);
    int count = 0;
    MOE_NO_GRAD_BEGIN;
    for (int i = 0; i < n && st == MOE_OK; i++) {
        moe_tensor *g = params[i]->grad;
        if (!g) continue;
        if (!moe_tensor_is_contiguous(g) && (st = moe_contiguous(&copies[i], g)) != MOE_OK) break;
        if (copies[i]) g = copies[i];
        spans[count++] = (moe_cpu_span){g->dtype, moe_tensor_data(g), moe_tensor_numel(g)};
    }
    MOE_NO_GRAD_END;
    if (st == MOE_OK) *total_norm = sqrt(moe_cpu_sum_squares(count, spans));
    for (int i = 0; copies && i < n; i++) moe_tensor_release(copies[i]);
    free(copies);
    free(spans);
    return st;
}

moe_status moe_grad_norm(double *total_norm, int n, moe_tensor *const *params)
{
    return norm_of("grad-norm", total_norm, n, params);
}

/* True when G may be scaled where it lies: contiguous, the only view of its
 * storage, and not the gradient of an earlier parameter too. */
static bool scale_in_place(moe_tensor *const *params, int i)
{
    moe_tensor *g = params[i]->grad;
    if (!moe_tensor_is_contiguous(g) || g->storage->refcount != 1) return false;
    for (int j = 0; j < i; j++)
        if (params[j]->grad == g) return false;
    return true;
}

moe_status moe_clip_scale(double *scale, double norm, double max_norm, const char *op)
{
    if (!(max_norm > 0) || !isfinite(max_norm))
        return moe_fail(MOE_ERR_ARG, op, "max must be finite and > 0, got %g", max_norm);
    double s = max_norm / (norm + 1e-6);
    *scale = isfinite(norm) && s < 1.0 ? s : 1.0;
    return MOE_OK;
}

moe_status moe_clip_grad_norm(double *total_norm, int n, moe_tensor *const *params, double max_norm)
{
    const char *op = "clip-grad-norm!";
    double norm, scale;
    MOE_TRY(moe_clip_scale(&scale, 0, max_norm, op)); /* MAX checked before any work */
    MOE_TRY(norm_of(op, &norm, n, params));
    *total_norm = norm;
    MOE_TRY(moe_clip_scale(&scale, norm, max_norm, op));
    if (scale == 1.0) return MOE_OK; /* a clipping factor is below 1 */
    /* Copies first (they may fail), then the scaling (it cannot). In the
     * usual case every gradient is scaled where it lies and nothing is
     * allocated. */
    bool all_in_place = true;
    for (int i = 0; i < n && all_in_place; i++) all_in_place = !params[i]->grad || scale_in_place(params, i);
    if (all_in_place) {
        for (int i = 0; i < n; i++) {
            moe_tensor *g = params[i]->grad;
            if (g) {
                moe_cpu_scale(g->dtype, moe_tensor_data(g), moe_tensor_numel(g), scale);
                moe_tensor_bump_version(g);
            }
        }
        return MOE_OK;
    }
    moe_tensor **fresh = calloc((size_t)n, sizeof *fresh);
    if (!fresh) return moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of gradient slots (%d parameters)", (size_t)n * sizeof *fresh, n);
    moe_status st = MOE_OK;
    MOE_NO_GRAD_BEGIN;
    for (int i = 0; i < n && st == MOE_OK; i++)
        if (params[i]->grad && !scale_in_place(params, i)) st = moe_clone(&fresh[i], params[i]->grad);
    MOE_NO_GRAD_END;
    if (st == MOE_OK) {
        for (int i = 0; i < n; i++) {
            if (fresh[i]) {
                moe_tensor_release(params[i]->grad);
                params[i]->grad = fresh[i];
                fresh[i] = NULL;
            }
            moe_tensor *g = params[i]->grad;
            if (g) {
                moe_cpu_scale(g->dtype, moe_tensor_data(g), moe_tensor_numel(g), scale);
                moe_tensor_bump_version(g);
            }
        }
    }
    for (int i = 0; i < n; i++) moe_tensor_release(fresh[i]);
    free(fresh);
    return st;
}
