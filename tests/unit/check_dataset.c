/* check_dataset.c — datasets (core/train/dataset.c) on the tiny corpora of
 * tests/data, with the bytes tokenizer so every value is worked out by hand:
 *
 *   corpus/alpha/train  "abcdefgh"         stream  a b c d e f g h \0       (9 tokens)
 *   corpus/beta/train   "xyz" \0 "uv"      stream  x y z \0 u v \0          (7 tokens)
 *   corpus/alpha/val    "ABCDEFGHIJK"      stream  A … K \0                 (12 tokens)
 *   tree/               x/1.txt "1", x/2.txt "22", y.txt "yy", z.md "zz", .hidden (skipped)
 *
 * With S = 2, alpha has (9 - 1) / 2 = 4 sequences and beta 3; sequence j is
 * stream[2j, 2j + 2]. */
#include <string.h>

#include "tmpdir.h"
#include "testutil.h"
#include "train/dataset.h"
#include "train/tokfile.h"

#define DATA MOE_TEST_DATA

static const char *alpha_src[] = {DATA "/corpus/alpha"};
static const char *beta_src[] = {DATA "/corpus/beta"};

static moe_dataset *open_ab(int64_t S, moe_batching batching, const double *weights, bool shuffle, uint64_t seed)
{
    moe_dataset_domain doms[] = {{"alpha", alpha_src, 1}, {"beta", beta_src, 1}};
    moe_dataset_config cfg;
    moe_dataset_config_default(&cfg);
    cfg.domains = doms;
    cfg.n_domains = 2;
    cfg.seq_len = S;
    cfg.batching = batching;
    cfg.weights = weights;
    cfg.shuffle = shuffle;
    cfg.seed = seed;
    moe_dataset *ds;
    OK(moe_dataset_new(&ds, &cfg));
    return ds;
}

/* Row B of an i64 [B S] tensor as text (bytes; NUL shown as '|'). */
static const char *row_text(const moe_tensor *t, int64_t b)
{
    static char buf[4][64];
    static int k;
    char *p = buf[k++ % 4];
    const int64_t *v = (const int64_t *)moe_tensor_data(t) + b * t->shape[1];
    for (int64_t s = 0; s < t->shape[1]; s++) p[s] = v[s] ? (char)v[s] : '|';
    p[t->shape[1]] = '\0';
    return p;
}

START_TEST(sequences_in_file_order)
{
    /* one domain, no shuffling: the sequences of alpha in order, then again */
    moe_dataset_domain doms[] = {{"alpha", alpha_src, 1}};
    moe_dataset_config cfg;
    moe_dataset_config_default(&cfg);
    cfg.domains = doms;
    cfg.n_domains = 1;
    cfg.seq_len = 4;
    cfg.shuffle = false;
    moe_dataset *ds;
    OK(moe_dataset_new(&ds, &cfg));
    ck_assert_int_eq(moe_dataset_vocab_size(ds), 256);
    ck_assert_int_eq(moe_dataset_seq_len(ds), 4);
    moe_dataset_domain_stats st;
    moe_dataset_domain_stats_get(ds, 0, &st);
    ck_assert_int_eq(st.files, 1);
    ck_assert_int_eq(st.documents, 1);
    ck_assert_int_eq(st.tokens, 9);
    ck_assert_int_eq(st.sequences, 2);
    ck_assert(st.probability == 1.0);
    moe_tensor *x, *y;
    int32_t dom[3];
    OK(moe_dataset_next_batch(&x, &y, dom, ds, 3, -1));
    ck_assert_int_eq(x->dtype, MOE_I64);
    ck_assert_int_eq(x->shape[0], 3);
    ck_assert_int_eq(x->shape[1], 4);
    ck_assert_str_eq(row_text(x, 0), "abcd");
    ck_assert_str_eq(row_text(y, 0), "bcde");
    ck_assert_str_eq(row_text(x, 1), "efgh");
    ck_assert_str_eq(row_text(y, 1), "fgh|");
    ck_assert_str_eq(row_text(x, 2), "abcd"); /* second epoch */
    ck_assert_int_eq(dom[0] + dom[1] + dom[2], 0);
    int64_t state[7];
    ck_assert_int_eq(moe_dataset_state_size(ds), 7);
    moe_dataset_get_state(ds, state);
    ck_assert_int_eq(state[4], 1); /* epoch */
    ck_assert_int_eq(state[5], 1); /* cursor */
    ck_assert_int_eq(state[6], 2); /* sequences */
    moe_tensor_release(x);
    moe_tensor_release(y);
    moe_dataset_free(ds);
}
END_TEST

