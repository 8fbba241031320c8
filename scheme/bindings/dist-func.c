/* dist-func.c — process groups and collectives from Scheme: the
 * <group> foreign object, rank contexts, with-ranks on the threads backend
 * and under mpirun, and the collectives of core/dist/comm.h.
 *
 * Ownership. A moe_group handle belongs to one rank, and only that rank's
 * thread runs collectives on it (who holds references, and on which thread
 * they may go: core/dist/comm.h, groups). So no Scheme object owns a handle. Each run of a rank has a scope
 * (dist_scope) that owns the handles it gives out (its world, its mesh and
 * the mesh groups asked for) and drops them on the rank's own thread when
 * the rank's procedure returns. A <group> points at its scope (an atomic
 * reference to the scope's memory, never to the handle) and keeps a copy of
 * what it prints (size, rank, name, members); once its scope has ended, a
 * collective on it raises moelab-error. Finalizers only free plain memory.
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
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bindings.h"

/* ---- scopes ------------------------------------------------------------------ */

typedef enum scope_kind { SCOPE_THREADS, SCOPE_MPI } scope_kind;

typedef struct dist_scope {
    atomic_int refs;   /* the run itself + every Scheme object pointing here */
    atomic_int alive;  /* 0 once the rank's procedure has returned */
    scope_kind kind;
    pthread_t thread;  /* the thread that owns the handles */
    moe_group *world;  /* threads: borrowed from moe_threads_run; MPI: owned */
    moe_mesh *mesh;    /* threads: owned; MPI: borrowed from the mesh cache */
    moe_group **held;  /* handles given out, one reference each */
    int nheld, capheld;
    int rank, size;
} dist_scope;

static dist_scope *scope_new(scope_kind kind, moe_group *world)
{
    dist_scope *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    atomic_init(&s->refs, 1);
    atomic_init(&s->alive, 1);
    s->kind = kind;
    s->thread = pthread_self();
    s->world = world;
    s->rank = moe_group_rank(world);
    s->size = moe_group_size(world);
    return s;
}

static void scope_ref(dist_scope *s)
{
    if (s) atomic_fetch_add(&s->refs, 1);
}

static void scope_unref(dist_scope *s)
{
    if (!s || atomic_fetch_sub(&s->refs, 1) != 1) return;
    free(s->held);
    free(s);
}

/* Drop the handles (on the owning thread) and the run's reference; once. */
static void scope_end(dist_scope *s)
{
    if (!s || atomic_exchange(&s->alive, 0) == 0) return;
    for (int i = 0; i < s->nheld; i++) moe_group_release(s->held[i]);
    s->nheld = 0;
    if (s->kind == SCOPE_THREADS) {
        moe_mesh_free(s->mesh);
    } else {
        moe_group_release(s->world);
    }
    s->mesh = NULL;
    s->world = NULL;
    scope_unref(s);
}

/* Keep G's reference in S (one per distinct handle). */
static moe_status scope_hold(dist_scope *s, moe_group *g)
{
    if (!g) return MOE_OK;
    for (int i = 0; i < s->nheld; i++)
        if (s->held[i] == g) {
            moe_group_release(g); /* already held: the extra reference goes */
            return MOE_OK;
        }
    if (s->nheld == s->capheld) {
        int cap = s->capheld ? 2 * s->capheld : 8;
        moe_group **grown = realloc(s->held, sizeof *grown * (size_t)cap);
        if (!grown) {
            moe_group_release(g);
            return moe_fail(MOE_ERR_NOMEM, "mesh-group", "out of memory");
        }
        s->held = grown;
        s->capheld = cap;
    }
    s->held[s->nheld++] = g;
    return MOE_OK;
}

/* ---- errors (the C operation names COP; the Scheme procedure SUBR) ---------- */

#define DIST_CHECK(subr, cop, expr)                                            \
    do {                                                                       \
        if ((expr) != MOE_OK) moelab_throw_last_from(subr, cop);              \
    } while (0)

