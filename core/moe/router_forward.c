/* router_forward.c — the router's forward, moe_router_forward: the gate
 * (x → logits z), the routing pass, capacity, the routing weights and their
 * autograd nodes, the aux losses and their delivery, the routing result and
 * the commit of the router's state. Each forward and its backward side by
 * side; the phases are listed in moe_router_forward_ids.
 *
 * Dimension letters: T tokens (b-major), D hidden, E experts, K top-k.
 *
 * Graph of one forward (inject mode):
 *
 *   x ─reshape/to-dtype─(×jitter)─ linear(W) ─→ z [T E]
 *   z ─"router-weights"─→ w_raw [T K] ─"router-aux-inject"(w_raw, aux)─→ weights [T K]
 *   z ─"aux-loss"(all terms, α-weighted)─→ aux (0-d)        ↑ backward: g, and scale to aux
 *   weights ─"router-densify"─→ probs [T E]
 *
 * The inject node is the identity on the weights; its backward hands `scale`
 * to the aux node, whose backward adds scale·Σ α_v ∂L_v/∂z. Whichever of
 * weights and probs the layer consumes, the gradient passes the inject node.
 * Add mode drops the inject node and returns each loss as its own node. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cpu/capacity.h"
#include "../../kernels/cpu/quantile.h"
#include "../../kernels/cpu/random.h"
#include "../../kernels/cpu/sinkhorn.h"
#include "moe_internal.h"

#define OP "router-forward"

/* Counter streams: jitter draws T·D values, debug imbalance T·E (router.c
 * seeds the weight with a third mix). */
#define JITTER_SEED_MIX 0x6a09e667f3bcc908ULL
#define DEBUG_SEED_MIX 0xbb67ae8584caa73bULL

/* ---- autograd nodes ---------------------------------------------------------------------- */

/* iargs: [0] wmode [1] wnorm [2] score; dargs: [0] scale [1] norm eps [2] norm p [3] offset.
 * saved: s [T E], ids [T K] i64, wu [T K] f64, kept [T K] bool. */
static moe_status weights_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    if (!n->inputs[0]) return MOE_OK;
    moe_tensor *s = n->saved[0], *ids = n->saved[1], *wu = n->saved[2], *kept = n->saved[3];
    moe_tensor *gc = NULL, *dz = NULL;
    MOE_TRY(moe_as_compute(&gc, g, s->dtype));
    moe_status st = moe_tensor_empty(&dz, s->dtype, MOE_CPU, 2, s->shape);
    if (st == MOE_OK) {
        moe_route_grad p = {
            .T = s->shape[0], .E = s->shape[1], .K = ids->shape[1], .dtype = s->dtype,
            .s = moe_tensor_data(s), .ids = moe_tensor_data(ids), .wu = moe_tensor_data(wu),
            .kept = moe_tensor_data(kept), .g = moe_tensor_data(gc),
            .wmode = (moe_wmode)n->iargs[0], .wnorm = (moe_wnorm)n->iargs[1],
            .score = (moe_score_fn)n->iargs[2], .scale = n->dargs[0], .norm_eps = n->dargs[1],
            .norm_p = n->dargs[2], .score_offset = n->dargs[3], .dz = moe_tensor_data(dz),
        };
        if (!moe_route_rows_backward(&p)) {
            moe_tensor_release(dz);
            moe_tensor_release(gc);
            return moe_fail(MOE_ERR_NOMEM, "backward!", "out of memory for a row buffer of the router-weights backward (%lld bytes)",
                            (long long)(sizeof(double) * (size_t)(2 * p.K + 1)));
        }
        gin[0] = dz;
    }
    moe_tensor_release(gc);
    return st;
}

/* Identity on the weights; hands dargs[0] (the inject scale) to the aux loss. */
static moe_status inject_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    if (n->inputs[0]) gin[0] = moe_tensor_retain(g);
    if (n->inputs[1]) MOE_TRY(moe_tensor_scalar(&gin[1], n->inputs[1]->dtype, MOE_CPU, n->dargs[0]));
    return MOE_OK;
}

/* probs [T E] from the weights [T K]; backward gathers. saved: ids, kept. iargs[0] = E. */
static moe_status densify_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    if (!n->inputs[0]) return MOE_OK;
    moe_tensor *ids = n->saved[0], *kept = n->saved[1], *gc = NULL, *dw = NULL;
    moe_dtype dt = n->inputs[0]->dtype;
    MOE_TRY(moe_as_compute(&gc, g, dt));
    moe_status st = moe_tensor_empty(&dw, dt, MOE_CPU, 2, ids->shape);
    if (st == MOE_OK) {
        moe_route_densify_backward(dt, moe_tensor_data(dw), moe_tensor_data(gc), moe_tensor_data(ids),
                                   moe_tensor_data(kept), ids->shape[0], ids->shape[1], n->iargs[0]);
        gin[0] = dw;
    }
    moe_tensor_release(gc);
    return st;
}

/* ---- forward helpers ------------------------------------------------------------------- */

/* One forward's working state: what the phases decide, and everything it
 * allocates (released together by fwd_free). */
