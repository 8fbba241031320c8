/* balance_cases.c — distributed load-balancing invariants, written once and
 * run on every backend: by check_balance (threads, worlds of 4 and 2) and by
 * mpi_balance (under mpirun -np 2 and -np 4).
 *
 * Every rank builds the same global batch from a seed, routes its shard with
 * a router whose groups are (tp = NULL, cp, dp), reduces the router weight
 * gradient over the data-parallel group, and compares with one router
 * (groups NULL) computing the reference on the whole batch on this rank.
 *
 * Mesh: world 4 = dp 2 × cp 2 (each sequence split in halves over cp),
 * world 2 = dp 2. Dimension letters: B sequences per replica, S sequence
 * length, D hidden, E experts, K top-k; the global batch is [dp·B S D],
 * replica d holds rows d·B … d·B+B−1, cp rank c the columns c·S/cp ….
 *
 * The gradient reduction (spec §4): the router's inject scale multiplies by
 * |cp| (add mode: the caller scales aux_total by |cp|/M, as Megatron's loss
 * function does its model loss), and the data-parallel average runs over
 * dp×cp. Per rank g = |cp|·∇(partial loss), so avg over dp×cp =
 * (1/dp)·Σ_d Σ_c ∇L_{d,c} = (1/dp)·Σ_d ∇L_d because the cp partials of a
 * replica add up to its loss: the gradient of the mean over replicas. The
 * same thing said differently: sum over cp, then average over dp, of the
 * unscaled partial gradients. What "the loss of the whole batch" is per
 * variant:
 *   micro-batch, sequence, olmo-instance, z: the mean over the dp replicas of
 *     the unsplit loss of each replica's micro-batch (one router, M = dp);
 *   global-batch: the micro-batch formula on the concatenated global batch
 *     (one router, M = 1: its tracker sees the whole batch);
 *   olmo-local-batch: rank-local by definition (OLMo-core: "the rank-local
 *     shard, ignoring parallelism"), so the reference routes each of the
 *     dp·cp shards on its own (M = dp) and the objective is, per replica, the
 *     sum of its cp shards' local losses (with the default divisor each is ≈1
 *     at balance; loss_div_factor = the replica's token count weights them
 *     per token instead). The logged value is that sum too: cp × the mean
 *     over shards.
 * The z-loss invariant needs equal valid-token counts on the cp shards (its
 * α/|tp×cp| rule assumes them, as Megatron's does): the z runs use no padding;
 * the balance losses run with uneven padding across the shards.
 *
 * (On failure a case returns early and may leak; the run is failing anyway.) */
#include "balance_cases.h"

#include "moe/metrics.h"
#include "moe/router.h"

enum { SEQS = 2, SEQ_LEN = 8, HIDDEN = 6, EXPERTS = 8, TOP_K = 2 };

static const moe_aux_kind all_kinds[] = {MOE_AUX_MICRO_BATCH,      MOE_AUX_SEQUENCE,
                                         MOE_AUX_GLOBAL_BATCH,     MOE_AUX_OLMO_LOCAL_BATCH,
                                         MOE_AUX_OLMO_INSTANCE,    MOE_AUX_Z};
#define N_KINDS (int)(sizeof all_kinds / sizeof *all_kinds)

static double tol_of(moe_dtype dt) { return dt == MOE_F64 ? 1e-10 : 1e-5; }

/* ---- the mesh ------------------------------------------------------------------- */

typedef struct layout {
    moe_mesh *mesh;
    moe_group *cp, *dp, *dpcp; /* dpcp: the data-parallel gradient average */
    int ndp, ncp, dpr, cpr;
} layout;

static void layout_free(layout *l)
{
    moe_group_release(l->cp);
    moe_group_release(l->dp);
    moe_group_release(l->dpcp);
    moe_mesh_free(l->mesh);
    memset(l, 0, sizeof *l);
}

