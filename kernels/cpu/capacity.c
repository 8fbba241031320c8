/* capacity.c — token dropping over an expert capacity (see capacity.h).
 *
 * Policies: "probs" keeps each expert's C slots of highest weight (ties: the
 * earlier token), "position" its C earliest slots. Pad-to-capacity fills each
 * expert up to min(C, T) map entries with the earliest tokens not routed to
 * it (weight 0), as Megatron's capacity mask does. */
#include <stdlib.h>
#include <string.h>

#include "capacity.h"

/* An allocation count that is never 0. */
#define NZ(n) ((size_t)((n) > 0 ? (n) : 1))

typedef struct slot_key {
    double w;
    int64_t slot;
} slot_key;

/* Higher weight first, then the earlier slot. */
static int heavier_first(const void *a, const void *b)
{
    const slot_key *x = a, *y = b;
    if (x->w > y->w) return -1;
    if (x->w < y->w) return 1;
    return (x->slot > y->slot) - (x->slot < y->slot);
}

moe_status moe_cpu_capacity_drop(uint8_t *kept, int64_t *dropped, uint8_t *pad_map, const int64_t *ids,
                                 const double *w, int64_t T, int64_t K, int64_t E, int64_t C,
                                 bool by_weight)
{
    *dropped = 0;
    int64_t n = T * K;
    int64_t *cnt = calloc((size_t)E + 1, sizeof(int64_t));          /* [E+1] offsets */
    slot_key *bucket = malloc(sizeof(slot_key) * NZ(n)); /* [T·K] by expert */
    int64_t *fill = calloc((size_t)E, sizeof(int64_t));
    if (!cnt || !bucket || !fill) {
        free(cnt), free(bucket), free(fill);
        return moe_fail(MOE_ERR_NOMEM, "router-forward", "out of memory for capacity: %lld bytes for %lld slots",
                        (long long)((2 * (size_t)E + 1) * sizeof(int64_t) + sizeof(slot_key) * NZ(n)), (long long)n);
    }
    for (int64_t i = 0; i < n; i++)
        if (kept[i]) cnt[ids[i] + 1]++;
    for (int64_t e = 0; e < E; e++) cnt[e + 1] += cnt[e];
    for (int64_t i = 0; i < n; i++) /* slot order = token order */
        if (kept[i]) {
            int64_t e = ids[i];
            bucket[cnt[e] + fill[e]++] = (slot_key){w[i], i};
        }
    for (int64_t e = 0; e < E; e++) {
        int64_t ne = cnt[e + 1] - cnt[e];
        if (ne <= C) continue;
        slot_key *b = bucket + cnt[e];
        if (by_weight) qsort(b, (size_t)ne, sizeof *b, heavier_first);
        for (int64_t i = C; i < ne; i++) {
            kept[b[i].slot] = 0;
            (*dropped)++;
        }
    }
    if (pad_map) {
        uint8_t *routed = calloc(NZ(T * E), 1); /* [T E] */
        if (!routed) {
            free(cnt), free(bucket), free(fill);
            return moe_fail(MOE_ERR_NOMEM, "router-forward", "out of memory for pad-to-capacity: %lld bytes",
                            (long long)NZ(T * E));
        }
        memset(fill, 0, sizeof(int64_t) * (size_t)E);
        for (int64_t i = 0; i < n; i++)
            if (kept[i]) {
                routed[(i / K) * E + ids[i]] = 1;
                fill[ids[i]]++;
            }
        int64_t target = C < T ? C : T;
        for (int64_t e = 0; e < E; e++)
            for (int64_t t = 0; t < T && fill[e] < target; t++)
                if (!routed[t * E + e]) {
                    pad_map[t * E + e] = 1;
                    fill[e]++;
                }
        free(routed);
    }
    free(cnt), free(bucket), free(fill);
    return MOE_OK;
}
