/* autograd-func.c — backward, gradients, grad mode, gradient hooks and
 * differentiable functions written in Scheme.
 *
 * Scheme code that libmoelab calls back (a hook, a custom forward or
 * backward) runs through moelab_call_safely: a Scheme error there never
 * unwinds through libmoelab's frames; it becomes a failing moe_status and the
 * primitive that entered libmoelab raises it once C has cleaned up.
 *
 * Scheme closures held by C (hooks, custom functions) are protected from the
 * collector with scm_gc_protect_object and unprotected by the ctx_free
 * callbacks that libmoelab runs when the hook or graph node goes away (possibly
 * on the finalizer thread: they enter Guile mode themselves). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "bindings.h"

static void *unprotect_in_guile(void *data)
{
    scm_gc_unprotect_object(SCM_PACK((scm_t_bits)data));
    return NULL;
}

static void unprotect_ctx(void *ctx) { scm_with_guile(unprotect_in_guile, ctx); }

/* ---- per-tensor autograd state ------------------------------------------------------- */

SCM_DEFINE(moelab_requires_grad_x, "%requires-grad!", 2, 0, 0, (SCM t, SCM flag),
           "Mark leaf @var{t} as requiring grad (or not).")
#define FUNC_NAME "requires-grad!"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_tensor_requires_grad_(x, scm_is_true(flag)));
    scm_remember_upto_here_1(t);
    return t;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_requires_grad_p, "%requires-grad?", 1, 0, 0, (SCM t), "True when @var{t} requires grad.")
#define FUNC_NAME "requires-grad?"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    SCM r = scm_from_bool(x->requires_grad);
    scm_remember_upto_here_1(t);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_tensor_grad, "%tensor-grad", 1, 0, 0, (SCM t),
           "The accumulated gradient of leaf @var{t}, or #f.")
#define FUNC_NAME "tensor-grad"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    moe_tensor *g = moe_tensor_grad(x); /* a backward on another thread may replace it */
    SCM r = g ? moelab_wrap(g) : SCM_BOOL_F;
    scm_remember_upto_here_1(t);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_set_tensor_grad_x, "%set-tensor-grad!", 2, 0, 0, (SCM t, SCM grad),
           "Replace the gradient of leaf @var{t} by @var{grad} (a tensor of its shape, or #f).")
#define FUNC_NAME "set-tensor-grad!"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME), *g = moelab_unwrap_opt(grad, 2, FUNC_NAME);
    if (g && !moe_tensor_same_shape(x, g))
        moelab_throw(FUNC_NAME, MOE_ERR_SHAPE, "gradient of shape %s for a tensor of shape %s",
                     moe_shape_str(g), moe_shape_str(x));
    if (g && (g->dtype != x->dtype || g->device != x->device))
        moelab_throw(FUNC_NAME, MOE_ERR_DTYPE, "gradient is %s on %s for a tensor that is %s on %s",
                     moe_dtype_name(g->dtype), moe_device_name(g->device), moe_dtype_name(x->dtype),
                     moe_device_name(x->device));
    moe_tensor_set_grad(x, g);
    scm_remember_upto_here_2(t, grad);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_zero_grad_x, "%zero-grad!", 1, 0, 0, (SCM t), "Drop the gradient of @var{t}.")
#define FUNC_NAME "zero-grad!"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    moe_tensor_zero_grad(x);
    scm_remember_upto_here_1(t);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_detach, "%detach", 1, 0, 0, (SCM t), "@var{t}'s data, cut from the graph.")
#define FUNC_NAME "detach"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME), *r;
    MOELAB_CHECK(FUNC_NAME, moe_detach(&r, x));
    scm_remember_upto_here_1(t);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_tensor_version, "%tensor-version", 1, 0, 0, (SCM t),
           "The version counter of @var{t}'s storage (bumped by each in-place write).")
#define FUNC_NAME "tensor-version"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    SCM r = scm_from_uint64(moe_tensor_version(x));
    scm_remember_upto_here_1(t);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_tensor_grad_fn, "%tensor-grad-fn", 1, 0, 0, (SCM t),
           "Name of the op that made @var{t} (a string), or #f for a leaf.")
#define FUNC_NAME "tensor-grad-fn"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    SCM r = x->grad_fn ? scm_from_utf8_string(x->grad_fn->name) : SCM_BOOL_F;
    scm_remember_upto_here_1(t);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_grad_enabled_p, "%grad-enabled?", 0, 0, 0, (void),
           "True when ops record the autograd graph on this thread.")
