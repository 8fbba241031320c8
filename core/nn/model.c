/* model.c — the MoE transformer: configuration, parameters by name and
 * their initialisation, forward, loss, and the per-step calls (see model.h).
 *
 * Dimension letters: B batch, S sequence, V vocabulary, D hidden, H heads,
 * KV kv heads, hd head dim, F expert ffn, Fd dense ffn, E experts, K top-k,
 * L layers. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../dist/comm.h"
#include "block.h"
#include "internal.h"
#include "rope.h"

/* A router buffer goes through its router's setter (which checks and
 * converts it); everything else is set by its layer or copied in place. */
typedef enum { SLOT_TENSOR, SLOT_EXPERT_BIAS, SLOT_QB_BETA } slot_kind;

/* One named tensor: a parameter or a buffer. */
typedef struct slot {
    char name[96];
    moe_tensor *t;   /* the live tensor (owned by the model, a block or an MoE layer) */
    moe_layer *moe;  /* set through this MoE layer (NULL: copied in place) */
    char sub[48];    /* the name inside the MoE layer */
    slot_kind kind;  /* how a new value is set */
} slot;

struct moe_model {
    moe_model_config cfg;
    moe_tensor *embed, *norm, *lm_head; /* [V D] [D] [V D] (NULL when tied) */
    moe_block *blocks;                  /* [L]; only [first, last) are filled */
    int64_t first, last;                /* the layers held (the stage) */
    moe_tensor *cos, *sin;              /* RoPE tables [max_seq hd/2] f64 */
    slot *params, *buffers;
    int n_params, n_buffers;
    moe_layer **moe;                    /* the MoE layers, in layer order */
    int64_t *moe_layer_of;              /* their layer numbers */
    int n_moe;
    int64_t moe_total;                  /* MoE layers of the whole model (MegaBlocks' L) */
    int64_t grad_accum;                 /* the routers' M (moe_model_set_grad_accum) */
    bool training;
};

void moe_model_config_default(moe_model_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->vocab = 256;
    cfg->layers = 4;
    cfg->hidden = 256;
    cfg->heads = 4;
    cfg->kv_heads = 4;
    cfg->ffn = 512;
    cfg->experts = 8;
    cfg->top_k = 2;
    cfg->moe_every = 1;
    cfg->first_dense = 0;
    cfg->dense_ffn = 1024;
    cfg->max_seq = 256;
    cfg->rope_theta = 10000.0;
    cfg->norm_eps = 1e-5;
    cfg->init_std = 0.02;
    moe_router_config_default(&cfg->router);
    moe_router_config_set_losses(&cfg->router, 2,
                                 (moe_aux_term[]){{MOE_AUX_MICRO_BATCH, 1e-2}, {MOE_AUX_Z, 1e-3}});
    cfg->attention = MOE_ATTENTION_FUSED;
    cfg->dtype = MOE_F32;
    cfg->device = MOE_CPU;
}

bool moe_model_layer_is_moe(const moe_model_config *cfg, int64_t ell)
{
    return ell >= cfg->first_dense && cfg->moe_every > 0 && (ell - cfg->first_dense) % cfg->moe_every == 0;
}

const moe_model_config *moe_model_get_config(const moe_model *m) { return &m->cfg; }

/* ---- configuration checks -------------------------------------------------------------- */

