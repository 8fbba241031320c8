/* replay.c — routing replay: checking given expert ids, the playback list
 * of router-replay! and the record of #:replay 'record (as Megatron-Core's
 * router replay and the routing capture of inference servers: a run can be
 * reproduced with its routing fixed).
 *
 * Dimension letters: T tokens, K top-k, E experts. */
#include <stdlib.h>
#include <string.h>

#include "moe_internal.h"

moe_status moe_replay_ids_read(int64_t **out, moe_tensor *ids, int64_t T, int64_t K, int64_t E)
{
    const char *op = "router-forward";
    *out = NULL;
    MOE_CHECK_CPU(op, ids);
    if (ids->ndim != 2 || ids->shape[0] != T || ids->shape[1] != K ||
        (ids->dtype != MOE_I64 && ids->dtype != MOE_I32))
        return moe_fail(MOE_ERR_SHAPE, op, "#:experts must be i64 [%lld %lld] (tokens, top-k), got %s %s",
                        (long long)T, (long long)K, moe_dtype_name(ids->dtype), moe_shape_str(ids));
    int64_t *p = malloc(sizeof(int64_t) * MOE_NZ(T * K));
    if (!p) return moe_fail(MOE_ERR_NOMEM, op, "out of memory for %lld expert ids (%zu bytes)", (long long)(T * K),
                            sizeof(int64_t) * MOE_NZ(T * K));
    moe_status st = moe_tensor_to_host(ids, MOE_I64, p); /* i64 or i32: exact */
    int64_t i = 0, j = 0;
    int bad = st == MOE_OK ? moe_route_check_ids(p, T, K, E, &i, &j) : 0;
    if (bad == 1)
        st = moe_fail(MOE_ERR_INDEX, op, "#:experts: id %lld at token %lld, slot %lld is outside [0, %lld)",
                      (long long)p[i], (long long)(i / K), (long long)(i % K), (long long)E);
    else if (bad == 2)
        st = moe_fail(MOE_ERR_VALUE, op,
                      "#:experts: token %lld lists expert %lld twice (slots %lld and %lld); "
                      "a token's K experts must be distinct",
                      (long long)(i / K), (long long)p[i], (long long)(j % K), (long long)(i % K));
    if (st != MOE_OK) {
        free(p);
        return st;
    }
    *out = p;
    return MOE_OK;
}

moe_status moe_router_replay(moe_router *r, int64_t n, moe_tensor *const *ids)
{
    if (n < 0) return moe_fail(MOE_ERR_ARG, "router-replay!", "negative count %lld", (long long)n);
    for (int64_t i = 0; i < n; i++) {
        MOE_CHECK_NOT_NULL("router-replay!", ids[i]);
        if (ids[i]->ndim != 2 || ids[i]->shape[1] != r->cfg.top_k)
            return moe_fail(MOE_ERR_SHAPE, "router-replay!", "entry %lld must be i64 [T %lld], got %s %s",
                            (long long)i, (long long)r->cfg.top_k, moe_dtype_name(ids[i]->dtype),
                            moe_shape_str(ids[i]));
    }
    moe_tensor **list = n ? malloc(sizeof *list * (size_t)n) : NULL;
    if (n && !list) return moe_fail_nomem("router-replay!", sizeof *list * (size_t)n, "the routings to replay");
    for (int64_t i = 0; i < n; i++) list[i] = moe_tensor_retain(ids[i]);
    for (int64_t i = 0; i < r->n_replay; i++) moe_tensor_release(r->replay_ids[i]);
    free(r->replay_ids);
    r->replay_ids = list;
    r->n_replay = n;
    r->replay_cursor = 0;
    return MOE_OK;
}

moe_status moe_replay_push_record(moe_router *r, moe_tensor *ids)
{
    if (r->n_record == r->cap_record) {
        int64_t cap = r->cap_record ? 2 * r->cap_record : 8;
        moe_tensor **g = realloc(r->record, sizeof *g * (size_t)cap);
        if (!g) return moe_fail_nomem("router-forward", sizeof *g * (size_t)cap, "the routing record");
        r->record = g;
        r->cap_record = cap;
    }
    r->record[r->n_record++] = moe_tensor_retain(ids);
    return MOE_OK;
}

moe_tensor *const *moe_router_record(const moe_router *r, int64_t *n)
{
    *n = r->n_record;
    return r->record;
}

void moe_router_clear_record(moe_router *r)
{
    for (int64_t i = 0; i < r->n_record; i++) moe_tensor_release(r->record[i]);
    r->n_record = 0;
}

void moe_replay_free(moe_router *r)
{
    moe_router_clear_record(r);
    free(r->record);
    for (int64_t i = 0; i < r->n_replay; i++) moe_tensor_release(r->replay_ids[i]);
    free(r->replay_ids);
}