static moe_status layout_make(layout *l, moe_group *world)
{
    memset(l, 0, sizeof *l);
    int n = moe_group_size(world);
    char spec[48];
    if (n >= 4 && n % 2 == 0) snprintf(spec, sizeof spec, "dp=%d cp=2", n / 2);
    else snprintf(spec, sizeof spec, "dp=%d", n);
    RTRY(moe_mesh_parse(&l->mesh, world, spec));
    RTRY(moe_mesh_group(&l->cp, l->mesh, "cp"));
    RTRY(moe_mesh_group(&l->dp, l->mesh, "dp"));
    RTRY(moe_mesh_group(&l->dpcp, l->mesh, "dp cp"));
    l->ndp = moe_mesh_size(l->mesh, "dp");
    l->ncp = moe_mesh_size(l->mesh, "cp");
    l->dpr = moe_mesh_coord(l->mesh, "dp");
    l->cpr = moe_mesh_coord(l->mesh, "cp");
    RCHECK(SEQ_LEN % l->ncp == 0, "cp %d does not split S = %d", l->ncp, SEQ_LEN);
    return MOE_OK;
}

/* ---- the global batch ----------------------------------------------------------- */

typedef struct batch {
    moe_tensor *x;     /* [dp·B S D] router dtype */
    moe_tensor *valid; /* [dp·B S] bool, or NULL (no padding) */
} batch;

static void batch_free(batch *b)
{
    moe_tensor_release(b->x);
    moe_tensor_release(b->valid);
    memset(b, 0, sizeof *b);
}

/* The same on every rank: N(0,1) tokens from SEED; with PADDED, uneven
 * padding: replica 0 loses the last token of sequence 1, replica 1 the last 3
 * of sequence 0 (both in the last cp shard), replica d ≥ 2 the last d. */
static moe_status batch_make(batch *b, moe_dtype dt, int ndp, uint64_t seed, bool padded)
{
    memset(b, 0, sizeof *b);
    moe_rng rng;
    moe_rng_init(&rng, seed);
    moe_tensor *x64;
    RTRY(moe_tensor_randn(&x64, &rng, MOE_F64, MOE_CPU, 3, (int64_t[]){ndp * SEQS, SEQ_LEN, HIDDEN}));
    RTRY(moe_to_dtype(&b->x, x64, dt));
    moe_tensor_release(x64);
    if (!padded) return MOE_OK;
    RTRY(moe_tensor_full(&b->valid, MOE_BOOL, MOE_CPU, 2, (int64_t[]){ndp * SEQS, SEQ_LEN}, 1));
    bool *v = moe_tensor_data(b->valid);
    for (int d = 0; d < ndp; d++) {
        int row = d * SEQS + (d == 0 ? 1 : 0), pad = d == 0 ? 1 : d == 1 ? 3 : d;
        for (int s = SEQ_LEN - pad; s < SEQ_LEN; s++) v[row * SEQ_LEN + s] = false;
    }
    return MOE_OK;
}

/* Rows of replica D (D < 0: all rows), columns of cp shard C of NCP, as
 * contiguous copies. */
static moe_status batch_part(moe_tensor **x, moe_tensor **valid, const batch *b, int d, int c, int ncp)
{
    *x = *valid = NULL;
    moe_tensor *src[2] = {b->x, b->valid}, **dst[2] = {x, valid};
    for (int i = 0; i < 2; i++) {
        if (!src[i]) continue;
        moe_tensor *rows, *cols;
        int64_t nrows = src[i]->shape[0];
        RTRY(moe_narrow(&rows, src[i], 0, d < 0 ? 0 : d * SEQS, d < 0 ? nrows : SEQS));
        RTRY(moe_narrow(&cols, rows, 1, c * (SEQ_LEN / ncp), SEQ_LEN / ncp));
        RTRY(moe_clone(dst[i], cols));
        moe_tensor_release(rows);
        moe_tensor_release(cols);
    }
    return MOE_OK;
}

/* ---- routers -------------------------------------------------------------------- */

static void config_of(moe_router_config *c, moe_dtype dt, moe_score_fn score, moe_grad_mode mode,
                      int n, const moe_aux_term *terms)
{
    moe_router_config_default(c);
    c->hidden = HIDDEN;
    c->experts = EXPERTS;
    c->top_k = TOP_K;
    c->dtype = dt;
    c->score = score;
    c->grad_mode = mode;
    moe_router_config_set_losses(c, n, terms);
}

