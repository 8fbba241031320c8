/* metrics-func.c — metrics files (core/train/log.h) from Scheme (the
 * <metrics-log> foreign object: metrics-log-type.c), and the conversion
 * between Scheme data and JSON. The documented procedures are in
 * scheme/moelab/train.scm.
 *
 * Scheme → JSON: an alist (a list whose elements are all pairs with a
 * symbol or string car) → object; any other list or a vector → array ('()
 * → []); exact integers → integers; other reals → numbers (NaN and ±Inf →
 * null); strings and symbols → strings; #t/#f → true/false; a tensor →
 * nested arrays of its shape. Anything else is a moelab-error. A value is
 * checked whole before any JSON is built, so an error leaks nothing.
 *
 * JSON → Scheme: object → alist with symbol keys (in file order), array →
 * list, integer → exact integer, real → inexact real, null → +nan.0 (the
 * writer only writes null for a number that was not finite), true/false →
 * #t/#f, string → string. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bindings.h"

/* ---- Scheme → JSON ------------------------------------------------------------------ */

static bool alist_p(SCM v)
{
    if (!scm_is_pair(v) || scm_ilength(v) < 0) return false;
    for (; scm_is_pair(v); v = SCM_CDR(v)) {
        SCM e = SCM_CAR(v);
        if (!scm_is_pair(e) || !(scm_is_symbol(SCM_CAR(e)) || scm_is_string(SCM_CAR(e)))) return false;
    }
    return true;
}

static SCM key_string(SCM k) { return scm_is_symbol(k) ? scm_symbol_to_string(k) : k; }

/* Raise for anything that cannot become JSON (BUILD false), or build it
 * (BUILD true: V was checked). NULL only when out of memory. */
static json_t *convert(SCM v, bool build, int depth, const char *subr)
{
    if (depth > 100) moelab_throw(subr, MOE_ERR_ARG, "a value nested more than 100 deep cannot be written as JSON");
    if (scm_is_bool(v)) return build ? json_boolean(scm_is_true(v)) : NULL;
    if (scm_is_exact_integer(v)) {
        if (!build) return NULL;
        if (scm_is_signed_integer(v, INT64_MIN, INT64_MAX)) return json_integer(scm_to_int64(v));
        return moe_json_number(scm_to_double(v));
    }
    if (scm_is_real(v)) return build ? moe_json_number(scm_to_double(v)) : NULL;
    if (scm_is_string(v) || scm_is_symbol(v)) {
        if (!build) return NULL;
        size_t n;
        char *s = scm_to_utf8_stringn(scm_is_symbol(v) ? scm_symbol_to_string(v) : v, &n);
        json_t *j = json_stringn(s, n);
        free(s);
        return j;
    }
    if (moelab_is_tensor(v)) {
        moe_tensor *t = moelab_unwrap(v, 1, subr);
        if (t->device != MOE_CPU) moelab_throw(subr, MOE_ERR_DEVICE, "a tensor on %s cannot be written as JSON; move it to the cpu", moe_device_name(t->device));
        json_t *j = build ? moe_json_tensor(t) : NULL;
        scm_remember_upto_here_1(v);
        return j;
    }
    if (alist_p(v)) {
        json_t *o = build ? json_object() : NULL;
        for (SCM l = v; scm_is_pair(l); l = SCM_CDR(l)) {
            SCM e = SCM_CAR(l);
            json_t *x = convert(SCM_CDR(e), build, depth + 1, subr);
            if (!build) continue;
            char *k = scm_to_utf8_string(key_string(SCM_CAR(e)));
            int bad = !o || !x || json_object_set_new(o, k, x) != 0;
            free(k);
            if (bad) {
                json_decref(o);
                return NULL;
            }
        }
        return o;
    }
    if (scm_is_null(v) || (scm_is_pair(v) && scm_ilength(v) >= 0) || scm_is_vector(v)) {
        json_t *a = build ? json_array() : NULL;
        SCM l = scm_is_vector(v) ? scm_vector_to_list(v) : v;
        for (; scm_is_pair(l); l = SCM_CDR(l)) {
            json_t *x = convert(SCM_CAR(l), build, depth + 1, subr);
            if (build && (!a || !x || json_array_append_new(a, x) != 0)) {
                json_decref(a);
                return NULL;
            }
        }
        return a;
    }
    char *s = scm_to_utf8_string(scm_object_to_string(v, SCM_UNDEFINED));
    char text[100];
    snprintf(text, sizeof text, "%s", s);
    free(s);
    moelab_throw(subr, MOE_ERR_ARG, "cannot write %s as JSON (numbers, strings, symbols, booleans, lists, "
                 "alists, vectors and tensors can be written)", text);
}

json_t *moelab_to_json(SCM value, const char *subr)
{
    convert(value, false, 0, subr);
    json_t *j = convert(value, true, 0, subr);
    if (!j) moelab_throw(subr, MOE_ERR_NOMEM, "out of memory building JSON");
    return j;
}

/* ---- JSON → Scheme ------------------------------------------------------------------ */

