/* tensor-func.c — making tensors, looking inside them, and converting them
 * to and from Scheme data (nested lists and vectors, SRFI-4 vectors).
 *
 * Pattern of every primitive: check and convert all arguments first (this may
 * throw, and nothing is held yet), call libmoelab, wrap the result at once so
 * that Guile's collector owns it, then do anything else that may throw. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bindings.h"

/* ---- helpers ------------------------------------------------------------------ */

/* T itself (retained) when on the host, else a host copy. */
static moe_status host_view(moe_tensor **out, moe_tensor *t)
{
    if (t->device == MOE_CPU) {
        *out = moe_tensor_retain(t);
        return MOE_OK;
    }
    bool prev = moe_grad_set_enabled(false);
    moe_status st = moe_to_device(out, t, MOE_CPU);
    moe_grad_set_enabled(prev);
    return st;
}

/* Seed argument: #f (the default generator) or a non-negative integer. */
static moe_rng *rng_arg(SCM seed, moe_rng *local, int pos, const char *subr)
{
    if (scm_is_false(seed)) return NULL;
    if (!scm_is_unsigned_integer(seed, 0, UINT64_MAX))
        scm_wrong_type_arg_msg(subr, pos, seed, "non-negative integer seed or #f");
    moe_rng_init(local, scm_to_uint64(seed));
    return local;
}

static void *unprotect_in_guile(void *data)
{
    scm_gc_unprotect_object(SCM_PACK((scm_t_bits)data));
    return NULL;
}

/* Storage callback of a wrapped SRFI-4 vector: the vector may go now. */
static void release_vector(void *ptr, void *ctx)
{
    (void)ptr;
    scm_with_guile(unprotect_in_guile, ctx);
}

/* ---- from Scheme data ------------------------------------------------------------- */

/* A list view of X when X is a sequence (list, vector, array other than a
 * string), else SCM_UNDEFINED (X is an element). */
static SCM as_sequence(SCM x)
{
    if (scm_is_null(x) || scm_is_pair(x)) return x;
    if (scm_is_vector(x)) return scm_vector_to_list(x);
    if (scm_is_array(x) && !scm_is_string(x)) return scm_array_to_list(x);
    return SCM_UNDEFINED;
}

static int infer_shape(SCM data, int depth, int64_t *shape, const char *subr)
{
    SCM seq = as_sequence(data);
    if (SCM_UNBNDP(seq)) return depth;
    if (depth == MOE_MAX_DIMS)
        moelab_throw(subr, MOE_ERR_SHAPE, "data nested deeper than %d levels", MOE_MAX_DIMS);
    long n = scm_ilength(seq);
    if (n < 0) scm_wrong_type_arg_msg(subr, 1, data, "proper list");
    shape[depth] = n;
    if (n == 0) return depth + 1;
    return infer_shape(SCM_CAR(seq), depth + 1, shape, subr);
}

static void store_element(SCM x, moe_dtype d, char *p, const char *subr)
{
    double v;
    if (scm_is_bool(x)) {
        v = scm_is_true(x) ? 1.0 : 0.0;
    } else if (scm_is_real(x)) {
        if ((d == MOE_I64 || d == MOE_I32) && scm_is_exact_integer(x)) {
            int64_t lo = d == MOE_I32 ? INT32_MIN : INT64_MIN, hi = d == MOE_I32 ? INT32_MAX : INT64_MAX;
            if (!scm_is_signed_integer(x, lo, hi))
                moelab_throw(subr, MOE_ERR_VALUE, "value out of range for %s", moe_dtype_name(d));
            int64_t i = scm_to_int64(x);
            if (d == MOE_I64)
                memcpy(p, &i, sizeof i);
            else {
                int32_t j = (int32_t)i;
                memcpy(p, &j, sizeof j);
            }
            return;
        }
        v = scm_to_double(x);
    } else {
        scm_wrong_type_arg_msg(subr, 1, x, "real number or boolean");
    }
    if (d == MOE_I32 && !(v > -2147483649.0 && v < 2147483648.0))
        moelab_throw(subr, MOE_ERR_VALUE, "value %g out of range for i32", v);
    if (d == MOE_I64 && !(v >= -9223372036854775808.0 && v < 9223372036854775808.0))
        moelab_throw(subr, MOE_ERR_VALUE, "value %g out of range for i64", v);
    moe_dtype_store(d, p, v);
}