/* The gate weight [E D], the same on every rank (scaled so routing is decisive). */
static moe_status weight_make(moe_tensor **w, moe_dtype dt)
{
    moe_rng rng;
    moe_rng_init(&rng, 4242);
    moe_tensor *w1, *w2;
    RTRY(moe_tensor_randn(&w1, &rng, MOE_F64, MOE_CPU, 2, (int64_t[]){EXPERTS, HIDDEN}));
    RTRY(moe_mul_scalar(&w2, w1, 0.5));
    RTRY(moe_to_dtype(w, w2, dt));
    moe_tensor_release(w1);
    moe_tensor_release(w2);
    return MOE_OK;
}

static moe_status router_make(moe_router **r, const moe_router_config *cfg, moe_tensor *w,
                              const layout *l, int M)
{
    RTRY(moe_router_new(r, cfg));
    RTRY(moe_router_set_weight(*r, w));
    if (l) RTRY(moe_router_set_groups(*r, NULL, l->cp, l->dp));
    RTRY(moe_router_set_grad_scale(*r, M, false));
    return MOE_OK;
}

/* One forward of X (VALID) and the backward of the aux gradient alone.
 * Inject: the router adds its scale (|cp|/M)·∂aux; the objective is
 * 0·Σ weights. Add: the caller back-propagates (|cp|/M)·aux_total. */
static moe_status route_once(moe_router *r, moe_tensor *x, moe_tensor *valid, int ncp, int M)
{
    moe_routing *o;
    RTRY(moe_router_forward(&o, r, x, valid, NULL));
    moe_tensor *obj = NULL, *root = NULL;
    if (moe_router_get_config(r)->grad_mode == MOE_GRAD_INJECT) {
        RTRY(moe_sum(&obj, o->weights, 0, NULL, false));
        RTRY(moe_mul_scalar(&root, obj, 0.0));
    } else {
        RTRY(moe_mul_scalar(&root, o->aux_total, (double)ncp / M));
    }
    RTRY(moe_backward(root, NULL, false));
    moe_tensor_release(obj);
    moe_tensor_release(root);
    moe_routing_free(o);
    return MOE_OK;
}

/* What a step leaves: the reduced gradient, the logged loss values
 * (moe_router_log_reduce), and after moe_router_step the global counts. */
typedef struct outcome {
    moe_tensor *grad;   /* [E D] router weight gradient after the data-parallel average */
    double value[MOE_AUX_KIND_COUNT];
    moe_tensor *global; /* [E] f64 tokens per expert of the step, all ranks */
    double maxvio;      /* MaxVio of GLOBAL */
    moe_tensor *bias;   /* [E] f32 or NULL */
} outcome;

static void outcome_free(outcome *o)
{
    moe_tensor_release(o->grad);
    moe_tensor_release(o->global);
    moe_tensor_release(o->bias);
    memset(o, 0, sizeof *o);
}

/* Close the step of R: average the gradient over DPCP (NULL: one process),
 * log, step, read the metrics; frees R. */
static moe_status finish(outcome *o, moe_router *r, moe_group *dpcp)
{
    memset(o, 0, sizeof *o);
    moe_tensor *g = moe_router_weight(r)->grad;
    if (g) RTRY(moe_all_reduce(&o->grad, g, MOE_REDUCE_AVG, dpcp));
    moe_tensor *table;
    RTRY(moe_router_log_reduce(&table, o->value, 1, &r, (int64_t[]){0}, 1, NULL));
    moe_tensor_release(table);
    RTRY(moe_router_step(r));
    moe_router_metrics m;
    RTRY(moe_router_metrics_get(&m, r));
    o->global = moe_tensor_retain(m.tokens_per_expert_global);
    o->bias = moe_tensor_retain(m.bias);
    o->maxvio = m.max_violation_global;
    moe_router_metrics_release(&m);
    moe_router_free(r);
    return MOE_OK;
}

/* Elementwise |a − b| <= TOL, naming WHAT and the worst element. */
static moe_status close_to(const moe_tensor *a, const moe_tensor *b, double tol, const char *what)
{
    RCHECK(a && b, "%s: missing tensor (%p, %p)", what, (const void *)a, (const void *)b);
    int64_t n = moe_tensor_numel(b);
    double *want = malloc(sizeof(double) * (size_t)n);
    RCHECK(want, "out of memory");
    moe_status st = moe_tensor_to_doubles(b, want);
    if (st == MOE_OK) st = dt_expect(a, n, want, tol, what);
    free(want);
    return st;
}

