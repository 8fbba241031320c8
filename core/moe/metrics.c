/* metrics.c — the balance statistics of a count vector, routing metrics of
 * one router and the logging reductions across layers and ranks (see
 * metrics.h for the windows and reductions).
 *
 * Dimension letters: E experts, L MoE layers, K top-k. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "moe_internal.h"

/* ---- balance statistics ---------------------------------------------------------------- */

moe_status moe_check_counts(const char *op, const double *c, int64_t E)
{
    for (int64_t e = 0; e < E; e++)
        if (!(c[e] >= 0) || isinf(c[e]))
            return moe_fail(MOE_ERR_VALUE, op, "counts must be finite and non-negative, but expert %lld has %g",
                            (long long)e, c[e]);
    return MOE_OK;
}

moe_status moe_balance_stats_compute(moe_balance_stats *out, moe_tensor *counts)
{
    memset(out, 0, sizeof *out);
    MOE_CHECK_NOT_NULL("balance-stats", counts);
    if (counts->ndim != 1 || counts->shape[0] < 1)
        return moe_fail(MOE_ERR_SHAPE, "balance-stats", "counts must be a non-empty vector [E], got %s",
                        moe_shape_str(counts));
    int64_t E = counts->shape[0];
    double *c = malloc(sizeof(double) * (size_t)E);
    if (!c) return moe_fail_nomem("balance-stats", sizeof(double) * (size_t)E, "the counts");
    moe_status st = moe_tensor_to_doubles(counts, c);
    if (st == MOE_OK) st = moe_check_counts("balance-stats", c, E);
    if (st != MOE_OK) {
        free(c);
        return st;
    }
    double sum = 0, mx = c[0], dead = 0;
    for (int64_t i = 0; i < E; i++) {
        sum += c[i];
        mx = c[i] > mx ? c[i] : mx;
        dead += c[i] == 0;
    }
    double mean = sum / (double)E, var = 0;
    for (int64_t i = 0; i < E; i++) var += (c[i] - mean) * (c[i] - mean);
    var /= (double)E;
    out->total = sum;
    out->dead_fraction = dead / (double)E;
    if (mean != 0) {
        out->max_violation = (mx - mean) / mean;
        out->max_over_mean = mx / mean;
        out->cv = sqrt(var) / mean;
    }
    free(c);
    return MOE_OK;
}

moe_status moe_max_violation(double *out, moe_tensor *counts)
{
    moe_balance_stats s;
    *out = 0;
    MOE_TRY(moe_balance_stats_compute(&s, counts));
    *out = s.max_violation;
    return MOE_OK;
}

/* ---- a router's metrics ------------------------------------------------------------------ */

static moe_status counts_tensor(moe_tensor **out, const double *c, int64_t E)
{
    return moe_tensor_from_data(out, MOE_F64, MOE_CPU, 1, &E, c);
}

void moe_router_metrics_release(moe_router_metrics *m)
{
    if (!m) return;
    moe_tensor_release(m->tokens_per_expert);
    moe_tensor_release(m->tokens_per_expert_step);
    moe_tensor_release(m->tokens_per_expert_global);
    moe_tensor_release(m->bias);
    memset(m, 0, sizeof *m);
}

moe_status moe_router_metrics_get(moe_router_metrics *m, moe_router *r)
{
    memset(m, 0, sizeof *m);
    MOE_CHECK_NOT_NULL("router-metrics", r);
    int64_t E = r->cfg.experts, K = r->cfg.top_k;
    /* the step window: the step in progress, or, when it has routed nothing
     * yet, the one the last router-step closed */
    bool ended = r->steps > 0 && r->step_micro == 0 && r->step_tokens == 0;
    const double *counts = ended ? r->ended_counts : r->step_counts;
    double tok = ended ? r->ended_tokens : r->step_tokens;
    double entropy = ended ? r->ended_entropy : r->step_entropy;
    double mass = ended ? r->ended_mass : r->step_mass;
    double dropped = ended ? r->ended_dropped : r->step_dropped;
    int64_t micro = ended ? r->ended_micro : r->step_micro;
    const double *aux = ended ? r->ended_aux : r->step_aux;
    moe_status st = counts_tensor(&m->tokens_per_expert, r->batch_counts, E);
    if (st == MOE_OK) st = counts_tensor(&m->tokens_per_expert_step, counts, E);
    if (st == MOE_OK && r->have_global) st = counts_tensor(&m->tokens_per_expert_global, r->global_counts, E);
    if (st == MOE_OK && r->bias) st = moe_clone(&m->bias, r->bias);
    moe_balance_stats b = {0}, s = {0}, g = {0};
    if (st == MOE_OK) st = moe_balance_stats_compute(&b, m->tokens_per_expert);
    if (st == MOE_OK) st = moe_balance_stats_compute(&s, m->tokens_per_expert_step);
    if (st == MOE_OK && r->have_global) st = moe_balance_stats_compute(&g, m->tokens_per_expert_global);
    if (st != MOE_OK) {
        moe_router_metrics_release(m);
        return st;
    }
    /* an empty window has counts (all 0) but no statistics: NaN, not "all dead" */
    m->max_violation_batch = b.total > 0 ? b.max_violation : NAN;
    m->max_violation_step = s.total > 0 ? s.max_violation : NAN;
    m->max_violation_global = r->have_global && g.total > 0 ? g.max_violation : NAN;
    m->cv = s.total > 0 ? s.cv : NAN;
    m->max_over_mean = s.total > 0 ? s.max_over_mean : NAN;
    m->dead_fraction = s.total > 0 ? s.dead_fraction : NAN;
    m->entropy = tok > 0 ? (E > 1 ? entropy / tok / log((double)E) : 0.0) : NAN;
    m->selected_mass = tok > 0 ? mass / tok : NAN;
    m->dropped_fraction = tok > 0 ? dropped / ((double)K * tok) : NAN;
    m->n_aux = r->n_aux;
    for (int i = 0; i < r->n_aux; i++) {
        m->aux_kind[i] = r->aux_kind[i];
        m->aux_value[i] = micro ? aux[i] / (double)micro : NAN;
    }
    m->micro_batches = micro;
    m->tokens = (int64_t)tok;
    m->step = r->steps;
    m->step_ended = ended;
    return MOE_OK;
}

