/* convert.c — checking and converting Scheme arguments.
 *
 * Everything a user types is checked here before it reaches libmoelab: wrong
 * Scheme types raise the standard wrong-type-arg error naming the procedure
 * and the argument position; values of the right type but outside what
 * moelab accepts (negative sizes, unknown dtype names, too many dims) raise
 * moelab-error. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "bindings.h"

bool moelab_name_text(SCM obj, char *buf, size_t size)
{
    if (scm_is_symbol(obj)) obj = scm_symbol_to_string(obj);
    if (!scm_is_string(obj)) return false;
    char *s = scm_to_utf8_string(obj);
    snprintf(buf, size, "%s", s);
    free(s);
    return true;
}

void moelab_to_name(SCM obj, char *buf, size_t size, int pos, const char *subr, const char *what)
{
    if (!scm_is_symbol(obj)) scm_wrong_type_arg_msg(subr, pos, obj, what);
    moelab_name_text(obj, buf, size);
}

moe_dtype moelab_to_dtype(SCM sym, int pos, const char *subr)
{
    char name[64];
    moe_dtype d;
    moelab_to_name(sym, name, sizeof name, pos, subr, "dtype symbol");
    if (!moe_dtype_parse(name, &d))
        moelab_throw(subr, MOE_ERR_DTYPE, "unknown dtype '%s (expected f32 f64 bf16 i32 i64 or bool)",
                     name);
    return d;
}

SCM moelab_from_dtype(moe_dtype d) { return scm_from_utf8_symbol(moe_dtype_name(d)); }

moe_device moelab_to_device(SCM sym, int pos, const char *subr)
{
    char name[64];
    moe_device d;
    moelab_to_name(sym, name, sizeof name, pos, subr, "device symbol");
    if (!moe_device_parse(name, &d))
        moelab_throw(subr, MOE_ERR_DEVICE, "unknown device '%s (expected cpu or cuda)", name);
    return d;
}

SCM moelab_from_device(moe_device d) { return scm_from_utf8_symbol(moe_device_name(d)); }

static int to_shape(SCM obj, int64_t *shape, int pos, const char *subr, bool allow_infer)
{
    const char *what = allow_infer ? "shape (list of sizes, -1 to infer)"
                                   : "shape (list of non-negative integers)";
    if (scm_is_exact_integer(obj)) obj = scm_list_1(obj);
    long n = scm_ilength(obj);
    if (n < 0) scm_wrong_type_arg_msg(subr, pos, obj, what);
    if (n > MOE_MAX_DIMS)
        moelab_throw(subr, MOE_ERR_SHAPE, "%ld dims requested; moelab supports at most %d", n,
                     MOE_MAX_DIMS);
    int i = 0;
    for (SCM l = obj; scm_is_pair(l); l = SCM_CDR(l), i++) {
        SCM x = SCM_CAR(l);
        if (!scm_is_signed_integer(x, allow_infer ? -1 : 0, INT64_MAX))
            scm_wrong_type_arg_msg(subr, pos, obj, what);
        shape[i] = scm_to_int64(x);
    }
    return (int)n;
}

int moelab_to_shape(SCM obj, int64_t *shape, int pos, const char *subr)
{
    return to_shape(obj, shape, pos, subr, false);
}

int moelab_to_shape_infer(SCM obj, int64_t *shape, int pos, const char *subr)
{
    return to_shape(obj, shape, pos, subr, true);
}

SCM moelab_from_dims(int ndim, const int64_t *dims)
{
    SCM l = SCM_EOL;
    for (int i = ndim - 1; i >= 0; i--) l = scm_cons(scm_from_int64(dims[i]), l);
    return l;
}

int moelab_to_int(SCM obj, int pos, const char *subr)
{
    if (!scm_is_signed_integer(obj, INT_MIN, INT_MAX)) scm_wrong_type_arg_msg(subr, pos, obj, "integer");
    return scm_to_int(obj);
}

int64_t moelab_to_int64(SCM obj, int pos, const char *subr)
{
    if (!scm_is_signed_integer(obj, INT64_MIN, INT64_MAX))
        scm_wrong_type_arg_msg(subr, pos, obj, "integer");
    return scm_to_int64(obj);
}

int moelab_to_dims(SCM obj, int *dims, int pos, const char *subr)
{
    if (scm_is_false(obj)) return 0;
    if (scm_is_exact_integer(obj)) {
        dims[0] = moelab_to_int(obj, pos, subr);
        return 1;
    }
    long n = scm_ilength(obj);
    if (n < 0) scm_wrong_type_arg_msg(subr, pos, obj, "dim or list of dims");
    if (n > MOE_MAX_DIMS)
        moelab_throw(subr, MOE_ERR_ARG, "%ld dims given; a tensor has at most %d", n, MOE_MAX_DIMS);
    int i = 0;
    for (SCM l = obj; scm_is_pair(l); l = SCM_CDR(l)) {
        SCM x = SCM_CAR(l);
        if (!scm_is_signed_integer(x, INT_MIN, INT_MAX))
            scm_wrong_type_arg_msg(subr, pos, obj, "dim or list of dims");
        dims[i++] = scm_to_int(x);
    }
    return (int)n;
}

double moelab_to_double(SCM obj, int pos, const char *subr)
{
    if (!scm_is_real(obj)) scm_wrong_type_arg_msg(subr, pos, obj, "real number");
    return scm_to_double(obj);
}

double moelab_to_double_or(SCM obj, double fallback, int pos, const char *subr)
{
    return scm_is_false(obj) ? fallback : moelab_to_double(obj, pos, subr);
}

SCM moelab_from_element(moe_dtype d, double v)
{
    switch (d) {
    case MOE_BOOL: return scm_from_bool(v != 0);
    case MOE_I32:
    case MOE_I64: return scm_from_int64((int64_t)v);
    default: return scm_from_double(v);
    }
}