static moe_status max_abs(const moe_tensor *t, double *out)
{
    int64_t n = moe_tensor_numel(t);
    double *v = malloc(sizeof(double) * (size_t)n);
    RCHECK(v, "out of memory");
    moe_status st = moe_tensor_to_doubles(t, v);
    *out = 0;
    for (int64_t i = 0; st == MOE_OK && i < n; i++) *out = fabs(v[i]) > *out ? fabs(v[i]) : *out;
    free(v);
    return st;
}

/* GOT (distributed) against WANT (one process); VALUE_FACTOR multiplies the
 * reference's logged value of KIND. */
static moe_status compare(const outcome *got, const outcome *want, moe_aux_kind kind, double value_factor,
                          double tol, const char *what)
{
    char name[160];
    snprintf(name, sizeof name, "%s: router weight gradient", what);
    RTRY(close_to(got->grad, want->grad, tol, name));
    double big;
    RTRY(max_abs(want->grad, &big));
    RCHECK(big > 1e-4, "%s: the reference gradient is ~0 (max %g): the test would not see a wrong one", what,
           big);
    double v = got->value[kind], e = value_factor * want->value[kind];
    RCHECK(fabs(v - e) <= tol * (1 + fabs(e)), "%s: logged %s value %.17g, one process %.17g", what,
           moe_aux_kind_name(kind), v, e);
    snprintf(name, sizeof name, "%s: global tokens per expert", what);
    RTRY(close_to(got->global, want->global, 0, name));
    RCHECK(fabs(got->maxvio - want->maxvio) <= 1e-12, "%s: global MaxVio %.17g, one process %.17g", what,
           got->maxvio, want->maxvio);
    return MOE_OK;
}

/* ---- case: every variant, one micro-batch per rank ------------------------------------ */

static moe_status distributed_once(outcome *o, const moe_router_config *cfg, moe_tensor *w, const batch *b,
                                   const layout *l)
{
    moe_router *r;
    RTRY(router_make(&r, cfg, w, l, 1));
    moe_tensor *x, *valid;
    RTRY(batch_part(&x, &valid, b, l->dpr, l->cpr, l->ncp));
    RTRY(route_once(r, x, valid, l->ncp, 1));
    moe_tensor_release(x);
    moe_tensor_release(valid);
    return finish(o, r, l->dpcp);
}

/* One process, groups NULL: the reference of KIND on the whole batch (see the
 * top of the file). */
static moe_status reference_once(outcome *o, const moe_router_config *cfg, moe_tensor *w, const batch *b,
                                 const layout *l, moe_aux_kind kind)
{
    moe_router *r;
    moe_tensor *x, *valid;
    if (kind == MOE_AUX_GLOBAL_BATCH) {
        RTRY(router_make(&r, cfg, w, NULL, 1));
        RTRY(batch_part(&x, &valid, b, -1, 0, 1));
        RTRY(route_once(r, x, valid, 1, 1));
        moe_tensor_release(x);
        moe_tensor_release(valid);
    } else {
        RTRY(router_make(&r, cfg, w, NULL, l->ndp));
        int shards = kind == MOE_AUX_OLMO_LOCAL_BATCH ? l->ncp : 1;
        for (int d = 0; d < l->ndp; d++)
            for (int c = 0; c < shards; c++) {
                RTRY(batch_part(&x, &valid, b, d, c, shards));
                RTRY(route_once(r, x, valid, 1, l->ndp));
                moe_tensor_release(x);
                moe_tensor_release(valid);
            }
    }
    return finish(o, r, NULL);
}

