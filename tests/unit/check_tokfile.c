/* check_tokfile.c — token files (core/train/tokfile.c): raw u16/u32 and llm.c
 * .bin shards read from bytes laid out by hand, written back byte for byte,
 * and every way a corrupt file fails with a message naming it. */
#include <string.h>

#include "tmpdir.h"
#include "testutil.h"
#include "train/tokfile.h"

/* Little-endian bytes of V. */
static void le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* A .bin shard: header (MAGIC, VERSION, COUNT) + BODY_LEN bytes of BODY. */
static const char *write_bin(const char *name, uint32_t magic, uint32_t version, uint32_t count,
                             const unsigned char *body, size_t body_len)
{
    unsigned char buf[1024 + 64] = {0};
    le32(buf, magic);
    le32(buf + 4, version);
    le32(buf + 8, count);
    memcpy(buf + 1024, body, body_len);
    return tu_write(name, buf, 1024 + body_len);
}

static void expect_tokens(const char *path, moe_tokfile_format f, int64_t n, const uint32_t *want)
{
    uint32_t *t = NULL;
    int64_t got = -1;
    OK(moe_tokfile_read(&t, &got, path, f, "read-token-file"));
    ck_assert_int_eq(got, n);
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(t[i] == want[i], "%s: token %lld is %u, expected %u", path, (long long)i, t[i], want[i]);
    free(t);
}

START_TEST(raw_u16_and_u32)
{
    tu_tmpdir();
    /* 1, 258, 65535 as u16 LE; 7, 70000, 4294967295 as u32 LE */
    const unsigned char u16[] = {0x01, 0x00, 0x02, 0x01, 0xff, 0xff};
    const unsigned char u32[] = {7, 0, 0, 0, 0x70, 0x11, 0x01, 0x00, 0xff, 0xff, 0xff, 0xff};
    expect_tokens(tu_write("a.u16", u16, sizeof u16), MOE_TOKFILE_U16, 3, (uint32_t[]){1, 258, 65535});
    expect_tokens(tu_write("a.u32", u32, sizeof u32), MOE_TOKFILE_U32, 3, (uint32_t[]){7, 70000, 4294967295u});
    /* an empty raw file holds no tokens */
    expect_tokens(tu_write("e.u16", "", 0), MOE_TOKFILE_U16, 0, NULL);
    tu_rmtmp();
}
END_TEST

START_TEST(bin_u16_and_u32)
{
    tu_tmpdir();
    const unsigned char body16[] = {5, 0, 6, 0, 0x57, 0xc4}; /* 5 6 50263 */
    expect_tokens(write_bin("gpt2.bin", 20240520, 1, 3, body16, sizeof body16), MOE_TOKFILE_BIN, 3,
                  (uint32_t[]){5, 6, 50263});
    const unsigned char body32[] = {0x00, 0xf4, 0x01, 0x00, 1, 0, 0, 0}; /* 128000 1 */
    const char *p32 = write_bin("llama.bin", 20240801, 7, 2, body32, sizeof body32);
    expect_tokens(p32, MOE_TOKFILE_BIN, 2, (uint32_t[]){128000, 1});
    expect_tokens(p32, MOE_TOKFILE_BIN32, 2, (uint32_t[]){128000, 1});
    tu_rmtmp();
}
END_TEST

/* What the writer puts on disk, byte for byte. */
START_TEST(write_layout)
{
    tu_tmpdir();
    const uint32_t toks[] = {5, 6, 50263};
    const char *p = tu_path("w.bin");
    OK(moe_tokfile_write(p, toks, 3, MOE_TOKFILE_BIN, "write-token-file"));
    FILE *f = fopen(p, "rb");
    unsigned char buf[1100];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    ck_assert_uint_eq(n, 1024 + 6);
    const unsigned char head[12] = {0x88, 0xd8, 0x34, 0x01, 1, 0, 0, 0, 3, 0, 0, 0}; /* 20240520 = 0x0134d888 */
    ck_assert(memcmp(buf, head, 12) == 0);
    for (int i = 12; i < 1024; i++) ck_assert_int_eq(buf[i], 0);
    const unsigned char body[] = {5, 0, 6, 0, 0x57, 0xc4};
    ck_assert(memcmp(buf + 1024, body, 6) == 0);
    /* u32 raw round trip, and a token too wide for u16 is refused */
    const uint32_t wide[] = {1, 70000};
    OK(moe_tokfile_write(tu_path("w.u32"), wide, 2, MOE_TOKFILE_U32, "write-token-file"));
    expect_tokens(tu_path("w.u32"), MOE_TOKFILE_U32, 2, wide);
    FAILS(moe_tokfile_write(tu_path("x.u16"), wide, 2, MOE_TOKFILE_U16, "write-token-file"), MOE_ERR_VALUE,
          "token 70000 at position 1");
    ck_assert(access(tu_path("x.u16"), F_OK) != 0); /* nothing written */
    tu_rmtmp();
}
END_TEST

