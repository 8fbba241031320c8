/* log.c — metrics files in JSON Lines, written and read with jansson (see
 * log.h). No JSON text is put together by hand here: records are jansson
 * values and jansson writes and parses them. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

struct moe_metrics_log {
    int fd;
    long records;
    char *path;
};

/* ---- numbers --------------------------------------------------------------------- */

json_t *moe_json_number(double v) { return isfinite(v) ? json_real(v) : json_null(); }

json_t *moe_json_numbers(const double *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        if (json_array_append_new(a, moe_json_number(v[i])) != 0) {
            json_decref(a);
            return NULL;
        }
    return a;
}

static json_t *element(moe_dtype dtype, double v)
{
    if (dtype == MOE_BOOL) return json_boolean(v != 0);
    if (dtype == MOE_I32 || dtype == MOE_I64) return json_integer((json_int_t)v);
    return moe_json_number(v);
}

/* Nested arrays for dims D.. of a row-major buffer V starting at *AT. */
static json_t *nested(const moe_tensor *t, const double *v, int d, int64_t *at)
{
    if (d == t->ndim) return element(t->dtype, v[(*at)++]);
    json_t *a = json_array();
    for (int64_t i = 0; a && i < t->shape[d]; i++)
        if (json_array_append_new(a, nested(t, v, d + 1, at)) != 0) {
            json_decref(a);
            return NULL;
        }
    return a;
}

json_t *moe_json_tensor(const moe_tensor *t)
{
    int64_t n = moe_tensor_numel(t);
    double *v = malloc(sizeof *v * (size_t)(n ? n : 1));
    if (!v || moe_tensor_to_doubles(t, v) != MOE_OK) {
        free(v);
        return NULL;
    }
    int64_t at = 0;
    json_t *j = nested(t, v, 0, &at);
    free(v);
    return j;
}

/* The fewest significant digits that give back V exactly. */
static int digits_for(double v)
{
    char buf[40];
    for (int p = 1; p < 17; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, v);
        if (strtod(buf, NULL) == v) return p;
    }
    return 17;
}

/* The most digits any real inside J needs. */
static int digits_needed(json_t *j)
{
    int most = 1;
    if (json_is_real(j)) return digits_for(json_real_value(j));
    if (json_is_array(j)) {
        size_t i;
        json_t *x;
        json_array_foreach(j, i, x) {
            int d = digits_needed(x);
            if (d > most) most = d;
        }
    } else if (json_is_object(j)) {
        const char *k;
        json_t *x;
        json_object_foreach(j, k, x) {
            int d = digits_needed(x);
            if (d > most) most = d;
        }
    }
    return most;
}

char *moe_json_line(json_t *value)
{
    return json_dumps(value, JSON_ENCODE_ANY | JSON_REAL_PRECISION(digits_needed(value)));
}

/* ---- writing ---------------------------------------------------------------------- */

static moe_status write_all(const char *op, const char *path, int fd, const char *buf, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return moe_fail(MOE_ERR_IO, op, "cannot write to %s: %s", path, strerror(errno));
        buf += w;
        n -= (size_t)w;
    }
    return MOE_OK;
}

/* VALUE as one line with its newline, written with one write(2). */
static moe_status write_line(const char *op, moe_metrics_log *log, json_t *value)
{
    char *text = moe_json_line(value);
    if (!text) return moe_fail(MOE_ERR_VALUE, op, "cannot encode the record for %s as JSON", log->path);
    size_t n = strlen(text);
    char *line = realloc(text, n + 2);
    if (!line) {
        free(text);
        return moe_fail(MOE_ERR_NOMEM, op, "out of memory for a %zu-byte line of %s", n + 2, log->path);
    }
    line[n] = '\n';
    line[n + 1] = '\0';
    moe_status st = write_all(op, log->path, log->fd, line, n + 1);
    free(line);
    return st;
}

/* mkdir -p of the directories above PATH. */
static moe_status make_parents(const char *op, const char *path)
{
    char *dir = strdup(path);
    if (!dir) return moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of the directory of %s", strlen(path) + 1, path);
    moe_status st = MOE_OK;
    for (char *p = dir + 1; *p && st == MOE_OK; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(dir, 0777) != 0 && errno != EEXIST)
            st = moe_fail(MOE_ERR_IO, op, "cannot make the directory %s for %s: %s", dir, path, strerror(errno));
        *p = '/';
    }
    free(dir);
    return st;
}

