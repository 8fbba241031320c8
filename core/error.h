/* error.h — status codes and the thread-local last-error message.
 *
 * Every fallible moelab call returns a moe_status. On failure the message
 * (operation, offending shapes/dtypes/values, a hint) is kept per thread and
 * read with moe_last_error(). The library never exits or aborts. */
#ifndef MOELAB_ERROR_H
#define MOELAB_ERROR_H

#include <stdarg.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum moe_status {
    MOE_OK = 0,
    MOE_ERR_ARG,         /* a bad argument (value out of its domain) */
    MOE_ERR_SHAPE,       /* shapes do not fit together */
    MOE_ERR_DTYPE,       /* dtype not supported or mismatched */
    MOE_ERR_DEVICE,      /* device mismatch or device not available */
    MOE_ERR_INDEX,       /* index out of range */
    MOE_ERR_VALUE,       /* NaN/Inf or otherwise invalid data */
    MOE_ERR_STATE,       /* wrong state (freed graph, freed tensor, …) */
    MOE_ERR_NOMEM,       /* allocation failed */
    MOE_ERR_IO,          /* file or stream failure */
    MOE_ERR_BACKEND,     /* BLAS/CUDA/MPI/NCCL returned an error */
    MOE_ERR_UNSUPPORTED, /* valid request this build cannot do */
    MOE_STATUS_COUNT
} moe_status;

/* What a status means ("shape error", …; "?" for no status), and back. */
const char *moe_status_name(moe_status s);
bool moe_status_parse(const char *name, moe_status *out);
/* A status's symbol ("shape", "nomem", …; "?" for no status), as the Scheme
 * bindings raise it, and back. */
const char *moe_status_symbol_name(moe_status s);
bool moe_status_symbol_parse(const char *name, moe_status *out);

/* The last error message of this thread ("" when none). */
const char *moe_last_error(void);
/* The status that came with the last error of this thread. */
moe_status moe_last_status(void);
void moe_clear_error(void);

/* Record an error "OP: message" and return CODE, so call sites read
 *   return moe_fail(MOE_ERR_SHAPE, "matmul", "inner dimensions differ: %s @ %s", …); */
moe_status moe_fail(moe_status code, const char *op, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
moe_status moe_vfail(moe_status code, const char *op, const char *fmt, va_list ap);

/* An optional observer called on every recorded error (logging, bindings). It
 * must not unwind through library code. */
typedef void (*moe_error_handler)(moe_status code, const char *message, void *ctx);
void moe_set_error_handler(moe_error_handler handler, void *ctx);

/* Propagate a failing status. */
#define MOE_TRY(expr)                                                          \
    do {                                                                       \
        moe_status moe_try_s_ = (expr);                                        \
        if (moe_try_s_ != MOE_OK) return moe_try_s_;                           \
    } while (0)

/* Propagate, jumping to a cleanup label ("st" must be a moe_status in scope). */
#define MOE_TRYG(expr)                                                         \
    do {                                                                       \
        st = (expr);                                                           \
        if (st != MOE_OK) goto done;                                           \
    } while (0)

#ifdef __cplusplus
}
#endif
#endif