START_TEST(targets_are_tokens_shifted)
{
    moe_dataset *ds = open_ab(2, MOE_BATCHING_SHUFFLED, NULL, true, 7);
    moe_tensor *x, *y;
    int32_t dom[16];
    OK(moe_dataset_next_batch(&x, &y, dom, ds, 16, -1));
    const char *alpha = "abcdefgh|", *beta = "xyz|uv|";
    for (int b = 0; b < 16; b++) {
        const char *stream = dom[b] == 0 ? alpha : beta;
        const char *xt = row_text(x, b), *yt = row_text(y, b);
        const char *at = strstr(stream, xt);
        ck_assert_msg(at && (at - stream) % 2 == 0, "row %d '%s' is not a sequence of domain %d", b, xt, dom[b]);
        ck_assert_int_eq(yt[0], xt[1]);
        ck_assert_int_eq(yt[1], at[2]);
    }
    moe_tensor_release(x);
    moe_tensor_release(y);
    moe_dataset_free(ds);
}
END_TEST

/* Each epoch of a shuffled domain visits every sequence once. */
START_TEST(epochs_are_permutations)
{
    double only_alpha[] = {1, 0};
    moe_dataset *ds = open_ab(2, MOE_BATCHING_SHUFFLED, only_alpha, true, 3);
    moe_tensor *x, *y;
    OK(moe_dataset_next_batch(&x, &y, NULL, ds, 12, -1));
    const char *seqs[] = {"ab", "cd", "ef", "gh"};
    for (int e = 0; e < 3; e++) {
        int seen[4] = {0};
        for (int b = 4 * e; b < 4 * e + 4; b++)
            for (int j = 0; j < 4; j++) seen[j] += strcmp(row_text(x, b), seqs[j]) == 0;
        for (int j = 0; j < 4; j++) ck_assert_msg(seen[j] == 1, "epoch %d saw '%s' %d times", e, seqs[j], seen[j]);
    }
    moe_tensor_release(x);
    moe_tensor_release(y);
    moe_dataset_free(ds);
}
END_TEST

START_TEST(determinism_and_resumption)
{
    moe_dataset *a = open_ab(2, MOE_BATCHING_SHUFFLED, NULL, true, 11);
    moe_dataset *b = open_ab(2, MOE_BATCHING_SHUFFLED, NULL, true, 11);
    moe_dataset *c = open_ab(2, MOE_BATCHING_SHUFFLED, NULL, true, 12);
    moe_tensor *xa, *ya, *xb, *yb, *xc, *yc;
    OK(moe_dataset_next_batch(&xa, &ya, NULL, a, 32, -1));
    OK(moe_dataset_next_batch(&xb, &yb, NULL, b, 32, -1));
    OK(moe_dataset_next_batch(&xc, &yc, NULL, c, 32, -1));
    ck_assert(memcmp(moe_tensor_data(xa), moe_tensor_data(xb), 32 * 2 * 8) == 0);
    ck_assert(memcmp(moe_tensor_data(ya), moe_tensor_data(yb), 32 * 2 * 8) == 0);
    ck_assert(memcmp(moe_tensor_data(xa), moe_tensor_data(xc), 32 * 2 * 8) != 0); /* another seed */
    /* save a's state, take two batches, restore it into b: b continues exactly as a did */
    int64_t state[10];
    moe_dataset_get_state(a, state);
    moe_tensor *x1, *y1, *x2, *y2, *z1, *w1, *z2, *w2;
    int32_t d1[5], d2[5], e1[5], e2[5];
    OK(moe_dataset_next_batch(&x1, &y1, d1, a, 5, -1));
    OK(moe_dataset_next_batch(&x2, &y2, d2, a, 5, -1));
    OK(moe_dataset_next_batch(&z1, &w1, NULL, b, 3, -1)); /* b wanders off first */
    moe_tensor_release(z1);
    moe_tensor_release(w1);
    OK(moe_dataset_set_state(b, state, 10));
    OK(moe_dataset_next_batch(&z1, &w1, e1, b, 5, -1));
    OK(moe_dataset_next_batch(&z2, &w2, e2, b, 5, -1));
    ck_assert(memcmp(moe_tensor_data(x1), moe_tensor_data(z1), 5 * 2 * 8) == 0);
    ck_assert(memcmp(moe_tensor_data(y2), moe_tensor_data(w2), 5 * 2 * 8) == 0);
    ck_assert(memcmp(d1, e1, sizeof d1) == 0 && memcmp(d2, e2, sizeof d2) == 0);
    /* reset gives the first batch again */
    moe_dataset_reset(b);
    moe_tensor *r, *s;
    OK(moe_dataset_next_batch(&r, &s, NULL, b, 32, -1));
    ck_assert(memcmp(moe_tensor_data(xa), moe_tensor_data(r), 32 * 2 * 8) == 0);
    moe_tensor *all[] = {xa, ya, xb, yb, xc, yc, x1, y1, x2, y2, z1, w1, z2, w2, r, s};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) moe_tensor_release(all[i]);
    moe_dataset_free(a);
    moe_dataset_free(b);
    moe_dataset_free(c);
}
END_TEST

