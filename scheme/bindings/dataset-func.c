/* dataset-func.c — datasets from Scheme: the primitives behind
 * make-text-dataset, dataset-next-batch and the dataset state (the <dataset>
 * type itself is in dataset-type.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bindings.h"
#include "data-func.h"
#include "train/dataset.h"

/* Native bytes per byte of reported heap (as the other bindings). */
#define NATIVE_PER_HEAP 16

/* The text of a symbol or string into a dynwind-freed C string. */
static char *dynwind_name(SCM obj, int pos, const char *subr, const char *what)
{
    if (scm_is_symbol(obj)) obj = scm_symbol_to_string(obj);
    if (!scm_is_string(obj)) scm_wrong_type_arg_msg(subr, pos, obj, what);
    return moelab_dynwind_string(obj, pos, subr);
}

/* Domains: a list of (NAME . PATH) or (NAME PATH …), NAME a symbol or string. */
SCM_DEFINE(moelab_make_text_dataset, "%make-text-dataset", 8, 0, 0,
           (SCM domains, SCM tokenizer, SCM seq_len, SCM split, SCM batching, SCM weights, SCM seed,
            SCM shuffle),
           "A new dataset; see make-text-dataset.")
#define FUNC_NAME "make-text-dataset"
{
    moe_dataset_config cfg;
    moe_dataset_config_default(&cfg);
    cfg.op = FUNC_NAME;
    long D = scm_ilength(domains);
    if (D < 1) scm_wrong_type_arg_msg(FUNC_NAME, 1, domains, "non-empty list of (name . path) domains");
    cfg.tokenizer = moelab_to_tokenizer(tokenizer, 2, FUNC_NAME);
    cfg.seq_len = moelab_to_int64(seq_len, 3, FUNC_NAME);
    char name[32];
    moelab_to_name(split, name, sizeof name, 4, FUNC_NAME, "split symbol");
    if (!moe_data_split_parse(name, &cfg.split))
        moelab_throw(FUNC_NAME, MOE_ERR_ARG, "unknown split '%s (expected train or val)", name);
    moelab_to_name(batching, name, sizeof name, 5, FUNC_NAME, "batching symbol");
    if (!moe_batching_parse(name, &cfg.batching))
        moelab_throw(FUNC_NAME, MOE_ERR_ARG, "unknown batching '%s (expected shuffled or single-domain)", name);
    cfg.seed = scm_to_uint64(seed);
    cfg.shuffle = scm_is_true(shuffle);
    scm_dynwind_begin(0);
    moe_dataset_domain *doms = calloc((size_t)D, sizeof *doms);
    double *w = calloc((size_t)D, sizeof *w);
    if (!doms || !w) {
        free(doms);
        free(w);
        moelab_throw(FUNC_NAME, MOE_ERR_NOMEM, "out of memory");
    }
    scm_dynwind_free(doms);
    scm_dynwind_free(w);
    SCM rest = domains;
    for (long i = 0; i < D; i++, rest = scm_cdr(rest)) {
        SCM d = scm_car(rest);
        if (!scm_is_pair(d)) scm_wrong_type_arg_msg(FUNC_NAME, 1, d, "(name . path) or (name path ...)");
        doms[i].name = dynwind_name(scm_car(d), 1, FUNC_NAME, "domain name (symbol or string)");
        SCM paths = scm_is_string(scm_cdr(d)) ? scm_list_1(scm_cdr(d)) : scm_cdr(d);
        doms[i].sources = moelab_dynwind_paths(paths, &doms[i].n_sources, 1, FUNC_NAME);
    }
    if (scm_is_true(weights)) {
        if (scm_ilength(weights) != D)
            moelab_throw(FUNC_NAME, MOE_ERR_ARG, "#:weights has %ld entries for %ld domains",
                         scm_ilength(weights), D);
        rest = weights;
        for (long i = 0; i < D; i++, rest = scm_cdr(rest)) w[i] = moelab_to_double(scm_car(rest), 6, FUNC_NAME);
        cfg.weights = w;
    }
    cfg.domains = doms;
    cfg.n_domains = (int)D;
    moe_dataset *ds;
    moe_status st = moe_dataset_new(&ds, &cfg);
    scm_dynwind_end();
    if (st != MOE_OK) moelab_throw_last(FUNC_NAME);
    size_t bytes = 0;
    for (int d = 0; d < moe_dataset_domain_count(ds); d++) {
        moe_dataset_domain_stats s;
        moe_dataset_domain_stats_get(ds, d, &s);
        bytes += (size_t)s.tokens * 8; /* the stream and its visiting order */
    }
    scm_gc_register_allocation(bytes / NATIVE_PER_HEAP);
    scm_remember_upto_here_1(tokenizer);
    return moelab_wrap_dataset(ds);
}
#undef FUNC_NAME

