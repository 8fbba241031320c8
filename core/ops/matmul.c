/* matmul.c — matmul, bmm and linear, each forward beside its backward, on the
 * strided batched GEMM of kernels/cpu/gemm.c.
 *
 * Dimension letters: B… the broadcast batch dims, M rows of the left operand,
 * K the inner dim, N columns of the right operand. linear: x [… K] (K in
 * features), W [N K] (N out features), bias [N]; it is x @ Wᵀ with Wᵀ a
 * transposed view, never a copy.
 *
 * Operands reach BLAS without copies whenever their last two strides allow
 * (row-major, or a transposed view); otherwise they are made contiguous. A
 * 1-D left operand is a row [1 K], a 1-D right operand a column [K 1], and the
 * added dim is dropped from the result. f32/f64 compute natively; bf16 in
 * f32 on the CPU, while cuBLASLt reads and writes bf16 itself (f32
 * accumulation) so a bf16 product moves no extra bytes.
 *
 * Devices: the innermost GEMM call (run_gemm) picks moe_cpu_gemm or the
 * cuBLASLt driver moe_cuda_gemm (kernels/cuda/blaslt.cu); both take the same
 * strided description, fold batch dims the same way and reduce over a
 * broadcast batch in batch order. On the GPU a bias is the GEMM's epilogue
 * and a reduced bf16 gradient accumulates in f32. */
#include <string.h>

#include "../../kernels/cpu/gemm.h"
#include "../../kernels/cuda/blaslt.h"
#include "device.h"
#include "internal.h"

enum { LEFT, RIGHT };

/* One product: batch shape, sizes, and the result's shape. */
typedef struct mm_shape {
    int nb;
    int64_t bshape[MOE_MAX_DIMS]; /* B… */
    int64_t m, k, n;
    bool a_vec, b_vec; /* 1-D operands */
    int out_ndim;
    int64_t out_shape[MOE_MAX_DIMS];
} mm_shape;

/* Work out the product of A and a right operand of logical shape B_SHAPE
 * (for linear: Wᵀ). The caller has checked ranks and inner dims. */
static moe_status plan_shape(const char *op, mm_shape *s, const moe_tensor *a, int b_ndim,
                             const int64_t *b_shape)
{
    s->a_vec = a->ndim == 1;
    s->b_vec = b_ndim == 1;
    s->k = a->shape[a->ndim - 1];
    s->m = s->a_vec ? 1 : a->shape[a->ndim - 2];
    s->n = s->b_vec ? 1 : b_shape[b_ndim - 1];
    int na = a->ndim > 2 ? a->ndim - 2 : 0, nb = b_ndim > 2 ? b_ndim - 2 : 0;
    s->nb = na > nb ? na : nb;
    for (int d = 0; d < s->nb; d++) {
        int ia = d - (s->nb - na), ib = d - (s->nb - nb);
        int64_t sa = ia >= 0 ? a->shape[ia] : 1, sb = ib >= 0 ? b_shape[ib] : 1;
        if (sa != sb && sa != 1 && sb != 1)
            return moe_fail(MOE_ERR_SHAPE, op, "batch dims do not broadcast: %s @ %s",
                            moe_shape_str(a), moe_dims_str(b_ndim, b_shape));
        s->bshape[d] = sa == 1 ? sb : sa;
    }
    s->out_ndim = 0;
    for (int d = 0; d < s->nb; d++) s->out_shape[s->out_ndim++] = s->bshape[d];
    if (!s->a_vec) s->out_shape[s->out_ndim++] = s->m;
    if (!s->b_vec) s->out_shape[s->out_ndim++] = s->n;
    return MOE_OK;
}

/* Tensor T [B… rows cols] (or 1-D, promoted by ROLE) as a GEMM operand over
 * the product's batch: batch dims T lacks or broadcasts get stride 0. */
