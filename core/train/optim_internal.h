/* optim_internal.h — the optimizer object, shared by optim.c (parameters,
 * state, checks) and the update rules adamw.c and sgd.c; not installed. */
#ifndef MOELAB_TRAIN_OPTIM_INTERNAL_H
#define MOELAB_TRAIN_OPTIM_INTERNAL_H

#include <pthread.h>

#include "optim.h"

#define MOE_OPTIM_MAX_SLOTS 2

/* What differs between optimizers: the per-parameter state tensors and the
 * update. UPDATE updates every parameter i whose GRADS[i] (contiguous) is
 * not NULL, its step count already advanced, with each gradient scaled by
 * GRAD_SCALE first; ITEM_SIZE is the size of the rule's kernel item, of
 * which the optimizer keeps one per parameter (ITEMS). */
typedef struct moe_optim_rule {
    moe_optim_kind kind;
    const char *op; /* the Scheme procedure that makes one */
    size_t item_size;
    void (*update)(moe_optimizer *opt, moe_tensor *const *grads, double grad_scale);
} moe_optim_rule;

struct moe_optimizer {
    pthread_mutex_t lock; /* held by a step, a state load and a learning-rate change */
    const moe_optim_rule *rule;
    union {
        moe_adamw_config adamw;
        moe_sgd_config sgd;
    } cfg;
    double lr;
    int64_t step;
    int n;
    char **names;          /* [n] */
    moe_tensor **params;   /* [n], retained */
    bool *decay;           /* [n] */
    int64_t *param_steps;  /* [n] */
    int n_slots;           /* state tensors per parameter */
    const char *slot_names[MOE_OPTIM_MAX_SLOTS];
    moe_tensor **slots;    /* [n][n_slots], zeros of each parameter's shape */
    char **state_names;    /* [1 + n·(1 + n_slots)] */
    moe_tensor **grads;    /* [n], scratch of a step: no allocation per step */
    void *items;           /* [n] kernel items of a step (rule->item_size each) */
};

static inline moe_tensor *moe_optim_slot(const moe_optimizer *opt, int i, int k)
{
    return opt->slots[i * opt->n_slots + k];
}

/* optim.c: the common part of moe_adamw_new / moe_sgd_new. */
moe_status moe_optimizer_make(moe_optimizer **out, const moe_optim_rule *rule, double lr, int n,
                              const char *const *names, moe_tensor *const *params, int n_slots,
                              const char *const *slot_names);

#endif