static moe_status validate(const moe_model_config *c)
{
    static const char *op = "make-moe-transformer";
    struct {
        const char *key;
        int64_t v;
    } sizes[] = {{"vocab", c->vocab},       {"layers", c->layers},   {"hidden", c->hidden},
                 {"heads", c->heads},       {"kv-heads", c->kv_heads}, {"max-seq", c->max_seq},
                 {"moe-every", c->moe_every}};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
        if (sizes[i].v < 1)
            return moe_fail(MOE_ERR_ARG, op, "#:%s must be >= 1, got %lld", sizes[i].key, (long long)sizes[i].v);
    if (c->first_dense < 0 || c->shared_experts < 0 || c->shared_ffn < 0)
        return moe_fail(MOE_ERR_ARG, op, "#:first-dense, #:shared-experts and #:shared-ffn must be >= 0, got %lld %lld %lld",
                        (long long)c->first_dense, (long long)c->shared_experts, (long long)c->shared_ffn);
    if (c->hidden % c->heads)
        return moe_fail(MOE_ERR_ARG, op, "#:heads %lld does not divide #:hidden %lld", (long long)c->heads,
                        (long long)c->hidden);
    if (c->heads % c->kv_heads)
        return moe_fail(MOE_ERR_ARG, op, "#:kv-heads %lld does not divide #:heads %lld", (long long)c->kv_heads,
                        (long long)c->heads);
    int64_t hd = c->hidden / c->heads;
    if (hd % 2)
        return moe_fail(MOE_ERR_ARG, op, "the head dim #:hidden/#:heads = %lld/%lld = %lld must be even (RoPE pairs)",
                        (long long)c->hidden, (long long)c->heads, (long long)hd);
    bool any_moe = false, any_dense = false;
    for (int64_t l = 0; l < c->layers; l++) {
        if (moe_model_layer_is_moe(c, l)) any_moe = true;
        else any_dense = true;
    }
    if (any_moe && (c->ffn < 1 || c->experts < 1 || c->top_k < 1))
        return moe_fail(MOE_ERR_ARG, op, "#:ffn, #:experts and #:top-k must be >= 1, got %lld %lld %lld",
                        (long long)c->ffn, (long long)c->experts, (long long)c->top_k);
    if (any_dense && c->dense_ffn < 1)
        return moe_fail(MOE_ERR_ARG, op, "#:dense-ffn must be >= 1, got %lld", (long long)c->dense_ffn);
    if (!(c->rope_theta > 0) || !(c->norm_eps > 0) || !(c->init_std >= 0))
        return moe_fail(MOE_ERR_ARG, op, "#:rope-theta and #:norm-eps must be > 0 and #:init-std >= 0, got %g %g %g",
                        c->rope_theta, c->norm_eps, c->init_std);
    if (c->dtype != MOE_F32 && c->dtype != MOE_F64)
        return moe_fail(MOE_ERR_DTYPE, op, "#:dtype must be f32 or f64, got %s", moe_dtype_name(c->dtype));
    if (c->device != MOE_CPU)
        return moe_fail(MOE_ERR_UNSUPPORTED, op, "#:device %s: the model runs on the cpu only for now",
                        moe_device_name(c->device));
    if ((unsigned)c->attention >= MOE_ATTENTION_IMPL_COUNT)
        return moe_fail(MOE_ERR_ARG, op, "unknown attention implementation %d", (int)c->attention);
    bool whole = c->stage_first == 0 && c->stage_last == 0;
    if (!whole && !(c->stage_first >= 0 && c->stage_first < c->stage_last && c->stage_last <= c->layers))
        return moe_fail(MOE_ERR_ARG, op, "#:stage (%lld . %lld) must hold layers [first, last) with 0 <= first < last <= #:layers %lld",
                        (long long)c->stage_first, (long long)c->stage_last, (long long)c->layers);
    if (c->tie_embeddings && !whole && !(c->stage_first == 0 && c->stage_last == c->layers))
        return moe_fail(MOE_ERR_ARG, op, "#:tie-embeddings? with #:stage (%lld . %lld) of %lld layers: the tied matrix "
                        "\"embed\" is the first stage's embedding and the last stage's lm-head, so it would live on two "
                        "stages (untie the embeddings to split the model)",
                        (long long)c->stage_first, (long long)c->stage_last, (long long)c->layers);
    int ep = moe_group_size(c->ep_group);
    if (any_moe && c->experts % ep)
        return moe_fail(MOE_ERR_ARG, op, "#:experts %lld is not a multiple of the ep group's size %d (each rank holds "
                        "E/ep experts)", (long long)c->experts, ep);
    return MOE_OK;
}

/* ---- the parameter table ----------------------------------------------------------------- */

static moe_status add_slot(slot **tab, int *n, int *cap, const char *name, moe_tensor *t, moe_layer *moe,
                           const char *sub, slot_kind kind)
{
    if (*n == *cap) {
        int c = *cap ? 2 * *cap : 32;
        slot *g = realloc(*tab, sizeof *g * (size_t)c);
        if (!g) return moe_fail(MOE_ERR_NOMEM, "make-moe-transformer", "out of memory");
        *tab = g;
        *cap = c;
    }
    slot *s = &(*tab)[(*n)++];
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
    if (sub) snprintf(s->sub, sizeof s->sub, "%s", sub);
    s->t = t;
    s->moe = moe;
    s->kind = kind;
    return MOE_OK;
}

