/* dataset.c — domains read and packed into token streams, sequences cut from
 * them, and the seeded sampler that batches them (see dataset.h).
 *
 * Dimension letters: B rows, S tokens per row, D domains. */
#include "dataset.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../../kernels/cpu/random.h"
#include "../../kernels/rng.h"
#include "../../kernels/cpu/tokens.h"
#include "source.h"
#include "tokfile.h"
#include "../names.h"

NAME_TABLE(moe_batching, batching, MOE_BATCHING_COUNT, [MOE_BATCHING_SHUFFLED] = "shuffled",
           [MOE_BATCHING_SINGLE_DOMAIN] = "single-domain")
NAME_TABLE(moe_data_split, data_split, MOE_DATA_SPLIT_COUNT, [MOE_DATA_TRAIN] = "train", [MOE_DATA_VAL] = "val")

void moe_dataset_config_default(moe_dataset_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->seq_len = 256;
    cfg->split = MOE_DATA_TRAIN;
    cfg->batching = MOE_BATCHING_SHUFFLED;
    cfg->shuffle = true;
}

typedef struct domain {
    char *name;
    uint32_t *tokens; /* [n_tokens] the packed stream */
    int64_t n_tokens, files, documents, sequences;
    uint32_t *order;  /* [sequences] this epoch's visiting order (NULL: file order) */
    int64_t epoch, cursor;
    double prob, cum;
} domain;

struct moe_dataset {
    moe_tokenizer *tokenizer;
    int64_t S, vocab;
    moe_data_split split;
    moe_batching batching;
    bool shuffle;
    uint64_t config_seed, seed, draws;
    int D;
    domain *domains; /* [D] */
};

/* ---- reading a domain --------------------------------------------------------- */

typedef struct stream {
    uint32_t *v;
    int64_t n, cap;
} stream;

static moe_status append(stream *s, const uint32_t *ids, int64_t n, const char *op)
{
    if (s->n + n > s->cap) {
        int64_t cap = s->cap ? s->cap : 4096;
        while (cap < s->n + n) cap *= 2;
        uint32_t *v = realloc(s->v, (size_t)cap * sizeof *v);
        if (!v) return moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes packing %lld tokens", (size_t)cap * sizeof *v, (long long)(s->n + n));
        s->v = v;
        s->cap = cap;
    }
    memcpy(s->v + s->n, ids, (size_t)n * sizeof *ids);
    s->n += n;
    return MOE_OK;
}

/* SPEC, or SPEC/<split> when SPEC is a directory holding that entry (new string). */
static char *split_path(const char *spec, moe_data_split split)
{
    struct stat sb;
    size_t len = strlen(spec) + strlen(data_split_names[split]) + 2;
    char *path = malloc(len);
    if (!path) return NULL;
    snprintf(path, len, "%s/%s", spec, data_split_names[split]);
    if (stat(spec, &sb) == 0 && S_ISDIR(sb.st_mode) && stat(path, &sb) == 0) return path;
    snprintf(path, len, "%s", spec);
    return path;
}

static moe_status add_token_file(stream *s, domain *d, const char *path, moe_tokfile_format f, int64_t vocab,
                                 const char *op)
{
    uint32_t *ids;
    int64_t n;
    MOE_TRY(moe_tokfile_read(&ids, &n, path, f, op));
    int64_t bad = moe_cpu_tokens_find_outside(ids, n, vocab);
    if (bad >= 0) {
        moe_status st = moe_fail(MOE_ERR_VALUE, op,
                                 "'%s' (domain '%s'): token %u at position %lld is outside the "
                                 "tokenizer's vocabulary of %lld",
                                 path, d->name, (unsigned)ids[bad], (long long)bad, (long long)vocab);
        free(ids);
        return st;
    }
    moe_status st = append(s, ids, n, op);
    free(ids);
    d->documents++;
    return st;
}

