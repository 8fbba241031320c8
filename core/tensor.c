/* tensor.c — tensor headers, creation, inspection, element access and the
 * counter-based RNG. Views live in view.c. */
#include "tensor.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "autograd.h"
#include "device.h"
#include "internal.h"
#include "../kernels/cpu/random.h"

/* ---- lifetime ------------------------------------------------------------ */

moe_tensor *moe_tensor_retain(moe_tensor *t)
{
    if (t) atomic_fetch_add_explicit(&t->refcount, 1, memory_order_relaxed);
    return t;
}

void moe_tensor_release(moe_tensor *t)
{
    /* acq_rel: the last owner sees every write made under the other references */
    if (!t || atomic_fetch_sub_explicit(&t->refcount, 1, memory_order_acq_rel) != 1) return;
    moe_memory_count_tensor(t->device, -1);
    moe_tensor_release(t->grad);
    if (t->grad_fn) moe_node_release(t->grad_fn);
    for (moe_hook *h = t->hooks, *next; h; h = next) {
        next = h->next;
        if (h->ctx_free) h->ctx_free(h->ctx);
        free(h);
    }
    moe_storage_release(t->storage);
    free(t);
}

void moe_contiguous_strides(int ndim, const int64_t *shape, int64_t *strides)
{
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        strides[i] = s;
        s *= shape[i] > 0 ? shape[i] : 1;
    }
}

moe_status moe_tensor_new_view(moe_tensor **out, const moe_tensor *like, moe_storage *storage,
                               int ndim, const int64_t *shape, const int64_t *strides,
                               int64_t offset)
{
    moe_tensor *t = calloc(1, sizeof *t);
    if (!t) return moe_fail(MOE_ERR_NOMEM, "tensor", "out of memory for a tensor header of %zu bytes", sizeof *t);
    t->storage = storage;
    moe_storage_retain(storage);
    t->offset = offset;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        t->strides[i] = strides[i];
    }
    t->dtype = like->dtype;
    t->device = like->device;
    atomic_init(&t->refcount, 1);
    moe_memory_count_tensor(t->device, 1);
    *out = t;
    return MOE_OK;
}

static moe_status check_shape(const char *op, int ndim, const int64_t *shape)
{
    if (ndim < 0 || ndim > MOE_MAX_DIMS)
        return moe_fail(MOE_ERR_SHAPE, op, "%d dims requested; moelab supports 0 to %d", ndim,
                        MOE_MAX_DIMS);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0)
            return moe_fail(MOE_ERR_SHAPE, op, "negative size %lld in shape %s",
                            (long long)shape[i], moe_dims_str(ndim, shape));
    return MOE_OK;
}

moe_status moe_tensor_empty(moe_tensor **out, moe_dtype dtype, moe_device device, int ndim,
                            const int64_t *shape)
{
    *out = NULL;
    if ((unsigned)dtype >= MOE_DTYPE_COUNT)
        return moe_fail(MOE_ERR_DTYPE, "empty", "unknown dtype %d", (int)dtype);
    if ((unsigned)device >= MOE_DEVICE_COUNT)
        return moe_fail(MOE_ERR_DEVICE, "empty", "unknown device %d", (int)device);
    MOE_TRY(check_shape("empty", ndim, shape));
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] && numel > INT64_MAX / 16 / shape[i])
            return moe_fail(MOE_ERR_NOMEM, "empty", "shape %s is too large",
                            moe_dims_str(ndim, shape));
        numel *= shape[i];
    }
    moe_storage *s;
    MOE_TRY(moe_storage_new(&s, device, (size_t)numel * moe_dtype_size(dtype)));
    int64_t strides[MOE_MAX_DIMS];
    moe_contiguous_strides(ndim, shape, strides);
    moe_tensor like = {.dtype = dtype, .device = device};
    moe_status st = moe_tensor_new_view(out, &like, s, ndim, shape, strides, 0);
    moe_storage_release(s);
    return st;
}

moe_status moe_tensor_full(moe_tensor **out, moe_dtype dtype, moe_device device, int ndim,
                           const int64_t *shape, double value)
{
    *out = NULL;
    if ((unsigned)dtype < MOE_DTYPE_COUNT) MOE_TRY(moe_dtype_check_value("full", dtype, value));
    MOE_TRY(moe_tensor_empty(out, dtype, device, ndim, shape));
    moe_status st = moe_fill_elements(*out, value);
    if (st != MOE_OK) {
        moe_tensor_release(*out);
        *out = NULL;
    }
    return st;
}

