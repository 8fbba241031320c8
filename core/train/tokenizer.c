/* tokenizer.c — the byte tokenizer, the SentencePiece tokenizer (through
 * spm.h) and bare id vocabularies; SentencePiece training on text sources. */
#include "tokenizer.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cpu/tokens.h"
#include "../names.h"
#include "source.h"
#include "spm.h"

struct moe_tokenizer {
    int refs;
    moe_tokenizer_kind kind;
    int64_t vocab, end_id;
    moe_spm *spm;     /* sentencepiece */
    char *model_path; /* sentencepiece */
};

NAME_TABLE(moe_tokenizer_kind, tokenizer_kind, MOE_TOKENIZER_KIND_COUNT, [MOE_TOKENIZER_BYTES] = "bytes",
           [MOE_TOKENIZER_SENTENCEPIECE] = "sentencepiece", [MOE_TOKENIZER_IDS] = "ids")

static moe_status make(moe_tokenizer **out, moe_tokenizer_kind kind, int64_t vocab, int64_t end_id)
{
    moe_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return moe_fail(MOE_ERR_NOMEM, "make-tokenizer", "out of memory for %zu bytes of a tokenizer", sizeof *t);
    t->refs = 1;
    t->kind = kind;
    t->vocab = vocab;
    t->end_id = end_id;
    *out = t;
    return MOE_OK;
}

moe_status moe_tokenizer_new_bytes(moe_tokenizer **out) { return make(out, MOE_TOKENIZER_BYTES, 256, 0); }

moe_status moe_tokenizer_new_ids(moe_tokenizer **out, int64_t vocab, int64_t end_id)
{
    if (vocab < 1 || vocab > (int64_t)UINT32_MAX + 1)
        return moe_fail(MOE_ERR_ARG, "make-tokenizer", "vocabulary size must be in [1, 2^32], got %lld",
                        (long long)vocab);
    if (end_id < -1 || end_id >= vocab)
        return moe_fail(MOE_ERR_ARG, "make-tokenizer", "end-of-document id %lld is outside [0, %lld)",
                        (long long)end_id, (long long)vocab);
    return make(out, MOE_TOKENIZER_IDS, vocab, end_id);
}

moe_status moe_tokenizer_new_sentencepiece(moe_tokenizer **out, const char *model_path, const char *op)
{
    if (!op) op = "make-tokenizer";
    moe_spm *spm;
    MOE_TRY(moe_spm_load(&spm, model_path, op));
    moe_tokenizer *t = NULL;
    char *path = strdup(model_path);
    if (!path || make(&t, MOE_TOKENIZER_SENTENCEPIECE, moe_spm_vocab_size(spm), moe_spm_end_id(spm)) != MOE_OK) {
        free(path);
        moe_spm_free(spm);
        return moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of a tokenizer of %s",
                        sizeof(moe_tokenizer) + strlen(model_path) + 1, model_path);
    }
    t->spm = spm;
    t->model_path = path;
    *out = t;
    return MOE_OK;
}

moe_tokenizer *moe_tokenizer_retain(moe_tokenizer *t)
{
    if (t) __atomic_add_fetch(&t->refs, 1, __ATOMIC_RELAXED);
    return t;
}

