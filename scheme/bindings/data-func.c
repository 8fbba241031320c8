/* data-func.c — tokenizers and token files from Scheme: the primitives
 * behind (moelab data) that do not need a dataset (the <tokenizer> type
 * itself is in tokenizer-type.c). */
#include <stdlib.h>
#include <string.h>

#include "bindings.h"
#include "data-func.h"
#include "train/tokenizer.h"
#include "train/tokfile.h"

/* A string argument as a new UTF-8 C string freed when the dynwind context ends. */
char *moelab_dynwind_string(SCM obj, int pos, const char *subr)
{
    if (!scm_is_string(obj)) scm_wrong_type_arg_msg(subr, pos, obj, "string");
    char *s = scm_to_utf8_string(obj);
    scm_dynwind_free(s);
    return s;
}

SCM_DEFINE(moelab_make_tokenizer, "%make-tokenizer", 3, 0, 0, (SCM kind, SCM arg, SCM end_id),
           "A new tokenizer; see make-tokenizer.")
#define FUNC_NAME "make-tokenizer"
{
    char name[32];
    moelab_to_name(kind, name, sizeof name, 1, FUNC_NAME, "tokenizer kind symbol");
    moe_tokenizer *t = NULL;
    if (strcmp(name, "bytes") == 0) {
        MOELAB_CHECK(FUNC_NAME, moe_tokenizer_new_bytes(&t));
    } else if (strcmp(name, "sentencepiece") == 0) {
        scm_dynwind_begin(0);
        char *path = moelab_dynwind_string(arg, 2, FUNC_NAME);
        moe_status st = moe_tokenizer_new_sentencepiece(&t, path, FUNC_NAME);
        scm_dynwind_end();
        if (st != MOE_OK) moelab_throw_last(FUNC_NAME);
    } else if (strcmp(name, "ids") == 0) {
        int64_t end = scm_is_false(end_id) ? -1 : moelab_to_int64(end_id, 3, FUNC_NAME);
        MOELAB_CHECK(FUNC_NAME, moe_tokenizer_new_ids(&t, moelab_to_int64(arg, 2, FUNC_NAME), end));
    } else {
        moelab_throw(FUNC_NAME, MOE_ERR_ARG, "unknown tokenizer '%s (expected bytes, sentencepiece or ids)", name);
    }
    return moelab_wrap_tokenizer(t);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_tokenizer_info, "%tokenizer-info", 1, 0, 0, (SCM tok),
           "The tokenizer's kind, vocabulary size, end-of-document id and model file as an alist.")
#define FUNC_NAME "tokenizer-info"
{
    moe_tokenizer *t = moelab_to_tokenizer(tok, 1, FUNC_NAME);
    const char *model = moe_tokenizer_model_path(t);
    int64_t end = moe_tokenizer_end_id(t);
    SCM r = scm_list_4(scm_cons(scm_from_utf8_symbol("kind"),
                                scm_from_utf8_symbol(moe_tokenizer_kind_name(moe_tokenizer_get_kind(t)))),
                       scm_cons(scm_from_utf8_symbol("vocab-size"), scm_from_int64(moe_tokenizer_vocab_size(t))),
                       scm_cons(scm_from_utf8_symbol("end-id"), end >= 0 ? scm_from_int64(end) : SCM_BOOL_F),
                       scm_cons(scm_from_utf8_symbol("model"), model ? scm_from_utf8_string(model) : SCM_BOOL_F));
    scm_remember_upto_here_1(tok);
    return r;
}
#undef FUNC_NAME

static SCM ids_to_list(const uint32_t *ids, int64_t n)
{
    SCM r = SCM_EOL;
    for (int64_t i = n - 1; i >= 0; i--) r = scm_cons(scm_from_uint32(ids[i]), r);
    return r;
}

SCM_DEFINE(moelab_tokenizer_encode, "%tokenizer-encode", 2, 0, 0, (SCM tok, SCM text),
           "The ids of TEXT (a string or a bytevector of UTF-8) as a list.")
