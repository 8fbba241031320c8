/* refs.h — the reader of tests/reference/router_refs.txt (written by
 * gen_router_refs.py), shared by the C suites that check against it.
 *
 * The file is a list of cases:
 *     case NAME
 *     set KEY VALUE                      (settings: router fields, op, …)
 *     tensor NAME DTYPE NDIM D0 D1 … V0 V1 …
 * Tensors of micro-batch m are named "x#m", "weights#m", …. */
#ifndef MOELAB_TESTS_REFS_H
#define MOELAB_TESTS_REFS_H

#include <stdbool.h>

#include "moe/router.h"
#include "tensor.h"

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
 * cases, or -1 when the file cannot be read or a tensor line is malformed. */
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

#endif
