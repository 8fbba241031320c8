/* check_safetensors.c — safetensors files (core/train/safetensors.c) and a
 * model's tensors in them (core/train/model_file.c): byte-exact agreement
 * with an independent writer (tests/python/safetensors_np.py made
 * reference.safetensors), every file of the damaged corpus refused with its
 * own message, truncation at every length and a flip of every byte refused,
 * atomic writes that leave no temporary file, and model loads that change
 * nothing unless the whole file fits. */
#include <dirent.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nn/model.h"
#include "testutil.h"
#include "train/model_file.h"
#include "train/safetensors.h"

static char dir[64];
static char path[256];

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/moelab-st-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/t.safetensors", dir);
}

static void teardown(void)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[512];
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    if (d) closedir(d);
    rmdir(dir);
}

static unsigned char *slurp(const char *p, size_t *n)
{
    FILE *f = fopen(p, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", p);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)len + 1);
    ck_assert_int_eq(fread(b, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return b;
}

static void spit(const char *p, const unsigned char *b, size_t n)
{
    FILE *f = fopen(p, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fwrite(b, 1, n, f), n);
    fclose(f);
}

/* Files in DIR (the temporary ones of an atomic write included). */
static int files_in_dir(void)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static const char *ref_path(const char *name)
{
    static char p[512];
    snprintf(p, sizeof p, "%s/%s", MOE_BAD_FILES_DIR, name);
    return p;
}

/* The reference file: every dtype, a scalar, an empty tensor; its values as
 * the generator wrote them, then written again by moelab byte for byte. */
START_TEST(test_reference_bytes)
{
    moe_safetensors *st;
    OK(moe_safetensors_load(&st, ref_path("reference.safetensors")));
    ck_assert_int_eq(st->count, 7);
    const char *order[] = {"f64", "f32", "bf16", "i64", "i32", "bool", "empty"};
    for (int i = 0; i < 7; i++) ck_assert_str_eq(st->names[i], order[i]);
    moe_tensor *f64 = moe_safetensors_get(st, "f64");
    ck_assert_int_eq(f64->dtype, MOE_F64);
    ck_assert_int_eq(f64->ndim, 2);
    tu_assert_values(f64, 6, (double[]){1.5, -2.25, 0.0, 1e-300, 3.0, -0.125}, 0, 0, "f64");
    moe_tensor *f32 = moe_safetensors_get(st, "f32");
    ck_assert_int_eq(f32->ndim, 0);
    tu_assert_values(f32, 1, (double[]){0.75}, 0, 0, "f32");
    moe_tensor *bf = moe_safetensors_get(st, "bf16");
    ck_assert_int_eq(bf->dtype, MOE_BF16);
    tu_assert_values(bf, 3, (double[]){1.0, -0.5, 3.0}, 0, 0, "bf16");
    tu_assert_values(moe_safetensors_get(st, "i64"), 2, (double[]){-1099511627776.0, 7}, 0, 0, "i64");
    moe_tensor *i32 = moe_safetensors_get(st, "i32");
    ck_assert_int_eq(i32->dtype, MOE_I32);
    tu_assert_values(i32, 2, (double[]){-3, 2147483647}, 0, 0, "i32");
    tu_assert_values(moe_safetensors_get(st, "bool"), 3, (double[]){1, 0, 1}, 0, 0, "bool");
    moe_tensor *empty = moe_safetensors_get(st, "empty");
    ck_assert_int_eq(empty->shape[0], 0);
    ck_assert_int_eq(empty->shape[1], 2);
    ck_assert_str_eq(moe_safetensors_meta(st, "format"), "test");
    ck_assert_str_eq(moe_safetensors_meta(st, "note"), "caf\xc3\xa9");
    ck_assert_ptr_null(moe_safetensors_get(st, "nope"));

    const char *keys[] = {"format", "note"};
    const char *vals[] = {"test", "caf\xc3\xa9"};
    OK(moe_safetensors_save(path, st->count, (const char *const *)st->names, st->tensors, 2, keys, vals));
    size_t na, nb;
    unsigned char *a = slurp(path, &na), *b = slurp(ref_path("reference.safetensors"), &nb);
    ck_assert_int_eq(na, nb);
    if (getenv("KEEP")) spit("/tmp/st-c.bin", a, na);
    ck_assert_msg(memcmp(a, b, na) == 0, "moelab's file differs from the independent writer's");
    ck_assert_int_eq(files_in_dir(), 1); /* no temporary file left */
    free(a);
    free(b);
    moe_safetensors_free(st);
}
END_TEST

/* Every file of the corpus fails with its status and message, naming the
 * file, and leaves the output untouched. */
START_TEST(test_bad_corpus)
{
    FILE *f = fopen(ref_path("EXPECTED"), "r");
    ck_assert_ptr_nonnull(f);
    char line[512];
    int n = 0;
    static const char *status_names[] = {"value", "index", "shape", "dtype"};
    static const moe_status statuses[] = {MOE_ERR_VALUE, MOE_ERR_INDEX, MOE_ERR_SHAPE, MOE_ERR_DTYPE};
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        line[strcspn(line, "\n")] = 0;
        char *file = strtok(line, "\t"), *status = strtok(NULL, "\t"), *needle = strtok(NULL, "\t");
        ck_assert_ptr_nonnull(needle);
        moe_status want = MOE_OK;
        for (int i = 0; i < 4; i++)
            if (strcmp(status, status_names[i]) == 0) want = statuses[i];
        ck_assert_int_ne(want, MOE_OK);
        moe_safetensors *st = (moe_safetensors *)&n; /* a sentinel that must survive */
        moe_status got = moe_safetensors_load(&st, ref_path(file));
        ck_assert_msg(got == want, "%s: expected %s, got %s (%s)", file, status, moe_status_name(got),
                      moe_last_error());
        ck_assert_msg(strstr(moe_last_error(), needle), "%s: message '%s' lacks '%s'", file,
                      moe_last_error(), needle);
        ck_assert_msg(strstr(moe_last_error(), "load-tensors: ") == moe_last_error() &&
                      strstr(moe_last_error(), file), "%s: message '%s' names neither the operation nor the file",
                      file, moe_last_error());
        ck_assert_ptr_eq(st, (moe_safetensors *)&n);
        n++;
    }
    fclose(f);
    ck_assert_int_ge(n, 30);
    /* the NaN file is well formed */
    moe_safetensors *st;
    OK(moe_safetensors_load(&st, ref_path("nan.safetensors")));
    double v[2];
    OK(moe_tensor_to_doubles(moe_safetensors_get(st, "a"), v));
    ck_assert(v[0] == 1.0 && isnan(v[1]));
    moe_safetensors_free(st);
    FAILS(moe_safetensors_load(&st, "/nonexistent/x.safetensors"), MOE_ERR_IO,
          "load-tensors: cannot open /nonexistent/x.safetensors");
    FAILS(moe_safetensors_load(&st, "/tmp"), MOE_ERR_IO, "/tmp is not a regular file");
}
END_TEST

/* The checksum covers every byte: each truncation and each one-bit flip of
 * a moelab file fails. */
START_TEST(test_truncate_and_flip_every_byte)
{
    size_t n;
    unsigned char *b = slurp(ref_path("reference.safetensors"), &n);
    moe_safetensors *st = NULL;
    for (size_t len = 0; len < n; len++) {
        spit(path, b, len);
        moe_status s = moe_safetensors_load(&st, path);
        ck_assert_msg(s != MOE_OK, "a file cut at %zu of %zu bytes loaded", len, n);
        ck_assert_ptr_null(st);
    }
    for (size_t i = 0; i < n; i++) {
        for (int bit = 0; bit < 8; bit += 7) {
            b[i] ^= (unsigned char)(1u << bit);
            spit(path, b, n);
            moe_status s = moe_safetensors_load(&st, path);
            ck_assert_msg(s != MOE_OK, "bit %d of byte %zu flipped loaded", bit, i);
            ck_assert_ptr_null(st);
            b[i] ^= (unsigned char)(1u << bit);
        }
    }
    spit(path, b, n);
    OK(moe_safetensors_load(&st, path));
    moe_safetensors_free(st);
    free(b);
}
END_TEST

/* Views are written as their elements; bf16 keeps its bits; metadata of
 * other writers' files (no checksum) loads. */
START_TEST(test_views_and_errors)
{
    moe_tensor *a = T(MOE_F32, 2, SHAPE(2, 3), 1, 2, 3, 4, 5, 6), *at;
    OK(moe_transpose(&at, a, 0, 1));
    moe_tensor *h;
    OK(moe_to_dtype(&h, a, MOE_BF16));
    const char *names[] = {"at", "h"};
    OK(moe_safetensors_save(path, 2, names, (moe_tensor *[]){at, h}, 0, NULL, NULL));
    moe_safetensors *st;
    OK(moe_safetensors_load(&st, path));
    moe_tensor *back = moe_safetensors_get(st, "at");
    ck_assert_int_eq(back->shape[0], 3);
    tu_assert_values(back, 6, (double[]){1, 4, 2, 5, 3, 6}, 0, 0, "transposed");
    ck_assert(memcmp(moe_tensor_data(moe_safetensors_get(st, "h")), moe_tensor_data(h), 12) == 0);
    ck_assert_ptr_nonnull(moe_safetensors_meta(st, MOE_SAFETENSORS_CHECKSUM_KEY));
    moe_safetensors_free(st);

    FAILS(moe_safetensors_save(path, 2, (const char *[]){"x", "x"}, (moe_tensor *[]){a, h}, 0, NULL, NULL),
          MOE_ERR_ARG, "the name \"x\" is given twice");
    FAILS(moe_safetensors_save(path, 1, (const char *[]){"__metadata__"}, (moe_tensor *[]){a}, 0, NULL, NULL),
          MOE_ERR_ARG, "is reserved");
    FAILS(moe_safetensors_save(path, 1, (const char *[]){""}, (moe_tensor *[]){a}, 0, NULL, NULL),
          MOE_ERR_ARG, "empty name");
    FAILS(moe_safetensors_save(path, 1, names, (moe_tensor *[]){a}, 1, (const char *[]){MOE_SAFETENSORS_CHECKSUM_KEY},
                               (const char *[]){"x"}),
          MOE_ERR_ARG, "reserved (the checksum)");
    FAILS(moe_safetensors_save(path, 1, (const char *[]){"\xff"}, (moe_tensor *[]){a}, 0, NULL, NULL),
          MOE_ERR_ARG, "names must be UTF-8");
    FAILS(moe_safetensors_save("/nonexistent/dir/x.safetensors", 1, names, (moe_tensor *[]){a}, 0, NULL, NULL),
          MOE_ERR_IO, "cannot create a temporary file beside /nonexistent/dir/x.safetensors");
    ck_assert_int_eq(files_in_dir(), 1);
    moe_tensor_release(a);
    moe_tensor_release(at);
    moe_tensor_release(h);
}
END_TEST

static moe_model *tiny_model(uint64_t seed, int64_t hidden)
{
    moe_model_config cfg;
    moe_model_config_default(&cfg);
    cfg.vocab = 16;
    cfg.layers = 2;
    cfg.hidden = hidden;
    cfg.heads = 2;
    cfg.kv_heads = 1;
    cfg.ffn = 8;
    cfg.experts = 4;
    cfg.top_k = 2;
    cfg.max_seq = 8;
    cfg.dtype = MOE_F64;
    cfg.seed = seed;
    cfg.router.expert_bias = true;
    moe_model *m;
    OK(moe_model_new(&m, &cfg));
    return m;
}

/* Every parameter and buffer, as bytes, for "unchanged" checks. */
static size_t snapshot(const moe_model *m, unsigned char *out)
{
    size_t at = 0;
    int np = moe_model_parameter_count(m), nb = moe_model_buffer_count(m);
    for (int i = 0; i < np + nb; i++) {
        const char *name;
        moe_tensor *t;
        OK(i < np ? moe_model_parameter(m, i, &name, &t) : moe_model_buffer(m, i - np, &name, &t));
        if (out) memcpy(out + at, moe_tensor_data(t), moe_tensor_nbytes(t));
        at += moe_tensor_nbytes(t);
    }
    return at;
}

START_TEST(test_model_files)
{
    moe_model *a = tiny_model(1, 8), *b = tiny_model(2, 8), *wide = tiny_model(1, 12);
    ck_assert_int_eq(moe_model_buffer_count(a), 2);
    moe_tensor *bias = T(MOE_F64, 1, SHAPE(4), 0.5, -0.25, 0, 1);
    OK(moe_model_set_parameter(a, "layers.1.moe.router.expert-bias", bias));
    moe_tensor_release(bias);
    OK(moe_model_save_file(a, path, 1, (const char *[]){"format"}, (const char *[]){"moelab-model"}));
    /* the bias stays f32 in the file, the f64 parameters f64 */
    moe_safetensors *st;
    OK(moe_safetensors_load(&st, path));
    ck_assert_int_eq(moe_safetensors_get(st, "layers.1.moe.router.expert-bias")->dtype, MOE_F32);
    ck_assert_int_eq(moe_safetensors_get(st, "embed")->dtype, MOE_F64);
    ck_assert_int_eq(st->count, moe_model_parameter_count(a) + 2);
    moe_safetensors_free(st);

    size_t n = snapshot(a, NULL);
    unsigned char *sa = malloc(n), *sb = malloc(n), *sb2 = malloc(n);
    snapshot(a, sa);
    snapshot(b, sb);
    ck_assert(memcmp(sa, sb, n) != 0);
    /* a file that does not fit leaves the model as it was */
    char bad[300];
    snprintf(bad, sizeof bad, "%s/wide.safetensors", dir);
    OK(moe_model_save_file(wide, bad, 0, NULL, NULL));
    FAILS(moe_model_load_file(b, bad), MOE_ERR_SHAPE, "tensor \"embed\" is [16 12] in the file, the model's is [16 8]");
    FAILS(moe_model_load_file(b, ref_path("reference.safetensors")), MOE_ERR_ARG,
          "tensor \"embed\" of the model is missing from the file");
    FAILS(moe_model_load_file(b, ref_path("checksum-data-flip.safetensors")), MOE_ERR_VALUE,
          "load-model!: ");
    /* an extra tensor, and a missing one, after all the right ones */
    int np = moe_model_parameter_count(a);
    const char **names = calloc((size_t)np + 3, sizeof *names);
    moe_tensor **ts = calloc((size_t)np + 3, sizeof *ts);
    for (int i = 0; i < np; i++) OK(moe_model_parameter(a, i, &names[i], &ts[i]));
    for (int i = 0; i < 2; i++) OK(moe_model_buffer(a, i, &names[np + i], &ts[np + i]));
    names[np + 2] = "layers.9.extra";
    ts[np + 2] = ts[0];
    OK(moe_safetensors_save(bad, np + 3, names, ts, 0, NULL, NULL));
    FAILS(moe_model_load_file(b, bad), MOE_ERR_ARG, "tensor \"layers.9.extra\" is not a parameter or buffer");
    OK(moe_safetensors_save(bad, np + 1, names, ts, 0, NULL, NULL));
    FAILS(moe_model_load_file(b, bad), MOE_ERR_ARG,
          "tensor \"layers.1.moe.router.expert-bias\" of the model is missing");
    /* an integer tensor under a parameter's name */
    moe_tensor *ints, *plain;
    OK(moe_detach(&plain, ts[np - 1]));
    OK(moe_to_dtype(&ints, plain, MOE_I64));
    moe_tensor_release(plain);
    moe_tensor *keep = ts[np - 1];
    ts[np - 1] = ints;
    OK(moe_safetensors_save(bad, np + 2, names, ts, 0, NULL, NULL));
    FAILS(moe_model_load_file(b, bad), MOE_ERR_DTYPE, "is i64, a float dtype is needed");
    ts[np - 1] = keep;
    moe_tensor_release(ints);
    snapshot(b, sb2);
    ck_assert_msg(memcmp(sb, sb2, n) == 0, "a failed load changed the model");

    OK(moe_model_load_file(b, path));
    snapshot(b, sb2);
    ck_assert_msg(memcmp(sa, sb2, n) == 0, "the loaded model differs from the saved one");
    free(names);
    free(ts);
    free(sa);
    free(sb);
    free(sb2);
    moe_model_free(a);
    moe_model_free(b);
    moe_model_free(wide);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("files");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_reference_bytes);
    tcase_add_test(tc, test_bad_corpus);
    tcase_add_test(tc, test_truncate_and_flip_every_byte);
    tcase_add_test(tc, test_views_and_errors);
    tcase_add_test(tc, test_model_files);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