/* ---- the <group> foreign object ---------------------------------------------------- */

static SCM group_class = SCM_BOOL_F;
static SCM context_class = SCM_BOOL_F;

typedef struct group_ref {
    moe_group *g;       /* borrowed from SCOPE; NULL: the trivial group */
    dist_scope *scope;  /* NULL for the trivial group */
    int size, rank;
    char name[32];
    char backend[16];
    int *world_ranks;   /* [size] */
} group_ref;

static void finalize_group(SCM obj)
{
    group_ref *r = scm_foreign_object_ref(obj, 0);
    if (!r) return;
    scm_foreign_object_set_x(obj, 0, NULL);
    scope_unref(r->scope);
    free(r->world_ranks);
    free(r);
}

/* A <group> for G (borrowed from S, which keeps it; S NULL: G is NULL). */
static SCM make_group(dist_scope *s, moe_group *g, const char *subr)
{
    group_ref *r = calloc(1, sizeof *r);
    int size = moe_group_size(g);
    int *wr = r ? malloc(sizeof *wr * (size_t)size) : NULL;
    if (!r || !wr) {
        free(r);
        moelab_throw(subr, MOE_ERR_NOMEM, "out of memory for a group");
    }
    for (int i = 0; i < size; i++) wr[i] = moe_group_world_rank(g, i);
    r->g = g;
    r->scope = s;
    r->size = size;
    r->rank = moe_group_rank(g);
    r->world_ranks = wr;
    snprintf(r->name, sizeof r->name, "%s", moe_group_name(g));
    snprintf(r->backend, sizeof r->backend, "%s", moe_group_backend(g));
    scope_ref(s);
    return scm_make_foreign_object_1(group_class, r);
}

static group_ref *group_of(SCM obj, int pos, const char *subr)
{
    if (!SCM_IS_A_P(obj, group_class)) scm_wrong_type_arg_msg(subr, pos, obj, "group");
    return scm_foreign_object_ref(obj, 0);
}

/* The handle of OBJ for a collective on the calling thread: raises
 * moelab-error when its with-ranks has returned, or when it belongs to
 * another rank's thread. */
static moe_group *use_group(SCM obj, int pos, const char *subr)
{
    group_ref *r = group_of(obj, pos, subr);
    dist_scope *s = r->scope;
    if (!s) return NULL;
    if (!atomic_load(&s->alive))
        moelab_throw(subr, MOE_ERR_STATE, "group '%s' (rank %d of %d) can no longer be used: the "
                     "with-ranks that made it has returned", r->name, r->rank, r->size);
    if (s->kind == SCOPE_THREADS && !pthread_equal(s->thread, pthread_self()))
        moelab_throw(subr, MOE_ERR_STATE, "group '%s' belongs to rank %d of a with-ranks: use it "
                     "only inside that rank's procedure", r->name, s->rank);
    return r->g;
}

/* Exported to the other binding files (bindings.h): #f and the trivial
 * one-rank group give NULL. */
moe_group *moelab_to_group(SCM obj, int pos, const char *subr)
{
    if (scm_is_false(obj)) return NULL;
    return use_group(obj, pos, subr);
}

/* ---- rank contexts (internal: (moelab dist) keeps the current one) ------------------ */

static void finalize_context(SCM obj)
{
    dist_scope *s = scm_foreign_object_ref(obj, 0);
    if (!s) return;
    scm_foreign_object_set_x(obj, 0, NULL);
    scope_unref(s);
}

static SCM wrap_context(dist_scope *s)
{
    scope_ref(s);
    return scm_make_foreign_object_1(context_class, s);
}

