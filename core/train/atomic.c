/* atomic.c — write a file so that a crash leaves the old contents or the
 * new ones, never a mixture: temporary file in the same directory, fsync,
 * rename, fsync of the directory. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "safetensors.h"

/* The directory part of PATH ("." when it has none), in BUF. */
static void dir_of(const char *path, char *buf, size_t cap)
{
    const char *slash = strrchr(path, '/');
    if (!slash) {
        snprintf(buf, cap, ".");
    } else if (slash == path) {
        snprintf(buf, cap, "/");
    } else {
        snprintf(buf, cap, "%.*s", (int)(slash - path), path);
    }
}

moe_status moe_dir_sync(const char *op, const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return moe_fail(MOE_ERR_IO, op, "cannot open directory %s: %s", dir, strerror(errno));
    int rc = fsync(fd);
    int err = errno;
    close(fd);
    if (rc != 0) return moe_fail(MOE_ERR_IO, op, "cannot fsync directory %s: %s", dir, strerror(err));
    return MOE_OK;
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

moe_status moe_file_write_atomic(const char *op, const char *path, int nparts,
                                 const void *const *parts, const size_t *lens)
{
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    char dir[4096];
    if (!tmp) return moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of a temporary name beside %s", plen + 16, path);
    snprintf(tmp, plen + 16, "%s.tmp-XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        moe_status st = moe_fail(MOE_ERR_IO, op, "cannot create a temporary file beside %s: %s",
                                 path, strerror(errno));
        free(tmp);
        return st;
    }
    /* mkstemp makes the file 0600; give it the usual permissions. */
    mode_t mask = umask(0);
    umask(mask);
    (void)fchmod(fd, 0666 & ~mask);
    for (int i = 0; i < nparts; i++) {
        if (write_all(fd, parts[i], lens[i]) != 0) goto fail;
    }
    if (fsync(fd) != 0) goto fail;
    if (close(fd) != 0) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) != 0) goto fail;
    free(tmp);
    dir_of(path, dir, sizeof dir);
    return moe_dir_sync(op, dir);
fail:;
    int err = errno;
    if (fd >= 0) close(fd);
    unlink(tmp);
    free(tmp);
    return moe_fail(MOE_ERR_IO, op, "cannot write %s: %s", path, strerror(err));
}