moe_status moe_tensor_zeros(moe_tensor **out, moe_dtype dtype, moe_device device, int ndim,
                            const int64_t *shape)
{
    return moe_tensor_full(out, dtype, device, ndim, shape, 0.0);
}

moe_status moe_tensor_ones(moe_tensor **out, moe_dtype dtype, moe_device device, int ndim,
                           const int64_t *shape)
{
    return moe_tensor_full(out, dtype, device, ndim, shape, 1.0);
}

moe_status moe_tensor_empty_like(moe_tensor **out, const moe_tensor *t)
{
    return moe_tensor_empty(out, t->dtype, t->device, t->ndim, t->shape);
}

moe_status moe_tensor_zeros_like(moe_tensor **out, const moe_tensor *t)
{
    return moe_tensor_zeros(out, t->dtype, t->device, t->ndim, t->shape);
}

moe_status moe_tensor_scalar(moe_tensor **out, moe_dtype dtype, moe_device device, double v)
{
    return moe_tensor_full(out, dtype, device, 0, NULL, v);
}

moe_status moe_tensor_from_data(moe_tensor **out, moe_dtype dtype, moe_device device, int ndim,
                                const int64_t *shape, const void *data)
{
    moe_tensor *host;
    MOE_TRY(moe_tensor_empty(&host, dtype, MOE_CPU, ndim, shape));
    memcpy(host->storage->data, data, moe_tensor_nbytes(host));
    if (device == MOE_CPU) {
        *out = host;
        return MOE_OK;
    }
    moe_status st = moe_to_device(out, host, device);
    moe_tensor_release(host);
    return st;
}

moe_status moe_tensor_wrap(moe_tensor **out, moe_dtype dtype, int ndim, const int64_t *shape,
                           void *data, void (*free_fn)(void *, void *), void *ctx)
{
    *out = NULL;
    MOE_TRY(check_shape("wrap", ndim, shape));
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) numel *= shape[i];
    moe_storage *s;
    MOE_TRY(moe_storage_wrap(&s, data, (size_t)numel * moe_dtype_size(dtype), free_fn, ctx));
    int64_t strides[MOE_MAX_DIMS];
    moe_contiguous_strides(ndim, shape, strides);
    moe_tensor like = {.dtype = dtype, .device = MOE_CPU};
    moe_status st = moe_tensor_new_view(out, &like, s, ndim, shape, strides, 0);
    moe_storage_release(s);
    return st;
}

moe_status moe_tensor_arange(moe_tensor **out, moe_dtype dtype, moe_device device, double start,
                             double end, double step)
{
    *out = NULL;
    if (step == 0 || !isfinite(start) || !isfinite(end) || !isfinite(step))
        return moe_fail(MOE_ERR_ARG, "arange", "need finite start/end and a non-zero step, got %g %g %g",
                        start, end, step);
    double n = ceil((end - start) / step);
    int64_t len = n > 0 ? (int64_t)n : 0;
    moe_tensor *t;
    MOE_TRY(moe_tensor_empty(&t, dtype, MOE_CPU, 1, &len));
    moe_cpu_arange(dtype, moe_tensor_data(t), len, start, step);
    if (device == MOE_CPU) {
        *out = t;
        return MOE_OK;
    }
    moe_status st = moe_to_device(out, t, device);
    moe_tensor_release(t);
    return st;
}

moe_status moe_tensor_eye(moe_tensor **out, moe_dtype dtype, moe_device device, int64_t n,
                          int64_t m)
{
    int64_t shape[2] = {n, m};
    moe_tensor *t;
    MOE_TRY(moe_tensor_zeros(&t, dtype, MOE_CPU, 2, shape));
    moe_cpu_eye(dtype, moe_tensor_data(t), n, m);
    if (device == MOE_CPU) {
        *out = t;
        return MOE_OK;
    }
    moe_status st = moe_to_device(out, t, device);
    moe_tensor_release(t);
    return st;
}

/* ---- inspection ------------------------------------------------------------ */

int64_t moe_tensor_numel(const moe_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t moe_tensor_nbytes(const moe_tensor *t)
{
    return (size_t)moe_tensor_numel(t) * moe_dtype_size(t->dtype);
}

bool moe_tensor_is_contiguous(const moe_tensor *t)
{
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] == 1) continue;
        if (t->strides[i] != s) return false;
        s *= t->shape[i];
    }
    return true;
}

void *moe_tensor_data(const moe_tensor *t) { return moe_storage_ptr(t, t->offset); }

