/* own-dirs.h — for the programs that embed Guile (moelab, moelab-kernel):
 * load their own Scheme modules first. */
#ifndef MOELAB_OWN_DIRS_H
#define MOELAB_OWN_DIRS_H

#include <stdlib.h>

#include <libguile.h>

/* Put the program's own module directories in front of the load path held
 * by the Scheme variable VAR, so that the modules this program was built with
 * win over another moelab's on GUILE_LOAD_PATH or in Guile's site
 * directories. The environment variable ENV (a colon-separated list) replaces
 * the installed directory INSTALLED: pre-inst-env points it at the build
 * tree. */
static inline void prepend_own_dirs(const char *var, const char *env, const char *installed)
{
    const char *dirs = getenv(env);
    if (!dirs || !*dirs) dirs = installed;
    if (!*dirs) return;
    SCM v = scm_c_lookup(var);
    scm_variable_set_x(v, scm_parse_path(scm_from_locale_string(dirs), scm_variable_ref(v)));
}

#endif