SCM moelab_from_json(json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        SCM out = SCM_EOL;
        const char *k;
        json_t *x;
        json_object_foreach(j, k, x) out = scm_cons(scm_cons(scm_from_utf8_symbol(k), moelab_from_json(x)), out);
        return scm_reverse_x(out, SCM_EOL);
    }
    case JSON_ARRAY: {
        SCM out = SCM_EOL;
        for (size_t i = json_array_size(j); i > 0; i--) out = scm_cons(moelab_from_json(json_array_get(j, i - 1)), out);
        return out;
    }
    case JSON_STRING:
        return scm_from_utf8_stringn(json_string_value(j), json_string_length(j));
    case JSON_INTEGER:
        return scm_from_int64(json_integer_value(j));
    case JSON_REAL:
        return scm_from_double(json_real_value(j));
    case JSON_TRUE:
        return SCM_BOOL_T;
    case JSON_FALSE:
        return SCM_BOOL_F;
    default:
        return scm_from_double(NAN);
    }
}

/* ---- primitives -------------------------------------------------------------------- */

static void decref_json(void *j) { json_decref(j); }

SCM_DEFINE(moelab_make_metrics_log, "%make-metrics-log", 3, 0, 0, (SCM path, SCM header, SCM append),
           "Open a metrics file; see make-metrics-log.")
#define FUNC_NAME "make-metrics-log"
{
    SCM_VALIDATE_STRING(1, path);
    scm_dynwind_begin(0);
    char *p = scm_to_utf8_string(path);
    scm_dynwind_free(p);
    json_t *h = NULL;
    if (!scm_is_null(header)) {
        if (!alist_p(header))
            moelab_throw(FUNC_NAME, MOE_ERR_ARG, "the header must be an alist (config seed …)");
        h = moelab_to_json(header, FUNC_NAME);
        scm_dynwind_unwind_handler(decref_json, h, SCM_F_WIND_EXPLICITLY);
        /* an empty config, '(), is an empty alist here, not an empty list */
        json_t *config = json_object_get(h, "config");
        if (json_is_array(config) && json_array_size(config) == 0) json_object_set_new(h, "config", json_object());
    }
    moe_metrics_log *log;
    MOELAB_CHECK(FUNC_NAME, moe_metrics_log_open(&log, p, h, scm_is_true(append)));
    scm_dynwind_end();
    return moelab_wrap_metrics_log(log);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_metrics_log_write_x, "%metrics-log-write!", 2, 0, 0, (SCM obj, SCM record),
           "Append @var{record} (an alist) as one line.")
#define FUNC_NAME "metrics-log-write!"
{
    moe_metrics_log *log = moelab_to_metrics_log(obj, 1, FUNC_NAME);
    if (!alist_p(record)) moelab_throw(FUNC_NAME, MOE_ERR_ARG, "a record must be a non-empty alist");
    scm_dynwind_begin(0);
    json_t *j = moelab_to_json(record, FUNC_NAME);
    scm_dynwind_unwind_handler(decref_json, j, SCM_F_WIND_EXPLICITLY);
    MOELAB_CHECK(FUNC_NAME, moe_metrics_log_write(log, j));
    scm_dynwind_end();
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_metrics_log_path, "%metrics-log-path", 1, 0, 0, (SCM obj), "The file of a metrics log.")
#define FUNC_NAME "metrics-log-path"
{
    return scm_from_utf8_string(moe_metrics_log_path(moelab_to_metrics_log(obj, 1, FUNC_NAME)));
}
#undef FUNC_NAME

SCM_DEFINE(moelab_read_jsonl, "%read-jsonl", 1, 0, 0, (SCM path), "Every line of a JSONL file, as alists.")
#define FUNC_NAME "read-jsonl"
{
    SCM_VALIDATE_STRING(1, path);
    char *p = scm_to_utf8_string(path);
    json_t *all;
    moe_status st = moe_metrics_read(&all, p);
    free(p);
    if (st != MOE_OK) moelab_throw_last(FUNC_NAME);
    scm_dynwind_begin(0);
    scm_dynwind_unwind_handler(decref_json, all, SCM_F_WIND_EXPLICITLY);
    SCM out = moelab_from_json(all);
    scm_dynwind_end();
    return out;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_json_line, "%json-line", 1, 0, 0, (SCM value), "@var{value} as one line of JSON.")
#define FUNC_NAME "json-line"
{
    scm_dynwind_begin(0);
    json_t *j = moelab_to_json(value, FUNC_NAME);
    scm_dynwind_unwind_handler(decref_json, j, SCM_F_WIND_EXPLICITLY);
    char *text = moe_json_line(j);
    if (!text) moelab_throw(FUNC_NAME, MOE_ERR_NOMEM, "out of memory");
    scm_dynwind_free(text);
    SCM out = scm_from_utf8_string(text);
    scm_dynwind_end();
    return out;
}
#undef FUNC_NAME

void moelab_init_metrics_func(void)
{
#ifndef SCM_MAGIC_SNARFER
#include "metrics-func.x"
#endif
}