static json_t *build_header(const char *op, json_t *given, moe_status *st)
{
    json_t *config = given ? json_object_get(given, "config") : NULL;
    if (config && !json_is_object(config)) {
        *st = moe_fail(MOE_ERR_ARG, op, "the header's \"config\" must be an object");
        return NULL;
    }
    char started[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(started, sizeof started, "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_t *h = json_object();
    if (!h) goto nomem;
    /* the standard fields in their order, each unless the caller gives it */
    const char *keys[] = {"config", "moelab", "seed", "threads", "started"};
    json_t *defaults[] = {config ? json_incref(config) : json_object(), json_string(PACKAGE_VERSION),
                          json_null(), json_integer(omp_get_max_threads()), json_string(started)};
    bool ok = true;
    for (int k = 0; k < 5; k++) {
        json_t *mine = given && k > 0 ? json_object_get(given, keys[k]) : NULL;
        if (!defaults[k]) ok = false;
        if (ok && json_object_set(h, keys[k], mine ? mine : defaults[k]) != 0) ok = false;
        json_decref(defaults[k]);
    }
    if (!ok) goto nomem;
    if (given) {
        const char *k;
        json_t *x;
        json_object_foreach(given, k, x) {
            if (!json_object_get(h, k) && json_object_set(h, k, x) != 0) goto nomem;
        }
    }
    return h;
nomem:
    json_decref(h);
    *st = moe_fail(MOE_ERR_NOMEM, op, "out of memory for the header record (a JSON object)");
    return NULL;
}

moe_status moe_metrics_log_open(moe_metrics_log **out, const char *path, json_t *header, bool append)
{
    const char *op = "make-metrics-log";
    *out = NULL;
    if (!path || !*path) return moe_fail(MOE_ERR_ARG, op, "no path given");
    if (header && !json_is_object(header)) return moe_fail(MOE_ERR_ARG, op, "the header must be a JSON object");
    MOE_TRY(make_parents(op, path));
    moe_metrics_log *log = calloc(1, sizeof *log);
    if (!log || !(log->path = strdup(path))) {
        free(log);
        return moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of a metrics log of %s", sizeof *log + strlen(path) + 1,
                        path);
    }
    log->fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (append ? 0 : O_TRUNC), 0666);
    if (log->fd < 0) {
        moe_status st = moe_fail(MOE_ERR_IO, op, "cannot open %s: %s", path, strerror(errno));
        free(log->path);
        free(log);
        return st;
    }
    struct stat sb;
    moe_status st = MOE_OK;
    if (fstat(log->fd, &sb) != 0) st = moe_fail(MOE_ERR_IO, op, "cannot stat %s: %s", path, strerror(errno));
    if (st == MOE_OK && !(append && sb.st_size > 0)) {
        json_t *h = build_header(op, header, &st);
        if (h) st = write_line(op, log, h);
        json_decref(h);
    }
    if (st != MOE_OK) {
        close(log->fd);
        free(log->path);
        free(log);
        return st;
    }
    *out = log;
    return MOE_OK;
}

moe_status moe_metrics_log_write(moe_metrics_log *log, json_t *record)
{
    const char *op = "metrics-log-write!";
    if (!log) return moe_fail(MOE_ERR_STATE, op, "the metrics log is closed");
    if (!json_is_object(record)) return moe_fail(MOE_ERR_ARG, op, "a record must be a JSON object");
    MOE_TRY(write_line(op, log, record));
    log->records++;
    return MOE_OK;
}

long moe_metrics_log_records(const moe_metrics_log *log) { return log->records; }
const char *moe_metrics_log_path(const moe_metrics_log *log) { return log->path; }

moe_status moe_metrics_log_close(moe_metrics_log *log)
{
    if (!log) return MOE_OK;
    moe_status st = MOE_OK;
    if (close(log->fd) != 0)
        st = moe_fail(MOE_ERR_IO, "metrics-log-close!", "closing %s failed: %s", log->path, strerror(errno));
    free(log->path);
    free(log);
    return st;
}

/* ---- reading ---------------------------------------------------------------------- */

static bool blank(const char *s)
{
    for (; *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\n') return false;
    return true;
}

moe_status moe_metrics_read(json_t **out, const char *path)
{
    const char *op = "read-jsonl";
    *out = NULL;
    if (!path) return moe_fail(MOE_ERR_ARG, op, "no path given");
    FILE *f = fopen(path, "r");
    if (!f) return moe_fail(MOE_ERR_IO, op, "cannot open %s: %s", path, strerror(errno));
    json_t *all = json_array();
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long lineno = 0;
    moe_status st = all ? MOE_OK : moe_fail(MOE_ERR_NOMEM, op, "out of memory for the records of %s (a JSON array)", path);
    while (st == MOE_OK && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (blank(line)) continue;
        bool complete = len > 0 && line[len - 1] == '\n';
        json_error_t err;
        json_t *j = json_loads(line, 0, &err);
        if (!j) {
            if (!complete) break; /* the torn last line of a killed run */
            st = moe_fail(MOE_ERR_VALUE, op, "%s:%ld: not JSON: %s (column %d)", path, lineno, err.text, err.column);
        } else if (!json_is_object(j)) {
            st = moe_fail(MOE_ERR_VALUE, op, "%s:%ld: a line must hold a JSON object", path, lineno);
        } else if (json_array_append(all, j) != 0) {
            st = moe_fail(MOE_ERR_NOMEM, op, "%s:%ld: out of memory for the record (%zd bytes of JSON)", path, lineno, len);
        }
        json_decref(j);
    }
    if (st == MOE_OK && ferror(f)) st = moe_fail(MOE_ERR_IO, op, "cannot read %s: %s", path, strerror(errno));
    free(line);
    fclose(f);
    if (st != MOE_OK) {
        json_decref(all);
        return st;
    }
    *out = all;
    return MOE_OK;
}