static moe_status build_tables(moe_model *m)
{
    int pcap = 0, bcap = 0;
    char name[96];
#define PARAM(t, ...)                                                                              \
    do {                                                                                           \
        snprintf(name, sizeof name, __VA_ARGS__);                                                  \
        MOE_TRY(add_slot(&m->params, &m->n_params, &pcap, name, (t), NULL, NULL, SLOT_TENSOR));         \
    } while (0)
    if (m->embed) PARAM(m->embed, "embed");
    for (int64_t l = m->first; l < m->last; l++) {
        moe_block *b = &m->blocks[l];
        long long ll = (long long)l;
        PARAM(b->attn_norm, "layers.%lld.attn-norm", ll);
        PARAM(b->wq, "layers.%lld.attn.wq", ll);
        PARAM(b->wk, "layers.%lld.attn.wk", ll);
        PARAM(b->wv, "layers.%lld.attn.wv", ll);
        PARAM(b->wo, "layers.%lld.attn.wo", ll);
        PARAM(b->ffn_norm, "layers.%lld.ffn-norm", ll);
        if (b->moe) {
            for (int i = 0, n = moe_layer_parameter_count(b->moe); i < n; i++) {
                const char *sub;
                moe_tensor *t;
                MOE_TRY(moe_layer_parameter(b->moe, i, &sub, &t));
                snprintf(name, sizeof name, "layers.%lld.moe.%s", ll, sub);
                MOE_TRY(add_slot(&m->params, &m->n_params, &pcap, name, t, b->moe, sub, SLOT_TENSOR));
            }
            moe_router *r = moe_layer_router(b->moe);
            moe_tensor *bias = moe_router_bias(r), *beta = moe_router_qb_beta(r);
            if (bias) {
                snprintf(name, sizeof name, "layers.%lld.moe.router.expert-bias", ll);
                MOE_TRY(add_slot(&m->buffers, &m->n_buffers, &bcap, name, bias, b->moe, NULL, SLOT_EXPERT_BIAS));
            }
            if (beta) {
                snprintf(name, sizeof name, "layers.%lld.moe.router.qb-beta", ll);
                MOE_TRY(add_slot(&m->buffers, &m->n_buffers, &bcap, name, beta, b->moe, NULL, SLOT_QB_BETA));
            }
        } else {
            PARAM(b->w_gate, "layers.%lld.mlp.w-gate", ll);
            PARAM(b->w_up, "layers.%lld.mlp.w-up", ll);
            PARAM(b->w_down, "layers.%lld.mlp.w-down", ll);
        }
    }
    if (m->norm) PARAM(m->norm, "norm");
    if (m->lm_head) PARAM(m->lm_head, "lm-head");
#undef PARAM
    return MOE_OK;
}

static slot *find_slot(const moe_model *m, const char *name)
{
    for (int i = 0; name && i < m->n_params; i++)
        if (strcmp(m->params[i].name, name) == 0) return &m->params[i];
    for (int i = 0; name && i < m->n_buffers; i++)
        if (strcmp(m->buffers[i].name, name) == 0) return &m->buffers[i];
    return NULL;
}

/* ---- initialisation ------------------------------------------------------------------------ */

static uint64_t name_hash(const char *s) /* FNV-1a */
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Fill parameter S: norms 1; matrices N(0, std²) from the stream of its
 * name, the residual outputs scaled by 1/√(2L). An expert shard [El ...]
 * starts its draw where its first expert starts in the full [E ...] tensor
 * (two counters per normal draw), so it holds exactly those rows. */
static moe_status init_slot(const moe_model *m, slot *s)
{
    const moe_model_config *c = &m->cfg;
    moe_tensor *t = s->t, *r = NULL, *v = NULL;
    moe_status st = MOE_OK;
    MOE_NO_GRAD_BEGIN;
    if (ends_with(s->name, "norm")) {
        st = moe_tensor_fill_(t, 1.0);
    } else {
        double scale = c->init_std;
        if (ends_with(s->name, ".wo") || ends_with(s->name, "w-down")) scale /= sqrt(2.0 * (double)c->layers);
        moe_rng rng;
        moe_rng_init(&rng, moe_splitmix64(c->seed ^ moe_splitmix64(name_hash(s->name))));
        if (s->moe && strncmp(s->sub, "experts.", 8) == 0) {
            const moe_experts *ex = moe_layer_experts(s->moe);
            rng.offset = 2 * (uint64_t)ex->first * (uint64_t)(moe_tensor_numel(t) / ex->E);
        }
        MOE_TRYG(moe_tensor_randn(&r, &rng, c->dtype, MOE_CPU, t->ndim, t->shape));
        MOE_TRYG(moe_mul_scalar(&v, r, scale));
        st = moe_tensor_copy_(t, v);
    }
done:
    MOE_NO_GRAD_END;
    moe_tensor_release(r);
    moe_tensor_release(v);
    return st;
}