START_TEST(bad_states_leave_the_dataset_alone)
{
    moe_dataset *ds = open_ab(2, MOE_BATCHING_SHUFFLED, NULL, true, 1);
    int64_t good[10], bad[10];
    moe_dataset_get_state(ds, good);
    memcpy(bad, good, sizeof bad);
    bad[2] = 3;
    FAILS(moe_dataset_set_state(ds, bad, 10), MOE_ERR_ARG, "state is for seq-len 3; this dataset's is 2");
    memcpy(bad, good, sizeof bad);
    bad[6] = 5;
    FAILS(moe_dataset_set_state(ds, bad, 10), MOE_ERR_ARG,
          "the state is for domain 'alpha' with 5 sequences; this dataset's has 4");
    memcpy(bad, good, sizeof bad);
    bad[8] = 4;
    FAILS(moe_dataset_set_state(ds, bad, 10), MOE_ERR_ARG, "domain 'beta': epoch 0 and cursor 4 are out of range");
    FAILS(moe_dataset_set_state(ds, good, 7), MOE_ERR_ARG, "this dataset has 2");
    int64_t now[10];
    moe_dataset_get_state(ds, now);
    ck_assert(memcmp(now, good, sizeof now) == 0);
    moe_tensor *x, *y;
    FAILS(moe_dataset_next_batch(&x, &y, NULL, ds, 0, -1), MOE_ERR_ARG, "batch size must be >= 1, got 0");
    FAILS(moe_dataset_next_batch(&x, &y, NULL, ds, 2, 2), MOE_ERR_INDEX, "domain index 2 is outside [0, 2)");
    moe_tensor *wrong;
    OK(moe_tensor_empty(&wrong, MOE_I64, MOE_CPU, 2, SHAPE(4, 3)));
    FAILS(moe_dataset_next_batch_into(wrong, wrong, NULL, ds, -1), MOE_ERR_SHAPE, "tokens must be [B 2]");
    moe_tensor_release(wrong);
    moe_dataset_get_state(ds, now);
    ck_assert(memcmp(now, good, sizeof now) == 0);
    moe_dataset_free(ds);
}
END_TEST

START_TEST(single_domain_batches)
{
    moe_dataset *ds = open_ab(2, MOE_BATCHING_SINGLE_DOMAIN, NULL, true, 5);
    ck_assert_int_eq(moe_dataset_get_batching(ds), MOE_BATCHING_SINGLE_DOMAIN);
    int from[2] = {0};
    for (int i = 0; i < 40; i++) {
        moe_tensor *x, *y;
        int32_t dom[6];
        OK(moe_dataset_next_batch(&x, &y, dom, ds, 6, -1));
        for (int b = 1; b < 6; b++) ck_assert_int_eq(dom[b], dom[0]);
        from[dom[0]]++;
        moe_tensor_release(x);
        moe_tensor_release(y);
    }
    ck_assert(from[0] > 0 && from[1] > 0); /* both domains get batches */
    int64_t state[10];
    moe_dataset_get_state(ds, state);
    ck_assert_int_eq(state[1], 40); /* one draw per batch */
    moe_dataset_free(ds);
}
END_TEST

