/* ops-func.c — primitives for every op of core/ops.h and the views of
 * core/tensor.h. Each checks its Scheme arguments, calls the op, and wraps
 * the result; the op's own checks (shapes, dims, dtypes) surface as
 * moelab-error naming the public Scheme procedure (SUBR below). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "bindings.h"

/* One tensor in, one out: %NAME wraps FN; errors name SUBR. */
#define UNARY_OP(cname, primname, subr, fn)                                    \
    SCM_DEFINE(cname, primname, 1, 0, 0, (SCM a), "Elementwise " subr ".")     \
    {                                                                          \
        moe_tensor *x = moelab_unwrap(a, 1, subr), *r;                         \
        MOELAB_CHECK(subr, fn(&r, x));                                         \
        scm_remember_upto_here_1(a);                                           \
        return moelab_wrap(r);                                                 \
    }

/* Two tensors in, one out. */
#define BINARY_OP(cname, primname, subr, fn)                                   \
    SCM_DEFINE(cname, primname, 3, 0, 0, (SCM a, SCM b, SCM who),              \
               "Binary " subr "; errors name @var{who} (a string) or " subr ".") \
    {                                                                          \
        const char *name_ = scm_is_string(who) ? NULL : subr;                  \
        char buf_[64];                                                         \
        if (!name_) {                                                          \
            size_t n_ = scm_to_locale_stringbuf(who, buf_, sizeof buf_ - 1);   \
            buf_[n_ < sizeof buf_ ? n_ : sizeof buf_ - 1] = '\0';              \
            name_ = buf_;                                                      \
        }                                                                      \
        moe_tensor *x = moelab_unwrap(a, 1, name_), *y = moelab_unwrap(b, 2, name_), *r; \
        MOELAB_CHECK(name_, fn(&r, x, y));                                     \
        scm_remember_upto_here_2(a, b);                                        \
        return moelab_wrap(r);                                                 \
    }

/* A tensor and a number in, one out. */
#define SCALAR_OP(cname, primname, subr, fn)                                   \
    SCM_DEFINE(cname, primname, 3, 0, 0, (SCM a, SCM s, SCM who),             \
               "Tensor-scalar " subr "; errors name @var{who} or " subr ".")   \
    {                                                                          \
        const char *name_ = scm_is_string(who) ? NULL : subr;                  \
        char buf_[64];                                                         \
        if (!name_) {                                                          \
            size_t n_ = scm_to_locale_stringbuf(who, buf_, sizeof buf_ - 1);   \
            buf_[n_ < sizeof buf_ ? n_ : sizeof buf_ - 1] = '\0';              \
            name_ = buf_;                                                      \
        }                                                                      \
        moe_tensor *x = moelab_unwrap(a, 1, name_), *r;                        \
        double v = moelab_to_double(s, 2, name_);                              \
        MOELAB_CHECK(name_, fn(&r, x, v));                                     \
        scm_remember_upto_here_1(a);                                           \
        return moelab_wrap(r);                                                 \
    }

/* ---- elementwise ------------------------------------------------------------------ */

UNARY_OP(moelab_neg, "%neg", "neg", moe_neg)
UNARY_OP(moelab_exp, "%exp", "exp", moe_exp)
UNARY_OP(moelab_log, "%log", "log", moe_log)
UNARY_OP(moelab_sqrt, "%sqrt", "sqrt", moe_sqrt)
UNARY_OP(moelab_rsqrt, "%rsqrt", "rsqrt", moe_rsqrt)
UNARY_OP(moelab_abs, "%abs", "abs", moe_abs)
UNARY_OP(moelab_tanh, "%tanh", "tanh", moe_tanh)
UNARY_OP(moelab_sigmoid, "%sigmoid", "sigmoid", moe_sigmoid)
UNARY_OP(moelab_silu, "%silu", "silu", moe_silu)
UNARY_OP(moelab_relu, "%relu", "relu", moe_relu)
UNARY_OP(moelab_flatten, "%flatten", "flatten", moe_flatten)
UNARY_OP(moelab_contiguous, "%contiguous", "contiguous", moe_contiguous)
UNARY_OP(moelab_clone, "%clone", "clone", moe_clone)
UNARY_OP(moelab_max_all, "%max-all", "tmax", moe_max_all)
UNARY_OP(moelab_min_all, "%min-all", "tmin", moe_min_all)

