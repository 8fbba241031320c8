/* aux_loss.c — load-balancing losses and z-loss, with the scopes and the
 * per-scope statistics they read (the balance tracker is tracker.c, the
 * balance statistics of a count vector metrics.c; see aux_loss.h for the
 * maths of every variant).
 *
 * Dimension letters: T tokens, E experts, K top-k, N scopes (the micro-batch,
 * or one per sequence/document).
 *
 * Every balance variant is linear in the loss scores once the counts are
 * known:  L = Σ_n Σ_i A[n][i]·P[n][i],  P[n][i] = Σ_{valid t in scope n} p_{t,i},
 * with A built from counts and token totals (constants for autograd). So one
 * forward computes the per-scope sums, reduces the counts over the groups,
 * builds A, and the value is Σ A·P; the backward is, per token,
 * dL/dz_t = g · J_p(z_t)ᵀ A[scope(t)]. One node can carry several terms (the
 * router's inject mode: one backward pass for every variant and the z-loss).
 * The loops over tokens (statistics, backward, z sum) are kernels/cpu/balance.c. */
#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cpu/balance.h"
#include "../../kernels/cpu/index.h"
#include "moe_internal.h"

bool moe_aux_kind_is_sequence(moe_aux_kind k)
{
    return k == MOE_AUX_SEQUENCE || k == MOE_AUX_OLMO_INSTANCE;
}

void moe_aux_options_default(moe_aux_options *o)
{
    memset(o, 0, sizeof *o);
    o->top_k = 1;
    o->score = MOE_SCORE_SOFTMAX;
    o->sigmoid_eps = 1e-20;
    o->num_layers = 1;
    o->k_in_f = true;
}

/* ---- scopes ------------------------------------------------------------------------ */

moe_status moe_scopes_single(moe_scopes *sc, const char *op, int64_t T)
{
    sc->n = 1;
    sc->bounds = malloc(2 * sizeof(int64_t));
    if (!sc->bounds) return moe_fail_nomem(op, 2 * sizeof(int64_t), "the micro-batch's scope bounds");
    sc->bounds[0] = 0;
    sc->bounds[1] = T;
    return MOE_OK;
}

moe_status moe_scopes_sequences(moe_scopes *sc, const char *op, int64_t B, int64_t S,
                                moe_tensor *doc_bounds)
{
    int64_t T = B * S;
    sc->n = 0;
    sc->bounds = NULL;
    if (!doc_bounds) {
        sc->bounds = malloc(sizeof(int64_t) * (size_t)(B + 1));
        if (!sc->bounds) return moe_fail_nomem(op, sizeof(int64_t) * (size_t)(B + 1), "the sequence bounds");
        for (int64_t b = 0; b <= B; b++) sc->bounds[b] = b * S;
        sc->n = B;
        return MOE_OK;
    }
    if (doc_bounds->ndim != 1 || doc_bounds->shape[0] < 2 ||
        (doc_bounds->dtype != MOE_I64 && doc_bounds->dtype != MOE_I32))
        return moe_fail(MOE_ERR_SHAPE, op,
                        "document bounds must be an i64 vector [N+1] of starts 0 … T, got %s %s",
                        moe_dtype_name(doc_bounds->dtype), moe_shape_str(doc_bounds));
    int64_t n1 = doc_bounds->shape[0];
    double *v = malloc(sizeof(double) * (size_t)n1);
    sc->bounds = malloc(sizeof(int64_t) * (size_t)n1);
    if (!v || !sc->bounds) {
        free(v);
        moe_scopes_free(sc);
        return moe_fail_nomem(op, (sizeof(double) + sizeof(int64_t)) * (size_t)n1, "the document bounds");
    }
    moe_status st = moe_tensor_to_doubles(doc_bounds, v);
    for (int64_t i = 0; st == MOE_OK && i < n1; i++) {
        sc->bounds[i] = (int64_t)v[i];
        if ((i == 0 && v[0] != 0) || (i == n1 - 1 && v[i] != (double)T) ||
            (i > 0 && v[i] <= v[i - 1]))
            st = moe_fail(MOE_ERR_VALUE, op,
                          "document bounds must rise strictly from 0 to T = %lld; entry %lld is %lld",
                          (long long)T, (long long)i, (long long)v[i]);
    }
    free(v);
    if (st != MOE_OK) {
        moe_scopes_free(sc);
        return st;
    }
    sc->n = n1 - 1;
    return MOE_OK;
}

void moe_scopes_free(moe_scopes *sc)
{
    free(sc->bounds);
    sc->bounds = NULL;
    sc->n = 0;
}

/* ---- per-scope statistics ---------------------------------------------------------- */

