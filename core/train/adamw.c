/* adamw.c — AdamW as PyTorch's torch.optim.AdamW defines it: decoupled
 * weight decay p ← p·(1 − lr·wd), then the Adam step with bias-corrected
 * moments and eps added outside the square root. Parameters whose name
 * contains a no-decay substring ("norm", "bias" by default) skip the decay. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../../kernels/cpu/optim.h"
#include "optim_internal.h"

void moe_adamw_config_default(moe_adamw_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->lr = 3e-4;
    cfg->beta1 = 0.9;
    cfg->beta2 = 0.95;
    cfg->eps = 1e-8;
    cfg->weight_decay = 0.1;
    cfg->n_no_decay = 2;
    strcpy(cfg->no_decay[0], "norm");
    strcpy(cfg->no_decay[1], "bias");
}

moe_status moe_adamw_config_validate(const moe_adamw_config *cfg, const char *op)
{
    if (!op) op = "make-adamw";
    if (!isfinite(cfg->lr) || cfg->lr < 0)
        return moe_fail(MOE_ERR_ARG, op, "lr must be finite and >= 0, got %g", cfg->lr);
    if (!(cfg->beta1 >= 0 && cfg->beta1 < 1) || !(cfg->beta2 >= 0 && cfg->beta2 < 1))
        return moe_fail(MOE_ERR_ARG, op, "betas must lie in [0, 1), got (%g . %g)", cfg->beta1, cfg->beta2);
    if (!isfinite(cfg->eps) || cfg->eps < 0)
        return moe_fail(MOE_ERR_ARG, op, "eps must be finite and >= 0, got %g", cfg->eps);
    if (!isfinite(cfg->weight_decay) || cfg->weight_decay < 0)
        return moe_fail(MOE_ERR_ARG, op, "weight-decay must be finite and >= 0, got %g", cfg->weight_decay);
    if (cfg->n_no_decay < 0 || cfg->n_no_decay > MOE_OPTIM_MAX_NO_DECAY)
        return moe_fail(MOE_ERR_ARG, op, "at most %d no-decay patterns, got %d", MOE_OPTIM_MAX_NO_DECAY,
                        cfg->n_no_decay);
    for (int k = 0; k < cfg->n_no_decay; k++)
        if (!memchr(cfg->no_decay[k], '\0', MOE_OPTIM_NAME_MAX) || !cfg->no_decay[k][0])
            return moe_fail(MOE_ERR_ARG, op, "no-decay pattern %d is empty or too long", k);
    return MOE_OK;
}

static void adamw_update(moe_optimizer *opt, moe_tensor *const *grads, double grad_scale)
{
    const moe_adamw_config *c = &opt->cfg.adamw;
    moe_cpu_adamw_item *items = opt->items;
    int count = 0;
    for (int i = 0; i < opt->n; i++) {
        if (!grads[i]) continue;
        double t = (double)opt->param_steps[i];
        moe_tensor *p = opt->params[i];
        items[count++] = (moe_cpu_adamw_item){
            .dtype = p->dtype,
            .param = moe_tensor_data(p),
            .grad = moe_tensor_data(grads[i]),
            .exp_avg = moe_tensor_data(moe_optim_slot(opt, i, 0)),
            .exp_avg_sq = moe_tensor_data(moe_optim_slot(opt, i, 1)),
            .n = moe_tensor_numel(p),
            .step = {
                .lr = opt->lr,
                .beta1 = c->beta1,
                .beta2 = c->beta2,
                .eps = c->eps,
                .weight_decay = opt->decay[i] ? c->weight_decay : 0.0,
                .bias_correction1 = 1.0 - pow(c->beta1, t),
                .bias_correction2_sqrt = sqrt(1.0 - pow(c->beta2, t)),
                .grad_scale = grad_scale,
            },
        };
    }
    moe_cpu_adamw(count, items);
}

static const moe_optim_rule adamw_rule = {MOE_OPTIM_ADAMW, "make-adamw", sizeof(moe_cpu_adamw_item),
                                          adamw_update};

moe_status moe_adamw_new(moe_optimizer **out, int n, const char *const *names, moe_tensor *const *params,
                         const moe_adamw_config *cfg)
{
    MOE_TRY(moe_adamw_config_validate(cfg, "make-adamw"));
    static const char *const slots[] = {"exp_avg", "exp_avg_sq"};
    MOE_TRY(moe_optimizer_make(out, &adamw_rule, cfg->lr, n, names, params, 2, slots));
    moe_optimizer *o = *out;
    o->cfg.adamw = *cfg;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < cfg->n_no_decay; k++)
            if (strstr(names[i], cfg->no_decay[k])) o->decay[i] = false;
    return MOE_OK;
}
