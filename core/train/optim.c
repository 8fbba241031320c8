/* optim.c — what every optimizer shares: the parameters by name, their
 * state tensors, the checks before a step, the learning rate, zero-grad,
 * and saving and loading the state. The update rules are in adamw.c and
 * sgd.c. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cpu/elementwise.h"
#include "../internal.h"
#include "../names.h"
#include "optim_internal.h"

NAME_TABLE(moe_optim_kind, optim_kind, MOE_OPTIM_KIND_COUNT, [MOE_OPTIM_ADAMW] = "adamw", [MOE_OPTIM_SGD] = "sgd")

void moe_optimizer_free(moe_optimizer *opt)
{
    if (!opt) return;
    int n_state = 1 + opt->n * (1 + opt->n_slots);
    for (int i = 0; i < opt->n; i++) {
        if (opt->names) free(opt->names[i]);
        if (opt->params) moe_tensor_release(opt->params[i]);
        for (int k = 0; opt->slots && k < opt->n_slots; k++) moe_tensor_release(moe_optim_slot(opt, i, k));
    }
    for (int j = 0; opt->state_names && j < n_state; j++) free(opt->state_names[j]);
    free(opt->names);
    free(opt->params);
    free(opt->decay);
    free(opt->param_steps);
    free(opt->slots);
    free(opt->state_names);
    free(opt->grads);
    free(opt->items);
    pthread_mutex_destroy(&opt->lock);
    free(opt);
}

/* Why parameter P (named NAME) cannot be optimized, as a status naming OP. */
static moe_status check_param(const char *op, const char *name, const moe_tensor *p)
{
    if (!p) return moe_fail(MOE_ERR_ARG, op, "parameter \"%s\" is NULL", name);
    if (p->dtype != MOE_F32 && p->dtype != MOE_F64)
        return moe_fail(MOE_ERR_DTYPE, op, "parameter \"%s\" is %s; parameters must be f32 or f64", name,
                        moe_dtype_name(p->dtype));
    if (p->device != MOE_CPU)
        return moe_fail(MOE_ERR_DEVICE, op, "parameter \"%s\" is on %s: no %s kernel for %s yet", name,
                        moe_device_name(p->device), moe_device_name(p->device), op);
    if (p->grad_fn)
        return moe_fail(MOE_ERR_ARG, op, "parameter \"%s\" is not a leaf (it was computed by %s)", name,
                        p->grad_fn->name);
    if (!moe_tensor_is_contiguous(p))
        return moe_fail(MOE_ERR_ARG, op, "parameter \"%s\" %s is not contiguous", name, moe_shape_str(p));
    return MOE_OK;
}

static char *copy_text(const char *s)
{
    size_t n = strlen(s) + 1;
    char *c = malloc(n);
    if (c) memcpy(c, s, n);
    return c;
}

static char *join_name(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    char *c = malloc(na + nb + 2);
    if (!c) return NULL;
    memcpy(c, a, na);
    c[na] = '.';
    memcpy(c + na + 1, b, nb + 1);
    return c;
}