void moe_scope_stats_free(moe_scope_stats *st)
{
    free(st->P);
    free(st->C);
    free(st->Tn);
    st->P = st->C = st->Tn = NULL;
}

moe_status moe_scope_stats_compute(moe_scope_stats *st, const char *op, const moe_scopes *sc, const void *s,
                                   moe_dtype dt, const double *rowsum, moe_score_fn score,
                                   double eps, const uint8_t *valid, const int64_t *count_ids,
                                   int64_t T, int64_t E, int64_t K)
{
    int64_t N = sc->n;
    st->n = N;
    st->E = E;
    st->P = calloc(MOE_NZ(N * E), sizeof(double));
    st->C = calloc(MOE_NZ(N * E), sizeof(double));
    st->Tn = calloc(MOE_NZ(N), sizeof(double));
    if (!st->P || !st->C || !st->Tn) {
        moe_scope_stats_free(st);
        return moe_fail(MOE_ERR_NOMEM, op, "out of memory for the loss statistics of %lld scopes of %lld experts (%zu bytes)",
                        (long long)N, (long long)E, sizeof(double) * (2 * MOE_NZ(N * E) + MOE_NZ(N)));
    }
    moe_status status = moe_cpu_balance_stats(dt, st->P, st->C, st->Tn, s, rowsum, score, eps, valid,
                                              count_ids, sc->bounds, N, T, E, K, op);
    if (status != MOE_OK) moe_scope_stats_free(st);
    return status;
}

/* Sum BUF [n] over each group in turn (in place). */
moe_status moe_reduce_doubles(double *buf, int64_t n, int n_groups, moe_group *const *groups)
{
    for (int g = 0; g < n_groups; g++) {
        if (moe_group_size(groups[g]) <= 1) continue;
        moe_tensor *t;
        MOE_TRY(moe_tensor_from_data(&t, MOE_F64, MOE_CPU, 1, &n, buf));
        moe_status st = moe_all_reduce_(t, MOE_REDUCE_SUM, groups[g]);
        if (st == MOE_OK) memcpy(buf, moe_tensor_data(t), sizeof(double) * (size_t)n);
        moe_tensor_release(t);
        MOE_TRY(st);
    }
    return MOE_OK;
}

moe_status moe_scope_stats_reduce(moe_scope_stats *st, const char *op, int n_groups, moe_group *const *groups)
{
    bool any = false;
    for (int g = 0; g < n_groups; g++) any |= moe_group_size(groups[g]) > 1;
    if (!any) return MOE_OK;
    int64_t N = st->n, E = st->E, len = N * (E + 1);
    double *buf = malloc(sizeof(double) * MOE_NZ(len)); /* [N (E+1)] */
    if (!buf) return moe_fail_nomem(op, sizeof(double) * MOE_NZ(len), "the counts to reduce");
    for (int64_t n = 0; n < N; n++) {
        memcpy(buf + n * (E + 1), st->C + n * E, sizeof(double) * (size_t)E);
        buf[n * (E + 1) + E] = st->Tn[n];
    }
    moe_status s = moe_reduce_doubles(buf, len, n_groups, groups);
    if (s == MOE_OK)
        for (int64_t n = 0; n < N; n++) {
            memcpy(st->C + n * E, buf + n * (E + 1), sizeof(double) * (size_t)E);
            st->Tn[n] = buf[n * (E + 1) + E];
        }
    free(buf);
    return s;
}

/* ---- terms ------------------------------------------------------------------------- */

void moe_aux_term_plan_free(moe_aux_term_plan *tp)
{
    free(tp->A);
    free(tp->bounds);
    tp->A = NULL;
    tp->bounds = NULL;
}