static moe_gemm_mat mat_of(const moe_tensor *t, int role, const mm_shape *s)
{
    moe_gemm_mat m = {.data = moe_tensor_data(t)};
    int nd = t->ndim;
    if (nd == 1) {
        if (role == LEFT) { /* [1 K] */
            m.rows = 1;
            m.cols = t->shape[0];
            m.cs = t->strides[0];
        } else { /* [K 1] */
            m.rows = t->shape[0];
            m.cols = 1;
            m.rs = t->strides[0];
        }
        return m;
    }
    m.rows = t->shape[nd - 2];
    m.cols = t->shape[nd - 1];
    m.rs = t->strides[nd - 2];
    m.cs = t->strides[nd - 1];
    int tb = nd - 2, lead = s->nb - tb;
    for (int d = 0; d < tb; d++)
        m.bstride[lead + d] = t->shape[d] == s->bshape[lead + d] ? t->strides[d] : 0;
    return m;
}

/* The result (or its gradient) T, shaped like the product's output. */
static moe_gemm_mat mat_of_result(const moe_tensor *t, const mm_shape *s)
{
    moe_gemm_mat r = {.data = moe_tensor_data(t), .rows = s->m, .cols = s->n};
    int d = 0;
    for (; d < s->nb; d++) r.bstride[d] = t->strides[d];
    r.rs = s->a_vec ? 0 : t->strides[d++];
    r.cs = s->b_vec ? 1 : t->strides[d++];
    return r;
}

static moe_gemm_mat mat_t(moe_gemm_mat m)
{
    int64_t t = m.rows;
    m.rows = m.cols;
    m.cols = t;
    t = m.rs;
    m.rs = m.cs;
    m.cs = t;
    return m;
}

enum { AS_LEFT = LEFT, AS_RIGHT = RIGHT, AS_RESULT };

/* The dtype GEMM operands are read in for a result of dtype ODT on DEVICE:
 * the compute dtype, except that the GPU reads bf16 as it is. */
static moe_dtype operand_dtype(moe_dtype odt, const moe_tensor *on)
{
    if (moe_on_cuda(on) && odt == MOE_BF16) return MOE_BF16;
    return moe_dtype_compute(odt);
}

/* C (CD) = A @ B (AB dtype), += when ACCUMULATE, on the device of ON. GPU_BIAS
 * (device pointer, CD, or NULL) is added to every row by the GEMM itself. */
static moe_status run_gemm(const moe_tensor *on, moe_dtype ab, moe_dtype cd, const mm_shape *s,
                           moe_gemm_mat a, moe_gemm_mat b, moe_gemm_mat c, bool accumulate,
                           const void *gpu_bias)
{
    if (moe_on_cuda(on))
        return MOE_CUDA(moe_cuda_gemm(ab, cd, s->nb, s->bshape, a, b, c, accumulate, gpu_bias));
    return moe_cpu_gemm(ab, s->nb, s->bshape, a, b, c, accumulate);
}

/* T as a compute-dtype operand BLAS reads directly: T itself (retained) when
 * its strides allow, else a contiguous copy. */
static moe_status operand(moe_tensor **out, moe_tensor *t, moe_dtype cdt, int role,
                          const mm_shape *s)
{
    if (t->dtype == cdt) {
        moe_gemm_mat m = role == AS_RESULT ? mat_of_result(t, s) : mat_of(t, role, s);
        if (moe_gemm_mat_ok(&m)) {
            *out = moe_tensor_retain(t);
            return MOE_OK;
        }
    }
    return moe_as_compute(out, t, cdt);
}

/* Does the result matrix C repeat over a batch dim (a reduction)? */
static bool reduces(const moe_gemm_mat *c, const mm_shape *s)
{
    for (int d = 0; d < s->nb; d++)
        if (c->bstride[d] == 0 && s->bshape[d] > 1) return true;
    return false;
}