static void fill_from(SCM data, int depth, int ndim, const int64_t *shape, moe_dtype d, char **p,
                      const char *subr)
{
    if (depth == ndim) {
        if (!SCM_UNBNDP(as_sequence(data)))
            moelab_throw(subr, MOE_ERR_SHAPE, "ragged data: a sequence where level %d of shape %s "
                         "expects a number", depth, moe_dims_str(ndim, shape));
        store_element(data, d, *p, subr);
        *p += moe_dtype_size(d);
        return;
    }
    SCM seq = as_sequence(data);
    if (SCM_UNBNDP(seq))
        moelab_throw(subr, MOE_ERR_SHAPE, "ragged data: a number where level %d of shape %s expects "
                     "a sequence of %lld", depth, moe_dims_str(ndim, shape), (long long)shape[depth]);
    long n = scm_ilength(seq);
    if (n != shape[depth])
        moelab_throw(subr, MOE_ERR_SHAPE, "ragged data: a sequence of %ld where level %d of shape %s "
                     "expects %lld", n, depth, moe_dims_str(ndim, shape), (long long)shape[depth]);
    for (SCM l = seq; scm_is_pair(l); l = SCM_CDR(l)) fill_from(SCM_CAR(l), depth + 1, ndim, shape, d, p, subr);
}

/* The dtype of an SRFI-4 vector we can take as it is, or false. */
static bool uvector_dtype(SCM v, moe_dtype *d)
{
    if (scm_is_true(scm_f32vector_p(v))) *d = MOE_F32;
    else if (scm_is_true(scm_f64vector_p(v))) *d = MOE_F64;
    else if (scm_is_true(scm_s32vector_p(v))) *d = MOE_I32;
    else if (scm_is_true(scm_s64vector_p(v))) *d = MOE_I64;
    else if (scm_is_true(scm_u8vector_p(v))) *d = MOE_BOOL;
    else return false;
    return true;
}