moe_status moe_aux_term_build(moe_aux_term_plan *tp, const char *op, moe_aux_kind kind, double coeff,
                              const moe_scope_stats *stats, const moe_scopes *sc,
                              const moe_aux_params *prm)
{
    int64_t N = stats->n, E = stats->E;
    memset(tp, 0, sizeof *tp);
    tp->kind = kind;
    tp->coeff = coeff;
    tp->n = N;
    tp->A = calloc(MOE_NZ(N * E), sizeof(double));
    tp->bounds = malloc(sizeof(int64_t) * (size_t)(N + 1));
    if (!tp->A || !tp->bounds) {
        moe_aux_term_plan_free(tp);
        return moe_fail_nomem(op, sizeof(double) * MOE_NZ(N * E) + sizeof(int64_t) * (size_t)(N + 1),
                              "a loss term's coefficients");
    }
    memcpy(tp->bounds, sc->bounds, sizeof(int64_t) * (size_t)(N + 1));
    double kf = prm->k_in_f ? (double)prm->K : 1.0, dE = (double)E;
    const double *C = stats->C, *Tn = stats->Tn;
    double *A = tp->A;
    switch (kind) {
    case MOE_AUX_MICRO_BATCH:
    case MOE_AUX_MEGABLOCKS: {
        double T = Tn[0], L = kind == MOE_AUX_MEGABLOCKS ? (double)prm->num_layers : 1.0;
        if (T > 0)
            for (int64_t i = 0; i < E; i++) A[i] = dE / (kf * L * T * T) * C[i];
        break;
    }
    case MOE_AUX_SEQUENCE: {
        if (prm->convention == MOE_CONVENTION_MEGATRON) {
            /* Megatron: one length for every sequence, the average valid length
             * T̄ = Σ c/(K·N), and the mean over all N sequences */
            double tot = 0;
            for (int64_t j = 0; j < N * E; j++) tot += C[j];
            double Tbar = tot / ((double)prm->K * (double)N);
            if (Tbar > 0)
                for (int64_t j = 0; j < N * E; j++) A[j] = dE / (kf * Tbar * Tbar) * C[j] / (double)N;
            break;
        }
        double neff = 0;
        for (int64_t n = 0; n < N; n++) neff += Tn[n] > 0;
        for (int64_t n = 0; n < N; n++)
            if (Tn[n] > 0)
                for (int64_t i = 0; i < E; i++)
                    A[n * E + i] = dE / (kf * Tn[n] * Tn[n]) * C[n * E + i] / neff;
        break;
    }
    case MOE_AUX_OLMO_LOCAL_BATCH: {
        double T = Tn[0], div = prm->loss_div_factor > 0 ? prm->loss_div_factor : T;
        if (T > 0 && div > 0)
            for (int64_t i = 0; i < E; i++) A[i] = dE / kf * C[i] / (T * div);
        break;
    }
    case MOE_AUX_OLMO_INSTANCE: {
        double tot = 0;
        for (int64_t n = 0; n < N; n++) tot += Tn[n];
        double div = prm->loss_div_factor > 0 ? prm->loss_div_factor : tot;
        for (int64_t n = 0; n < N; n++)
            if (Tn[n] > 0 && div > 0)
                for (int64_t i = 0; i < E; i++) A[n * E + i] = dE / kf * C[n * E + i] / (Tn[n] * div);
        break;
    }
    case MOE_AUX_GLOBAL_BATCH: {
        /* exact: f = c^acc/(K·T^acc); Megatron: f = (c^acc/M)/(K·T_cur), the
         * counts averaged over the M micro-batches seen, over this one's tokens */
        bool meg = prm->convention == MOE_CONVENTION_MEGATRON;
        double den = meg ? prm->acc_micro * prm->cur_tokens : prm->acc_tokens;
        if (den > 0 && prm->mb_tokens > 0)
            for (int64_t i = 0; i < E; i++) A[i] = dE / kf * prm->acc_counts[i] / den / prm->mb_tokens;
        break;
    }
    default:
        moe_aux_term_plan_free(tp);
        return moe_fail(MOE_ERR_ARG, op, "'%s' is not a balance loss", moe_aux_kind_name(kind));
    }
    double v = 0;
    for (int64_t j = 0; j < N * E; j++) v += A[j] * stats->P[j];
    tp->value = v;
    return MOE_OK;
}

void moe_z_plan_compute(moe_z_plan *zp, const double *lse, const uint8_t *valid, int64_t T, double div)
{
    double sum, n;
    moe_cpu_z_sum(&sum, &n, lse, valid, T);
    zp->on = true;
    zp->n_valid = div > 0 ? div : n; /* the divisor of Σ lse² */
    zp->value = zp->n_valid > 0 ? sum / zp->n_valid : 0.0;
}

/* ---- the loss node ------------------------------------------------------------------- */

typedef struct aux_ctx {
    int64_t T, E;
    moe_dtype dtype;
    moe_score_fn score;
    double eps, offset;
    uint8_t *valid;     /* [T] or NULL */
    int n_terms;
    moe_aux_term_plan *terms;
    moe_z_plan zterm;
    double *lse;        /* [T] when the z term is on */
} aux_ctx;

static void aux_ctx_free(void *p)
{
    aux_ctx *c = p;
    if (!c) return;
    for (int i = 0; i < c->n_terms; i++) moe_aux_term_plan_free(&c->terms[i]);
    free(c->terms);
    free(c->valid);
    free(c->lse);
    free(c);
}

/* The terms' scopes merged into segments on which every term's scope is
 * constant, with W[seg] = Σ_terms coeff·A_term[scope] (built once per backward). */
