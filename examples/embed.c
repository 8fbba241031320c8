/* embed.c — moelab inside your own C program, through Guile.
 *
 * Boots Guile, makes the moelab bindings available, evaluates a Scheme script
 * that builds a tiny computation with autograd, and reads the results back in
 * C, both as Scheme values and as a moe_tensor from libmoelab's C API.
 *
 * Build it against an installed moelab (moelab.pc gives -lmoelab and the
 * include directory, guile-3.0.pc Guile's flags):
 *
 *     cc -o embed embed.c $(pkg-config --cflags --libs moelab-guile)
 *
 * In the
 * moelab build tree it is built by `make check` and run through pre-inst-env,
 * which points Guile at the uninstalled Scheme modules. */
#include <stdio.h>
#include <stdlib.h>

#include <libguile.h>

#include "moelab-guile.h"

/* Loss and gradient of a one-layer linear model, in Scheme:
 *   x = [1 2],  W = [[1 2] [3 4]]
 *   y = x W = [7 10],  loss = sum(y) = 17
 *   dloss/dW = x^T [1 1] = [[1 1] [2 2]] */
static const char script[] =
    "(use-modules (moelab))\n"
    "(let* ((x (tensor '((1 2)) #:dtype 'f64))\n"
    "       (w (tensor '((1 2) (3 4)) #:dtype 'f64 #:requires-grad #t))\n"
    "       (loss (tsum (matmul x w))))\n"
    "  (backward! loss)\n"
    "  (list loss (tensor-grad w)))\n";

static const double want_grad[4] = {1, 1, 2, 2};

static SCM eval_script(void *data)
{
    return scm_c_eval_string((const char *)data);
}

static SCM report_error(void *data, SCM key, SCM args)
{
    (void)data;
    scm_print_exception(scm_current_error_port(), SCM_BOOL_F, key, args);
    return SCM_BOOL_F;
}

static void *inner_main(void *data)
{
    int *status = data;

    /* The Scheme modules load the bindings with
     * (load-extension "libguile-moelab" "scm_init_moelab"); as this program
     * links the library, register it so that no dlopen is needed. */
    scm_c_register_extension("libguile-moelab", "scm_init_moelab",
                             (void (*)(void *))scm_init_moelab, NULL);

    SCM result = scm_c_catch(SCM_BOOL_T, eval_script, (void *)script, report_error, NULL, NULL, NULL);
    if (scm_is_false(result)) return NULL;

    /* Scheme values: the loss through (moelab)'s own tensor->list. */
    SCM loss = scm_car(result), grad = scm_cadr(result);
    SCM to_list = scm_c_public_ref("moelab", "tensor->list");
    SCM loss_value = scm_call_1(to_list, loss);
    while (scm_is_pair(loss_value)) loss_value = scm_car(loss_value);
    double l = scm_to_double(loss_value);
    printf("loss = %g\n", l);

    /* C values: the gradient as a moe_tensor (borrowed from the Scheme object). */
    moe_tensor *g = scm_to_moe_tensor(grad);
    double values[4];
    if (moe_tensor_numel(g) != 4 || moe_tensor_to_doubles(g, values) != MOE_OK) {
        fprintf(stderr, "embed: unexpected gradient %s\n", moe_shape_str(g));
        return NULL;
    }
    scm_remember_upto_here_1(grad);
    printf("dloss/dW = [[%g %g] [%g %g]]\n", values[0], values[1], values[2], values[3]);

    int ok = l == 17;
    for (int i = 0; i < 4; i++) ok = ok && values[i] == want_grad[i];
    if (ok) *status = 0;
    else fprintf(stderr, "embed: wrong results (want loss 17, grad [[1 1] [2 2]])\n");
    return NULL;
}

int main(void)
{
    int status = 1;
    scm_with_guile(inner_main, &status);
    return status;
}