static moe_status case_variants(int rank, moe_group *world, void *ctx)
{
    (void)rank;
    (void)ctx;
    layout l;
    RTRY(layout_make(&l, world));
    static const moe_dtype dts[] = {MOE_F64, MOE_F32};
    for (int di = 0; di < 2; di++) {
        moe_tensor *w;
        RTRY(weight_make(&w, dts[di]));
        batch padded, plain;
        RTRY(batch_make(&padded, dts[di], l.ndp, 7, true));
        RTRY(batch_make(&plain, dts[di], l.ndp, 7, false));
        for (int sc = 0; sc < MOE_SCORE_FN_COUNT; sc++)
            for (int gm = 0; gm < MOE_GRAD_MODE_COUNT; gm++)
                for (int k = 0; k < N_KINDS; k++) {
                    moe_aux_kind kind = all_kinds[k];
                    moe_router_config cfg;
                    config_of(&cfg, dts[di], (moe_score_fn)sc, (moe_grad_mode)gm, 1,
                              (moe_aux_term[]){{kind, 0.3}});
                    const batch *b = kind == MOE_AUX_Z ? &plain : &padded;
                    outcome got, want;
                    RTRY(distributed_once(&got, &cfg, w, b, &l));
                    RTRY(reference_once(&want, &cfg, w, b, &l, kind));
                    char what[128];
                    snprintf(what, sizeof what, "%s %s %s %s (dp %d cp %d)", moe_aux_kind_name(kind),
                             moe_score_fn_name((moe_score_fn)sc), moe_grad_mode_name((moe_grad_mode)gm),
                             moe_dtype_name(dts[di]), l.ndp, l.ncp);
                    double factor = kind == MOE_AUX_OLMO_LOCAL_BATCH ? l.ncp : 1.0;
                    RTRY(compare(&got, &want, kind, factor, tol_of(dts[di]), what));
                    outcome_free(&got);
                    outcome_free(&want);
                }
        batch_free(&padded);
        batch_free(&plain);
        moe_tensor_release(w);
    }
    layout_free(&l);
    return MOE_OK;
}

/* ---- case: global-batch buffered over M = 2 micro-batches per rank ------------------- */

/* The tracker's buffer of R: counts [E] and accumulated tokens. */
static moe_status tracker_state(moe_tensor **counts, double *tokens, int64_t *micro, moe_router *r)
{
    moe_balance_tracker *tr = moe_router_tracker(r);
    RCHECK(tr, "the router has no global-batch tracker");
    *micro = moe_balance_tracker_micro_batches(tr);
    return moe_balance_tracker_counts(counts, tokens, tr);
}

static moe_status case_global_buffer(int rank, moe_group *world, void *ctx)
{
    (void)rank;
    (void)ctx;
    enum { M = 2 };
    layout l;
    RTRY(layout_make(&l, world));
    static const moe_dtype dts[] = {MOE_F64, MOE_F32};
    for (int di = 0; di < 2; di++) {
        moe_tensor *w;
        RTRY(weight_make(&w, dts[di]));
        batch mb[M];
        for (int m = 0; m < M; m++) RTRY(batch_make(&mb[m], dts[di], l.ndp, 20 + m, true));
        for (int sc = 0; sc < MOE_SCORE_FN_COUNT; sc++)
            for (int gm = 0; gm < MOE_GRAD_MODE_COUNT; gm++) {
                moe_router_config cfg;
                config_of(&cfg, dts[di], (moe_score_fn)sc, (moe_grad_mode)gm, 1,
                          (moe_aux_term[]){{MOE_AUX_GLOBAL_BATCH, 0.3}});
                char what[128];
                snprintf(what, sizeof what, "global-batch M=%d %s %s %s (dp %d cp %d)", M,
                         moe_score_fn_name((moe_score_fn)sc), moe_grad_mode_name((moe_grad_mode)gm),
                         moe_dtype_name(dts[di]), l.ndp, l.ncp);
                /* every rank: its shard of micro-batch m, m = 0, 1 */
                moe_router *rd, *rr;
                RTRY(router_make(&rd, &cfg, w, &l, M));
                /* one process: micro-batch m of every replica, concatenated */
                RTRY(router_make(&rr, &cfg, w, NULL, M));
                for (int m = 0; m < M; m++) {
                    moe_tensor *x, *valid;
                    RTRY(batch_part(&x, &valid, &mb[m], l.dpr, l.cpr, l.ncp));
                    RTRY(route_once(rd, x, valid, l.ncp, M));
                    moe_tensor_release(x);
                    moe_tensor_release(valid);
                    RTRY(batch_part(&x, &valid, &mb[m], -1, 0, 1));
                    RTRY(route_once(rr, x, valid, 1, M));
                    moe_tensor_release(x);
                    moe_tensor_release(valid);
                }
                /* the buffer holds the whole step's counts, over all ranks */
                moe_tensor *cd, *cr;
                double td = 0, trk = 0;
                int64_t md = 0, mr = 0;
                RTRY(tracker_state(&cd, &td, &md, rd));
                RTRY(tracker_state(&cr, &trk, &mr, rr));
                RCHECK(md == M && mr == M, "%s: %lld and %lld micro-batches buffered", what, (long long)md,
                       (long long)mr);
                RCHECK(td == trk, "%s: %g tokens buffered, one process %g", what, td, trk);
                RTRY(close_to(cd, cr, 0, what));
                moe_tensor_release(cd);
                moe_tensor_release(cr);
                outcome got, want;
                RTRY(finish(&got, rd, l.dpcp));
                RTRY(finish(&want, rr, NULL));
                RTRY(compare(&got, &want, MOE_AUX_GLOBAL_BATCH, 1.0, tol_of(dts[di]), what));
                outcome_free(&got);
                outcome_free(&want);
            }
        for (int m = 0; m < M; m++) batch_free(&mb[m]);
        moe_tensor_release(w);
    }
    layout_free(&l);
    return MOE_OK;
}

