/* main.c — the moelab program.
 *
 * Boots Guile with the bindings linked in (registered as the extension
 * "libguile-moelab", so the (moelab) modules' load-extension needs no
 * dlopen), puts its own Scheme modules first on the load path, and
 * hands the command line to (moelab repl)'s moelab-main, which does the rest:
 * REPL, batch runs, -c, the REPL server. See scheme/moelab/repl.scm. */
#include <config.h>

#include <errno.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libguile.h>
#include <omp.h>

#include "dist/comm.h"
#include "moelab-guile.h"
#include "own-dirs.h"

/* Where `make install` puts the Scheme modules and their compiled .go files
 * (set by scheme/program.mk). */
#ifndef MOELAB_SCHEME_DIR
#define MOELAB_SCHEME_DIR ""
#endif
#ifndef MOELAB_CCACHE_DIR
#define MOELAB_CCACHE_DIR ""
#endif

/* The most MOELAB_NUM_THREADS may ask for. */
#define MAX_THREADS 4096

static void init_bindings(void *unused)
{
    (void)unused;
    scm_init_moelab();
}

/* MOELAB_NUM_THREADS as a thread count, or 0 when unset or invalid. */
static int threads_from_env(void)
{
    const char *s = getenv("MOELAB_NUM_THREADS");
    if (!s || !*s) return 0;
    char *end;
    errno = 0;
    long n = strtol(s, &end, 10);
    if (errno || *end || n < 1 || n > MAX_THREADS) {
        fprintf(stderr, "moelab: ignoring MOELAB_NUM_THREADS=%s (expected an integer from 1 to %d)\n",
                s, MAX_THREADS);
        return 0;
    }
    return (int)n;
}

static SCM run_main(void *unused)
{
    (void)unused;
    SCM proc = scm_c_public_ref("moelab repl", "moelab-main");
    return scm_call_3(proc, scm_program_arguments(), scm_from_utf8_keyword("threads"),
                      scm_from_int(omp_get_max_threads()));
}

/* Only reached when (moelab repl) itself cannot be loaded: errors of user code
 * are handled in Scheme. */
static SCM startup_failed(void *unused, SCM key, SCM args)
{
    (void)unused;
    SCM port = scm_current_error_port();
    scm_puts("moelab: cannot start: ", port);
    scm_print_exception(port, SCM_BOOL_F, key, args);
    scm_puts("moelab: are the moelab Scheme modules installed in " MOELAB_SCHEME_DIR
             " (or MOELAB_LOAD_PATH set, e.g. by pre-inst-env)?\n",
             port);
    return scm_from_int(70); /* EX_SOFTWARE */
}

static void inner_main(void *closure, int argc, char **argv)
{
    (void)closure;
    (void)argc;
    (void)argv;
    scm_c_register_extension("libguile-moelab", "scm_init_moelab", init_bindings, NULL);
    prepend_own_dirs("%load-path", "MOELAB_LOAD_PATH", MOELAB_SCHEME_DIR);
    prepend_own_dirs("%load-compiled-path", "MOELAB_LOAD_COMPILED_PATH", MOELAB_CCACHE_DIR);

    SCM status = scm_internal_catch(SCM_BOOL_T, run_main, NULL, startup_failed, NULL);
    int code = 1;
    if (scm_is_bool(status))
        code = scm_is_true(status) ? 0 : 1;
    else if (scm_is_signed_integer(status, 0, 255))
        code = scm_to_int(status);
    scm_flush_all_ports();
    /* Under mpirun, with-ranks initialised MPI: finalize after a clean run.
     * After an error, exit without it: a peer may be blocked in a collective
     * (MPI cannot interrupt it), and a process that ends without finalizing
     * makes mpirun stop the whole job instead of waiting forever. */
    if (code == 0) moe_mpi_finalize();
    exit(code);
}

/* A plain C or POSIX locale (a bare root shell, a container, CI) would make
 * every port ASCII and print the tables' × and ± as '?'. As Python does,
 * take characters from C.UTF-8 instead when the system has it and LC_ALL
 * does not say otherwise. Through the environment: libguile installs the
 * environment's locale again when it starts (and child processes agree). */
static void coerce_c_locale(void)
{
    const char *ctype = setlocale(LC_CTYPE, NULL);
    if (getenv("LC_ALL") || !ctype || (strcmp(ctype, "C") != 0 && strcmp(ctype, "POSIX") != 0)) return;
    if (setlocale(LC_CTYPE, "C.UTF-8")) setenv("LC_CTYPE", "C.UTF-8", 1);
}

int main(int argc, char **argv)
{
    int threads = threads_from_env();
    if (threads > 0) omp_set_num_threads(threads);
    /* As the guile program does: the user's locale, so that ports speak UTF-8. */
    setlocale(LC_ALL, "");
    coerce_c_locale();
    scm_boot_guile(argc, argv, inner_main, NULL);
    return 0; /* not reached: inner_main exits */
}
