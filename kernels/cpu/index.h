/* index.h — CPU loops behind the indexing, join and sort ops
 * (core/ops/index.c, core/ops/join.c, core/ops/sort.c).
 *
 * Dimension letters used in the shape comments:
 *   P  product of the dims before the indexed dim
 *   N  size of the indexed dim in the source tensor
 *   M  number of index entries along the indexed dim
 *   Q  product of the dims after the indexed dim
 *   R  rows (all dims but the last, flattened)
 *   E  length of a row being sorted / selected from
 *   K  number of elements kept per row (top-k)
 *   C  classes (one-hot) or bins (bincount, histogram)
 *
 * Index arrays are always contiguous int64 and already range-checked by the
 * op; kernels never fail on bad indices. Strided descriptions give strides in
 * elements. */
#ifndef MOELAB_CPU_INDEX_H
#define MOELAB_CPU_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../core/dtype.h"

/* Position of the first index outside [0, size), or -1 when all are in range. */
int64_t moe_cpu_index_find_bad(const int64_t *idx, int64_t n, int64_t size);

/* ---- gather / scatter-add (index has the same ndim as the data) ------------
 * SHAPE (ND dims, ND >= 1) is the index shape; IDX is contiguous in it.
 * gather:  out[e] = a[coords(e) with coords[dim] = idx[e]]   (out contiguous)
 * scatter: out[coords(e) with coords[dim] = idx[e]] += src[coords(e)]
 * Elements are copied by size ESZ (1, 2, 4 or 8 bytes) for gather; scatter-add
 * accumulates in f32/f64 in a fixed order (index-major along DIM, per output
 * element), so results do not depend on the thread count. */
void moe_cpu_gather(void *out, const void *a, const int64_t *a_strides, size_t esz,
                    const int64_t *idx, int nd, const int64_t *shape, int dim);
void moe_cpu_scatter_add(moe_dtype dt, void *out, const int64_t *out_strides, const void *src,
                         const int64_t *src_strides, const int64_t *idx, int nd, const int64_t *shape,
                         int dim);

/* ---- index_select / index_add (1-D index of M entries) ----------------------
 * select: out [P M Q] ← a [P N Q] rows idx[m]        (elements of ESZ bytes)
 * add:    out [P N Q] row idx[m] += src [P M Q] row m, each row summing its sources
 *         in index order (deterministic); false when scratch allocation fails */
void moe_cpu_index_select(void *out, const void *a, size_t esz, const int64_t *idx, int64_t P,
                          int64_t N, int64_t M, int64_t Q);
bool moe_cpu_index_add(moe_dtype dt, void *out, const void *src, const int64_t *idx, int64_t P, int64_t N,
                       int64_t M, int64_t Q);

/* one-hot: out [n C] (i64) from class ids idx [n]. */
void moe_cpu_one_hot(int64_t *out, const int64_t *idx, int64_t n, int64_t C);

/* ---- top-k and sort over the rows of a contiguous [R E] ---------------------
 * Ordering: NaN counts as larger than every number; equal keys keep index
 * order (ties toward the lower index), in both directions.
 * topk:  vals [R K], idx [R K], the K largest (or smallest) per row, sorted.
 * sort:  vals [R E] (may be NULL), idx [R E], stable.
 * Return false when scratch memory could not be allocated. */
bool moe_cpu_topk(moe_dtype dt, void *vals, int64_t *idx, const void *x, int64_t R, int64_t E, int64_t K,
                  bool largest);
bool moe_cpu_sort(moe_dtype dt, void *vals, int64_t *idx, const void *x, int64_t R, int64_t E,
                  bool descending);

/* ---- counting ----------------------------------------------------------------
 * bound: the number of classes or bins that values x [n] need: the larger of
 * AT_LEAST and 1 + the largest value. FIRST_NEGATIVE (may be NULL) receives the
 * position of the first negative value, or -1. */
int64_t moe_cpu_index_bound(const int64_t *x, int64_t n, int64_t at_least, int64_t *first_negative);
/*
 * bincount: out [C] (zeroed here) counts (i64) or sums weights w [n] (f64) of
 * the values x [n] (all in [0, C)); serial, so weighted sums have a fixed order. */
void moe_cpu_bincount(int64_t *counts, const int64_t *x, int64_t n, int64_t C);
void moe_cpu_bincount_weighted(double *sums, const int64_t *x, const double *w, int64_t n,
                               int64_t C);
/* histogram: counts [C] (zeroed here) of x [n] in C equal bins over [lo, hi];
 * x == hi goes to the last bin; values outside (and NaN) are skipped. */
void moe_cpu_histogram(int64_t *counts, const double *x, int64_t n, int64_t C, double lo,
                       double hi);
/* The range [*lo, *hi] of x [n], NaN skipped; [0, 0] when x holds no numbers. */
void moe_cpu_histogram_range(const double *x, int64_t n, double *lo, double *hi);

#endif
