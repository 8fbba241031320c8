/* schedule.c — the learning-rate schedules of schedule.h. */
#include "schedule.h"

#include <math.h>
#include <string.h>

#include "../names.h"

NAME_TABLE(moe_lr_kind, lr_kind, MOE_LR_KIND_COUNT, [MOE_LR_CONSTANT] = "constant", [MOE_LR_COSINE] = "cosine",
           [MOE_LR_WSD] = "wsd")
NAME_TABLE(moe_wsd_decay, wsd_decay, MOE_WSD_DECAY_COUNT, [MOE_WSD_LINEAR] = "linear", [MOE_WSD_1_SQRT] = "1-sqrt")

void moe_lr_schedule_default(moe_lr_schedule *s)
{
    memset(s, 0, sizeof *s);
    s->kind = MOE_LR_CONSTANT;
    s->lr = 3e-4;
    s->decay_fraction = 0.2;
    s->decay_type = MOE_WSD_LINEAR;
}

/* D = ⌊f·total⌋, the decay steps of a wsd schedule. */
static int64_t decay_steps(const moe_lr_schedule *s) { return (int64_t)floor(s->decay_fraction * (double)s->total); }

moe_status moe_lr_schedule_validate(const moe_lr_schedule *s)
{
    const char *op = "make-lr-schedule";
    if ((unsigned)s->kind >= MOE_LR_KIND_COUNT)
        return moe_fail(MOE_ERR_ARG, op, "unknown schedule kind %d (constant, cosine or wsd)", (int)s->kind);
    const char *kind = lr_kind_names[s->kind];
    if (!isfinite(s->lr) || s->lr < 0) return moe_fail(MOE_ERR_ARG, op, "%s: lr must be finite and >= 0, got %g", kind, s->lr);
    if (s->warmup < 0) return moe_fail(MOE_ERR_ARG, op, "%s: warmup must be >= 0, got %lld", kind, (long long)s->warmup);
    if (s->kind == MOE_LR_CONSTANT) return MOE_OK;
    if (!isfinite(s->min_lr) || s->min_lr < 0 || s->min_lr > s->lr)
        return moe_fail(MOE_ERR_ARG, op, "%s: min-lr must lie in [0, lr = %g], got %g", kind, s->lr, s->min_lr);
    if (s->total < 1) return moe_fail(MOE_ERR_ARG, op, "%s: total must be >= 1, got %lld", kind, (long long)s->total);
    if (s->warmup > s->total)
        return moe_fail(MOE_ERR_ARG, op, "%s: warmup %lld exceeds total %lld", kind, (long long)s->warmup,
                        (long long)s->total);
    if (s->kind == MOE_LR_WSD) {
        if (!(s->decay_fraction >= 0 && s->decay_fraction <= 1))
            return moe_fail(MOE_ERR_ARG, op, "wsd: decay-fraction must lie in [0, 1], got %g", s->decay_fraction);
        if ((unsigned)s->decay_type >= MOE_WSD_DECAY_COUNT)
            return moe_fail(MOE_ERR_ARG, op, "wsd: unknown decay type %d (linear or 1-sqrt)", (int)s->decay_type);
        int64_t D = decay_steps(s);
        if (s->warmup > s->total - D)
            return moe_fail(MOE_ERR_ARG, op,
                            "wsd: warmup %lld runs into the decay, which starts at step %lld (total %lld, "
                            "decay-fraction %g)",
                            (long long)s->warmup, (long long)(s->total - D), (long long)s->total, s->decay_fraction);
    }
    return MOE_OK;
}

moe_status moe_lr_schedule_at(const moe_lr_schedule *s, int64_t step, double *lr)
{
    MOE_TRY(moe_lr_schedule_validate(s));
    if (step < 0) return moe_fail(MOE_ERR_ARG, "lr-schedule", "the step must be >= 0, got %lld", (long long)step);
    double s1 = (double)step;
    if (step < s->warmup) {
        *lr = s->lr * (s1 + 1) / (double)s->warmup;
        return MOE_OK;
    }
    switch (s->kind) {
    case MOE_LR_CONSTANT:
        *lr = s->lr;
        break;
    case MOE_LR_COSINE:
        if (step >= s->total) {
            *lr = s->min_lr;
        } else {
            double p = (s1 - (double)s->warmup) / (double)(s->total - s->warmup);
            *lr = s->min_lr + (s->lr - s->min_lr) * 0.5 * (1 + cos(M_PI * p));
        }
        break;
    case MOE_LR_WSD: {
        int64_t D = decay_steps(s);
        if (step >= s->total) {
            *lr = s->min_lr;
        } else if (step < s->total - D) {
            *lr = s->lr;
        } else {
            double p = (double)(step - s->total + D) / (double)D;
            *lr = s->decay_type == MOE_WSD_LINEAR ? s->lr - (s->lr - s->min_lr) * p
                                                  : s->min_lr + (s->lr - s->min_lr) * (1 - sqrt(p));
        }
        break;
    }
    default:
        break;
    }
    return MOE_OK;
}
