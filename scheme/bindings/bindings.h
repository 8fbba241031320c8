/* bindings.h — shared by the files of libguile-moelab; not installed.
 *
 * The pieces:
 *   tensor-type.c   the <tensor> foreign object: wrap, unwrap, finalizer, printing
 *   convert.c       Scheme arguments → C (dtypes, devices, shapes, dims, numbers)
 *   error.c         C statuses → moelab-error; Scheme errors inside callbacks → statuses
 *   tensor-func.c   creation, element access, conversion to lists and SRFI-4 vectors
 *   ops-func.c      every op of core/ops.h and the views of core/tensor.h
 *   autograd-func.c backward, grads, grad mode, hooks, custom functions
 *   router-type.c   the <router>, <routing> and <balance-tracker> foreign objects
 *   router-func.c   routers, routings, balance trackers, the standalone losses
 *   router-options.c make-router's keywords → a router config; metrics → alist
 *   layer-type.c    the <moe-layer> foreign object
 *   layer-func.c    the primitives of (moelab layer)
 *   group-type.c    the <group> and <rank-context> foreign objects and their
 *                   scopes (group-type.h: shared with the next two)
 *   ranks-func.c    with-ranks: rank threads, mpirun, mesh queries
 *   collective-func.c the collectives, point to point, timeouts
 *   grad-sync-type.c the <grad-sync> foreign object
 *   grad-sync-func.c bucketed gradient all-reduce
 *   tokenizer-type.c the <tokenizer> foreign object
 *   data-func.c     tokenizers and token files (data-func.h: what the
 *                   tokenizer and dataset pieces share)
 *   dataset-type.c  the <dataset> foreign object
 *   dataset-func.c  datasets, batches, the dataset state
 *   model-type.c    the <moe-transformer> foreign object
 *   model-func.c    the transformer, attention and RoPE primitives
 *   optimizer-type.c the <optimizer> foreign object
 *   optim-func.c    optimizers, gradient clipping, learning-rate schedules
 *   metrics-log-type.c the <metrics-log> foreign object
 *   metrics-func.c  metrics files (JSONL) and Scheme data ↔ JSON
 *   checkpoint-func.c safetensors files, model files, atomic JSON files
 *   trainer-func.c  what the trainer asks of C: router metrics, threads, peak memory
 *   gc-roots.c      keeps the collector from scanning the big numeric libraries
 *   init.c          scm_init_moelab: the (moelab primitives) module
 *
 * Every primitive is a %-prefixed snarfed SCM_DEFINE; the documented public
 * procedures wrapping them live in the scheme/moelab/ modules. */
#ifndef MOELAB_GUILE_BINDINGS_H
#define MOELAB_GUILE_BINDINGS_H

#include <libguile.h>

#include "moelab-guile.h"
#include "moelab.h"
#include "dist/grad_sync.h"
#include "nn/model.h"
#include "nn/rope.h"

/* Exported from the shared library (everything else is hidden). */
#define MOELAB_API __attribute__((visibility("default")))

/* ---- tensor-type.c ------------------------------------------------------- */
void moelab_init_tensor_type(void);
/* The <tensor> class. */
SCM moelab_tensor_class(void);
/* True when OBJ is a <tensor> (freed or not). */
bool moelab_is_tensor(SCM obj);
/* Wrap T, taking over the caller's reference. */
SCM moelab_wrap(moe_tensor *t);
/* Wrap T with a reference of its own (T stays the caller's); NULL gives #f. */
SCM moelab_wrap_retained(moe_tensor *t);
/* The live tensor in OBJ (borrowed): wrong-type-arg when OBJ is not a tensor
 * (position POS of SUBR), moelab-error when it has been freed. Callers keep
 * OBJ reachable (scm_remember_upto_here) while they use the pointer. */
moe_tensor *moelab_unwrap(SCM obj, int pos, const char *subr);
/* Like moelab_unwrap, but #f gives NULL. */
moe_tensor *moelab_unwrap_opt(SCM obj, int pos, const char *subr);
/* Tell the collector how much native memory (libmoelab's live bytes, every
 * device) has grown since the last report, so that garbage tensors, layers
 * and routings are collected before the process grows large. Called by
 * moelab_wrap and by every primitive that hands Scheme another object that
 * holds tensors. Guile mode only. */
void moelab_report_native_memory(void);
/* Hold the reports back until the matching release (holds nest, from any
 * thread); the last release reports the growth since the last report. */
