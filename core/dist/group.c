/* group.c — process groups (handles, their labels and members, split and
 * subset, the NCCL attachment), the calling thread's world, and the launch
 * environment (which launcher started this process; the MPI entry points of
 * a build without MPI). The collectives are in comm.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "comm_impl.h"
#include "internal.h"

/* ---- the calling thread's world ------------------------------------------------- */

static _Thread_local moe_group *tls_world;
#ifdef MOELAB_HAVE_MPI
moe_group *moe_mpi_world_peek(void); /* comm_mpi.c */
#endif

moe_group *moe_comm_world(void)
{
    if (tls_world) return tls_world;
#ifdef MOELAB_HAVE_MPI
    return moe_mpi_world_peek();
#else
    return NULL;
#endif
}

void moe_comm_set_world(moe_group *g) { tls_world = g; }

bool moe_built_with_mpi(void)
{
#ifdef MOELAB_HAVE_MPI
    return true;
#else
    return false;
#endif
}

bool moe_built_with_nccl(void)
{
#ifdef MOELAB_HAVE_CUDA
    return true;
#else
    return false;
#endif
}

/* ---- groups --------------------------------------------------------------------- */

moe_status moe_group_alloc(moe_group **out, const moe_comm_backend *ops, int rank, int size,
                           const int *world_ranks, void *impl)
{
    *out = NULL;
    moe_group *g = calloc(1, sizeof *g);
    int *wr = malloc(sizeof(int) * (size_t)(size > 0 ? size : 1));
    if (!g || !wr) {
        free(g);
        free(wr);
        return moe_fail(MOE_ERR_NOMEM, "group", "out of memory for %zu bytes of a group of %d ranks",
                        sizeof *g + sizeof(int) * (size_t)(size > 0 ? size : 1), size);
    }
    for (int i = 0; i < size; i++) wr[i] = world_ranks ? world_ranks[i] : i;
    g->ops = ops;
    g->rank = rank;
    g->size = size;
    g->world_ranks = wr;
    g->refcount = 1;
    g->impl = impl;
    snprintf(g->name, sizeof g->name, "%s", "group");
    *out = g;
    return MOE_OK;
}

int moe_group_size(const moe_group *g) { return g ? g->size : 1; }
int moe_group_rank(const moe_group *g) { return g ? g->rank : 0; }

moe_group *moe_group_retain(moe_group *g)
{
    if (g) __atomic_add_fetch(&g->refcount, 1, __ATOMIC_RELAXED);
    return g;
}

void moe_group_release(moe_group *g)
{
    /* Any thread may drop the last reference (comm.h, groups): atomic. */
    if (!g || __atomic_sub_fetch(&g->refcount, 1, __ATOMIC_ACQ_REL) > 0) return;
    moe_group_release(g->nccl);
    if (g->ops && g->ops->destroy) g->ops->destroy(g);
    free(g->world_ranks);
    free(g);
}

const char *moe_group_backend(const moe_group *g) { return g ? g->ops->name : "self"; }

int moe_group_world_rank(const moe_group *g, int i)
{
    if (!g) return i == 0 ? 0 : -1;
    return i >= 0 && i < g->size ? g->world_ranks[i] : -1;
}

const char *moe_group_name(const moe_group *g) { return g ? g->name : "self"; }

void moe_group_set_name(moe_group *g, const char *name)
{
    if (g) snprintf(g->name, sizeof g->name, "%s", name ? name : "");
}

bool moe_group_has_nccl(const moe_group *g) { return g && g->nccl; }

void moe_comm_poison(moe_group *g, moe_status code)
{
    if (g && g->ops->poison) g->ops->poison(g, code, moe_last_error());
}

/* ---- groups: split and subset ----------------------------------------------------------------------------- */

moe_status moe_group_split(moe_group **out, moe_group *g, int color, int key)
{
    *out = NULL;
    if (!g) return MOE_OK;
    MOE_TRY(moe_comm_enter(g, MOE_COLL_SPLIT, 0, MOE_I32, 0, MOE_OK, false));
    moe_status st = g->ops->split(out, g, color, key);
    if (st == MOE_OK && *out) snprintf((*out)->name, sizeof (*out)->name, "%.16s/%d", g->name, color);
    return moe_comm_done(g, st);
}

