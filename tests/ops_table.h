/* ops_table.h — every op of core/ops.h as a row the test suites walk.
 *
 * A row names an op (its C name in ops.h and its Scheme name) and its
 * arity, and has a builder that makes a few small cases: leaf inputs of a
 * dtype chosen by the caller, some of them read through a transpose or a
 * narrow (non-contiguous) or broadcast against each other, and the call of
 * the op on them. tests/unit/check_op_table.c runs an f64 finite-difference
 * gradient check on every case; tests/gpu/check_gpu_ops.c runs every case
 * on the CPU and on the GPU and compares. Ops with no gradient at all are
 * named in ot_not_differentiable; check_op_table fails when an op declared
 * in ops.h is in neither list.
 *
 * A case's leaves are contiguous tensors on the CPU (float ones of the
 * requested dtype, index and mask ones i64/bool) so a gradient check can
 * perturb them in place; the views the op sees are made inside ot_run. */
#ifndef MOELAB_OPS_TABLE_H
#define MOELAB_OPS_TABLE_H

#include "moelab.h"

#define OT_MAX_IN 4
#define OT_MAX_CASES 8

/* How ot_run hands a leaf to the op. */
typedef enum ot_view {
    OT_PLAIN,     /* the leaf itself */
    OT_TRANSPOSE, /* leaf stored with its last two dims swapped, seen through a transpose */
    OT_NARROW,    /* leaf two wider in its last dim, seen through narrow(last, 1, n) */
} ot_view;

typedef struct ot_case ot_case;
/* The op on the views of a case's leaves. */
typedef moe_status (*ot_op)(moe_tensor **out, moe_tensor **in, const ot_case *c);

struct ot_case {
    char what[96];             /* describes the case: "broadcast [2 1 3] [4 3]" */
    int n_in;
    moe_tensor *in[OT_MAX_IN]; /* the leaves */
    ot_view view[OT_MAX_IN];
    unsigned grad_mask;        /* bit i: input i is differentiated */
    ot_op op;
    int iarg[4];               /* options of the op (dims, k, …) */
    double darg[2];
    uint64_t seed;             /* the next seed its inputs draw */
};

typedef struct ot_row {
    const char *c_name; /* as declared in core/ops.h, without moe_ */
    const char *name;   /* the Scheme name, as in error messages */
    int arity;          /* tensor inputs of the op; -1: a list of them (cat, stack) */
    /* Append this row's cases, float leaves of DTYPE (f32 or f64), to
     * CASES[*N...]; on failure the cases made so far stay counted in *N. */
    moe_status (*build)(ot_case *cases, int *n, moe_dtype dtype);
} ot_row;

extern const ot_row ot_rows[];
extern const int ot_n_rows;

/* Ops of ops.h with no gradient (outputs are integers, booleans, counts,
 * or a random mask), by C name. */
extern const char *const ot_not_differentiable[];
extern const int ot_n_not_differentiable;

/* The callback of a gradient or device check: the case's views, then its op
 * (CASE is the ot_case; IN its leaves, or copies of them on another device). */
moe_status ot_run(moe_tensor **out, moe_tensor **in, void *c);

/* Release the leaves of N cases. */
void ot_cases_release(ot_case *cases, int n);

#endif