static moe_status add_text_file(stream *s, domain *d, const char *path, const moe_tokenizer *tok,
                                const char *op)
{
    char *data;
    size_t len, pos = 0, doc_len;
    const char *doc;
    MOE_TRY(moe_read_file(&data, &len, path, op));
    uint32_t end = (uint32_t)moe_tokenizer_end_id(tok);
    bool has_end = moe_tokenizer_end_id(tok) >= 0;
    moe_status st = MOE_OK;
    while (st == MOE_OK && moe_next_document(data, len, &pos, &doc, &doc_len)) {
        uint32_t *ids;
        int64_t n;
        st = moe_tokenizer_encode(tok, doc, doc_len, &ids, &n, op);
        if (st != MOE_OK) { /* say which file: the message is copied before it is rewritten */
            char why[512];
            snprintf(why, sizeof why, "%s", moe_last_error());
            st = moe_fail(st, op, "'%s' (domain '%s'): %s", path, d->name, why);
            break;
        }
        st = append(s, ids, n, op);
        free(ids);
        if (st == MOE_OK && has_end) st = append(s, &end, 1, op);
        d->documents++;
    }
    free(data);
    return st;
}

static moe_status read_domain(domain *d, const moe_dataset_domain *spec, const moe_dataset *ds, const char *op)
{
    char what[256];
    snprintf(what, sizeof what, "(domain '%s')", spec->name);
    moe_file_list files = {0};
    moe_status st = MOE_OK;
    char *first = NULL; /* the first resolved spec, for the empty-domain message */
    for (int i = 0; i < spec->n_sources && st == MOE_OK; i++) {
        char *path = split_path(spec->sources[i], ds->split);
        if (!path) {
            st = moe_fail(MOE_ERR_NOMEM, op, "out of memory for the path of '%s' %s", spec->sources[i], what);
            break;
        }
        st = moe_file_list_add(&files, path, op, what);
        if (!first) first = path;
        else free(path);
    }
    stream s = {0};
    for (int64_t i = 0; i < files.n && st == MOE_OK; i++) {
        moe_tokfile_format f;
        if (moe_tokfile_format_of_path(files.paths[i], &f))
            st = add_token_file(&s, d, files.paths[i], f, ds->vocab, op);
        else
            st = add_text_file(&s, d, files.paths[i], ds->tokenizer, op);
    }
    d->files = files.n;
    moe_file_list_free(&files);
    if (st == MOE_OK && s.n == 0)
        st = moe_fail(MOE_ERR_VALUE, op, "domain '%s' is empty: '%s' holds no documents", spec->name,
                      first ? first : "?");
    else if (st == MOE_OK && s.n < ds->S + 1)
        st = moe_fail(MOE_ERR_VALUE, op,
                      "domain '%s' has %lld tokens in '%s', fewer than one sequence needs (seq-len + 1 = %lld)",
                      spec->name, (long long)s.n, first ? first : "?", (long long)(ds->S + 1));
    free(first);
    if (st != MOE_OK) {
        free(s.v);
        return st;
    }
    d->tokens = s.v;
    d->n_tokens = s.n;
    d->sequences = (s.n - 1) / ds->S;
    return MOE_OK;
}

/* ---- the sampler ---------------------------------------------------------- */

/* Domain DI's visiting order for its current epoch: a Fisher–Yates shuffle
 * drawn from a stream of its own (seed, domain), counter (epoch, position). */
static void build_order(moe_dataset *ds, int di)
{
    domain *d = &ds->domains[di];
    if (!d->order) return;
    uint64_t stream_seed = ds->seed + MOE_SPLITMIX64_GAMMA * (uint64_t)(di + 1);
    moe_cpu_shuffle(d->order, d->sequences, stream_seed, (uint64_t)d->epoch << 32);
}

/* One mixture draw: a domain with probability p_d. */
static int draw_domain(moe_dataset *ds)
{
    double u = moe_rng_uniform(ds->seed, ds->draws++);
    int last = 0;
    for (int d = 0; d < ds->D; d++) {
        if (ds->domains[d].prob <= 0) continue;
        last = d;
        if (u < ds->domains[d].cum) return d;
    }
    return last; /* rounding in the last cumulative sum */
}

/* The next sequence of domain DI into TOKENS [S] and TARGETS [S]. */
static void next_sequence(moe_dataset *ds, int di, int64_t *tokens, int64_t *targets)
{
    domain *d = &ds->domains[di];
    if (d->cursor >= d->sequences) {
        d->epoch++;
        d->cursor = 0;
        build_order(ds, di);
    }
    int64_t j = d->order ? d->order[d->cursor] : d->cursor;
    d->cursor++;
    const uint32_t *src = d->tokens + j * ds->S;
    moe_cpu_tokens_widen(tokens, src, ds->S);
    moe_cpu_tokens_widen(targets, src + 1, ds->S); /* the next token of each */
}