typedef struct fwd {
    int64_t B, S, T, E, K, D, Tv;
    bool seq_loss, z_loss, balance; /* the configured losses include a sequence, z, balance loss */
    bool recomp;                /* replaying a recorded forward (activation recomputation) */
    bool qb, qb_train;          /* quantile balancing; and this forward updates its sums */
    bool replaying;             /* routing with the next ids of router-replay! */
    uint64_t offset;            /* counter of the noise streams */
    moe_tensor *given_ids;      /* [T K] ids to route with, not owned, or NULL */
    uint8_t *valid;             /* [T] or NULL */
    moe_tensor *x2, *xc, *noise, *xj, *z;
    moe_tensor *s;              /* [T E] base scores */
    moe_tensor *ids_t, *wu_t, *kept_t; /* [T K] */
    moe_tensor *wid_t;          /* [T K] ids the weights came from (kept-weights debug) or NULL */
    int64_t *given;             /* [T K] replayed ids or NULL */
    double *qb_off, *qb_q;      /* [E] −β (selection offset), this micro-batch's quantiles */
    double *rowsum, *lse, *entropy, *mass, *log_d1; /* [T] [T] [T] [T] [E] */
    int64_t *count_ids;         /* [T K] */
    uint8_t *pad_map;           /* [T E] */
    moe_route_plan plan;        /* the routing pass's settings and buffers */
    int64_t *ids;               /* [T K] data of ids_t */
    double *wu;                 /* [T K] data of wu_t */
    uint8_t *kept;              /* [T K] data of kept_t */
    int64_t C, dropped;         /* capacity per expert (-1: none), slots it dropped */
    moe_tensor *w_raw;          /* [T K] weights with the router-weights node */
    moe_tensor *w_final;        /* [T K] the weights handed out (w_raw behind the inject node) */
    moe_scopes single, seqs;
    moe_scope_stats st_single, st_local, st_seqs;
    double *gb_red, *gb_acc;    /* [E+1] */
    double gb_micro;            /* micro-batches in gb_acc */
    double values[MOE_ROUTER_MAX_LOSSES]; /* each loss, unit coefficient */
    double *counts;             /* [E] this forward's expert counts */
    moe_score_fn score;         /* of s (sinkhorn picks its own) */
} fwd;

static void fwd_free(fwd *f)
{
    moe_tensor *ts[] = {f->x2,    f->xc,   f->noise,  f->xj,    f->z,     f->s,
                        f->ids_t, f->wu_t, f->kept_t, f->wid_t, f->w_raw, f->w_final};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) moe_tensor_release(ts[i]);
    free(f->valid), free(f->rowsum), free(f->lse), free(f->entropy), free(f->mass), free(f->log_d1);
    free(f->count_ids), free(f->pad_map), free(f->gb_red), free(f->gb_acc);
    free(f->given), free(f->qb_off), free(f->qb_q), free(f->counts);
    moe_scopes_free(&f->single);
    moe_scopes_free(&f->seqs);
    moe_scope_stats_free(&f->st_single);
    moe_scope_stats_free(&f->st_local);
    moe_scope_stats_free(&f->st_seqs);
}

/* The padding mask VALID ([T], or [B S] for a 3-D x) as T bytes, nonzero = a real token. */
static moe_status read_mask(fwd *f, moe_tensor *valid, bool allow_bs)
{
    if (!valid) return MOE_OK;
    MOE_CHECK_CPU(OP, valid);
    bool ok = (valid->ndim == 1 && valid->shape[0] == f->T) ||
              (allow_bs && valid->ndim == 2 && valid->shape[0] == f->B && valid->shape[1] == f->S);
    if (!ok)
        return moe_fail(MOE_ERR_SHAPE, OP, "valid mask must be [%lld]%s for x of %lld tokens, got %s",
                        (long long)f->T, allow_bs ? " or [B S]" : "", (long long)f->T, moe_shape_str(valid));
    f->valid = malloc((size_t)f->T);
    if (!f->valid) return moe_fail(MOE_ERR_NOMEM, OP, "out of memory for a valid mask of %lld bytes", (long long)f->T);
    return moe_tensor_to_host(valid, MOE_BOOL, f->valid); /* nonzero = valid */
}

/* x [T D] (or [B S D]) → z [T E] in the router dtype, with jitter. */
static moe_status gate(fwd *f, moe_router *r, moe_tensor *x, uint64_t offset)
{
    MOE_TRY(moe_reshape(&f->x2, x, 2, (int64_t[]){f->T, f->D}));
    if (f->x2->dtype != r->cfg.dtype) MOE_TRY(moe_to_dtype(&f->xc, f->x2, r->cfg.dtype));
    else f->xc = moe_tensor_retain(f->x2);
    moe_tensor *xin = f->xc;
    if (r->cfg.training && r->cfg.jitter > 0) {
        MOE_TRY(moe_tensor_empty(&f->noise, r->cfg.dtype, MOE_CPU, 2, (int64_t[]){f->T, f->D}));
        double eps = r->cfg.jitter; /* U[1 − ε, 1 + ε) */
        moe_cpu_uniform(r->cfg.dtype, moe_tensor_data(f->noise), f->T * f->D, r->cfg.seed ^ JITTER_SEED_MIX,
                        offset, 1.0 - eps, 2.0 * eps);
        MOE_TRY(moe_mul(&f->xj, f->xc, f->noise));
        xin = f->xj;
    }
    MOE_TRY(moe_linear(&f->z, xin, r->weight, NULL));
    if (!moe_tensor_is_contiguous(f->z)) {
        moe_tensor *c;
        MOE_TRY(moe_contiguous(&c, f->z));
        moe_tensor_release(f->z);
        f->z = c;
    }
    return MOE_OK;
}

/* The error for logits holding NaN/Inf (the routing pass flags such rows). */
static moe_status nonfinite_error(fwd *f)
{
    int64_t nans, infs, first;
    moe_count_nonfinite_rows(moe_tensor_data(f->z), f->z->dtype, f->T * f->E, &nans, &infs, &first);
    return moe_fail(MOE_ERR_VALUE, OP,
                    "gate logits hold %lld NaN and %lld Inf values (first at token %lld, expert "
                    "%lld); check the input and the router weight",
                    (long long)nans, (long long)infs, (long long)(first / f->E), (long long)(first % f->E));
}

static int tp_cp_size(const moe_router *r) { return moe_group_size(r->tp) * moe_group_size(r->cp); }

