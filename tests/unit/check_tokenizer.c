/* check_tokenizer.c — tokenizers (core/train/tokenizer.c, spm.cc): bytes,
 * ids, and SentencePiece trained on tests/data/spm-train.txt through the
 * library, each with round trips and its error cases. */
#include <string.h>

#include "tmpdir.h"
#include "testutil.h"
#include "train/tokenizer.h"

#define DATA MOE_TEST_DATA

static void round_trip(const moe_tokenizer *t, const char *text, int64_t *n_out)
{
    uint32_t *ids;
    int64_t n;
    char *back;
    size_t len;
    OK(moe_tokenizer_encode(t, text, strlen(text), &ids, &n, NULL));
    OK(moe_tokenizer_decode(t, ids, n, &back, &len, NULL));
    ck_assert_uint_eq(len, strlen(text));
    ck_assert_msg(memcmp(back, text, len) == 0, "round trip gave '%s' for '%s'", back, text);
    for (int64_t i = 0; i < n; i++) ck_assert_uint_lt(ids[i], (uint64_t)moe_tokenizer_vocab_size(t));
    if (n_out) *n_out = n;
    free(ids);
    free(back);
}

START_TEST(bytes)
{
    moe_tokenizer *t;
    OK(moe_tokenizer_new_bytes(&t));
    ck_assert_int_eq(moe_tokenizer_get_kind(t), MOE_TOKENIZER_BYTES);
    ck_assert_int_eq(moe_tokenizer_vocab_size(t), 256);
    ck_assert_int_eq(moe_tokenizer_end_id(t), 0);
    uint32_t *ids;
    int64_t n;
    /* "hé!" is 68 c3 a9 21 in UTF-8 */
    OK(moe_tokenizer_encode(t, "h\xc3\xa9!", 4, &ids, &n, NULL));
    ck_assert_int_eq(n, 4);
    ck_assert_uint_eq(ids[0], 0x68);
    ck_assert_uint_eq(ids[1], 0xc3);
    ck_assert_uint_eq(ids[2], 0xa9);
    ck_assert_uint_eq(ids[3], 0x21);
    free(ids);
    int64_t k;
    round_trip(t, "(define (f x)\n\t(* x x)) ; \xe6\x97\xa5\xe6\x9c\xac", &k);
    ck_assert_int_eq(k, 32); /* 26 ASCII bytes + two 3-byte characters */
    round_trip(t, "", &k);
    ck_assert_int_eq(k, 0);
    char *text;
    size_t len;
    FAILS(moe_tokenizer_decode(t, (uint32_t[]){65, 256}, 2, &text, &len, NULL), MOE_ERR_INDEX,
          "tokenizer-decode: token 256 at position 1 is not a byte");
    moe_tokenizer *t2 = moe_tokenizer_retain(t);
    moe_tokenizer_release(t);
    ck_assert_int_eq(moe_tokenizer_vocab_size(t2), 256); /* still alive */
    moe_tokenizer_release(t2);
}
END_TEST

START_TEST(ids_only)
{
    moe_tokenizer *t;
    OK(moe_tokenizer_new_ids(&t, 50257, 50256));
    ck_assert_int_eq(moe_tokenizer_vocab_size(t), 50257);
    ck_assert_int_eq(moe_tokenizer_end_id(t), 50256);
    uint32_t *ids;
    int64_t n;
    FAILS(moe_tokenizer_encode(t, "hi", 2, &ids, &n, NULL), MOE_ERR_UNSUPPORTED, "reads token files only");
    moe_tokenizer_release(t);
    FAILS(moe_tokenizer_new_ids(&t, 0, -1), MOE_ERR_ARG, "vocabulary size must be in [1, 2^32], got 0");
    FAILS(moe_tokenizer_new_ids(&t, 10, 10), MOE_ERR_ARG, "end-of-document id 10 is outside [0, 10)");
}
END_TEST