/* The scope of context OBJ; #f gives NULL (outside with-ranks). */
static dist_scope *context_of(SCM obj, int pos, const char *subr)
{
    if (scm_is_false(obj)) return NULL;
    if (!SCM_IS_A_P(obj, context_class)) scm_wrong_type_arg_msg(subr, pos, obj, "rank context");
    return scm_foreign_object_ref(obj, 0);
}

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
    dist_scope *s = context_of(ctx, 1, FUNC_NAME);
    return scm_from_int(s ? s->rank : 0);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_context_size, "%context-size", 1, 0, 0, (SCM ctx),
           "The size of the world of context @var{ctx}.")
#define FUNC_NAME "world-size"
{
    dist_scope *s = context_of(ctx, 1, FUNC_NAME);
    return scm_from_int(s ? s->size : 1);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_context_world, "%context-world", 1, 0, 0, (SCM ctx),
           "The world group of context @var{ctx} (#f: the trivial group).")
#define FUNC_NAME "world-group"
{
    dist_scope *s = context_of(ctx, 1, FUNC_NAME);
    if (s && !atomic_load(&s->alive))
        moelab_throw(FUNC_NAME, MOE_ERR_STATE, "the with-ranks of this rank context has returned");
    SCM r = make_group(s, s ? s->world : NULL, FUNC_NAME);
    scm_remember_upto_here_1(ctx);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_context_mesh_group, "%context-mesh-group", 2, 0, 0, (SCM ctx, SCM dims),
           "The group of mesh dimensions @var{dims} (a string such as \"dp cp\") in context "
           "@var{ctx} (#f: outside with-ranks).")
#define FUNC_NAME "mesh-group"
{
    dist_scope *s = context_of(ctx, 1, FUNC_NAME);
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
        return make_group(NULL, NULL, FUNC_NAME);
    }
    DIST_CHECK(FUNC_NAME, "mesh-group", scope_hold(s, g));
    SCM r = make_group(s, g, FUNC_NAME);
    scm_remember_upto_here_1(ctx);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_context_mesh_coord, "%context-mesh-coord", 2, 0, 0, (SCM ctx, SCM dim),
           "This rank's coordinate along mesh dimension @var{dim} (a string) in context "
           "@var{ctx} (#f: outside with-ranks).")
#define FUNC_NAME "mesh-coord"
{
    dist_scope *s = context_of(ctx, 1, FUNC_NAME);
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
    dist_scope *s = context_of(ctx, 1, FUNC_NAME);
    if (s && s->kind == SCOPE_MPI) scope_end(s);
    scm_remember_upto_here_1(ctx);
    return SCM_UNSPECIFIED;
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
                                                scm_from_utf8_symbol(moelab_status_symbol(c->st))));
    scm_c_vector_set_x(c->run->outcomes, (size_t)c->rank, outcome);
}

static void *rank_in_guile(void *data)
{
    rank_call *c = data;
    c->scope = scope_new(SCOPE_THREADS, c->world);
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
    SCM ctx = wrap_context(c->scope), result;
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
    scope_end(c->scope); /* on this thread, which owns the handles */
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
    dist_scope *s = scope_new(SCOPE_MPI, w);
    if (!s) {
        moe_group_release(w);
        moelab_throw(FUNC_NAME, MOE_ERR_NOMEM, "out of memory");
    }
    if (scm_is_string(mesh)) {
        char *spec = scm_to_utf8_string(mesh);
        moe_status st = mpi_mesh(&s->mesh, w, spec);
        free(spec);
        if (st != MOE_OK) {
            scope_end(s);
            moelab_throw_last_from(FUNC_NAME, "mesh");
        }
    }
    SCM ctx = wrap_context(s);
    return ctx;
}
#undef FUNC_NAME

/* ---- groups ------------------------------------------------------------------------------------ */

SCM_DEFINE(moelab_self_group, "%self-group", 0, 0, 0, (void), "The trivial group of just this rank.")
#define FUNC_NAME "world-group"
{
    return make_group(NULL, NULL, FUNC_NAME);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_group_p, "%group?", 1, 0, 0, (SCM obj), "True when @var{obj} is a group.")
