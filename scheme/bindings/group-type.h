/* group-type.h — what ranks-func.c and collective-func.c share with
 * group-type.c: rank scopes, the <group> and <rank-context> foreign objects
 * (not installed).
 *
 * Ownership. A moe_group handle belongs to one rank, and only that rank's
 * thread runs collectives on it (who holds references, and on which thread
 * they may go: core/dist/comm.h, groups). So no Scheme object owns a handle. Each run of a rank has a scope
 * (dist_scope) that owns the handles it gives out (its world, its mesh and
 * the mesh groups asked for) and drops them on the rank's own thread when
 * the rank's procedure returns. A <group> points at its scope (an atomic
 * reference to the scope's memory, never to the handle) and keeps a copy of
 * what it prints (size, rank, name, members); once its scope has ended, a
 * collective on it raises moelab-error. A <rank-context> is (moelab dist)'s
 * handle on a scope. Finalizers only free plain memory. */
#ifndef MOELAB_GUILE_GROUP_TYPE_H
#define MOELAB_GUILE_GROUP_TYPE_H

#include <pthread.h>
#include <stdatomic.h>

#include "bindings.h"

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

/* A scope of the calling thread over WORLD; NULL when out of memory. */
dist_scope *moelab_scope_new(scope_kind kind, moe_group *world);
/* Drop the handles (on the owning thread) and the run's reference; once. */
void moelab_scope_end(dist_scope *s);
/* Keep G's reference in S (one per distinct handle). */
moe_status moelab_scope_hold(dist_scope *s, moe_group *g);

/* A <group> for G (borrowed from S, which keeps it; S NULL: G is NULL, the
 * trivial group). */
SCM moelab_make_group(dist_scope *s, moe_group *g, const char *subr);
/* The number of ranks of <group> OBJ; wrong-type-arg when it is not one. */
int moelab_group_size_of(SCM obj, int pos, const char *subr);
/* The handle of <group> OBJ for a collective on the calling thread (NULL:
 * the trivial group): raises moelab-error when its with-ranks has returned,
 * or when it belongs to another rank's thread. */
moe_group *moelab_use_group(SCM obj, int pos, const char *subr);

/* A new <rank-context> on S (which it keeps alive). */
SCM moelab_wrap_context(dist_scope *s);
/* The scope of context OBJ; #f gives NULL (outside with-ranks). */
dist_scope *moelab_context_of(SCM obj, int pos, const char *subr);

/* Raise moelab-error for a failed EXPR, naming SUBR (the Scheme procedure)
 * where the core named COP (its C operation). */
#define DIST_CHECK(subr, cop, expr)                                            \
    do {                                                                       \
        if ((expr) != MOE_OK) moelab_throw_last_from(subr, cop);              \
    } while (0)

void moelab_init_group_type(void);
void moelab_init_ranks_func(void);
void moelab_init_collective_func(void);

#endif