/* The loss terms of the router's losses (all of them, or just kind ONLY). */
static moe_status build_terms(moe_aux_term_plan **out, int *n_out, moe_z_plan *zp, fwd *f,
                              moe_router *r, int only, bool unit_coeff)
{
    const moe_router_config *c = &r->cfg;
    *out = NULL;
    *n_out = 0;
    memset(zp, 0, sizeof *zp);
    moe_aux_term_plan *terms = calloc((size_t)c->n_losses + 1, sizeof *terms);
    if (!terms) return moe_fail_nomem(OP, sizeof *terms * ((size_t)c->n_losses + 1), "the loss terms");
    int n = 0;
    moe_status st = MOE_OK;
    for (int i = 0; i < c->n_losses && st == MOE_OK; i++) {
        if (only >= 0 && i != only) continue;
        moe_aux_kind k = c->losses[i].kind;
        double coeff = unit_coeff ? 1.0 : c->losses[i].coeff;
        if (k == MOE_AUX_Z) {
            moe_z_plan_compute(zp, f->lse, f->valid, f->T, c->z_loss_div ? c->loss_div_factor : 0);
            zp->coeff = unit_coeff ? 1.0 : coeff / tp_cp_size(r);
            continue;
        }
        moe_aux_params prm = {.K = f->K, .k_in_f = c->k_in_f, .loss_div_factor = c->loss_div_factor,
                              .num_layers = c->num_moe_layers, .convention = c->convention};
        const moe_scope_stats *stats = &f->st_single;
        const moe_scopes *sc = &f->single;
        if (moe_aux_kind_is_sequence(k)) {
            stats = &f->st_seqs;
            sc = &f->seqs;
        } else if (k == MOE_AUX_OLMO_LOCAL_BATCH) {
            stats = &f->st_local;
        } else if (k == MOE_AUX_GLOBAL_BATCH) {
            prm.acc_counts = f->gb_acc;
            prm.acc_tokens = f->gb_acc[f->E];
            /* tokens per dp replica (see aux_loss.c: exact under uneven padding) */
            prm.mb_tokens = f->gb_red[f->E] / moe_group_size(r->dp);
            prm.acc_micro = f->gb_micro;
            prm.cur_tokens = f->gb_red[f->E];
        }
        st = moe_aux_term_build(&terms[n], OP, k, coeff, stats, sc, &prm);
        if (st == MOE_OK) n++;
    }
    if (st != MOE_OK) {
        for (int i = 0; i < n; i++) moe_aux_term_plan_free(&terms[i]);
        free(terms);
        return st;
    }
    *out = terms;
    *n_out = n;
    return MOE_OK;
}

/* Scopes and statistics for the losses, with their group reductions. */
static moe_status loss_stats(fwd *f, moe_router *r, moe_tensor *doc_bounds)
{
    const moe_router_config *c = &r->cfg;
    bool any_batch = false, any_seq = false, local = false, global = false;
    for (int i = 0; i < c->n_losses; i++) {
        moe_aux_kind k = c->losses[i].kind;
        if (k == MOE_AUX_Z) continue;
        if (moe_aux_kind_is_sequence(k)) any_seq = true;
        else any_batch = true;
        local |= k == MOE_AUX_OLMO_LOCAL_BATCH;
        global |= k == MOE_AUX_GLOBAL_BATCH;
    }
    moe_group *groups[2] = {r->cp, r->tp};
    const void *s = moe_tensor_data(f->s);
    if (any_seq) {
        MOE_TRY(moe_scopes_sequences(&f->seqs, OP, f->B, f->S, doc_bounds));
        MOE_TRY(moe_scope_stats_compute(&f->st_seqs, OP, &f->seqs, s, f->s->dtype, f->rowsum, f->score,
                                        c->loss_eps, f->valid, f->count_ids, f->T, f->E, f->K));
    }
    if (any_batch) {
        MOE_TRY(moe_scopes_single(&f->single, OP, f->T));
        if (any_seq) { /* the sequences tile the micro-batch: sum their statistics */
            moe_scope_stats *S = &f->st_single, *Q = &f->st_seqs;
            S->n = 1;
            S->E = f->E;
            S->P = calloc((size_t)f->E, sizeof(double));
            S->C = calloc((size_t)f->E, sizeof(double));
            S->Tn = calloc(1, sizeof(double));
            if (!S->P || !S->C || !S->Tn)
                return moe_fail_nomem(OP, sizeof(double) * (size_t)(2 * f->E + 1), "the micro-batch's loss statistics");
            for (int64_t n = 0; n < Q->n; n++) {
                for (int64_t i = 0; i < f->E; i++) {
                    S->P[i] += Q->P[n * f->E + i];
                    S->C[i] += Q->C[n * f->E + i];
                }
                S->Tn[0] += Q->Tn[n];
            }
        } else {
            MOE_TRY(moe_scope_stats_compute(&f->st_single, OP, &f->single, s, f->s->dtype, f->rowsum, f->score,
                                            c->loss_eps, f->valid, f->count_ids, f->T, f->E, f->K));
        }
        if (local) { /* rank-local copy before the tp×cp reduction */
            moe_scope_stats *L = &f->st_local, *S = &f->st_single;
            L->n = 1;
            L->E = f->E;
            L->P = malloc(sizeof(double) * (size_t)f->E);
            L->C = malloc(sizeof(double) * (size_t)f->E);
            L->Tn = malloc(sizeof(double));
            if (!L->P || !L->C || !L->Tn)
                return moe_fail_nomem(OP, sizeof(double) * (size_t)(2 * f->E + 1), "the rank-local loss statistics");
            memcpy(L->P, S->P, sizeof(double) * (size_t)f->E);
            memcpy(L->C, S->C, sizeof(double) * (size_t)f->E);
            L->Tn[0] = S->Tn[0];
        }
        if (global) {
            f->gb_red = malloc(sizeof(double) * (size_t)(f->E + 1));
            f->gb_acc = malloc(sizeof(double) * (size_t)(f->E + 1));
            if (!f->gb_red || !f->gb_acc)
                return moe_fail_nomem(OP, 2 * sizeof(double) * (size_t)(f->E + 1), "the global-batch counts");
            MOE_TRY(moe_tracker_reduce(r->tracker, f->st_single.C, f->st_single.Tn[0], f->gb_red));
            if (c->training) {
                MOE_TRY(moe_tracker_view(r->tracker, OP, f->gb_red, f->gb_acc));
                f->gb_micro = moe_tracker_view_micro(r->tracker);
            } else {
                memcpy(f->gb_acc, f->gb_red, sizeof(double) * (size_t)(f->E + 1));
                f->gb_micro = 1;
            }
        }
        MOE_TRY(moe_scope_stats_reduce(&f->st_single, OP, 2, groups));
    }
    if (any_seq) MOE_TRY(moe_scope_stats_reduce(&f->st_seqs, OP, 2, groups));
    return MOE_OK;
}

