/* spm.h — the C face of SentencePiece (a C++ library): load a model, encode,
 * decode, train. Used by tokenizer.c; the C++ lives in spm.cc alone.
 *
 * Every call returns a moe_status and records failures (the library's own
 * message included) with moe_fail under OP; no C++ exception crosses. */
#ifndef MOELAB_TRAIN_SPM_H
#define MOELAB_TRAIN_SPM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moe_spm moe_spm;

moe_status moe_spm_load(moe_spm **out, const char *model_path, const char *op);
void moe_spm_free(moe_spm *spm);
int64_t moe_spm_vocab_size(const moe_spm *spm);
/* The id of </s>, else of <s>, else -1. */
int64_t moe_spm_end_id(const moe_spm *spm);

/* New arrays (free() them). */
moe_status moe_spm_encode(const moe_spm *spm, const char *text, size_t len, uint32_t **ids, int64_t *n,
                          const char *op);
moe_status moe_spm_decode(const moe_spm *spm, const uint32_t *ids, int64_t n, char **text, size_t *len,
                          const char *op);

/* Training sentences come from NEXT, which sets *S, *LEN and returns true
 * while there are more. */
typedef bool (*moe_spm_next_sentence)(void *ctx, const char **s, size_t *len);

/* Train a model on the sentences and write it to MODEL_PATH. KEYS/VALUES are
 * N SentencePiece trainer options (e.g. "vocab_size" "4000"). */
moe_status moe_spm_train(const char *model_path, moe_spm_next_sentence next, void *ctx,
                         const char *const *keys, const char *const *values, int n, const char *op);

#ifdef __cplusplus
}
#endif
#endif