moe_status moe_optimizer_make(moe_optimizer **out, const moe_optim_rule *rule, double lr, int n,
                              const char *const *names, moe_tensor *const *params, int n_slots,
                              const char *const *slot_names)
{
    const char *op = rule->op;
    *out = NULL;
    if (n < 1) return moe_fail(MOE_ERR_ARG, op, "no parameters to optimize (got %d)", n);
    MOE_CHECK_NOT_NULL(op, names);
    MOE_CHECK_NOT_NULL(op, params);
    for (int i = 0; i < n; i++) {
        if (!names[i] || !*names[i]) return moe_fail(MOE_ERR_ARG, op, "parameter %d has an empty name", i);
        if (strlen(names[i]) >= MOE_OPTIM_NAME_MAX)
            return moe_fail(MOE_ERR_ARG, op, "parameter name \"%.40s…\" is longer than %d bytes", names[i],
                            MOE_OPTIM_NAME_MAX - 1);
        MOE_TRY(check_param(op, names[i], params[i]));
        for (int j = 0; j < i; j++) {
            if (strcmp(names[i], names[j]) == 0)
                return moe_fail(MOE_ERR_ARG, op, "parameter name \"%s\" appears twice", names[i]);
            if (params[i]->storage == params[j]->storage)
                return moe_fail(MOE_ERR_ARG, op, "parameters \"%s\" and \"%s\" share storage (give each tensor once)",
                                names[j], names[i]);
        }
    }
    moe_optimizer *o = calloc(1, sizeof *o);
    if (!o) return moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of an optimizer", sizeof *o);
    pthread_mutex_init(&o->lock, NULL);
    o->rule = rule;
    o->lr = lr;
    o->n = n;
    o->n_slots = n_slots;
    for (int k = 0; k < n_slots; k++) o->slot_names[k] = slot_names[k];
    int n_state = 1 + n * (1 + n_slots);
    o->names = calloc((size_t)n, sizeof *o->names);
    o->params = calloc((size_t)n, sizeof *o->params);
    o->decay = calloc((size_t)n, sizeof *o->decay);
    o->param_steps = calloc((size_t)n, sizeof *o->param_steps);
    o->slots = calloc((size_t)(n * (n_slots ? n_slots : 1)), sizeof *o->slots);
    o->state_names = calloc((size_t)n_state, sizeof *o->state_names);
    o->grads = calloc((size_t)n, sizeof *o->grads);
    o->items = calloc((size_t)n, rule->item_size);
    moe_status st = MOE_OK;
    if (!o->names || !o->params || !o->decay || !o->param_steps || !o->slots || !o->state_names || !o->grads ||
        !o->items)
        goto nomem;
    if (!(o->state_names[0] = copy_text("step"))) goto nomem;
    for (int i = 0; i < n; i++) {
        o->params[i] = moe_tensor_retain(params[i]);
        o->decay[i] = true;
        if (!(o->names[i] = copy_text(names[i]))) goto nomem;
        int base = 1 + i * (1 + n_slots);
        if (!(o->state_names[base] = join_name(names[i], "step"))) goto nomem;
        for (int k = 0; k < n_slots; k++) {
            if (!(o->state_names[base + 1 + k] = join_name(names[i], slot_names[k]))) goto nomem;
            st = moe_tensor_zeros(&o->slots[i * n_slots + k], params[i]->dtype, MOE_CPU, params[i]->ndim,
                                  params[i]->shape);
            if (st != MOE_OK) goto fail;
        }
    }
    *out = o;
    return MOE_OK;
nomem:
    st = moe_fail(MOE_ERR_NOMEM, op, "out of memory for %d parameters", n);
fail:
    moe_optimizer_free(o);
    return st;
}

/* ---- stepping ------------------------------------------------------------------------ */

moe_status moe_optimizer_step(moe_optimizer *opt) { return moe_optimizer_step_scaled(opt, 1.0); }

moe_status moe_optimizer_step_scaled(moe_optimizer *opt, double grad_scale)
{
    const char *op = "optimizer-step!";
    MOE_CHECK_NOT_NULL(op, opt);
    if (!(grad_scale > 0) || !isfinite(grad_scale))
        return moe_fail(MOE_ERR_ARG, op, "grad-scale must be finite and > 0, got %g", grad_scale);
    /* One step at a time: two threads (or two REPL clients) stepping one
     * optimizer would share its per-step scratch. */
    pthread_mutex_lock(&opt->lock);
    /* Check every gradient, and make the contiguous copies the kernels
     * need (only for gradients that are views), before the first parameter
     * changes. The gradients are read as references (moe_tensor_grad), safe
     * against a backward pass accumulating into them. */
    moe_tensor **grads = opt->grads;
    moe_status st = MOE_OK;
    for (int i = 0; i < opt->n && st == MOE_OK; i++) {
        moe_tensor *p = opt->params[i], *g = moe_tensor_grad(p);
        if (!g) continue;
        if (!moe_tensor_same_shape(p, g))
            st = moe_fail(MOE_ERR_SHAPE, op, "the gradient of \"%s\" is %s, the parameter %s", opt->names[i],
                          moe_shape_str(g), moe_shape_str(p));
        else if (g->dtype != p->dtype || g->device != p->device)
            st = moe_fail(MOE_ERR_DTYPE, op, "the gradient of \"%s\" is %s on %s, the parameter %s on %s",
                          opt->names[i], moe_dtype_name(g->dtype), moe_device_name(g->device),
                          moe_dtype_name(p->dtype), moe_device_name(p->device));
        else if (moe_tensor_is_contiguous(g))
            grads[i] = moe_tensor_retain(g);
        else
            st = moe_contiguous(&grads[i], g);
        moe_tensor_release(g);
    }
    if (st == MOE_OK) {
        for (int i = 0; i < opt->n; i++)
            if (grads[i]) opt->param_steps[i]++;
        opt->rule->update(opt, grads, grad_scale);
        for (int i = 0; i < opt->n; i++) /* a graph that saved one now holds a stale value */
            if (grads[i]) moe_tensor_bump_version(opt->params[i]);
        opt->step++;
    }
    for (int i = 0; i < opt->n; i++) {
        moe_tensor_release(grads[i]);
        grads[i] = NULL;
    }
    pthread_mutex_unlock(&opt->lock);
    return st;
}