static moe_status sum_over(double *buf, int64_t n, moe_group *g)
{
    if (moe_group_size(g) <= 1) return MOE_OK;
    moe_tensor *t;
    MOE_TRY(moe_tensor_from_data(&t, MOE_F64, MOE_CPU, 1, &n, buf));
    moe_status st = moe_all_reduce_(t, MOE_REDUCE_SUM, g);
    if (st == MOE_OK) memcpy(buf, moe_tensor_data(t), sizeof(double) * (size_t)n);
    moe_tensor_release(t);
    return st;
}

moe_status moe_router_log_reduce(moe_tensor **table, double aux_values[MOE_AUX_KIND_COUNT], int n,
                                 moe_router *const *routers, const int64_t *layer_ids,
                                 int64_t n_layers, moe_group *pp)
{
    const char *op = "router-log-reduce";
    *table = NULL;
    if (n < 1 || n_layers < 1)
        return moe_fail(MOE_ERR_ARG, op, "needs at least one router and one layer (got %d, %lld)", n,
                        (long long)n_layers);
    int64_t E = routers[0]->cfg.experts;
    for (int i = 0; i < n; i++) {
        if (routers[i]->cfg.experts != E)
            return moe_fail(MOE_ERR_SHAPE, op, "router %d has %lld experts, router 0 has %lld", i,
                            (long long)routers[i]->cfg.experts, (long long)E);
        if (layer_ids[i] < 0 || layer_ids[i] >= n_layers)
            return moe_fail(MOE_ERR_INDEX, op, "layer id %lld outside [0, %lld)", (long long)layer_ids[i],
                            (long long)n_layers);
    }
    double *tab = calloc((size_t)(n_layers * E), sizeof(double)); /* [L E] */
    double vals[2 * MOE_AUX_KIND_COUNT] = {0};                    /* values, presence */
    if (!tab) return moe_fail_nomem(op, sizeof(double) * (size_t)(n_layers * E), "the per-layer counts");
    for (int i = 0; i < n; i++) {
        const moe_router *r = routers[i];
        for (int64_t e = 0; e < E; e++) tab[layer_ids[i] * E + e] += r->step_counts[e];
        /* a z value is the rank's whole mean; its partial share (what the tp×cp
         * sum below adds up) is value/|tp×cp|, the router's α/|tp×cp| rule */
        double ztp = (double)moe_group_size(r->tp) * (double)moe_group_size(r->cp);
        for (int a = 0; a < r->n_aux; a++) {
            double v = r->step_micro ? r->step_aux[a] / (double)r->step_micro : 0.0;
            vals[r->aux_kind[a]] += r->aux_kind[a] == MOE_AUX_Z ? v / ztp : v;
            vals[MOE_AUX_KIND_COUNT + r->aux_kind[a]] += 1;
        }
    }
    moe_router *r0 = routers[0];
    /* loss group (cp, tp): partial values add up; dp: average; pp: gather layers */
    moe_status st = sum_over(vals, MOE_AUX_KIND_COUNT, r0->cp);
    if (st == MOE_OK) st = sum_over(vals, MOE_AUX_KIND_COUNT, r0->tp);
    if (st == MOE_OK) st = sum_over(vals, MOE_AUX_KIND_COUNT, r0->dp);
    for (int k = 0; k < MOE_AUX_KIND_COUNT; k++) vals[k] /= (double)moe_group_size(r0->dp);
    if (st == MOE_OK) st = sum_over(vals, 2 * MOE_AUX_KIND_COUNT, pp);
    if (st == MOE_OK) st = sum_over(tab, n_layers * E, pp);
    if (st == MOE_OK) st = moe_tensor_from_data(table, MOE_F64, MOE_CPU, 2, (int64_t[]){n_layers, E}, tab);
    free(tab);
    if (st != MOE_OK) return st;
    for (int k = 0; k < MOE_AUX_KIND_COUNT; k++) {
        double pres = vals[MOE_AUX_KIND_COUNT + k];
        aux_values[k] = pres > 0 ? vals[k] / pres : NAN;
    }
    return MOE_OK;
}
