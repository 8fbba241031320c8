/* dataset.h — multi-domain language-model data: named domains of text or
 * token files, tokenized and packed into one stream per domain, cut into
 * sequences of S + 1 tokens, batched by a seeded, resumable sampler.
 *
 * Dimension letters: B rows of a batch, S tokens per row (seq_len),
 * D domains.
 *
 *     const char *bible[] = {"data/corpus/bible"}, *py[] = {"data/corpus/python"};
 *     moe_dataset_domain doms[] = {{"bible", bible, 1}, {"python", py, 1}};
 *     moe_dataset_config cfg;
 *     moe_dataset_config_default(&cfg);           // bytes, S = 256, train, shuffled
 *     cfg.domains = doms; cfg.n_domains = 2;
 *     moe_dataset *ds;
 *     if (moe_dataset_new(&ds, &cfg) != MOE_OK) puts(moe_last_error());
 *     moe_tensor *x, *y;   int32_t dom[8];
 *     moe_dataset_next_batch(&x, &y, dom, ds, 8, -1); // x, y: i64 [8 256], y = x shifted by one
 *
 * Sources. A domain is a list of path specs (a file, a directory walked
 * recursively, a glob). A spec naming a directory that holds an entry called
 * after the split ("train", "val") reads that entry instead, so
 * data/corpus/<domain> serves both splits. Files ending in .bin, .u16, .u32
 * are token files (tokfile.h), read as they are (each counts as one document);
 * every other file is text:
 * NUL-separated documents, each tokenized and followed by the tokenizer's
 * end-of-document token.
 *
 * Sequences. Domain d's stream of N_d tokens gives n_d = (N_d - 1) / S
 * sequences; sequence j is tokens [j·S, j·S + S]: its first S tokens are the
 * inputs, its last S the targets. Each domain walks its sequences in an
 * order that is a fresh seeded permutation every epoch (or in file order
 * when shuffle is off), independently of the other domains.
 *
 * Batching. Domain probabilities p_d are the weights normalised, or
 * proportional to N_d when no weights are given. 'shuffled draws each row's
 * domain from p; 'single-domain draws one domain per batch from p and fills
 * every row from it. Draws are counter-based (moe_rng_uniform), so the state
 * is a handful of integers: the seed, the number of draws taken, and each
 * domain's epoch and cursor. Saving and loading it resumes exactly. */
#ifndef MOELAB_TRAIN_DATASET_H
#define MOELAB_TRAIN_DATASET_H

#include <stdbool.h>
#include <stdint.h>

#include "../error.h"
#include "../tensor.h"
#include "tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum moe_batching { MOE_BATCHING_SHUFFLED, MOE_BATCHING_SINGLE_DOMAIN, MOE_BATCHING_COUNT } moe_batching;
typedef enum moe_data_split { MOE_DATA_TRAIN, MOE_DATA_VAL, MOE_DATA_SPLIT_COUNT } moe_data_split;

/* "shuffled", "single-domain"; "train", "val". */
const char *moe_batching_name(moe_batching b);
bool moe_batching_parse(const char *name, moe_batching *out);
const char *moe_data_split_name(moe_data_split s);
bool moe_data_split_parse(const char *name, moe_data_split *out);

typedef struct moe_dataset_domain {
    const char *name;
    const char *const *sources; /* [n_sources] path specs */
    int n_sources;
} moe_dataset_domain;

typedef struct moe_dataset_config {
    const moe_dataset_domain *domains; /* [n_domains], names distinct */
    int n_domains;
    moe_tokenizer *tokenizer; /* retained by the dataset; NULL: bytes */
    int64_t seq_len;          /* S, default 256 */
    moe_data_split split;          /* default train */
    moe_batching batching;    /* default shuffled */
    const double *weights;    /* [n_domains] >= 0, not all 0; NULL: by size */
    uint64_t seed;            /* default 0 */
    bool shuffle;             /* permute sequences within a domain (default true) */
    const char *op;           /* name in errors (default "make-text-dataset") */
} moe_dataset_config;
void moe_dataset_config_default(moe_dataset_config *cfg);

typedef struct moe_dataset moe_dataset;

/* Read, tokenize and index every domain. Fails (nothing allocated) on a
 * missing path, a glob without matches, a corrupt token file, a token id
 * outside the vocabulary, or a domain with fewer than S + 1 tokens; the
 * message names the domain and the file. */
moe_status moe_dataset_new(moe_dataset **out, const moe_dataset_config *cfg);
void moe_dataset_free(moe_dataset *ds); /* NULL is fine */

int moe_dataset_domain_count(const moe_dataset *ds);
const char *moe_dataset_domain_name(const moe_dataset *ds, int d);
/* Index of the domain called NAME, or -1. */
int moe_dataset_domain_index(const moe_dataset *ds, const char *name);
int64_t moe_dataset_vocab_size(const moe_dataset *ds);
int64_t moe_dataset_seq_len(const moe_dataset *ds);
moe_batching moe_dataset_get_batching(const moe_dataset *ds);
moe_data_split moe_dataset_get_split(const moe_dataset *ds);
const moe_tokenizer *moe_dataset_tokenizer(const moe_dataset *ds);

typedef struct moe_dataset_domain_stats {
    int64_t files, documents, tokens, sequences;
    double probability; /* p_d */
} moe_dataset_domain_stats;
void moe_dataset_domain_stats_get(const moe_dataset *ds, int d, moe_dataset_domain_stats *out);

/* The next batch: new i64 [B S] tensors *TOKENS and *TARGETS (targets[b][s]
 * = the token after tokens[b][s]) and, when ROW_DOMAIN is not NULL, the
 * domain index of each row in ROW_DOMAIN[0, B). DOMAIN >= 0 takes every row
 * from that domain (evaluation; no mixture draw is taken), -1 follows the
 * dataset's batching. Bad arguments leave the dataset unchanged. */
moe_status moe_dataset_next_batch(moe_tensor **tokens, moe_tensor **targets, int32_t *row_domain,
                                  moe_dataset *ds, int64_t B, int domain);
/* The same into existing contiguous CPU i64 [B S] tensors (no allocation). */
moe_status moe_dataset_next_batch_into(moe_tensor *tokens, moe_tensor *targets, int32_t *row_domain,
                                       moe_dataset *ds, int domain);

/* The sampler state as integers:
 *   [0] seed  [1] draws  [2] S  [3] D  then per domain d: [4+3d] epoch,
 *   [5+3d] cursor, [6+3d] sequences (a fingerprint: loading checks it).
 * moe_dataset_state_size gives 4 + 3·D. */
int64_t moe_dataset_state_size(const moe_dataset *ds);
void moe_dataset_get_state(const moe_dataset *ds, int64_t *state);
/* Restore a state from moe_dataset_get_state of a dataset built the same way;
 * a state of another shape (S, D, a domain's sequence count) or with a
 * cursor out of range fails and leaves DS unchanged. */
moe_status moe_dataset_set_state(moe_dataset *ds, const int64_t *state, int64_t n);
/* Back to the state of a fresh dataset. */
void moe_dataset_reset(moe_dataset *ds);

#ifdef __cplusplus
}
#endif
#endif
