/* error.c — errors crossing the C/Scheme boundary, in both directions.
 *
 * C → Scheme: a failing moe_status becomes
 *     (throw 'moelab-error SUBR MESSAGE ARGS (STATUS))
 * in Guile's usual error shape (SUBR the Scheme procedure, MESSAGE a format
 * string with its ~ escaped, ARGS '(), STATUS a symbol such as shape or index),
 * so the standard error printers show "In procedure matmul: …".
 *
 * Scheme → C: Scheme code called from inside libmoelab (custom backward
 * functions, gradient hooks) runs under a catch-all; an error there becomes a
 * moe_status whose message carries the printed Scheme error, and the
 * primitive that entered libmoelab raises it as moelab-error once the C frames
 * have returned. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bindings.h"

static SCM moelab_error_key = SCM_BOOL_F;

void moelab_init_error(void)
{
    moelab_error_key = scm_gc_protect_object(scm_from_utf8_symbol("moelab-error"));
}

/* A format string showing TEXT literally: every ~ doubled. */
static SCM escaped_message(const char *text)
{
    size_t n = strlen(text), tildes = 0;
    for (size_t i = 0; i < n; i++) tildes += text[i] == '~';
    if (!tildes) return scm_from_utf8_string(text);
    char *buf = malloc(n + tildes + 1);
    if (!buf) return scm_from_utf8_string("(out of memory formatting an error message)");
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        buf[k++] = text[i];
        if (text[i] == '~') buf[k++] = '~';
    }
    buf[k] = '\0';
    SCM s = scm_from_utf8_string(buf);
    free(buf);
    return s;
}

static SCM_NORETURN void raise_message(const char *subr, moe_status code, const char *text)
{
    /* "matmul: inner dimensions differ" raised by matmul reads better as
     * "In procedure matmul: inner dimensions differ". */
    size_t n = strlen(subr);
    if (strncmp(text, subr, n) == 0 && text[n] == ':' && text[n + 1] == ' ') text += n + 2;
    if (!*text) text = moe_status_name(code);
    SCM message = escaped_message(text);
    scm_error_scm(moelab_error_key, scm_from_utf8_string(subr), message, SCM_EOL,
                  scm_list_1(scm_from_utf8_symbol(moe_status_symbol_name(code))));
}

void moelab_throw_last_from(const char *subr, const char *cop)
{
    moe_status code = moe_last_status();
    const char *m = moe_last_error();
    /* The core's messages start with its operation ("all-gather: …"); SUBR
     * is shown instead. COP NULL: any one-word prefix. */
    const char *colon = strstr(m, ": ");
    if (colon && (cop ? (size_t)(colon - m) == strlen(cop) && strncmp(m, cop, strlen(cop)) == 0
                      : !memchr(m, ' ', (size_t)(colon - m))))
        m = colon + 2;
    char text[1100];
    snprintf(text, sizeof text, "%s", m);
    moe_clear_error();
    if (code == MOE_OK) code = MOE_ERR_STATE; /* a failure reported without moe_fail */
    raise_message(subr, code, text);
}

void moelab_throw_last(const char *subr) { moelab_throw_last_from(subr, subr); }

void moelab_throw(const char *subr, moe_status code, const char *fmt, ...)
{
    char text[1100];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    raise_message(subr, code, text);
}

/* ---- Scheme called from C ---------------------------------------------------- */

typedef struct call_data {
    SCM proc, args, result;
    SCM key, throw_args;
    bool failed;
} call_data;

static SCM call_body(void *data)
{
    call_data *c = data;
    return scm_apply_0(c->proc, c->args);
}

static SCM call_handler(void *data, SCM key, SCM args)
{
    call_data *c = data;
    c->failed = true;
    c->key = key;
    c->throw_args = args;
    return SCM_BOOL_F;
}

static SCM print_body(void *data)
{
    call_data *c = data;
    SCM port = scm_open_output_string();
    scm_print_exception(port, SCM_BOOL_F, c->key, c->throw_args);
    return scm_get_output_string(port);
}

static SCM print_handler(void *data, SCM key, SCM args)
{
    return scm_from_utf8_string("(an error that could not be printed)");
}

static void *call_in_guile(void *data)
{
    call_data *c = data;
    c->result = scm_c_catch(SCM_BOOL_T, call_body, c, call_handler, c, NULL, NULL);
    return NULL;
}

/* The printed form of the caught error (malloc'd, one line per line). */
static void *describe_in_guile(void *data)
{
    SCM text = scm_c_catch(SCM_BOOL_T, print_body, data, print_handler, NULL, NULL, NULL);
    char *s = scm_to_utf8_string(text);
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == ' ')) s[--n] = '\0';
    return s;
}

moe_status moelab_call_safely(SCM proc, SCM args, SCM *result, const char *op, const char *what,
                              SCM *key, SCM *throw_args)
{
    call_data c = {proc, args, SCM_BOOL_F, SCM_BOOL_F, SCM_BOOL_F, false};
    scm_with_guile(call_in_guile, &c);
    if (!c.failed) {
        *result = c.result;
        return MOE_OK;
    }
    *result = SCM_BOOL_F;
    if (key) *key = c.key;
    if (throw_args) *throw_args = c.throw_args;
    char *text = scm_with_guile(describe_in_guile, &c);
    moe_status st = moe_fail(MOE_ERR_STATE, op, "%s: %s", what, text ? text : "?");
    free(text);
    scm_remember_upto_here_2(c.key, c.throw_args);
    return st;
}