/* A zero leaf requiring grad. */
static moe_status leaf(moe_tensor **out, moe_dtype dt, int ndim, const int64_t *shape)
{
    MOE_TRY(moe_tensor_zeros(out, dt, MOE_CPU, ndim, shape));
    return moe_tensor_requires_grad_(*out, true);
}

/* The seed of layer L's MoE layer (and so of its router's streams). */
static uint64_t layer_seed(const moe_model_config *c, int64_t l)
{
    return moe_splitmix64(c->seed ^ moe_splitmix64((uint64_t)l + 1));
}

static moe_status make_block(moe_model *m, int64_t l)
{
    const moe_model_config *c = &m->cfg;
    moe_block *b = &m->blocks[l];
    moe_dtype dt = c->dtype;
    int64_t D = c->hidden, hd = D / c->heads, Hd = c->heads * hd, KVd = c->kv_heads * hd;
    MOE_TRY(leaf(&b->attn_norm, dt, 1, &D));
    MOE_TRY(leaf(&b->wq, dt, 2, (int64_t[]){Hd, D}));
    MOE_TRY(leaf(&b->wk, dt, 2, (int64_t[]){KVd, D}));
    MOE_TRY(leaf(&b->wv, dt, 2, (int64_t[]){KVd, D}));
    MOE_TRY(leaf(&b->wo, dt, 2, (int64_t[]){D, Hd}));
    MOE_TRY(leaf(&b->ffn_norm, dt, 1, &D));
    if (!moe_model_layer_is_moe(c, l)) {
        int64_t Fd = c->dense_ffn;
        MOE_TRY(leaf(&b->w_gate, dt, 2, (int64_t[]){Fd, D}));
        MOE_TRY(leaf(&b->w_up, dt, 2, (int64_t[]){Fd, D}));
        MOE_TRY(leaf(&b->w_down, dt, 2, (int64_t[]){D, Fd}));
        return MOE_OK;
    }
    moe_layer_config lc;
    moe_layer_config_default(&lc);
    lc.hidden = D;
    lc.ffn = c->ffn;
    lc.experts = c->experts;
    lc.top_k = c->top_k;
    lc.shared_experts = c->shared_experts;
    lc.shared_ffn = c->shared_ffn;
    lc.dtype = dt;
    lc.router = c->router;
    lc.router.dtype = dt;
    lc.router.num_moe_layers = m->moe_total;
    lc.seed = layer_seed(c, l);
    lc.device = c->device;
    lc.ep_group = c->ep_group;
    MOE_TRY(moe_layer_new(&b->moe, &lc));
    return moe_router_set_groups(moe_layer_router(b->moe), NULL, NULL, c->dp_group);
}

moe_status moe_model_new(moe_model **out, const moe_model_config *cfg)
{
    static const char *op = "make-moe-transformer";
    MOE_CHECK_NOT_NULL(op, out);
    *out = NULL;
    MOE_CHECK_NOT_NULL(op, cfg);
    MOE_TRY(validate(cfg));
    moe_model *m = calloc(1, sizeof *m);
    if (!m) return moe_fail(MOE_ERR_NOMEM, op, "out of memory");
    moe_status st = MOE_OK;
    m->cfg = *cfg;
    moe_group_retain(m->cfg.ep_group);
    moe_group_retain(m->cfg.dp_group);
    m->training = true;
    m->grad_accum = cfg->router.grad_accum;
    const moe_model_config *c = &m->cfg;
    int64_t L = c->layers, V = c->vocab, D = c->hidden;
    bool whole = c->stage_first == 0 && c->stage_last == 0;
    m->first = whole ? 0 : c->stage_first;
    m->last = whole ? L : c->stage_last;
    m->blocks = calloc((size_t)L, sizeof *m->blocks);
    m->moe = calloc((size_t)L, sizeof *m->moe);
    m->moe_layer_of = calloc((size_t)L, sizeof *m->moe_layer_of);
    if (!m->blocks || !m->moe || !m->moe_layer_of) {
        st = moe_fail(MOE_ERR_NOMEM, op, "out of memory");
        goto done;
    }
    for (int64_t l = 0; l < L; l++)
        if (moe_model_layer_is_moe(c, l)) m->moe_total++; /* routers learn the count (MegaBlocks' L) */
    if (m->first == 0) MOE_TRYG(leaf(&m->embed, c->dtype, 2, (int64_t[]){V, D}));
    for (int64_t l = m->first; l < m->last; l++) MOE_TRYG(make_block(m, l));
    int n = 0;
    for (int64_t l = m->first; l < m->last; l++)
        if (m->blocks[l].moe) {
            m->moe[n] = m->blocks[l].moe;
            m->moe_layer_of[n++] = l;
        }
    m->n_moe = n;
    if (m->last == L) {
        MOE_TRYG(leaf(&m->norm, c->dtype, 1, &D));
        if (!c->tie_embeddings) MOE_TRYG(leaf(&m->lm_head, c->dtype, 2, (int64_t[]){V, D}));
    }
    MOE_TRYG(moe_rope_tables(&m->cos, &m->sin, c->max_seq, D / c->heads, c->rope_theta));
    MOE_TRYG(build_tables(m));
    for (int i = 0; i < m->n_params; i++) MOE_TRYG(init_slot(m, &m->params[i]));
    *out = m;
    return MOE_OK;
done:
    moe_model_free(m);
    return st;
}