static int domain_arg(moe_dataset *ds, SCM domain, int pos, const char *subr)
{
    if (scm_is_false(domain)) return -1;
    char name[256];
    if (!moelab_name_text(domain, name, sizeof name)) scm_wrong_type_arg_msg(subr, pos, domain, "domain name or #f");
    int d = moe_dataset_domain_index(ds, name);
    if (d < 0) moelab_throw(subr, MOE_ERR_ARG, "no domain '%s' in this dataset", name);
    return d;
}

SCM_DEFINE(moelab_dataset_next_batch, "%dataset-next-batch", 3, 0, 0, (SCM dataset, SCM batch, SCM domain),
           "The next batch: (tokens targets row-domains); see dataset-next-batch.")
#define FUNC_NAME "dataset-next-batch"
{
    moe_dataset *ds = moelab_to_dataset(dataset, 1, FUNC_NAME);
    int64_t B = moelab_to_int64(batch, 2, FUNC_NAME);
    int d = domain_arg(ds, domain, 3, FUNC_NAME);
    if (B < 1 || B > (1 << 24)) moelab_throw(FUNC_NAME, MOE_ERR_ARG, "batch size must be in [1, 2^24], got %lld", (long long)B);
    int32_t *rows = malloc((size_t)B * sizeof *rows);
    if (!rows) moelab_throw(FUNC_NAME, MOE_ERR_NOMEM, "out of memory");
    moe_tensor *x, *y;
    moe_status st = moe_dataset_next_batch(&x, &y, rows, ds, B, d);
    if (st != MOE_OK) {
        free(rows);
        moelab_throw_last(FUNC_NAME);
    }
    SCM names = SCM_EOL;
    for (int64_t b = B - 1; b >= 0; b--) names = scm_cons(sym(moe_dataset_domain_name(ds, rows[b])), names);
    free(rows);
    scm_remember_upto_here_1(dataset);
    return scm_list_3(moelab_wrap(x), moelab_wrap(y), names);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_dataset_info, "%dataset-info", 1, 0, 0, (SCM dataset),
           "The dataset's settings and per-domain sizes as an alist; see dataset-info.")
#define FUNC_NAME "dataset-info"
{
    moe_dataset *ds = moelab_to_dataset(dataset, 1, FUNC_NAME);
    SCM doms = SCM_EOL;
    for (int d = moe_dataset_domain_count(ds) - 1; d >= 0; d--) {
        moe_dataset_domain_stats s;
        moe_dataset_domain_stats_get(ds, d, &s);
        SCM entry = scm_list_n(sym(moe_dataset_domain_name(ds, d)),
                               scm_cons(sym("files"), scm_from_int64(s.files)),
                               scm_cons(sym("documents"), scm_from_int64(s.documents)),
                               scm_cons(sym("tokens"), scm_from_int64(s.tokens)),
                               scm_cons(sym("sequences"), scm_from_int64(s.sequences)),
                               scm_cons(sym("probability"), scm_from_double(s.probability)), SCM_UNDEFINED);
        doms = scm_cons(entry, doms);
    }
    SCM r = scm_list_n(scm_cons(sym("vocab-size"), scm_from_int64(moe_dataset_vocab_size(ds))),
                       scm_cons(sym("seq-len"), scm_from_int64(moe_dataset_seq_len(ds))),
                       scm_cons(sym("split"), sym(moe_data_split_name(moe_dataset_get_split(ds)))),
                       scm_cons(sym("batching"), sym(moe_batching_name(moe_dataset_get_batching(ds)))),
                       scm_cons(sym("domains"), doms), SCM_UNDEFINED);
    scm_remember_upto_here_1(dataset);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_dataset_tokenizer, "%dataset-tokenizer", 1, 0, 0, (SCM dataset),
           "The tokenizer of the dataset (a new <tokenizer> sharing it).")
#define FUNC_NAME "dataset-tokenizer"
{
    moe_dataset *ds = moelab_to_dataset(dataset, 1, FUNC_NAME);
    SCM r = moelab_wrap_tokenizer(moe_tokenizer_retain((moe_tokenizer *)moe_dataset_tokenizer(ds)));
    scm_remember_upto_here_1(dataset);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_dataset_state, "%dataset-state", 1, 0, 0, (SCM dataset),
           "The sampler state as an alist; see dataset-state.")