/* What a recomputation must replay: the noise offset and the given expert
 * ids (retained; NULL when the forward selected). */
static moe_status push_record(moe_router *r, uint64_t offset, moe_tensor *given)
{
    if (r->n_rec == r->cap_rec) {
        int64_t cap = r->cap_rec ? 2 * r->cap_rec : 8;
        uint64_t *g = realloc(r->rec_offsets, sizeof(uint64_t) * (size_t)cap);
        if (g) r->rec_offsets = g;
        moe_tensor **h = g ? realloc(r->rec_given, sizeof(moe_tensor *) * (size_t)cap) : NULL;
        if (!g || !h)
            return moe_fail_nomem(OP, (sizeof(uint64_t) + sizeof(moe_tensor *)) * (size_t)cap,
                                  "the record of forwards to recompute");
        r->rec_given = h;
        r->cap_rec = cap;
    }
    r->rec_given[r->n_rec] = moe_tensor_retain(given);
    r->rec_offsets[r->n_rec++] = offset;
    return MOE_OK;
}

struct moe_routing_priv {
    int64_t E;
    moe_dtype dtype;
    uint8_t *pad_map; /* [T E] filler entries or NULL */
};

void moe_routing_free(moe_routing *o)
{
    if (!o) return;
    if (o->priv) free(o->priv->pad_map);
    free(o->priv);
    moe_tensor *ts[] = {o->weights, o->experts, o->kept, o->probs, o->map, o->logits, o->counts, o->aux_total};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) moe_tensor_release(ts[i]);
    for (int i = 0; i < o->n_aux; i++) moe_tensor_release(o->aux[i]);
    free(o);
}

moe_tensor *moe_routing_aux(const moe_routing *o, moe_aux_kind kind)
{
    for (int i = 0; o && i < o->n_aux; i++)
        if (o->aux_kind[i] == kind) return o->aux[i];
    return NULL;
}

moe_status moe_routing_dense(moe_routing *o)
{
    MOE_CHECK_NOT_NULL("routing-probs", o);
    if (o->probs && o->map) return MOE_OK;
    if (!o->priv || !o->weights)
        return moe_fail(MOE_ERR_STATE, "routing-probs", "not a routing result of router-forward");
    int64_t T = o->weights->shape[0], K = o->weights->shape[1], E = o->priv->E;
    moe_dtype dt = o->priv->dtype;
    moe_tensor *probs = NULL, *map = NULL;
    moe_status st = moe_tensor_zeros(&probs, dt, MOE_CPU, 2, (int64_t[]){T, E});
    if (st == MOE_OK) st = moe_tensor_zeros(&map, MOE_BOOL, MOE_CPU, 2, (int64_t[]){T, E});
    if (st == MOE_OK) {
        moe_route_densify(dt, moe_tensor_data(probs), moe_tensor_data(map), moe_tensor_data(o->weights),
                          moe_tensor_data(o->experts), moe_tensor_data(o->kept), o->priv->pad_map, T, K, E);
        moe_tensor *saved[2] = {o->experts, o->kept};
        st = moe_autograd_record(probs, "router-densify", densify_backward, 1, &o->weights, 2, saved, NULL, NULL);
        if (st == MOE_OK && probs->grad_fn) probs->grad_fn->iargs[0] = E;
    }
    if (st != MOE_OK) {
        moe_tensor_release(probs);
        moe_tensor_release(map);
        return st;
    }
    o->probs = probs;
    o->map = map;
    return MOE_OK;
}

/* ---- forward -------------------------------------------------------------------------------- */

moe_status moe_router_forward(moe_routing **out, moe_router *r, moe_tensor *x, moe_tensor *valid,
                              moe_tensor *doc_bounds)
{
    return moe_router_forward_ids(out, r, x, valid, doc_bounds, NULL);
}

/* Quantile balancing: this micro-batch's quantiles from the logits gathered
 * over cp, then tp (the quantiles see whole sequences). */
static moe_status qb_quantiles(fwd *f, moe_router *r)
{
    moe_tensor *z = NULL, *g = NULL;
    bool prev = moe_grad_set_enabled(false);
    moe_status st = moe_detach(&z, f->z);
    moe_group *groups[2] = {r->cp, r->tp};
    for (int i = 0; i < 2 && st == MOE_OK; i++) {
        if (moe_group_size(groups[i]) <= 1) continue;
        st = moe_all_gather(&g, z, groups[i]);
        moe_tensor_release(z);
        z = g;
        g = NULL;
    }
    if (st == MOE_OK && !moe_tensor_is_contiguous(z)) {
        st = moe_contiguous(&g, z);
        moe_tensor_release(z);
        z = g;
    }
    moe_grad_set_enabled(prev);
    f->qb_q = malloc(sizeof(double) * (size_t)f->E);
    if (st == MOE_OK && !f->qb_q) st = moe_fail_nomem(OP, sizeof(double) * (size_t)f->E, "the quantiles");
    if (st == MOE_OK)
        st = moe_cpu_qb_quantiles(z->dtype, f->qb_q, moe_tensor_data(z), moe_tensor_data(r->qb_beta),
                                  z->shape[0], f->E, f->K);
    moe_tensor_release(z);
    return st;
}

/* Check the call before anything is allocated: x's shape, what the losses
 * and the routing mode ask of it, and a recorded forward to replay when
 * recomputing. Decides the noise offset and the ids to route with. */