#define FUNC_NAME "group?"
{
    return scm_from_bool(SCM_IS_A_P(obj, group_class));
}
#undef FUNC_NAME

SCM_DEFINE(moelab_group_size, "%group-size", 1, 0, 0, (SCM g), "The number of ranks in group @var{g}.")
#define FUNC_NAME "group-size"
{
    return scm_from_int(group_of(g, 1, FUNC_NAME)->size);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_group_rank, "%group-rank", 1, 0, 0, (SCM g), "This rank's rank in group @var{g}.")
#define FUNC_NAME "group-rank"
{
    return scm_from_int(group_of(g, 1, FUNC_NAME)->rank);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_group_name, "%group-name", 1, 0, 0, (SCM g), "The label of group @var{g}.")
#define FUNC_NAME "group-name"
{
    return scm_from_utf8_string(group_of(g, 1, FUNC_NAME)->name);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_group_ranks, "%group-ranks", 1, 0, 0, (SCM g),
           "The world ranks of the members of group @var{g}, in group order.")
#define FUNC_NAME "group-ranks"
{
    group_ref *r = group_of(g, 1, FUNC_NAME);
    SCM l = SCM_EOL;
    for (int i = r->size - 1; i >= 0; i--) l = scm_cons(scm_from_int(r->world_ranks[i]), l);
    scm_remember_upto_here_1(g);
    return l;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_group_repr, "%group-repr", 1, 0, 0, (SCM g), "The printed form of group @var{g}.")
#define FUNC_NAME "group-repr"
{
    group_ref *r = group_of(g, 1, FUNC_NAME);
    char buf[128];
    bool ended = r->scope && !atomic_load(&r->scope->alive);
    snprintf(buf, sizeof buf, "#<group %s: rank %d of %d%s%s%s>", r->name, r->rank, r->size,
             r->scope ? " (" : "", r->scope ? r->backend : "", r->scope ? (ended ? ", ended)" : ")") : "");
    scm_remember_upto_here_1(g);
    return scm_from_utf8_string(buf);
}
#undef FUNC_NAME

/* ---- collectives ----------------------------------------------------------------------------------- */

static moe_reduce_op to_reduce_op(SCM sym, int pos, const char *subr)
{
    char name[64];
    moe_reduce_op op;
    moelab_to_name(sym, name, sizeof name, pos, subr, "symbol (sum, avg, max or min)");
    if (!moe_reduce_op_parse(name, &op))
        moelab_throw(subr, MOE_ERR_ARG, "unknown reduce op '%s': use sum, avg, max or min", name);
    return op;
}

SCM_DEFINE(moelab_all_reduce_x, "%all-reduce!", 3, 0, 0, (SCM t, SCM op, SCM g),
           "Reduce @var{t} in place with @var{op} over group @var{g}.")
#define FUNC_NAME "all-reduce!"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    moe_reduce_op o = to_reduce_op(op, 2, FUNC_NAME);
    moe_group *grp = use_group(g, 3, FUNC_NAME);
    DIST_CHECK(FUNC_NAME, "all-reduce", moe_all_reduce_(x, o, grp));
    scm_remember_upto_here_2(t, g);
    return t;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_all_reduce, "%all-reduce", 3, 0, 0, (SCM t, SCM op, SCM g),
           "A new tensor: @var{t} reduced with @var{op} over group @var{g} (differentiable "
           "for sum and avg).")
#define FUNC_NAME "all-reduce"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME), *r;
    moe_reduce_op o = to_reduce_op(op, 2, FUNC_NAME);
    moe_group *grp = use_group(g, 3, FUNC_NAME);
    DIST_CHECK(FUNC_NAME, "all-reduce", moe_all_reduce(&r, x, o, grp));
    scm_remember_upto_here_2(t, g);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_all_gather, "%all-gather", 2, 0, 0, (SCM t, SCM g),
           "Every rank's @var{t} concatenated along dim 0 in rank order (differentiable).")