void moe_model_free(moe_model *m)
{
    if (!m) return;
    for (int64_t l = 0; m->blocks && l < m->cfg.layers; l++) moe_block_clear(&m->blocks[l]);
    free(m->blocks);
    moe_tensor_release(m->embed);
    moe_tensor_release(m->norm);
    moe_tensor_release(m->lm_head);
    moe_tensor_release(m->cos);
    moe_tensor_release(m->sin);
    free(m->params);
    free(m->buffers);
    free(m->moe);
    free(m->moe_layer_of);
    moe_group_release(m->cfg.ep_group);
    moe_group_release(m->cfg.dp_group);
    free(m);
}

/* ---- parameters by name ------------------------------------------------------------------------ */

int moe_model_parameter_count(const moe_model *m) { return m->n_params; }
int moe_model_buffer_count(const moe_model *m) { return m->n_buffers; }

static moe_status slot_at(const slot *tab, int n, int i, const char **name, moe_tensor **t, const char *what)
{
    if (i < 0 || i >= n)
        return moe_fail(MOE_ERR_INDEX, what, "index %d out of range [0, %d)", i, n);
    if (name) *name = tab[i].name;
    if (t) *t = tab[i].t;
    return MOE_OK;
}

moe_status moe_model_parameter(const moe_model *m, int i, const char **name, moe_tensor **t)
{
    return slot_at(m->params, m->n_params, i, name, t, "model-parameters");
}

moe_status moe_model_buffer(const moe_model *m, int i, const char **name, moe_tensor **t)
{
    return slot_at(m->buffers, m->n_buffers, i, name, t, "model-buffers");
}

moe_tensor *moe_model_parameter_get(const moe_model *m, const char *name)
{
    slot *s = find_slot(m, name);
    return s ? s->t : NULL;
}

/* VALUE has the shape of slot S, or S is an expert shard and VALUE the full
 * [E ...] tensor (the layer takes the rank's rows). *SHARD: S is a shard. */
static bool fits_slot(const moe_model *m, const slot *s, const moe_tensor *value, bool *shard)
{
    bool sh = s->moe && strncmp(s->sub, "experts.", 8) == 0 && moe_group_size(m->cfg.ep_group) > 1;
    bool full = sh && value->ndim == s->t->ndim && value->shape[0] == m->cfg.experts;
    for (int d = 1; full && d < value->ndim; d++) full = value->shape[d] == s->t->shape[d];
    if (shard) *shard = sh;
    return full || moe_tensor_same_shape(value, s->t);
}

bool moe_model_fits(const moe_model *m, const char *name, const moe_tensor *value)
{
    const slot *s = find_slot(m, name);
    return s && value && fits_slot(m, s, value, NULL);
}

bool moe_model_held_elsewhere(const moe_model *m, const char *name)
{
    const moe_model_config *c = &m->cfg;
    if (!name || find_slot(m, name)) return false;
    if (strcmp(name, "embed") == 0) return m->first > 0;
    if (strcmp(name, "norm") == 0 || (strcmp(name, "lm-head") == 0 && !c->tie_embeddings))
        return m->last < c->layers;
    long long l;
    int end = 0;
    if (sscanf(name, "layers.%lld.%n", &l, &end) == 1 && end > 0)
        return l >= 0 && l < c->layers && (l < m->first || l >= m->last);
    return false;
}