static int64_t numel_of(int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

/* A tensor viewing (or copied from) SRFI-4 vector V. */
static SCM from_uvector(SCM v, moe_dtype vdtype, SCM dtype_arg, moe_device device, SCM shape_arg,
                        const char *subr)
{
    size_t len = scm_c_bytevector_length(v) / moe_dtype_size(vdtype);
    int64_t shape[MOE_MAX_DIMS];
    int ndim = 1;
    shape[0] = (int64_t)len;
    if (!scm_is_false(shape_arg)) ndim = moelab_to_shape(shape_arg, shape, 4, subr);
    if (numel_of(ndim, shape) != (int64_t)len)
        moelab_throw(subr, MOE_ERR_SHAPE, "shape %s has %lld elements but the vector has %zu",
                     moe_dims_str(ndim, shape), (long long)numel_of(ndim, shape), len);
    moe_dtype target = scm_is_false(dtype_arg) ? vdtype : moelab_to_dtype(dtype_arg, 2, subr);
    char *bytes = (char *)SCM_BYTEVECTOR_CONTENTS(v);
    if (vdtype == MOE_BOOL)
        for (size_t i = 0; i < len; i++)
            if ((unsigned char)bytes[i] > 1)
                moelab_throw(subr, MOE_ERR_VALUE, "u8vector element %zu is %d; bool tensors hold 0 or 1",
                             i, (unsigned char)bytes[i]);

    moe_tensor *t;
    if (target == vdtype && device == MOE_CPU && SCM_MUTABLE_BYTEVECTOR_P(v)) {
        /* Share the vector's memory; the storage keeps the vector alive. */
        scm_gc_protect_object(v);
        moe_status st = moe_tensor_wrap(&t, vdtype, ndim, shape, bytes, release_vector,
                                        (void *)SCM_UNPACK(v));
        if (st != MOE_OK) {
            scm_gc_unprotect_object(v);
            moelab_throw_last(subr);
        }
        return moelab_wrap(t);
    }
    moe_tensor *view, *host;
    MOELAB_CHECK(subr, moe_tensor_wrap(&view, vdtype, ndim, shape, bytes, NULL, NULL));
    moe_status st = moe_tensor_empty(&host, target, MOE_CPU, ndim, shape);
    if (st == MOE_OK) st = moe_tensor_copy_(host, view);
    moe_tensor_release(view);
    scm_remember_upto_here_1(v);
    if (st != MOE_OK) {
        moe_tensor_release(host);
        moelab_throw_last(subr);
    }
    if (device == MOE_CPU) return moelab_wrap(host);
    bool prev = moe_grad_set_enabled(false);
    st = moe_to_device(&t, host, device);
    moe_grad_set_enabled(prev);
    moe_tensor_release(host);
    MOELAB_CHECK(subr, st);
    return moelab_wrap(t);
}

SCM_DEFINE(moelab_tensor_from_data, "%tensor-from-data", 4, 0, 0,
           (SCM data, SCM dtype, SCM device, SCM shape),
           "A tensor from @var{data}: a number, nested lists/vectors/arrays of numbers "
           "or booleans, or an SRFI-4 vector (shared without copying when its type "
           "matches @var{dtype}). @var{dtype} #f: f32 (SRFI-4: the vector's type). "
           "@var{shape} #f: inferred.")
#define FUNC_NAME "tensor"
{
    moe_device dev = moelab_to_device(device, 3, FUNC_NAME);
    moe_dtype vdtype;
    if (uvector_dtype(data, &vdtype)) return from_uvector(data, vdtype, dtype, dev, shape, FUNC_NAME);

    if (moelab_is_tensor(data)) { /* a copy, converted */
        moe_tensor *src = moelab_unwrap(data, 1, FUNC_NAME), *c, *r;
        moe_dtype d = scm_is_false(dtype) ? src->dtype : moelab_to_dtype(dtype, 2, FUNC_NAME);
        MOELAB_CHECK(FUNC_NAME, moe_tensor_empty(&c, d, MOE_CPU, src->ndim, src->shape));
        SCM result = moelab_wrap(c);
        moe_tensor *h;
        MOELAB_CHECK(FUNC_NAME, host_view(&h, src));
        moe_status st = moe_tensor_copy_(c, h);
        moe_tensor_release(h);
        MOELAB_CHECK(FUNC_NAME, st);
        scm_remember_upto_here_1(data);
        if (dev == MOE_CPU && scm_is_false(shape)) return result;
        if (dev != MOE_CPU) {
            MOELAB_CHECK(FUNC_NAME, moe_to_device(&r, c, dev));
            result = moelab_wrap(r);
        }
        if (scm_is_false(shape)) return result;
        moe_tensor *t = moelab_unwrap(result, 1, FUNC_NAME);
        int64_t sh[MOE_MAX_DIMS];
        int nd = moelab_to_shape(shape, sh, 4, FUNC_NAME);
        MOELAB_CHECK(FUNC_NAME, moe_reshape(&r, t, nd, sh));
        scm_remember_upto_here_1(result);
        return moelab_wrap(r);
    }

    moe_dtype d = scm_is_false(dtype) ? MOE_F32 : moelab_to_dtype(dtype, 2, FUNC_NAME);
    int64_t inferred[MOE_MAX_DIMS];
    int ndim = infer_shape(data, 0, inferred, FUNC_NAME);
    int64_t want[MOE_MAX_DIMS];
    int want_ndim = ndim;
    if (!scm_is_false(shape)) {
        want_ndim = moelab_to_shape(shape, want, 4, FUNC_NAME);
        if (numel_of(want_ndim, want) != numel_of(ndim, inferred))
            moelab_throw(FUNC_NAME, MOE_ERR_SHAPE, "shape %s has %lld elements but the data %s has %lld",
                         moe_dims_str(want_ndim, want), (long long)numel_of(want_ndim, want),
                         moe_dims_str(ndim, inferred), (long long)numel_of(ndim, inferred));
    }
    moe_tensor *host;
    MOELAB_CHECK(FUNC_NAME, moe_tensor_empty(&host, d, MOE_CPU, ndim, inferred));
    SCM result = moelab_wrap(host); /* owned by the collector from here on */
    char *p = host->storage->data;
    fill_from(data, 0, ndim, inferred, d, &p, FUNC_NAME);
    if (!scm_is_false(shape)) { /* fresh and contiguous: just relabel */
        host->ndim = want_ndim;
        for (int i = 0; i < want_ndim; i++) host->shape[i] = want[i];
        int64_t stride = 1;
        for (int i = want_ndim - 1; i >= 0; i--) {
            host->strides[i] = stride;
            stride *= want[i] > 0 ? want[i] : 1;
        }
    }
    if (dev == MOE_CPU) return result;
    moe_tensor *t;
    MOELAB_CHECK(FUNC_NAME, moe_to_device(&t, host, dev));
    scm_remember_upto_here_1(result);
    return moelab_wrap(t);
}
#undef FUNC_NAME

/* ---- creation ------------------------------------------------------------------- */

SCM_DEFINE(moelab_full, "%full", 5, 0, 0, (SCM shape, SCM value, SCM dtype, SCM device, SCM who),
           "A tensor of @var{shape} filled with @var{value}; errors name @var{who} "
           "(a string, or #f for full).")
#define FUNC_NAME "full"
{
    char name[32];
    snprintf(name, sizeof name, "%s", FUNC_NAME);
    if (scm_is_string(who)) {
        size_t n = scm_to_locale_stringbuf(who, name, sizeof name - 1);
        name[n < sizeof name ? n : sizeof name - 1] = '\0';
    }
    int64_t sh[MOE_MAX_DIMS];
    int nd = moelab_to_shape(shape, sh, 1, name);
    double v = moelab_to_double(value, 2, name);
    moe_dtype d = moelab_to_dtype(dtype, 3, name);
    moe_device dev = moelab_to_device(device, 4, name);
    moe_tensor *t;
    MOELAB_CHECK(name, moe_tensor_full(&t, d, dev, nd, sh, v));
    return moelab_wrap(t);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_eye, "%eye", 4, 0, 0, (SCM n, SCM m, SCM dtype, SCM device),
           "The @var{n}×@var{m} identity matrix.")
#define FUNC_NAME "eye"
{
    int64_t rows = moelab_to_int64(n, 1, FUNC_NAME), cols = moelab_to_int64(m, 2, FUNC_NAME);
    if (rows < 0 || cols < 0)
        moelab_throw(FUNC_NAME, MOE_ERR_SHAPE, "negative size %lld x %lld", (long long)rows, (long long)cols);
    moe_dtype d = moelab_to_dtype(dtype, 3, FUNC_NAME);
    moe_device dev = moelab_to_device(device, 4, FUNC_NAME);
    moe_tensor *t;
    MOELAB_CHECK(FUNC_NAME, moe_tensor_eye(&t, d, dev, rows, cols));
    return moelab_wrap(t);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_arange, "%arange", 5, 0, 0, (SCM start, SCM end, SCM step, SCM dtype, SCM device),
           "[start, end) by step.")
#define FUNC_NAME "arange"
{
    double a = moelab_to_double(start, 1, FUNC_NAME), b = moelab_to_double(end, 2, FUNC_NAME),
           s = moelab_to_double(step, 3, FUNC_NAME);
    moe_dtype d = moelab_to_dtype(dtype, 4, FUNC_NAME);
    moe_device dev = moelab_to_device(device, 5, FUNC_NAME);
    if (s != 0 && isfinite(a) && isfinite(b) && isfinite(s) && (b - a) / s > 1e12)
        moelab_throw(FUNC_NAME, MOE_ERR_ARG, "%g elements requested", (b - a) / s);
    moe_tensor *t;
    MOELAB_CHECK(FUNC_NAME, moe_tensor_arange(&t, d, dev, a, b, s));
    return moelab_wrap(t);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_random, "%random", 7, 0, 0,
           (SCM kind, SCM shape, SCM dtype, SCM device, SCM seed, SCM low, SCM high),
           "Random tensor: @var{kind} is 'uniform, 'normal or 'int (in [low, high)).")
#define FUNC_NAME "random"
{
    const char *subr = scm_is_eq(kind, scm_from_utf8_symbol("normal"))  ? "randn"
                       : scm_is_eq(kind, scm_from_utf8_symbol("int"))   ? "randint"
                       : scm_is_eq(kind, scm_from_utf8_symbol("uniform")) ? "rand"
                                                                         : NULL;
    if (!subr) scm_wrong_type_arg_msg(FUNC_NAME, 1, kind, "'uniform, 'normal or 'int");
    int64_t sh[MOE_MAX_DIMS];
    int nd = moelab_to_shape(shape, sh, 2, subr);
    moe_dtype d = moelab_to_dtype(dtype, 3, subr);
    moe_device dev = moelab_to_device(device, 4, subr);
    moe_rng local;
    moe_rng *rng = rng_arg(seed, &local, 5, subr);
    moe_tensor *t;
    moe_status st;
    if (subr[4] == 'n') {
        st = moe_tensor_randn(&t, rng, d, dev, nd, sh);
    } else if (subr[4] == 'i') {
        int64_t lo = moelab_to_int64(low, 6, subr), hi = moelab_to_int64(high, 7, subr);
        st = moe_tensor_randint(&t, rng, d, dev, lo, hi, nd, sh);
    } else {
        st = moe_tensor_rand(&t, rng, d, dev, nd, sh);
    }
    MOELAB_CHECK(subr, st);
    return moelab_wrap(t);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_randperm, "%randperm", 3, 0, 0, (SCM n, SCM device, SCM seed),
           "A random permutation of 0..n-1 (i64).")
#define FUNC_NAME "randperm"
{
    int64_t len = moelab_to_int64(n, 1, FUNC_NAME);
    moe_device dev = moelab_to_device(device, 2, FUNC_NAME);
    moe_rng local;
    moe_rng *rng = rng_arg(seed, &local, 3, FUNC_NAME);
    moe_tensor *t;
    MOELAB_CHECK(FUNC_NAME, moe_tensor_permutation(&t, rng, dev, len));
    return moelab_wrap(t);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_manual_seed_x, "%manual-seed!", 1, 0, 0, (SCM seed),
           "Reseed the default random generator.")
#define FUNC_NAME "manual-seed!"
{
    if (!scm_is_unsigned_integer(seed, 0, UINT64_MAX))
        scm_wrong_type_arg_msg(FUNC_NAME, 1, seed, "non-negative integer");
    moe_manual_seed(scm_to_uint64(seed));
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

/* ---- inspection ------------------------------------------------------------------- */

SCM_DEFINE(moelab_tensor_shape, "%tensor-shape", 1, 0, 0, (SCM t), "The shape of @var{t} as a list.")
#define FUNC_NAME "tensor-shape"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    SCM r = moelab_from_dims(x->ndim, x->shape);
    scm_remember_upto_here_1(t);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_tensor_strides, "%tensor-strides", 1, 0, 0, (SCM t),
           "The strides of @var{t} (in elements) as a list.")
#define FUNC_NAME "tensor-strides"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    SCM r = moelab_from_dims(x->ndim, x->strides);
    scm_remember_upto_here_1(t);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_tensor_dtype, "%tensor-dtype", 1, 0, 0, (SCM t), "The dtype symbol of @var{t}.")