bool moe_tensor_same_shape(const moe_tensor *a, const moe_tensor *b)
{
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

const char *moe_dims_str(int ndim, const int64_t *shape)
{
    static _Thread_local char ring[8][MOE_MAX_DIMS * 21 + 4];
    static _Thread_local int next;
    char *buf = ring[next++ & 7];
    size_t cap = sizeof ring[0], n = 0;
    buf[n++] = '[';
    for (int i = 0; i < ndim && i < MOE_MAX_DIMS; i++) {
        int w = snprintf(buf + n, cap - n, i ? " %lld" : "%lld", (long long)shape[i]);
        if (w < 0 || (size_t)w >= cap - n) break;
        n += (size_t)w;
    }
    snprintf(buf + n, cap - n, "]");
    return buf;
}

const char *moe_shape_str(const moe_tensor *t) { return moe_dims_str(t->ndim, t->shape); }

moe_status moe_dim_normalize(const char *op, const moe_tensor *t, int dim, int *out)
{
    int nd = t->ndim ? t->ndim : 1; /* a 0-d tensor accepts dim 0 / -1 */
    if (dim < -nd || dim >= nd)
        return moe_fail(MOE_ERR_INDEX, op, "dim %d out of range for a %d-d tensor of shape %s", dim,
                        t->ndim, moe_shape_str(t));
    *out = dim < 0 ? dim + nd : dim;
    return MOE_OK;
}

static moe_status element_offset(const char *op, const moe_tensor *t, const int64_t *index,
                                 int64_t *off)
{
    *off = t->offset;
    for (int i = 0; i < t->ndim; i++) {
        if (index[i] < 0 || index[i] >= t->shape[i])
            return moe_fail(MOE_ERR_INDEX, op, "index %lld out of range for dim %d of shape %s",
                            (long long)index[i], i, moe_shape_str(t));
        *off += index[i] * t->strides[i];
    }
    return MOE_OK;
}

/* One element goes through a small host buffer (a copy for device tensors). */
moe_status moe_tensor_get(const moe_tensor *t, const int64_t *index, double *out)
{
    int64_t off;
    char one[8];
    MOE_TRY(element_offset("tensor-ref", t, index, &off));
    MOE_TRY(moe_bytes_to_host(one, moe_storage_ptr(t, off), moe_dtype_size(t->dtype), t->device));
    *out = moe_dtype_load(t->dtype, one);
    return MOE_OK;
}

moe_status moe_tensor_set(moe_tensor *t, const int64_t *index, double value)
{
    int64_t off;
    char one[8];
    MOE_TRY(element_offset("tensor-set!", t, index, &off));
    MOE_TRY(moe_dtype_check_value("tensor-set!", t->dtype, value));
    moe_dtype_store(t->dtype, one, value);
    moe_tensor_bump_version(t);
    return moe_bytes_from_host(moe_storage_ptr(t, off), one, moe_dtype_size(t->dtype), t->device);
}

moe_status moe_tensor_item(const moe_tensor *t, double *out)
{
    if (moe_tensor_numel(t) != 1)
        return moe_fail(MOE_ERR_SHAPE, "tensor-item", "needs a one-element tensor, got shape %s",
                        moe_shape_str(t));
    int64_t zero[MOE_MAX_DIMS] = {0};
    return moe_tensor_get(t, zero, out);
}

moe_status moe_tensor_to_host(const moe_tensor *t, moe_dtype dtype, void *out)
{
    moe_tensor *dst, *host = NULL;
    if (t->device != MOE_CPU) { /* contiguous on its device, then one copy across */
        bool prev = moe_grad_set_enabled(false);
        moe_status st = moe_to_device(&host, (moe_tensor *)t, MOE_CPU);
        moe_grad_set_enabled(prev);
        MOE_TRY(st);
        t = host;
    }
    moe_status st = moe_tensor_wrap(&dst, dtype, t->ndim, t->shape, out, NULL, NULL);
    if (st == MOE_OK) {
        moe_cpu_copy(dst, t);
        moe_tensor_release(dst);
    }
    moe_tensor_release(host);
    return st;
}

moe_status moe_tensor_to_doubles(const moe_tensor *t, double *out)
{
    return moe_tensor_to_host(t, MOE_F64, out);
}

/* ---- in-place ---------------------------------------------------------------- */

uint64_t moe_tensor_version(const moe_tensor *t)
{
    return __atomic_load_n(&t->storage->version, __ATOMIC_ACQUIRE);
}

void moe_tensor_bump_version(moe_tensor *t)
{
    __atomic_add_fetch(&t->storage->version, 1, __ATOMIC_RELEASE);
}

/* Sort the dims of size > 1 by stride; the elements are distinct when each
 * stride exceeds the furthest offset reachable with the smaller ones. */
bool moe_tensor_has_overlap(const moe_tensor *t)
{
    int64_t stride[MOE_MAX_DIMS], size[MOE_MAX_DIMS];
    int n = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] == 0) return false; /* no elements at all */
        if (t->shape[i] == 1) continue;
        int64_t s = t->strides[i] < 0 ? -t->strides[i] : t->strides[i];
        int j = n++;
        for (; j > 0 && stride[j - 1] > s; j--) {
            stride[j] = stride[j - 1];
            size[j] = size[j - 1];
        }
        stride[j] = s;
        size[j] = t->shape[i];
    }
    int64_t reach = 0; /* furthest offset spanned by the dims so far */
    for (int i = 0; i < n; i++) {
        if (stride[i] <= reach) return true;
        reach += (size[i] - 1) * stride[i];
    }
    return false;
}