void moe_optimizer_zero_grad(moe_optimizer *opt)
{
    if (!opt) return;
    for (int i = 0; i < opt->n; i++) moe_tensor_zero_grad(opt->params[i]);
}

double moe_optimizer_lr(const moe_optimizer *opt) { return opt->lr; }

moe_status moe_optimizer_set_lr(moe_optimizer *opt, double lr)
{
    if (!isfinite(lr) || lr < 0)
        return moe_fail(MOE_ERR_ARG, "set-optimizer-lr!", "the learning rate must be finite and >= 0, got %g", lr);
    pthread_mutex_lock(&opt->lock);
    opt->lr = lr;
    pthread_mutex_unlock(&opt->lock);
    return MOE_OK;
}

moe_optim_kind moe_optimizer_kind(const moe_optimizer *opt) { return opt->rule->kind; }
int64_t moe_optimizer_steps(const moe_optimizer *opt) { return opt->step; }

const moe_adamw_config *moe_optimizer_adamw_config(const moe_optimizer *opt)
{
    return opt->rule->kind == MOE_OPTIM_ADAMW ? &opt->cfg.adamw : NULL;
}

const moe_sgd_config *moe_optimizer_sgd_config(const moe_optimizer *opt)
{
    return opt->rule->kind == MOE_OPTIM_SGD ? &opt->cfg.sgd : NULL;
}

int moe_optimizer_param_count(const moe_optimizer *opt) { return opt->n; }

const char *moe_optimizer_param_name(const moe_optimizer *opt, int i)
{
    return i >= 0 && i < opt->n ? opt->names[i] : NULL;
}

moe_tensor *moe_optimizer_param(const moe_optimizer *opt, int i)
{
    return i >= 0 && i < opt->n ? opt->params[i] : NULL;
}

bool moe_optimizer_param_decays(const moe_optimizer *opt, int i)
{
    return i >= 0 && i < opt->n && opt->decay[i];
}

/* ---- state ------------------------------------------------------------------------- */

int moe_optimizer_state_count(const moe_optimizer *opt) { return 1 + opt->n * (1 + opt->n_slots); }

/* Entry J of the state: parameter *I (-1 for the global step) and slot *K
 * (-1 for a step count). */
static void state_entry(const moe_optimizer *opt, int j, int *i, int *k)
{
    if (j == 0) {
        *i = -1;
        *k = -1;
        return;
    }
    *i = (j - 1) / (1 + opt->n_slots);
    *k = (j - 1) % (1 + opt->n_slots) - 1;
}

moe_status moe_optimizer_state(const moe_optimizer *opt, int j, const char **name, moe_tensor **value)
{
    const char *op = "optimizer-state";
    int count = moe_optimizer_state_count(opt);
    if (j < 0 || j >= count)
        return moe_fail(MOE_ERR_INDEX, op, "state entry %d out of range [0, %d)", j, count);
    int i, k;
    state_entry(opt, j, &i, &k);
    *name = opt->state_names[j];
    if (k >= 0) {
        *value = moe_tensor_retain(moe_optim_slot(opt, i, k));
        return MOE_OK;
    }
    int64_t steps = i < 0 ? opt->step : opt->param_steps[i];
    return moe_tensor_from_data(value, MOE_I64, MOE_CPU, 0, NULL, &steps);
}

/* A non-negative integer count from the one-element tensor T. */
static moe_status read_count(const char *op, const char *name, const moe_tensor *t, int64_t *out)
{
    if (!t) return moe_fail(MOE_ERR_ARG, op, "state entry \"%s\" is NULL", name);
    if (moe_tensor_numel(t) != 1)
        return moe_fail(MOE_ERR_SHAPE, op, "state entry \"%s\" must hold one count, got %s", name,
                        moe_shape_str(t));
    double v;
    MOE_TRY(moe_tensor_item(t, &v));
    if (!(v >= 0) || v != floor(v) || v > 9.0e15)
        return moe_fail(MOE_ERR_VALUE, op, "state entry \"%s\" must be a count >= 0, got %g", name, v);
    *out = (int64_t)v;
    return MOE_OK;
}

static moe_status check_moment(const char *op, const char *name, const moe_tensor *like, const moe_tensor *t)
{
    if (!t) return moe_fail(MOE_ERR_ARG, op, "state entry \"%s\" is NULL", name);
    if (!moe_tensor_same_shape(like, t))
        return moe_fail(MOE_ERR_SHAPE, op, "state entry \"%s\" is %s, its parameter %s", name, moe_shape_str(t),
                        moe_shape_str(like));
    if (!moe_dtype_is_float(t->dtype))
        return moe_fail(MOE_ERR_DTYPE, op, "state entry \"%s\" is %s; expected a float dtype", name,
                        moe_dtype_name(t->dtype));
    if (t->device != MOE_CPU)
        return moe_fail(MOE_ERR_DEVICE, op, "state entry \"%s\" is on %s; expected cpu", name,
                        moe_device_name(t->device));
    return MOE_OK;
}

