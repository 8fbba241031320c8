/* refs.h — the reader of the reference-vector files tests/reference/<name>.txt
 * (written by the gen_*.py next to them), shared by the C suites that check
 * against them, and the comparison that reports a mismatch.
 *
 * A file starts with its format line and the command that regenerated it:
 *     # moelab-refs 1
 *     # regenerate: /usr/bin/python3 tests/reference/gen_x_refs.py > tests/reference/x_refs.txt
 * then lists cases (other lines starting with # are comments):
 *     case NAME
 *     set KEY VALUE                      (settings: router fields, op, …)
 *     tensor NAME DTYPE NDIM D0 D1 … V0 V1 …
 * Tensors of micro-batch m are named "x#m", "weights#m", …. */
#ifndef MOELAB_TESTS_REFS_H
#define MOELAB_TESTS_REFS_H

#include <stdbool.h>

#include "moe/router.h"
#include "tensor.h"

/* The first line of every file this reader understands. */
#define REF_FORMAT_LINE "# moelab-refs 1"

#define REF_MAX_SETS 64
#define REF_MAX_TENSORS 160

typedef struct ref_case {
    char name[96];
    int nsets, ntens;
    char *key[REF_MAX_SETS], *val[REF_MAX_SETS];
    char *tname[REF_MAX_TENSORS];
    moe_tensor *tens[REF_MAX_TENSORS]; /* CPU tensors */
} ref_case;

/* Read every case of PATH into *CASES (free with refs_free); the number of
 * cases, or -1 (the reason in moe_last_error()) when the file cannot be
 * read, does not start with REF_FORMAT_LINE, or has a malformed tensor line. */
int refs_load(const char *path, ref_case **cases);
void refs_free(ref_case *cases, int n);

/* The value of setting KEY, or NULL (ref_getd: as a number, or DFLT). */
const char *ref_get(const ref_case *c, const char *key);
double ref_getd(const ref_case *c, const char *key, double dflt);
/* Tensor NAME of micro-batch M ("NAME#M"; M < 0: exactly NAME), or NULL. */
moe_tensor *ref_tensor(const ref_case *c, const char *name, int m);

/* The router configuration of a case: defaults, its preset, then every
 * setting. A case without a "convention" setting uses the exact forms (the
 * vectors written before the conventions existed were computed with them).
 * False when a value does not parse. */
bool ref_router_config(moe_router_config *cfg, const ref_case *c);

/* True when GOT and WANT differ: a different element count, or an element
 * with |got - want| > ATOL + RTOL·|want| (NaN matches NaN, an infinity the
 * same infinity). MSG (LEN bytes) then says, after WHAT: how many elements
 * are off, the largest |difference| and its index, and the first values of
 * both sides. */
bool ref_mismatch(char *msg, size_t len, const char *what, const moe_tensor *got, const moe_tensor *want,
                  double atol, double rtol);

/* In a Check test: fail with ref_mismatch's report. */
#define REF_ASSERT_CLOSE(got, want, atol, rtol, what)                                         \
    do {                                                                                       \
        char ref_msg_[1024];                                                                   \
        if (ref_mismatch(ref_msg_, sizeof ref_msg_, (what), (got), (want), (atol), (rtol)))    \
            ck_abort_msg("%s", ref_msg_);                                                      \
        ck_assert_msg(moe_tensor_same_shape((got), (want)), "%s: shape %s, expected %s", (what), \
                      moe_shape_str(got), moe_shape_str(want));                                \
    } while (0)

#endif
