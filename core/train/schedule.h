/* schedule.h — learning-rate schedules: the learning rate of optimizer step
 * s = 0, 1, … (the step about to be taken).
 *
 * Every kind starts with a linear warmup over W steps: lr·(s+1)/W for s < W.
 * After it:
 *   constant  lr
 *   cosine    for W ≤ s < total, with p = (s − W)/(total − W):
 *             min + (lr − min)·½(1 + cos πp); min from total on
 *   wsd       warmup–stable–decay with D = ⌊f·total⌋ decay steps: lr while
 *             s < total − D, then with p = (s − total + D)/D
 *             linear: lr − (lr − min)·p;  1-sqrt: min + (lr − min)·(1 − √p);
 *             min from total on */
#ifndef MOELAB_TRAIN_SCHEDULE_H
#define MOELAB_TRAIN_SCHEDULE_H

#include <stdbool.h>
#include <stdint.h>

#include "../error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum moe_lr_kind {
    MOE_LR_CONSTANT,
    MOE_LR_COSINE,
    MOE_LR_WSD,
    MOE_LR_KIND_COUNT
} moe_lr_kind;

typedef enum moe_wsd_decay {
    MOE_WSD_LINEAR,
    MOE_WSD_1_SQRT,
    MOE_WSD_DECAY_COUNT
} moe_wsd_decay;

const char *moe_lr_kind_name(moe_lr_kind k);     /* "constant", "cosine", "wsd" */
const char *moe_wsd_decay_name(moe_wsd_decay d); /* "linear", "1-sqrt" */
bool moe_lr_kind_parse(const char *name, moe_lr_kind *out);
bool moe_wsd_decay_parse(const char *name, moe_wsd_decay *out);

typedef struct moe_lr_schedule {
    moe_lr_kind kind;
    double lr;             /* peak learning rate, finite, >= 0 */
    double min_lr;         /* 0 <= min_lr <= lr (cosine, wsd) */
    int64_t warmup;        /* W >= 0 */
    int64_t total;         /* cosine, wsd: W <= total, total >= 1; constant: unused */
    double decay_fraction; /* wsd: f in [0, 1] */
    moe_wsd_decay decay_type;
} moe_lr_schedule;

/* Constant, lr 3e-4, no warmup; min_lr 0, total 0, decay_fraction 0.2, linear. */
void moe_lr_schedule_default(moe_lr_schedule *s);
/* Check the settings; the message names "make-lr-schedule". */
moe_status moe_lr_schedule_validate(const moe_lr_schedule *s);
/* *LR ← the learning rate of step STEP (>= 0) of a valid schedule. */
moe_status moe_lr_schedule_at(const moe_lr_schedule *s, int64_t step, double *lr);

#ifdef __cplusplus
}
#endif
#endif