#define FUNC_NAME "tensor-dtype"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    SCM r = moelab_from_dtype(x->dtype);
    scm_remember_upto_here_1(t);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_tensor_device, "%tensor-device", 1, 0, 0, (SCM t), "The device symbol of @var{t}.")
#define FUNC_NAME "tensor-device"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    SCM r = moelab_from_device(x->device);
    scm_remember_upto_here_1(t);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_tensor_numel, "%tensor-numel", 1, 0, 0, (SCM t), "Number of elements of @var{t}.")
#define FUNC_NAME "tensor-numel"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    SCM r = scm_from_int64(moe_tensor_numel(x));
    scm_remember_upto_here_1(t);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_tensor_contiguous_p, "%tensor-contiguous?", 1, 0, 0, (SCM t),
           "True when @var{t} is laid out row-major without gaps.")
#define FUNC_NAME "tensor-contiguous?"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    SCM r = scm_from_bool(moe_tensor_is_contiguous(x));
    scm_remember_upto_here_1(t);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_tensor_shares_storage_p, "%tensor-shares-storage?", 2, 0, 0, (SCM a, SCM b),
           "True when tensors @var{a} and @var{b} view the same storage.")
#define FUNC_NAME "tensor-shares-storage?"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME), *y = moelab_unwrap(b, 2, FUNC_NAME);
    SCM r = scm_from_bool(x->storage == y->storage);
    scm_remember_upto_here_2(a, b);
    return r;
}
#undef FUNC_NAME

