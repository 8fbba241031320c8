/* autograd.c — nodes, grad mode, hooks and the backward walk. */
#include "autograd.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "../kernels/cpu/elementwise.h"
#include "internal.h"

static _Thread_local bool grad_disabled; /* zero-initialised: grad mode on */
/* Where this thread is inside a backward walk: hooks and backward functions
 * run with grad mode off, and a nested walk would clobber the scratch fields
 * of nodes the outer one is using. */
static _Thread_local int hook_depth, backward_depth;

bool moe_grad_enabled(void) { return !grad_disabled; }

bool moe_grad_set_enabled(bool enabled)
{
    bool prev = !grad_disabled;
    grad_disabled = !enabled;
    return prev;
}

bool moe_tensor_needs_grad(const moe_tensor *t)
{
    return t && t->requires_grad && !grad_disabled;
}

bool moe_any_needs_grad(int n, moe_tensor *const *inputs)
{
    for (int i = 0; i < n; i++)
        if (moe_tensor_needs_grad(inputs[i])) return true;
    return false;
}

moe_status moe_tensor_requires_grad_(moe_tensor *t, bool requires_grad)
{
    if (requires_grad && !moe_dtype_is_float(t->dtype))
        return moe_fail(MOE_ERR_DTYPE, "requires-grad!",
                        "only floating tensors can require grad, got %s", moe_dtype_name(t->dtype));
    if (!requires_grad && t->grad_fn)
        return moe_fail(MOE_ERR_STATE, "requires-grad!",
                        "cannot turn off grad on a non-leaf tensor (made by '%s'); use detach",
                        t->grad_fn->name);
    t->requires_grad = requires_grad;
    return MOE_OK;
}

/* ---- accumulated gradients ---------------------------------------------------
 * Backward passes on several threads may feed one leaf (a shared parameter).
 * Each read-modify-write of a leaf's grad holds a lock picked by the leaf's
 * address: a few stripes instead of a mutex in every tensor header. No code
 * holds two of them at once. */
#define GRAD_LOCKS 64
static pthread_mutex_t grad_locks[GRAD_LOCKS] = {[0 ... GRAD_LOCKS - 1] = PTHREAD_MUTEX_INITIALIZER};

static pthread_mutex_t *grad_lock(const moe_tensor *t)
{
    return &grad_locks[((uintptr_t)t >> 6) % GRAD_LOCKS]; /* headers are larger than 64 bytes */
}

moe_tensor *moe_tensor_grad(moe_tensor *t)
{
    pthread_mutex_t *lock = grad_lock(t);
    pthread_mutex_lock(lock);
    moe_tensor *g = moe_tensor_retain(t->grad);
    pthread_mutex_unlock(lock);
    return g;
}

void moe_tensor_set_grad(moe_tensor *t, moe_tensor *g)
{
    pthread_mutex_t *lock = grad_lock(t);
    pthread_mutex_lock(lock);
    moe_tensor *old = t->grad;
    t->grad = moe_tensor_retain(g);
    pthread_mutex_unlock(lock);
    moe_tensor_release(old);
}

void moe_tensor_zero_grad(moe_tensor *t) { moe_tensor_set_grad(t, NULL); }

/* T is the caller's alone: its one reference, over the whole of a storage
 * that no other tensor (no view, no saved alias) shares and that moelab
 * allocated (not borrowed memory). Nobody else can see a write into it. */
static bool sole_owner(const moe_tensor *t)
{
    const moe_storage *s = t->storage;
    return t->refcount == 1 && s->refcount == 1 && s->allocator && t->offset == 0 &&
           s->nbytes == moe_tensor_nbytes(t) && moe_tensor_is_contiguous(t) && !t->grad_fn &&
           !t->requires_grad;
}

/* ACC += G in place, where the caller holds ACC alone (sole_owner) and G
 * has its shape, dtype (f32 or f64) and layout, both on the CPU: the same
 * bits as moe_add without a new buffer. False: not done, add out of place. */
