/* tracker.c — the balance tracker: the global-batch loss's buffer of
 * routing counts and valid tokens, summed over the data-parallel groups at
 * each micro-batch and over the micro-batches of an optimizer step, with the
 * snapshots that recomputation replays (core/moe/aux_loss.h). */
#include <stdlib.h>
#include <string.h>

#include "moe_internal.h"

#define TRACKER_MAX_GROUPS 4

struct moe_balance_tracker {
    int64_t E;
    moe_group *groups[TRACKER_MAX_GROUPS];
    int n_groups;
    double *buf;      /* [E+1] counts, tokens */
    int64_t micro;
    bool buffer, recomputing;
    double *snaps;    /* [n_snaps (E+1)] the buffer after each commit */
    int64_t n_snaps, cap_snaps, cursor;
};

moe_status moe_balance_tracker_new(moe_balance_tracker **out, int64_t experts, moe_group *group)
{
    *out = NULL;
    if (experts < 1)
        return moe_fail(MOE_ERR_ARG, "make-balance-tracker", "experts must be >= 1, got %lld",
                        (long long)experts);
    moe_balance_tracker *tr = calloc(1, sizeof *tr);
    if (tr) tr->buf = calloc((size_t)experts + 1, sizeof(double));
    if (!tr || !tr->buf) {
        free(tr);
        return moe_fail(MOE_ERR_NOMEM, "make-balance-tracker", "out of memory for the tracker (%zu bytes)",
                        sizeof *tr + sizeof(double) * ((size_t)experts + 1));
    }
    tr->E = experts;
    tr->buffer = true;
    if (group) tr->groups[tr->n_groups++] = moe_group_retain(group);
    *out = tr;
    return MOE_OK;
}

moe_status moe_balance_tracker_add_group(moe_balance_tracker *tr, moe_group *group)
{
    if (!group) return MOE_OK;
    if (tr->n_groups == TRACKER_MAX_GROUPS)
        return moe_fail(MOE_ERR_ARG, "make-balance-tracker", "at most %d groups", TRACKER_MAX_GROUPS);
    tr->groups[tr->n_groups++] = moe_group_retain(group);
    return MOE_OK;
}

void moe_balance_tracker_free(moe_balance_tracker *tr)
{
    if (!tr) return;
    for (int g = 0; g < tr->n_groups; g++) moe_group_release(tr->groups[g]);
    free(tr->buf);
    free(tr->snaps);
    free(tr);
}

void moe_balance_tracker_reset(moe_balance_tracker *tr)
{
    memset(tr->buf, 0, sizeof(double) * (size_t)(tr->E + 1));
    tr->micro = 0;
    tr->n_snaps = 0;
    tr->cursor = 0;
}

void moe_balance_tracker_set_buffer(moe_balance_tracker *tr, bool buffer) { tr->buffer = buffer; }
bool moe_balance_tracker_buffer(const moe_balance_tracker *tr) { return tr->buffer; }
void moe_balance_tracker_set_recomputing(moe_balance_tracker *tr, bool recomputing)
{
    tr->recomputing = recomputing; /* the replay cursor runs on until the reset */
}
bool moe_tracker_recomputing(const moe_balance_tracker *tr) { return tr->recomputing; }
int64_t moe_balance_tracker_experts(const moe_balance_tracker *tr) { return tr->E; }
int64_t moe_balance_tracker_micro_batches(const moe_balance_tracker *tr) { return tr->micro; }
const double *moe_tracker_buffer(const moe_balance_tracker *tr) { return tr->buf; }

moe_status moe_balance_tracker_counts(moe_tensor **counts, double *tokens,
                                      const moe_balance_tracker *tr)
{
    *counts = NULL;
    MOE_TRY(moe_tensor_from_data(counts, MOE_F64, MOE_CPU, 1, &tr->E, tr->buf));
    if (tokens) *tokens = tr->buf[tr->E];
    return MOE_OK;
}

/* Counts are tokens routed: finite and never negative. */

static moe_status read_counts(double *dst, const char *op, moe_tensor *counts, int64_t E)
{
    if (counts->ndim != 1 || counts->shape[0] != E)
        return moe_fail(MOE_ERR_SHAPE, op, "counts must be [%lld], got %s", (long long)E,
                        moe_shape_str(counts));
    MOE_TRY(moe_tensor_to_doubles(counts, dst));
    return moe_check_counts(op, dst, E);
}

moe_status moe_balance_tracker_add_counts(moe_balance_tracker *tr, moe_tensor *counts, double tokens)
{
    double *tmp = malloc(sizeof(double) * (size_t)tr->E);
    if (!tmp)
        return moe_fail(MOE_ERR_NOMEM, "balance-tracker-add-counts!", "out of memory for the counts (%zu bytes)",
                        sizeof(double) * (size_t)tr->E);
    moe_status st = read_counts(tmp, "balance-tracker-add!", counts, tr->E);
    if (st == MOE_OK) {
        for (int64_t i = 0; i < tr->E; i++) tr->buf[i] += tmp[i];
        tr->buf[tr->E] += tokens;
    }
    free(tmp);
    return st;
}

