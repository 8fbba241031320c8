/* copy.h — strided copy with dtype conversion, fills (a value, a range, the
 * identity), and the search for the first element in (or out of) a range, on
 * CPU tensors of any strides. */
#ifndef MOELAB_CPU_COPY_H
#define MOELAB_CPU_COPY_H

#include <stdbool.h>
#include <stdint.h>

#include "../../core/tensor.h"

/* dst ← src elementwise; same shape (src may have zero strides from a
 * broadcast), any dtypes. */
void moe_cpu_copy(moe_tensor *dst, const moe_tensor *src);
void moe_cpu_fill(moe_tensor *t, double value);
/* OUT [N] (contiguous, DT) = START + i·STEP. */
void moe_cpu_arange(moe_dtype dt, void *out, int64_t n, double start, double step);
/* OUT [N M] (contiguous, DT, zero on entry): ones on the diagonal. */
void moe_cpu_eye(moe_dtype dt, void *out, int64_t n, int64_t m);
/* Row-major position of the first element v of T (any strides and dtype)
 * for which (LO <= v && v <= HI) == INSIDE (NaN is never inside), or -1;
 * its value goes to *VALUE. */
int64_t moe_cpu_find_first(const moe_tensor *t, double lo, double hi, bool inside, double *value);
/* Position of the first byte of P [N] that is neither 0 nor 1 (so not a
 * stored bool element), or -1. */
int64_t moe_cpu_bool_find_bad(const unsigned char *p, int64_t n);

#endif