moe_status moe_model_set_parameter(moe_model *m, const char *name, moe_tensor *value)
{
    static const char *op = "set-model-parameter!";
    MOE_CHECK_NOT_NULL(op, value);
    slot *s = find_slot(m, name);
    if (!s) {
        const char *hint = m->cfg.tie_embeddings && name && strcmp(name, "lm-head") == 0
                               ? " (the embeddings are tied: set \"embed\")"
                               : "";
        return moe_fail(MOE_ERR_ARG, op, "no parameter or buffer named '%s' in this model%s (model-parameters lists them)",
                        name ? name : "(null)", hint);
    }
    MOE_CHECK_FLOAT(op, value);
    bool shard;
    if (!fits_slot(m, s, value, &shard))
        return moe_fail(MOE_ERR_SHAPE, op, "'%s' is %s%s, got a %s tensor", s->name, moe_shape_str(s->t),
                        shard ? " here (this rank's shard of the experts; the full [E ...] tensor also goes)" : "",
                        moe_shape_str(value));
    if (s->kind == SLOT_EXPERT_BIAS) return moe_router_set_bias(moe_layer_router(s->moe), value);
    if (s->kind == SLOT_QB_BETA) return moe_router_set_qb_beta(moe_layer_router(s->moe), value);
    if (s->moe) return moe_layer_set_parameter(s->moe, s->sub, value);
    MOE_NO_GRAD_BEGIN;
    moe_status st = moe_tensor_copy_(s->t, value);
    MOE_NO_GRAD_END;
    moe_tensor_zero_grad(s->t);
    return st;
}

void moe_model_zero_grad(moe_model *m)
{
    for (int i = 0; i < m->n_params; i++) moe_tensor_zero_grad(m->params[i].t);
}

moe_status moe_model_step(moe_model *m)
{
    for (int i = 0; i < m->n_moe; i++) MOE_TRY(moe_router_step(moe_layer_router(m->moe[i])));
    return MOE_OK;
}

void moe_model_set_training(moe_model *m, bool training)
{
    m->training = training;
    for (int i = 0; i < m->n_moe; i++) moe_layer_set_training(m->moe[i], training);
}

bool moe_model_training(const moe_model *m) { return m->training; }

moe_status moe_model_set_grad_accum(moe_model *m, int64_t grad_accum)
{
    if (grad_accum < 1)
        return moe_fail(MOE_ERR_ARG, "set-model-grad-accum!", "micro-batches per step must be >= 1, got %lld",
                        (long long)grad_accum);
    for (int i = 0; i < m->n_moe; i++)
        MOE_TRY(moe_router_set_grad_scale(moe_layer_router(m->moe[i]), grad_accum, false));
    m->grad_accum = grad_accum;
    return MOE_OK;
}

int moe_model_moe_layer_count(const moe_model *m) { return m->n_moe; }

void moe_model_stage(const moe_model *m, int64_t *first, int64_t *last)
{
    if (first) *first = m->first;
    if (last) *last = m->last;
}

void moe_model_router_config(const moe_model *m, moe_router_config *out)
{
    const moe_model_config *c = &m->cfg;
    if (m->n_moe > 0) {
        *out = *moe_router_get_config(moe_layer_router(m->moe[0]));
    } else { /* a stage without MoE layers: the options every router gets */
        *out = c->router;
        out->hidden = c->hidden;
        out->experts = c->experts;
        out->top_k = c->top_k;
        out->dtype = c->dtype;
        out->num_moe_layers = m->moe_total;
        out->grad_accum = m->grad_accum;
        out->training = m->training;
    }
    int64_t first = 0; /* the whole model's first MoE layer */
    while (first < c->layers && !moe_model_layer_is_moe(c, first)) first++;
    out->seed = layer_seed(c, first);
}

int moe_model_ep_size(const moe_model *m) { return moe_group_size(m->cfg.ep_group); }

int64_t moe_model_expert_offset(const moe_model *m)
{
    return (int64_t)moe_group_rank(m->cfg.ep_group) * (m->cfg.experts / moe_model_ep_size(m));
}

moe_layer *moe_model_moe_layer(moe_model *m, int i, int64_t *layer)
{
    if (i < 0 || i >= m->n_moe) return NULL;
    if (layer) *layer = m->moe_layer_of[i];
    return m->moe[i];
}

/* ---- forward and loss ------------------------------------------------------------------------ */