static bool add_in_place(moe_tensor *acc, const moe_tensor *g)
{
    if (acc->device != MOE_CPU || g->device != MOE_CPU || acc->dtype != g->dtype ||
        (acc->dtype != MOE_F32 && acc->dtype != MOE_F64) || !moe_tensor_same_shape(acc, g) ||
        !moe_tensor_is_contiguous(g) || !sole_owner(acc))
        return false;
    moe_cpu_add_into(acc->dtype, moe_tensor_data(acc), moe_tensor_data(g), moe_tensor_numel(acc));
    moe_tensor_bump_version(acc);
    return true;
}

moe_status moe_grad_accumulate(moe_tensor *leaf, moe_tensor *g, bool fresh)
{
    pthread_mutex_t *lock = grad_lock(leaf);
    pthread_mutex_lock(lock);
    moe_tensor *old = leaf->grad, *sum = NULL;
    moe_status st = MOE_OK;
    if (!old) {
        /* keep G itself when nobody else holds it, else a copy (G may be a
         * view of another tensor) */
        fresh = fresh || (sole_owner(g) && g->dtype == leaf->dtype && g->device == leaf->device &&
                          moe_tensor_same_shape(g, leaf));
        if (fresh) {
            sum = moe_tensor_retain(g);
        } else {
            st = moe_tensor_empty(&sum, leaf->dtype, leaf->device, leaf->ndim, leaf->shape);
            if (st == MOE_OK) st = moe_tensor_copy_(sum, g);
        }
    } else if (add_in_place(old, g)) { /* the leaf alone holds its gradient */
        sum = old;
        old = NULL;
    } else {
        st = moe_add(&sum, old, g);
        if (st == MOE_OK && sum->dtype != leaf->dtype) {
            moe_tensor *c;
            st = moe_to_dtype(&c, sum, leaf->dtype);
            moe_tensor_release(sum);
            sum = st == MOE_OK ? c : NULL;
        }
    }
    if (st == MOE_OK) {
        leaf->grad = sum;
    } else {
        moe_tensor_release(sum);
        old = NULL; /* kept */
    }
    pthread_mutex_unlock(lock);
    moe_tensor_release(old);
    moe_tensor_release(g);
    return st;
}

moe_status moe_detach(moe_tensor **out, moe_tensor *t)
{
    return moe_tensor_new_view(out, t, t->storage, t->ndim, t->shape, t->strides, t->offset);
}

/* ---- hooks ------------------------------------------------------------------ */

static int next_hook_id = 1;

moe_status moe_tensor_register_hook(moe_tensor *t, moe_hook_fn fn, void *ctx,
                                    void (*ctx_free)(void *), int *id)
{
    if (!t->requires_grad)
        return moe_fail(MOE_ERR_STATE, "register-hook!",
                        "tensor of shape %s does not require grad; its gradient is never computed",
                        moe_shape_str(t));
    moe_hook *h = calloc(1, sizeof *h);
    if (!h) return moe_fail(MOE_ERR_NOMEM, "register-hook!", "out of memory for a hook of %zu bytes", sizeof *h);
    h->fn = fn;
    h->ctx = ctx;
    h->ctx_free = ctx_free;
    h->id = __atomic_fetch_add(&next_hook_id, 1, __ATOMIC_RELAXED);
    moe_hook **list = t->grad_fn ? &t->grad_fn->hooks : &t->hooks;
    moe_hook **tail = list;
    while (*tail) tail = &(*tail)->next;
    *tail = h;
    if (id) *id = h->id;
    return MOE_OK;
}

bool moe_tensor_remove_hook(moe_tensor *t, int id)
{
    moe_hook **list = t->grad_fn ? &t->grad_fn->hooks : &t->hooks;
    for (moe_hook **p = list; *p; p = &(*p)->next)
        if ((*p)->id == id) {
            moe_hook *h = *p;
            *p = h->next;
            if (h->ctx_free) h->ctx_free(h->ctx);
            free(h);
            return true;
        }
    return false;
}