/* Mixture shares over N = 20000 rows. By size: p = (9/16, 7/16) = (0.5625,
 * 0.4375); with weights 3:1, (0.75, 0.25). The binomial standard deviation of
 * a share is at most sqrt(0.25 / N) = 0.0035: 0.015 is over four of them. */
START_TEST(mixture_shares)
{
    const int N = 20000;
    double weights[] = {3, 1};
    const double *ws[] = {NULL, weights};
    double expect[] = {9.0 / 16, 0.75};
    for (int k = 0; k < 2; k++) {
        moe_dataset *ds = open_ab(2, MOE_BATCHING_SHUFFLED, ws[k], true, 0);
        moe_dataset_domain_stats st;
        moe_dataset_domain_stats_get(ds, 0, &st);
        ck_assert_double_eq_tol(st.probability, expect[k], 1e-15);
        moe_tensor *x, *y;
        int32_t *dom = malloc(N * sizeof *dom);
        OK(moe_dataset_next_batch(&x, &y, dom, ds, N, -1));
        int alpha = 0;
        for (int b = 0; b < N; b++) alpha += dom[b] == 0;
        ck_assert_msg(fabs((double)alpha / N - expect[k]) < 0.015, "alpha share %g, expected %g",
                      (double)alpha / N, expect[k]);
        free(dom);
        moe_tensor_release(x);
        moe_tensor_release(y);
        moe_dataset_free(ds);
    }
}
END_TEST

START_TEST(evaluation_by_domain)
{
    moe_dataset_domain doms[] = {{"alpha", alpha_src, 1}, {"beta", beta_src, 1}};
    moe_dataset_config cfg;
    moe_dataset_config_default(&cfg);
    cfg.domains = doms;
    cfg.n_domains = 2;
    cfg.seq_len = 3;
    cfg.split = MOE_DATA_VAL;
    cfg.shuffle = false;
    moe_dataset *ds;
    OK(moe_dataset_new(&ds, &cfg));
    moe_tensor *x, *y;
    int32_t dom[3];
    /* beta/val: \0 \0 "XYZUVW" \0 is one document: X Y Z U V W \0 (7 tokens, 2 sequences) */
    OK(moe_dataset_next_batch(&x, &y, dom, ds, 2, 1));
    ck_assert_str_eq(row_text(x, 0), "XYZ");
    ck_assert_str_eq(row_text(y, 1), "VW|");
    ck_assert_int_eq(dom[0] + dom[1], 2);
    moe_tensor_release(x);
    moe_tensor_release(y);
    OK(moe_dataset_next_batch(&x, &y, dom, ds, 1, 0));
    ck_assert_str_eq(row_text(x, 0), "ABC");
    int64_t state[10];
    moe_dataset_get_state(ds, state);
    ck_assert_int_eq(state[1], 0); /* no mixture draws */
    moe_tensor_release(x);
    moe_tensor_release(y);
    moe_dataset_free(ds);
}
END_TEST

