/* comm.h — process groups and collectives (issue 5). The first lines are
 * the part other subsystems (router, aux losses) already rely on:
 * a NULL group is the trivial group of one rank. */
#ifndef MOELAB_COMM_H
#define MOELAB_COMM_H

#include "../tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moe_group moe_group; /* NULL: the group of just this rank */

typedef enum moe_reduce_op {
    MOE_REDUCE_SUM,
    MOE_REDUCE_AVG,
    MOE_REDUCE_MAX,
    MOE_REDUCE_MIN,
    MOE_REDUCE_OP_COUNT
} moe_reduce_op;

int moe_group_size(const moe_group *g); /* 1 for NULL */
int moe_group_rank(const moe_group *g); /* 0 for NULL */
/* In-place all-reduce of T over G (not recorded by autograd). */
moe_status moe_all_reduce_(moe_tensor *t, moe_reduce_op op, moe_group *g);

#ifdef __cplusplus
}
#endif
#endif