/* Element index list → C index (negative counts from the end). */
static void index_arg(moe_tensor *x, SCM indices, int64_t *idx, int pos, const char *subr)
{
    long n = scm_ilength(indices);
    if (n < 0) scm_wrong_type_arg_msg(subr, pos, indices, "list of indices");
    if (n != x->ndim)
        moelab_throw(subr, MOE_ERR_INDEX, "%ld indices for a %d-d tensor of shape %s", n, x->ndim,
                     moe_shape_str(x));
    int i = 0;
    for (SCM l = indices; scm_is_pair(l); l = SCM_CDR(l), i++) {
        int64_t v = moelab_to_int64(SCM_CAR(l), pos, subr);
        if (v < -x->shape[i] || v >= x->shape[i])
            moelab_throw(subr, MOE_ERR_INDEX, "index %lld out of range for dim %d of shape %s",
                         (long long)v, i, moe_shape_str(x));
        idx[i] = v < 0 ? v + x->shape[i] : v;
    }
}

/* Exact element read (i64 stays exact beyond 2^53). */
static SCM element_at(const moe_tensor *h, const int64_t *idx)
{
    int64_t off = h->offset;
    for (int i = 0; i < h->ndim; i++) off += idx[i] * h->strides[i];
    const char *p = (const char *)h->storage->data + off * (int64_t)moe_dtype_size(h->dtype);
    if (h->dtype == MOE_I64) {
        int64_t v;
        memcpy(&v, p, sizeof v);
        return scm_from_int64(v);
    }
    return moelab_from_element(h->dtype, moe_dtype_load(h->dtype, p));
}