#define FUNC_NAME "dataset-state"
{
    moe_dataset *ds = moelab_to_dataset(dataset, 1, FUNC_NAME);
    int64_t n = moe_dataset_state_size(ds);
    int64_t *s = malloc((size_t)n * sizeof *s);
    if (!s) moelab_throw(FUNC_NAME, MOE_ERR_NOMEM, "out of memory");
    moe_dataset_get_state(ds, s);
    SCM doms = SCM_EOL;
    for (int d = moe_dataset_domain_count(ds) - 1; d >= 0; d--)
        doms = scm_cons(scm_list_4(sym(moe_dataset_domain_name(ds, d)),
                                   scm_cons(sym("epoch"), scm_from_int64(s[4 + 3 * d])),
                                   scm_cons(sym("cursor"), scm_from_int64(s[5 + 3 * d])),
                                   scm_cons(sym("sequences"), scm_from_int64(s[6 + 3 * d]))),
                        doms);
    SCM r = scm_list_4(scm_cons(sym("seed"), scm_from_uint64((uint64_t)s[0])),
                       scm_cons(sym("draws"), scm_from_uint64((uint64_t)s[1])),
                       scm_cons(sym("seq-len"), scm_from_int64(s[2])), scm_cons(sym("domains"), doms));
    free(s);
    scm_remember_upto_here_1(dataset);
    return r;
}
#undef FUNC_NAME

/* The value under KEY (a symbol's name; keys may be symbols or strings, as
 * after a trip through JSON) in the alist AL, or #f. */
static SCM lookup(SCM al, const char *key)
{
    for (; scm_is_pair(al); al = scm_cdr(al)) {
        SCM kv = scm_car(al);
        char name[256];
        if (scm_is_pair(kv) && moelab_name_text(scm_car(kv), name, sizeof name) && strcmp(name, key) == 0)
            return scm_cdr(kv);
    }
    return SCM_BOOL_F;
}

static int64_t state_int(SCM al, const char *key, const char *where, const char *subr)
{
    SCM v = lookup(al, key);
    if (!scm_is_exact_integer(v))
        moelab_throw(subr, MOE_ERR_ARG, "the state has no integer '%s'%s", key, where);
    if (strcmp(key, "seed") == 0 || strcmp(key, "draws") == 0) {
        if (!scm_is_unsigned_integer(v, 0, UINT64_MAX)) moelab_throw(subr, MOE_ERR_ARG, "state '%s' out of range", key);
        return (int64_t)scm_to_uint64(v);
    }
    if (!scm_is_signed_integer(v, INT64_MIN, INT64_MAX)) moelab_throw(subr, MOE_ERR_ARG, "state '%s' out of range", key);
    return scm_to_int64(v);
}

SCM_DEFINE(moelab_dataset_load_state_x, "%dataset-load-state!", 2, 0, 0, (SCM dataset, SCM state),
           "Restore a state from dataset-state; see dataset-load-state!.")
#define FUNC_NAME "dataset-load-state!"
{
    moe_dataset *ds = moelab_to_dataset(dataset, 1, FUNC_NAME);
    if (scm_ilength(state) < 0) scm_wrong_type_arg_msg(FUNC_NAME, 2, state, "dataset state alist");
    int D = moe_dataset_domain_count(ds);
    int64_t n = moe_dataset_state_size(ds);
    int64_t *s = malloc((size_t)n * sizeof *s);
    if (!s) moelab_throw(FUNC_NAME, MOE_ERR_NOMEM, "out of memory");
    scm_dynwind_begin(0);
    scm_dynwind_free(s);
    s[0] = state_int(state, "seed", "", FUNC_NAME);
    s[1] = state_int(state, "draws", "", FUNC_NAME);
    s[2] = state_int(state, "seq-len", "", FUNC_NAME);
    SCM doms = lookup(state, "domains");
    if (scm_ilength(doms) != D)
        moelab_throw(FUNC_NAME, MOE_ERR_ARG, "the state has %ld domains; this dataset has %d",
                     scm_ilength(doms) < 0 ? -1L : scm_ilength(doms), D);
    s[3] = D;
    for (int d = 0; d < D; d++) {
        const char *name = moe_dataset_domain_name(ds, d);
        char where[300];
        snprintf(where, sizeof where, " for domain '%s'", name);
        SCM entry = lookup(doms, name);
        if (scm_is_false(entry)) moelab_throw(FUNC_NAME, MOE_ERR_ARG, "the state has no domain '%s'", name);
        s[4 + 3 * d] = state_int(entry, "epoch", where, FUNC_NAME);
        s[5 + 3 * d] = state_int(entry, "cursor", where, FUNC_NAME);
        s[6 + 3 * d] = state_int(entry, "sequences", where, FUNC_NAME);
    }
    moe_status st = moe_dataset_set_state(ds, s, n);
    scm_dynwind_end();
    if (st != MOE_OK) moelab_throw_last(FUNC_NAME);
    scm_remember_upto_here_1(dataset);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_dataset_reset_x, "%dataset-reset!", 1, 0, 0, (SCM dataset),
           "Back to the dataset's first batch; see dataset-reset!.")
#define FUNC_NAME "dataset-reset!"
{
    moe_dataset_reset(moelab_to_dataset(dataset, 1, FUNC_NAME));
    scm_remember_upto_here_1(dataset);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

void moelab_init_dataset_func(void)
{
#ifndef SCM_MAGIC_SNARFER
#include "dataset-func.x"
#endif
}
