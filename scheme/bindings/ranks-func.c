/* ranks-func.c — with-ranks from Scheme: rank contexts and their mesh
 * queries, ranks as threads of this process, and one rank per process
 * under mpirun.
 *
 * with-ranks on threads. The caller leaves Guile mode and runs
 * moe_threads_run; each rank thread makes its scope (and its mesh,
 * collectively), enters Guile and calls the entry procedure made by
 * (moelab dist), which catches every error itself and returns
 * (#t . VALUE) or (#f TEXT . STATUS). A failure becomes the rank's failing
 * status, so the runner poisons the world: peers blocked in a collective fail
 * naming this rank instead of hanging. Outcomes go into a vector that the
 * caller protects from the collector; the first rank to fail is remembered
 * (the root cause: peers only fail after it has poisoned the world).
 *
 * Under mpirun. One rank per process: the scope holds the MPI world, and
 * meshes are cached per spec for the life of the process (made collectively
 * the first time a spec is used, never freed before MPI_Finalize, so no
 * communicator is freed on Guile's finalizer thread). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "group-type.h"

/* ---- rank contexts (internal: (moelab dist) keeps the current one) ------------------ */

/* The scope's mesh for a query on the calling thread, or NULL for a scope
 * of one rank without a mesh; raises otherwise. */
static const moe_mesh *usable_mesh(dist_scope *s, const char *subr)
{
    if (!atomic_load(&s->alive))
        moelab_throw(subr, MOE_ERR_STATE, "the with-ranks of this rank context has returned");
    if (s->kind == SCOPE_THREADS && !pthread_equal(s->thread, pthread_self()))
        moelab_throw(subr, MOE_ERR_STATE, "called with the context of rank %d from another thread", s->rank);
    if (!s->mesh && s->size > 1)
        moelab_throw(subr, MOE_ERR_STATE, "this with-ranks has no mesh: pass one, as in "
                     "(with-ranks %d #:mesh '((dp . %d)) …)", s->size, s->size);
    return s->mesh;
}

/* The mesh of one rank (every dimension of size 1): names are checked
 * against it outside with-ranks. Made once; never freed. */
static moe_mesh *self_mesh;
static pthread_once_t self_mesh_once = PTHREAD_ONCE_INIT;
static void make_self_mesh(void)
{
    if (moe_mesh_new(&self_mesh, NULL, 0, NULL, NULL) != MOE_OK) self_mesh = NULL;
}

static const moe_mesh *one_rank_mesh(const char *subr)
{
    pthread_once(&self_mesh_once, make_self_mesh);
    if (!self_mesh) moelab_throw(subr, MOE_ERR_NOMEM, "out of memory for a mesh");
    return self_mesh;
}

SCM_DEFINE(moelab_context_rank, "%context-rank", 1, 0, 0, (SCM ctx),
           "This rank's rank in the world of context @var{ctx}.")
#define FUNC_NAME "current-rank"
{
    dist_scope *s = moelab_context_of(ctx, 1, FUNC_NAME);
    return scm_from_int(s ? s->rank : 0);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_context_size, "%context-size", 1, 0, 0, (SCM ctx),
           "The size of the world of context @var{ctx}.")
#define FUNC_NAME "world-size"
{
    dist_scope *s = moelab_context_of(ctx, 1, FUNC_NAME);
    return scm_from_int(s ? s->size : 1);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_context_world, "%context-world", 1, 0, 0, (SCM ctx),
           "The world group of context @var{ctx} (#f: the trivial group).")
#define FUNC_NAME "world-group"
{
    dist_scope *s = moelab_context_of(ctx, 1, FUNC_NAME);
    if (s && !atomic_load(&s->alive))
        moelab_throw(FUNC_NAME, MOE_ERR_STATE, "the with-ranks of this rank context has returned");
    SCM r = moelab_make_group(s, s ? s->world : NULL, FUNC_NAME);
    scm_remember_upto_here_1(ctx);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_context_mesh_group, "%context-mesh-group", 2, 0, 0, (SCM ctx, SCM dims),
           "The group of mesh dimensions @var{dims} (a string such as \"dp cp\") in context "
           "@var{ctx} (#f: outside with-ranks).")