#define FUNC_NAME "grad-enabled?"
{
    return scm_from_bool(moe_grad_enabled());
}
#undef FUNC_NAME

SCM_DEFINE(moelab_set_grad_enabled_x, "%set-grad-enabled!", 1, 0, 0, (SCM flag),
           "Turn graph recording on or off for this thread; returns the previous setting.")
#define FUNC_NAME "set-grad-enabled!"
{
    return scm_from_bool(moe_grad_set_enabled(scm_is_true(flag)));
}
#undef FUNC_NAME

SCM_DEFINE(moelab_backward_x, "%backward!", 3, 0, 0, (SCM t, SCM grad, SCM retain_graph),
           "Backpropagate from @var{t} (seed @var{grad}, or 1 for a one-element @var{t}).")
#define FUNC_NAME "backward!"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME), *g = moelab_unwrap_opt(grad, 2, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_backward(x, g, scm_is_true(retain_graph)));
    scm_remember_upto_here_2(t, grad);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

/* ---- gradient hooks ---------------------------------------------------------------- */

typedef struct hook_call {
    SCM proc;
    moe_tensor **grad;
    moe_status st;
} hook_call;

static void *hook_in_guile(void *data)
{
    hook_call *h = data;
    SCM arg = moelab_wrap_retained(*h->grad), result;
    h->st = moelab_call_safely(h->proc, scm_list_1(arg), &result, "gradient hook",
                               "scheme error in gradient hook", NULL, NULL);
    if (h->st != MOE_OK) return NULL;
    if (scm_is_false(result) || SCM_UNBNDP(result) || scm_is_eq(result, SCM_UNSPECIFIED)) return NULL;
    if (!moelab_is_tensor(result)) {
        h->st = moe_fail(MOE_ERR_STATE, "gradient hook", "a hook must return a tensor or #f");
        return NULL;
    }
    moe_tensor *r = scm_foreign_object_ref(result, 0);
    if (!r) {
        h->st = moe_fail(MOE_ERR_STATE, "gradient hook", "the hook returned a freed tensor");
    } else if (!moe_tensor_same_shape(r, *h->grad)) {
        h->st = moe_fail(MOE_ERR_SHAPE, "gradient hook",
                         "the hook returned a gradient of shape %s for a gradient of shape %s",
                         moe_shape_str(r), moe_shape_str(*h->grad));
    } else {
        moe_tensor_release(*h->grad);
        *h->grad = moe_tensor_retain(r);
    }
    scm_remember_upto_here_1(result);
    return NULL;
}

static moe_status scheme_hook(moe_tensor **grad, void *ctx)
{
    hook_call h = {SCM_PACK((scm_t_bits)ctx), grad, MOE_OK};
    scm_with_guile(hook_in_guile, &h);
    return h.st;
}

SCM_DEFINE(moelab_register_hook_x, "%register-hook!", 2, 0, 0, (SCM t, SCM proc),
           "Call @var{proc} with the gradient of @var{t} during backward; it returns a "
           "replacement gradient or #f. Returns a hook id.")
#define FUNC_NAME "register-hook!"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    if (scm_is_false(scm_procedure_p(proc))) scm_wrong_type_arg_msg(FUNC_NAME, 2, proc, "procedure");
    int id = 0;
    scm_gc_protect_object(proc);
    moe_status st = moe_tensor_register_hook(x, scheme_hook, (void *)SCM_UNPACK(proc), unprotect_ctx, &id);
    if (st != MOE_OK) {
        scm_gc_unprotect_object(proc);
        moelab_throw_last(FUNC_NAME);
    }
    scm_remember_upto_here_1(t);
    return scm_from_int(id);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_remove_hook_x, "%remove-hook!", 2, 0, 0, (SCM t, SCM id),
           "Remove hook @var{id} from @var{t}; true when it was there.")
#define FUNC_NAME "remove-hook!"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    int i = moelab_to_int(id, 2, FUNC_NAME);
    SCM r = scm_from_bool(moe_tensor_remove_hook(x, i));
    scm_remember_upto_here_1(t);
    return r;
}
#undef FUNC_NAME

/* ---- differentiable functions defined in Scheme ------------------------------------------ */

/* Node names must outlive every node (error messages use them after a
 * backward has freed the node's ctx), so they are interned for good. */
typedef struct interned {
    struct interned *next;
    char name[];
} interned;