SCM_DEFINE(moelab_tensor_ref, "%tensor-ref", 2, 0, 0, (SCM t, SCM indices),
           "The element of @var{t} at @var{indices} (a list).")
#define FUNC_NAME "tensor-ref"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME), *h;
    int64_t idx[MOE_MAX_DIMS];
    index_arg(x, indices, idx, 2, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, host_view(&h, x));
    SCM r = element_at(h, idx);
    moe_tensor_release(h);
    scm_remember_upto_here_1(t);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_tensor_set_x, "%tensor-set!", 3, 0, 0, (SCM t, SCM indices, SCM value),
           "Set the element of @var{t} at @var{indices} to @var{value}.")
#define FUNC_NAME "tensor-set!"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    int64_t idx[MOE_MAX_DIMS];
    index_arg(x, indices, idx, 2, FUNC_NAME);
    double v = scm_is_bool(value) ? (scm_is_true(value) ? 1.0 : 0.0) : moelab_to_double(value, 3, FUNC_NAME);
    if (moe_tensor_needs_grad(x))
        moelab_throw(FUNC_NAME, MOE_ERR_STATE, "in-place write to a tensor that requires grad (shape %s); "
                     "use no-grad or detach", moe_shape_str(x));
    MOELAB_CHECK(FUNC_NAME, moe_tensor_set(x, idx, v));
    scm_remember_upto_here_1(t);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_tensor_item, "%tensor-item", 1, 0, 0, (SCM t),
           "The single value of the one-element tensor @var{t}.")
#define FUNC_NAME "tensor-item"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME), *h;
    if (moe_tensor_numel(x) != 1)
        moelab_throw(FUNC_NAME, MOE_ERR_SHAPE, "needs a one-element tensor, got shape %s", moe_shape_str(x));
    MOELAB_CHECK(FUNC_NAME, host_view(&h, x));
    int64_t zero[MOE_MAX_DIMS] = {0};
    SCM r = element_at(h, zero);
    moe_tensor_release(h);
    scm_remember_upto_here_1(t);
    return r;
}
#undef FUNC_NAME

/* Nested list of dims DEPTH.. from the row-major buffer at *I. */
static SCM build_list(const void *buf, moe_dtype kind, int depth, int ndim, const int64_t *shape, int64_t *i)
{
    if (depth == ndim) {
        int64_t k = (*i)++;
        if (kind == MOE_F64) return scm_from_double(((const double *)buf)[k]);
        if (kind == MOE_I64) return scm_from_int64(((const int64_t *)buf)[k]);
        return scm_from_bool(((const uint8_t *)buf)[k] != 0);
    }
    SCM head = SCM_EOL, *tail = &head;
    for (int64_t j = 0; j < shape[depth]; j++) {
        *tail = scm_cons(build_list(buf, kind, depth + 1, ndim, shape, i), SCM_EOL);
        tail = SCM_CDRLOC(*tail);
    }
    return head;
}

SCM_DEFINE(moelab_tensor_to_list, "%tensor->list", 1, 0, 0, (SCM t),
           "The elements of @var{t} as nested lists (a 0-d tensor gives a number).")