void moe_tokenizer_release(moe_tokenizer *t)
{
    if (!t || __atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
    moe_spm_free(t->spm);
    free(t->model_path);
    free(t);
}

moe_tokenizer_kind moe_tokenizer_get_kind(const moe_tokenizer *t) { return t->kind; }
int64_t moe_tokenizer_vocab_size(const moe_tokenizer *t) { return t->vocab; }
int64_t moe_tokenizer_end_id(const moe_tokenizer *t) { return t->end_id; }
const char *moe_tokenizer_model_path(const moe_tokenizer *t) { return t->model_path; }

moe_status moe_tokenizer_encode(const moe_tokenizer *t, const char *text, size_t len, uint32_t **ids,
                                int64_t *n, const char *op)
{
    if (!op) op = "tokenizer-encode";
    switch (t->kind) {
    case MOE_TOKENIZER_BYTES: {
        uint32_t *out = malloc((len ? len : 1) * sizeof *out);
        if (!out) return moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of ids encoding %zu bytes", (len ? len : 1) * sizeof *out, len);
        moe_cpu_tokens_from_bytes(out, text, (int64_t)len);
        *ids = out;
        *n = (int64_t)len;
        return MOE_OK;
    }
    case MOE_TOKENIZER_SENTENCEPIECE:
        return moe_spm_encode(t->spm, text, len, ids, n, op);
    default:
        return moe_fail(MOE_ERR_UNSUPPORTED, op,
                        "an ids tokenizer (vocabulary %lld) has no text form: it reads token files only",
                        (long long)t->vocab);
    }
}

moe_status moe_tokenizer_decode(const moe_tokenizer *t, const uint32_t *ids, int64_t n, char **text,
                                size_t *len, const char *op)
{
    if (!op) op = "tokenizer-decode";
    switch (t->kind) {
    case MOE_TOKENIZER_BYTES: {
        int64_t bad = moe_cpu_tokens_find_outside(ids, n, 256);
        if (bad >= 0)
            return moe_fail(MOE_ERR_INDEX, op, "token %u at position %lld is not a byte (vocabulary 256)",
                            (unsigned)ids[bad], (long long)bad);
        char *out = malloc((size_t)n + 1);
        if (!out) return moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of text decoding %lld tokens", (size_t)n + 1, (long long)n);
        moe_cpu_tokens_to_bytes(out, ids, n);
        out[n] = '\0';
        *text = out;
        *len = (size_t)n;
        return MOE_OK;
    }
    case MOE_TOKENIZER_SENTENCEPIECE:
        return moe_spm_decode(t->spm, ids, n, text, len, op);
    default:
        return moe_fail(MOE_ERR_UNSUPPORTED, op,
                        "an ids tokenizer (vocabulary %lld) has no text form: it reads token files only",
                        (long long)t->vocab);
    }
}

/* ---- training -------------------------------------------------------------- */

void moe_tokenizer_train_options_default(moe_tokenizer_train_options *o)
{
    memset(o, 0, sizeof *o);
    o->vocab_size = 4096;
    o->model_type = "bpe";
    o->max_sentences = 0;
    o->max_sentence_bytes = 4096;
}

/* Walks the lines of every document of every file, one file in memory at a
 * time; lines longer than the limit come in pieces cut at UTF-8 boundaries. */
typedef struct line_reader {
    const moe_file_list *files;
    int64_t file;
    char *data;
    size_t len, pos;
    size_t max_bytes;
    const char *op;
    moe_status status; /* a read failure stops the walk and is reported after training */
} line_reader;

static bool next_line(void *ctx, const char **s, size_t *len)
{
    line_reader *r = ctx;
    for (;;) {
        while (r->data && r->pos < r->len) {
            const char *p = r->data + r->pos;
            size_t rest = r->len - r->pos, n = 0;
            while (n < rest && p[n] != '\n' && p[n] != '\0') n++;
            size_t take = n;
            if (take > r->max_bytes) { /* cut before a continuation byte */
                take = r->max_bytes;
                while (take > 1 && ((unsigned char)p[take] & 0xC0) == 0x80) take--;
            }
            r->pos += take < n ? take : n + 1;
            if (take == 0) continue;
            *s = p;
            *len = take;
            return true;
        }
        free(r->data);
        r->data = NULL;
        if (r->status != MOE_OK || r->file >= r->files->n) return false;
        r->status = moe_read_file(&r->data, &r->len, r->files->paths[r->file++], r->op);
        r->pos = 0;
        if (r->status != MOE_OK) return false;
    }
}

moe_status moe_tokenizer_train(moe_tokenizer **out, const char *model_path, const char *const *sources,
                               int n_sources, const moe_tokenizer_train_options *options, const char *op)
{
    if (!op) op = "train-tokenizer";
    moe_tokenizer_train_options o;
    if (options) o = *options;
    else moe_tokenizer_train_options_default(&o);
    if (!model_path || !*model_path) return moe_fail(MOE_ERR_ARG, op, "no model file given");
    if (n_sources < 1) return moe_fail(MOE_ERR_ARG, op, "no text sources given");
    if (o.vocab_size < 8) return moe_fail(MOE_ERR_ARG, op, "#:vocab-size must be >= 8, got %lld", (long long)o.vocab_size);
    if (o.max_sentences < 0 || o.max_sentence_bytes < 16)
        return moe_fail(MOE_ERR_ARG, op, "bad sentence limits: %lld sentences, %lld bytes",
                        (long long)o.max_sentences, (long long)o.max_sentence_bytes);
    moe_file_list files = {0};
    moe_status st = MOE_OK;
    for (int i = 0; i < n_sources && st == MOE_OK; i++) st = moe_file_list_add(&files, sources[i], op, NULL);
    if (st != MOE_OK) {
        moe_file_list_free(&files);
        return st;
    }
    enum { FIXED = 12 };
    char vocab[32], sentences[32], bytes[32];
    snprintf(vocab, sizeof vocab, "%lld", (long long)o.vocab_size);
    snprintf(sentences, sizeof sentences, "%lld", (long long)o.max_sentences);
    snprintf(bytes, sizeof bytes, "%lld", (long long)o.max_sentence_bytes);
    const char *fixed_keys[FIXED] = {"vocab_size", "model_type", "input_sentence_size", "max_sentence_length",
                                     "byte_fallback", "normalization_rule_name", "add_dummy_prefix",
                                     "remove_extra_whitespaces", "split_digits", "allow_whitespace_only_pieces",
                                     "hard_vocab_limit", "minloglevel"};
    const char *fixed_values[FIXED] = {vocab, o.model_type ? o.model_type : "bpe", sentences, bytes,
                                       "true", "identity", "false", "false", "true", "true", "false", "1"};
    int n = FIXED + o.n_extra;
    const char **keys = malloc((size_t)n * sizeof *keys), **values = malloc((size_t)n * sizeof *values);
    if (!keys || !values) {
        st = moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of %d trainer options", 2 * (size_t)n * sizeof *keys, n);
    } else {
        /* later keys win: the caller's extra options override the defaults */
        memcpy(keys, fixed_keys, sizeof fixed_keys);
        memcpy(values, fixed_values, sizeof fixed_values);
        for (int i = 0; i < o.n_extra; i++) {
            keys[FIXED + i] = o.extra_keys[i];
            values[FIXED + i] = o.extra_values[i];
        }
        line_reader r = {.files = &files, .max_bytes = (size_t)o.max_sentence_bytes, .op = op};
        st = moe_spm_train(model_path, next_line, &r, keys, values, n, op);
        free(r.data);
        if (r.status != MOE_OK) st = r.status;
    }
    free(keys);
    free(values);
    moe_file_list_free(&files);
    if (st == MOE_OK) st = moe_tokenizer_new_sentencepiece(out, model_path, op);
    return st;
}