typedef struct aux_segs {
    int64_t n;
    int64_t *bounds; /* [n+1] */
    double *W;       /* [n E] */
    float *Wf;       /* [n E] f32 copy for f32 rows */
} aux_segs;

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void aux_segs_free(aux_segs *sg)
{
    free(sg->bounds);
    free(sg->W);
    free(sg->Wf);
}

static moe_status aux_segs_build(aux_segs *sg, const aux_ctx *c)
{
    const int64_t E = c->E;
    int64_t nb = 2;
    for (int i = 0; i < c->n_terms; i++) nb += c->terms[i].n + 1;
    sg->bounds = malloc(sizeof(int64_t) * (size_t)nb);
    if (!sg->bounds) return moe_fail_nomem("backward!", sizeof(int64_t) * (size_t)nb, "the aux-loss backward's segments");
    int64_t m = 0;
    sg->bounds[m++] = 0;
    sg->bounds[m++] = c->T;
    for (int i = 0; i < c->n_terms; i++)
        for (int64_t j = 0; j <= c->terms[i].n; j++) sg->bounds[m++] = c->terms[i].bounds[j];
    qsort(sg->bounds, (size_t)m, sizeof(int64_t), cmp_i64);
    int64_t u = 0;
    for (int64_t j = 0; j < m; j++)
        if (u == 0 || sg->bounds[j] != sg->bounds[u - 1]) sg->bounds[u++] = sg->bounds[j];
    sg->n = u - 1;
    sg->W = calloc((size_t)(sg->n * E), sizeof(double));
    sg->Wf = malloc(sizeof(float) * (size_t)(sg->n * E));
    if (!sg->W || !sg->Wf)
        return moe_fail_nomem("backward!", (sizeof(double) + sizeof(float)) * (size_t)(sg->n * E),
                              "the aux-loss backward's weights");
    for (int64_t q = 0; q < sg->n; q++) {
        int64_t t0 = sg->bounds[q];
        for (int i = 0; i < c->n_terms; i++) {
            const moe_aux_term_plan *tp = &c->terms[i];
            int64_t n = tp->n == 1 ? 0 : moe_cpu_scope_of(tp->bounds, tp->n, t0);
            for (int64_t j = 0; j < E; j++) sg->W[q * E + j] += tp->coeff * tp->A[n * E + j];
        }
        for (int64_t j = 0; j < E; j++) sg->Wf[q * E + j] = (float)sg->W[q * E + j];
    }
    return MOE_OK;
}

/* dz_t = g · (J_p(z_t)ᵀ Σ_terms coeff·A[scope(t)] + z-term). saved: s, z. */
static moe_status aux_backward(moe_node *node, moe_tensor *grad, moe_tensor **gin)
{
    if (!node->inputs[0]) return MOE_OK;
    aux_ctx *c = node->ctx;
    double g;
    MOE_TRY(moe_tensor_item(grad, &g));
    aux_segs sg = {0};
    moe_status st = aux_segs_build(&sg, c);
    moe_tensor *s = node->saved[0], *z = node->saved[1], *dz = NULL;
    if (st == MOE_OK)
        st = moe_tensor_empty(&dz, c->dtype, MOE_CPU, node->inputs[0]->ndim, node->inputs[0]->shape);
    if (st != MOE_OK) {
        aux_segs_free(&sg);
        return st;
    }
    moe_cpu_balance_grad p = {
        .T = c->T, .E = c->E, .dtype = c->dtype, .s = moe_tensor_data(s), .z = moe_tensor_data(z),
        .valid = c->valid, .score = c->score, .eps = c->eps, .offset = c->offset, .n_segs = sg.n,
        .seg_bounds = sg.bounds, .W = sg.W, .Wf = sg.Wf, .lse = c->zterm.on ? c->lse : NULL,
        .z_coeff = c->zterm.coeff, .z_count = c->zterm.n_valid, .g = g, .dz = moe_tensor_data(dz),
    };
    st = moe_cpu_balance_backward(&p, "backward!");
    aux_segs_free(&sg);
    if (st != MOE_OK) {
        moe_tensor_release(dz);
        return st;
    }
    gin[0] = dz;
    return MOE_OK;
}

