/* optim-func.c — optimizers, gradient clipping and learning-rate schedules
 * from Scheme (core/train/optim.h, schedule.h). The documented procedures
 * are in scheme/moelab/train.scm.
 *
 * The <optimizer> foreign object is in optimizer-type.c. Parameters come
 * as an alist (name . tensor) — names strings or symbols — or as a plain
 * list of tensors, named "0", "1", ….
 * Every check happens before anything changes: the C core validates the
 * settings, the parameters and the gradients, and raises nothing half-way. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bindings.h"


/* The printed form of OBJ for a message (cut at 80 bytes), in a
 * thread-local buffer good until the next call. */
static const char *shown(SCM obj)
{
    static __thread char buf[96];
    char *s = scm_to_utf8_string(scm_object_to_string(obj, SCM_UNDEFINED));
    snprintf(buf, sizeof buf, "%s", s);
    if (strlen(s) > 80) strcpy(buf + 77, "...");
    free(s);
    return buf;
}

/* Parameters of PARAMS (an alist name -> tensor, or a list of tensors) into
 * arrays freed when the current dynwind ends. Raises moelab-error naming
 * SUBR for anything else. Returns the count. */
static int collect_params(SCM params, const char *subr, char ***names_out, moe_tensor ***tensors_out)
{
    long n = scm_ilength(params);
    if (n < 0) moelab_throw(subr, MOE_ERR_ARG, "parameters must be a list of (name . tensor) pairs, got %s", shown(params));
    char **names = scm_calloc(sizeof *names * (size_t)(n ? n : 1));
    scm_dynwind_free(names);
    moe_tensor **tensors = scm_calloc(sizeof *tensors * (size_t)(n ? n : 1));
    scm_dynwind_free(tensors);
    long i = 0;
    for (SCM l = params; scm_is_pair(l); l = SCM_CDR(l), i++) {
        SCM e = SCM_CAR(l), name = SCM_BOOL_F, t = e;
        if (scm_is_pair(e)) {
            name = SCM_CAR(e);
            t = SCM_CDR(e);
        }
        if (scm_is_pair(e) && !scm_is_string(name) && !scm_is_symbol(name))
            moelab_throw(subr, MOE_ERR_ARG, "parameter %ld: the name must be a string or a symbol, got %s", i,
                         shown(name));
        if (!moelab_is_tensor(t))
            moelab_throw(subr, MOE_ERR_ARG, "parameter %ld is not a (name . tensor) pair or a tensor: %s", i,
                         shown(e));
        tensors[i] = moelab_unwrap(t, 1, subr);
        if (scm_is_false(name)) {
            names[i] = scm_malloc(24);
            snprintf(names[i], 24, "%ld", i);
        } else {
            names[i] = scm_to_utf8_string(scm_is_symbol(name) ? scm_symbol_to_string(name) : name);
        }
        scm_dynwind_free(names[i]);
    }
    *names_out = names;
    *tensors_out = tensors;
    return (int)n;
}

SCM_DEFINE(moelab_make_adamw, "%make-adamw", 7, 0, 0,
           (SCM params, SCM lr, SCM beta1, SCM beta2, SCM eps, SCM weight_decay, SCM no_decay),
           "An AdamW optimizer; see make-adamw.")
#define FUNC_NAME "make-adamw"
{
    moe_adamw_config cfg;
    moe_adamw_config_default(&cfg);
    cfg.lr = moelab_to_double(lr, 2, FUNC_NAME);
    cfg.beta1 = moelab_to_double(beta1, 3, FUNC_NAME);
    cfg.beta2 = moelab_to_double(beta2, 4, FUNC_NAME);
    cfg.eps = moelab_to_double(eps, 5, FUNC_NAME);
    cfg.weight_decay = moelab_to_double(weight_decay, 6, FUNC_NAME);
    long nd = scm_ilength(no_decay);
    if (nd < 0 || nd > MOE_OPTIM_MAX_NO_DECAY)
        moelab_throw(FUNC_NAME, MOE_ERR_ARG, "no-decay must be a list of at most %d strings", MOE_OPTIM_MAX_NO_DECAY);
    cfg.n_no_decay = (int)nd;
    int k = 0;
    for (SCM l = no_decay; scm_is_pair(l); l = SCM_CDR(l), k++)
        if (!moelab_name_text(SCM_CAR(l), cfg.no_decay[k], MOE_OPTIM_NAME_MAX))
            moelab_throw(FUNC_NAME, MOE_ERR_ARG, "no-decay entries must be strings, got %s", shown(SCM_CAR(l)));
    scm_dynwind_begin(0);
    char **names;
    moe_tensor **tensors;
    int n = collect_params(params, FUNC_NAME, &names, &tensors);
    moe_optimizer *o;
    MOELAB_CHECK(FUNC_NAME, moe_adamw_new(&o, n, (const char *const *)names, tensors, &cfg));
    scm_dynwind_end();
    scm_remember_upto_here_1(params);
    return moelab_wrap_optimizer(o);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_make_sgd, "%make-sgd", 6, 0, 0,
           (SCM params, SCM lr, SCM momentum, SCM dampening, SCM weight_decay, SCM nesterov),
           "An SGD optimizer; see make-sgd.")