BINARY_OP(moelab_add, "%add", "add", moe_add)
BINARY_OP(moelab_sub, "%sub", "sub", moe_sub)
BINARY_OP(moelab_mul, "%mul", "mul", moe_mul)
BINARY_OP(moelab_div, "%div", "div", moe_div)
BINARY_OP(moelab_pow, "%pow", "pow", moe_pow)
BINARY_OP(moelab_matmul, "%matmul", "matmul", moe_matmul)
BINARY_OP(moelab_bmm, "%bmm", "bmm", moe_bmm)
BINARY_OP(moelab_embedding, "%embedding", "embedding", moe_embedding)

SCALAR_OP(moelab_add_scalar, "%add-scalar", "add", moe_add_scalar)
SCALAR_OP(moelab_mul_scalar, "%mul-scalar", "mul", moe_mul_scalar)
SCALAR_OP(moelab_rsub_scalar, "%rsub-scalar", "sub", moe_rsub_scalar)
SCALAR_OP(moelab_rdiv_scalar, "%rdiv-scalar", "div", moe_rdiv_scalar)
SCALAR_OP(moelab_pow_scalar, "%pow-scalar", "pow", moe_pow_scalar)

SCM_DEFINE(moelab_matmul_cpu_kernel, "%matmul-cpu-kernel", 0, 0, 0, (void),
           "The kernel of f32 products on the CPU, as a symbol: avx512, avx2 or blas.")
{
    return scm_from_utf8_symbol(moe_matmul_cpu_kernel());
}

SCM_DEFINE(moelab_gelu, "%gelu", 2, 0, 0, (SCM a, SCM approximate),
           "GELU; @var{approximate} is 'none (exact, erf) or 'tanh.")
#define FUNC_NAME "gelu"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME), *r;
    moe_gelu_kind kind;
    if (scm_is_eq(approximate, scm_from_utf8_symbol("none")) || scm_is_false(approximate))
        kind = MOE_GELU_ERF;
    else if (scm_is_eq(approximate, scm_from_utf8_symbol("tanh")))
        kind = MOE_GELU_TANH;
    else
        scm_wrong_type_arg_msg(FUNC_NAME, 2, approximate, "'none or 'tanh");
    MOELAB_CHECK(FUNC_NAME, moe_gelu(&r, x, kind));
    scm_remember_upto_here_1(a);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_clamp, "%clamp", 3, 0, 0, (SCM a, SCM lo, SCM hi),
           "Clamp to [lo, hi]; #f leaves a side open.")
#define FUNC_NAME "clamp"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME), *r;
    double l = moelab_to_double_or(lo, -INFINITY, 2, FUNC_NAME);
    double h = moelab_to_double_or(hi, INFINITY, 3, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_clamp(&r, x, l, h));
    scm_remember_upto_here_1(a);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_where, "%where", 3, 0, 0, (SCM cond, SCM a, SCM b), "cond ? a : b, broadcasting.")
#define FUNC_NAME "where"
{
    moe_tensor *c = moelab_unwrap(cond, 1, FUNC_NAME), *x = moelab_unwrap(a, 2, FUNC_NAME),
               *y = moelab_unwrap(b, 3, FUNC_NAME), *r;
    MOELAB_CHECK(FUNC_NAME, moe_where(&r, c, x, y));
    scm_remember_upto_here_2(cond, a);
    scm_remember_upto_here_1(b);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_masked_fill, "%masked-fill", 3, 0, 0, (SCM a, SCM mask, SCM value),
           "mask ? value : a.")
#define FUNC_NAME "masked-fill"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME), *m = moelab_unwrap(mask, 2, FUNC_NAME), *r;
    double v = moelab_to_double(value, 3, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_masked_fill(&r, x, m, v));
    scm_remember_upto_here_2(a, mask);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_dropout, "%dropout", 4, 0, 0, (SCM a, SCM p, SCM training, SCM seed),
           "Inverted dropout with probability @var{p}.")