void moelab_hold_memory_reports(void);
void moelab_release_memory_reports(void);
/* Release device tensors queued by finalizers (run on a Guile thread). */
void moelab_drain_release_queue(void);
/* Drop a reference from a finalizer: host tensors at once, device tensors
 * queued for the next drain. */
void moelab_release_from_finalizer(moe_tensor *t);
void moelab_init_tensor_type_functions(void);

/* ---- convert.c ------------------------------------------------------------- */
/* The text of a symbol or string into BUF (truncated to SIZE); false for
 * anything else. */
bool moelab_name_text(SCM obj, char *buf, size_t size);
/* A symbol's text into BUF, raising wrong-type-arg (position POS of SUBR,
 * expecting WHAT) for anything else: enum-like arguments (dtype, op, …). */
void moelab_to_name(SCM obj, char *buf, size_t size, int pos, const char *subr, const char *what);
moe_dtype moelab_to_dtype(SCM sym, int pos, const char *subr);
SCM moelab_from_dtype(moe_dtype d);
moe_device moelab_to_device(SCM sym, int pos, const char *subr);
SCM moelab_from_device(moe_device d);
/* A shape: a list of non-negative exact integers (or one integer: 1-D).
 * Returns the number of dims; fills SHAPE (MOE_MAX_DIMS slots). */
int moelab_to_shape(SCM obj, int64_t *shape, int pos, const char *subr);
/* Like moelab_to_shape, but -1 is allowed (reshape/view/expand). */
int moelab_to_shape_infer(SCM obj, int64_t *shape, int pos, const char *subr);
SCM moelab_from_dims(int ndim, const int64_t *dims);
/* Dims: #f (none: returns 0), an integer, or a list of integers. */
int moelab_to_dims(SCM obj, int *dims, int pos, const char *subr);
int moelab_to_int(SCM obj, int pos, const char *subr);
int64_t moelab_to_int64(SCM obj, int pos, const char *subr);
/* Any real number (exact or inexact). */
double moelab_to_double(SCM obj, int pos, const char *subr);
/* A real number or #f (→ FALLBACK). */
double moelab_to_double_or(SCM obj, double fallback, int pos, const char *subr);
/* A Scheme value for element value V of dtype D: inexact real for floats,
 * exact integer for i32/i64, boolean for bool. */
SCM moelab_from_element(moe_dtype d, double v);
/* A symbol from C text: the keys of the alists the bindings hand back. */
static inline SCM sym(const char *name) { return scm_from_utf8_symbol(name); }

/* ---- error.c ----------------------------------------------------------------- */
void moelab_init_error(void);
/* Raise moelab-error for the last C error, naming SUBR (the Scheme procedure). */
SCM_NORETURN void moelab_throw_last(const char *subr);
/* The same, dropping the message's "COP: " prefix when the core named the
 * operation COP rather than SUBR (COP NULL: any one-word prefix). */
