/* gpucheck.h — the GPU-against-CPU harness of tests/gpu/check_gpu_*.c.
 *
 *   int main(void) {
 *       int skip = gc_start("check_gpu_x");   // 77 without a GPU
 *       if (skip) return skip;
 *       ... Check suite whose tests call gc_compare / gc_check ...
 *   }
 *
 * gc_check(name, fn, ctx, n, inputs, grad_mask, tol) runs FN on the CPU
 * inputs and on copies of them on the GPU, prints the normalised error
 *   err = max |gpu - cpu| / max(1, max |cpu|)
 * of the output and of the gradient of every input in GRAD_MASK (backward
 * of the output with one fixed random weighting), and fails the test when
 * an error exceeds TOL (per dtype: GC_TOL(dtype)).
 *
 * MOELAB_GPU_TEST_ON_CPU=1 runs the "GPU" side on the CPU as well: every
 * error must then be 0, which checks the harness and the test cases on a
 * machine without a GPU. Header-only, like tests/unit/testutil.h. */
#ifndef MOELAB_GPUCHECK_H
#define MOELAB_GPUCHECK_H

#include "../unit/testutil.h"

/* Tolerances of the normalised error: f32 (and f64) vs bf16 storage. */
#define GC_TOL(dtype) ((dtype) == MOE_BF16 ? 1e-2 : 1e-5)

static moe_device gc_dev = MOE_CUDA;

/* 0 to run the suite, or the exit status to return at once (77: skip). */
static inline int gc_start(const char *name)
{
    const char *on_cpu = getenv("MOELAB_GPU_TEST_ON_CPU");
    if (on_cpu && strcmp(on_cpu, "1") == 0) {
        gc_dev = MOE_CPU;
        printf("%s: MOELAB_GPU_TEST_ON_CPU=1: the device side runs on the cpu (harness check)\n", name);
        return 0;
    }
    if (moe_device_count(MOE_CUDA) == 0) {
        printf("%s: skipped: no GPU (%s)\n", name,
               moe_built_with_cuda() ? "CUDA build, no visible device" : "built without CUDA");
        return 77;
    }
    return 0;
}

/* A fresh copy of T on DEVICE, detached from any graph (a new leaf). */
static inline moe_tensor *gc_leaf(moe_tensor *t, moe_device device)
{
    moe_tensor *r;
    bool prev = moe_grad_set_enabled(false);
    moe_status st = device == t->device ? moe_clone(&r, t) : moe_to_device(&r, t, device);
    moe_grad_set_enabled(prev);
    OK(st);
    return r;
}

/* T copied to the test device. */
static inline moe_tensor *gc_to_dev(moe_tensor *t) { return gc_leaf(t, gc_dev); }

/* Seeded uniform tensor in [lo, hi) of DTYPE on the CPU. */
static inline moe_tensor *gc_uniform(moe_dtype dtype, int ndim, const int64_t *shape, uint64_t seed,
                                     double lo, double hi)
{
    moe_rng rng;
    moe_rng_init(&rng, seed);
    moe_tensor *u, *s, *t, *r;
    OK(moe_tensor_rand(&u, &rng, MOE_F64, MOE_CPU, ndim, shape));
    OK(moe_mul_scalar(&s, u, hi - lo));
    OK(moe_add_scalar(&t, s, lo));
    OK(moe_to_dtype(&r, t, dtype));
    moe_tensor_release(u);
    moe_tensor_release(s);
    moe_tensor_release(t);
    return r;
}

/* Normalised error of GPU result G against CPU result C (same shape);
 * positions where both are NaN or both the same infinity agree. */