#define FUNC_NAME "tensor->list"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME), *h;
    moe_dtype kind = moe_dtype_is_float(x->dtype) ? MOE_F64 : x->dtype == MOE_BOOL ? MOE_BOOL : MOE_I64;
    int64_t n = moe_tensor_numel(x);
    void *buf = malloc((size_t)(n ? n : 1) * moe_dtype_size(kind));
    if (!buf) moelab_throw(FUNC_NAME, MOE_ERR_NOMEM, "no memory for %lld elements", (long long)n);
    moe_status st = host_view(&h, x);
    if (st == MOE_OK) {
        st = moe_tensor_to_host(h, kind, buf);
        moe_tensor_release(h);
    }
    if (st != MOE_OK) {
        free(buf);
        moelab_throw_last(FUNC_NAME);
    }
    int64_t i = 0, shape[MOE_MAX_DIMS];
    int ndim = x->ndim;
    memcpy(shape, x->shape, sizeof shape);
    scm_remember_upto_here_1(t);
    /* Building the list allocates but cannot throw short of memory exhaustion. */
    SCM r = build_list(buf, kind, 0, ndim, shape, &i);
    free(buf);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_tensor_to_uvector, "%tensor->uvector", 2, 0, 0, (SCM t, SCM type),
           "A fresh SRFI-4 vector (@var{type}: f32 f64 s32 s64 u8) of the elements of "
           "@var{t} in row-major order.")
#define FUNC_NAME "tensor->uvector"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME), *h;
    moe_dtype d;
    SCM v;
    int64_t n = moe_tensor_numel(x);
    if (scm_is_eq(type, scm_from_utf8_symbol("f32"))) {
        d = MOE_F32;
        v = scm_make_f32vector(scm_from_int64(n), SCM_UNDEFINED);
    } else if (scm_is_eq(type, scm_from_utf8_symbol("f64"))) {
        d = MOE_F64;
        v = scm_make_f64vector(scm_from_int64(n), SCM_UNDEFINED);
    } else if (scm_is_eq(type, scm_from_utf8_symbol("s32"))) {
        d = MOE_I32;
        v = scm_make_s32vector(scm_from_int64(n), SCM_UNDEFINED);
    } else if (scm_is_eq(type, scm_from_utf8_symbol("s64"))) {
        d = MOE_I64;
        v = scm_make_s64vector(scm_from_int64(n), SCM_UNDEFINED);
    } else if (scm_is_eq(type, scm_from_utf8_symbol("u8"))) {
        d = MOE_BOOL;
        v = scm_make_u8vector(scm_from_int64(n), SCM_UNDEFINED);
    } else {
        scm_wrong_type_arg_msg(FUNC_NAME, 2, type, "one of f32 f64 s32 s64 u8");
    }
    MOELAB_CHECK(FUNC_NAME, host_view(&h, x));
    moe_status st = moe_tensor_to_host(h, d, SCM_BYTEVECTOR_CONTENTS(v));
    moe_tensor_release(h);
    MOELAB_CHECK(FUNC_NAME, st);
    scm_remember_upto_here_1(t);
    return v;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_tensor_fill_x, "%tensor-fill!", 2, 0, 0, (SCM t, SCM value),
           "Set every element of @var{t} to @var{value}.")
#define FUNC_NAME "tensor-fill!"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    double v = scm_is_bool(value) ? (scm_is_true(value) ? 1.0 : 0.0) : moelab_to_double(value, 2, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_tensor_fill_(x, v));
    scm_remember_upto_here_1(t);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_tensor_copy_x, "%tensor-copy!", 2, 0, 0, (SCM dst, SCM src),
           "Copy @var{src} into @var{dst} (broadcasting, converting the dtype).")
#define FUNC_NAME "tensor-copy!"
{
    moe_tensor *d = moelab_unwrap(dst, 1, FUNC_NAME), *s = moelab_unwrap(src, 2, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_tensor_copy_(d, s));
    scm_remember_upto_here_2(dst, src);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_tensor_allclose_p, "%tensor-allclose?", 4, 0, 0, (SCM a, SCM b, SCM rtol, SCM atol),
           "True when @var{a} and @var{b} have the same shape and |a-b| <= atol + rtol*|b| "
           "everywhere (NaN is close to nothing).")