/* Integer [B S] ids on the cpu; with LIMIT_LOW..V−1 (or IGNORE) allowed. */
static moe_status check_ids(const char *op, const char *what, const moe_model *m, moe_tensor *t,
                            bool allow_ignore, int64_t ignore)
{
    MOE_CHECK_NOT_NULL(op, t);
    if (t->dtype != MOE_I64 && t->dtype != MOE_I32)
        return moe_fail(MOE_ERR_DTYPE, op, "%s must be i64 (or i32), got %s", what, moe_dtype_name(t->dtype));
    if (t->device != MOE_CPU)
        return moe_fail(MOE_ERR_DEVICE, op, "%s must be on the cpu, got %s", what, moe_device_name(t->device));
    if (t->ndim != 2 || t->shape[0] < 1 || t->shape[1] < 1)
        return moe_fail(MOE_ERR_SHAPE, op, "%s must be [B S] with B, S >= 1, got %s", what, moe_shape_str(t));
    if (t->shape[1] > m->cfg.max_seq)
        return moe_fail(MOE_ERR_SHAPE, op, "sequence length %lld exceeds #:max-seq %lld (%s %s)",
                        (long long)t->shape[1], (long long)m->cfg.max_seq, what, moe_shape_str(t));
    moe_tensor *c;
    MOE_TRY(moe_contiguous(&c, t));
    int64_t n = moe_tensor_numel(c), V = m->cfg.vocab, S = t->shape[1];
    const void *d = moe_tensor_data(c);
    moe_status st = MOE_OK;
    for (int64_t i = 0; i < n; i++) {
        int64_t v = c->dtype == MOE_I64 ? ((const int64_t *)d)[i] : ((const int32_t *)d)[i];
        if ((v < 0 || v >= V) && !(allow_ignore && v == ignore)) {
            st = moe_fail(MOE_ERR_INDEX, op, "%s[%lld %lld] = %lld is outside the vocabulary [0, %lld)%s", what,
                          (long long)(i / S), (long long)(i % S), (long long)v, (long long)V,
                          allow_ignore ? " and is not the ignore index" : "");
            break;
        }
    }
    moe_tensor_release(c);
    return st;
}

/* The input of this stage: token ids [B S] where the stage holds "embed",
 * else the hidden state [B S D] of the previous stage (the model dtype). */
static moe_status check_input(const char *op, const moe_model *m, moe_tensor *in)
{
    MOE_CHECK_NOT_NULL(op, in);
    const moe_model_config *c = &m->cfg;
    bool ids = in->dtype == MOE_I64 || in->dtype == MOE_I32;
    if (m->embed && !ids && m->last < c->layers)
        return moe_fail(MOE_ERR_DTYPE, op, "tokens must be i64 (or i32), got a %s %s tensor: this stage (layers "
                        "[%lld, %lld) of %lld) holds \"embed\" and takes token ids [B S], not a hidden state",
                        moe_dtype_name(in->dtype), moe_shape_str(in), (long long)m->first, (long long)m->last,
                        (long long)c->layers);
    if (m->embed) return check_ids(op, "tokens", m, in, false, 0);
    if (ids || in->dtype != c->dtype || in->ndim != 3 || in->shape[2] != c->hidden)
        return moe_fail(ids || in->dtype != c->dtype ? MOE_ERR_DTYPE : MOE_ERR_SHAPE, op,
                        "this stage (layers [%lld, %lld) of %lld) has no \"embed\": its input is the previous "
                        "stage's hidden state [B S %lld] (%s), got a %s %s tensor", (long long)m->first,
                        (long long)m->last, (long long)c->layers, (long long)c->hidden, moe_dtype_name(c->dtype),
                        moe_dtype_name(in->dtype), moe_shape_str(in));
    if (in->device != MOE_CPU)
        return moe_fail(MOE_ERR_DEVICE, op, "the hidden state must be on the cpu, got %s", moe_device_name(in->device));
    if (in->shape[0] < 1 || in->shape[1] < 1)
        return moe_fail(MOE_ERR_SHAPE, op, "the hidden state must be [B S %lld] with B, S >= 1, got %s",
                        (long long)c->hidden, moe_shape_str(in));
    if (in->shape[1] > c->max_seq)
        return moe_fail(MOE_ERR_SHAPE, op, "sequence length %lld exceeds #:max-seq %lld (hidden state %s)",
                        (long long)in->shape[1], (long long)c->max_seq, moe_shape_str(in));
    return MOE_OK;
}

/* The stage's output: the logits [B S V] on the stage with the head, else
 * the hidden state [B S D] after its last layer. */
static moe_status forward(moe_tensor **logits, moe_model *m, moe_tensor *input)
{
    const moe_model_config *c = &m->cfg;
    moe_tensor *x = NULL, *y = NULL, *xn = NULL;
    moe_status st = MOE_OK;
    if (m->embed) MOE_TRYG(moe_embedding(&x, m->embed, input)); /* [B S D] */
    else x = moe_tensor_retain(input);
    for (int64_t l = m->first; l < m->last; l++) {
        MOE_TRYG(moe_block_forward(&y, &m->blocks[l], c, x, m->cos, m->sin));
        moe_tensor_release(x);
        x = y;
        y = NULL;
    }
    if (!m->norm) {
        *logits = x;
        return MOE_OK;
    }
    MOE_TRYG(moe_rms_norm(&xn, x, m->norm, c->norm_eps));
    MOE_TRYG(moe_linear(logits, xn, m->lm_head ? m->lm_head : m->embed, NULL)); /* [B S V] */
done:
    moe_tensor_release(x);
    moe_tensor_release(y);
    moe_tensor_release(xn);
    return st;
}