/* ---- case: the expert-bias update ------------------------------------------------- */

/* Three optimizer steps of aux-loss-free balancing (sigmoid, bias selects):
 * counts summed over cp and dp once per step give every rank the bias one
 * process gets from the whole batch — bit for bit (f32 sign updates) — and
 * the same global counts and MaxVio; with and without centering. */
static moe_status case_expert_bias(int rank, moe_group *world, void *ctx)
{
    (void)rank;
    (void)ctx;
    layout l;
    RTRY(layout_make(&l, world));
    moe_tensor *w;
    RTRY(weight_make(&w, MOE_F32));
    for (int center = 0; center < 2; center++) {
        moe_router_config cfg;
        config_of(&cfg, MOE_F32, MOE_SCORE_SIGMOID, MOE_GRAD_INJECT, 0, NULL);
        cfg.expert_bias = true;
        cfg.bias_rate = 0.25; /* large enough to move the selection within three steps */
        cfg.bias_center = center;
        moe_router *rd, *rr;
        RTRY(router_make(&rd, &cfg, w, &l, 1));
        RTRY(router_make(&rr, &cfg, w, NULL, 1));
        double moved = 0;
        for (int step = 0; step < 3; step++) {
            batch b;
            RTRY(batch_make(&b, MOE_F32, l.ndp, 100 + step, true));
            moe_routing *o;
            moe_tensor *x, *valid;
            RTRY(batch_part(&x, &valid, &b, l.dpr, l.cpr, l.ncp));
            RTRY(moe_router_forward(&o, rd, x, valid, NULL));
            moe_routing_free(o);
            moe_tensor_release(x);
            moe_tensor_release(valid);
            RTRY(batch_part(&x, &valid, &b, -1, 0, 1));
            RTRY(moe_router_forward(&o, rr, x, valid, NULL));
            moe_routing_free(o);
            moe_tensor_release(x);
            moe_tensor_release(valid);
            batch_free(&b);
            RTRY(moe_router_step(rd));
            RTRY(moe_router_step(rr));
            moe_router_metrics md, mr;
            RTRY(moe_router_metrics_get(&md, rd));
            RTRY(moe_router_metrics_get(&mr, rr));
            char what[96];
            snprintf(what, sizeof what, "expert bias%s, step %d (dp %d cp %d)", center ? " centered" : "",
                     step + 1, l.ndp, l.ncp);
            RTRY(close_to(md.bias, mr.bias, 0, what));
            RTRY(close_to(md.tokens_per_expert_global, mr.tokens_per_expert_global, 0, what));
            RCHECK(md.max_violation_global == mr.max_violation_global, "%s: MaxVio %.17g, one process %.17g",
                   what, md.max_violation_global, mr.max_violation_global);
            RTRY(max_abs(mr.bias, &moved));
            moe_router_metrics_release(&md);
            moe_router_metrics_release(&mr);
        }
        RCHECK(moved >= 0.2, "the bias hardly moved (max |b| %g): the test would not see a wrong update", moved);
        moe_router_free(rd);
        moe_router_free(rr);
    }
    moe_tensor_release(w);
    layout_free(&l);
    return MOE_OK;
}

/* ---- case: the standalone global-batch loss ------------------------------------------- */

/* moe_load_balancing_loss('global-batch) on the rank's shard of the global
 * logits [dp·B S E] (uneven padding), tracker over dp and cp, options.group =
 * cp: the ranks' values summed over cp and averaged over dp, and each
 * rank's logit gradient of (1/dp)·L (its share of the data-parallel mean),
 * equal the micro-batch loss of the concatenated logits and its gradient. */
