/* autograd.h — reverse-mode automatic differentiation.
 *
 * Every differentiable op that sees an input requiring grad (while grad mode
 * is on) records a node: the inputs that want gradients (edges), the tensors
 * its backward needs (saved), a few scalar parameters, and a backward
 * function. moe_backward() walks the nodes in reverse topological order,
 * accumulating gradients into the leaves' `grad`.
 *
 * The same node API is how custom differentiable functions are written, in C
 * (the aux-loss gradient injector) and in Scheme (define-autograd-function). */
#ifndef MOELAB_AUTOGRAD_H
#define MOELAB_AUTOGRAD_H

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_NODE_MAX_INPUTS 8
#define MOE_NODE_MAX_SAVED 8

/* Compute the gradients of a node's inputs from the gradient of its output.
 * GRAD_IN has n_inputs slots, all NULL on entry: fill slot i (a new
 * reference, same shape as input i) when node->inputs[i] is non-NULL; a slot
 * left NULL means a zero gradient. Runs with grad mode off. */
typedef moe_status (*moe_backward_fn)(moe_node *node, moe_tensor *grad_out,
                                      moe_tensor **grad_in);

/* A gradient hook sees the gradient of a tensor before it is used; it may
 * replace *GRAD (release the old one, store a new reference). */
typedef moe_status (*moe_hook_fn)(moe_tensor **grad, void *ctx);

struct moe_hook {
    moe_hook_fn fn;
    void *ctx;
    void (*ctx_free)(void *ctx);
    int id;
    struct moe_hook *next;
};

struct moe_node {
    const char *name;
    moe_backward_fn backward;
    int n_inputs;
    moe_tensor *inputs[MOE_NODE_MAX_INPUTS]; /* NULL where no grad is needed */
    int n_saved;
    moe_tensor *saved[MOE_NODE_MAX_SAVED];
    uint64_t saved_version[MOE_NODE_MAX_SAVED]; /* storage versions when saved */
    int64_t iargs[MOE_MAX_DIMS * 2]; /* op parameters (dims, sizes, …) */
    double dargs[4];
    void *ctx; /* custom state for the backward */
    void (*ctx_free)(void *ctx);
    /* output description, to check and to build zero gradients */
    int out_ndim;
    int64_t out_shape[MOE_MAX_DIMS];
    moe_dtype out_dtype;
    moe_device out_device;
    moe_hook *hooks; /* hooks registered on the (non-leaf) output */
    MOE_ATOMIC(int) refcount;
    bool freed; /* saved tensors released by a backward without retain */
    /* scratch used by moe_backward, owned by the walk that claimed the node */
    MOE_ATOMIC(void *) walker; /* that walk (NULL: none) */
    moe_tensor *grad_acc;
    int pending;
};

/* ---- grad mode (per thread) ---------------------------------------------- */
bool moe_grad_enabled(void);
/* Set grad mode; returns the previous value, to restore:
 *   bool prev = moe_grad_set_enabled(false); … moe_grad_set_enabled(prev); */
bool moe_grad_set_enabled(bool enabled);

/* ---- per-tensor ---------------------------------------------------------- */
/* Mark a leaf as requiring grad (floating dtypes only). */
moe_status moe_tensor_requires_grad_(moe_tensor *t, bool requires_grad);
/* True when an op on T would be recorded: grad mode on and T requires grad. */
bool moe_tensor_needs_grad(const moe_tensor *t);
/* Drop the accumulated gradient of T. */
void moe_tensor_zero_grad(moe_tensor *t);
/* The accumulated gradient of T as a new reference (NULL when there is
 * none). Unlike reading t->grad, safe while backward passes on other threads
 * accumulate into T. */
moe_tensor *moe_tensor_grad(moe_tensor *t);
/* Replace the accumulated gradient of T by G (retained; NULL drops it). */
void moe_tensor_set_grad(moe_tensor *t, moe_tensor *g);
/* A new tensor sharing T's storage, cut from the graph. */
moe_status moe_detach(moe_tensor **out, moe_tensor *t);
/* Register a gradient hook on T (leaf: on the tensor; else on its node).
 * CTX_FREE (may be NULL) is called when the hook goes away. The hook id is
 * stored in *ID (may be NULL) for moe_tensor_remove_hook. */
moe_status moe_tensor_register_hook(moe_tensor *t, moe_hook_fn fn, void *ctx,
                                    void (*ctx_free)(void *), int *id);
bool moe_tensor_remove_hook(moe_tensor *t, int id);

/* ---- backward ------------------------------------------------------------ */
/* Backpropagate from ROOT. GRAD may be NULL when ROOT has one element (then
 * the seed is 1). Unless RETAIN_GRAPH, the graph's saved tensors are freed and
 * a second backward through it fails. Fails when a saved tensor changed in
 * place since it was saved, and when called from inside a gradient hook or a
 * backward function (gradient recording is off there).
 *
 * Threads: backward passes may run at once on several threads. Gradients
 * flowing into a shared leaf are added one pass at a time, so the leaf ends
 * with the sum of all of them. A pass that reaches a node another thread's
 * pass is walking waits for that pass to end. */
moe_status moe_backward(moe_tensor *root, moe_tensor *grad, bool retain_graph);

/* ---- nodes: recording ops and custom functions ---------------------------- */
/* Make a node for an op whose output will have OUT's description. Inputs not
 * needing grad are stored as NULL. */
moe_status moe_node_new(moe_node **out, const char *name, moe_backward_fn backward,
                        int n_inputs, moe_tensor *const *inputs);
/* Save a tensor for backward (retained; released when the graph is freed).
 * Saving an op's own output creates no cycle: a detached alias is kept. The
 * storage version is recorded: a backward that reaches NODE after an
 * in-place write to the saved tensor (or any alias of its storage) fails
 * instead of computing a gradient from the changed values. */
moe_status moe_node_save(moe_node *node, moe_tensor *t);
/* Make NODE the grad_fn of OUT (takes over the caller's node reference). */
void moe_node_attach(moe_node *node, moe_tensor *out);
void moe_node_retain(moe_node *node);
void moe_node_release(moe_node *node);
/* True when any of the N inputs needs grad. */
bool moe_any_needs_grad(int n, moe_tensor *const *inputs);

/* Record OUT (already computed) as the result of a differentiable function of
 * INPUTS with the given backward: the one-call form of the three above. SAVED
 * tensors are kept for backward; CTX is freed with CTX_FREE with the graph.
 * Does nothing (but free CTX) when no input needs grad. */
moe_status moe_autograd_record(moe_tensor *out, const char *name, moe_backward_fn backward,
                               int n_inputs, moe_tensor *const *inputs, int n_saved,
                               moe_tensor *const *saved, void *ctx, void (*ctx_free)(void *));

/* Custom differentiable function: FORWARD runs with grad mode off and
 * returns the output; BACKWARD is called as for any node (saved tensors and
 * ctx reachable through the node). */
typedef moe_status (*moe_forward_fn)(moe_tensor **out, int n_inputs, moe_tensor *const *inputs,
                                     moe_node *node /* to save tensors / set ctx */);
typedef struct moe_function {
    const char *name;
    moe_forward_fn forward;
    moe_backward_fn backward;
} moe_function;
moe_status moe_function_apply(moe_tensor **out, const moe_function *fn, int n_inputs,
                               moe_tensor *const *inputs, void *ctx, void (*ctx_free)(void *));

#ifdef __cplusplus
}
#endif
#endif