#define FUNC_NAME "mesh-group"
{
    dist_scope *s = moelab_context_of(ctx, 1, FUNC_NAME);
    SCM_VALIDATE_STRING(2, dims);
    const moe_mesh *m = s ? usable_mesh(s, FUNC_NAME) : NULL;
    const moe_mesh *lookup = m ? m : one_rank_mesh(FUNC_NAME);
    char *d = scm_to_utf8_string(dims);
    moe_group *g = NULL;
    moe_status st = moe_mesh_group(&g, lookup, d);
    free(d);
    if (st != MOE_OK) moelab_throw_last_from(FUNC_NAME, "mesh-group");
    if (!m) { /* one rank: the trivial group */
        moe_group_release(g);
        return moelab_make_group(NULL, NULL, FUNC_NAME);
    }
    DIST_CHECK(FUNC_NAME, "mesh-group", moelab_scope_hold(s, g));
    SCM r = moelab_make_group(s, g, FUNC_NAME);
    scm_remember_upto_here_1(ctx);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_context_mesh_coord, "%context-mesh-coord", 2, 0, 0, (SCM ctx, SCM dim),
           "This rank's coordinate along mesh dimension @var{dim} (a string) in context "
           "@var{ctx} (#f: outside with-ranks).")
#define FUNC_NAME "mesh-coord"
{
    dist_scope *s = moelab_context_of(ctx, 1, FUNC_NAME);
    SCM_VALIDATE_STRING(2, dim);
    const moe_mesh *m = s ? usable_mesh(s, FUNC_NAME) : NULL;
    const moe_mesh *lookup = m ? m : one_rank_mesh(FUNC_NAME);
    char d[64];
    moelab_name_text(dim, d, sizeof d);
    int c = moe_mesh_coord(lookup, d);
    if (c < 0)
        moelab_throw(FUNC_NAME, MOE_ERR_ARG, "unknown dimension '%s': use tp, cp, ep, dp or pp", d);
    scm_remember_upto_here_1(ctx);
    return scm_from_int(c);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_context_close_x, "%context-close!", 1, 0, 0, (SCM ctx),
           "End the scope of the MPI rank context @var{ctx}: its groups can no longer be used.")