START_TEST(corrupt_files)
{
    tu_tmpdir();
    uint32_t *t = NULL;
    int64_t n;
    const unsigned char body[] = {1, 0, 2, 0};
    /* bad magic */
    const char *p = write_bin("magic.bin", 12345, 1, 2, body, 4);
    FAILS(moe_tokfile_read(&t, &n, p, MOE_TOKFILE_BIN, "read-token-file"), MOE_ERR_IO, "bad magic 12345");
    ck_assert(strstr(moe_last_error(), "magic.bin") != NULL);
    ck_assert(strstr(moe_last_error(), "read-token-file: ") == moe_last_error());
    /* wrong version for its magic */
    p = write_bin("version.bin", 20240520, 2, 2, body, 4);
    FAILS(moe_tokfile_read(&t, &n, p, MOE_TOKFILE_BIN, "read-token-file"), MOE_ERR_IO,
          "unsupported .bin version 2 for magic 20240520");
    /* truncated inside the header */
    p = tu_write("short.bin", body, 4);
    FAILS(moe_tokfile_read(&t, &n, p, MOE_TOKFILE_BIN, "read-token-file"), MOE_ERR_IO,
          "short.bin' is truncated: 4 bytes, shorter than the 1024-byte header");
    /* the header counts more tokens than the file holds */
    p = write_bin("count.bin", 20240520, 1, 5, body, 4);
    FAILS(moe_tokfile_read(&t, &n, p, MOE_TOKFILE_BIN, "read-token-file"), MOE_ERR_IO,
          "count.bin' is truncated: its header counts 5 tokens (10 bytes) but 4 bytes follow");
    /* ... or fewer */
    p = write_bin("extra.bin", 20240520, 1, 1, body, 4);
    FAILS(moe_tokfile_read(&t, &n, p, MOE_TOKFILE_BIN, "read-token-file"), MOE_ERR_IO,
          "2 bytes follow the 1 tokens its header counts");
    /* a negative count */
    p = write_bin("neg.bin", 20240520, 1, 0xffffffffu, body, 4);
    FAILS(moe_tokfile_read(&t, &n, p, MOE_TOKFILE_BIN, "read-token-file"), MOE_ERR_IO, "count -1 is negative");
    /* raw sizes that are not whole tokens */
    p = tu_write("odd.u16", body, 3);
    FAILS(moe_tokfile_read(&t, &n, p, MOE_TOKFILE_U16, "read-token-file"), MOE_ERR_IO,
          "odd.u16': 3 bytes is not a whole number of u16 tokens");
    p = tu_write("odd.u32", body, 2);
    FAILS(moe_tokfile_read(&t, &n, p, MOE_TOKFILE_U32, "read-token-file"), MOE_ERR_IO,
          "2 bytes is not a whole number of u32 tokens");
    /* a missing file */
    FAILS(moe_tokfile_read(&t, &n, tu_path("none.bin"), MOE_TOKFILE_BIN, "read-token-file"), MOE_ERR_IO,
          "none.bin': no such file or directory");
    ck_assert_ptr_null(t);
    tu_rmtmp();
}
END_TEST

START_TEST(formats_by_name_and_path)
{
    moe_tokfile_format f;
    ck_assert(moe_tokfile_format_of_path("x/train_000.bin", &f) && f == MOE_TOKFILE_BIN);
    ck_assert(moe_tokfile_format_of_path("a.u16", &f) && f == MOE_TOKFILE_U16);
    ck_assert(moe_tokfile_format_of_path("a.u32", &f) && f == MOE_TOKFILE_U32);
    ck_assert(!moe_tokfile_format_of_path("notes.txt", &f));
    ck_assert(!moe_tokfile_format_of_path("bin", &f));
    for (int i = 0; i < MOE_TOKFILE_FORMAT_COUNT; i++) {
        ck_assert(moe_tokfile_format_parse(moe_tokfile_format_name((moe_tokfile_format)i), &f));
        ck_assert_int_eq(f, i);
    }
    ck_assert(!moe_tokfile_format_parse("u8", &f));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("tokfile");
    TCase *tc = tcase_create("tokfile");
    tcase_add_test(tc, raw_u16_and_u32);
    tcase_add_test(tc, bin_u16_and_u32);
    tcase_add_test(tc, write_layout);
    tcase_add_test(tc, corrupt_files);
    tcase_add_test(tc, formats_by_name_and_path);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