moe_status moe_group_subset(moe_group **out, moe_group *g, int n, const int *ranks)
{
    *out = NULL;
    const char *opn = "group-subset";
    int size = moe_group_size(g), me = moe_group_rank(g), pos = -1;
    moe_status st = MOE_OK;
    if (n < 1 || n > size || !ranks)
        st = moe_fail(MOE_ERR_ARG, opn, "%d ranks requested from a group of %d", n, size);
    for (int i = 0; i < n && st == MOE_OK; i++) {
        if (ranks[i] < 0 || ranks[i] >= size)
            st = moe_fail(MOE_ERR_ARG, opn, "rank %d is not in the group (size %d)", ranks[i], size);
        for (int j = 0; j < i && st == MOE_OK; j++)
            if (ranks[j] == ranks[i]) st = moe_fail(MOE_ERR_ARG, opn, "rank %d listed twice", ranks[i]);
        if (ranks[i] == me) pos = i;
    }
    if (!g) return st;
    MOE_TRY(moe_comm_enter(g, MOE_COLL_SPLIT, n, MOE_I32, 0, st, false));
    st = g->ops->split(out, g, pos >= 0 ? 0 : -1, pos);
    if (st == MOE_OK && *out) snprintf((*out)->name, sizeof (*out)->name, "%s", "subset");
    return moe_comm_done(g, st);
}

moe_status moe_group_attach_nccl(moe_group *g, int device)
{
#ifdef MOELAB_HAVE_CUDA
    if (!g) return moe_fail(MOE_ERR_ARG, "attach-nccl", "the trivial (NULL) group has no communicator");
    if (g->nccl) return MOE_OK;
    return moe_nccl_group_new(&g->nccl, g, device);
#else
    (void)g;
    (void)device;
    return moe_fail(MOE_ERR_UNSUPPORTED, "attach-nccl", "this build has no CUDA/NCCL backend "
                    "(configure --with-cuda on a machine with the CUDA toolkit)");
#endif
}

/* ---- launch environment -------------------------------------------------------------------------------------- */

static bool env_int(const char *name, int *out)
{
    const char *v = getenv(name);
    if (!v || !*v) return false;
    char *end;
    long x = strtol(v, &end, 10);
    if (*end || x < 0 || x > 1 << 24) return false;
    *out = (int)x;
    return true;
}

bool moe_mpi_launched(void)
{
    int x;
    return env_int("OMPI_COMM_WORLD_SIZE", &x) || env_int("PMI_SIZE", &x) || env_int("PMIX_RANK", &x) ||
           env_int("PMI_RANK", &x);
}

void moe_launch_env(int *rank, int *size)
{
    int r = 0, s = 1;
    if (env_int("OMPI_COMM_WORLD_SIZE", &s)) env_int("OMPI_COMM_WORLD_RANK", &r);
    else if (env_int("PMI_SIZE", &s)) env_int("PMI_RANK", &r);
    else if (env_int("WORLD_SIZE", &s)) env_int("RANK", &r);
    if (s < 1) s = 1;
    if (rank) *rank = r;
    if (size) *size = s;
}

#ifndef MOELAB_HAVE_MPI
moe_status moe_mpi_world(moe_group **out)
{
    *out = NULL;
    return moe_fail(MOE_ERR_UNSUPPORTED, "with-ranks", "this build has no MPI backend "
                    "(install libopenmpi-dev and re-run configure)");
}

moe_status moe_mpi_finalize(void) { return MOE_OK; }

bool moe_mpi_failed(const char **message)
{
    if (message) *message = "";
    return false;
}

moe_status moe_mpi_abort(const char *message)
{
    (void)message;
    return moe_fail(MOE_ERR_UNSUPPORTED, "with-ranks", "this build has no MPI backend");
}
#endif
