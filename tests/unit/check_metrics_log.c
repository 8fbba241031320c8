/* check_metrics_log.c — metrics files (core/train/log.c): the exact text of
 * a header and of a record, NaN and ±Inf as null, reals that read back to
 * the same double, append without a second header, the reader (torn last
 * line, bad lines named by file and line), and the record helpers. */
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

static char dir[64];
static char path[256];

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/moelab-metrics-XXXXXX"); /* afresh for each test */
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/runs/a/metrics.jsonl", dir); /* runs/a made by open */
}

static void teardown(void)
{
    unlink(path);
    char sub[300];
    snprintf(sub, sizeof sub, "%s/runs/a", dir);
    rmdir(sub);
    snprintf(sub, sizeof sub, "%s/runs", dir);
    rmdir(sub);
    rmdir(dir);
}

static char *slurp(const char *p)
{
    FILE *f = fopen(p, "r");
    ck_assert_ptr_nonnull(f);
    static char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

static void put(const char *p, const char *text)
{
    FILE *f = fopen(p, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static json_t *fixed_header(void)
{
    return json_pack("{s:{s:i, s:f, s:s, s:b}, s:i, s:i, s:s, s:s}", "config", "layers", 4, "lr", 3e-4, "schedule",
                     "cosine", "tied", 0, "seed", 7, "threads", 2, "started", "2026-01-02T03:04:05Z", "note", "hi");
}

START_TEST(test_exact_lines)
{
    json_t *h = fixed_header();
    moe_metrics_log *log;
    OK(moe_metrics_log_open(&log, path, h, false));
    json_decref(h);
    json_t *rec = json_object();
    json_object_set_new(rec, "step", json_integer(3));
    json_object_set_new(rec, "loss", moe_json_number(2.5));
    json_object_set_new(rec, "lr", moe_json_number(0.1));
    json_object_set_new(rec, "grad_norm", moe_json_number(NAN));
    json_object_set_new(rec, "cv", moe_json_numbers((double[]){1.0, INFINITY, -INFINITY}, 3));
    json_t *aux = json_object();
    json_object_set_new(aux, "z", moe_json_numbers((double[]){0.25, 1e-3}, 2));
    json_object_set_new(rec, "aux", aux);
    moe_tensor *counts = T(MOE_I64, 2, SHAPE(2, 3), 1, 2, 3, 4, 5, 6);
    json_object_set_new(rec, "tokens_per_expert", moe_json_tensor(counts));
    OK(moe_metrics_log_write(log, rec));
    ck_assert_int_eq(moe_metrics_log_records(log), 1);
    ck_assert_str_eq(moe_metrics_log_path(log), path);
    json_t *number = json_integer(1);
    FAILS(moe_metrics_log_write(log, number), MOE_ERR_ARG, "metrics-log-write!: a record must be a JSON object");
    json_decref(number);
    OK(moe_metrics_log_close(log));
    json_decref(rec);
    moe_tensor_release(counts);
    ck_assert_str_eq(slurp(path),
                     "{\"config\": {\"layers\": 4, \"lr\": 0.0003, \"schedule\": \"cosine\", \"tied\": false}, "
                     "\"moelab\": \"" MOELAB_VERSION "\", \"seed\": 7, \"threads\": 2, "
                     "\"started\": \"2026-01-02T03:04:05Z\", \"note\": \"hi\"}\n"
                     "{\"step\": 3, \"loss\": 2.5, \"lr\": 0.1, \"grad_norm\": null, \"cv\": [1.0, null, null], "
                     "\"aux\": {\"z\": [0.25, 0.001]}, \"tokens_per_expert\": [[1, 2, 3], [4, 5, 6]]}\n");
}
END_TEST

START_TEST(test_default_header_and_append)
{
    moe_metrics_log *log;
    OK(moe_metrics_log_open(&log, path, NULL, false));
    OK(moe_metrics_log_close(log));
    json_t *all;
    OK(moe_metrics_read(&all, path));
    ck_assert_int_eq(json_array_size(all), 1);
    json_t *h = json_array_get(all, 0);
    const char *keys[] = {"config", "moelab", "seed", "threads", "started"};
    const char *k;
    json_t *v;
    int i = 0;
    json_object_foreach(h, k, v) {
        ck_assert_int_lt(i, 5);
        ck_assert_str_eq(k, keys[i++]); /* the documented order */
    }
    ck_assert(json_is_object(json_object_get(h, "config")) && json_object_size(json_object_get(h, "config")) == 0);
    ck_assert(json_is_null(json_object_get(h, "seed")));
    ck_assert_int_ge(json_integer_value(json_object_get(h, "threads")), 1);
    ck_assert_int_eq(strlen(json_string_value(json_object_get(h, "started"))), 20);
    json_decref(all);
    /* append: no second header; without append: truncated */
    OK(moe_metrics_log_open(&log, path, NULL, true));
    json_t *rec = json_pack("{s:i}", "step", 1);
    OK(moe_metrics_log_write(log, rec));
    OK(moe_metrics_log_close(log));
    OK(moe_metrics_read(&all, path));
    ck_assert_int_eq(json_array_size(all), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(all, 1), "step")), 1);
    json_decref(all);
    OK(moe_metrics_log_open(&log, path, NULL, false));
    OK(moe_metrics_log_close(log));
    OK(moe_metrics_read(&all, path));
    ck_assert_int_eq(json_array_size(all), 1);
    json_decref(all);
    json_decref(rec);
}
END_TEST

START_TEST(test_reals_round_trip)
{
    /* every real of a line comes back as the same double */
    double vals[] = {0.1, 1.0 / 3, 3e-4, 2.3456789f, -1e300, 5e-324, 123456789.0, -0.0};
    int n = (int)(sizeof vals / sizeof *vals);
    moe_metrics_log *log;
    OK(moe_metrics_log_open(&log, path, NULL, false));
    for (int i = 0; i < n; i++) {
        json_t *rec = json_pack("{s:o}", "x", moe_json_number(vals[i]));
        OK(moe_metrics_log_write(log, rec));
        json_decref(rec);
    }
    OK(moe_metrics_log_close(log));
    json_t *all;
    OK(moe_metrics_read(&all, path));
    ck_assert_int_eq(json_array_size(all), (size_t)n + 1);
    for (int i = 0; i < n; i++) {
        double got = json_real_value(json_object_get(json_array_get(all, (size_t)i + 1), "x"));
        ck_assert_msg(got == vals[i] && signbit(got) == signbit(vals[i]), "%.17g came back as %.17g", vals[i], got);
    }
    json_decref(all);
    /* a line is written with as few digits as its reals allow */
    json_t *one = json_pack("{s:o, s:o}", "a", moe_json_number(0.1), "b", moe_json_number(3e-4));
    char *line = moe_json_line(one);
    ck_assert_str_eq(line, "{\"a\": 0.1, \"b\": 0.0003}");
    free(line);
    json_decref(one);
}
END_TEST

START_TEST(test_tensors_as_json)
{
    moe_tensor *f = T(MOE_F32, 1, SHAPE(3), 0.5, NAN, -2), *s = T(MOE_F64, 0, NULL, 1.25);
    moe_tensor *b;
    OK(moe_tensor_zeros(&b, MOE_BOOL, MOE_CPU, 1, SHAPE(2)));
    OK(moe_tensor_set(b, (int64_t[]){1}, 1));
    json_t *j = json_pack("{s:o, s:o, s:o}", "f", moe_json_tensor(f), "s", moe_json_tensor(s), "b", moe_json_tensor(b));
    char *line = moe_json_line(j);
    ck_assert_str_eq(line, "{\"f\": [0.5, null, -2.0], \"s\": 1.25, \"b\": [false, true]}");
    free(line);
    json_decref(j);
    RELEASE(f, s, b);
}
END_TEST

START_TEST(test_reader)
{
    /* blank lines skipped; a torn last line (no newline) dropped */
    moe_metrics_log *log;
    OK(moe_metrics_log_open(&log, path, NULL, false)); /* makes the directories */
    OK(moe_metrics_log_close(log));
    put(path, "{\"a\": 1}\n\n{\"a\": 2}\n{\"a\": 3, \"b\"");
    json_t *all;
    OK(moe_metrics_read(&all, path));
    ck_assert_int_eq(json_array_size(all), 2);
    json_decref(all);
    put(path, "{\"a\": 1}\n{\"a\": NaN}\n{\"a\": 3}\n");
    FAILS(moe_metrics_read(&all, path), MOE_ERR_VALUE, "metrics.jsonl:2: not JSON");
    put(path, "{\"a\": 1}\n[1, 2]\n");
    FAILS(moe_metrics_read(&all, path), MOE_ERR_VALUE, "metrics.jsonl:2: a line must hold a JSON object");
    put(path, "{\"a\": 1}\n{\"a\": \n{\"a\": 3}\n");
    FAILS(moe_metrics_read(&all, path), MOE_ERR_VALUE, ":2: not JSON");
    FAILS(moe_metrics_read(&all, "/nonexistent/metrics.jsonl"), MOE_ERR_IO,
          "read-jsonl: cannot open /nonexistent/metrics.jsonl: No such file or directory");
}
END_TEST

START_TEST(test_open_errors)
{
    moe_metrics_log *log = NULL;
    FAILS(moe_metrics_log_open(&log, "", NULL, false), MOE_ERR_ARG, "make-metrics-log: no path given");
    json_t *bad = json_pack("{s:i}", "config", 3);
    FAILS(moe_metrics_log_open(&log, path, bad, false), MOE_ERR_ARG, "the header's \"config\" must be an object");
    json_decref(bad);
    bad = json_array();
    FAILS(moe_metrics_log_open(&log, path, bad, false), MOE_ERR_ARG, "the header must be a JSON object");
    json_decref(bad);
    /* a parent that is a file */
    char file[300], under[320];
    snprintf(file, sizeof file, "%s/plain", dir);
    put(file, "x");
    snprintf(under, sizeof under, "%s/sub/m.jsonl", file);
    FAILS(moe_metrics_log_open(&log, under, NULL, false), MOE_ERR_IO, "cannot make the directory");
    ck_assert_ptr_null(log);
    unlink(file);
    ck_assert_int_eq(moe_metrics_log_close(NULL), MOE_OK);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("metrics-log");
    TCase *tc = tcase_create("jsonl");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_exact_lines);
    tcase_add_test(tc, test_default_header_and_append);
    tcase_add_test(tc, test_reals_round_trip);
    tcase_add_test(tc, test_tensors_as_json);
    tcase_add_test(tc, test_reader);
    tcase_add_test(tc, test_open_errors);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