static void free_hooks(moe_hook *h)
{
    while (h) {
        moe_hook *next = h->next;
        if (h->ctx_free) h->ctx_free(h->ctx);
        free(h);
        h = next;
    }
}

static moe_status run_hooks(moe_hook *h, moe_tensor **grad)
{
    bool prev = moe_grad_set_enabled(false);
    moe_status st = MOE_OK;
    hook_depth++;
    for (; h && st == MOE_OK; h = h->next) st = h->fn(grad, h->ctx);
    hook_depth--;
    moe_grad_set_enabled(prev);
    return st;
}

/* ---- nodes -------------------------------------------------------------------- */

moe_status moe_node_new(moe_node **out, const char *name, moe_backward_fn backward, int n_inputs,
                        moe_tensor *const *inputs)
{
    *out = NULL;
    if (n_inputs > MOE_NODE_MAX_INPUTS)
        return moe_fail(MOE_ERR_ARG, name, "too many differentiable inputs (%d > %d)", n_inputs,
                        MOE_NODE_MAX_INPUTS);
    if (!backward) return moe_fail(MOE_ERR_ARG, name, "a node needs a backward function");
    moe_node *n = calloc(1, sizeof *n);
    if (!n) return moe_fail(MOE_ERR_NOMEM, name, "out of memory for an autograd node of %zu bytes", sizeof *n);
    n->name = name;
    n->backward = backward;
    n->n_inputs = n_inputs;
    for (int i = 0; i < n_inputs; i++)
        n->inputs[i] = moe_tensor_needs_grad(inputs[i]) ? moe_tensor_retain(inputs[i]) : NULL;
    atomic_init(&n->refcount, 1);
    *out = n;
    return MOE_OK;
}

moe_status moe_node_save(moe_node *node, moe_tensor *t)
{
    if (node->n_saved >= MOE_NODE_MAX_SAVED)
        return moe_fail(MOE_ERR_ARG, node->name, "too many saved tensors (max %d)", MOE_NODE_MAX_SAVED);
    moe_tensor *keep = NULL;
    if (t && t->grad_fn == node) {
        MOE_TRY(moe_detach(&keep, t)); /* no cycle through our own output */
    } else {
        keep = moe_tensor_retain(t);
    }
    node->saved_version[node->n_saved] = keep ? moe_tensor_version(keep) : 0;
    node->saved[node->n_saved++] = keep;
    return MOE_OK;
}

void moe_node_attach(moe_node *node, moe_tensor *out)
{
    if (out->grad_fn) moe_node_release(out->grad_fn);
    out->grad_fn = node;
    out->requires_grad = true;
    node->out_ndim = out->ndim;
    for (int i = 0; i < out->ndim; i++) node->out_shape[i] = out->shape[i];
    node->out_dtype = out->dtype;
    node->out_device = out->device;
}

void moe_node_retain(moe_node *node)
{
    atomic_fetch_add_explicit(&node->refcount, 1, memory_order_relaxed);
}

static void node_free_saved(moe_node *n)
{
    for (int i = 0; i < n->n_saved; i++) {
        moe_tensor_release(n->saved[i]);
        n->saved[i] = NULL;
    }
    n->n_saved = 0;
    if (n->ctx_free) n->ctx_free(n->ctx);
    n->ctx = NULL;
    n->ctx_free = NULL;
}

/* Releasing a long chain recursively could overflow the C stack, so nodes
 * whose count drops to zero are freed from an explicit work list. */