#define FUNC_NAME "tokenizer-encode"
{
    moe_tokenizer *t = moelab_to_tokenizer(tok, 1, FUNC_NAME);
    char *s;
    size_t len;
    if (scm_is_bytevector(text)) {
        len = SCM_BYTEVECTOR_LENGTH(text);
        s = malloc(len ? len : 1);
        if (!s) moelab_throw(FUNC_NAME, MOE_ERR_NOMEM, "out of memory");
        memcpy(s, SCM_BYTEVECTOR_CONTENTS(text), len);
    } else {
        if (!scm_is_string(text)) scm_wrong_type_arg_msg(FUNC_NAME, 2, text, "string or bytevector");
        s = scm_to_utf8_stringn(text, &len);
    }
    uint32_t *ids;
    int64_t n;
    moe_status st = moe_tokenizer_encode(t, s, len, &ids, &n, FUNC_NAME);
    free(s);
    if (st != MOE_OK) moelab_throw_last(FUNC_NAME);
    SCM r = ids_to_list(ids, n);
    free(ids);
    scm_remember_upto_here_1(tok);
    return r;
}
#undef FUNC_NAME

/* A list of token ids (exact integers in [0, 2^32)) into a new array. */
static uint32_t *list_to_ids(SCM ids, int64_t *n, int pos, const char *subr)
{
    long len = scm_ilength(ids);
    if (len < 0) scm_wrong_type_arg_msg(subr, pos, ids, "list of token ids");
    uint32_t *v = malloc((size_t)(len ? len : 1) * sizeof *v);
    if (!v) moelab_throw(subr, MOE_ERR_NOMEM, "out of memory");
    scm_dynwind_free(v);
    for (long i = 0; i < len; i++, ids = scm_cdr(ids)) {
        SCM x = scm_car(ids);
        if (!scm_is_exact_integer(x) || !scm_is_unsigned_integer(x, 0, UINT32_MAX))
            moelab_throw(subr, MOE_ERR_INDEX, "token %ld is not an id in [0, 2^32)", i);
        v[i] = scm_to_uint32(x);
    }
    *n = len;
    return v;
}

SCM_DEFINE(moelab_tokenizer_decode, "%tokenizer-decode", 2, 0, 0, (SCM tok, SCM ids),
           "The text of IDS (a list) as a bytevector.")
#define FUNC_NAME "tokenizer-decode"
{
    moe_tokenizer *t = moelab_to_tokenizer(tok, 1, FUNC_NAME);
    scm_dynwind_begin(0);
    int64_t n;
    uint32_t *v = list_to_ids(ids, &n, 2, FUNC_NAME);
    char *text;
    size_t len;
    if (moe_tokenizer_decode(t, v, n, &text, &len, FUNC_NAME) != MOE_OK) moelab_throw_last(FUNC_NAME);
    scm_dynwind_free(text);
    SCM bv = scm_c_make_bytevector(len);
    memcpy(SCM_BYTEVECTOR_CONTENTS(bv), text, len);
    scm_dynwind_end();
    scm_remember_upto_here_1(tok);
    return bv;
}
#undef FUNC_NAME

/* A list of path strings into a dynwind-freed array of C strings. */
const char **moelab_dynwind_paths(SCM list, int *n, int pos, const char *subr)
{
    long len = scm_ilength(list);
    if (len < 1) scm_wrong_type_arg_msg(subr, pos, list, "non-empty list of paths");
    const char **v = malloc((size_t)len * sizeof *v);
    if (!v) moelab_throw(subr, MOE_ERR_NOMEM, "out of memory");
    scm_dynwind_free(v);
    for (long i = 0; i < len; i++, list = scm_cdr(list)) v[i] = moelab_dynwind_string(scm_car(list), pos, subr);
    *n = (int)len;
    return v;
}

SCM_DEFINE(moelab_train_tokenizer, "%train-tokenizer", 6, 0, 0,
           (SCM model, SCM sources, SCM vocab_size, SCM model_type, SCM max_sentences, SCM options),
           "Train a SentencePiece model; see train-tokenizer.")
