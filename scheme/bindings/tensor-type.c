/* tensor-type.c — the <tensor> foreign object.
 *
 * A <tensor> holds one reference to a moe_tensor in its single slot. The
 * finalizer and (tensor-free! t) both drop it and clear the slot, so either
 * may run first and the second does nothing. Views keep their parent's
 * storage alive on the C side, so a view stays valid after the parent's
 * Scheme object is gone.
 *
 * Finalizers run on Guile's finalizer thread. Host tensors are released right
 * there (libmoelab's reference counts are atomic); device tensors are queued
 * and released by the next primitive that makes a tensor, on a Guile thread
 * that uses moelab. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bindings.h"

static SCM tensor_class = SCM_BOOL_F;

/* ---- deferred release of device tensors ----------------------------------- */

typedef struct queued {
    moe_tensor *t;
    struct queued *next;
} queued;

static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;
static queued *queue_head;
static int queue_nonempty; /* read without the lock as a hint */

void moelab_drain_release_queue(void)
{
    if (!__atomic_load_n(&queue_nonempty, __ATOMIC_ACQUIRE)) return;
    pthread_mutex_lock(&queue_lock);
    queued *q = queue_head;
    queue_head = NULL;
    __atomic_store_n(&queue_nonempty, 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&queue_lock);
    while (q) {
        queued *next = q->next;
        moe_tensor_release(q->t);
        free(q);
        q = next;
    }
}

void moelab_release_from_finalizer(moe_tensor *t)
{
    if (t->device == MOE_CPU) {
        moe_tensor_release(t);
        return;
    }
    queued *q = malloc(sizeof *q);
    if (!q) { /* no memory to queue: release here rather than leak */
        moe_tensor_release(t);
        return;
    }
    q->t = t;
    pthread_mutex_lock(&queue_lock);
    q->next = queue_head;
    queue_head = q;
    __atomic_store_n(&queue_nonempty, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&queue_lock);
}

static void finalize_tensor(SCM obj)
{
    moe_tensor *t = scm_foreign_object_ref(obj, 0);
    if (!t) return;
    scm_foreign_object_set_x(obj, 0, NULL);
    moelab_release_from_finalizer(t);
}

/* ---- wrap / unwrap ----------------------------------------------------------- */

SCM moelab_tensor_class(void) { return tensor_class; }

bool moelab_is_tensor(SCM obj) { return SCM_IS_A_P(obj, tensor_class); }

/* ---- native memory and the collector ------------------------------------------
 * Tensor memory is malloc'd (or on a GPU), out of the collector's sight: a
 * loop that drops its results would otherwise grow until Scheme allocation
 * alone triggers a collection, and a forward's graph (activations saved for
 * backward, never wrapped) is many times its output. So every time a tensor
 * reaches Scheme, the growth of libmoelab's live bytes (all devices, every
 * storage, wrapped or not) since the last report is reported with
 * scm_gc_register_allocation: Guile collects once the reported bytes pass
 * its heap size, and the finalizers of garbage tensors give the memory back.
 * Guile 3.0 has no way to report a release; the baseline simply follows live
 * bytes down, so only new growth counts. */
static _Atomic int64_t reported_live_bytes;

static int64_t native_live_bytes(void)
{
    int64_t total = 0;
    for (int d = 0; d < MOE_DEVICE_COUNT; d++) {
        moe_memory_stats s;
        moe_memory_stats_get((moe_device)d, &s);
        total += s.live_bytes;
    }
    return total;
}

/* Callers that free what they make, such as the trainer's step, hold the
 * reports back over a stretch whose memory comes and goes within it (a
 * step's activations and gradients): a collection at its peak would find
 * no garbage, and cost about 1% of a training step. The last hold to end
 * reports at once whatever has grown meanwhile. */
static _Atomic int report_holds;

void moelab_hold_memory_reports(void) { atomic_fetch_add(&report_holds, 1); }

void moelab_release_memory_reports(void)
{
    if (atomic_fetch_sub(&report_holds, 1) == 1) moelab_report_native_memory();
}