START_TEST(sentencepiece_train_and_round_trip)
{
    tu_tmpdir();
    const char *src[] = {DATA "/spm-train.txt"};
    moe_tokenizer_train_options o;
    moe_tokenizer_train_options_default(&o);
    o.vocab_size = 400;
    moe_tokenizer *t;
    const char *model = tu_path("t.model");
    OK(moe_tokenizer_train(&t, model, src, 1, &o, NULL));
    ck_assert_int_eq(moe_tokenizer_get_kind(t), MOE_TOKENIZER_SENTENCEPIECE);
    /* byte fallback: 3 specials + 256 bytes + merges and characters */
    ck_assert_int_eq(moe_tokenizer_vocab_size(t), 400);
    ck_assert_int_eq(moe_tokenizer_end_id(t), 2); /* </s> */
    ck_assert_str_eq(moe_tokenizer_model_path(t), model);
    /* lossless on text it has seen and text it has not (bytes for unseen
     * characters, whitespace kept as it is) */
    int64_t n;
    const char *seen = "the quick brown fox jumps over the lazy dog";
    round_trip(t, seen, &n);
    ck_assert_int_lt(n, (int64_t)strlen(seen) / 2); /* the merges compress what they were trained on */
    round_trip(t, "  (define (square x) (* x x))\n\tint f(int x) { return x; }\n", NULL);
    round_trip(t, "h\xc3\xa9llo \xe6\x97\xa5\xe6\x9c\xac  QZ~", NULL);
    /* the file loads again as a tokenizer of its own, encoding the same way */
    moe_tokenizer *t2;
    OK(moe_tokenizer_new_sentencepiece(&t2, model, NULL));
    uint32_t *a, *b;
    int64_t na, nb;
    OK(moe_tokenizer_encode(t, seen, strlen(seen), &a, &na, NULL));
    OK(moe_tokenizer_encode(t2, seen, strlen(seen), &b, &nb, NULL));
    ck_assert_int_eq(na, nb);
    ck_assert(memcmp(a, b, (size_t)na * sizeof *a) == 0);
    free(a);
    free(b);
    char *text;
    size_t len;
    FAILS(moe_tokenizer_decode(t2, (uint32_t[]){5, 400}, 2, &text, &len, NULL), MOE_ERR_INDEX,
          "token 400 at position 1 is outside the vocabulary (400)");
    moe_tokenizer_release(t2);
    moe_tokenizer_release(t);
    tu_rmtmp();
}
END_TEST

START_TEST(sentencepiece_errors)
{
    tu_tmpdir();
    moe_tokenizer *t;
    FAILS(moe_tokenizer_new_sentencepiece(&t, DATA "/no-such.model", NULL), MOE_ERR_IO,
          "make-tokenizer: cannot load the sentencepiece model '" DATA "/no-such.model'");
    /* a file that is not a model */
    FAILS(moe_tokenizer_new_sentencepiece(&t, DATA "/spm-train.txt", NULL), MOE_ERR_IO,
          "cannot load the sentencepiece model");
    const char *missing[] = {DATA "/no-such-dir"};
    FAILS(moe_tokenizer_train(&t, tu_path("m.model"), missing, 1, NULL, NULL), MOE_ERR_IO,
          "train-tokenizer: no such file or directory: '" DATA "/no-such-dir'");
    const char *src[] = {DATA "/spm-train.txt"};
    moe_tokenizer_train_options o;
    moe_tokenizer_train_options_default(&o);
    o.model_type = "quantum";
    FAILS(moe_tokenizer_train(&t, tu_path("m.model"), src, 1, &o, NULL), MOE_ERR_BACKEND,
          "sentencepiece training");
    ck_assert(access(tu_path("m.model"), F_OK) != 0);
    o.model_type = "bpe";
    o.vocab_size = 2;
    FAILS(moe_tokenizer_train(&t, tu_path("m.model"), src, 1, &o, NULL), MOE_ERR_ARG,
          "#:vocab-size must be >= 8, got 2");
    tu_rmtmp();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("tokenizer");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, bytes);
    tcase_add_test(tc, ids_only);
    tcase_add_test(tc, sentencepiece_train_and_round_trip);
    tcase_add_test(tc, sentencepiece_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