/* ---- construction ------------------------------------------------------------ */

static moe_status check_config(const moe_dataset_config *cfg, const char *op)
{
    if (cfg->n_domains < 1 || !cfg->domains) return moe_fail(MOE_ERR_ARG, op, "no domains given");
    if (cfg->seq_len < 1) return moe_fail(MOE_ERR_ARG, op, "#:seq-len must be >= 1, got %lld", (long long)cfg->seq_len);
    if ((unsigned)cfg->split >= MOE_DATA_SPLIT_COUNT) return moe_fail(MOE_ERR_ARG, op, "unknown split %d", (int)cfg->split);
    if ((unsigned)cfg->batching >= MOE_BATCHING_COUNT)
        return moe_fail(MOE_ERR_ARG, op, "unknown batching %d", (int)cfg->batching);
    for (int i = 0; i < cfg->n_domains; i++) {
        const moe_dataset_domain *d = &cfg->domains[i];
        if (!d->name || !*d->name) return moe_fail(MOE_ERR_ARG, op, "domain %d has no name", i);
        if (d->n_sources < 1) return moe_fail(MOE_ERR_ARG, op, "domain '%s' has no sources", d->name);
        for (int j = 0; j < i; j++)
            if (strcmp(cfg->domains[j].name, d->name) == 0)
                return moe_fail(MOE_ERR_ARG, op, "domain '%s' is named twice", d->name);
    }
    if (cfg->weights) {
        double sum = 0;
        for (int i = 0; i < cfg->n_domains; i++) {
            double w = cfg->weights[i];
            if (!isfinite(w) || w < 0)
                return moe_fail(MOE_ERR_ARG, op, "weight of domain '%s' must be finite and >= 0, got %g",
                                cfg->domains[i].name, w);
            sum += w;
        }
        if (!(sum > 0)) return moe_fail(MOE_ERR_ARG, op, "the domain weights are all zero");
    }
    return MOE_OK;
}

moe_status moe_dataset_new(moe_dataset **out, const moe_dataset_config *cfg)
{
    const char *op = cfg->op ? cfg->op : "make-text-dataset";
    MOE_TRY(check_config(cfg, op));
    moe_dataset *ds = calloc(1, sizeof *ds);
    domain *doms = calloc((size_t)cfg->n_domains, sizeof *doms);
    if (!ds || !doms) {
        free(ds);
        free(doms);
        return moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of a dataset of %d domains",
                        sizeof *ds + (size_t)cfg->n_domains * sizeof *doms, cfg->n_domains);
    }
    ds->domains = doms;
    ds->D = cfg->n_domains;
    ds->S = cfg->seq_len;
    ds->split = cfg->split;
    ds->batching = cfg->batching;
    ds->shuffle = cfg->shuffle;
    ds->seed = ds->config_seed = cfg->seed;
    moe_status st = MOE_OK;
    if (cfg->tokenizer) ds->tokenizer = moe_tokenizer_retain(cfg->tokenizer);
    else st = moe_tokenizer_new_bytes(&ds->tokenizer);
    if (st == MOE_OK) ds->vocab = moe_tokenizer_vocab_size(ds->tokenizer);
    for (int i = 0; i < ds->D && st == MOE_OK; i++) {
        domain *d = &doms[i];
        if (!(d->name = strdup(cfg->domains[i].name)))
            st = moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of a domain name", strlen(cfg->domains[i].name) + 1);
        if (st == MOE_OK) st = read_domain(d, &cfg->domains[i], ds, op);
        if (st == MOE_OK && d->sequences > (int64_t)UINT32_MAX)
            st = moe_fail(MOE_ERR_VALUE, op, "domain '%s' has %lld sequences, more than 2^32", d->name,
                          (long long)d->sequences);
        if (st == MOE_OK && ds->shuffle && !(d->order = malloc((size_t)d->sequences * sizeof *d->order)))
            st = moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of the visiting order of domain '%s'",
                          (size_t)d->sequences * sizeof *d->order, d->name);
    }
    if (st != MOE_OK) {
        moe_dataset_free(ds);
        return st;
    }
    double total = 0, cum = 0;
    for (int i = 0; i < ds->D; i++) total += cfg->weights ? cfg->weights[i] : (double)doms[i].n_tokens;
    for (int i = 0; i < ds->D; i++) {
        doms[i].prob = (cfg->weights ? cfg->weights[i] : (double)doms[i].n_tokens) / total;
        doms[i].cum = (cum += doms[i].prob);
    }
    moe_dataset_reset(ds);
    *out = ds;
    return MOE_OK;
}