static moe_status check_inplace(const char *op, const moe_tensor *t)
{
    if (moe_tensor_needs_grad(t))
        return moe_fail(MOE_ERR_STATE, op,
                        "in-place write to a tensor that requires grad (shape %s); use no-grad or detach",
                        moe_shape_str(t));
    return MOE_OK;
}

moe_status moe_tensor_fill_(moe_tensor *t, double value)
{
    MOE_TRY(check_inplace("tensor-fill!", t));
    MOE_TRY(moe_dtype_check_value("tensor-fill!", t->dtype, value));
    moe_tensor_bump_version(t);
    return moe_fill_elements(t, value);
}

moe_status moe_broadcast_shapes(const char *op, int a_ndim, const int64_t *a_shape, int b_ndim,
                                const int64_t *b_shape, int *out_ndim, int64_t *out_shape)
{
    int nd = a_ndim > b_ndim ? a_ndim : b_ndim;
    for (int i = 0; i < nd; i++) {
        int ia = i - (nd - a_ndim), ib = i - (nd - b_ndim);
        int64_t sa = ia >= 0 ? a_shape[ia] : 1, sb = ib >= 0 ? b_shape[ib] : 1;
        if (sa != sb && sa != 1 && sb != 1)
            return moe_fail(MOE_ERR_SHAPE, op, "shapes %s and %s do not broadcast (dim %d: %lld vs %lld)",
                            moe_dims_str(a_ndim, a_shape), moe_dims_str(b_ndim, b_shape), i,
                            (long long)sa, (long long)sb);
        out_shape[i] = sa == 1 ? sb : sa;
    }
    *out_ndim = nd;
    return MOE_OK;
}

moe_status moe_tensor_copy_(moe_tensor *dst, const moe_tensor *src)
{
    const char *op = "tensor-copy!";
    MOE_TRY(check_inplace(op, dst));
    moe_tensor *b, *moved = NULL;
    int nd;
    int64_t shape[MOE_MAX_DIMS];
    MOE_TRY(moe_broadcast_shapes(op, dst->ndim, dst->shape, src->ndim, src->shape, &nd, shape));
    if (nd != dst->ndim || memcmp(shape, dst->shape, sizeof(int64_t) * (size_t)nd) != 0)
        return moe_fail(MOE_ERR_SHAPE, op, "source %s does not broadcast to destination %s",
                        moe_shape_str(src), moe_shape_str(dst));
    if (moe_tensor_has_overlap(dst))
        return moe_fail(MOE_ERR_ARG, op,
                        "the destination %s (strides %s) has elements sharing memory, as an expanded "
                        "view does; copy into the tensor it was expanded from, or a contiguous clone",
                        moe_shape_str(dst), moe_dims_str(dst->ndim, dst->strides));
    MOE_TRY(moe_check_representable(op, src, dst->dtype));
    bool prev = moe_grad_set_enabled(false);
    moe_status st = MOE_OK;
    if (src->device != dst->device) /* across devices: move the source first */
        st = moe_to_device(&moved, (moe_tensor *)src, dst->device);
    if (st == MOE_OK) st = moe_expand(&b, moved ? moved : (moe_tensor *)src, dst->ndim, dst->shape);
    moe_grad_set_enabled(prev);
    moe_tensor_release(moved);
    MOE_TRY(st);
    moe_tensor_bump_version(dst);
    st = moe_copy_elements(dst, b);
    moe_tensor_release(b);
    return st;
}