#define FUNC_NAME "dropout"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME), *r;
    double prob = moelab_to_double(p, 2, FUNC_NAME);
    moe_rng local, *rng = NULL;
    if (!scm_is_false(seed)) {
        if (!scm_is_unsigned_integer(seed, 0, UINT64_MAX))
            scm_wrong_type_arg_msg(FUNC_NAME, 4, seed, "non-negative integer seed or #f");
        moe_rng_init(&local, scm_to_uint64(seed));
        rng = &local;
    }
    MOELAB_CHECK(FUNC_NAME, moe_dropout(&r, x, prob, scm_is_true(training), rng));
    scm_remember_upto_here_1(a);
    return moelab_wrap(r);
}
#undef FUNC_NAME

static moe_compare compare_arg(SCM sym, int pos, const char *subr)
{
    static const char *const names[MOE_COMPARE_COUNT] = {
        [MOE_EQ] = "=", [MOE_NE] = "!=", [MOE_LT] = "<", [MOE_LE] = "<=", [MOE_GT] = ">", [MOE_GE] = ">=",
    };
    for (int i = 0; i < MOE_COMPARE_COUNT; i++)
        if (scm_is_eq(sym, scm_from_utf8_symbol(names[i]))) return (moe_compare)i;
    scm_wrong_type_arg_msg(subr, pos, sym, "one of = != < <= > >=");
}

SCM_DEFINE(moelab_compare, "%compare", 4, 0, 0, (SCM a, SCM b, SCM cmp, SCM who),
           "Elementwise comparison (bool result); @var{b} a tensor or a number.")
#define FUNC_NAME "compare"
{
    char name[32];
    if (scm_is_string(who)) {
        size_t n = scm_to_locale_stringbuf(who, name, sizeof name - 1);
        name[n < sizeof name ? n : sizeof name - 1] = '\0';
    } else {
        snprintf(name, sizeof name, "%s", FUNC_NAME);
    }
    moe_tensor *x = moelab_unwrap(a, 1, name), *r;
    moe_compare c = compare_arg(cmp, 3, name);
    if (scm_is_real(b)) {
        MOELAB_CHECK(name, moe_compare_scalar(&r, x, scm_to_double(b), c));
    } else {
        moe_tensor *y = moelab_unwrap(b, 2, name);
        MOELAB_CHECK(name, moe_compare_op(&r, x, y, c));
    }
    scm_remember_upto_here_2(a, b);
    return moelab_wrap(r);
}
#undef FUNC_NAME

/* ---- reductions ------------------------------------------------------------------ */

SCM_DEFINE(moelab_reduce, "%reduce", 4, 0, 0, (SCM kind, SCM a, SCM dims, SCM keepdim),
           "Sum ('sum) or mean ('mean) over @var{dims} (#f: all, an integer, or a list).")
#define FUNC_NAME "reduce"
{
    bool mean = scm_is_eq(kind, scm_from_utf8_symbol("mean"));
    if (!mean && !scm_is_eq(kind, scm_from_utf8_symbol("sum")))
        scm_wrong_type_arg_msg(FUNC_NAME, 1, kind, "'sum or 'mean");
    const char *subr = mean ? "tmean" : "tsum";
    moe_tensor *x = moelab_unwrap(a, 2, subr), *r;
    int d[MOE_MAX_DIMS];
    int nd = moelab_to_dims(dims, d, 3, subr);
    if (scm_is_pair(dims) || scm_is_null(dims)) {
        if (nd == 0) /* an empty list reduces nothing: a copy */
            moelab_throw(subr, MOE_ERR_ARG, "empty list of dims (use #f to reduce over all dims)");
    }
    MOELAB_CHECK(subr, mean ? moe_mean(&r, x, nd, d, scm_is_true(keepdim))
                            : moe_sum(&r, x, nd, d, scm_is_true(keepdim)));
    scm_remember_upto_here_1(a);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_var, "%var", 4, 0, 0, (SCM a, SCM dims, SCM correction, SCM keepdim),
           "Variance over @var{dims} with @var{correction} (0 population, 1 Bessel).")
