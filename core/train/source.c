/* source.c — path specs into sorted file lists; whole-file reads; documents. */
#define _GNU_SOURCE /* fstatat flags, d_type */
#include "source.h"

#include <dirent.h>
#include <errno.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static moe_status push(moe_file_list *list, const char *path, const char *op)
{
    char **grown = realloc(list->paths, (size_t)(list->n + 1) * sizeof *grown);
    if (!grown) return moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes listing %lld files", (size_t)(list->n + 1) * sizeof *grown,
                                (long long)(list->n + 1));
    list->paths = grown;
    if (!(grown[list->n] = strdup(path)))
        return moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of the path %s", strlen(path) + 1, path);
    list->n++;
    return MOE_OK;
}

static int by_bytes(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every regular file under DIR, sorted, hidden entries skipped. */
static moe_status walk(moe_file_list *list, const char *dir, const char *op)
{
    DIR *d = opendir(dir);
    if (!d) return moe_fail(MOE_ERR_IO, op, "cannot read directory '%s': %s", dir, strerror(errno));
    moe_file_list names = {0};
    moe_status st = MOE_OK;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        if ((st = push(&names, e->d_name, op)) != MOE_OK) break;
    }
    closedir(d);
    if (st == MOE_OK) qsort(names.paths, (size_t)names.n, sizeof *names.paths, by_bytes);
    for (int64_t i = 0; st == MOE_OK && i < names.n; i++) {
        size_t len = strlen(dir) + strlen(names.paths[i]) + 2;
        char *path = malloc(len);
        if (!path) {
            st = moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of the path of %s in %s", len, names.paths[i], dir);
            break;
        }
        snprintf(path, len, "%s/%s", dir, names.paths[i]);
        struct stat sb;
        if (stat(path, &sb) != 0) {
            st = moe_fail(MOE_ERR_IO, op, "cannot stat '%s': %s", path, strerror(errno));
        } else if (S_ISDIR(sb.st_mode)) {
            st = walk(list, path, op);
        } else if (S_ISREG(sb.st_mode)) {
            st = push(list, path, op);
        }
        free(path);
    }
    moe_file_list_free(&names);
    return st;
}

/* A file or a directory (walked); anything else is an error. */
static moe_status add_path(moe_file_list *list, const char *path, const char *op, const char *what)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return moe_fail(MOE_ERR_IO, op, "%s: '%s'%s%s",
                        errno == ENOENT ? "no such file or directory" : strerror(errno), path,
                        what ? " " : "", what ? what : "");
    if (S_ISDIR(sb.st_mode)) return walk(list, path, op);
    if (S_ISREG(sb.st_mode)) return push(list, path, op);
    return moe_fail(MOE_ERR_IO, op, "'%s' is neither a file nor a directory%s%s", path, what ? " " : "",
                    what ? what : "");
}

moe_status moe_file_list_add(moe_file_list *list, const char *spec, const char *op, const char *what)
{
    if (!spec || !*spec) return moe_fail(MOE_ERR_ARG, op, "empty path%s%s", what ? " " : "", what ? what : "");
    if (!strpbrk(spec, "*?[")) return add_path(list, spec, op, what);
    glob_t g;
    int rc = glob(spec, 0, NULL, &g); /* glob sorts with strcoll: resort below */
    if (rc == GLOB_NOMATCH)
        return moe_fail(MOE_ERR_IO, op, "no file matches '%s'%s%s", spec, what ? " " : "", what ? what : "");
    if (rc != 0) {
        globfree(&g);
        return moe_fail(MOE_ERR_IO, op, "cannot expand '%s'%s%s", spec, what ? " " : "", what ? what : "");
    }
    qsort(g.gl_pathv, g.gl_pathc, sizeof *g.gl_pathv, by_bytes);
    moe_status st = MOE_OK;
    for (size_t i = 0; st == MOE_OK && i < g.gl_pathc; i++) st = add_path(list, g.gl_pathv[i], op, what);
    globfree(&g);
    return st;
}

void moe_file_list_free(moe_file_list *list)
{
    for (int64_t i = 0; i < list->n; i++) free(list->paths[i]);
    free(list->paths);
    list->paths = NULL;
    list->n = 0;
}

moe_status moe_read_file(char **data, size_t *len, const char *path, const char *op)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return moe_fail(MOE_ERR_IO, op, "cannot open '%s': %s", path,
                        errno == ENOENT ? "no such file or directory" : strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return moe_fail(MOE_ERR_IO, op, "'%s' is not a regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    char *buf = malloc(size + 1);
    if (!buf) {
        fclose(f);
        return moe_fail(MOE_ERR_NOMEM, op, "out of memory reading '%s' (%zu bytes)", path, size);
    }
    size_t got = fread(buf, 1, size, f);
    int err = ferror(f);
    fclose(f);
    if (err || got != size) {
        free(buf);
        return moe_fail(MOE_ERR_IO, op, "cannot read '%s': %zu of %zu bytes", path, got, size);
    }
    buf[size] = '\0';
    *data = buf;
    *len = size;
    return MOE_OK;
}

bool moe_next_document(const char *data, size_t len, size_t *pos, const char **doc, size_t *doc_len)
{
    size_t p = *pos;
    while (p < len) {
        const char *end = memchr(data + p, '\0', len - p);
        size_t stop = end ? (size_t)(end - data) : len;
        if (stop > p) {
            *doc = data + p;
            *doc_len = stop - p;
            *pos = stop < len ? stop + 1 : len;
            return true;
        }
        p = stop + 1;
    }
    *pos = len;
    return false;
}