#define FUNC_NAME "make-sgd"
{
    moe_sgd_config cfg;
    moe_sgd_config_default(&cfg);
    cfg.lr = moelab_to_double(lr, 2, FUNC_NAME);
    cfg.momentum = moelab_to_double(momentum, 3, FUNC_NAME);
    cfg.dampening = moelab_to_double(dampening, 4, FUNC_NAME);
    cfg.weight_decay = moelab_to_double(weight_decay, 5, FUNC_NAME);
    cfg.nesterov = scm_is_true(nesterov);
    scm_dynwind_begin(0);
    char **names;
    moe_tensor **tensors;
    int n = collect_params(params, FUNC_NAME, &names, &tensors);
    moe_optimizer *o;
    MOELAB_CHECK(FUNC_NAME, moe_sgd_new(&o, n, (const char *const *)names, tensors, &cfg));
    scm_dynwind_end();
    scm_remember_upto_here_1(params);
    return moelab_wrap_optimizer(o);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_optimizer_step_x, "%optimizer-step!", 2, 0, 0, (SCM obj, SCM grad_scale),
           "One optimizer step, each gradient multiplied by GRAD-SCALE as it is read.")
#define FUNC_NAME "optimizer-step!"
{
    moe_optimizer *o = moelab_to_optimizer(obj, 1, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_optimizer_step_scaled(o, moelab_to_double(grad_scale, 2, FUNC_NAME)));
    scm_remember_upto_here_1(obj);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_optimizer_zero_grad_x, "%optimizer-zero-grad!", 1, 0, 0, (SCM obj),
           "Drop the gradients of the parameters.")
#define FUNC_NAME "optimizer-zero-grad!"
{
    moe_optimizer_zero_grad(moelab_to_optimizer(obj, 1, FUNC_NAME));
    scm_remember_upto_here_1(obj);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_optimizer_lr, "%optimizer-lr", 1, 0, 0, (SCM obj), "The learning rate.")
#define FUNC_NAME "optimizer-lr"
{
    return scm_from_double(moe_optimizer_lr(moelab_to_optimizer(obj, 1, FUNC_NAME)));
}
#undef FUNC_NAME

SCM_DEFINE(moelab_set_optimizer_lr_x, "%set-optimizer-lr!", 2, 0, 0, (SCM obj, SCM lr), "Set the learning rate.")
#define FUNC_NAME "set-optimizer-lr!"
{
    moe_optimizer *o = moelab_to_optimizer(obj, 1, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_optimizer_set_lr(o, moelab_to_double(lr, 2, FUNC_NAME)));
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_optimizer_steps, "%optimizer-steps", 1, 0, 0, (SCM obj), "Completed steps.")
#define FUNC_NAME "optimizer-steps"
{
    return scm_from_int64(moe_optimizer_steps(moelab_to_optimizer(obj, 1, FUNC_NAME)));
}
#undef FUNC_NAME

SCM_DEFINE(moelab_optimizer_config, "%optimizer-config", 1, 0, 0, (SCM obj),
           "The kind and settings as an alist.")
#define FUNC_NAME "optimizer-config"
{
    moe_optimizer *o = moelab_to_optimizer(obj, 1, FUNC_NAME);
    SCM kind = sym(moe_optim_kind_name(moe_optimizer_kind(o)));
    const moe_adamw_config *a = moe_optimizer_adamw_config(o);
    if (a) {
        SCM nd = SCM_EOL;
        for (int k = a->n_no_decay - 1; k >= 0; k--) nd = scm_cons(scm_from_utf8_string(a->no_decay[k]), nd);
        return scm_list_n(scm_cons(sym("kind"), kind), scm_cons(sym("lr"), scm_from_double(moe_optimizer_lr(o))),
                          scm_cons(sym("betas"), scm_cons(scm_from_double(a->beta1), scm_from_double(a->beta2))),
                          scm_cons(sym("eps"), scm_from_double(a->eps)),
                          scm_cons(sym("weight-decay"), scm_from_double(a->weight_decay)),
                          scm_cons(sym("no-decay"), nd), SCM_UNDEFINED);
    }
    const moe_sgd_config *s = moe_optimizer_sgd_config(o);
    return scm_list_n(scm_cons(sym("kind"), kind), scm_cons(sym("lr"), scm_from_double(moe_optimizer_lr(o))),
                      scm_cons(sym("momentum"), scm_from_double(s->momentum)),
                      scm_cons(sym("dampening"), scm_from_double(s->dampening)),
                      scm_cons(sym("weight-decay"), scm_from_double(s->weight_decay)),
                      scm_cons(sym("nesterov"), scm_from_bool(s->nesterov)), SCM_UNDEFINED);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_optimizer_parameters, "%optimizer-parameters", 1, 0, 0, (SCM obj),
           "The parameters as an alist name -> (tensor . decays?).")