#define FUNC_NAME "train-tokenizer"
{
    scm_dynwind_begin(0);
    char *path = moelab_dynwind_string(model, 1, FUNC_NAME);
    int n_src;
    const char **src = moelab_dynwind_paths(sources, &n_src, 2, FUNC_NAME);
    moe_tokenizer_train_options o;
    moe_tokenizer_train_options_default(&o);
    o.vocab_size = moelab_to_int64(vocab_size, 3, FUNC_NAME);
    char type[32];
    moelab_to_name(model_type, type, sizeof type, 4, FUNC_NAME, "model type symbol");
    o.model_type = type;
    o.max_sentences = moelab_to_int64(max_sentences, 5, FUNC_NAME);
    long n_opt = scm_ilength(options);
    if (n_opt < 0) scm_wrong_type_arg_msg(FUNC_NAME, 6, options, "alist of sentencepiece options");
    const char **keys = malloc((size_t)(n_opt + 1) * sizeof *keys), **values = malloc((size_t)(n_opt + 1) * sizeof *values);
    if (!keys || !values) {
        free(keys);
        free(values);
        moelab_throw(FUNC_NAME, MOE_ERR_NOMEM, "out of memory");
    }
    scm_dynwind_free(keys);
    scm_dynwind_free(values);
    for (long i = 0; i < n_opt; i++, options = scm_cdr(options)) {
        SCM kv = scm_car(options);
        if (!scm_is_pair(kv) || !scm_is_symbol(scm_car(kv)))
            scm_wrong_type_arg_msg(FUNC_NAME, 6, kv, "(option-symbol . value)");
        keys[i] = moelab_dynwind_string(scm_symbol_to_string(scm_car(kv)), 6, FUNC_NAME);
        SCM v = scm_cdr(kv);
        if (scm_is_eq(v, SCM_BOOL_T)) v = scm_from_utf8_string("true");
        else if (scm_is_false(v)) v = scm_from_utf8_string("false");
        else if (scm_is_symbol(v)) v = scm_symbol_to_string(v);
        else if (scm_is_number(v)) v = scm_number_to_string(v, scm_from_int(10));
        values[i] = moelab_dynwind_string(v, 6, FUNC_NAME);
    }
    o.n_extra = (int)n_opt;
    o.extra_keys = keys;
    o.extra_values = values;
    moe_tokenizer *t;
    moe_status st = moe_tokenizer_train(&t, path, src, n_src, &o, FUNC_NAME);
    scm_dynwind_end();
    if (st != MOE_OK) moelab_throw_last(FUNC_NAME);
    return moelab_wrap_tokenizer(t);
}
#undef FUNC_NAME

static moe_tokfile_format format_of(SCM format, const char *path, int pos, const char *subr)
{
    moe_tokfile_format f;
    if (scm_is_false(format)) {
        if (!moe_tokfile_format_of_path(path, &f))
            moelab_throw(subr, MOE_ERR_ARG, "cannot tell the format of '%s' from its name (.bin, .u16, .u32): "
                         "give #:format", path);
        return f;
    }
    char name[16];
    moelab_to_name(format, name, sizeof name, pos, subr, "token file format symbol");
    if (!moe_tokfile_format_parse(name, &f))
        moelab_throw(subr, MOE_ERR_ARG, "unknown token file format '%s (expected bin, bin32, u16 or u32)", name);
    return f;
}

SCM_DEFINE(moelab_read_token_file, "%read-token-file", 2, 0, 0, (SCM path, SCM format),
           "The tokens of a token file as an i64 tensor; see read-token-file.")
#define FUNC_NAME "read-token-file"
{
    scm_dynwind_begin(0);
    char *p = moelab_dynwind_string(path, 1, FUNC_NAME);
    moe_tokfile_format f = format_of(format, p, 2, FUNC_NAME);
    uint32_t *ids;
    int64_t n;
    if (moe_tokfile_read(&ids, &n, p, f, FUNC_NAME) != MOE_OK) moelab_throw_last(FUNC_NAME);
    scm_dynwind_free(ids);
    moe_tensor *t;
    if (moe_tensor_empty(&t, MOE_I64, MOE_CPU, 1, &n) != MOE_OK) moelab_throw_last(FUNC_NAME);
    int64_t *v = moe_tensor_data(t);
    for (int64_t i = 0; i < n; i++) v[i] = ids[i];
    scm_dynwind_end();
    return moelab_wrap(t);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_write_token_file, "%write-token-file", 3, 0, 0, (SCM path, SCM ids, SCM format),
           "Write a list of token ids to a token file; see write-token-file.")
#define FUNC_NAME "write-token-file"
{
    scm_dynwind_begin(0);
    char *p = moelab_dynwind_string(path, 1, FUNC_NAME);
    moe_tokfile_format f = format_of(format, p, 3, FUNC_NAME);
    int64_t n;
    uint32_t *v = list_to_ids(ids, &n, 2, FUNC_NAME);
    if (moe_tokfile_write(p, v, n, f, FUNC_NAME) != MOE_OK) moelab_throw_last(FUNC_NAME);
    scm_dynwind_end();
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

void moelab_init_data_func(void)
{
#ifndef SCM_MAGIC_SNARFER
#include "data-func.x"
#endif
}