void moelab_report_native_memory(void)
{
    if (atomic_load(&report_holds) > 0) return;
    int64_t now = native_live_bytes();
    int64_t before = atomic_exchange(&reported_live_bytes, now);
    if (now > before) scm_gc_register_allocation((size_t)(now - before));
}

SCM moelab_wrap(moe_tensor *t)
{
    moelab_drain_release_queue();
    moelab_report_native_memory();
    return scm_make_foreign_object_1(tensor_class, t);
}

SCM moelab_wrap_retained(moe_tensor *t) { return t ? moelab_wrap(moe_tensor_retain(t)) : SCM_BOOL_F; }

moe_tensor *moelab_unwrap(SCM obj, int pos, const char *subr)
{
    if (!SCM_IS_A_P(obj, tensor_class)) scm_wrong_type_arg_msg(subr, pos, obj, "tensor");
    moe_tensor *t = scm_foreign_object_ref(obj, 0);
    if (!t) moelab_throw(subr, MOE_ERR_STATE, "tensor has been freed (by tensor-free!)");
    return t;
}

moe_tensor *moelab_unwrap_opt(SCM obj, int pos, const char *subr)
{
    return scm_is_false(obj) ? NULL : moelab_unwrap(obj, pos, subr);
}

MOELAB_API SCM scm_from_moe_tensor(moe_tensor *t) { return moelab_wrap(t); }

MOELAB_API moe_tensor *scm_to_moe_tensor(SCM obj) { return moelab_unwrap(obj, 1, "scm_to_moe_tensor"); }

MOELAB_API int scm_is_moe_tensor(SCM obj) { return tensor_class != SCM_BOOL_F && moelab_is_tensor(obj); }

void moelab_init_tensor_type(void)
{
    SCM slots = scm_list_1(scm_from_utf8_symbol("ptr"));
    tensor_class = scm_make_foreign_object_type(scm_from_utf8_symbol("<tensor>"), slots, finalize_tensor);
    scm_gc_protect_object(tensor_class);
    scm_c_define("<tensor>", tensor_class);
}

/* ---- printing ---------------------------------------------------------------- */

typedef struct strbuf {
    char *s;
    size_t len, cap;
} strbuf;

static void sb_add(strbuf *b, const char *text)
{
    size_t n = strlen(text);
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 128;
        while (b->len + n + 1 > cap) cap *= 2;
        char *grown = realloc(b->s, cap);
        if (!grown) return; /* drop text rather than fail while printing */
        b->s = grown;
        b->cap = cap;
    }
    memcpy(b->s + b->len, text, n + 1);
    b->len += n;
}

/* One element as Scheme would write it (floats to 4 significant digits). */
static void format_element(char *buf, size_t size, moe_dtype d, double v)
{
    if (d == MOE_BOOL) {
        snprintf(buf, size, "%s", v != 0 ? "#t" : "#f");
    } else if (!moe_dtype_is_float(d)) {
        snprintf(buf, size, "%lld", (long long)v);
    } else if (isnan(v)) {
        snprintf(buf, size, "+nan.0");
    } else if (isinf(v)) {
        snprintf(buf, size, "%s", v > 0 ? "+inf.0" : "-inf.0");
    } else {
        snprintf(buf, size, "%.4g", v);
        if (!strpbrk(buf, ".e")) strncat(buf, ".0", size - strlen(buf) - 1);
    }
}

/* The first N elements of T (row-major) into OUT, any layout, host or device. */
static moe_status first_values(moe_tensor *t, int64_t n, double *out)
{
    moe_tensor *host = NULL;
    if (t->device != MOE_CPU) {
        bool prev = moe_grad_set_enabled(false);
        moe_status st = moe_to_device(&host, t, MOE_CPU);
        moe_grad_set_enabled(prev);
        MOE_TRY(st);
        t = host;
    }
    int64_t idx[MOE_MAX_DIMS] = {0};
    moe_status st = MOE_OK;
    for (int64_t k = 0; k < n && st == MOE_OK; k++) {
        st = moe_tensor_get(t, idx, &out[k]);
        for (int d = t->ndim - 1; d >= 0; d--) { /* odometer */
            if (++idx[d] < t->shape[d]) break;
            idx[d] = 0;
        }
    }
    moe_tensor_release(host);
    return st;
}