moe_status moe_aux_node_make(moe_tensor **out, moe_aux_node_spec *spec)
{
    *out = NULL;
    moe_tensor *z = spec->z;
    int64_t E = z->shape[z->ndim - 1], T = moe_tensor_numel(z) / (E ? E : 1);
    double total = 0;
    for (int i = 0; i < spec->n_terms; i++) total += spec->terms[i].coeff * spec->terms[i].value;
    if (spec->zterm.on) total += spec->zterm.coeff * spec->zterm.value;
    moe_tensor *o;
    moe_status st = moe_tensor_scalar(&o, z->dtype, MOE_CPU, total);
    if (st != MOE_OK) goto fail;
    if (!moe_tensor_needs_grad(z)) goto plain;
    aux_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        st = moe_fail_nomem(spec->op, sizeof *c, "the aux-loss node");
        moe_tensor_release(o);
        goto fail;
    }
    c->T = T;
    c->E = E;
    c->dtype = z->dtype;
    c->score = spec->score;
    c->eps = spec->eps;
    c->offset = spec->offset;
    c->n_terms = spec->n_terms;
    c->terms = spec->terms; /* taken over */
    spec->terms = NULL;
    spec->n_terms = 0;
    c->zterm = spec->zterm;
    if (spec->valid) {
        c->valid = malloc((size_t)T);
        if (c->valid) memcpy(c->valid, spec->valid, (size_t)T);
    }
    if (spec->zterm.on) {
        c->lse = malloc(sizeof(double) * MOE_NZ(T));
        if (c->lse) memcpy(c->lse, spec->lse, sizeof(double) * (size_t)T);
    }
    if ((spec->valid && !c->valid) || (spec->zterm.on && !c->lse)) {
        aux_ctx_free(c);
        moe_tensor_release(o);
        return moe_fail_nomem(spec->op, (size_t)T + (spec->zterm.on ? sizeof(double) * MOE_NZ(T) : 0),
                              "the aux-loss node's mask and logsumexp");
    }
    moe_tensor *saved[2] = {spec->s, z};
    st = moe_autograd_record(o, "aux-loss", aux_backward, 1, &z, 2, saved, c, aux_ctx_free);
    if (st != MOE_OK) {
        moe_tensor_release(o);
        return st;
    }
    *out = o;
    return MOE_OK;
plain:
    *out = o;
fail:
    for (int i = 0; i < spec->n_terms; i++) moe_aux_term_plan_free(&spec->terms[i]);
    free(spec->terms);
    spec->terms = NULL;
    spec->n_terms = 0;
    return st;
}

/* ---- standalone losses -------------------------------------------------------------- */

/* Inputs of a standalone loss, checked and converted. */
typedef struct loss_in {
    moe_tensor *z;        /* contiguous f32/f64, in the graph of the caller's logits */
    int64_t B, S, T, E;
    uint8_t *valid;       /* [T] or NULL */
    moe_tensor *s;        /* [T E] base scores */
    double *rowsum, *lse; /* [T] */
    int64_t *count_ids;   /* [T K] */
} loss_in;

static void loss_in_free(loss_in *in)
{
    moe_tensor_release(in->z);
    moe_tensor_release(in->s);
    free(in->valid);
    free(in->rowsum);
    free(in->lse);
    free(in->count_ids);
    memset(in, 0, sizeof *in);
}

/* Validity mask of T tokens from a [T] or [B S] tensor (nonzero = valid). */
static moe_status read_valid(uint8_t **out, const char *op, moe_tensor *valid, int64_t B, int64_t S,
                             bool allow_bs)
{
    *out = NULL;
    if (!valid) return MOE_OK;
    int64_t T = B * S;
    bool ok = (valid->ndim == 1 && valid->shape[0] == T) ||
              (allow_bs && valid->ndim == 2 && valid->shape[0] == B && valid->shape[1] == S);
    if (!ok)
        return moe_fail(MOE_ERR_SHAPE, op, "valid mask must be %s%s, got %s", moe_dims_str(1, &T),
                        allow_bs ? " or [B S]" : "", moe_shape_str(valid));
    uint8_t *m = malloc(MOE_NZ(T));
    if (!m) return moe_fail(MOE_ERR_NOMEM, op, "out of memory for a valid mask of %lld bytes", (long long)T);
    moe_status st = moe_tensor_to_host(valid, MOE_BOOL, m); /* nonzero = valid */
    if (st != MOE_OK) {
        free(m);
        return st;
    }
    *out = m;
    return MOE_OK;
}

static moe_status check_finite(const char *op, moe_tensor *z, int64_t E)
{
    int64_t nans, infs, first;
    moe_count_nonfinite_rows(moe_tensor_data(z), z->dtype, moe_tensor_numel(z), &nans, &infs, &first);
    if (nans || infs)
        return moe_fail(MOE_ERR_VALUE, op,
                        "logits hold %lld NaN and %lld Inf values (first at token %lld, expert %lld)",
                        (long long)nans, (long long)infs, (long long)(first / E), (long long)(first % E));
    return MOE_OK;
}