#define FUNC_NAME "var"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME), *r;
    int d[MOE_MAX_DIMS];
    int nd = moelab_to_dims(dims, d, 2, FUNC_NAME);
    if (scm_is_null(dims)) moelab_throw(FUNC_NAME, MOE_ERR_ARG, "empty list of dims (use #f for all)");
    int corr = moelab_to_int(correction, 3, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_var(&r, x, nd, d, corr, scm_is_true(keepdim)));
    scm_remember_upto_here_1(a);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_extreme, "%extreme", 4, 0, 0, (SCM kind, SCM a, SCM dim, SCM keepdim),
           "Max ('max) or min ('min) over one dim: two values, the extremes and "
           "their i64 indices.")
#define FUNC_NAME "extreme"
{
    bool is_max = scm_is_eq(kind, scm_from_utf8_symbol("max"));
    if (!is_max && !scm_is_eq(kind, scm_from_utf8_symbol("min")))
        scm_wrong_type_arg_msg(FUNC_NAME, 1, kind, "'max or 'min");
    const char *subr = is_max ? "tmax" : "tmin";
    moe_tensor *x = moelab_unwrap(a, 2, subr), *v, *i;
    int d = moelab_to_int(dim, 3, subr);
    MOELAB_CHECK(subr, is_max ? moe_max(&v, &i, x, d, scm_is_true(keepdim))
                              : moe_min(&v, &i, x, d, scm_is_true(keepdim)));
    scm_remember_upto_here_1(a);
    SCM sv = moelab_wrap(v);
    return scm_values(scm_list_2(sv, moelab_wrap(i)));
}
#undef FUNC_NAME

SCM_DEFINE(moelab_argmax, "%argmax", 3, 0, 0, (SCM a, SCM dim, SCM keepdim), "Index of the max along @var{dim}.")
#define FUNC_NAME "argmax"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME), *r;
    int d = moelab_to_int(dim, 2, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_argmax(&r, x, d, scm_is_true(keepdim)));
    scm_remember_upto_here_1(a);
    return moelab_wrap(r);
}
#undef FUNC_NAME

/* One tensor and a dim. */
#define DIM_OP(cname, primname, subr, call)                                    \
    SCM_DEFINE(cname, primname, 2, 0, 0, (SCM a, SCM dim), subr " along @var{dim}.") \
    {                                                                          \
        moe_tensor *x = moelab_unwrap(a, 1, subr), *r;                         \
        int d = moelab_to_int(dim, 2, subr);                                   \
        MOELAB_CHECK(subr, call);                                              \
        scm_remember_upto_here_1(a);                                           \
        return moelab_wrap(r);                                                 \
    }

DIM_OP(moelab_softmax, "%softmax", "softmax", moe_softmax(&r, x, d))
DIM_OP(moelab_log_softmax, "%log-softmax", "log-softmax", moe_log_softmax(&r, x, d))
DIM_OP(moelab_cumsum, "%cumsum", "cumsum", moe_cumsum(&r, x, d))
DIM_OP(moelab_unsqueeze, "%unsqueeze", "unsqueeze", moe_unsqueeze(&r, x, d))
DIM_OP(moelab_squeeze, "%squeeze", "squeeze", moe_squeeze(&r, x, d))

SCM_DEFINE(moelab_logsumexp, "%logsumexp", 3, 0, 0, (SCM a, SCM dim, SCM keepdim),
           "log(sum(exp(a))) along @var{dim}.")
#define FUNC_NAME "logsumexp"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME), *r;
    int d = moelab_to_int(dim, 2, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_logsumexp(&r, x, d, scm_is_true(keepdim)));
    scm_remember_upto_here_1(a);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_sum_to_shape, "%sum-to-shape", 2, 0, 0, (SCM g, SCM shape),
           "Sum @var{g} down to @var{shape} (undo a broadcast).")
#define FUNC_NAME "sum-to-shape"
{
    moe_tensor *x = moelab_unwrap(g, 1, FUNC_NAME), *r;
    int64_t sh[MOE_MAX_DIMS];
    int nd = moelab_to_shape(shape, sh, 2, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_sum_to_shape(&r, x, nd, sh));
    scm_remember_upto_here_1(g);
    return moelab_wrap(r);
}
#undef FUNC_NAME

/* ---- linear algebra and nn -------------------------------------------------------- */