#define FUNC_NAME "with-ranks"
{
    dist_scope *s = moelab_context_of(ctx, 1, FUNC_NAME);
    if (s && s->kind == SCOPE_MPI) moelab_scope_end(s);
    scm_remember_upto_here_1(ctx);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

/* ---- mesh specs ---------------------------------------------------------------------- */

SCM_DEFINE(moelab_parse_mesh, "%parse-mesh", 2, 0, 0, (SCM who, SCM spec),
           "The mesh spec @var{spec} (\"pp=2,dp=2\") as an alist ((pp . 2) (dp . 2)), in its "
           "order; moelab-error naming @var{who} when it does not parse.")
#define FUNC_NAME "parse-mesh"
{
    char op[64];
    if (!moelab_name_text(who, op, sizeof op)) scm_wrong_type_arg_msg(FUNC_NAME, 1, who, "string or symbol");
    SCM_VALIDATE_STRING(2, spec);
    scm_dynwind_begin(0);
    char *text = scm_to_utf8_string(spec);
    scm_dynwind_free(text);
    const char *names[MOE_MESH_MAX_DIMS];
    int sizes[MOE_MESH_MAX_DIMS], n = 0;
    if (moe_mesh_spec_parse(text, &n, names, sizes) != MOE_OK) moelab_throw_last_from(op, "mesh");
    SCM out = SCM_EOL;
    for (int i = n - 1; i >= 0; i--) out = scm_cons(scm_cons(sym(names[i]), scm_from_int(sizes[i])), out);
    scm_dynwind_end();
    return out;
}
#undef FUNC_NAME

/* ---- with-ranks on the threads backend ------------------------------------------------- */

typedef struct threads_run {
    SCM entry;       /* (entry CONTEXT) → (#t . value) or (#f text . status); protected */
    SCM outcomes;    /* [n] vector; protected */
    int n;
    const char *spec; /* mesh spec or NULL */
    atomic_int first_failed;
    moe_status st;   /* moe_threads_run's */
} threads_run;

typedef struct rank_call {
    threads_run *run;
    int rank;
    moe_group *world;
    dist_scope *scope;
    moe_status st;
    char text[1024];
} rank_call;

/* Record a failure of this rank: its outcome and its message. */
static void rank_failed(rank_call *c, moe_status st, const char *text)
{
    c->st = st == MOE_OK ? MOE_ERR_STATE : st;
    snprintf(c->text, sizeof c->text, "%s", text && *text ? text : moe_status_name(c->st));
    SCM outcome = scm_cons(SCM_BOOL_F, scm_cons(scm_from_utf8_string(c->text),
                                                scm_from_utf8_symbol(moe_status_symbol_name(c->st))));
    scm_c_vector_set_x(c->run->outcomes, (size_t)c->rank, outcome);
}

static void *rank_in_guile(void *data)
{
    rank_call *c = data;
    c->scope = moelab_scope_new(SCOPE_THREADS, c->world);
    if (!c->scope) {
        moe_fail(MOE_ERR_NOMEM, "with-ranks", "out of memory");
        rank_failed(c, MOE_ERR_NOMEM, moe_last_error());
        return NULL;
    }
    if (c->run->spec) { /* collective over the world: every rank passes the same spec */
        moe_status st = moe_mesh_parse(&c->scope->mesh, c->world, c->run->spec);
        if (st != MOE_OK) {
            rank_failed(c, st, moe_last_error());
            return NULL;
        }
    }
    SCM ctx = moelab_wrap_context(c->scope), result;
    moe_status st = moelab_call_safely(c->run->entry, scm_list_1(ctx), &result, "with-ranks", "error",
                                       NULL, NULL);
    if (st != MOE_OK) {
        rank_failed(c, st, moe_last_error());
    } else if (!scm_is_pair(result) || !scm_is_bool(SCM_CAR(result))) {
        rank_failed(c, MOE_ERR_STATE, "with-ranks: the rank entry returned an unexpected value");
    } else if (scm_is_false(SCM_CAR(result))) {
        SCM rest = SCM_CDR(result);
        char *text = scm_is_pair(rest) && scm_is_string(SCM_CAR(rest)) ? scm_to_utf8_string(SCM_CAR(rest)) : NULL;
        c->st = MOE_ERR_STATE;
        snprintf(c->text, sizeof c->text, "%s", text ? text : "error");
        free(text);
        scm_c_vector_set_x(c->run->outcomes, (size_t)c->rank, result);
    } else {
        c->st = MOE_OK;
        scm_c_vector_set_x(c->run->outcomes, (size_t)c->rank, result);
    }
    scm_remember_upto_here_1(ctx);
    return NULL;
}

/* The rank function given to moe_threads_run. */
static moe_status rank_fn(int rank, moe_group *world, void *ctx)
{
    rank_call *c = malloc(sizeof *c);
    if (!c) return moe_fail(MOE_ERR_NOMEM, "with-ranks", "out of memory");
    *c = (rank_call){.run = ctx, .rank = rank, .world = world, .st = MOE_OK};
    scm_with_guile(rank_in_guile, c);
    moelab_scope_end(c->scope); /* on this thread, which owns the handles */
    moe_status st = c->st;
    if (st != MOE_OK) {
        int none = -1;
        atomic_compare_exchange_strong(&c->run->first_failed, &none, rank);
        /* The message peers see ("all-gather: rank R failed: <it>"): the
         * rank's own text, split at its first ": " into the "op" part that
         * moe_fail puts first. */
        char *colon = strstr(c->text, ": ");
        if (colon) {
            *colon = '\0';
            moe_fail(st, c->text, "%s", colon + 2);
        } else {
            moe_fail(st, "error", "%s", c->text);
        }
    }
    free(c);
    return st;
}

static void *threads_run_outside_guile(void *data)
{
    threads_run *r = data;
    r->st = moe_threads_run(r->n, rank_fn, r, NULL);
    return NULL;
}

SCM_DEFINE(moelab_threads_run, "%threads-run", 3, 0, 0, (SCM n, SCM mesh, SCM entry),
           "Run (@var{entry} context) on @var{n} rank threads, with the mesh spec @var{mesh} "
           "(a string or #f). Returns (first-failed-rank-or-#f . outcomes-vector).")
#define FUNC_NAME "with-ranks"
{
    int nr = moelab_to_int(n, 1, FUNC_NAME);
    if (!scm_is_false(mesh) && !scm_is_string(mesh)) scm_wrong_type_arg_msg(FUNC_NAME, 2, mesh, "string or #f");
    if (scm_is_false(scm_procedure_p(entry))) scm_wrong_type_arg_msg(FUNC_NAME, 3, entry, "procedure");
    if (nr < 1 || nr > 4096)
        moelab_throw(FUNC_NAME, MOE_ERR_ARG, "%d ranks requested; 1 to 4096 are supported", nr);
    char *spec = scm_is_false(mesh) ? NULL : scm_to_utf8_string(mesh);
    threads_run run = {.entry = entry, .outcomes = scm_c_make_vector((size_t)nr, SCM_BOOL_F), .n = nr,
                       .spec = spec};
    atomic_init(&run.first_failed, -1);
    scm_gc_protect_object(run.entry);
    scm_gc_protect_object(run.outcomes);
    /* The caller waits outside Guile mode, so that the ranks' collections
     * need not stop it. */
    scm_without_guile(threads_run_outside_guile, &run);
    moe_status st = run.st;
    scm_gc_unprotect_object(run.entry);
    scm_gc_unprotect_object(run.outcomes);
    free(spec);
    int first = atomic_load(&run.first_failed);
    if (st != MOE_OK && first < 0) moelab_throw_last_from(FUNC_NAME, "with-ranks"); /* the runner itself failed */
    moe_clear_error();
    return scm_cons(first >= 0 ? scm_from_int(first) : SCM_BOOL_F, run.outcomes);
}
#undef FUNC_NAME

/* ---- with-ranks under mpirun ---------------------------------------------------------------- */

typedef struct cached_mesh {
    struct cached_mesh *next;
    moe_mesh *mesh;
    char spec[];
} cached_mesh;

static cached_mesh *mesh_cache;
static pthread_mutex_t mesh_cache_lock = PTHREAD_MUTEX_INITIALIZER;

/* The mesh SPEC over the MPI world W: made collectively on first use, kept
 * for the life of the process. */
static moe_status mpi_mesh(moe_mesh **out, moe_group *w, const char *spec)
{
    pthread_mutex_lock(&mesh_cache_lock);
    cached_mesh *c = mesh_cache;
    while (c && strcmp(c->spec, spec) != 0) c = c->next;
    moe_status st = MOE_OK;
    if (!c) {
        size_t len = strlen(spec);
        c = malloc(sizeof *c + len + 1);
        if (!c) {
            st = moe_fail(MOE_ERR_NOMEM, "mesh", "out of memory");
        } else {
            memcpy(c->spec, spec, len + 1);
            st = moe_mesh_parse(&c->mesh, w, spec);
            if (st == MOE_OK) {
                c->next = mesh_cache;
                mesh_cache = c;
            } else {
                free(c);
                c = NULL;
            }
        }
    }
    pthread_mutex_unlock(&mesh_cache_lock);
    *out = c ? c->mesh : NULL;
    return st;
}

SCM_DEFINE(moelab_mpi_mode_p, "%mpi-mode?", 0, 0, 0, (void),
           "True when this process was launched by mpirun (or srun), or has an MPI world.")
#define FUNC_NAME "mpi-launched?"
{
    moe_group *w = moe_comm_world();
    return scm_from_bool(moe_mpi_launched() || (w && strcmp(moe_group_backend(w), "mpi") == 0));
}
#undef FUNC_NAME

SCM_DEFINE(moelab_launch_env, "%launch-env", 0, 0, 0, (void),
           "This process's (rank . size) from the launcher's environment (mpirun, srun, "
           "torchrun): (0 . 1) when nothing launched it. Starts no MPI.")
{
    int rank = 0, size = 1;
    moe_launch_env(&rank, &size);
    return scm_cons(scm_from_int(rank), scm_from_int(size));
}

SCM_DEFINE(moelab_mpi_open, "%mpi-open", 2, 0, 0, (SCM n, SCM mesh),
           "A rank context on the MPI world, which must have @var{n} ranks, with the mesh "
           "spec @var{mesh} (a string or #f). End it with %context-close!.")
#define FUNC_NAME "with-ranks"
{
    int nr = moelab_to_int(n, 1, FUNC_NAME);
    if (!scm_is_false(mesh) && !scm_is_string(mesh)) scm_wrong_type_arg_msg(FUNC_NAME, 2, mesh, "string or #f");
    moe_group *w = NULL;
    DIST_CHECK(FUNC_NAME, "with-ranks", moe_mpi_world(&w));
    int size = moe_group_size(w);
    if (nr != size) {
        moe_group_release(w);
        moelab_throw(FUNC_NAME, MOE_ERR_ARG, "%d ranks asked for, but mpirun started %d process%s: "
                     "run it with mpirun -np %d", nr, size, size == 1 ? "" : "es", nr);
    }
    dist_scope *s = moelab_scope_new(SCOPE_MPI, w);
    if (!s) {
        moe_group_release(w);
        moelab_throw(FUNC_NAME, MOE_ERR_NOMEM, "out of memory");
    }
    if (scm_is_string(mesh)) {
        char *spec = scm_to_utf8_string(mesh);
        moe_status st = mpi_mesh(&s->mesh, w, spec);
        free(spec);
        if (st != MOE_OK) {
            moelab_scope_end(s);
            moelab_throw_last_from(FUNC_NAME, "mesh");
        }
    }
    SCM ctx = moelab_wrap_context(s);
    return ctx;
}
#undef FUNC_NAME

/* ---- a failed job ------------------------------------------------------------------------------------- */

SCM_DEFINE(moelab_mpi_failed, "%mpi-failed", 0, 0, 0, (void),
           "#f, or the message of the timeout that made this process's MPI job fail.")
#define FUNC_NAME "with-ranks"
{
    const char *msg;
    return moe_mpi_failed(&msg) ? scm_from_utf8_string(msg) : SCM_BOOL_F;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_mpi_abort, "%mpi-abort", 1, 0, 0, (SCM message),
           "Print @var{message} and abort the whole MPI job (mpirun exits non-zero).")
#define FUNC_NAME "with-ranks"
{
    SCM_VALIDATE_STRING(1, message);
    char *m = scm_to_utf8_string(message);
    scm_flush_all_ports();
    moe_mpi_abort(m); /* returns only when there is no MPI job */
    free(m);
    moelab_throw_last_from(FUNC_NAME, "with-ranks");
}
#undef FUNC_NAME

void moelab_init_ranks_func(void)
{
#ifndef SCM_MAGIC_SNARFER
#include "ranks-func.x"
#endif
}