/* Check LOGITS and options, compute the base scores and the counting ids. */
static moe_status loss_prepare(loss_in *in, const char *op, moe_tensor *logits,
                               const moe_aux_options *o, bool sequence, bool need_lse)
{
    memset(in, 0, sizeof *in);
    MOE_CHECK_NOT_NULL(op, logits);
    MOE_CHECK_CPU(op, logits);
    MOE_CHECK_FLOAT(op, logits);
    if (logits->ndim != 2 && logits->ndim != 3)
        return moe_fail(MOE_ERR_SHAPE, op, "logits must be [T E] or [B S E], got %s", moe_shape_str(logits));
    int64_t E = logits->shape[logits->ndim - 1];
    in->B = logits->ndim == 3 ? logits->shape[0] : 1;
    in->S = logits->ndim == 3 ? logits->shape[1] : logits->shape[0];
    in->T = in->B * in->S;
    in->E = E;
    int64_t K = o->top_k, T = in->T;
    if (E < 1) return moe_fail(MOE_ERR_SHAPE, op, "logits %s have no experts", moe_shape_str(logits));
    if (K < 1 || K > E)
        return moe_fail(MOE_ERR_ARG, op, "top-k must be in [1, %lld] (experts), got %lld", (long long)E,
                        (long long)K);
    if (sequence && logits->ndim == 2 && !o->doc_bounds)
        return moe_fail(MOE_ERR_SHAPE, op,
                        "a sequence loss needs [B S E] logits (or document bounds); got a 2-D "
                        "input %s",
                        moe_shape_str(logits));
    if (o->routing_ids) {
        moe_tensor *r = o->routing_ids;
        if (r->ndim != 2 || r->shape[0] != T || r->shape[1] != K || (r->dtype != MOE_I64 && r->dtype != MOE_I32))
            return moe_fail(MOE_ERR_SHAPE, op, "routing ids must be i64 [%lld %lld], got %s %s",
                            (long long)T, (long long)K, moe_dtype_name(r->dtype), moe_shape_str(r));
    }
    /* a contiguous f32/f64 tensor, differentiably linked to the caller's logits */
    moe_tensor *z = moe_tensor_retain(logits);
    moe_status st = MOE_OK;
    if (z->dtype == MOE_BF16) {
        moe_tensor *c;
        st = moe_to_dtype(&c, z, MOE_F32);
        moe_tensor_release(z);
        z = st == MOE_OK ? c : NULL;
    }
    if (st == MOE_OK && !moe_tensor_is_contiguous(z)) {
        moe_tensor *c;
        st = moe_contiguous(&c, z);
        moe_tensor_release(z);
        z = st == MOE_OK ? c : NULL;
    }
    in->z = z;
    if (st == MOE_OK) st = check_finite(op, z, E);
    if (st == MOE_OK) st = read_valid(&in->valid, op, o->valid, in->B, in->S, logits->ndim == 3);
    if (st == MOE_OK) st = moe_tensor_empty(&in->s, z->dtype, MOE_CPU, 2, (int64_t[]){T, E});
    if (st != MOE_OK) {
        loss_in_free(in);
        return st;
    }
    in->rowsum = malloc(sizeof(double) * MOE_NZ(T));
    in->lse = malloc(sizeof(double) * MOE_NZ(T));
    in->count_ids = malloc(sizeof(int64_t) * MOE_NZ(T * K));
    if (!in->rowsum || !in->lse || !in->count_ids) {
        loss_in_free(in);
        return moe_fail_nomem(op, (2 * sizeof(double) + K * sizeof(int64_t)) * MOE_NZ(T), "the loss scores' row sums, logsumexps and counted ids");
    }
    if (o->routing_ids) { /* i64 or i32 (checked above): exact in i64 */
        st = moe_tensor_to_host(o->routing_ids, MOE_I64, in->count_ids);
        int64_t bad = st == MOE_OK ? moe_cpu_index_find_bad(in->count_ids, T * K, E) : -1;
        if (bad >= 0)
            st = moe_fail(MOE_ERR_INDEX, op, "routing id %lld at slot %lld is outside [0, %lld)",
                          (long long)in->count_ids[bad], (long long)bad, (long long)E);
        if (st != MOE_OK) {
            loss_in_free(in);
            return st;
        }
    }
    moe_route_plan p = {
        .T = T, .E = E, .K = K, .dtype = z->dtype, .z = moe_tensor_data(z), .valid = in->valid,
        .score = o->score, .score_offset = o->score_offset, .loss_eps = o->sigmoid_eps,
        .select = false, .count_topk = true, .s = moe_tensor_data(in->s), .rowsum = in->rowsum,
        .lse = need_lse ? in->lse : NULL, .count_ids = o->routing_ids ? NULL : in->count_ids,
    };
    if (!moe_route_rows(&p)) {
        loss_in_free(in);
        return moe_fail(MOE_ERR_NOMEM, op, "out of memory for the per-thread routing scratch of %lld experts (%zu bytes a thread)",
                        (long long)p.E, moe_route_scratch_bytes(p.E, p.groups));
    }
    return MOE_OK;
}