#define FUNC_NAME "all-gather"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME), *r;
    moe_group *grp = use_group(g, 2, FUNC_NAME);
    DIST_CHECK(FUNC_NAME, "all-gather", moe_all_gather(&r, x, grp));
    scm_remember_upto_here_2(t, g);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_reduce_scatter, "%reduce-scatter", 3, 0, 0, (SCM t, SCM op, SCM g),
           "Block r of @var{t} reduced with @var{op} over group @var{g}, on rank r (differentiable).")
#define FUNC_NAME "reduce-scatter"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME), *r;
    moe_reduce_op o = to_reduce_op(op, 2, FUNC_NAME);
    moe_group *grp = use_group(g, 3, FUNC_NAME);
    DIST_CHECK(FUNC_NAME, "reduce-scatter", moe_reduce_scatter(&r, x, o, grp));
    scm_remember_upto_here_2(t, g);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_all_to_all, "%all-to-all", 3, 0, 0, (SCM t, SCM splits, SCM g),
           "Rows of @var{t} sent to each rank of group @var{g} by @var{splits} (a list of row "
           "counts, or #f: even); returns (received . receive-splits). Differentiable.")
#define FUNC_NAME "all-to-all"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME), *r;
    moe_group *grp = use_group(g, 3, FUNC_NAME);
    int n = group_of(g, 3, FUNC_NAME)->size;
    long len = scm_is_false(splits) ? n : scm_ilength(splits);
    if (len < 0) scm_wrong_type_arg_msg(FUNC_NAME, 2, splits, "list of row counts or #f");
    if (len != n)
        moelab_throw(FUNC_NAME, MOE_ERR_ARG, "%ld send splits for a group of %d rank%s: give one row "
                     "count per rank", len, n, n == 1 ? "" : "s");
    for (SCM l = splits; scm_is_pair(l); l = SCM_CDR(l))
        if (!scm_is_signed_integer(SCM_CAR(l), 0, INT64_MAX))
            scm_wrong_type_arg_msg(FUNC_NAME, 2, splits, "list of non-negative row counts");
    int64_t *buf = malloc(sizeof *buf * 2 * (size_t)n);
    if (!buf) moelab_throw(FUNC_NAME, MOE_ERR_NOMEM, "out of memory");
    int64_t *send = scm_is_false(splits) ? NULL : buf, *recv = buf + n;
    if (send) {
        SCM l = splits;
        for (int i = 0; i < n; i++, l = SCM_CDR(l)) send[i] = scm_to_int64(SCM_CAR(l));
    }
    moe_status st = moe_all_to_all(&r, recv, x, send, grp);
    if (st != MOE_OK) {
        free(buf);
        moelab_throw_last_from(FUNC_NAME, "all-to-all");
    }
    SCM l = SCM_EOL;
    for (int i = n - 1; i >= 0; i--) l = scm_cons(scm_from_int64(recv[i]), l);
    free(buf);
    scm_remember_upto_here_2(t, g);
    return scm_cons(moelab_wrap(r), l);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_broadcast_x, "%broadcast!", 3, 0, 0, (SCM t, SCM root, SCM g),
           "Overwrite @var{t} on every rank of group @var{g} with rank @var{root}'s.")
#define FUNC_NAME "broadcast!"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    int r = moelab_to_int(root, 2, FUNC_NAME);
    moe_group *grp = use_group(g, 3, FUNC_NAME);
    DIST_CHECK(FUNC_NAME, "broadcast", moe_broadcast_(x, r, grp));
    scm_remember_upto_here_2(t, g);
    return t;
}
#undef FUNC_NAME

/* ---- point to point ------------------------------------------------------------------------------------- */

SCM_DEFINE(moelab_send, "%send", 4, 0, 0, (SCM t, SCM dst, SCM tag, SCM g),
           "Send @var{t} to rank @var{dst} of group @var{g} with @var{tag}.")