SCM_DEFINE(moelab_linear, "%linear", 3, 0, 0, (SCM x, SCM w, SCM bias), "x Wᵀ + bias (bias may be #f).")
#define FUNC_NAME "linear"
{
    moe_tensor *tx = moelab_unwrap(x, 1, FUNC_NAME), *tw = moelab_unwrap(w, 2, FUNC_NAME),
               *tb = moelab_unwrap_opt(bias, 3, FUNC_NAME), *r;
    MOELAB_CHECK(FUNC_NAME, moe_linear(&r, tx, tw, tb));
    scm_remember_upto_here_2(x, w);
    scm_remember_upto_here_1(bias);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_rms_norm, "%rms-norm", 3, 0, 0, (SCM x, SCM weight, SCM eps),
           "RMS normalisation over the last dim (weight may be #f).")
#define FUNC_NAME "rms-norm"
{
    moe_tensor *tx = moelab_unwrap(x, 1, FUNC_NAME), *tw = moelab_unwrap_opt(weight, 2, FUNC_NAME), *r;
    double e = moelab_to_double(eps, 3, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_rms_norm(&r, tx, tw, e));
    scm_remember_upto_here_2(x, weight);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_layer_norm, "%layer-norm", 4, 0, 0, (SCM x, SCM weight, SCM bias, SCM eps),
           "Layer normalisation over the last dim (weight, bias may be #f).")
#define FUNC_NAME "layer-norm"
{
    moe_tensor *tx = moelab_unwrap(x, 1, FUNC_NAME), *tw = moelab_unwrap_opt(weight, 2, FUNC_NAME),
               *tb = moelab_unwrap_opt(bias, 3, FUNC_NAME), *r;
    double e = moelab_to_double(eps, 4, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_layer_norm(&r, tx, tw, tb, e));
    scm_remember_upto_here_2(x, weight);
    scm_remember_upto_here_1(bias);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_cross_entropy, "%cross-entropy", 3, 0, 0, (SCM logits, SCM targets, SCM ignore_index),
           "Mean cross-entropy of @var{logits} [N C] against integer @var{targets} [N].")
#define FUNC_NAME "cross-entropy"
{
    moe_tensor *tl = moelab_unwrap(logits, 1, FUNC_NAME), *tt = moelab_unwrap(targets, 2, FUNC_NAME), *r;
    int64_t ig = moelab_to_int64(ignore_index, 3, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_cross_entropy(&r, tl, tt, ig));
    scm_remember_upto_here_2(logits, targets);
    return moelab_wrap(r);
}
#undef FUNC_NAME

/* ---- indexing ------------------------------------------------------------------------- */

SCM_DEFINE(moelab_gather, "%gather", 3, 0, 0, (SCM a, SCM dim, SCM index), "torch.gather-like pick along @var{dim}.")
#define FUNC_NAME "gather"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME), *i = moelab_unwrap(index, 3, FUNC_NAME), *r;
    int d = moelab_to_int(dim, 2, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_gather(&r, x, d, i));
    scm_remember_upto_here_2(a, index);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_index_select, "%index-select", 3, 0, 0, (SCM a, SCM dim, SCM index),
           "Rows along @var{dim} picked by the 1-D @var{index}.")
#define FUNC_NAME "index-select"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME), *i = moelab_unwrap(index, 3, FUNC_NAME), *r;
    int d = moelab_to_int(dim, 2, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_index_select(&r, x, d, i));
    scm_remember_upto_here_2(a, index);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_scatter_add, "%scatter-add", 4, 0, 0, (SCM a, SCM dim, SCM index, SCM src),
           "a, then out[index[i][j]][j] += src[i][j] (dim 0).")
#define FUNC_NAME "scatter-add"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME), *i = moelab_unwrap(index, 3, FUNC_NAME),
               *s = moelab_unwrap(src, 4, FUNC_NAME), *r;
    int d = moelab_to_int(dim, 2, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_scatter_add(&r, x, d, i, s));
    scm_remember_upto_here_2(a, index);
    scm_remember_upto_here_1(src);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_index_add, "%index-add", 4, 0, 0, (SCM a, SCM dim, SCM index, SCM src),
           "a, then out.select(dim, index[i]) += src.select(dim, i).")
#define FUNC_NAME "index-add"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME), *i = moelab_unwrap(index, 3, FUNC_NAME),
               *s = moelab_unwrap(src, 4, FUNC_NAME), *r;
    int d = moelab_to_int(dim, 2, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_index_add(&r, x, d, i, s));
    scm_remember_upto_here_2(a, index);
    scm_remember_upto_here_1(src);
    return moelab_wrap(r);
}
#undef FUNC_NAME

