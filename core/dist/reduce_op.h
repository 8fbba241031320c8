/* reduce_op.h — the reduce operations of the collectives. A vocabulary
 * header, like dtype.h: the collectives (core/dist/comm.h) and the host
 * reduction kernels of their backends (kernels/cpu/collective.h) share this
 * one definition. */
#ifndef MOELAB_DIST_REDUCE_OP_H
#define MOELAB_DIST_REDUCE_OP_H

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum moe_reduce_op {
    MOE_REDUCE_SUM,
    MOE_REDUCE_AVG,
    MOE_REDUCE_MAX,
    MOE_REDUCE_MIN,
    MOE_REDUCE_OP_COUNT
} moe_reduce_op;
/* "sum", "avg", "max", "min". */
const char *moe_reduce_op_name(moe_reduce_op op);
/* Parse a reduce op name; false when unknown. */
bool moe_reduce_op_parse(const char *name, moe_reduce_op *out);

#ifdef __cplusplus
}
#endif
#endif