SCM_DEFINE(moelab_tensor_repr, "%tensor-repr", 2, 0, 0, (SCM obj, SCM limit),
           "The printed form of tensor @var{obj}, showing at most @var{limit} "
           "values (@code{#f}: all).")
#define FUNC_NAME s_moelab_tensor_repr
{
    if (!SCM_IS_A_P(obj, tensor_class)) scm_wrong_type_arg_msg(FUNC_NAME, 1, obj, "tensor");
    moe_tensor *t = scm_foreign_object_ref(obj, 0);
    if (!t) return scm_from_utf8_string("#<tensor freed>");
    int64_t lim = scm_is_false(limit) ? INT64_MAX : moelab_to_int64(limit, 2, FUNC_NAME);
    if (lim < 0) lim = 0;

    strbuf b = {0};
    char item[64];
    snprintf(item, sizeof item, "#<tensor %s", moe_dtype_name(t->dtype));
    sb_add(&b, item);
    sb_add(&b, moe_shape_str(t));
    sb_add(&b, " ");
    sb_add(&b, moe_device_name(t->device));
    if (t->requires_grad) sb_add(&b, " requires-grad");

    int64_t numel = moe_tensor_numel(t);
    int64_t n = numel < lim ? numel : lim;
    double *vals = n > 0 ? malloc((size_t)n * sizeof *vals) : NULL;
    if (n > 0 && vals && first_values(t, n, vals) == MOE_OK) {
        sb_add(&b, " (");
        for (int64_t i = 0; i < n; i++) {
            format_element(item, sizeof item, t->dtype, vals[i]);
            if (i) sb_add(&b, " ");
            sb_add(&b, item);
        }
        sb_add(&b, n < numel ? " \u2026 )" : ")");
    } else if (numel == 0) {
        sb_add(&b, " ()");
    } else if (n == 0) {
        sb_add(&b, " (\u2026 )");
    }
    free(vals);
    moe_clear_error();
    sb_add(&b, ">");
    scm_remember_upto_here_1(obj);
    SCM s = scm_from_utf8_string(b.s ? b.s : "#<tensor>");
    free(b.s);
    return s;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_tensor_p, "%tensor?", 1, 0, 0, (SCM obj), "True when @var{obj} is a tensor.")
#define FUNC_NAME s_moelab_tensor_p
{
    return scm_from_bool(SCM_IS_A_P(obj, tensor_class));
}
#undef FUNC_NAME

SCM_DEFINE(moelab_tensor_freed_p, "%tensor-freed?", 1, 0, 0, (SCM obj),
           "True when tensor @var{obj} has been released with tensor-free!.")
#define FUNC_NAME s_moelab_tensor_freed_p
{
    if (!SCM_IS_A_P(obj, tensor_class)) scm_wrong_type_arg_msg(FUNC_NAME, 1, obj, "tensor");
    return scm_from_bool(scm_foreign_object_ref(obj, 0) == NULL);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_tensor_free_x, "%tensor-free!", 1, 0, 0, (SCM obj),
           "Release the memory of tensor @var{obj} now (idempotent).")
#define FUNC_NAME s_moelab_tensor_free_x
{
    if (!SCM_IS_A_P(obj, tensor_class)) scm_wrong_type_arg_msg(FUNC_NAME, 1, obj, "tensor");
    moe_tensor *t = scm_foreign_object_ref(obj, 0);
    if (t) {
        scm_foreign_object_set_x(obj, 0, NULL);
        moe_tensor_release(t);
    }
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

void moelab_init_tensor_type_functions(void)
{
#ifndef SCM_MAGIC_SNARFER
#include "tensor-type.x"
#endif
}