/* The tensors of list L (checked first, so that nothing is held when a check
 * throws); returns a malloc'd array and its length in *N. */
static moe_tensor **tensor_list(SCM l, int pos, const char *subr, int *n)
{
    long len = scm_ilength(l);
    if (len < 0) scm_wrong_type_arg_msg(subr, pos, l, "list of tensors");
    if (len == 0) moelab_throw(subr, MOE_ERR_ARG, "needs at least one tensor");
    if (len > 1000000) moelab_throw(subr, MOE_ERR_ARG, "too many tensors (%ld)", len);
    for (SCM p = l; scm_is_pair(p); p = SCM_CDR(p)) moelab_unwrap(SCM_CAR(p), pos, subr);
    moe_tensor **ts = malloc((size_t)len * sizeof *ts);
    if (!ts) moelab_throw(subr, MOE_ERR_NOMEM, "no memory for %ld tensors", len);
    int i = 0;
    for (SCM p = l; scm_is_pair(p); p = SCM_CDR(p)) ts[i++] = scm_foreign_object_ref(SCM_CAR(p), 0);
    *n = (int)len;
    return ts;
}

SCM_DEFINE(moelab_join, "%join", 3, 0, 0, (SCM kind, SCM tensors, SCM dim),
           "Concatenate ('cat) or stack ('stack) the list @var{tensors} along @var{dim}.")
#define FUNC_NAME "join"
{
    bool stack = scm_is_eq(kind, scm_from_utf8_symbol("stack"));
    if (!stack && !scm_is_eq(kind, scm_from_utf8_symbol("cat")))
        scm_wrong_type_arg_msg(FUNC_NAME, 1, kind, "'cat or 'stack");
    const char *subr = stack ? "stack" : "cat";
    int d = moelab_to_int(dim, 3, subr), n;
    moe_tensor **ts = tensor_list(tensors, 2, subr, &n), *r;
    moe_status st = stack ? moe_stack(&r, n, ts, d) : moe_cat(&r, n, ts, d);
    free(ts);
    MOELAB_CHECK(subr, st);
    scm_remember_upto_here_1(tensors);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_split, "%split", 3, 0, 0, (SCM a, SCM sizes, SCM dim),
           "Split @var{a} along @var{dim} into pieces of @var{sizes} (a list); a list of views.")
#define FUNC_NAME "split"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME);
    int d = moelab_to_int(dim, 3, FUNC_NAME);
    long n = scm_ilength(sizes);
    if (n <= 0) scm_wrong_type_arg_msg(FUNC_NAME, 2, sizes, "non-empty list of sizes");
    if (n > 1000000) moelab_throw(FUNC_NAME, MOE_ERR_ARG, "too many pieces (%ld)", n);
    for (SCM p = sizes; scm_is_pair(p); p = SCM_CDR(p))
        if (!scm_is_signed_integer(SCM_CAR(p), 0, INT64_MAX))
            scm_wrong_type_arg_msg(FUNC_NAME, 2, sizes, "list of non-negative sizes");
    int64_t *sz = malloc((size_t)n * sizeof *sz);
    moe_tensor **outs = calloc((size_t)n, sizeof *outs);
    if (!sz || !outs) {
        free(sz);
        free(outs);
        moelab_throw(FUNC_NAME, MOE_ERR_NOMEM, "no memory for %ld pieces", n);
    }
    long i = 0;
    for (SCM p = sizes; scm_is_pair(p); p = SCM_CDR(p)) sz[i++] = scm_to_int64(SCM_CAR(p));
    moe_status st = moe_split(outs, x, (int)n, sz, d);
    free(sz);
    if (st != MOE_OK) {
        for (i = 0; i < n; i++) moe_tensor_release(outs[i]);
        free(outs);
        moelab_throw_last(FUNC_NAME);
    }
    SCM head = SCM_EOL, *tail = &head;
    for (i = 0; i < n; i++) { /* wrap all before anything can throw */
        *tail = scm_cons(SCM_BOOL_F, SCM_EOL);
        tail = SCM_CDRLOC(*tail);
    }
    i = 0;
    for (SCM p = head; scm_is_pair(p); p = SCM_CDR(p)) SCM_SETCAR(p, moelab_wrap(outs[i++]));
    free(outs);
    scm_remember_upto_here_1(a);
    return head;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_one_hot, "%one-hot", 2, 0, 0, (SCM index, SCM num_classes), "One-hot i64 encoding.")