void moe_node_release(moe_node *node)
{
    moe_node **stack = NULL;
    size_t len = 0, cap = 0;
    moe_node *n = node;
    while (n) {
        if (atomic_fetch_sub_explicit(&n->refcount, 1, memory_order_acq_rel) == 1) {
            node_free_saved(n);
            free_hooks(n->hooks);
            moe_tensor_release(n->grad_acc);
            for (int i = 0; i < n->n_inputs; i++) {
                moe_tensor *in = n->inputs[i];
                if (!in) continue;
                /* Detach the input's grad_fn from it before freeing the tensor
                 * so that its node is released here, iteratively. */
                if (atomic_load(&in->refcount) == 1 && in->grad_fn) {
                    moe_node *child = in->grad_fn;
                    in->grad_fn = NULL;
                    if (len == cap) {
                        cap = cap ? 2 * cap : 16;
                        moe_node **grown = realloc(stack, cap * sizeof *stack);
                        if (!grown) { /* fall back to recursion */
                            moe_node_release(child);
                            moe_tensor_release(in);
                            continue;
                        }
                        stack = grown;
                    }
                    stack[len++] = child;
                }
                moe_tensor_release(in);
            }
            free(n);
        }
        n = len ? stack[--len] : NULL;
    }
    free(stack);
}

moe_status moe_autograd_record(moe_tensor *out, const char *name, moe_backward_fn backward,
                               int n_inputs, moe_tensor *const *inputs, int n_saved,
                               moe_tensor *const *saved, void *ctx, void (*ctx_free)(void *))
{
    if (!moe_any_needs_grad(n_inputs, inputs)) {
        if (ctx_free) ctx_free(ctx);
        return MOE_OK;
    }
    moe_node *node;
    moe_status st = moe_node_new(&node, name, backward, n_inputs, inputs);
    if (st != MOE_OK) {
        if (ctx_free) ctx_free(ctx);
        return st;
    }
    node->ctx = ctx;
    node->ctx_free = ctx_free;
    moe_node_attach(node, out);
    for (int i = 0; i < n_saved; i++) MOE_TRY(moe_node_save(node, saved[i]));
    return MOE_OK;
}

moe_status moe_function_apply(moe_tensor **out, const moe_function *fn, int n_inputs,
                              moe_tensor *const *inputs, void *ctx, void (*ctx_free)(void *))
{
    *out = NULL;
    bool record = moe_any_needs_grad(n_inputs, inputs);
    moe_node *node = NULL;
    if (record) {
        moe_status st = moe_node_new(&node, fn->name, fn->backward, n_inputs, inputs);
        if (st != MOE_OK) {
            if (ctx_free) ctx_free(ctx);
            return st;
        }
    } else {
        /* The forward still gets a node to save into; it is simply dropped. */
        node = calloc(1, sizeof *node);
        if (!node) {
            if (ctx_free) ctx_free(ctx);
            return moe_fail(MOE_ERR_NOMEM, fn->name, "out of memory for an autograd node of %zu bytes", sizeof *node);
        }
        node->name = fn->name;
        node->backward = fn->backward;
        atomic_init(&node->refcount, 1);
    }
    node->ctx = ctx;
    node->ctx_free = ctx_free;
    bool prev = moe_grad_set_enabled(false);
    moe_status st = fn->forward(out, n_inputs, inputs, node);
    moe_grad_set_enabled(prev);
    if (st == MOE_OK && !*out) st = moe_fail(MOE_ERR_STATE, fn->name, "forward returned no tensor");
    if (st != MOE_OK || !record) {
        moe_node_release(node);
        return st;
    }
    if ((*out)->grad_fn) { /* forward returned a graph tensor: cut it loose */
        moe_tensor *d;
        st = moe_detach(&d, *out);
        moe_tensor_release(*out);
        *out = d;
        if (st != MOE_OK) {
            moe_node_release(node);
            return st;
        }
    }
    moe_node_attach(node, *out);
    return MOE_OK;
}

/* ---- backward -------------------------------------------------------------------- */

typedef struct node_list {
    moe_node **items;
    size_t len, cap;
} node_list;