static moe_status check_call(fwd *f, moe_router *r, moe_tensor *x, moe_tensor *valid, moe_tensor *doc_bounds)
{
    MOE_CHECK_NOT_NULL(OP, r);
    MOE_CHECK_NOT_NULL(OP, x);
    MOE_CHECK_CPU(OP, x);
    MOE_CHECK_FLOAT(OP, x);
    const moe_router_config *c = &r->cfg;
    f->E = c->experts;
    f->K = c->top_k;
    f->D = c->hidden;
    if ((x->ndim != 2 && x->ndim != 3) || x->shape[x->ndim - 1] != f->D)
        return moe_fail(MOE_ERR_SHAPE, OP, "x must be [T %lld] or [B S %lld], got %s", (long long)f->D,
                        (long long)f->D, moe_shape_str(x));
    f->B = x->ndim == 3 ? x->shape[0] : 1;
    f->S = x->ndim == 3 ? x->shape[1] : x->shape[0];
    f->T = f->B * f->S;
    if (f->T < 1) return moe_fail(MOE_ERR_SHAPE, OP, "x %s holds no tokens", moe_shape_str(x));
    for (int i = 0; i < c->n_losses; i++) {
        f->seq_loss |= moe_aux_kind_is_sequence(c->losses[i].kind);
        f->z_loss |= c->losses[i].kind == MOE_AUX_Z;
        f->balance |= c->losses[i].kind != MOE_AUX_Z;
    }
    if (f->seq_loss && x->ndim == 2 && !doc_bounds)
        return moe_fail(MOE_ERR_SHAPE, OP,
                        "a sequence loss needs x as [B S D] (or document bounds); got a 2-D input %s",
                        moe_shape_str(x));
    const int64_t T = f->T, E = f->E, K = f->K;
    f->recomp = r->recomputing && c->training;
    if (f->recomp && r->rec_cursor >= r->n_rec)
        return moe_fail(MOE_ERR_STATE, OP, "recomputing forward %lld but only %lld were recorded this step",
                        (long long)r->rec_cursor + 1, (long long)r->n_rec);
    f->offset = f->recomp ? r->rec_offsets[r->rec_cursor] : r->rng_next;
    f->qb = c->routing == MOE_ROUTING_QUANTILE_BALANCING;
    f->qb_train = f->qb && c->training && moe_grad_enabled() && !f->recomp;
    if (f->qb && valid)
        return moe_fail(MOE_ERR_ARG, OP,
                        "quantile-balancing routing takes no padding mask (#:valid); route the valid "
                        "tokens only");
    int64_t T_all = T * tp_cp_size(r); /* the tokens the quantiles see */
    if (f->qb_train && (T_all * K) % E != 0)
        return moe_fail(MOE_ERR_SHAPE, OP,
                        "quantile-balancing routing updates β from T·K/E tokens per expert: T·K = "
                        "%lld·%lld = %lld is not divisible by E = %lld (evaluation, or no-grad, routes "
                        "any T)",
                        (long long)T_all, (long long)K, (long long)(T_all * K), (long long)E);
    f->replaying = !f->given_ids && !f->recomp && r->replay_cursor < r->n_replay;
    if (f->replaying) f->given_ids = r->replay_ids[r->replay_cursor];
    if (!f->given_ids && f->recomp) f->given_ids = r->rec_given[r->rec_cursor]; /* route as the original did */
    return MOE_OK;
}

/* Read the padding mask and the ids to route with, and check the document
 * bounds now, so that a bad one wastes no work. */
static moe_status read_inputs(fwd *f, moe_tensor *x, moe_tensor *valid, moe_tensor *doc_bounds)
{
    MOE_TRY(read_mask(f, valid, x->ndim == 3));
    if (f->given_ids) MOE_TRY(moe_replay_ids_read(&f->given, f->given_ids, f->T, f->K, f->E));
    if (doc_bounds) {
        moe_scopes tmp;
        MOE_TRY(moe_scopes_sequences(&tmp, OP, f->B, f->S, doc_bounds));
        moe_scopes_free(&tmp);
    }
    return MOE_OK;
}

/* Debug routing 'random: the logits become U[0, 1) draws (forced routing for
 * load tests; the weight gets no gradient). */
static moe_status random_logits(fwd *f, moe_router *r)
{
    const moe_router_config *c = &r->cfg;
    moe_tensor *rz = NULL;
    MOE_TRY(moe_tensor_empty(&rz, c->dtype, MOE_CPU, 2, (int64_t[]){f->T, f->E}));
    moe_cpu_uniform(c->dtype, moe_tensor_data(rz), f->T * f->E, c->seed ^ DEBUG_SEED_MIX,
                    f->offset + (uint64_t)(f->T * f->D), 0.0, 1.0);
    moe_tensor_release(f->z);
    f->z = rz;
    return MOE_OK;
}

/* Settle the routing pass: how the weights come from the scores (the score
 * function, renormalisation, sinkhorn, quantile balancing, debug modes), and
 * its output buffers. */
