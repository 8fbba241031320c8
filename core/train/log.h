/* log.h — metrics files: JSON Lines through jansson.
 *
 * A metrics file holds one JSON object per line. Line 1 is the header:
 *     {"config": {…}, "moelab": "0.1.0", "seed": 0, "threads": 2,
 *      "started": "2026-01-01T12:00:00Z", …}
 * and every later line is a record (one optimizer step, one evaluation, …).
 * Each line is written with one write(2) on a file opened for appending and
 * reaches the file before the call returns, so a reader (a plot, a tail -f)
 * never sees half a line from a live run, and a killed run loses at most the
 * line being written.
 *
 * Numbers: NaN and ±Inf are not JSON; moe_json_number writes them as null
 * (build records with it, or with the moe_json_* helpers, never with
 * json_real, which refuses them). Reals are written with the fewest
 * significant digits (at most 17) that read back to the same double for
 * every real of the line.
 *
 *     json_t *rec = json_object();
 *     json_object_set_new(rec, "step", json_integer(step));
 *     json_object_set_new(rec, "loss", moe_json_number(loss));
 *     json_object_set_new(rec, "tokens_per_expert", moe_json_tensor(counts)); // [L][E]
 *     moe_metrics_log_write(log, rec);
 *     json_decref(rec); */
#ifndef MOELAB_TRAIN_LOG_H
#define MOELAB_TRAIN_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <jansson.h>

#include "../tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moe_metrics_log moe_metrics_log;

/* Open PATH (its missing parent directories are made). HEADER (borrowed; an
 * object or NULL) gives the header's fields: "config" (an object, {} when
 * absent) first, then "moelab" (the version), "seed" (null when absent),
 * "threads" (the OpenMP thread count) and "started" (now, UTC, ISO 8601)
 * unless HEADER sets them, then HEADER's other fields in order. Without
 * APPEND the file is truncated and the header written; with APPEND an
 * existing non-empty file is continued as it is (no second header). */
moe_status moe_metrics_log_open(moe_metrics_log **out, const char *path, json_t *header, bool append);
/* Append RECORD (borrowed; must be a JSON object) as one line. */
moe_status moe_metrics_log_write(moe_metrics_log *log, json_t *record);
/* Records written through this handle (the header not counted). */
long moe_metrics_log_records(const moe_metrics_log *log);
const char *moe_metrics_log_path(const moe_metrics_log *log);
/* Close the file and free LOG (NULL is fine); fails when closing does. */
moe_status moe_metrics_log_close(moe_metrics_log *log);

/* Read every line of a metrics file: *OUT ← a new JSON array of objects
 * (json_decref it). Blank lines are skipped; a last line without its
 * newline that does not parse (a run killed while writing) is dropped; any
 * other line that is not a JSON object fails, naming the file and line. */
moe_status moe_metrics_read(json_t **out, const char *path);

/* The one line (no newline) that moe_metrics_log_write writes for VALUE:
 * a malloc'ed string, or NULL when VALUE cannot be encoded. */
char *moe_json_line(json_t *value);

/* ---- building records (new references; NULL only when out of memory) ----- */
/* A JSON real, or null for NaN and ±Inf. */
json_t *moe_json_number(double v);
/* An array of N numbers (non-finite ones null). */
json_t *moe_json_numbers(const double *v, size_t n);
/* Nested arrays following T's shape (a number for a 0-dim tensor): floats as
 * reals (non-finite ones null), integers as integers, bool as true/false. */
json_t *moe_json_tensor(const moe_tensor *t);

#ifdef __cplusplus
}
#endif
#endif