static moe_status list_push(node_list *l, moe_node *n)
{
    if (l->len == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        moe_node **grown = realloc(l->items, cap * sizeof *grown);
        if (!grown) return moe_fail(MOE_ERR_NOMEM, "backward!", "out of memory for %zu bytes of the graph walk", cap * sizeof *grown);
        l->items = grown;
        l->cap = cap;
    }
    l->items[l->len++] = n;
    return MOE_OK;
}

/* ---- concurrent walks --------------------------------------------------------------
 * A node's scratch (pending count, gradient accumulator) serves one walk at a
 * time: a walk claims each node it reaches. Meeting a node claimed by a walk
 * on another thread, it lets go of its claims, waits until some walk ends and
 * starts over. (A thread runs one walk at a time: moe_backward refuses to be
 * called from hooks and backward functions.) Leaves are never claimed, so
 * passes through separate graphs into shared parameters run side by side. */
typedef struct walk {
    char token; /* a walk is known by its address */
} walk;

static pthread_mutex_t walk_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t walk_ended = PTHREAD_COND_INITIALIZER;
static unsigned long walks_ended; /* under walk_lock */

static unsigned long walks_ended_now(void)
{
    pthread_mutex_lock(&walk_lock);
    unsigned long n = walks_ended;
    pthread_mutex_unlock(&walk_lock);
    return n;
}

/* Give back the claims on the nodes in CLAIMED; then wake waiting walks. */
static void walk_release(node_list *claimed)
{
    if (!claimed->len) return;
    for (size_t i = 0; i < claimed->len; i++)
        atomic_store_explicit(&claimed->items[i]->walker, NULL, memory_order_release);
    claimed->len = 0;
    pthread_mutex_lock(&walk_lock);
    walks_ended++;
    pthread_cond_broadcast(&walk_ended);
    pthread_mutex_unlock(&walk_lock);
}

/* A walk holds a reference to each node it claimed (in ORDER), so that a node
 * stays valid while release_consumed frees the tensors around it; this lets
 * the claims go and drops those references. */
static void release_order(node_list *order)
{
    size_t len = order->len;
    walk_release(order);
    for (size_t i = 0; i < len; i++) moe_node_release(order->items[i]);
}

/* Node N has delivered its input gradients in a backward that frees the
 * graph: its saved tensors and its inputs are of no more use, so let them go
 * now rather than at the end of the walk. Activations then die as the
 * backward passes them instead of all living until its last node. */
static void release_consumed(moe_node *n)
{
    node_free_saved(n);
    n->freed = true;
    for (int i = 0; i < n->n_inputs; i++) {
        moe_tensor *in = n->inputs[i];
        n->inputs[i] = NULL;
        moe_tensor_release(in);
    }
}

typedef enum { CLAIM_NEW, CLAIM_MINE, CLAIM_BUSY } claim_result;

/* Claim N for W. */
static claim_result walk_claim(walk *w, moe_node *n)
{
    void *expected = NULL;
    if (atomic_compare_exchange_strong_explicit(&n->walker, &expected, w, memory_order_acquire,
                                                memory_order_relaxed))
        return CLAIM_NEW;
    return expected == w ? CLAIM_MINE : CLAIM_BUSY;
}

/* Accumulate G into *ACC (taking over the reference to G): in place when
 * the walk alone holds *ACC. */
static moe_status accumulate(moe_tensor **acc, moe_tensor *g)
{
    if (!*acc) {
        *acc = g;
        return MOE_OK;
    }
    if (add_in_place(*acc, g)) {
        moe_tensor_release(g);
        return MOE_OK;
    }
    moe_tensor *sum;
    moe_status st = moe_add(&sum, *acc, g);
    moe_tensor_release(g);
    if (st != MOE_OK) return st;
    moe_tensor_release(*acc);
    *acc = sum;
    return MOE_OK;
}

/* Hooks of the leaf first; then the sum, under the leaf's lock. */
static moe_status accumulate_leaf(moe_tensor *leaf, moe_tensor *g)
{
    moe_status st = run_hooks(leaf->hooks, &g);
    if (st != MOE_OK) {
        moe_tensor_release(g);
        return st;
    }
    return moe_grad_accumulate(leaf, g, false);
}