static moe_status case_standalone_global(int rank, moe_group *world, void *ctx)
{
    (void)ctx;
    layout l;
    RTRY(layout_make(&l, world));
    static const moe_dtype dts[] = {MOE_F64, MOE_F32};
    for (int di = 0; di < 2; di++)
        for (int sc = 0; sc < MOE_SCORE_FN_COUNT; sc++) {
            moe_rng rng;
            moe_rng_init(&rng, 31 + sc);
            moe_tensor *z64, *zall, *mask_src;
            RTRY(moe_tensor_randn(&z64, &rng, MOE_F64, MOE_CPU, 3, (int64_t[]){l.ndp * SEQS, SEQ_LEN, EXPERTS}));
            RTRY(moe_to_dtype(&zall, z64, dts[di]));
            batch mask; /* only its valid mask: the same padding as the router cases */
            RTRY(batch_make(&mask, MOE_F64, l.ndp, 1, true));
            mask_src = mask.valid;
            batch whole = {.x = zall, .valid = mask_src};
            moe_tensor *z, *valid, *L, *Ls;
            RTRY(batch_part(&z, &valid, &whole, l.dpr, l.cpr, l.ncp));
            RTRY(moe_tensor_requires_grad_(z, true));
            moe_balance_tracker *tr;
            RTRY(moe_balance_tracker_new(&tr, EXPERTS, l.dp));
            RTRY(moe_balance_tracker_add_group(tr, l.cp));
            moe_aux_options o;
            moe_aux_options_default(&o);
            o.top_k = TOP_K;
            o.score = (moe_score_fn)sc;
            o.valid = valid;
            o.group = l.cp;
            o.tracker = tr;
            RTRY(moe_load_balancing_loss(&L, MOE_AUX_GLOBAL_BATCH, z, &o));
            RTRY(moe_mul_scalar(&Ls, L, 1.0 / l.ndp));
            RTRY(moe_backward(Ls, NULL, false));
            moe_tensor *v;
            RTRY(moe_all_reduce(&v, Ls, MOE_REDUCE_SUM, world));
            /* one process: the micro-batch loss of the whole batch */
            moe_tensor *zc, *Lc;
            RTRY(moe_clone(&zc, zall));
            RTRY(moe_tensor_requires_grad_(zc, true));
            o.valid = mask_src;
            o.group = NULL;
            o.tracker = NULL;
            RTRY(moe_load_balancing_loss(&Lc, MOE_AUX_MICRO_BATCH, zc, &o));
            RTRY(moe_backward(Lc, NULL, false));
            batch grads = {.x = zc->grad};
            moe_tensor *want, *none;
            RTRY(batch_part(&want, &none, &grads, l.dpr, l.cpr, l.ncp));
            char what[96];
            snprintf(what, sizeof what, "standalone global-batch %s %s, rank %d (dp %d cp %d)",
                     moe_score_fn_name((moe_score_fn)sc), moe_dtype_name(dts[di]), rank, l.ndp, l.ncp);
            double got_v, want_v;
            RTRY(moe_tensor_item(v, &got_v));
            RTRY(moe_tensor_item(Lc, &want_v));
            RCHECK(fabs(got_v - want_v) <= tol_of(dts[di]), "%s: value %.17g, one process %.17g", what, got_v,
                   want_v);
            RTRY(close_to(z->grad, want, tol_of(dts[di]), what));
            double big;
            RTRY(max_abs(want, &big));
            RCHECK(big > 1e-4, "%s: the reference gradient is ~0", what);
            moe_balance_tracker_free(tr);
            moe_tensor *rel[] = {z64, zall, z, valid, L, Ls, v, zc, Lc, want};
            for (size_t i = 0; i < sizeof rel / sizeof *rel; i++) moe_tensor_release(rel[i]);
            batch_free(&mask);
        }
    layout_free(&l);
    return MOE_OK;
}

const dist_case balance_cases[] = {
    {"balance_variants", case_variants},
    {"balance_standalone_global", case_standalone_global},
    {"balance_global_buffer", case_global_buffer},
    {"balance_expert_bias", case_expert_bias},
    {NULL, NULL},
};