SCM_NORETURN void moelab_throw_last_from(const char *subr, const char *cop);
/* Raise moelab-error with a message of our own. */
SCM_NORETURN void moelab_throw(const char *subr, moe_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Check a status: raise moelab-error unless MOE_OK. */
#define MOELAB_CHECK(subr, expr)                                               \
    do {                                                                       \
        if ((expr) != MOE_OK) moelab_throw_last(subr);                         \
    } while (0)

/* Calling Scheme from inside libmoelab (callbacks): no non-local exit may
 * cross the C frames, so the call runs under a catch-all. On success *RESULT
 * is the value and MOE_OK is returned; on a Scheme error the error is recorded
 * with moe_fail(MOE_ERR_STATE, OP, "WHAT: <printed Scheme error>") and, when
 * KEY/ARGS are non-NULL, the thrown key and arguments are stored there.
 * Works from any thread (enters Guile mode when needed). */
moe_status moelab_call_safely(SCM proc, SCM args, SCM *result, const char *op, const char *what,
                              SCM *key, SCM *throw_args);

/* ---- group-type.c ----------------------------------------------------------------- */
/* The C group behind a Scheme <group> (NULL for #f or the trivial one-rank
 * group), usable on the calling thread: raises moelab-error when its
 * with-ranks has returned or it belongs to another rank's thread. Whoever
 * keeps it beyond the call takes a reference (moe_group_retain). */
moe_group *moelab_to_group(SCM obj, int pos, const char *subr);

/* ---- grad-sync-type.c ---------------------------------------------------------------- */
void moelab_init_grad_sync_type(void);
/* Wrap a new grad sync; the Scheme object owns it from then on. */
SCM moelab_wrap_grad_sync(moe_grad_sync *s);
/* The live grad sync in OBJ: wrong-type-arg when OBJ is not a <grad-sync>,
 * moelab-error when it has been freed. */
moe_grad_sync *moelab_to_grad_sync(SCM obj, int pos, const char *subr);

/* ---- router-type.c -------------------------------------------------------------------- */
void moelab_init_router_type(void);
/* Wrap a new C object; the Scheme object owns it from then on. */
SCM moelab_wrap_router(moe_router *r);
SCM moelab_wrap_routing(moe_routing *o);
SCM moelab_wrap_tracker(moe_balance_tracker *t);
/* The C object inside OBJ (borrowed); wrong-type-arg (position POS of
 * SUBR) for anything else. */
moe_router *moelab_to_router(SCM obj, int pos, const char *subr);
moe_routing *moelab_to_routing(SCM obj, int pos, const char *subr);
moe_balance_tracker *moelab_to_tracker(SCM obj, int pos, const char *subr);

/* ---- router-options.c ------------------------------------------------------------ */
/* Apply a keyword list such as (#:score sigmoid #:top-k 2 #:losses ((micro-batch . 1e-2))) to CFG:
 * #:preset first (when present), then every other keyword in order. Keys and values exactly as
 * make-router takes them (symbols or strings for enums, #f for "none", 'auto where the contract has it).
 * Unknown keywords or bad values raise moelab-error naming SUBR, the keyword and the value.
 * Ranges are left to moe_router_config_validate. */
void moelab_router_options(SCM options, moe_router_config *cfg, const char *subr);
/* The metrics of R as an alist (what router-metrics returns). */
SCM moelab_router_metrics_alist(moe_router *r, const char *subr);
/* CFG as an alist of (keyword-name . value), values as make-router takes them
 * (what router-config returns). */
SCM moelab_router_config_alist(const moe_router_config *cfg);

/* ---- layer-type.c ------------------------------------------------------------------ */
void moelab_init_layer_type(void);
/* Wrap a new layer; the Scheme object owns it from then on. */
SCM moelab_wrap_layer(moe_layer *l);
/* The live layer in OBJ: wrong-type-arg when OBJ is not a <moe-layer>,
 * moelab-error when it has been freed. */
moe_layer *moelab_to_layer(SCM obj, int pos, const char *subr);

/* ---- layer-func.c ------------------------------------------------------------------ */
/* The routing of L's last forward as moe-last-routing returns it (#f before
 * the first). */
SCM moelab_layer_routing_alist(const moe_layer *l);

/* ---- model-type.c ------------------------------------------------------------------ */
void moelab_init_model_type(void);
/* Wrap M in a new <moe-transformer> (which owns it). */
SCM moelab_wrap_model(moe_model *m);
bool moelab_is_model(SCM obj);
/* The live model in OBJ: wrong-type-arg when OBJ is not a <moe-transformer>,
 * moelab-error when it has been freed. */
moe_model *moelab_to_model(SCM obj, int pos, const char *subr);
/* ---- optimizer-type.c --------------------------------------------------------------- */
void moelab_init_optimizer_type(void);
/* Wrap a new optimizer; the Scheme object owns it from then on. */
SCM moelab_wrap_optimizer(moe_optimizer *o);
/* The optimizer in OBJ (borrowed); wrong-type-arg for anything else. */
moe_optimizer *moelab_to_optimizer(SCM obj, int pos, const char *subr);

/* ---- metrics-log-type.c ------------------------------------------------------------- */
void moelab_init_metrics_log_type(void);
/* Wrap an open log; the Scheme object owns it from then on. */
SCM moelab_wrap_metrics_log(moe_metrics_log *log);
/* The open log in OBJ: wrong-type-arg when OBJ is not a <metrics-log>,
 * moelab-error when it has been closed. */
moe_metrics_log *moelab_to_metrics_log(SCM obj, int pos, const char *subr);

/* ---- metrics-func.c ------------------------------------------------------------------- */
/* Scheme data as JSON (a new reference): alists → objects, lists and vectors
 * → arrays, tensors → nested arrays, non-finite numbers → null. Raises
 * moelab-error naming SUBR for anything else, before building anything. */
json_t *moelab_to_json(SCM value, const char *subr);
/* JSON as Scheme data: objects → alists with symbol keys, arrays → lists,
 * null → +nan.0. */
SCM moelab_from_json(json_t *j);

/* ---- gc-roots.c -------------------------------------------------------------- */
void moelab_init_gc_roots(void);

/* ---- per-file primitive registration (init.c calls them) ------------------ */
void moelab_init_tensor_func(void);
void moelab_init_ops_func(void);
void moelab_init_autograd_func(void);

#endif