/* The tensors N saved must still hold the values its forward saw. */
static moe_status check_saved_versions(const moe_node *n)
{
    for (int i = 0; i < n->n_saved; i++) {
        const moe_tensor *t = n->saved[i];
        if (!t) continue;
        uint64_t now = moe_tensor_version(t);
        if (now != n->saved_version[i])
            return moe_fail(MOE_ERR_STATE, "backward!",
                            "a tensor needed for the gradient (%s %s, saved by '%s') was modified by "
                            "an in-place operation: it is at version %llu, expected version %llu; "
                            "change a clone instead, or change it after backward",
                            moe_dtype_name(t->dtype), moe_shape_str(t), n->name,
                            (unsigned long long)now, (unsigned long long)n->saved_version[i]);
    }
    return MOE_OK;
}

static moe_status check_grad_shape(const char *who, moe_tensor *expect, moe_tensor *g)
{
    if (!moe_tensor_same_shape(expect, g))
        return moe_fail(MOE_ERR_SHAPE, "backward!", "'%s' produced a gradient of shape %s for an input of shape %s",
                        who, moe_shape_str(g), moe_shape_str(expect));
    return MOE_OK;
}

static moe_status backward_walk(moe_tensor *root, moe_tensor *grad, bool retain_graph);

moe_status moe_backward(moe_tensor *root, moe_tensor *grad, bool retain_graph)
{
    if (hook_depth > 0)
        return moe_fail(MOE_ERR_STATE, "backward!",
                        "called inside a gradient hook, where gradient recording is off; a hook "
                        "gets the gradient and may return a replacement, it cannot run a backward");
    if (backward_depth > 0)
        return moe_fail(MOE_ERR_STATE, "backward!",
                        "called inside the backward function of a node, where gradient recording "
                        "is off; a backward function returns gradients, it cannot run a backward");
    backward_depth++;
    moe_status st = backward_walk(root, grad, retain_graph);
    backward_depth--;
    return st;
}

