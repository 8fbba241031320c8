/* sgd.c — SGD as PyTorch's torch.optim.SGD defines it: weight decay added to
 * the gradient (g + wd·p), a momentum buffer that starts at the first
 * gradient and then runs b ← μ·b + (1 − dampening)·g, optionally Nesterov. */
#include <math.h>
#include <string.h>

#include "../../kernels/cpu/optim.h"
#include "optim_internal.h"

void moe_sgd_config_default(moe_sgd_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->lr = 1e-2;
}

moe_status moe_sgd_config_validate(const moe_sgd_config *cfg, const char *op)
{
    if (!op) op = "make-sgd";
    if (!isfinite(cfg->lr) || cfg->lr < 0)
        return moe_fail(MOE_ERR_ARG, op, "lr must be finite and >= 0, got %g", cfg->lr);
    if (!isfinite(cfg->momentum) || cfg->momentum < 0)
        return moe_fail(MOE_ERR_ARG, op, "momentum must be finite and >= 0, got %g", cfg->momentum);
    if (!isfinite(cfg->dampening) || cfg->dampening < 0 || cfg->dampening > 1)
        return moe_fail(MOE_ERR_ARG, op, "dampening must lie in [0, 1], got %g", cfg->dampening);
    if (!isfinite(cfg->weight_decay) || cfg->weight_decay < 0)
        return moe_fail(MOE_ERR_ARG, op, "weight-decay must be finite and >= 0, got %g", cfg->weight_decay);
    if (cfg->nesterov && (cfg->momentum <= 0 || cfg->dampening != 0))
        return moe_fail(MOE_ERR_ARG, op, "nesterov needs momentum > 0 and dampening 0, got momentum %g, dampening %g",
                        cfg->momentum, cfg->dampening);
    return MOE_OK;
}

static void sgd_update(moe_optimizer *opt, moe_tensor *const *grads, double grad_scale)
{
    const moe_sgd_config *c = &opt->cfg.sgd;
    moe_cpu_sgd_item *items = opt->items;
    int count = 0;
    for (int i = 0; i < opt->n; i++) {
        if (!grads[i]) continue;
        moe_tensor *p = opt->params[i];
        items[count++] = (moe_cpu_sgd_item){
            .dtype = p->dtype,
            .param = moe_tensor_data(p),
            .grad = moe_tensor_data(grads[i]),
            .buf = opt->n_slots ? moe_tensor_data(moe_optim_slot(opt, i, 0)) : NULL,
            .n = moe_tensor_numel(p),
            .step = {
                .lr = opt->lr,
                .momentum = c->momentum,
                .dampening = c->dampening,
                .weight_decay = c->weight_decay,
                .grad_scale = grad_scale,
                .nesterov = c->nesterov,
                .first = opt->param_steps[i] == 1,
            },
        };
    }
    moe_cpu_sgd(count, items);
}

static const moe_optim_rule sgd_rule = {MOE_OPTIM_SGD, "make-sgd", sizeof(moe_cpu_sgd_item), sgd_update};

moe_status moe_sgd_new(moe_optimizer **out, int n, const char *const *names, moe_tensor *const *params,
                       const moe_sgd_config *cfg)
{
    MOE_TRY(moe_sgd_config_validate(cfg, "make-sgd"));
    static const char *const slots[] = {"momentum_buffer"};
    MOE_TRY(moe_optimizer_make(out, &sgd_rule, cfg->lr, n, names, params, cfg->momentum != 0 ? 1 : 0, slots));
    (*out)->cfg.sgd = *cfg;
    return MOE_OK;
}