/* A fresh gradient buffer shaped like T in dtype CDT on T's device, with its
 * matrix view; zeroed when it is the target of a reduction (which
 * accumulates in f32 when CDT is bf16). */
static moe_status grad_buffer(moe_tensor **out, moe_gemm_mat *m, bool *reduce, const moe_tensor *t,
                              moe_dtype cdt, int role, const mm_shape *s)
{
    MOE_TRY(moe_tensor_empty(out, cdt, t->device, t->ndim, t->shape));
    *m = mat_of(*out, role, s);
    *reduce = reduces(m, s);
    if (!*reduce) return MOE_OK;
    if (cdt == MOE_BF16) {
        moe_tensor_release(*out);
        MOE_TRY(moe_tensor_empty(out, MOE_F32, t->device, t->ndim, t->shape));
        *m = mat_of(*out, role, s);
    }
    return moe_fill_elements(*out, 0.0);
}

/* Hand G (compute dtype) back in the dtype of input T. */
static moe_status to_input_dtype(moe_tensor **gin, moe_tensor *g, const moe_tensor *t)
{
    if (g->dtype == t->dtype) {
        *gin = moe_tensor_retain(g);
        return MOE_OK;
    }
    return moe_to_dtype(gin, g, t->dtype);
}

/* ---- the shared forward and backward ---------------------------------------------- */

/* saved[0] = a, saved[1] = b (matmul/bmm) or W (linear); inputs as saved,
 * plus bias for linear. iargs[0]: 1 for linear. */
static moe_status mm_backward(moe_node *nd, moe_tensor *g, moe_tensor **gin)
{
    bool linear = nd->iargs[0] != 0;
    moe_tensor *a = nd->saved[0], *b = nd->saved[1];
    moe_tensor *cg = NULL, *ca = NULL, *cb = NULL, *da = NULL, *db = NULL, *gc = NULL, *dbias = NULL;
    mm_shape s;
    moe_status st = MOE_OK;
    if (linear) {
        int64_t wt[2] = {b->shape[1], b->shape[0]};
        MOE_TRYG(plan_shape(nd->name, &s, a, 2, wt));
    } else {
        MOE_TRYG(plan_shape(nd->name, &s, a, b->ndim, b->shape));
    }
    moe_dtype cdt = operand_dtype(nd->out_dtype, g);
    MOE_TRYG(operand(&cg, g, cdt, AS_RESULT, &s));
    moe_gemm_mat G = mat_of_result(cg, &s), C;
    bool reduce;

    if (nd->inputs[0]) { /* dA = dC @ Bᵀ  (linear: dx = g W) */
        MOE_TRYG(operand(&cb, b, cdt, RIGHT, &s));
        moe_gemm_mat Bt = mat_of(cb, RIGHT, &s);
        if (!linear) Bt = mat_t(Bt); /* W [N K] already is (Wᵀ)ᵀ */
        MOE_TRYG(grad_buffer(&da, &C, &reduce, a, cdt, LEFT, &s));
        MOE_TRYG(run_gemm(da, cdt, da->dtype, &s, G, Bt, C, reduce, NULL));
        MOE_TRYG(to_input_dtype(&gin[0], da, a));
    }
    if (nd->inputs[1]) {
        MOE_TRYG(operand(&ca, a, cdt, LEFT, &s));
        moe_gemm_mat A = mat_of(ca, LEFT, &s);
        MOE_TRYG(grad_buffer(&db, &C, &reduce, b, cdt, RIGHT, &s));
        if (linear) /* dW [N K] = gᵀ x, summed over the leading dims */
            MOE_TRYG(run_gemm(db, cdt, db->dtype, &s, mat_t(G), A, C, reduce, NULL));
        else /* dB = Aᵀ @ dC */
            MOE_TRYG(run_gemm(db, cdt, db->dtype, &s, mat_t(A), G, C, reduce, NULL));
        MOE_TRYG(to_input_dtype(&gin[1], db, b));
    }
    if (linear && nd->n_inputs == 3 && nd->inputs[2]) { /* dbias = sum of g over rows */
        moe_tensor *bias = nd->inputs[2];
        moe_dtype sdt = moe_dtype_compute(cdt); /* the sum's dtype (f32 for bf16) */
        MOE_TRYG(moe_as_compute(&gc, g, cdt));
        MOE_TRYG(moe_tensor_empty(&dbias, sdt, g->device, bias->ndim, bias->shape));
        int64_t rows = s.n ? moe_tensor_numel(gc) / s.n : 0;
        if (moe_on_cuda(gc))
            MOE_TRYG(MOE_CUDA(moe_cuda_sum_rows(sdt, cdt, moe_tensor_data(dbias), moe_tensor_data(gc), rows, s.n)));
        else
            moe_cpu_sum_rows(cdt, moe_tensor_data(dbias), moe_tensor_data(gc), rows, s.n);
        MOE_TRYG(to_input_dtype(&gin[2], dbias, bias));
    }
done:
    moe_tensor_release(cg);
    moe_tensor_release(ca);
    moe_tensor_release(cb);
    moe_tensor_release(da);
    moe_tensor_release(db);
    moe_tensor_release(gc);
    moe_tensor_release(dbias);
    return st;
}