#define FUNC_NAME "one-hot"
{
    moe_tensor *i = moelab_unwrap(index, 1, FUNC_NAME), *r;
    int64_t n = moelab_to_int64(num_classes, 2, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_one_hot(&r, i, n));
    scm_remember_upto_here_1(index);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_topk, "%topk", 4, 0, 0, (SCM a, SCM k, SCM dim, SCM largest),
           "Two values: the @var{k} largest (or smallest) along @var{dim}, sorted, and their i64 indices.")
#define FUNC_NAME "topk"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME), *v, *i;
    int64_t kk = moelab_to_int64(k, 2, FUNC_NAME);
    int d = moelab_to_int(dim, 3, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_topk(&v, &i, x, kk, d, scm_is_true(largest)));
    scm_remember_upto_here_1(a);
    SCM sv = moelab_wrap(v);
    return scm_values(scm_list_2(sv, moelab_wrap(i)));
}
#undef FUNC_NAME

SCM_DEFINE(moelab_sort, "%sort", 3, 0, 0, (SCM a, SCM dim, SCM descending),
           "Two values: @var{a} sorted along @var{dim} (stable) and the i64 indices.")
#define FUNC_NAME "tsort"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME), *v, *i;
    int d = moelab_to_int(dim, 2, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_sort(&v, &i, x, d, scm_is_true(descending)));
    scm_remember_upto_here_1(a);
    SCM sv = moelab_wrap(v);
    return scm_values(scm_list_2(sv, moelab_wrap(i)));
}
#undef FUNC_NAME

SCM_DEFINE(moelab_argsort, "%argsort", 3, 0, 0, (SCM a, SCM dim, SCM descending),
           "Indices that sort @var{a} along @var{dim}.")
#define FUNC_NAME "argsort"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME), *r;
    int d = moelab_to_int(dim, 2, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_argsort(&r, x, d, scm_is_true(descending)));
    scm_remember_upto_here_1(a);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_bincount, "%bincount", 3, 0, 0, (SCM input, SCM weights, SCM minlength),
           "Counts (or weight sums) of each value of the 1-D integer @var{input}.")
#define FUNC_NAME "bincount"
{
    moe_tensor *x = moelab_unwrap(input, 1, FUNC_NAME), *w = moelab_unwrap_opt(weights, 2, FUNC_NAME), *r;
    int64_t m = moelab_to_int64(minlength, 3, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_bincount(&r, x, w, m));
    scm_remember_upto_here_2(input, weights);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_histogram, "%histogram", 4, 0, 0, (SCM a, SCM bins, SCM lo, SCM hi),
           "@var{bins} equal-width bins over [lo, hi].")
#define FUNC_NAME "histogram"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME), *r;
    int64_t b = moelab_to_int64(bins, 2, FUNC_NAME);
    double l = moelab_to_double(lo, 3, FUNC_NAME), h = moelab_to_double(hi, 4, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_histogram(&r, x, b, l, h));
    scm_remember_upto_here_1(a);
    return moelab_wrap(r);
}
#undef FUNC_NAME

/* ---- views and layout --------------------------------------------------------------- */

SCM_DEFINE(moelab_reshape, "%reshape", 3, 0, 0, (SCM a, SCM shape, SCM copy_ok),
           "@var{a} with a new @var{shape} (one size may be -1); a view when possible, "
           "else a copy when @var{copy-ok} (reshape), else an error (view).")
#define FUNC_NAME "reshape"
{
    const char *subr = scm_is_true(copy_ok) ? "reshape" : "view";
    moe_tensor *x = moelab_unwrap(a, 1, subr), *r;
    int64_t sh[MOE_MAX_DIMS];
    int nd = moelab_to_shape_infer(shape, sh, 2, subr);
    MOELAB_CHECK(subr, scm_is_true(copy_ok) ? moe_reshape(&r, x, nd, sh) : moe_view(&r, x, nd, sh));
    scm_remember_upto_here_1(a);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_expand, "%expand", 2, 0, 0, (SCM a, SCM shape),
           "Broadcast size-1 dims of @var{a} to @var{shape} without copying (-1 keeps a size).")
