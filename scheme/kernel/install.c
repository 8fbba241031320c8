/* install.c — moelab-kernel --install: write the kernelspec "moelab" where
 * Jupyter looks for kernels. */
#include <config.h>

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "kernel.h"

/* Where `make install` puts the kernelspec (set by scheme/kernel/kernel.mk). */
#ifndef MOELAB_KERNELSPEC_DIR
#define MOELAB_KERNELSPEC_DIR ""
#endif

static int make_dirs(const char *path)
{
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    return mkdir(buf, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

static int copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb");
    if (!in) return -1;
    FILE *out = fopen(to, "wb");
    if (!out) {
        fclose(in);
        return -1;
    }
    char buf[8192];
    size_t n;
    int rc = 0;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) rc = -1;
    fclose(in);
    if (fclose(out) != 0) rc = -1;
    return rc;
}

int kernel_install(bool user, const char *prefix)
{
    char dir[PATH_MAX];
    if (prefix)
        snprintf(dir, sizeof dir, "%s/share/jupyter/kernels/moelab", prefix);
    else if (user) {
        const char *data = getenv("JUPYTER_DATA_DIR");
        const char *xdg = getenv("XDG_DATA_HOME");
        const char *home = getenv("HOME");
        if (data && *data)
            snprintf(dir, sizeof dir, "%s/kernels/moelab", data);
        else if (xdg && *xdg)
            snprintf(dir, sizeof dir, "%s/jupyter/kernels/moelab", xdg);
        else if (home && *home)
            snprintf(dir, sizeof dir, "%s/.local/share/jupyter/kernels/moelab", home);
        else {
            fprintf(stderr, "moelab-kernel --install --user: neither JUPYTER_DATA_DIR, "
                            "XDG_DATA_HOME nor HOME is set\n");
            return -1;
        }
    } else
        snprintf(dir, sizeof dir, "%s", MOELAB_KERNELSPEC_DIR);

    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) {
        fprintf(stderr, "moelab-kernel --install: cannot tell where this program is: %s\n",
                strerror(errno));
        return -1;
    }
    self[n] = 0;
    if (make_dirs(dir) != 0) {
        fprintf(stderr, "moelab-kernel --install: cannot make %s: %s\n", dir, strerror(errno));
        return -1;
    }
    json_t *spec = json_pack("{s:[s, s, s], s:s, s:s, s:s}", "argv", self, "-f",
                             "{connection_file}", "display_name", "moelab", "language", "scheme",
                             "interrupt_mode", "signal");
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/kernel.json", dir);
    int rc = json_dump_file(spec, path, JSON_INDENT(2));
    json_decref(spec);
    if (rc != 0) {
        fprintf(stderr, "moelab-kernel --install: cannot write %s\n", path);
        return -1;
    }
    /* the logos, from the kernelspec `make install` put in place */
    static const char *const logos[] = {"logo-32x32.png", "logo-64x64.png", "logo-svg.svg"};
    for (size_t i = 0; i < sizeof logos / sizeof *logos; i++) {
        char from[PATH_MAX + 32], to[PATH_MAX + 32];
        snprintf(from, sizeof from, "%s/%s", MOELAB_KERNELSPEC_DIR, logos[i]);
        snprintf(to, sizeof to, "%s/%s", dir, logos[i]);
        if (strcmp(from, to) != 0 && access(from, R_OK) == 0 && copy_file(from, to) != 0)
            fprintf(stderr, "moelab-kernel --install: cannot copy %s to %s\n", from, to);
    }
    printf("installed the kernelspec moelab in %s\n", dir);
    return 0;
}
