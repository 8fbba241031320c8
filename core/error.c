/* error.c — thread-local last error. */
#include "error.h"

#include <stdio.h>
#include <string.h>

#include "names.h"

#define MESSAGE_MAX 1024

static _Thread_local char last_message[MESSAGE_MAX];
static _Thread_local moe_status last_status;
static moe_error_handler error_handler;
static void *error_handler_ctx;

/* What each status means: the text of an error raised without a message. */
NAME_TABLE(moe_status, status, MOE_STATUS_COUNT, [MOE_OK] = "ok", [MOE_ERR_ARG] = "bad argument",
           [MOE_ERR_SHAPE] = "shape error", [MOE_ERR_DTYPE] = "dtype error", [MOE_ERR_DEVICE] = "device error",
           [MOE_ERR_INDEX] = "index out of range", [MOE_ERR_VALUE] = "invalid value",
           [MOE_ERR_STATE] = "invalid state", [MOE_ERR_NOMEM] = "out of memory", [MOE_ERR_IO] = "i/o error",
           [MOE_ERR_BACKEND] = "backend error", [MOE_ERR_UNSUPPORTED] = "unsupported")

/* The status as a symbol: the last element of a moelab-error's arguments in
 * Scheme ('shape, 'nomem), which handlers match on. */
NAME_TABLE(moe_status, status_symbol, MOE_STATUS_COUNT, [MOE_OK] = "ok", [MOE_ERR_ARG] = "arg",
           [MOE_ERR_SHAPE] = "shape", [MOE_ERR_DTYPE] = "dtype", [MOE_ERR_DEVICE] = "device",
           [MOE_ERR_INDEX] = "index", [MOE_ERR_VALUE] = "value", [MOE_ERR_STATE] = "state",
           [MOE_ERR_NOMEM] = "nomem", [MOE_ERR_IO] = "io", [MOE_ERR_BACKEND] = "backend",
           [MOE_ERR_UNSUPPORTED] = "unsupported")

const char *moe_last_error(void) { return last_message; }
moe_status moe_last_status(void) { return last_status; }

void moe_clear_error(void)
{
    last_message[0] = '\0';
    last_status = MOE_OK;
}

moe_status moe_vfail(moe_status code, const char *op, const char *fmt, va_list ap)
{
    int n = snprintf(last_message, MESSAGE_MAX, "%s: ", op ? op : "moelab");
    if (n < 0) n = 0;
    if (n < MESSAGE_MAX) vsnprintf(last_message + n, MESSAGE_MAX - (size_t)n, fmt, ap);
    last_status = code;
    if (error_handler) error_handler(code, last_message, error_handler_ctx);
    return code;
}

moe_status moe_fail(moe_status code, const char *op, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    moe_status s = moe_vfail(code, op, fmt, ap);
    va_end(ap);
    return s;
}

void moe_set_error_handler(moe_error_handler handler, void *ctx)
{
    error_handler = handler;
    error_handler_ctx = ctx;
}