moe_status moe_model_forward(moe_tensor **logits, moe_model *m, moe_tensor *tokens)
{
    static const char *op = "model-forward";
    MOE_CHECK_NOT_NULL(op, logits);
    *logits = NULL;
    MOE_CHECK_NOT_NULL(op, m);
    MOE_TRY(check_input(op, m, tokens));
    return forward(logits, m, tokens);
}

moe_status moe_model_loss(moe_tensor **loss, moe_model *m, moe_tensor *tokens, moe_tensor *targets,
                          int64_t ignore_index)
{
    static const char *op = "model-loss";
    MOE_CHECK_NOT_NULL(op, loss);
    *loss = NULL;
    MOE_CHECK_NOT_NULL(op, m);
    if (!m->norm)
        return moe_fail(MOE_ERR_STATE, op, "this stage holds layers [%lld, %lld) of %lld and not the head (\"norm\", "
                        "\"lm-head\"): only the last stage computes the loss (model-forward gives this stage's "
                        "hidden state)", (long long)m->first, (long long)m->last, (long long)m->cfg.layers);
    MOE_TRY(check_input(op, m, tokens));
    MOE_TRY(check_ids(op, "targets", m, targets, true, ignore_index));
    if (targets->shape[0] != tokens->shape[0] || targets->shape[1] != tokens->shape[1])
        return moe_fail(MOE_ERR_SHAPE, op, "targets %s must be [B S] of the %s %s", moe_shape_str(targets),
                        m->embed ? "tokens" : "hidden state", moe_shape_str(tokens));
    int64_t T = moe_tensor_numel(targets), V = m->cfg.vocab, s2[2] = {T, V};
    moe_tensor *logits = NULL, *l2 = NULL, *t1 = NULL, *ce = NULL, *sum = NULL;
    moe_status st = MOE_OK;
    MOE_TRYG(forward(&logits, m, tokens));
    MOE_TRYG(moe_reshape(&l2, logits, 2, s2));
    MOE_TRYG(moe_reshape(&t1, targets, 1, &T));
    MOE_TRYG(moe_cross_entropy(&ce, l2, t1, ignore_index));
    for (int i = 0; i < m->n_moe; i++) {
        const moe_routing *r = moe_layer_last_routing(m->moe[i]);
        const moe_router_config *rc = moe_router_get_config(moe_layer_router(m->moe[i]));
        if (rc->grad_mode != MOE_GRAD_ADD || !r || r->n_aux == 0 || !r->aux_total) continue;
        MOE_TRYG(moe_add(&sum, ce, r->aux_total));
        moe_tensor_release(ce);
        ce = sum;
        sum = NULL;
    }
    *loss = ce;
    ce = NULL;
done:
    moe_tensor_release(logits);
    moe_tensor_release(l2);
    moe_tensor_release(t1);
    moe_tensor_release(ce);
    moe_tensor_release(sum);
    return st;
}

/* ---- FLOPs ------------------------------------------------------------------------------------ */

double moe_model_flops(const moe_model *m, int64_t B, int64_t S, bool backward)
{
    const moe_model_config *c = &m->cfg;
    double T = (double)B * (double)S, D = (double)c->hidden, hd = D / (double)c->heads;
    double H = (double)c->heads, KV = (double)c->kv_heads, f = 0;
    double Fs = (double)(c->shared_ffn ? c->shared_ffn : c->shared_experts * c->ffn);
    double keys = c->max_seq > 0 ? (double)S * (double)(S + 1) / 2 : 0; /* causal pairs per sequence */
    for (int64_t l = 0; l < c->layers; l++) {
        f += 2 * T * D * hd * (2 * H + 2 * KV);        /* q, k, v, o projections */
        f += 2 * 2 * (double)B * H * keys * hd;         /* q·k and p·v */
        if (moe_model_layer_is_moe(c, l))
            f += 2 * T * (D * (double)c->experts + 3 * D * (double)c->ffn * (double)c->top_k + 3 * D * Fs);
        else
            f += 2 * T * 3 * D * (double)c->dense_ffn;
    }
    f += 2 * T * D * (double)c->vocab; /* logits */
    return backward ? 3 * f : f;
}