START_TEST(directories_globs_and_token_files)
{
    tu_tmpdir();
    const uint32_t toks[] = {10, 20, 30, 40, 50};
    OK(moe_tokfile_write(tu_path("t.bin"), toks, 5, MOE_TOKFILE_BIN, "write-token-file"));
    OK(moe_tokfile_write(tu_path("u.u32"), toks, 2, MOE_TOKFILE_U32, "write-token-file"));
    const char *tree[] = {DATA "/tree"};
    const char *globbed[] = {DATA "/tree/*.md", DATA "/tree/x/[2]*"};
    const char *tokens[] = {tu_path("*")};
    moe_dataset_domain doms[] = {{"tree", tree, 1}, {"glob", globbed, 2}, {"tok", tokens, 1}};
    moe_dataset_config cfg;
    moe_dataset_config_default(&cfg);
    cfg.domains = doms;
    cfg.n_domains = 3;
    cfg.seq_len = 1;
    cfg.shuffle = false;
    moe_dataset *ds;
    OK(moe_dataset_new(&ds, &cfg));
    /* tree: x/1.txt, x/2.txt, y.txt, z.md in that order: "1|22|yy|zz|" */
    moe_dataset_domain_stats st;
    moe_dataset_domain_stats_get(ds, 0, &st);
    ck_assert_int_eq(st.files, 4);
    ck_assert_int_eq(st.tokens, 11);
    ck_assert_int_eq(st.sequences, 10);
    moe_tensor *x, *y;
    OK(moe_dataset_next_batch(&x, &y, NULL, ds, 6, 0));
    const int64_t *v = moe_tensor_data(x);
    const int64_t want[] = {'1', 0, '2', '2', 0, 'y'};
    for (int i = 0; i < 6; i++) ck_assert_int_eq(v[i], want[i]);
    moe_tensor_release(x);
    moe_tensor_release(y);
    /* glob: z.md then x/2.txt: "zz|22|" */
    moe_dataset_domain_stats_get(ds, 1, &st);
    ck_assert_int_eq(st.files, 2);
    ck_assert_int_eq(st.tokens, 6);
    /* tokens: t.bin then u.u32, as they are (no separators added) */
    moe_dataset_domain_stats_get(ds, 2, &st);
    ck_assert_int_eq(st.tokens, 7);
    OK(moe_dataset_next_batch(&x, &y, NULL, ds, 6, 2));
    v = moe_tensor_data(y);
    const int64_t want_y[] = {20, 30, 40, 50, 10, 20};
    for (int i = 0; i < 6; i++) ck_assert_int_eq(v[i], want_y[i]);
    moe_tensor_release(x);
    moe_tensor_release(y);
    ck_assert_int_eq(moe_dataset_domain_index(ds, "tok"), 2);
    ck_assert_int_eq(moe_dataset_domain_index(ds, "nope"), -1);
    ck_assert_str_eq(moe_dataset_domain_name(ds, 1), "glob");
    moe_dataset_free(ds);
    tu_rmtmp();
}
END_TEST

/* One failing domain spec D next to a good one: the status, and a message
 * with NEEDLE. */
static void open_fails(const char *const *src, int n_src, int64_t S, moe_status code, const char *needle)
{
    moe_dataset_domain doms[] = {{"alpha", alpha_src, 1}, {"bad", src, n_src}};
    moe_dataset_config cfg;
    moe_dataset_config_default(&cfg);
    cfg.domains = doms;
    cfg.n_domains = 2;
    cfg.seq_len = S;
    moe_dataset *ds = (moe_dataset *)1;
    FAILS(moe_dataset_new(&ds, &cfg), code, needle);
    ck_assert_ptr_eq(ds, (moe_dataset *)1); /* untouched */
    ck_assert_msg(strstr(moe_last_error(), "make-text-dataset: ") == moe_last_error(), "%s", moe_last_error());
}

START_TEST(bad_sources)
{
    const char *missing[] = {DATA "/corpus/gamma"};
    open_fails(missing, 1, 2, MOE_ERR_IO, "no such file or directory: '" DATA "/corpus/gamma' (domain 'bad')");
    const char *empty[] = {DATA "/empty"};
    open_fails(empty, 1, 2, MOE_ERR_VALUE,
               "domain 'bad' is empty: '" DATA "/empty/train' holds no documents");
    const char *nomatch[] = {DATA "/tree/*.rst"};
    open_fails(nomatch, 1, 2, MOE_ERR_IO, "no file matches '" DATA "/tree/*.rst' (domain 'bad')");
    /* beta has 7 tokens: S = 7 needs 8 */
    open_fails(beta_src, 1, 7, MOE_ERR_VALUE,
               "domain 'bad' has 7 tokens in '" DATA "/corpus/beta/train', fewer than one sequence needs "
               "(seq-len + 1 = 8)");
    tu_tmpdir();
    /* a corrupt token file among the sources */
    const char *corrupt = tu_write("c.bin", "\x01\x02\x03\x04\x05\x06\x07\x08", 8);
    const char *cs[] = {DATA "/corpus/beta", corrupt};
    open_fails(cs, 2, 2, MOE_ERR_IO, "c.bin' is truncated: 8 bytes, shorter than the 1024-byte header");
    /* token ids beyond the bytes tokenizer's vocabulary */
    OK(moe_tokfile_write(tu_path("big.u16"), (uint32_t[]){1, 2, 300, 4}, 4, MOE_TOKFILE_U16, "t"));
    const char *big[] = {tu_path("big.u16")};
    open_fails(big, 1, 2, MOE_ERR_VALUE, "big.u16' (domain 'bad'): token 300 at position 2 is outside the "
                                         "tokenizer's vocabulary of 256");
    tu_rmtmp();
}
END_TEST