static moe_status plan_routing(fwd *f, moe_router *r)
{
    const moe_router_config *c = &r->cfg;
    const int64_t T = f->T, E = f->E, K = f->K;
    moe_route_plan *p = &f->plan;
    *p = (moe_route_plan){
        .T = T, .E = E, .K = K, .dtype = c->dtype, .valid = f->valid, .score = c->score,
        .score_offset = c->score_offset, .loss_eps = c->loss_eps, .select = true,
        .wmode = MOE_WMODE_GATHER, .wnorm = MOE_WNORM_NONE, .norm_eps = c->norm_eps,
        .norm_p = c->norm_p, .groups = c->groups, .group_topk = c->group_topk,
        .group_m = c->groups ? (c->group_score_top ? c->group_score_top : K / c->group_topk) : 0,
        .debug = (c->debug_routing == MOE_DEBUG_RANDOM ? MOE_DEBUG_NONE : c->debug_routing),
        .debug_seed = c->seed ^ DEBUG_SEED_MIX, .debug_keep_weights = c->debug_keep_weights,
        .debug_offset = f->offset + (uint64_t)(T * f->D), .debug_skew = c->debug_skew,
        .count_topk = c->count_from == MOE_COUNT_TOPK,
    };
    if (c->sinkhorn) { /* Megatron: weights from σ (K = 1) or the full softmax, not renormalised */
        p->score = K == 1 ? MOE_SCORE_SIGMOID : MOE_SCORE_SOFTMAX;
        p->score_offset = 0;
        p->select_on_logits = c->training;
    } else if (c->score == MOE_SCORE_SOFTMAX && !c->pre_softmax) {
        p->select_on_logits = true;
        p->wmode = MOE_WMODE_POST_SOFTMAX;
    } else if (c->normalize == MOE_NORM_ON || (c->normalize == MOE_NORM_AUTO && moe_score_is_normalized(c->score) && K > 1)) {
        p->wnorm = c->norm_p == 1.0 ? MOE_WNORM_SUM : MOE_WNORM_PNORM;
    }
    if (r->bias) p->bias = moe_tensor_data(r->bias);
    f->score = p->score;
    p->given_ids = f->given;
    if (f->qb) { /* select top-K of z − β */
        f->qb_off = malloc(sizeof(double) * (size_t)E);
        if (!f->qb_off) return moe_fail_nomem(OP, sizeof(double) * (size_t)E, "the quantile-balancing offsets");
        const float *beta = moe_tensor_data(r->qb_beta);
        for (int64_t e = 0; e < E; e++) f->qb_off[e] = -(double)beta[e];
        p->sel_offset = f->qb_off;
        p->select_on_logits = true;
    }
    if (!f->given && p->debug == MOE_DEBUG_UNIFORM && p->debug_keep_weights) {
        MOE_TRY(moe_tensor_empty(&f->wid_t, MOE_I64, MOE_CPU, 2, (int64_t[]){T, K}));
        p->weight_ids = moe_tensor_data(f->wid_t);
    }
    f->rowsum = malloc(sizeof(double) * (size_t)T);
    f->lse = malloc(sizeof(double) * (size_t)T);
    f->entropy = malloc(sizeof(double) * (size_t)T);
    f->mass = malloc(sizeof(double) * (size_t)T);
    f->count_ids = f->balance ? malloc(sizeof(int64_t) * (size_t)(T * K)) : NULL;
    f->log_d1 = malloc(sizeof(double) * (size_t)E);
    if (!f->rowsum || !f->lse || !f->entropy || !f->mass || (f->balance && !f->count_ids) || !f->log_d1)
        return moe_fail_nomem(OP, sizeof(double) * (size_t)(4 * T + E) + (f->balance ? sizeof(int64_t) * (size_t)(T * K) : 0),
                              "the routing pass's row statistics");
    MOE_TRY(moe_tensor_empty(&f->s, c->dtype, MOE_CPU, 2, (int64_t[]){T, E}));
    MOE_TRY(moe_tensor_empty(&f->ids_t, MOE_I64, MOE_CPU, 2, (int64_t[]){T, K}));
    MOE_TRY(moe_tensor_empty(&f->wu_t, MOE_F64, MOE_CPU, 2, (int64_t[]){T, K}));
    MOE_TRY(moe_tensor_empty(&f->kept_t, MOE_BOOL, MOE_CPU, 2, (int64_t[]){T, K}));
    return MOE_OK;
}

/* The routing pass: scores, each token's experts and weights, the counts
 * the losses use; then which slots are kept (valid tokens) and, under
 * quantile balancing, this micro-batch's quantiles. */
static moe_status route(fwd *f, moe_router *r)
{
    const moe_router_config *c = &r->cfg;
    const int64_t T = f->T, E = f->E;
    moe_route_plan *p = &f->plan;
    if (c->sinkhorn && c->training) { /* select on z + log d1 of the balanced assignment */
        int64_t nn, ni, first;
        moe_count_nonfinite_rows(moe_tensor_data(f->z), c->dtype, T * E, &nn, &ni, &first);
        if (nn || ni) return nonfinite_error(f);
        MOE_TRY(moe_cpu_sinkhorn_log_offsets(c->dtype, f->log_d1, NULL, moe_tensor_data(f->z), f->valid, T, E));
        p->sel_offset = f->log_d1;
    }
    p->z = moe_tensor_data(f->z);
    p->s = moe_tensor_data(f->s);
    p->rowsum = f->rowsum;
    p->lse = f->z_loss ? f->lse : NULL;
    p->ids = f->ids = moe_tensor_data(f->ids_t);
    p->wu = f->wu = moe_tensor_data(f->wu_t);
    p->count_ids = f->count_ids;
    p->entropy = f->entropy;
    p->mass = f->mass;
    int64_t bad = 0;
    p->bad_rows = &bad;
    bool ran = moe_route_rows(p);
    p->bad_rows = NULL;
    if (!ran)
        return moe_fail(MOE_ERR_NOMEM, OP, "out of memory for the per-thread routing scratch of %lld experts (%zu bytes a thread)",
                        (long long)p->E, moe_route_scratch_bytes(p->E, p->groups));
    if (bad) return nonfinite_error(f);
    f->kept = moe_tensor_data(f->kept_t);
    f->Tv = moe_route_kept(f->kept, f->valid, T, f->K);
    if (f->qb_train) MOE_TRY(qb_quantiles(f, r));
    return MOE_OK;
}

/* Capacity: each expert keeps at most C slots of the valid tokens; the rest
 * are dropped (kept false, weight 0), by probability or by position, and
 * with padding the free slots are marked as filler. */
static moe_status apply_capacity(fwd *f, moe_router *r)
{
    const moe_router_config *c = &r->cfg;
    f->C = moe_capacity_of(c, f->Tv);
    if (f->C < 0) return MOE_OK;
    if (c->pad_to_capacity) {
        f->pad_map = calloc((size_t)(f->T * f->E), 1);
        if (!f->pad_map) return moe_fail_nomem(OP, (size_t)(f->T * f->E), "the padding map");
    }
    return moe_cpu_capacity_drop(f->kept, &f->dropped, f->pad_map, f->ids, f->wu, f->T, f->K, f->E, f->C,
                                 c->drop_policy == MOE_DROP_PROBS);
}

/* The weights [T K] = scaling factor · normalised weight · kept, recorded as
 * the router-weights node whose backward takes the gradient back to z. */
