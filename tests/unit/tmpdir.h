/* tmpdir.h — a scratch directory for tests that write files: made under
 * $TMPDIR (or /tmp), removed with everything in it at the end. Header-only. */
#ifndef MOELAB_TMPDIR_H
#define MOELAB_TMPDIR_H

#define _GNU_SOURCE
#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tu_tmp[512];

/* Make the directory (once per test); returns its path. */
static inline const char *tu_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tu_tmp, sizeof tu_tmp, "%s/moelab-test-XXXXXX", base && *base ? base : "/tmp");
    ck_assert_msg(mkdtemp(tu_tmp) != NULL, "mkdtemp %s failed", tu_tmp);
    return tu_tmp;
}

/* PATH of NAME inside the scratch directory, in a rotating static buffer. */
static inline const char *tu_path(const char *name)
{
    static char buf[4][1024];
    static int k;
    char *p = buf[k++ % 4];
    snprintf(p, sizeof buf[0], "%s/%s", tu_tmp, name);
    return p;
}

/* Write LEN bytes to NAME in the scratch directory; returns its path. */
static inline const char *tu_write(const char *name, const void *data, size_t len)
{
    const char *path = tu_path(name);
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot create %s", path);
    ck_assert_uint_eq(fwrite(data, 1, len, f), len);
    fclose(f);
    return path;
}

/* Remove the scratch directory (one level: tests make no subdirectories
 * unless they remove them themselves). */
static inline void tu_rmtmp(void)
{
    DIR *d = opendir(tu_tmp);
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        unlink(tu_path(e->d_name));
    }
    closedir(d);
    rmdir(tu_tmp);
}

#endif