/* out = A @ B (+ bias), B being W [N K] used as Wᵀ when LINEAR. */
static moe_status mm_forward(const char *op, moe_tensor **out, moe_tensor *a, moe_tensor *b,
                             moe_tensor *bias, bool linear, const mm_shape *s)
{
    *out = NULL;
    moe_dtype odt = moe_dtype_promote(a->dtype, b->dtype);
    if (bias) odt = moe_dtype_promote(odt, bias->dtype);
    moe_dtype cdt = operand_dtype(odt, a);
    moe_tensor *ca = NULL, *cb = NULL, *cbias = NULL, *c = NULL, *r = NULL;
    moe_status st = MOE_OK;
    MOE_TRYG(operand(&ca, a, cdt, LEFT, s));
    MOE_TRYG(operand(&cb, b, cdt, RIGHT, s));
    MOE_TRYG(moe_tensor_empty(&c, cdt, a->device, s->out_ndim, s->out_shape));
    const void *gpu_bias = NULL; /* the GPU adds the bias in the GEMM's epilogue */
    if (bias) {
        MOE_TRYG(moe_as_compute(&cbias, bias, cdt));
        if (moe_on_cuda(c))
            gpu_bias = moe_tensor_data(cbias);
        else /* the CPU GEMM accumulates onto rows holding the bias */
            moe_cpu_fill_rows(cdt, moe_tensor_data(c), s->n ? moe_tensor_numel(c) / s->n : 0, s->n,
                              moe_tensor_data(cbias));
    }
    moe_gemm_mat A = mat_of(ca, LEFT, s), B = mat_of(cb, RIGHT, s);
    if (linear) B = mat_t(B);
    MOE_TRYG(run_gemm(c, cdt, cdt, s, A, B, mat_of_result(c, s), bias && !gpu_bias, gpu_bias));
    if (odt != cdt) {
        MOE_TRYG(moe_to_dtype(&r, c, odt));
    } else {
        r = c;
        c = NULL;
    }
    moe_tensor *inputs[3] = {a, b, bias}, *saved[2] = {a, b};
    MOE_TRYG(moe_autograd_record(r, op, mm_backward, bias ? 3 : 2, inputs, 2, saved, NULL, NULL));
    if (r->grad_fn) r->grad_fn->iargs[0] = linear;
    *out = r;
    r = NULL;
done:
    moe_tensor_release(ca);
    moe_tensor_release(cb);
    moe_tensor_release(cbias);
    moe_tensor_release(c);
    moe_tensor_release(r);
    return st;
}