void moe_dataset_free(moe_dataset *ds)
{
    if (!ds) return;
    for (int i = 0; i < ds->D; i++) {
        free(ds->domains[i].name);
        free(ds->domains[i].tokens);
        free(ds->domains[i].order);
    }
    free(ds->domains);
    moe_tokenizer_release(ds->tokenizer);
    free(ds);
}

/* ---- accessors ------------------------------------------------------------------ */

int moe_dataset_domain_count(const moe_dataset *ds) { return ds->D; }
const char *moe_dataset_domain_name(const moe_dataset *ds, int d)
{
    return d >= 0 && d < ds->D ? ds->domains[d].name : NULL;
}
int moe_dataset_domain_index(const moe_dataset *ds, const char *name)
{
    for (int d = 0; d < ds->D; d++)
        if (strcmp(ds->domains[d].name, name) == 0) return d;
    return -1;
}
int64_t moe_dataset_vocab_size(const moe_dataset *ds) { return ds->vocab; }
int64_t moe_dataset_seq_len(const moe_dataset *ds) { return ds->S; }
moe_batching moe_dataset_get_batching(const moe_dataset *ds) { return ds->batching; }
moe_data_split moe_dataset_get_split(const moe_dataset *ds) { return ds->split; }
const moe_tokenizer *moe_dataset_tokenizer(const moe_dataset *ds) { return ds->tokenizer; }

void moe_dataset_domain_stats_get(const moe_dataset *ds, int d, moe_dataset_domain_stats *out)
{
    memset(out, 0, sizeof *out);
    if (d < 0 || d >= ds->D) return;
    const domain *x = &ds->domains[d];
    *out = (moe_dataset_domain_stats){x->files, x->documents, x->n_tokens, x->sequences, x->prob};
}

/* ---- batches ------------------------------------------------------------------------ */

static moe_status check_out(const moe_tensor *t, const char *what, const moe_dataset *ds, const char *op)
{
    if (!t) return moe_fail(MOE_ERR_ARG, op, "no %s tensor", what);
    if (t->dtype != MOE_I64 || t->device != MOE_CPU || t->ndim != 2 || !moe_tensor_is_contiguous(t))
        return moe_fail(MOE_ERR_SHAPE, op, "%s must be a contiguous cpu i64 [B %lld] tensor, got %s %s", what,
                        (long long)ds->S, moe_dtype_name(t->dtype), moe_shape_str(t));
    if (t->shape[1] != ds->S || t->shape[0] < 1)
        return moe_fail(MOE_ERR_SHAPE, op, "%s must be [B %lld] with B >= 1, got %s", what, (long long)ds->S,
                        moe_shape_str(t));
    return MOE_OK;
}

static moe_status check_domain(const moe_dataset *ds, int domain, const char *op)
{
    if (domain < -1 || domain >= ds->D)
        return moe_fail(MOE_ERR_INDEX, op, "domain index %d is outside [0, %d)", domain, ds->D);
    return MOE_OK;
}

moe_status moe_dataset_next_batch_into(moe_tensor *tokens, moe_tensor *targets, int32_t *row_domain,
                                       moe_dataset *ds, int domain)
{
    const char *op = "dataset-next-batch";
    MOE_TRY(check_out(tokens, "tokens", ds, op));
    MOE_TRY(check_out(targets, "targets", ds, op));
    if (tokens->shape[0] != targets->shape[0] || tokens->storage == targets->storage)
        return moe_fail(MOE_ERR_SHAPE, op, "tokens %s and targets %s must be distinct tensors of one shape",
                        moe_shape_str(tokens), moe_shape_str(targets));
    MOE_TRY(check_domain(ds, domain, op));
    int64_t B = tokens->shape[0];
    int64_t *x = moe_tensor_data(tokens), *y = moe_tensor_data(targets);
    int batch_domain = domain >= 0 ? domain : ds->batching == MOE_BATCHING_SINGLE_DOMAIN ? draw_domain(ds) : -1;
    for (int64_t b = 0; b < B; b++) {
        int d = batch_domain >= 0 ? batch_domain : draw_domain(ds);
        next_sequence(ds, d, x + b * ds->S, y + b * ds->S);
        if (row_domain) row_domain[b] = d;
    }
    return MOE_OK;
}