static interned *names;
static pthread_mutex_t names_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *intern_name(const char *name)
{
    pthread_mutex_lock(&names_lock);
    interned *p = names;
    while (p && strcmp(p->name, name) != 0) p = p->next;
    if (!p) {
        size_t n = strlen(name);
        p = malloc(sizeof *p + n + 1);
        if (p) {
            memcpy(p->name, name, n + 1);
            p->next = names;
            names = p;
        }
    }
    pthread_mutex_unlock(&names_lock);
    return p ? p->name : "scheme-function";
}

enum { B_FORWARD, B_BACKWARD, B_CTX, B_ARGS, B_COUNT };

typedef struct scheme_fn {
    SCM bundle;   /* #(forward backward ctx args), protected */
    const char *name;
    int n_args;
    int n_inputs;
    int pos[MOE_NODE_MAX_INPUTS]; /* argument position of tensor input i */
    SCM *exc_key, *exc_args;      /* where forward's Scheme error goes (during apply) */
} scheme_fn;

static void scheme_fn_free(void *p)
{
    scheme_fn *f = p;
    unprotect_ctx((void *)SCM_UNPACK(f->bundle));
    free(f);
}

static moe_status scheme_forward(moe_tensor **out, int n_inputs, moe_tensor *const *inputs, moe_node *node)
{
    scheme_fn *f = node->ctx;
    SCM fwd = scm_c_vector_ref(f->bundle, B_FORWARD), ctx = scm_c_vector_ref(f->bundle, B_CTX);
    SCM args = scm_c_vector_ref(f->bundle, B_ARGS), result;
    moe_status st = moelab_call_safely(fwd, scm_cons(ctx, args), &result, f->name,
                                       "scheme error in forward", f->exc_key, f->exc_args);
    /* The node keeps its inputs itself; the Scheme arguments may go. */
    scm_c_vector_set_x(f->bundle, B_ARGS, SCM_BOOL_F);
    if (st != MOE_OK) return st;
    if (!moelab_is_tensor(result))
        return moe_fail(MOE_ERR_STATE, f->name, "forward must return a tensor");
    moe_tensor *r = scm_foreign_object_ref(result, 0);
    if (!r) return moe_fail(MOE_ERR_STATE, f->name, "forward returned a freed tensor");
    /* A fresh header: the node is attached to it, never to a tensor the
     * forward got or kept (that could be an input). */
    st = moe_detach(out, r);
    scm_remember_upto_here_1(result);
    return st;
}

typedef struct backward_call {
    scheme_fn *f;
    moe_node *node;
    moe_tensor *grad;
    moe_tensor **gin;
    moe_status st;
} backward_call;

static moe_status take_gradient(backward_call *b, int arg, SCM g)
{
    scheme_fn *f = b->f;
    if (scm_is_false(g)) return MOE_OK;
    if (!moelab_is_tensor(g))
        return moe_fail(MOE_ERR_STATE, f->name, "backward returned a non-tensor for argument %d "
                        "(expected a tensor or #f)", arg + 1);
    moe_tensor *t = scm_foreign_object_ref(g, 0);
    if (!t) return moe_fail(MOE_ERR_STATE, f->name, "backward returned a freed tensor for argument %d", arg + 1);
    int i = 0;
    while (i < f->n_inputs && f->pos[i] != arg) i++;
    if (i == f->n_inputs)
        return moe_fail(MOE_ERR_STATE, f->name, "backward returned a gradient for argument %d, "
                        "which is not a tensor", arg + 1);
    moe_tensor *in = b->node->inputs[i];
    if (!in) return MOE_OK; /* that input does not want a gradient */
    if (t->dtype != in->dtype) {
        moe_tensor *c;
        MOE_TRY(moe_to_dtype(&c, t, in->dtype));
        b->gin[i] = c;
    } else {
        b->gin[i] = moe_tensor_retain(t);
    }
    return MOE_OK;
}

static void *backward_in_guile(void *data)
{
    backward_call *b = data;
    scheme_fn *f = b->f;
    SCM bwd = scm_c_vector_ref(f->bundle, B_BACKWARD), ctx = scm_c_vector_ref(f->bundle, B_CTX);
    SCM g = moelab_wrap_retained(b->grad), result;
    b->st = moelab_call_safely(bwd, scm_list_2(ctx, g), &result, f->name, "scheme error in backward",
                               NULL, NULL);
    if (b->st != MOE_OK) return NULL;
    if (f->n_args == 1 && !scm_is_pair(result)) result = scm_list_1(result);
    long n = scm_ilength(result);
    if (n != f->n_args) {
        b->st = moe_fail(MOE_ERR_STATE, f->name,
                         "backward must return a list of %d gradients (one per argument, #f for none)",
                         f->n_args);
        return NULL;
    }
    int arg = 0;
    for (SCM l = result; scm_is_pair(l) && b->st == MOE_OK; l = SCM_CDR(l), arg++)
        b->st = take_gradient(b, arg, SCM_CAR(l));
    scm_remember_upto_here_1(result);
    return NULL;
}