#define FUNC_NAME "optimizer-parameters"
{
    moe_optimizer *o = moelab_to_optimizer(obj, 1, FUNC_NAME);
    SCM out = SCM_EOL;
    for (int i = moe_optimizer_param_count(o) - 1; i >= 0; i--)
        out = scm_cons(scm_cons(scm_from_utf8_string(moe_optimizer_param_name(o, i)),
                                scm_cons(moelab_wrap_retained(moe_optimizer_param(o, i)),
                                         scm_from_bool(moe_optimizer_param_decays(o, i)))),
                       out);
    scm_remember_upto_here_1(obj);
    return out;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_optimizer_state, "%optimizer-state", 1, 0, 0, (SCM obj),
           "The state as an alist: step counts as integers, moments as the live tensors.")
#define FUNC_NAME "optimizer-state"
{
    moe_optimizer *o = moelab_to_optimizer(obj, 1, FUNC_NAME);
    SCM out = SCM_EOL;
    for (int j = moe_optimizer_state_count(o) - 1; j >= 0; j--) {
        const char *name;
        moe_tensor *t;
        MOELAB_CHECK(FUNC_NAME, moe_optimizer_state(o, j, &name, &t));
        SCM v;
        if (t->dtype == MOE_I64) {
            double c = 0;
            moe_tensor_item(t, &c);
            moe_tensor_release(t);
            v = scm_from_int64((int64_t)c);
        } else {
            v = moelab_wrap(t);
        }
        out = scm_cons(scm_cons(scm_from_utf8_string(name), v), out);
    }
    scm_remember_upto_here_1(obj);
    return out;
}
#undef FUNC_NAME

static void release_tensor(void *t) { moe_tensor_release(t); }

SCM_DEFINE(moelab_optimizer_load_state_x, "%optimizer-load-state!", 2, 0, 0, (SCM obj, SCM state),
           "Load a state alist; see optimizer-load-state!.")