static moe_status weights_node(fwd *f, moe_router *r)
{
    const moe_router_config *c = &r->cfg;
    const moe_route_plan *p = &f->plan;
    MOE_TRY(moe_tensor_empty(&f->w_raw, c->dtype, MOE_CPU, 2, (int64_t[]){f->T, f->K}));
    moe_route_scale(c->dtype, moe_tensor_data(f->w_raw), f->wu, f->kept, f->T * f->K, c->scaling_factor);
    moe_tensor *saved[4] = {f->s, f->wid_t ? f->wid_t : f->ids_t, f->wu_t, f->kept_t};
    MOE_TRY(moe_autograd_record(f->w_raw, "router-weights", weights_backward, 1, &f->z, 4, saved, NULL, NULL));
    if (f->w_raw->grad_fn) {
        moe_node *n = f->w_raw->grad_fn;
        n->iargs[0] = p->wmode;
        n->iargs[1] = p->wnorm;
        n->iargs[2] = p->score;
        n->dargs[0] = c->scaling_factor;
        n->dargs[1] = c->norm_eps;
        n->dargs[2] = c->norm_p;
        n->dargs[3] = moe_score_is_normalized(p->score) ? p->score_offset : 0.0;
    }
    return MOE_OK;
}

/* The coefficient a loss enters the total with: the z-loss is computed on
 * every tp×cp rank from the same tokens, so its share is split among them. */
static double loss_weight(const moe_router *r, int i)
{
    const moe_router_config *c = &r->cfg;
    return c->losses[i].kind == MOE_AUX_Z ? c->losses[i].coeff / tp_cp_size(r) : c->losses[i].coeff;
}

/* Each loss's value (unit coefficient) and the routing's aux tensors: in add
 * mode each loss is its own node and aux_total = Σ α_i L_i is differentiable;
 * in inject mode they are plain numbers (the gradient rides on the weights). */
static moe_status loss_values(fwd *f, moe_router *r, moe_routing *o, moe_tensor *doc_bounds)
{
    const moe_router_config *c = &r->cfg;
    bool inject = c->grad_mode == MOE_GRAD_INJECT;
    o->n_aux = c->n_losses;
    for (int i = 0; i < c->n_losses; i++) {
        o->aux_kind[i] = c->losses[i].kind;
        o->aux_coeff[i] = c->losses[i].coeff;
    }
    moe_status st = MOE_OK;
    if (c->n_losses > 0) st = loss_stats(f, r, doc_bounds);
    for (int i = 0; i < c->n_losses && st == MOE_OK; i++) {
        moe_aux_term_plan *terms = NULL;
        int n_terms = 0;
        moe_z_plan zp;
        st = build_terms(&terms, &n_terms, &zp, f, r, i, true);
        if (st != MOE_OK) break;
        f->values[i] = c->losses[i].kind == MOE_AUX_Z ? zp.value : terms[0].value;
        if (!inject) { /* add mode: each loss its own node */
            moe_aux_node_spec spec = {.op = OP, .z = f->z, .s = f->s, .valid = f->valid, .lse = f->lse,
                                      .score = f->plan.score, .eps = c->loss_eps,
                                      .offset = f->plan.score_offset, .n_terms = n_terms,
                                      .terms = terms, .zterm = zp};
            st = moe_aux_node_make(&o->aux[i], &spec);
            terms = spec.terms;
            n_terms = spec.n_terms;
        } else {
            st = moe_tensor_scalar(&o->aux[i], c->dtype, MOE_CPU, f->values[i]);
        }
        for (int j = 0; j < n_terms; j++) moe_aux_term_plan_free(&terms[j]);
        free(terms);
    }
    if (st != MOE_OK) return st;
    if (inject) {
        double total = 0;
        for (int i = 0; i < c->n_losses; i++) total += loss_weight(r, i) * f->values[i];
        return moe_tensor_scalar(&o->aux_total, c->dtype, MOE_CPU, total);
    }
    MOE_TRY(moe_tensor_scalar(&o->aux_total, c->dtype, MOE_CPU, 0.0));
    for (int i = 0; i < c->n_losses && st == MOE_OK; i++) {
        moe_tensor *term = NULL, *sum = NULL;
        st = moe_mul_scalar(&term, o->aux[i], loss_weight(r, i));
        if (st == MOE_OK) st = moe_add(&sum, o->aux_total, term);
        moe_tensor_release(term);
        if (st == MOE_OK) {
            moe_tensor_release(o->aux_total);
            o->aux_total = sum;
        }
    }
    return st;
}

/* Inject mode: one aux node with every α-weighted term, and the weights
 * handed out behind the router-aux-inject node, whose backward passes the
 * weights' gradient through and hands the aux node its scale (|cp|/M, or the
 * valid tokens per tp×cp rank under a per-token loss). Without a gradient to
 * carry, the weights are w_raw itself. */
static moe_status inject_losses(fwd *f, moe_router *r)
{
    const moe_router_config *c = &r->cfg;
    bool any_coeff = false;
    for (int i = 0; i < c->n_losses; i++) any_coeff |= c->losses[i].coeff != 0;
    moe_tensor *aux_graph = NULL;
    if (c->grad_mode == MOE_GRAD_INJECT && any_coeff && c->training && moe_tensor_needs_grad(f->z)) {
        moe_aux_term_plan *terms = NULL;
        int n_terms = 0;
        moe_z_plan zp;
        MOE_TRY(build_terms(&terms, &n_terms, &zp, f, r, -1, false));
        moe_aux_node_spec spec = {.op = OP, .z = f->z, .s = f->s, .valid = f->valid, .lse = f->lse,
                                  .score = f->plan.score, .eps = c->loss_eps, .offset = f->plan.score_offset,
                                  .n_terms = n_terms, .terms = terms, .zterm = zp};
        MOE_TRY(moe_aux_node_make(&aux_graph, &spec)); /* takes the terms */
    }
    if (!aux_graph || !f->w_raw->grad_fn) {
        moe_tensor_release(aux_graph);
        f->w_final = moe_tensor_retain(f->w_raw);
        return MOE_OK;
    }
    double scale = c->per_token_loss ? (double)f->Tv * tp_cp_size(r)
                                     : (double)moe_group_size(r->cp) / (double)c->grad_accum;
    moe_node *n = NULL;
    moe_status st = moe_detach(&f->w_final, f->w_raw);
    if (st == MOE_OK)
        st = moe_node_new(&n, "router-aux-inject", inject_backward, 2, (moe_tensor *[]){f->w_raw, aux_graph});
    if (st == MOE_OK) {
        n->dargs[0] = scale;
        moe_node_attach(n, f->w_final);
    }
    moe_tensor_release(aux_graph);
    return st;
}