static moe_status scheme_backward(moe_node *node, moe_tensor *grad, moe_tensor **gin)
{
    if (!node->ctx)
        return moe_fail(MOE_ERR_STATE, node->name, "the graph was freed by an earlier backward");
    backward_call b = {node->ctx, node, grad, gin, MOE_OK};
    scm_with_guile(backward_in_guile, &b);
    return b.st;
}

SCM_DEFINE(moelab_function_apply, "%function-apply", 5, 0, 0,
           (SCM name, SCM forward, SCM backward, SCM ctx, SCM args),
           "Apply the differentiable function @var{name}: (@var{forward} ctx arg …) runs with "
           "grad off and returns the output tensor; during backward (@var{backward} ctx grad) "
           "returns the gradients of the arguments (a list, #f for none).")
#define FUNC_NAME "define-autograd-function"
{
    if (scm_is_symbol(name)) name = scm_symbol_to_string(name);
    if (!scm_is_string(name)) scm_wrong_type_arg_msg(FUNC_NAME, 1, name, "symbol or string");
    if (scm_is_false(scm_procedure_p(forward))) scm_wrong_type_arg_msg(FUNC_NAME, 2, forward, "procedure");
    if (scm_is_false(scm_procedure_p(backward))) scm_wrong_type_arg_msg(FUNC_NAME, 3, backward, "procedure");
    long n_args = scm_ilength(args);
    if (n_args < 0) scm_wrong_type_arg_msg(FUNC_NAME, 5, args, "list");
    char *cname = scm_to_utf8_string(name);
    const char *fname = intern_name(cname);
    free(cname);

    moe_tensor *inputs[MOE_NODE_MAX_INPUTS];
    int pos[MOE_NODE_MAX_INPUTS], n = 0, k = 0;
    for (SCM l = args; scm_is_pair(l); l = SCM_CDR(l), k++) {
        if (!moelab_is_tensor(SCM_CAR(l))) continue;
        if (n == MOE_NODE_MAX_INPUTS)
            moelab_throw(fname, MOE_ERR_ARG, "more than %d tensor arguments", MOE_NODE_MAX_INPUTS);
        inputs[n] = moelab_unwrap(SCM_CAR(l), k + 1, fname);
        pos[n++] = k;
    }

    scheme_fn *f = calloc(1, sizeof *f);
    if (!f) moelab_throw(fname, MOE_ERR_NOMEM, "out of memory");
    SCM exc_key = SCM_BOOL_F, exc_args = SCM_EOL;
    f->bundle = scm_c_make_vector(B_COUNT, SCM_BOOL_F);
    scm_c_vector_set_x(f->bundle, B_FORWARD, forward);
    scm_c_vector_set_x(f->bundle, B_BACKWARD, backward);
    scm_c_vector_set_x(f->bundle, B_CTX, ctx);
    scm_c_vector_set_x(f->bundle, B_ARGS, args);
    scm_gc_protect_object(f->bundle);
    f->name = fname;
    f->n_args = (int)n_args;
    f->n_inputs = n;
    memcpy(f->pos, pos, sizeof pos);
    f->exc_key = &exc_key;
    f->exc_args = &exc_args;

    moe_function fn = {fname, scheme_forward, scheme_backward};
    moe_tensor *out;
    moe_status st = moe_function_apply(&out, &fn, n, inputs, f, scheme_fn_free); /* f is its now */
    scm_remember_upto_here_1(args);
    if (st != MOE_OK) {
        if (scm_is_true(exc_key)) { /* an error in the Scheme forward: raise it as it was */
            moe_clear_error();
            scm_throw(exc_key, exc_args);
        }
        moelab_throw_last(fname);
    }
    return moelab_wrap(out);
}
#undef FUNC_NAME

void moelab_init_autograd_func(void)
{
#ifndef SCM_MAGIC_SNARFER
#include "autograd-func.x"
#endif
}