moe_status moe_balance_tracker_load(moe_balance_tracker *tr, moe_tensor *counts, double tokens,
                                    int64_t micro_batches)
{
    double *tmp = malloc(sizeof(double) * (size_t)tr->E);
    if (!tmp)
        return moe_fail(MOE_ERR_NOMEM, "router-load-state!", "out of memory for the tracker's counts (%zu bytes)",
                        sizeof(double) * (size_t)tr->E);
    moe_status st = read_counts(tmp, "balance-tracker-load!", counts, tr->E);
    if (st == MOE_OK) {
        memcpy(tr->buf, tmp, sizeof(double) * (size_t)tr->E);
        tr->buf[tr->E] = tokens;
        tr->micro = micro_batches;
        tr->n_snaps = 0;
        tr->cursor = 0;
    }
    free(tmp);
    return st;
}

moe_status moe_tracker_reduce(moe_balance_tracker *tr, const double *counts, double tokens, double *red)
{
    memcpy(red, counts, sizeof(double) * (size_t)tr->E);
    red[tr->E] = tokens;
    return moe_reduce_doubles(red, tr->E + 1, tr->n_groups, tr->groups);
}

moe_status moe_tracker_view(moe_balance_tracker *tr, const char *op, const double *red, double *acc)
{
    int64_t n = tr->E + 1;
    if (tr->recomputing) {
        if (tr->cursor >= tr->n_snaps)
            return moe_fail(MOE_ERR_STATE, op,
                            "recomputing micro-batch %lld but only %lld forwards were recorded "
                            "since the last reset",
                            (long long)tr->cursor + 1, (long long)tr->n_snaps);
        memcpy(acc, tr->snaps + tr->cursor * n, sizeof(double) * (size_t)n);
        return MOE_OK;
    }
    for (int64_t i = 0; i < n; i++) acc[i] = (tr->buffer ? tr->buf[i] : 0.0) + red[i];
    return MOE_OK;
}

double moe_tracker_view_micro(const moe_balance_tracker *tr)
{
    if (tr->recomputing) return (double)(tr->micro - tr->n_snaps + tr->cursor + 1);
    return tr->buffer ? (double)(tr->micro + 1) : 1.0;
}

moe_status moe_tracker_commit(moe_balance_tracker *tr, const char *op, const double *red)
{
    int64_t n = tr->E + 1;
    if (tr->recomputing) {
        tr->cursor++;
        return MOE_OK;
    }
    if (tr->n_snaps == tr->cap_snaps) {
        int64_t cap = tr->cap_snaps ? 2 * tr->cap_snaps : 8;
        double *grown = realloc(tr->snaps, sizeof(double) * (size_t)(cap * n));
        if (!grown)
            return moe_fail(MOE_ERR_NOMEM, op, "out of memory for the global-batch buffer's snapshots (%zu bytes)",
                            sizeof(double) * (size_t)(cap * n));
        tr->snaps = grown;
        tr->cap_snaps = cap;
    }
    for (int64_t i = 0; i < n; i++) tr->buf[i] = (tr->buffer ? tr->buf[i] : 0.0) + red[i];
    memcpy(tr->snaps + tr->n_snaps * n, tr->buf, sizeof(double) * (size_t)n);
    tr->n_snaps++;
    tr->micro++;
    return MOE_OK;
}


moe_status moe_tracker_check_experts(const moe_balance_tracker *tr, const char *op)
{
    for (int g = 0; g < tr->n_groups; g++) {
        moe_group *grp = tr->groups[g];
        int n = moe_group_size(grp);
        if (n <= 1) continue;
        moe_tensor *e, *all = NULL;
        MOE_TRY(moe_tensor_scalar(&e, MOE_I64, MOE_CPU, (double)tr->E));
        moe_status st = moe_all_gather(&all, e, grp);
        moe_tensor_release(e);
        MOE_TRY(st);
        const int64_t *experts = moe_tensor_data(all); /* [n] */
        for (int q = 1; q < n && st == MOE_OK; q++)
            if (experts[q] != experts[0])
                st = moe_fail(MOE_ERR_SHAPE, op, "the ranks of group '%s' count different experts: rank 0 has "
                              "%lld experts, rank %d has %lld", moe_group_name(grp), (long long)experts[0], q,
                              (long long)experts[q]);
        moe_tensor_release(all);
        MOE_TRY(st);
    }
    return MOE_OK;
}

int64_t moe_tracker_ranks(const moe_balance_tracker *tr)
{
    int64_t ranks = 1;
    for (int g = 0; g < tr->n_groups; g++) ranks *= moe_group_size(tr->groups[g]);
    return ranks;
}