#define FUNC_NAME "optimizer-load-state!"
{
    moe_optimizer *o = moelab_to_optimizer(obj, 1, FUNC_NAME);
    long n = scm_ilength(state);
    if (n < 0) moelab_throw(FUNC_NAME, MOE_ERR_ARG, "the state must be an alist, got %s", shown(state));
    scm_dynwind_begin(0);
    const char **names = scm_calloc(sizeof *names * (size_t)(n ? n : 1));
    scm_dynwind_free(names);
    moe_tensor **vals = scm_calloc(sizeof *vals * (size_t)(n ? n : 1));
    scm_dynwind_free(vals);
    long i = 0;
    for (SCM l = state; scm_is_pair(l); l = SCM_CDR(l), i++) {
        SCM e = SCM_CAR(l);
        if (!scm_is_pair(e) || !(scm_is_string(SCM_CAR(e)) || scm_is_symbol(SCM_CAR(e))))
            moelab_throw(FUNC_NAME, MOE_ERR_ARG, "state entry %ld is not a (name . value) pair: %s", i, shown(e));
        SCM name = scm_is_symbol(SCM_CAR(e)) ? scm_symbol_to_string(SCM_CAR(e)) : SCM_CAR(e);
        char *nm = scm_to_utf8_string(name);
        scm_dynwind_free(nm);
        names[i] = nm;
        SCM v = SCM_CDR(e);
        if (moelab_is_tensor(v)) {
            vals[i] = moelab_unwrap(v, 2, FUNC_NAME);
        } else if (scm_is_real(v)) {
            moe_tensor *t;
            MOELAB_CHECK(FUNC_NAME, moe_tensor_scalar(&t, MOE_F64, MOE_CPU, scm_to_double(v)));
            scm_dynwind_unwind_handler(release_tensor, t, SCM_F_WIND_EXPLICITLY);
            vals[i] = t;
        } else {
            moelab_throw(FUNC_NAME, MOE_ERR_ARG, "state entry \"%s\" must be a tensor or a count, got %s", nm, shown(v));
        }
    }
    MOELAB_CHECK(FUNC_NAME, moe_optimizer_load_state(o, (int)n, names, vals));
    scm_dynwind_end();
    scm_remember_upto_here_2(obj, state);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

/* ---- clipping ------------------------------------------------------------------------ */

SCM_DEFINE(moelab_clip_grad_norm_x, "%clip-grad-norm!", 2, 0, 0, (SCM params, SCM max_norm),
           "Clip the gradients of @var{params}; the norm before clipping.")
#define FUNC_NAME "clip-grad-norm!"
{
    double mx = moelab_to_double(max_norm, 2, FUNC_NAME), norm = 0;
    scm_dynwind_begin(0);
    char **names;
    moe_tensor **tensors;
    int n = collect_params(params, FUNC_NAME, &names, &tensors);
    MOELAB_CHECK(FUNC_NAME, moe_clip_grad_norm(&norm, n, tensors, mx));
    scm_dynwind_end();
    scm_remember_upto_here_1(params);
    return scm_from_double(norm);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_clip_scale, "%clip-scale", 2, 0, 0, (SCM norm, SCM max),
           "clip-grad-norm!'s factor for gradients of total norm @var{norm}.")
#define FUNC_NAME "clip-scale"
{
    double scale;
    MOELAB_CHECK(FUNC_NAME, moe_clip_scale(&scale, moelab_to_double(norm, 1, FUNC_NAME),
                                           moelab_to_double(max, 2, FUNC_NAME), FUNC_NAME));
    return scm_from_double(scale);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_grad_norm, "%grad-norm", 1, 0, 0, (SCM params), "The L2 norm of all the gradients of @var{params}.")
#define FUNC_NAME "grad-norm"
{
    double norm = 0;
    scm_dynwind_begin(0);
    char **names;
    moe_tensor **tensors;
    int n = collect_params(params, FUNC_NAME, &names, &tensors);
    MOELAB_CHECK(FUNC_NAME, moe_grad_norm(&norm, n, tensors));
    scm_dynwind_end();
    scm_remember_upto_here_1(params);
    return scm_from_double(norm);
}
#undef FUNC_NAME

/* ---- schedules ------------------------------------------------------------------------ */

/* A schedule from the arguments of make-lr-schedule (checked). */
static void to_schedule(moe_lr_schedule *s, SCM kind, SCM lr, SCM warmup, SCM total, SCM min_lr, SCM fraction,
                        SCM decay_type, const char *subr)
{
    char name[64];
    moe_lr_schedule_default(s);
    if (!moelab_name_text(kind, name, sizeof name) || !moe_lr_kind_parse(name, &s->kind))
        moelab_throw(subr, MOE_ERR_ARG, "unknown schedule kind %s (constant, cosine or wsd)", shown(kind));
    if (!moelab_name_text(decay_type, name, sizeof name) || !moe_wsd_decay_parse(name, &s->decay_type))
        moelab_throw(subr, MOE_ERR_ARG, "unknown decay type %s (linear or 1-sqrt)", shown(decay_type));
    s->lr = moelab_to_double(lr, 2, subr);
    s->warmup = moelab_to_int64(warmup, 3, subr);
    s->total = scm_is_false(total) ? 0 : moelab_to_int64(total, 4, subr);
    s->min_lr = moelab_to_double(min_lr, 5, subr);
    s->decay_fraction = moelab_to_double(fraction, 6, subr);
    MOELAB_CHECK(subr, moe_lr_schedule_validate(s));
}

SCM_DEFINE(moelab_lr_schedule_check, "%lr-schedule-check", 7, 0, 0,
           (SCM kind, SCM lr, SCM warmup, SCM total, SCM min_lr, SCM fraction, SCM decay_type),
           "Check the settings of a schedule (raises moelab-error).")
#define FUNC_NAME "make-lr-schedule"
{
    moe_lr_schedule s;
    scm_dynwind_begin(0);
    to_schedule(&s, kind, lr, warmup, total, min_lr, fraction, decay_type, FUNC_NAME);
    scm_dynwind_end();
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_lr_schedule_at, "%lr-schedule-at", 8, 0, 0,
           (SCM kind, SCM lr, SCM warmup, SCM total, SCM min_lr, SCM fraction, SCM decay_type, SCM step),
           "The learning rate of @var{step}.")
#define FUNC_NAME "lr-schedule"
{
    moe_lr_schedule s;
    scm_dynwind_begin(0);
    to_schedule(&s, kind, lr, warmup, total, min_lr, fraction, decay_type, FUNC_NAME);
    scm_dynwind_end();
    double out;
    MOELAB_CHECK(FUNC_NAME, moe_lr_schedule_at(&s, moelab_to_int64(step, 8, FUNC_NAME), &out));
    return scm_from_double(out);
}
#undef FUNC_NAME

void moelab_init_optim_func(void)
{
#ifndef SCM_MAGIC_SNARFER
#include "optim-func.x"
#endif
}