#define FUNC_NAME "expand"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME), *r;
    int64_t sh[MOE_MAX_DIMS];
    int nd = moelab_to_shape_infer(shape, sh, 2, FUNC_NAME);
    for (int i = 0; i < nd; i++) { /* -1: keep the existing size of that dim */
        int src = i - (nd - x->ndim);
        if (sh[i] == -1) {
            if (src < 0)
                moelab_throw(FUNC_NAME, MOE_ERR_SHAPE, "-1 for a new leading dim in %s", moe_dims_str(nd, sh));
            sh[i] = x->shape[src];
        }
    }
    MOELAB_CHECK(FUNC_NAME, moe_expand(&r, x, nd, sh));
    scm_remember_upto_here_1(a);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_transpose, "%transpose", 3, 0, 0, (SCM a, SCM d0, SCM d1), "Swap dims @var{d0} and @var{d1}.")
#define FUNC_NAME "transpose"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME), *r;
    int i = moelab_to_int(d0, 2, FUNC_NAME), j = moelab_to_int(d1, 3, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_transpose(&r, x, i, j));
    scm_remember_upto_here_1(a);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_permute, "%permute", 2, 0, 0, (SCM a, SCM dims), "Reorder the dims of @var{a}.")
#define FUNC_NAME "permute"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME), *r;
    int p[MOE_MAX_DIMS];
    if (scm_is_false(dims) || scm_is_exact_integer(dims)) scm_wrong_type_arg_msg(FUNC_NAME, 2, dims, "list of dims");
    int n = moelab_to_dims(dims, p, 2, FUNC_NAME);
    if (n != x->ndim)
        moelab_throw(FUNC_NAME, MOE_ERR_ARG, "%d dims given for a %d-d tensor of shape %s", n, x->ndim,
                     moe_shape_str(x));
    for (int i = 0; i < n; i++)
        if (p[i] < 0) p[i] += n;
    MOELAB_CHECK(FUNC_NAME, moe_permute(&r, x, p));
    scm_remember_upto_here_1(a);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_narrow, "%narrow", 4, 0, 0, (SCM a, SCM dim, SCM start, SCM length),
           "Elements [start, start+length) of @var{dim} (a view).")
#define FUNC_NAME "narrow"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME), *r;
    int d = moelab_to_int(dim, 2, FUNC_NAME);
    int64_t s = moelab_to_int64(start, 3, FUNC_NAME), l = moelab_to_int64(length, 4, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_narrow(&r, x, d, s, l));
    scm_remember_upto_here_1(a);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_select, "%select", 3, 0, 0, (SCM a, SCM dim, SCM index),
           "Position @var{index} of @var{dim}, dropping the dim (a view).")
#define FUNC_NAME "tselect"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME), *r;
    int d = moelab_to_int(dim, 2, FUNC_NAME);
    int64_t i = moelab_to_int64(index, 3, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_select(&r, x, d, i));
    scm_remember_upto_here_1(a);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_to_dtype_prim, "%to-dtype", 2, 0, 0, (SCM a, SCM dtype), "@var{a} converted to @var{dtype}.")
#define FUNC_NAME "to-dtype"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME), *r;
    moe_dtype d = moelab_to_dtype(dtype, 2, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_to_dtype(&r, x, d));
    scm_remember_upto_here_1(a);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_to_device_prim, "%to-device", 2, 0, 0, (SCM a, SCM device), "@var{a} moved to @var{device}.")
#define FUNC_NAME "tensor-to"
{
    moe_tensor *x = moelab_unwrap(a, 1, FUNC_NAME), *r;
    moe_device d = moelab_to_device(device, 2, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_to_device(&r, x, d));
    scm_remember_upto_here_1(a);
    return moelab_wrap(r);
}
#undef FUNC_NAME

void moelab_init_ops_func(void)
{
#ifndef SCM_MAGIC_SNARFER
#include "ops-func.x"
#endif
}