static moe_status check_operands(const char *op, moe_tensor *a, moe_tensor *b)
{
    MOE_CHECK_NOT_NULL(op, a);
    MOE_CHECK_NOT_NULL(op, b);
    MOE_CHECK_SAME_DEVICE(op, a, b);
    MOE_CHECK_FLOAT(op, a);
    MOE_CHECK_FLOAT(op, b);
    return MOE_OK;
}

/* ---- public ops ------------------------------------------------------------------------ */

const char *moe_matmul_cpu_kernel(void)
{
    return moe_cpu_sgemm_kernel();
}

moe_status moe_matmul(moe_tensor **out, moe_tensor *a, moe_tensor *b)
{
    *out = NULL;
    MOE_TRY(check_operands("matmul", a, b));
    if (a->ndim == 0 || b->ndim == 0)
        return moe_fail(MOE_ERR_SHAPE, "matmul", "both operands need at least 1 dim, got %s @ %s",
                        moe_shape_str(a), moe_shape_str(b));
    int64_t kb = b->ndim == 1 ? b->shape[0] : b->shape[b->ndim - 2];
    if (a->shape[a->ndim - 1] != kb)
        return moe_fail(MOE_ERR_SHAPE, "matmul", "inner dimensions differ: %s @ %s", moe_shape_str(a),
                        moe_shape_str(b));
    mm_shape s;
    MOE_TRY(plan_shape("matmul", &s, a, b->ndim, b->shape));
    return mm_forward("matmul", out, a, b, NULL, false, &s);
}

moe_status moe_bmm(moe_tensor **out, moe_tensor *a, moe_tensor *b)
{
    *out = NULL;
    MOE_TRY(check_operands("bmm", a, b));
    if (a->ndim != 3 || b->ndim != 3)
        return moe_fail(MOE_ERR_SHAPE, "bmm", "expected [B M K] @ [B K N], got %s @ %s",
                        moe_shape_str(a), moe_shape_str(b));
    if (a->shape[0] != b->shape[0])
        return moe_fail(MOE_ERR_SHAPE, "bmm", "batch sizes differ: %s @ %s", moe_shape_str(a),
                        moe_shape_str(b));
    if (a->shape[2] != b->shape[1])
        return moe_fail(MOE_ERR_SHAPE, "bmm", "inner dimensions differ: %s @ %s", moe_shape_str(a),
                        moe_shape_str(b));
    mm_shape s;
    MOE_TRY(plan_shape("bmm", &s, a, b->ndim, b->shape));
    return mm_forward("bmm", out, a, b, NULL, false, &s);
}

moe_status moe_linear(moe_tensor **out, moe_tensor *x, moe_tensor *w, moe_tensor *bias)
{
    *out = NULL;
    MOE_TRY(check_operands("linear", x, w));
    if (w->ndim != 2)
        return moe_fail(MOE_ERR_SHAPE, "linear", "weight must be [out in], got %s", moe_shape_str(w));
    if (x->ndim == 0 || x->shape[x->ndim - 1] != w->shape[1])
        return moe_fail(MOE_ERR_SHAPE, "linear",
                        "input %s does not fit weight %s (last dim must be %lld in features)",
                        moe_shape_str(x), moe_shape_str(w), (long long)w->shape[1]);
    if (bias) {
        MOE_CHECK_SAME_DEVICE("linear", x, bias);
        MOE_CHECK_FLOAT("linear", bias);
        if (bias->ndim != 1 || bias->shape[0] != w->shape[0])
            return moe_fail(MOE_ERR_SHAPE, "linear", "bias %s does not match weight %s (expected [%lld])",
                            moe_shape_str(bias), moe_shape_str(w), (long long)w->shape[0]);
    }
    int64_t wt[2] = {w->shape[1], w->shape[0]}; /* Wᵀ [K N] */
    mm_shape s;
    MOE_TRY(plan_shape("linear", &s, x, 2, wt));
    return mm_forward("linear", out, x, w, bias, true, &s);
}