static moe_status backward_walk(moe_tensor *root, moe_tensor *grad, bool retain_graph)
{
    if (!root->requires_grad)
        return moe_fail(MOE_ERR_STATE, "backward!",
                        "tensor of shape %s does not require grad (it was made by non-differentiable "
                        "ops, under no-grad, or detached)",
                        moe_shape_str(root));
    moe_tensor *seed;
    if (grad) {
        if (!moe_tensor_same_shape(root, grad))
            return moe_fail(MOE_ERR_SHAPE, "backward!", "gradient of shape %s for an output of shape %s",
                            moe_shape_str(grad), moe_shape_str(root));
        seed = moe_tensor_retain(grad);
    } else {
        if (moe_tensor_numel(root) != 1)
            return moe_fail(MOE_ERR_SHAPE, "backward!",
                            "backward without a gradient needs a one-element output, got shape %s",
                            moe_shape_str(root));
        MOE_TRY(moe_tensor_ones(&seed, root->dtype, root->device, root->ndim, root->shape));
    }
    bool prev = moe_grad_set_enabled(false);
    moe_status st = MOE_OK;
    node_list order = {0}, ready = {0};

    if (!root->grad_fn) { /* backward on a leaf: its gradient is the seed */
        st = accumulate_leaf(root, seed);
        moe_grad_set_enabled(prev);
        return st;
    }

    /* 1. Claim the reachable nodes and count each node's consumers. */
    walk w = {0};
    node_list stack = {0};
    unsigned long ended;
start:
    ended = walks_ended_now();
    if (walk_claim(&w, root->grad_fn) != CLAIM_NEW) goto busy;
    MOE_TRYG(list_push(&order, root->grad_fn));
    moe_node_retain(root->grad_fn);
    root->grad_fn->pending = 0;
    moe_tensor_release(root->grad_fn->grad_acc);
    root->grad_fn->grad_acc = NULL;
    MOE_TRYG(list_push(&stack, root->grad_fn));
    while (stack.len) {
        moe_node *n = stack.items[--stack.len];
        if (n->freed) {
            st = moe_fail(MOE_ERR_STATE, "backward!",
                          "the graph through '%s' was freed by an earlier backward; pass "
                          "retain-graph to backward more than once",
                          n->name);
            goto done;
        }
        /* before any node runs: a failed check leaves the graph whole */
        MOE_TRYG(check_saved_versions(n));
        for (int i = 0; i < n->n_inputs; i++) {
            moe_tensor *in = n->inputs[i];
            if (!in || !in->grad_fn) continue;
            moe_node *c = in->grad_fn;
            claim_result claim = walk_claim(&w, c);
            if (claim == CLAIM_BUSY) goto busy;
            if (claim == CLAIM_NEW) {
                MOE_TRYG(list_push(&order, c));
                moe_node_retain(c);
                c->pending = 0;
                moe_tensor_release(c->grad_acc);
                c->grad_acc = NULL;
                MOE_TRYG(list_push(&stack, c));
            }
            c->pending++;
        }
    }
    goto claimed;
busy:
    /* Another walk holds a node: let go of ours, then wait for a walk to end. */
    release_order(&order);
    stack.len = 0;
    pthread_mutex_lock(&walk_lock);
    while (walks_ended == ended) pthread_cond_wait(&walk_ended, &walk_lock);
    pthread_mutex_unlock(&walk_lock);
    goto start;
claimed:

    /* 2. Kahn's order: a node runs once all its consumers have delivered. */
    root->grad_fn->grad_acc = seed;
    seed = NULL;
    MOE_TRYG(list_push(&ready, root->grad_fn));
    while (ready.len) {
        moe_node *n = ready.items[--ready.len];
        moe_tensor *g = n->grad_acc;
        n->grad_acc = NULL;
        if (!g) MOE_TRYG(moe_tensor_zeros(&g, n->out_dtype, n->out_device, n->out_ndim, n->out_shape));
        st = run_hooks(n->hooks, &g);
        /* again: a hook or an earlier node's backward may have changed a
         * saved tensor in place since the walk checked it */
        if (st == MOE_OK) st = check_saved_versions(n);
        moe_tensor *gin[MOE_NODE_MAX_INPUTS] = {0};
        if (st == MOE_OK) st = n->backward(n, g, gin);
        moe_tensor_release(g);
        for (int i = 0; i < n->n_inputs; i++) {
            moe_tensor *in = n->inputs[i], *gi = gin[i];
            if (st != MOE_OK || !in) {
                moe_tensor_release(gi);
                continue;
            }
            if (gi) st = check_grad_shape(n->name, in, gi);
            if (st != MOE_OK) {
                moe_tensor_release(gi);
                continue;
            }
            if (in->grad_fn) {
                if (gi) st = accumulate(&in->grad_fn->grad_acc, gi);
                if (--in->grad_fn->pending == 0 && st == MOE_OK) st = list_push(&ready, in->grad_fn);
            } else if (gi) {
                st = accumulate_leaf(in, gi);
            }
        }
        if (st != MOE_OK) goto done;
        if (!retain_graph) release_consumed(n);
    }

done:
    /* 3. Free saved tensors unless retained; drop any stray accumulators. */
    for (size_t i = 0; i < order.len; i++) {
        moe_node *n = order.items[i];
        moe_tensor_release(n->grad_acc);
        n->grad_acc = NULL;
        if (!retain_graph && st == MOE_OK) {
            node_free_saved(n);
            n->freed = true;
        }
    }
    moe_tensor_release(seed);
    release_order(&order);
    free(order.items);
    free(ready.items);
    free(stack.items);
    moe_grad_set_enabled(prev);
    return st;
}