static moe_status load_state(moe_optimizer *opt, int n, const char *const *names, moe_tensor *const *values)
{
    const char *op = "optimizer-load-state!";
    int count = moe_optimizer_state_count(opt);
    if (n > 0) {
        MOE_CHECK_NOT_NULL(op, names);
        MOE_CHECK_NOT_NULL(op, values);
    }
    /* Which given entry fills each state entry: every name known, none twice,
     * none missing. */
    int *src = malloc(sizeof *src * (size_t)count);
    int64_t *counts = malloc(sizeof *counts * (size_t)count);
    moe_tensor **conv = calloc((size_t)count, sizeof *conv);
    moe_status st = MOE_OK;
    MOE_NO_GRAD_BEGIN;
    if (!src || !counts || !conv) {
        st = moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of bookkeeping for %d state entries",
                      (size_t)count * (sizeof *src + sizeof *counts + sizeof *conv), count);
        goto done;
    }
    for (int j = 0; j < count; j++) src[j] = -1;
    for (int a = 0; a < n && st == MOE_OK; a++) {
        int j = 0;
        while (j < count && (!names[a] || strcmp(names[a], opt->state_names[j]) != 0)) j++;
        if (j == count)
            st = moe_fail(MOE_ERR_ARG, op, "unknown state entry \"%s\" (this %s optimizer has \"step\", "
                          "\"%s.step\", …)", names[a] ? names[a] : "(null)", moe_optim_kind_name(opt->rule->kind),
                          opt->names[0]);
        else if (src[j] >= 0)
            st = moe_fail(MOE_ERR_ARG, op, "state entry \"%s\" given twice", names[a]);
        else
            src[j] = a;
    }
    for (int j = 0; j < count && st == MOE_OK; j++) {
        if (src[j] < 0) {
            st = moe_fail(MOE_ERR_ARG, op, "state entry \"%s\" is missing", opt->state_names[j]);
            break;
        }
        int i, k;
        state_entry(opt, j, &i, &k);
        moe_tensor *t = values[src[j]];
        if (k < 0) {
            st = read_count(op, opt->state_names[j], t, &counts[j]);
            continue;
        }
        moe_tensor *slot = moe_optim_slot(opt, i, k);
        st = check_moment(op, opt->state_names[j], slot, t);
        if (st == MOE_OK) st = moe_to_dtype(&conv[j], t, slot->dtype);
        if (st == MOE_OK) {
            int64_t nan_count = 0, inf_count = 0;
            moe_tensor *c;
            st = moe_contiguous(&c, conv[j]);
            if (st == MOE_OK) {
                moe_cpu_count_nonfinite(c->dtype == MOE_F64 ? MOE_F64 : MOE_F32, moe_tensor_data(c),
                                        moe_tensor_numel(c), &nan_count, &inf_count);
                moe_tensor_release(conv[j]);
                conv[j] = c;
            }
            if (st == MOE_OK && (nan_count || inf_count))
                st = moe_fail(MOE_ERR_VALUE, op, "state entry \"%s\" holds %lld NaN and %lld infinite values",
                              opt->state_names[j], (long long)nan_count, (long long)inf_count);
        }
    }
    if (st != MOE_OK) goto done;
    /* Everything checked: copying cannot fail now (same shape, dtype, device). */
    for (int j = 0; j < count; j++) {
        int i, k;
        state_entry(opt, j, &i, &k);
        if (k >= 0) {
            moe_tensor *slot = moe_optim_slot(opt, i, k);
            memcpy(moe_tensor_data(slot), moe_tensor_data(conv[j]), moe_tensor_nbytes(conv[j]));
            moe_tensor_bump_version(slot);
        }
        else if (i < 0)
            opt->step = counts[j];
        else
            opt->param_steps[i] = counts[j];
    }
done:
    MOE_NO_GRAD_END;
    for (int j = 0; conv && j < count; j++) moe_tensor_release(conv[j]);
    free(conv);
    free(counts);
    free(src);
    return st;
}

moe_status moe_optimizer_load_state(moe_optimizer *opt, int n, const char *const *names,
                                    moe_tensor *const *values)
{
    MOE_CHECK_NOT_NULL("optimizer-load-state!", opt);
    pthread_mutex_lock(&opt->lock); /* not in the middle of a step */
    moe_status st = load_state(opt, n, names, values);
    pthread_mutex_unlock(&opt->lock);
    return st;
}