#define FUNC_NAME "tensor-allclose?"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME), *y = moelab_unwrap(b, 2, FUNC_NAME);
    double rt = moelab_to_double(rtol, 3, FUNC_NAME), at = moelab_to_double(atol, 4, FUNC_NAME);
    if (!moe_tensor_same_shape(x, y)) return SCM_BOOL_F;
    int64_t n = moe_tensor_numel(x);
    double *bx = malloc((size_t)(n ? n : 1) * sizeof *bx), *by = malloc((size_t)(n ? n : 1) * sizeof *by);
    moe_tensor *hx = NULL, *hy = NULL;
    moe_status st = bx && by ? MOE_OK : moe_fail(MOE_ERR_NOMEM, FUNC_NAME, "no memory");
    if (st == MOE_OK) st = host_view(&hx, x);
    if (st == MOE_OK) st = host_view(&hy, y);
    if (st == MOE_OK) st = moe_tensor_to_doubles(hx, bx);
    if (st == MOE_OK) st = moe_tensor_to_doubles(hy, by);
    moe_tensor_release(hx);
    moe_tensor_release(hy);
    bool close = true;
    for (int64_t i = 0; st == MOE_OK && i < n && close; i++)
        close = fabs(bx[i] - by[i]) <= at + rt * fabs(by[i]);
    free(bx);
    free(by);
    MOELAB_CHECK(FUNC_NAME, st);
    scm_remember_upto_here_2(a, b);
    return scm_from_bool(close);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_count_nonfinite, "%count-nonfinite", 1, 0, 0, (SCM t),
           "(NAN-COUNT . INF-COUNT) of tensor @var{t}.")
#define FUNC_NAME "count-nonfinite"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    int64_t nans = 0, infs = 0;
    MOELAB_CHECK(FUNC_NAME, moe_count_nonfinite(x, &nans, &infs));
    scm_remember_upto_here_1(t);
    return scm_cons(scm_from_int64(nans), scm_from_int64(infs));
}
#undef FUNC_NAME

/* ---- memory and devices -------------------------------------------------------------- */

static SCM stats_alist(moe_device d)
{
    moe_memory_stats s;
    moe_memory_stats_get(d, &s);
    return scm_list_4(scm_cons(scm_from_utf8_symbol("live-tensors"), scm_from_int64(s.live_tensors)),
                      scm_cons(scm_from_utf8_symbol("live-storages"), scm_from_int64(s.live_storages)),
                      scm_cons(scm_from_utf8_symbol("live-bytes"), scm_from_int64(s.live_bytes)),
                      scm_cons(scm_from_utf8_symbol("peak-bytes"), scm_from_int64(s.peak_bytes)));
}

SCM_DEFINE(moelab_memory_stats, "%memory-stats", 0, 0, 0, (void),
           "Live tensors and bytes per device: ((cpu (live-tensors . N) …) …).")
#define FUNC_NAME "memory-stats"
{
    moelab_drain_release_queue();
    SCM r = scm_list_1(scm_cons(moelab_from_device(MOE_CPU), stats_alist(MOE_CPU)));
    if (moe_built_with_cuda())
        r = scm_append(scm_list_2(r, scm_list_1(scm_cons(moelab_from_device(MOE_CUDA), stats_alist(MOE_CUDA)))));
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_memory_peak_reset_x, "%memory-peak-reset!", 1, 0, 0, (SCM device),
           "Reset the peak-bytes counter of @var{device} to its live bytes.")
#define FUNC_NAME "memory-peak-reset!"
{
    moe_memory_peak_reset(moelab_to_device(device, 1, FUNC_NAME));
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_device_count, "%device-count", 1, 0, 0, (SCM device),
           "How many devices of kind @var{device} are usable (cpu: 1).")
#define FUNC_NAME "device-count"
{
    return scm_from_int(moe_device_count(moelab_to_device(device, 1, FUNC_NAME)));
}
#undef FUNC_NAME

SCM_DEFINE(moelab_built_with_cuda_p, "%built-with-cuda?", 0, 0, 0, (void),
           "True when this moelab includes the CUDA backend.")
#define FUNC_NAME "built-with-cuda?"
{
    return scm_from_bool(moe_built_with_cuda());
}
#undef FUNC_NAME

void moelab_init_tensor_func(void)
{
#ifndef SCM_MAGIC_SNARFER
#include "tensor-func.x"
#endif
}
