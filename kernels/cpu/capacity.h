/* capacity.h — token dropping over an expert capacity on the CPU
 * (capacity.c); core/moe/capacity.c has the capacity formulas.
 *
 * Dimension letters: T tokens, K slots per token, E experts, C capacity. */
#ifndef MOELAB_CPU_CAPACITY_H
#define MOELAB_CPU_CAPACITY_H

#include <stdbool.h>
#include <stdint.h>

#include "../../core/error.h"

/* Drop the slots over capacity C: KEPT [T K] (in: the routed valid slots)
 * loses the dropped ones, *DROPPED gets their number. BY_WEIGHT: each expert
 * keeps the C slots of highest weight W [T K] (ties: the earlier slot); else
 * its C earliest slots. PAD_MAP [T E] (zero on entry, or NULL) receives 1 for
 * the filler entries that pad each expert to min(C, T) tokens with the
 * earliest tokens not routed to it. Errors: out of memory. */
moe_status moe_cpu_capacity_drop(uint8_t *kept, int64_t *dropped, uint8_t *pad_map, const int64_t *ids,
                                 const double *w, int64_t T, int64_t K, int64_t E, int64_t C,
                                 bool by_weight);

#endif