#define FUNC_NAME "send!"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    int d = moelab_to_int(dst, 2, FUNC_NAME);
    int k = moelab_to_int(tag, 3, FUNC_NAME);
    moe_group *grp = use_group(g, 4, FUNC_NAME);
    DIST_CHECK(FUNC_NAME, "send!", moe_send(x, d, k, grp));
    scm_remember_upto_here_2(t, g);
    return t;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_recv_x, "%recv!", 4, 0, 0, (SCM t, SCM src, SCM tag, SCM g),
           "Fill @var{t} with what rank @var{src} of group @var{g} sent with @var{tag}.")
#define FUNC_NAME "recv!"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    int s = moelab_to_int(src, 2, FUNC_NAME);
    int k = moelab_to_int(tag, 3, FUNC_NAME);
    moe_group *grp = use_group(g, 4, FUNC_NAME);
    DIST_CHECK(FUNC_NAME, "recv!", moe_recv_(x, s, k, grp));
    scm_remember_upto_here_2(t, g);
    return t;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_barrier, "%barrier", 1, 0, 0, (SCM g), "Wait until every rank of @var{g} arrives.")
#define FUNC_NAME "barrier"
{
    moe_group *grp = use_group(g, 1, FUNC_NAME);
    DIST_CHECK(FUNC_NAME, "barrier", moe_barrier(grp));
    scm_remember_upto_here_1(g);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

/* ---- settings ------------------------------------------------------------------------------------- */

/* The timeout as Scheme sees it: seconds, #f for forever, NaN when
 * MOELAB_COMM_TIMEOUT holds no valid timeout. */
static SCM timeout_to_scm(double seconds)
{
    return isinf(seconds) ? SCM_BOOL_F : scm_from_double(seconds);
}

SCM_DEFINE(moelab_set_comm_timeout_x, "%set-comm-timeout!", 1, 0, 0, (SCM seconds),
           "Seconds a collective may wait for its peers (a positive number, or #f: forever); "
           "returns the previous setting.")
#define FUNC_NAME "set-comm-timeout!"
{
    double s = scm_is_false(seconds) ? INFINITY : moelab_to_double(seconds, 1, FUNC_NAME);
    if (!(s > 0)) {
        char text[64];
        if (isnan(s)) snprintf(text, sizeof text, "+nan.0");
        else snprintf(text, sizeof text, "%g", s);
        moelab_throw(FUNC_NAME, MOE_ERR_ARG, "%s is not a timeout: give a positive number of seconds, or #f "
                     "to wait forever", text);
    }
    double prev = moe_comm_timeout();
    DIST_CHECK(FUNC_NAME, "set-comm-timeout!", moe_comm_set_timeout(s));
    return timeout_to_scm(prev);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_comm_timeout, "%comm-timeout", 0, 0, 0, (void),
           "Seconds a collective may wait for its peers (#f: forever).")
#define FUNC_NAME "comm-timeout"
{
    double s;
    DIST_CHECK(FUNC_NAME, "comm-timeout", moe_comm_wait_limit("comm-timeout", &s));
    return timeout_to_scm(s);
}
#undef FUNC_NAME

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

/* Called by init.c (declared there too: bindings.h is shared). */
void moelab_init_dist_func(void);
void moelab_init_dist_func(void)
{
    group_class = scm_make_foreign_object_type(scm_from_utf8_symbol("<group>"),
                                               scm_list_1(scm_from_utf8_symbol("ref")), finalize_group);
    scm_gc_protect_object(group_class);
    scm_c_define("<group>", group_class);
    context_class = scm_make_foreign_object_type(scm_from_utf8_symbol("<rank-context>"),
                                                 scm_list_1(scm_from_utf8_symbol("scope")), finalize_context);
    scm_gc_protect_object(context_class);
#ifndef SCM_MAGIC_SNARFER
#include "dist-func.x"
#endif
}