moe_status moe_as_compute(moe_tensor **out, moe_tensor *t, moe_dtype compute)
{
    if (t->dtype == compute && moe_tensor_is_contiguous(t)) {
        *out = moe_tensor_retain(t);
        return MOE_OK;
    }
    MOE_TRY(moe_tensor_empty(out, compute, t->device, t->ndim, t->shape));
    moe_status st = moe_copy_elements(*out, t);
    if (st != MOE_OK) {
        moe_tensor_release(*out);
        *out = NULL;
    }
    return st;
}

moe_status moe_from_compute(moe_tensor **out, moe_tensor *r, moe_dtype rt)
{
    moe_status st = moe_as_compute(out, r, rt);
    moe_tensor_release(r);
    return st;
}

/* ---- random numbers --------------------------------------------------------- */

static moe_rng default_rng;

void moe_rng_init(moe_rng *rng, uint64_t seed)
{
    rng->seed = seed;
    rng->offset = 0;
}

moe_rng *moe_rng_default(void) { return &default_rng; }
void moe_manual_seed(uint64_t seed) { moe_rng_init(&default_rng, seed); }

double moe_rng_uniform(uint64_t seed, uint64_t i)
{
    return moe_rng_bits_uniform(seed, i); /* kernels/rng.h: the device draws the same */
}

/* Reserve N counter values from RNG (the default one when NULL). */
static uint64_t rng_take(moe_rng *rng, uint64_t n, uint64_t *seed)
{
    if (!rng) rng = &default_rng;
    *seed = rng->seed;
    return __atomic_fetch_add(&rng->offset, n, __ATOMIC_RELAXED);
}

static moe_status draw(moe_tensor **out, moe_rng *rng, moe_dtype dtype, moe_device device, int ndim,
                       const int64_t *shape, moe_cpu_random_kind kind, int64_t low, int64_t high)
{
    moe_tensor *t;
    MOE_TRY(moe_tensor_empty(&t, dtype, MOE_CPU, ndim, shape));
    int64_t n = moe_tensor_numel(t);
    uint64_t seed, base = rng_take(rng, kind == MOE_CPU_RANDOM_NORMAL ? 2 * (uint64_t)n : (uint64_t)n, &seed);
    moe_cpu_random(dtype, moe_tensor_data(t), n, kind, seed, base, low, high);
    if (device == MOE_CPU) {
        *out = t;
        return MOE_OK;
    }
    moe_status st = moe_to_device(out, t, device);
    moe_tensor_release(t);
    return st;
}

moe_status moe_tensor_rand(moe_tensor **out, moe_rng *rng, moe_dtype dtype, moe_device device,
                           int ndim, const int64_t *shape)
{
    if (!moe_dtype_is_float(dtype))
        return moe_fail(MOE_ERR_DTYPE, "rand", "needs a floating dtype, got %s", moe_dtype_name(dtype));
    return draw(out, rng, dtype, device, ndim, shape, MOE_CPU_RANDOM_UNIFORM, 0, 0);
}

moe_status moe_tensor_randn(moe_tensor **out, moe_rng *rng, moe_dtype dtype, moe_device device,
                            int ndim, const int64_t *shape)
{
    if (!moe_dtype_is_float(dtype))
        return moe_fail(MOE_ERR_DTYPE, "randn", "needs a floating dtype, got %s", moe_dtype_name(dtype));
    return draw(out, rng, dtype, device, ndim, shape, MOE_CPU_RANDOM_NORMAL, 0, 0);
}

moe_status moe_tensor_randint(moe_tensor **out, moe_rng *rng, moe_dtype dtype, moe_device device,
                              int64_t low, int64_t high, int ndim, const int64_t *shape)
{
    if (high <= low)
        return moe_fail(MOE_ERR_ARG, "randint", "empty range [%lld, %lld)", (long long)low,
                        (long long)high);
    return draw(out, rng, dtype, device, ndim, shape, MOE_CPU_RANDOM_INT, low, high);
}

moe_status moe_tensor_permutation(moe_tensor **out, moe_rng *rng, moe_device device, int64_t n)
{
    if (n < 0) return moe_fail(MOE_ERR_ARG, "randperm", "negative length %lld", (long long)n);
    moe_tensor *t;
    MOE_TRY(moe_tensor_empty(&t, MOE_I64, MOE_CPU, 1, &n));
    uint64_t seed, base = rng_take(rng, (uint64_t)n, &seed);
    moe_cpu_permutation(moe_tensor_data(t), n, seed, base);
    if (device == MOE_CPU) {
        *out = t;
        return MOE_OK;
    }
    moe_status st = moe_to_device(out, t, device);
    moe_tensor_release(t);
    return st;
}
