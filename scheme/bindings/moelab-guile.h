/* moelab-guile.h — libguile-moelab, the GNU Guile bindings of moelab.
 *
 * Embedding moelab in a C program that runs Guile:
 *
 *     #include <libguile.h>
 *     #include <moelab/moelab-guile.h>
 *
 *     static void *inner(void *data)
 *     {
 *         scm_init_moelab();                       // optional: defines the primitives
 *         scm_c_use_module("moelab");              // the whole Scheme API
 *         scm_c_eval_string("(display (t+ (tensor '(1 2)) 1))");
 *         return NULL;
 *     }
 *     int main(void) { scm_with_guile(inner, NULL); return 0; }
 *
 * Link with -lguile-moelab -lmoelab and Guile's flags (pkg-config moelab
 * guile-3.0). The Scheme modules load this library themselves with
 * (load-extension "libguile-moelab" "scm_init_moelab"); a program that links
 * it may register it first with
 *     scm_c_register_extension("libguile-moelab", "scm_init_moelab",
 *                              (void (*)(void *))scm_init_moelab, NULL);
 * scm_init_moelab is idempotent. */
#ifndef MOELAB_GUILE_H
#define MOELAB_GUILE_H

#include <libguile.h>

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Define every primitive (once) in the module (moelab primitives). The
 * public procedures are in (moelab), which loads this by itself. */
void scm_init_moelab(void);

/* A Scheme <tensor> for T; takes over the caller's reference to T. */
SCM scm_from_moe_tensor(moe_tensor *t);
/* The tensor inside OBJ (borrowed; retain it to keep it past OBJ's life).
 * Raises wrong-type-arg when OBJ is not a tensor and moelab-error when it has
 * been freed with tensor-free!. */
moe_tensor *scm_to_moe_tensor(SCM obj);
/* True when OBJ is a <tensor>. */
int scm_is_moe_tensor(SCM obj);

#ifdef __cplusplus
}
#endif
#endif
