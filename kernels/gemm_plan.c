/* gemm_plan.c — operand layouts and batch-dim folding for every GEMM backend
 * (see gemm_plan.h). */
#include "gemm_plan.h"

static inline int64_t max1(int64_t v) { return v > 1 ? v : 1; }

/* Strides of size-1 dims are never used, so they do not constrain the layout. */
static bool mat_layout(const moe_gemm_mat *m, moe_gemm_layout *l)
{
    int64_t r = m->rows, c = m->cols;
    if ((c <= 1 || m->cs == 1) && (r <= 1 || m->rs >= max1(c))) {
        l->trans = false;
        l->ld = r <= 1 ? max1(c) : m->rs;
        return true;
    }
    if ((r <= 1 || m->rs == 1) && (c <= 1 || m->cs >= max1(r))) {
        l->trans = true;
        l->ld = c <= 1 ? max1(r) : m->cs;
        return true;
    }
    return false;
}

bool moe_gemm_mat_ok(const moe_gemm_mat *m)
{
    moe_gemm_layout l;
    return mat_layout(m, &l);
}

/* The result must be row-major: BLAS writes C[i][j] at i*ldc + j. */
static bool out_layout(const moe_gemm_mat *c, int64_t *ldc)
{
    if (!(c->cols <= 1 || c->cs == 1)) return false;
    if (c->rows <= 1) {
        *ldc = max1(c->cols);
        return true;
    }
    *ldc = c->rs;
    return c->rs >= max1(c->cols);
}

/* Merge a batch dim of N items at stride S (outside the rows) into the rows. */
static bool fold_rows(moe_gemm_mat *m, int64_t n, int64_t s)
{
    if (m->rows == 1)
        m->rs = s;
    else if (s != m->rows * m->rs)
        return false;
    m->rows *= n;
    return true;
}

static bool fold_cols(moe_gemm_mat *m, int64_t n, int64_t s)
{
    if (m->cols == 1)
        m->cs = s;
    else if (s != m->cols * m->cs)
        return false;
    m->cols *= n;
    return true;
}

/* Try to absorb batch dim D (the innermost left) into M (B is shared across
 * it) or into K (C is shared across it: a reduction). */
static bool try_fold(moe_gemm_mat *a, moe_gemm_mat *b, moe_gemm_mat *c, int d, int64_t n,
                     bool accumulate)
{
    moe_gemm_layout la, lb;
    int64_t ldc;
    if (b->bstride[d] == 0) {
        moe_gemm_mat a2 = *a, c2 = *c;
        if (fold_rows(&a2, n, a->bstride[d]) && fold_rows(&c2, n, c->bstride[d]) &&
            mat_layout(&a2, &la) && out_layout(&c2, &ldc)) {
            *a = a2;
            *c = c2;
            return true;
        }
    }
    if (c->bstride[d] == 0 && accumulate) {
        moe_gemm_mat a2 = *a, b2 = *b;
        if (fold_cols(&a2, n, a->bstride[d]) && fold_rows(&b2, n, b->bstride[d]) &&
            mat_layout(&a2, &la) && mat_layout(&b2, &lb)) {
            *a = a2;
            *b = b2;
            return true;
        }
    }
    return false;
}

moe_status moe_gemm_plan_make(moe_gemm_plan *p, int nb, const int64_t *bshape, moe_gemm_mat a,
                              moe_gemm_mat b, moe_gemm_mat c, bool accumulate)
{
    if (a.cols != b.rows || a.rows != c.rows || b.cols != c.cols)
        return moe_fail(MOE_ERR_SHAPE, "gemm",
                        "operands do not fit: [%lld %lld] @ [%lld %lld] -> [%lld %lld]",
                        (long long)a.rows, (long long)a.cols, (long long)b.rows,
                        (long long)b.cols, (long long)c.rows, (long long)c.cols);
    *p = (moe_gemm_plan){.nbatch = 1};
    /* Batch dims of size 1 do nothing; an empty batch leaves C as it is. */
    int n = 0;
    for (int d = 0; d < nb; d++) {
        if (bshape[d] == 0) p->empty = true;
        if (bshape[d] <= 1) continue;
        p->shape[n] = bshape[d];
        a.bstride[n] = a.bstride[d];
        b.bstride[n] = b.bstride[d];
        c.bstride[n] = c.bstride[d];
        n++;
    }
    if (p->empty || c.rows == 0 || c.cols == 0) {
        p->empty = true;
        return MOE_OK;
    }
    while (n > 0 && try_fold(&a, &b, &c, n - 1, p->shape[n - 1], accumulate)) n--;
    if (!mat_layout(&a, &p->la) || !mat_layout(&b, &p->lb) || !out_layout(&c, &p->ldc))
        return moe_fail(MOE_ERR_ARG, "gemm", "an operand's strides are not BLAS-compatible");
    p->a = a;
    p->b = b;
    p->c = c;
    p->nb = n;
    p->m = a.rows;
    p->n = b.cols;
    p->k = a.cols;
    for (int d = 0; d < n; d++) {
        p->nbatch *= p->shape[d];
        if (c.bstride[d] == 0) p->reduce = true;
    }
    return MOE_OK;
}

void moe_gemm_plan_offsets(const moe_gemm_plan *p, int nd, int64_t i, int64_t *oa, int64_t *ob,
                           int64_t *oc)
{
    *oa = *ob = *oc = 0;
    for (int d = nd - 1; d >= 0; d--) {
        int64_t idx = i % p->shape[d];
        i /= p->shape[d];
        *oa += idx * p->a.bstride[d];
        *ob += idx * p->b.bstride[d];
        *oc += idx * p->c.bstride[d];
    }
}
