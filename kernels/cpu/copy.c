/* copy.c — strided copy with dtype conversion, fill, and the search for the
 * first element in (or out of) a range: the kernels behind contiguous(),
 * clone(), to_dtype(), copy_(), expand().contiguous() and the checks of
 * conversions to integer dtypes. */
#include <omp.h>
#include <string.h>

#include "copy.h"

/* Byte pointer of T's element at flat storage offset OFF (moe_tensor_data is
 * the one at T's own offset). */
static inline char *elem_ptr(const moe_tensor *t, int64_t off)
{
    return (char *)moe_tensor_data(t) + (off - t->offset) * (int64_t)moe_dtype_size(t->dtype);
}

/* Copy one row of N elements with strides (in elements). */
static void copy_row(char *d, int64_t ds, moe_dtype dt, const char *s, int64_t ss, moe_dtype st,
                     int64_t n)
{
    size_t dsz = moe_dtype_size(dt), ssz = moe_dtype_size(st);
    if (dt == st) {
        if (ds == 1 && ss == 1) {
            memcpy(d, s, (size_t)n * dsz);
            return;
        }
        switch (dsz) {
        case 1: for (int64_t i = 0; i < n; i++) d[i * ds] = s[i * ss]; return;
        case 2: for (int64_t i = 0; i < n; i++) ((uint16_t *)d)[i * ds] = ((const uint16_t *)s)[i * ss]; return;
        case 4: for (int64_t i = 0; i < n; i++) ((uint32_t *)d)[i * ds] = ((const uint32_t *)s)[i * ss]; return;
        default: for (int64_t i = 0; i < n; i++) ((uint64_t *)d)[i * ds] = ((const uint64_t *)s)[i * ss]; return;
        }
    }
    if (dt == MOE_F32 && st == MOE_BF16) {
        for (int64_t i = 0; i < n; i++)
            ((float *)d)[i * ds] = moe_bf16_to_f32(((const uint16_t *)s)[i * ss]);
        return;
    }
    if (dt == MOE_BF16 && st == MOE_F32) {
        for (int64_t i = 0; i < n; i++)
            ((uint16_t *)d)[i * ds] = moe_f32_to_bf16(((const float *)s)[i * ss]);
        return;
    }
    if (dt == MOE_F64 && st == MOE_F32) {
        for (int64_t i = 0; i < n; i++) ((double *)d)[i * ds] = ((const float *)s)[i * ss];
        return;
    }
    if (dt == MOE_F32 && st == MOE_F64) {
        for (int64_t i = 0; i < n; i++) ((float *)d)[i * ds] = (float)((const double *)s)[i * ss];
        return;
    }
    for (int64_t i = 0; i < n; i++)
        moe_dtype_store(dt, d + i * ds * (int64_t)dsz, moe_dtype_load(st, s + i * ss * (int64_t)ssz));
}

void moe_cpu_copy(moe_tensor *dst, const moe_tensor *src)
{
    int64_t numel = moe_tensor_numel(dst);
    if (numel == 0) return;
    int nd = dst->ndim;
    if (nd == 0) {
        copy_row(elem_ptr(dst, dst->offset), 1, dst->dtype,
                 elem_ptr(src, src->offset), 1, src->dtype, 1);
        return;
    }
    if (moe_tensor_is_contiguous(dst) && moe_tensor_is_contiguous(src)) {
        /* One flat row, split across threads. */
        int64_t chunk = 1 << 16;
        int64_t nchunks = (numel + chunk - 1) / chunk;
#pragma omp parallel for if (nchunks > 1) schedule(static)
        for (int64_t c = 0; c < nchunks; c++) {
            int64_t b = c * chunk, n = numel - b < chunk ? numel - b : chunk;
            copy_row(elem_ptr(dst, dst->offset + b), 1, dst->dtype,
                     elem_ptr(src, src->offset + b), 1, src->dtype, n);
        }
        return;
    }
    int64_t inner = dst->shape[nd - 1];
    int64_t rows = numel / inner;
#pragma omp parallel for if (numel > (1 << 15)) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        int64_t doff = dst->offset, soff = src->offset, rem = r;
        for (int k = nd - 2; k >= 0; k--) {
            int64_t i = rem % dst->shape[k];
            rem /= dst->shape[k];
            doff += i * dst->strides[k];
            soff += i * src->strides[k];
        }
        copy_row(elem_ptr(dst, doff), dst->strides[nd - 1], dst->dtype,
                 elem_ptr(src, soff), src->strides[nd - 1], src->dtype, inner);
    }
}

void moe_cpu_fill(moe_tensor *t, double value)
{
    int64_t numel = moe_tensor_numel(t);
    if (numel == 0) return;
    char one[8];
    moe_dtype_store(t->dtype, one, value);
    size_t sz = moe_dtype_size(t->dtype);
    if (moe_tensor_is_contiguous(t)) {
        char *p = elem_ptr(t, t->offset);
        if (t->dtype == MOE_F32) {
            float v = (float)value;
#pragma omp parallel for if (numel > (1 << 16)) schedule(static)
            for (int64_t i = 0; i < numel; i++) ((float *)p)[i] = v;
            return;
        }
#pragma omp parallel for if (numel > (1 << 16)) schedule(static)
        for (int64_t i = 0; i < numel; i++) memcpy(p + i * (int64_t)sz, one, sz);
        return;
    }
    int nd = t->ndim;
    int64_t inner = t->shape[nd - 1], rows = numel / inner;
    for (int64_t r = 0; r < rows; r++) {
        int64_t off = t->offset, rem = r;
        for (int k = nd - 2; k >= 0; k--) {
            off += (rem % t->shape[k]) * t->strides[k];
            rem /= t->shape[k];
        }
        for (int64_t i = 0; i < inner; i++)
            memcpy(elem_ptr(t, off + i * t->strides[nd - 1]), one, sz);
    }
}

void moe_cpu_arange(moe_dtype dt, void *out, int64_t n, double start, double step)
{
    size_t sz = moe_dtype_size(dt);
    for (int64_t i = 0; i < n; i++) moe_dtype_store(dt, (char *)out + i * (int64_t)sz, start + (double)i * step);
}

void moe_cpu_eye(moe_dtype dt, void *out, int64_t n, int64_t m)
{
    size_t sz = moe_dtype_size(dt);
    for (int64_t i = 0; i < n && i < m; i++) moe_dtype_store(dt, (char *)out + (i * m + i) * (int64_t)sz, 1.0);
}

int64_t moe_cpu_find_first(const moe_tensor *t, double lo, double hi, bool inside, double *value)
{
    int64_t numel = moe_tensor_numel(t);
    int nd = t->ndim;
    int64_t index[MOE_MAX_DIMS] = {0}, off = t->offset;
    for (int64_t i = 0; i < numel; i++) { /* serial: stops at the first hit */
        double v = moe_dtype_load(t->dtype, elem_ptr(t, off));
        if ((lo <= v && v <= hi) == inside) {
            *value = v;
            return i;
        }
        for (int k = nd - 1; k >= 0; k--) { /* next index, row-major */
            off += t->strides[k];
            if (++index[k] < t->shape[k]) break;
            off -= index[k] * t->strides[k];
            index[k] = 0;
        }
    }
    return -1;
}

int64_t moe_cpu_bool_find_bad(const unsigned char *p, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (p[i] > 1) return i;
    return -1;
}