/* The ranks of the tracker's groups must count the same experts: compare
 * the counts first, so that a mismatch names experts, not buffer sizes. */
/* One balance term of a prepared input, with its scopes and reductions. */
static moe_status balance_term(moe_aux_term_plan *tp, const char *op, moe_aux_kind kind, loss_in *in,
                               const moe_aux_options *o, double **gb_red, moe_balance_tracker **gb_tr)
{
    moe_scopes sc = {0};
    moe_scope_stats stats = {0};
    moe_status st;
    if (moe_aux_kind_is_sequence(kind)) st = moe_scopes_sequences(&sc, op, in->B, in->S, o->doc_bounds);
    else st = moe_scopes_single(&sc, op, in->T);
    if (st == MOE_OK)
        st = moe_scope_stats_compute(&stats, op, &sc, moe_tensor_data(in->s), in->s->dtype, in->rowsum,
                                     o->score, o->sigmoid_eps, in->valid, in->count_ids, in->T, in->E,
                                     o->top_k);
    moe_aux_params prm = {.K = o->top_k, .k_in_f = o->k_in_f, .loss_div_factor = o->loss_div_factor,
                          .num_layers = o->num_layers, .convention = o->convention};
    double *red = NULL, *acc = NULL;
    if (st == MOE_OK && kind != MOE_AUX_OLMO_LOCAL_BATCH && kind != MOE_AUX_GLOBAL_BATCH) {
        moe_group *g = o->group;
        st = moe_scope_stats_reduce(&stats, op, 1, &g);
    }
    if (st == MOE_OK && kind == MOE_AUX_GLOBAL_BATCH) {
        moe_balance_tracker *tr = o->tracker;
        if (!tr) st = moe_fail(MOE_ERR_ARG, op, "the global-batch loss needs a balance tracker");
        else if (moe_balance_tracker_experts(tr) != in->E)
            st = moe_fail(MOE_ERR_SHAPE, op, "tracker counts %lld experts, logits have %lld",
                          (long long)moe_balance_tracker_experts(tr), (long long)in->E);
        if (st == MOE_OK) {
            red = malloc(sizeof(double) * (size_t)(in->E + 1));
            acc = malloc(sizeof(double) * (size_t)(in->E + 1));
            if (!red || !acc) st = moe_fail_nomem(op, 2 * sizeof(double) * (size_t)(in->E + 1), "the global-batch counts");
        }
        if (st == MOE_OK) st = moe_tracker_check_experts(tr, op);
        if (st == MOE_OK) st = moe_tracker_reduce(tr, stats.C, stats.Tn[0], red);
        if (st == MOE_OK) st = moe_tracker_view(tr, op, red, acc);
        /* P̄ divides by the micro-batch's tokens per data-parallel replica: its
         * tokens over all the tracker's ranks / |dp|, |dp| = those ranks / |group|.
         * With as many valid tokens on every replica that is the tp×cp sum; with
         * uneven padding it keeps the data-parallel gradient average equal to
         * the formula on the concatenated batch. */
        double mb = stats.Tn[0];
        if (st == MOE_OK) {
            moe_group *g = o->group;
            st = moe_reduce_doubles(&mb, 1, 1, &g);
        }
        int64_t ranks = tr ? moe_tracker_ranks(tr) : 1, gs = moe_group_size(o->group);
        if (st == MOE_OK && ranks >= gs && ranks % gs == 0) mb = red[in->E] * (double)gs / (double)ranks;
        prm.acc_counts = acc;
        prm.acc_tokens = acc ? acc[in->E] : 0;
        prm.mb_tokens = mb;
        prm.acc_micro = tr ? moe_tracker_view_micro(tr) : 1;
        prm.cur_tokens = red ? red[in->E] : 0;
        *gb_tr = tr;
    }
    if (st == MOE_OK) st = moe_aux_term_build(tp, op, kind, 1.0, &stats, &sc, &prm);
    free(acc);
    if (st == MOE_OK) *gb_red = red;
    else free(red);
    moe_scope_stats_free(&stats);
    moe_scopes_free(&sc);
    return st;
}

