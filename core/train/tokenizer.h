/* tokenizer.h — text to token ids and back.
 *
 * Kinds:
 *   bytes          the UTF-8 bytes themselves: V = 256, end of document = 0
 *                  (a NUL byte, which text files do not hold)
 *   sentencepiece  a SentencePiece model file (BPE or unigram) through the
 *                  library: V = its pieces, end of document = </s>
 *   ids            no text at all: pre-tokenized data with ids below V
 *                  (token files); encode and decode refuse
 *
 * A tokenizer is refcounted (a dataset keeps the one it was made with);
 * retain and release are thread-safe. */
#ifndef MOELAB_TRAIN_TOKENIZER_H
#define MOELAB_TRAIN_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "../error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum moe_tokenizer_kind {
    MOE_TOKENIZER_BYTES,
    MOE_TOKENIZER_SENTENCEPIECE,
    MOE_TOKENIZER_IDS,
    MOE_TOKENIZER_KIND_COUNT
} moe_tokenizer_kind;

typedef struct moe_tokenizer moe_tokenizer;

/* "bytes", "sentencepiece", "ids". */
const char *moe_tokenizer_kind_name(moe_tokenizer_kind k);
bool moe_tokenizer_kind_parse(const char *name, moe_tokenizer_kind *out);

moe_status moe_tokenizer_new_bytes(moe_tokenizer **out);
/* OP names the calling operation in errors (NULL: "make-tokenizer"). */
moe_status moe_tokenizer_new_sentencepiece(moe_tokenizer **out, const char *model_path, const char *op);
/* Ids below VOCAB (>= 1) with END_ID (-1: none) ending a document. */
moe_status moe_tokenizer_new_ids(moe_tokenizer **out, int64_t vocab, int64_t end_id);

moe_tokenizer *moe_tokenizer_retain(moe_tokenizer *t);
void moe_tokenizer_release(moe_tokenizer *t); /* NULL is fine */

moe_tokenizer_kind moe_tokenizer_get_kind(const moe_tokenizer *t);
int64_t moe_tokenizer_vocab_size(const moe_tokenizer *t);
/* The token that ends a document in packed streams (-1: none). */
int64_t moe_tokenizer_end_id(const moe_tokenizer *t);
/* The model file of a sentencepiece tokenizer (NULL for the others). */
const char *moe_tokenizer_model_path(const moe_tokenizer *t);

/* TEXT[0, LEN) into a new array of *N ids (*IDS, free() it). */
moe_status moe_tokenizer_encode(const moe_tokenizer *t, const char *text, size_t len, uint32_t **ids,
                                int64_t *n, const char *op);
/* IDS into a new NUL-terminated buffer of *LEN bytes (*TEXT, free() it); an
 * id outside the vocabulary is MOE_ERR_INDEX. */
moe_status moe_tokenizer_decode(const moe_tokenizer *t, const uint32_t *ids, int64_t n, char **text,
                                size_t *len, const char *op);

/* Training a SentencePiece model on text sources. */
typedef struct moe_tokenizer_train_options {
    int64_t vocab_size;        /* pieces (default 4096) */
    const char *model_type;    /* "bpe" (default), "unigram", "char", "word" */
    int64_t max_sentences;     /* lines sampled for training, 0 = all (default 1000000) */
    int64_t max_sentence_bytes;/* longer lines are split (default 4096) */
    /* Further SentencePiece trainer options as key/value text (may be 0). */
    int n_extra;
    const char *const *extra_keys;
    const char *const *extra_values;
} moe_tokenizer_train_options;
void moe_tokenizer_train_options_default(moe_tokenizer_train_options *o);

/* Train on every line of every document of the N_SOURCES path specs
 * (files, directories, globs; see source.h), write the model to MODEL_PATH
 * and load it into *OUT. The defaults make a lossless tokenizer for
 * code and prose: identity normalisation, whitespace kept as it is, bytes
 * for characters outside the vocabulary, digits split. */
moe_status moe_tokenizer_train(moe_tokenizer **out, const char *model_path, const char *const *sources,
                               int n_sources, const moe_tokenizer_train_options *options, const char *op);

#ifdef __cplusplus
}
#endif
#endif