START_TEST(bad_configs)
{
    moe_dataset_domain twice[] = {{"alpha", alpha_src, 1}, {"alpha", beta_src, 1}};
    moe_dataset_config cfg;
    moe_dataset_config_default(&cfg);
    moe_dataset *ds;
    FAILS(moe_dataset_new(&ds, &cfg), MOE_ERR_ARG, "make-text-dataset: no domains given");
    cfg.domains = twice;
    cfg.n_domains = 2;
    FAILS(moe_dataset_new(&ds, &cfg), MOE_ERR_ARG, "domain 'alpha' is named twice");
    twice[1].name = "beta";
    cfg.seq_len = 0;
    FAILS(moe_dataset_new(&ds, &cfg), MOE_ERR_ARG, "#:seq-len must be >= 1, got 0");
    cfg.seq_len = 2;
    double w[] = {1, -1};
    cfg.weights = w;
    FAILS(moe_dataset_new(&ds, &cfg), MOE_ERR_ARG, "weight of domain 'beta' must be finite and >= 0, got -1");
    w[1] = 0;
    w[0] = 0;
    FAILS(moe_dataset_new(&ds, &cfg), MOE_ERR_ARG, "the domain weights are all zero");
}
END_TEST

START_TEST(sentencepiece_dataset)
{
    tu_tmpdir();
    const char *src[] = {DATA "/spm-train.txt"};
    moe_tokenizer_train_options o;
    moe_tokenizer_train_options_default(&o);
    o.vocab_size = 400;
    moe_tokenizer *tok;
    OK(moe_tokenizer_train(&tok, tu_path("t.model"), src, 1, &o, NULL));
    moe_dataset_domain doms[] = {{"alpha", alpha_src, 1}};
    moe_dataset_config cfg;
    moe_dataset_config_default(&cfg);
    cfg.domains = doms;
    cfg.n_domains = 1;
    cfg.seq_len = 2;
    cfg.shuffle = false;
    cfg.tokenizer = tok;
    moe_dataset *ds;
    OK(moe_dataset_new(&ds, &cfg));
    moe_tokenizer_release(tok); /* the dataset keeps its own reference */
    ck_assert_int_eq(moe_dataset_vocab_size(ds), 400);
    /* the stream is encode("abcdefgh") followed by </s> */
    uint32_t *ids;
    int64_t n;
    OK(moe_tokenizer_encode(moe_dataset_tokenizer(ds), "abcdefgh", 8, &ids, &n, NULL));
    moe_dataset_domain_stats st;
    moe_dataset_domain_stats_get(ds, 0, &st);
    ck_assert_int_eq(st.tokens, n + 1);
    moe_tensor *x, *y;
    OK(moe_dataset_next_batch(&x, &y, NULL, ds, 1, -1));
    const int64_t *xv = moe_tensor_data(x), *yv = moe_tensor_data(y);
    ck_assert_int_eq(xv[0], ids[0]);
    ck_assert_int_eq(yv[0], n > 1 ? (int64_t)ids[1] : 2);
    free(ids);
    moe_tensor_release(x);
    moe_tensor_release(y);
    moe_dataset_free(ds);
    tu_rmtmp();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("dataset");
    TCase *tc = tcase_create("batches");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, sequences_in_file_order);
    tcase_add_test(tc, targets_are_tokens_shifted);
    tcase_add_test(tc, epochs_are_permutations);
    tcase_add_test(tc, determinism_and_resumption);
    tcase_add_test(tc, single_domain_batches);
    tcase_add_test(tc, mixture_shares);
    tcase_add_test(tc, evaluation_by_domain);
    suite_add_tcase(s, tc);
    tc = tcase_create("sources");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, directories_globs_and_token_files);
    tcase_add_test(tc, sentencepiece_dataset);
    suite_add_tcase(s, tc);
    tc = tcase_create("errors");
    tcase_add_test(tc, bad_states_leave_the_dataset_alone);
    tcase_add_test(tc, bad_sources);
    tcase_add_test(tc, bad_configs);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