moe_status moe_dataset_next_batch(moe_tensor **tokens, moe_tensor **targets, int32_t *row_domain,
                                  moe_dataset *ds, int64_t B, int domain)
{
    const char *op = "dataset-next-batch";
    if (B < 1) return moe_fail(MOE_ERR_ARG, op, "batch size must be >= 1, got %lld", (long long)B);
    MOE_TRY(check_domain(ds, domain, op));
    moe_tensor *x = NULL, *y = NULL;
    int64_t shape[2] = {B, ds->S};
    moe_status st = moe_tensor_empty(&x, MOE_I64, MOE_CPU, 2, shape);
    if (st == MOE_OK) st = moe_tensor_empty(&y, MOE_I64, MOE_CPU, 2, shape);
    if (st == MOE_OK) st = moe_dataset_next_batch_into(x, y, row_domain, ds, domain);
    if (st != MOE_OK) {
        moe_tensor_release(x);
        moe_tensor_release(y);
        return st;
    }
    *tokens = x;
    *targets = y;
    return MOE_OK;
}

/* ---- state ------------------------------------------------------------------------- */

int64_t moe_dataset_state_size(const moe_dataset *ds) { return 4 + 3 * (int64_t)ds->D; }

void moe_dataset_get_state(const moe_dataset *ds, int64_t *state)
{
    state[0] = (int64_t)ds->seed;
    state[1] = (int64_t)ds->draws;
    state[2] = ds->S;
    state[3] = ds->D;
    for (int d = 0; d < ds->D; d++) {
        state[4 + 3 * d] = ds->domains[d].epoch;
        state[5 + 3 * d] = ds->domains[d].cursor;
        state[6 + 3 * d] = ds->domains[d].sequences;
    }
}

moe_status moe_dataset_set_state(moe_dataset *ds, const int64_t *state, int64_t n)
{
    const char *op = "dataset-load-state!";
    if (n != moe_dataset_state_size(ds) || n < 4 || state[3] != ds->D)
        return moe_fail(MOE_ERR_ARG, op, "the state is for %lld domains; this dataset has %d",
                        n >= 4 ? (long long)state[3] : -1LL, ds->D);
    if (state[2] != ds->S)
        return moe_fail(MOE_ERR_ARG, op, "the state is for seq-len %lld; this dataset's is %lld",
                        (long long)state[2], (long long)ds->S);
    for (int d = 0; d < ds->D; d++) {
        const domain *x = &ds->domains[d];
        int64_t epoch = state[4 + 3 * d], cursor = state[5 + 3 * d], seqs = state[6 + 3 * d];
        if (seqs != x->sequences)
            return moe_fail(MOE_ERR_ARG, op,
                            "the state is for domain '%s' with %lld sequences; this dataset's has %lld", x->name,
                            (long long)seqs, (long long)x->sequences);
        if (epoch < 0 || epoch > (int64_t)UINT32_MAX || cursor < 0 || cursor > seqs)
            return moe_fail(MOE_ERR_ARG, op, "domain '%s': epoch %lld and cursor %lld are out of range", x->name,
                            (long long)epoch, (long long)cursor);
    }
    ds->seed = (uint64_t)state[0];
    ds->draws = (uint64_t)state[1];
    for (int d = 0; d < ds->D; d++) {
        ds->domains[d].epoch = state[4 + 3 * d];
        ds->domains[d].cursor = state[5 + 3 * d];
        build_order(ds, d);
    }
    return MOE_OK;
}

void moe_dataset_reset(moe_dataset *ds)
{
    ds->seed = ds->config_seed;
    ds->draws = 0;
    for (int d = 0; d < ds->D; d++) {
        ds->domains[d].epoch = 0;
        ds->domains[d].cursor = 0;
        build_order(ds, d);
    }
}