static inline double gc_error(const moe_tensor *g, const moe_tensor *c)
{
    ck_assert_msg(moe_tensor_same_shape(g, c), "shapes %s (device) and %s (cpu) differ", moe_shape_str(g),
                  moe_shape_str(c));
    int64_t n = moe_tensor_numel(c);
    double *gv = malloc(sizeof(double) * (size_t)(n ? n : 1));
    double *cv = malloc(sizeof(double) * (size_t)(n ? n : 1));
    OK(moe_tensor_to_doubles(g, gv));
    OK(moe_tensor_to_doubles(c, cv));
    double maxdiff = 0, maxc = 1;
    for (int64_t i = 0; i < n; i++) {
        if ((isnan(gv[i]) && isnan(cv[i])) || gv[i] == cv[i]) continue;
        double d = fabs(gv[i] - cv[i]);
        maxdiff = isnan(d) ? INFINITY : (d > maxdiff ? d : maxdiff);
        if (isfinite(cv[i]) && fabs(cv[i]) > maxc) maxc = fabs(cv[i]);
    }
    free(gv);
    free(cv);
    return maxdiff / maxc;
}

/* Compare and report one pair; WHAT names the case. */
static inline void gc_compare(const char *what, const moe_tensor *g, const moe_tensor *c, double tol)
{
    ck_assert_msg(g->device == gc_dev, "%s: result on %s, expected %s", what, moe_device_name(g->device),
                  moe_device_name(gc_dev));
    ck_assert_msg(g->dtype == c->dtype, "%s: dtype %s on the device, %s on the cpu", what,
                  moe_dtype_name(g->dtype), moe_dtype_name(c->dtype));
    double err = gc_error(g, c);
    printf("  %-40s %-5s %-12s err %.3e (tol %.0e)%s\n", what, moe_dtype_name(c->dtype), moe_shape_str(c),
           err, tol, err <= tol ? "" : "  FAIL");
    ck_assert_msg(err <= tol, "%s: normalised error %.3e above %.0e", what, err, tol);
}

typedef moe_status (*gc_fn)(moe_tensor **out, moe_tensor **in, void *ctx);

#define GC_MAX_IN 4

/* Forward on both devices, then backward (when GRAD_MASK selects float
 * inputs) with the same random output weighting; compare everything. */
static inline void gc_check(const char *name, gc_fn fn, void *ctx, int n_in, moe_tensor **inputs,
                            unsigned grad_mask, double tol)
{
    moe_tensor *cin[GC_MAX_IN] = {0}, *gin[GC_MAX_IN] = {0}, *cout = NULL, *gout = NULL;
    ck_assert(n_in <= GC_MAX_IN);
    for (int i = 0; i < n_in; i++) {
        cin[i] = gc_leaf(inputs[i], MOE_CPU);
        gin[i] = gc_to_dev(inputs[i]);
        if ((grad_mask >> i) & 1) {
            OK(moe_tensor_requires_grad_(cin[i], true));
            OK(moe_tensor_requires_grad_(gin[i], true));
        }
    }
    OK(fn(&cout, cin, ctx));
    OK(fn(&gout, gin, ctx));
    char what[160];
    snprintf(what, sizeof what, "%s fwd", name);
    gc_compare(what, gout, cout, tol);
    if (grad_mask && cout->requires_grad) {
        moe_tensor *w = gc_uniform(MOE_F32, cout->ndim, cout->shape, 4242, -1, 1), *wc, *wg;
        OK(moe_to_dtype(&wc, w, cout->dtype));
        wg = gc_to_dev(wc);
        OK(moe_backward(cout, wc, false));
        OK(moe_backward(gout, wg, false));
        for (int i = 0; i < n_in; i++) {
            if (!((grad_mask >> i) & 1)) continue;
            ck_assert_msg(cin[i]->grad && gin[i]->grad, "%s: input %d has no gradient", name, i);
            snprintf(what, sizeof what, "%s grad[%d]", name, i);
            gc_compare(what, gin[i]->grad, cin[i]->grad, tol);
        }
        moe_tensor_release(w);
        moe_tensor_release(wc);
        moe_tensor_release(wg);
    }
    moe_tensor_release(cout);
    moe_tensor_release(gout);
    for (int i = 0; i < n_in; i++) {
        moe_tensor_release(cin[i]);
        moe_tensor_release(gin[i]);
    }
}

#endif