moe_status moe_load_balancing_loss(moe_tensor **out, moe_aux_kind kind, moe_tensor *logits,
                                   const moe_aux_options *options)
{
    const char *op = "load-balancing-loss";
    *out = NULL;
    MOE_CHECK_NOT_NULL(op, options);
    if ((unsigned)kind >= MOE_AUX_KIND_COUNT)
        return moe_fail(MOE_ERR_ARG, op, "unknown loss kind %d", (int)kind);
    if ((unsigned)options->convention >= MOE_CONVENTION_COUNT)
        return moe_fail(MOE_ERR_ARG, op, "unknown convention %d", (int)options->convention);
    if (kind == MOE_AUX_Z) return moe_z_loss(out, logits, options->valid);
    if (options->num_layers < 1)
        return moe_fail(MOE_ERR_ARG, op, "num_layers must be >= 1, got %lld", (long long)options->num_layers);
    if (!(options->sigmoid_eps >= 0) || !(options->loss_div_factor >= 0))
        return moe_fail(MOE_ERR_ARG, op, "sigmoid_eps and loss_div_factor must be >= 0");
    loss_in in;
    MOE_TRY(loss_prepare(&in, op, logits, options, moe_aux_kind_is_sequence(kind), false));
    moe_aux_term_plan *tp = calloc(1, sizeof *tp);
    double *red = NULL;
    moe_balance_tracker *tr = NULL;
    moe_status st = tp ? balance_term(tp, op, kind, &in, options, &red, &tr)
                       : moe_fail_nomem(op, sizeof *tp, "a loss term");
    if (st != MOE_OK) {
        free(tp);
        loss_in_free(&in);
        return st;
    }
    moe_aux_node_spec spec = {.op = op, .z = in.z, .s = in.s, .valid = in.valid, .score = options->score,
                              .eps = options->sigmoid_eps, .offset = options->score_offset,
                              .n_terms = 1, .terms = tp};
    st = moe_aux_node_make(out, &spec);
    if (st == MOE_OK && tr) st = moe_tracker_commit(tr, op, red);
    if (st != MOE_OK) {
        moe_tensor_release(*out);
        *out = NULL;
    }
    free(red);
    loss_in_free(&in);
    return st;
}

moe_status moe_z_loss(moe_tensor **out, moe_tensor *logits, moe_tensor *valid)
{
    return moe_z_loss_div(out, logits, valid, 0);
}

moe_status moe_z_loss_div(moe_tensor **out, moe_tensor *logits, moe_tensor *valid, double div)
{
    *out = NULL;
    if (!(div >= 0) || isinf(div))
        return moe_fail(MOE_ERR_ARG, "z-loss", "the divisor must be finite and > 0 (or 0 for the mean), got %g", div);
    moe_aux_options o;
    moe_aux_options_default(&o);
    o.valid = valid;
    loss_in in;
    MOE_TRY(loss_prepare(&in, "z-loss", logits, &o, false, true));
    moe_aux_node_spec spec = {.op = "z-loss", .z = in.z, .s = in.s, .valid = in.valid, .lse = in.lse,
                              .score = MOE_SCORE_SOFTMAX};
    moe_z_plan_compute(&spec.zterm, in.lse, in.valid, in.T, div);
    spec.zterm.coeff = 1.0;
    moe_status st = moe_aux_node_make(out, &spec);
    loss_in_free(&in);
    return st;
}

moe_status moe_megablocks_batched_loss(moe_tensor **out, int n, moe_tensor *const *logits,
                                       moe_tensor *const *routing_ids, const moe_aux_options *options)
{
    const char *op = "megablocks-batched-loss";
    *out = NULL;
    if (n < 1) return moe_fail(MOE_ERR_ARG, op, "needs at least one layer, got %d", n);
    MOE_CHECK_NOT_NULL(op, options);
    moe_tensor *total = NULL;
    for (int l = 0; l < n; l++) {
        MOE_CHECK_NOT_NULL(op, logits[l]);
        if (moe_tensor_numel(logits[l]) != moe_tensor_numel(logits[0]) ||
            logits[l]->ndim != logits[0]->ndim)
            return moe_fail(MOE_ERR_SHAPE, op, "layer %d logits %s differ from layer 0's %s", l,
                            moe_shape_str(logits[l]), moe_shape_str(logits[0]));
    }
    moe_status st = MOE_OK;
    for (int l = 0; l < n && st == MOE_OK; l++) {
        moe_aux_options o = *options;
        o.routing_ids = routing_ids ? routing_ids[l] : NULL;
        moe_tensor *li = NULL, *sum = NULL;
        st = moe_load_balancing_loss(&li, MOE_AUX_MEGABLOCKS, logits[l], &o);
        if (st == MOE_OK && total) {
            st = moe_add(&sum, total, li);
            moe_tensor_release(total);
            moe_tensor_release(li);
            total = sum;
        } else if (st == MOE_OK) {
            total = li;
        }
    }
    if (st != MOE_OK) {
        moe_tensor_release(total);
        return st;
    }
    *out = total;
    return MOE_OK;
}
