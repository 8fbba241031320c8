/* stubs.c — TEMPORARY weak placeholders so tests link while op families are
 * being written. Deleted before landing. */
#include "internal.h"

__attribute__((weak)) moe_status moe_add(moe_tensor **out, moe_tensor *a, moe_tensor *b)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "add", "not implemented yet");
}
__attribute__((weak)) moe_status moe_sub(moe_tensor **out, moe_tensor *a, moe_tensor *b)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "sub", "not implemented yet");
}
__attribute__((weak)) moe_status moe_mul(moe_tensor **out, moe_tensor *a, moe_tensor *b)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "mul", "not implemented yet");
}
__attribute__((weak)) moe_status moe_div(moe_tensor **out, moe_tensor *a, moe_tensor *b)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "div", "not implemented yet");
}
__attribute__((weak)) moe_status moe_pow(moe_tensor **out, moe_tensor *a, moe_tensor *b)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "pow", "not implemented yet");
}
__attribute__((weak)) moe_status moe_add_scalar(moe_tensor **out, moe_tensor *a, double s)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "add_scalar", "not implemented yet");
}
__attribute__((weak)) moe_status moe_mul_scalar(moe_tensor **out, moe_tensor *a, double s)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "mul_scalar", "not implemented yet");
}
__attribute__((weak)) moe_status moe_rsub_scalar(moe_tensor **out, moe_tensor *a, double s)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "rsub_scalar", "not implemented yet");
}
__attribute__((weak)) moe_status moe_rdiv_scalar(moe_tensor **out, moe_tensor *a, double s)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "rdiv_scalar", "not implemented yet");
}
__attribute__((weak)) moe_status moe_pow_scalar(moe_tensor **out, moe_tensor *a, double s)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "pow_scalar", "not implemented yet");
}
__attribute__((weak)) moe_status moe_neg(moe_tensor **out, moe_tensor *a)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "neg", "not implemented yet");
}
__attribute__((weak)) moe_status moe_exp(moe_tensor **out, moe_tensor *a)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "exp", "not implemented yet");
}
__attribute__((weak)) moe_status moe_log(moe_tensor **out, moe_tensor *a)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "log", "not implemented yet");
}
__attribute__((weak)) moe_status moe_sqrt(moe_tensor **out, moe_tensor *a)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "sqrt", "not implemented yet");
}
__attribute__((weak)) moe_status moe_rsqrt(moe_tensor **out, moe_tensor *a)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "rsqrt", "not implemented yet");
}
__attribute__((weak)) moe_status moe_abs(moe_tensor **out, moe_tensor *a)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "abs", "not implemented yet");
}
__attribute__((weak)) moe_status moe_tanh(moe_tensor **out, moe_tensor *a)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "tanh", "not implemented yet");
}
__attribute__((weak)) moe_status moe_sigmoid(moe_tensor **out, moe_tensor *a)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "sigmoid", "not implemented yet");
}
__attribute__((weak)) moe_status moe_silu(moe_tensor **out, moe_tensor *a)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "silu", "not implemented yet");
}
__attribute__((weak)) moe_status moe_relu(moe_tensor **out, moe_tensor *a)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "relu", "not implemented yet");
}
__attribute__((weak)) moe_status moe_gelu(moe_tensor **out, moe_tensor *a, moe_gelu_kind kind)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "gelu", "not implemented yet");
}
__attribute__((weak)) moe_status moe_clamp(moe_tensor **out, moe_tensor *a, double lo, double hi)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "clamp", "not implemented yet");
}
__attribute__((weak)) moe_status moe_where(moe_tensor **out, moe_tensor *cond, moe_tensor *a, moe_tensor *b)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "where", "not implemented yet");
}
__attribute__((weak)) moe_status moe_masked_fill(moe_tensor **out, moe_tensor *a, moe_tensor *mask, double value)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "masked_fill", "not implemented yet");
}
__attribute__((weak)) moe_status moe_dropout(moe_tensor **out, moe_tensor *a, double p, bool training, moe_rng *rng)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "dropout", "not implemented yet");
}
__attribute__((weak)) moe_status moe_compare_op(moe_tensor **out, moe_tensor *a, moe_tensor *b, moe_compare cmp)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "compare_op", "not implemented yet");
}
__attribute__((weak)) moe_status moe_compare_scalar(moe_tensor **out, moe_tensor *a, double s, moe_compare cmp)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "compare_scalar", "not implemented yet");
}
__attribute__((weak)) moe_status moe_count_nonfinite(const moe_tensor *a, int64_t *nan_count, int64_t *inf_count)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "count_nonfinite", "not implemented yet");
}
__attribute__((weak)) moe_status moe_sum(moe_tensor **out, moe_tensor *a, int ndims, const int *dims, bool keepdim)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "sum", "not implemented yet");
}
__attribute__((weak)) moe_status moe_mean(moe_tensor **out, moe_tensor *a, int ndims, const int *dims, bool keepdim)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "mean", "not implemented yet");
}
__attribute__((weak)) moe_status moe_var(moe_tensor **out, moe_tensor *a, int ndims, const int *dims, int correction, bool keepdim)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "var", "not implemented yet");
}
__attribute__((weak)) moe_status moe_max(moe_tensor **values, moe_tensor **indices, moe_tensor *a, int dim, bool keepdim)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "max", "not implemented yet");
}
__attribute__((weak)) moe_status moe_min(moe_tensor **values, moe_tensor **indices, moe_tensor *a, int dim, bool keepdim)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "min", "not implemented yet");
}
__attribute__((weak)) moe_status moe_max_all(moe_tensor **out, moe_tensor *a)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "max_all", "not implemented yet");
}
__attribute__((weak)) moe_status moe_min_all(moe_tensor **out, moe_tensor *a)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "min_all", "not implemented yet");
}
__attribute__((weak)) moe_status moe_argmax(moe_tensor **out, moe_tensor *a, int dim, bool keepdim)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "argmax", "not implemented yet");
}
__attribute__((weak)) moe_status moe_softmax(moe_tensor **out, moe_tensor *a, int dim)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "softmax", "not implemented yet");
}
__attribute__((weak)) moe_status moe_log_softmax(moe_tensor **out, moe_tensor *a, int dim)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "log_softmax", "not implemented yet");
}
__attribute__((weak)) moe_status moe_logsumexp(moe_tensor **out, moe_tensor *a, int dim, bool keepdim)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "logsumexp", "not implemented yet");
}
__attribute__((weak)) moe_status moe_cumsum(moe_tensor **out, moe_tensor *a, int dim)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "cumsum", "not implemented yet");
}
__attribute__((weak)) moe_status moe_matmul(moe_tensor **out, moe_tensor *a, moe_tensor *b)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "matmul", "not implemented yet");
}
__attribute__((weak)) moe_status moe_bmm(moe_tensor **out, moe_tensor *a, moe_tensor *b)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "bmm", "not implemented yet");
}
__attribute__((weak)) moe_status moe_linear(moe_tensor **out, moe_tensor *x, moe_tensor *w, moe_tensor *bias)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "linear", "not implemented yet");
}
__attribute__((weak)) moe_status moe_rms_norm(moe_tensor **out, moe_tensor *x, moe_tensor *weight, double eps)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "rms_norm", "not implemented yet");
}
__attribute__((weak)) moe_status moe_layer_norm(moe_tensor **out, moe_tensor *x, moe_tensor *weight, moe_tensor *bias, double eps)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "layer_norm", "not implemented yet");
}
__attribute__((weak)) moe_status moe_cross_entropy(moe_tensor **out, moe_tensor *logits, moe_tensor *targets, int64_t ignore_index)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "cross_entropy", "not implemented yet");
}
__attribute__((weak)) moe_status moe_embedding(moe_tensor **out, moe_tensor *weight, moe_tensor *ids)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "embedding", "not implemented yet");
}
__attribute__((weak)) moe_status moe_gather(moe_tensor **out, moe_tensor *a, int dim, moe_tensor *index)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "gather", "not implemented yet");
}
__attribute__((weak)) moe_status moe_scatter_add(moe_tensor **out, moe_tensor *a, int dim, moe_tensor *index, moe_tensor *src)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "scatter_add", "not implemented yet");
}
__attribute__((weak)) moe_status moe_index_select(moe_tensor **out, moe_tensor *a, int dim, moe_tensor *index)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "index_select", "not implemented yet");
}
__attribute__((weak)) moe_status moe_index_add(moe_tensor **out, moe_tensor *a, int dim, moe_tensor *index, moe_tensor *src)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "index_add", "not implemented yet");
}
__attribute__((weak)) moe_status moe_cat(moe_tensor **out, int n, moe_tensor *const *tensors, int dim)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "cat", "not implemented yet");
}
__attribute__((weak)) moe_status moe_stack(moe_tensor **out, int n, moe_tensor *const *tensors, int dim)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "stack", "not implemented yet");
}
__attribute__((weak)) moe_status moe_split(moe_tensor **outs, moe_tensor *a, int n, const int64_t *sizes, int dim)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "split", "not implemented yet");
}
__attribute__((weak)) moe_status moe_one_hot(moe_tensor **out, moe_tensor *index, int64_t num_classes)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "one_hot", "not implemented yet");
}
__attribute__((weak)) moe_status moe_topk(moe_tensor **values, moe_tensor **indices, moe_tensor *a, int64_t k, int dim, bool largest)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "topk", "not implemented yet");
}
__attribute__((weak)) moe_status moe_sort(moe_tensor **values, moe_tensor **indices, moe_tensor *a, int dim, bool descending)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "sort", "not implemented yet");
}
__attribute__((weak)) moe_status moe_argsort(moe_tensor **out, moe_tensor *a, int dim, bool descending)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "argsort", "not implemented yet");
}
__attribute__((weak)) moe_status moe_bincount(moe_tensor **out, moe_tensor *input, moe_tensor *weights, int64_t minlength)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "bincount", "not implemented yet");
}
__attribute__((weak)) moe_status moe_histogram(moe_tensor **out, moe_tensor *a, int64_t bins, double lo, double hi)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, "histogram", "not implemented yet");
}