/* Fill the routing result: weights, experts, kept, logits, counts, tokens,
 * capacity and drops (the dense views wait for moe_routing_dense). */
static moe_status outputs(fwd *f, moe_router *r, moe_routing *o)
{
    const moe_router_config *c = &r->cfg;
    const int64_t E = f->E, K = f->K;
    o->weights = f->w_final;
    f->w_final = NULL;
    MOE_TRY(moe_tensor_zeros(&o->counts, MOE_I64, MOE_CPU, 1, &E));
    f->counts = calloc((size_t)E, sizeof(double));
    o->priv = calloc(1, sizeof *o->priv);
    if (!f->counts || !o->priv)
        return moe_fail_nomem(OP, sizeof(double) * (size_t)E + sizeof *o->priv, "the routing's counts");
    int64_t *cp = moe_tensor_data(o->counts);
    moe_route_counts(cp, f->ids, f->kept, f->T * K);
    for (int64_t e = 0; e < E; e++) f->counts[e] = (double)cp[e];
    o->priv->E = E;
    o->priv->dtype = c->dtype;
    o->priv->pad_map = f->pad_map; /* taken over */
    f->pad_map = NULL;
    o->experts = moe_tensor_retain(f->ids_t);
    o->kept = moe_tensor_retain(f->kept_t);
    o->logits = moe_tensor_retain(f->z);
    o->tokens = f->Tv;
    o->capacity = f->C;
    if (f->C >= 0 && c->convention == MOE_CONVENTION_MEGATRON && c->capacity_formula == MOE_CAPACITY_MEGATRON)
        o->capacity = (int64_t)ceil(((double)f->Tv * (double)K / (double)E) * c->capacity_factor);
    o->dropped = f->dropped;
    return MOE_OK;
}

/* Commit the router's state, which nothing above changed: the global-batch
 * tracker, the record for recomputation and replay, the quantile sums, and
 * the counts and statistics of the step (a recomputation only advances its
 * cursor: the original forward counted). */
static moe_status commit(fwd *f, moe_router *r, moe_routing *o)
{
    const moe_router_config *c = &r->cfg;
    const int64_t E = f->E;
    if (c->training && r->tracker && f->gb_red) MOE_TRY(moe_tracker_commit(r->tracker, OP, f->gb_red));
    if (c->training && !f->recomp) MOE_TRY(push_record(r, f->offset, f->given_ids));
    if (c->replay == MOE_REPLAY_RECORD && !f->recomp) MOE_TRY(moe_replay_push_record(r, o->experts));
    if (f->replaying) r->replay_cursor++;
    if (f->qb_train) {
        for (int64_t e = 0; e < E; e++) r->qb_sum[e] += f->qb_q[e];
        r->qb_micro += 1;
    }
    memcpy(r->batch_counts, f->counts, sizeof(double) * (size_t)E);
    r->batch_tokens = (double)f->Tv;
    if (f->recomp) {
        r->rec_cursor++;
    } else if (c->training) {
        r->rng_next = f->offset + (uint64_t)(f->T * (f->D + E));
        for (int64_t e = 0; e < E; e++) {
            r->bias_counts[e] += f->counts[e];
            r->step_counts[e] += f->counts[e];
        }
        r->bias_tokens += (double)f->Tv;
        r->step_tokens += (double)f->Tv;
        r->step_dropped += (double)f->dropped;
        moe_route_valid_sum(&r->step_entropy, f->entropy, f->valid, f->T);
        moe_route_valid_sum(&r->step_mass, f->mass, f->valid, f->T);
        for (int i = 0; i < c->n_losses; i++) r->step_aux[i] += f->values[i];
        r->step_micro++;
    }
    return MOE_OK;
}

/* The forward as a list of phases; each fills FWD, and only commit touches
 * the router. */
moe_status moe_router_forward_ids(moe_routing **out, moe_router *r, moe_tensor *x, moe_tensor *valid,
                                  moe_tensor *doc_bounds, moe_tensor *given_ids)
{
    *out = NULL;
    fwd f = {.given_ids = given_ids, .C = -1};
    MOE_TRY(check_call(&f, r, x, valid, doc_bounds));
    moe_routing *o = calloc(1, sizeof *o);
    moe_status st = o ? MOE_OK : moe_fail_nomem(OP, sizeof *o, "the routing result");
    if (st == MOE_OK) st = read_inputs(&f, x, valid, doc_bounds);
    if (st == MOE_OK) st = gate(&f, r, x, f.offset);
    if (st == MOE_OK && r->cfg.debug_routing == MOE_DEBUG_RANDOM) st = random_logits(&f, r);
    if (st == MOE_OK) st = plan_routing(&f, r);
    if (st == MOE_OK) st = route(&f, r);
    if (st == MOE_OK) st = apply_capacity(&f, r);
    if (st == MOE_OK) st = weights_node(&f, r);
    if (st == MOE_OK) st = loss_values(&f, r, o, doc_bounds);
    if (st == MOE_OK) st = inject_losses(&f, r);
    if (st == MOE_OK) st = outputs(&f, r, o);
    if (st == MOE_OK) st = commit(&f, r, o);
    fwd_free(&f);
    if (st != MOE_OK) {
        moe_routing_free(o);
        return st;
    }
    *out = o;
    return MOE_OK;
}
