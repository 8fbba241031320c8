/* source.h — where training text comes from: a path spec (a file, a
 * directory walked recursively, or a glob pattern) expanded into a sorted
 * list of files, whole-file reads, and documents within a file.
 *
 * Every list is sorted byte-wise (not by locale) and hidden entries (names
 * starting with '.') are skipped in directory walks, so the same tree gives
 * the same files in the same order on any machine.
 *
 * A text file holds one or more documents separated by NUL bytes (a file
 * without NULs is one document); empty documents are skipped. */
#ifndef MOELAB_TRAIN_SOURCE_H
#define MOELAB_TRAIN_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moe_file_list {
    char **paths; /* [n] owned strings */
    int64_t n;
} moe_file_list;

/* Append the files SPEC names to LIST: a regular file itself, every regular
 * file under a directory, or every match of a glob pattern (a spec with * ?
 * or [; matched directories are walked too). A spec naming nothing fails
 * (MOE_ERR_IO: "no such file or directory: SPEC", "no file matches SPEC");
 * WHAT (may be NULL) is appended to the message, e.g. "(domain 'bible')". */
moe_status moe_file_list_add(moe_file_list *list, const char *spec, const char *op, const char *what);
void moe_file_list_free(moe_file_list *list);

/* The whole content of PATH into a new buffer (*DATA, free() it, with a
 * terminating NUL not counted in *LEN). */
moe_status moe_read_file(char **data, size_t *len, const char *path, const char *op);

/* The next non-empty document of DATA[0, LEN) at or after *POS: sets *DOC and
 * *DOC_LEN and moves *POS past it; false when there is none left. */
bool moe_next_document(const char *data, size_t len, size_t *pos, const char **doc, size_t *doc_len);

#ifdef __cplusplus
}
#endif
#endif
