/* comm_threads.c — the threads backend: N ranks as threads of one process.
 *
 * Every group has one shared state (thr_shared) that its members' handles
 * point at; all groups of one world share a mutex and a condition variable
 * (thr_world), so one poisoning wakes every waiter in every group.
 *
 * A collective is: post this rank's descriptor (buffers, counts) in its slot
 * and wait at the arrival barrier (the only wait that can fail: poisoned
 * world, timeout, a peer that exited); compare the descriptors (every rank
 * reaches the same verdict); move data by reading the peers' buffers
 * directly; wait at inner barriers until every rank is done reading. Ranks
 * that passed the arrival barrier are certain to reach the inner ones (no
 * waiting in between), so inner barriers ignore poison and timeouts: no rank
 * leaves while a peer may still read its buffers.
 *
 * Reductions: rank r reduces slice r of the buffer from all ranks' inputs in
 * rank order 0..N-1 (deterministic whatever the arrival order) and, for an
 * all-reduce, writes the result straight into every rank's buffer: a fused
 * reduce-scatter + all-gather through shared memory in one pass. */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "comm_impl.h"

typedef struct thr_world {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n;
    int refcount; /* live thr_shared + the runner; under mu */
    bool poisoned;
    moe_status poison_code;
    int poison_rank; /* world rank that failed first */
    char poison_msg[480];
    bool *exited; /* [n] rank function returned */
} thr_world;

typedef struct thr_slot {
    /* descriptor of the collective this rank is in */
    int kind;
    int64_t count;
    int dtype;
    int64_t arg;
    const void *send;
    void *recv;
    const int64_t *send_counts, *recv_counts;
    int color, key;
    void *pub;       /* split: the new group's state, published by its leader */
    uint64_t entered; /* arrival barriers entered */
} thr_slot;

typedef struct thr_msg {
    struct thr_msg *next;
    int src, tag;
    int64_t count;
    moe_dtype dtype;
    char data[];
} thr_msg;

typedef struct thr_shared {
    thr_world *w;
    int n;
    int refcount; /* member handles; under w->mu */
    int arrived;
    uint64_t gen;    /* barrier generation: written under w->mu, atomically */
    bool spin;       /* every member has a core: spin briefly before sleeping */
    thr_slot *slots; /* [n] */
    thr_msg **inbox; /* [n] FIFO per receiving rank */
} thr_shared;

static const moe_comm_backend *threads_ops(void);

/* ---- time ------------------------------------------------------------------ */

static struct timespec deadline_after(double seconds)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double whole = (double)(int64_t)seconds;
    ts.tv_sec += (time_t)whole;
    ts.tv_nsec += (long)((seconds - whole) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* ---- world and shared state ------------------------------------------------------ */

/* The bytes world_new allocates for N ranks (for messages). */
static size_t world_bytes(int n)
{
    thr_world *w;
    return sizeof *w + sizeof *w->exited * (size_t)n;
}

static thr_world *world_new(int n)
{
    thr_world *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->exited = calloc((size_t)n, sizeof *w->exited);
    if (!w->exited) {
        free(w);
        return NULL;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    w->n = n;
    w->refcount = 1;
    w->poison_rank = -1;
    return w;
}

static void world_free(thr_world *w)
{
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w->exited);
    free(w);
}

/* Drop a world reference; call without holding w->mu. */
static void world_unref(thr_world *w)
{
    pthread_mutex_lock(&w->mu);
    int left = --w->refcount;
    pthread_mutex_unlock(&w->mu);
    if (left == 0) world_free(w);
}

/* The bytes shared_new_locked allocates for N ranks (for messages). */
static size_t shared_bytes(int n)
{
    thr_shared *s;
    return sizeof *s + (sizeof *s->slots + sizeof *s->inbox) * (size_t)n;
}

/* A shared state for N members with refcount N; w->mu must be held (or the
 * world not yet shared). */
static thr_shared *shared_new_locked(thr_world *w, int n)
{
    thr_shared *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->slots = calloc((size_t)n, sizeof *s->slots);
    s->inbox = calloc((size_t)n, sizeof *s->inbox);
    if (!s->slots || !s->inbox) {
        free(s->slots);
        free(s->inbox);
        free(s);
        return NULL;
    }
    s->w = w;
    s->n = n;
    s->refcount = n;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    s->spin = cpus > 0 && n <= cpus;
    w->refcount++;
    return s;
}

static void threads_destroy(moe_group *g)
{
    thr_shared *s = g->impl;
    if (!s) return;
    thr_world *w = s->w;
    pthread_mutex_lock(&w->mu);
    int left = --s->refcount;
    pthread_mutex_unlock(&w->mu);
    if (left > 0) return;
    for (int i = 0; i < s->n; i++)
        for (thr_msg *m = s->inbox[i], *next; m; m = next) {
            next = m->next;
            free(m);
        }
    free(s->inbox);
    free(s->slots);
    free(s);
    world_unref(w);
}

/* ---- poison ----------------------------------------------------------------------- */

static void poison_locked(thr_world *w, int world_rank, moe_status code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void poison_locked(thr_world *w, int world_rank, moe_status code, const char *fmt, ...)
{
    if (w->poisoned) return;
    w->poisoned = true;
    w->poison_code = code == MOE_OK ? MOE_ERR_STATE : code;
    w->poison_rank = world_rank;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->poison_msg, sizeof w->poison_msg, fmt, ap);
    va_end(ap);
    pthread_cond_broadcast(&w->cv);
}

static void threads_poison(moe_group *g, moe_status code, const char *msg)
{
    thr_shared *s = g->impl;
    pthread_mutex_lock(&s->w->mu);
    int wr = g->world_ranks[g->rank];
    poison_locked(s->w, wr, code, "rank %d failed: %s", wr, msg && *msg ? msg : moe_status_name(code));
    pthread_mutex_unlock(&s->w->mu);
}

/* The error a rank sees in OP once the world is poisoned. */
static moe_status poisoned_fail(thr_world *w, const char *op)
{
    return moe_fail(w->poison_code, op, "%s", w->poison_msg);
}

/* "rank 2" or "rank 1 (world rank 5)" */
static const char *rank_label(const moe_group *g, int q, char *buf, size_t size)
{
    if (g->world_ranks[q] == q) snprintf(buf, size, "rank %d", q);
    else snprintf(buf, size, "rank %d (world rank %d)", q, g->world_ranks[q]);
    return buf;
}

/* Space-separated labels of the members that have not entered barrier
 * number MINE; false when there are none. */
static bool missing_ranks(const moe_group *g, const thr_shared *s, uint64_t mine, char *buf, size_t size)
{
    size_t len = 0;
    buf[0] = 0;
    for (int q = 0; q < s->n; q++) {
        if (s->slots[q].entered >= mine) continue;
        char one[64];
        rank_label(g, q, one, sizeof one);
        int k = snprintf(buf + len, size - len, "%s%s", len ? ", " : "", one);
        if (k < 0 || (size_t)k >= size - len) break;
        len += (size_t)k;
    }
    return len > 0;
}

/* ---- barriers ------------------------------------------------------------------------ */

/* Release the members waiting on the current generation (w->mu held). */
static void next_generation(thr_shared *s)
{
    s->arrived = 0;
    __atomic_store_n(&s->gen, s->gen + 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&s->w->cv);
}

/* Spin a little, unlocked, while the generation is still GEN: when every
 * rank has a core this avoids a sleep/wake pair per barrier (the latency of
 * small collectives). Bounded in time (SPIN_NS), so a peer that is late, or
 * shares this core, costs little. Called and returns with w->mu held. */
#define SPIN_NS 20000
static void spin_for(thr_shared *s, uint64_t gen)
{
    if (!s->spin) return;
    pthread_mutex_unlock(&s->w->mu);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (unsigned i = 1; __atomic_load_n(&s->gen, __ATOMIC_ACQUIRE) == gen; i++) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        if ((i & 31) == 0) {
            clock_gettime(CLOCK_MONOTONIC, &t);
            if ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) > SPIN_NS) break;
        }
    }
    pthread_mutex_lock(&s->w->mu);
}

/* The arrival barrier of OP: posts DESC (may be NULL) as this rank's slot. */
static moe_status arrive(moe_group *g, const char *op, const thr_slot *desc)
{
    thr_shared *s = g->impl;
    thr_world *w = s->w;
    int me = g->rank;
    double timeout;
    MOE_TRY(moe_comm_wait_limit(op, &timeout));
    struct timespec deadline = deadline_after(isfinite(timeout) ? timeout : 0);
    pthread_mutex_lock(&w->mu);
    if (w->poisoned) {
        moe_status st = poisoned_fail(w, op);
        pthread_mutex_unlock(&w->mu);
        return st;
    }
    thr_slot *slot = &s->slots[me];
    uint64_t entered = slot->entered + 1;
    if (desc) *slot = *desc;
    slot->entered = entered;
    uint64_t gen = s->gen;
    if (++s->arrived == s->n) {
        next_generation(s);
        pthread_mutex_unlock(&w->mu);
        return MOE_OK;
    }
    spin_for(s, gen);
    moe_status st = MOE_OK;
    char missing[256];
    while (s->gen == gen) {
        if (!w->poisoned) {
            /* a member that returned from its rank function never arrives */
            for (int q = 0; q < s->n; q++)
                if (s->slots[q].entered < entered && w->exited[g->world_ranks[q]]) {
                    char who[64];
                    poison_locked(w, g->world_ranks[q], MOE_ERR_STATE, "%s returned without entering %s",
                                  rank_label(g, q, who, sizeof who), op);
                    break;
                }
        }
        if (w->poisoned) {
            st = poisoned_fail(w, op);
            break;
        }
        int rc = isfinite(timeout) ? pthread_cond_timedwait(&w->cv, &w->mu, &deadline)
                             : pthread_cond_wait(&w->cv, &w->mu);
        if (rc == ETIMEDOUT && s->gen == gen) {
            missing_ranks(g, s, entered, missing, sizeof missing);
            int wr = g->world_ranks[me];
            poison_locked(w, wr, MOE_ERR_BACKEND, "rank %d timed out after %g s in %s waiting for %s",
                          wr, timeout, op, missing);
            st = moe_fail(MOE_ERR_BACKEND, op, "timed out after %g s waiting for %s (group '%s' of %d ranks)",
                          timeout, missing, g->name, s->n);
            break;
        }
    }
    if (st != MOE_OK) {
        /* withdraw: this barrier can no longer complete (the world is poisoned) */
        s->arrived--;
    }
    pthread_mutex_unlock(&w->mu);
    return st;
}

/* An inner barrier: every member is known to be on its way. */
static void inner_barrier(moe_group *g)
{
    thr_shared *s = g->impl;
    thr_world *w = s->w;
    pthread_mutex_lock(&w->mu);
    uint64_t gen = s->gen;
    if (++s->arrived == s->n) {
        next_generation(s);
    } else {
        spin_for(s, gen);
        while (s->gen == gen) pthread_cond_wait(&w->cv, &w->mu);
    }
    pthread_mutex_unlock(&w->mu);
}

/* Compare every member's descriptor with member 0's; same verdict on every
 * rank. */
static moe_status check_slots(moe_group *g, const char *op, bool check_count, const char *arg_name)
{
    thr_shared *s = g->impl;
    const thr_slot *a = &s->slots[0];
    char l0[64], lq[64];
    for (int q = 1; q < s->n; q++) {
        const thr_slot *b = &s->slots[q];
        if (b->kind != a->kind)
            return moe_fail(MOE_ERR_STATE, op, "collectives out of order: %s called %s, %s called %s",
                            rank_label(g, 0, l0, sizeof l0), moe_coll_name((moe_coll_kind)a->kind),
                            rank_label(g, q, lq, sizeof lq), moe_coll_name((moe_coll_kind)b->kind));
        if (b->dtype != a->dtype || (check_count && b->count != a->count))
            return moe_fail(MOE_ERR_SHAPE, op, "size mismatch: %s has %lld elements (%s), %s has %lld elements (%s)",
                            rank_label(g, 0, l0, sizeof l0), (long long)a->count,
                            moe_dtype_name((moe_dtype)a->dtype), rank_label(g, q, lq, sizeof lq),
                            (long long)b->count, moe_dtype_name((moe_dtype)b->dtype));
        if (arg_name && b->arg != a->arg && a->kind != MOE_COLL_ALL_REDUCE && a->kind != MOE_COLL_REDUCE_SCATTER)
            return moe_fail(MOE_ERR_ARG, op, "%s mismatch: %s passed %lld, %s passed %lld", arg_name,
                            rank_label(g, 0, l0, sizeof l0), (long long)a->arg,
                            rank_label(g, q, lq, sizeof lq), (long long)b->arg);
        if (arg_name && b->arg != a->arg) /* reduce ops, by name */
            return moe_fail(MOE_ERR_ARG, op, "%s mismatch: %s passed %s, %s passed %s", arg_name,
                            rank_label(g, 0, l0, sizeof l0), moe_reduce_op_name((moe_reduce_op)a->arg),
                            rank_label(g, q, lq, sizeof lq), moe_reduce_op_name((moe_reduce_op)b->arg));
    }
    return MOE_OK;
}

/* Arrival plus the descriptor comparison. On a mismatch every rank takes
 * one inner barrier (so no descriptor changes while a peer still reads it)
 * and fails with the same message. */
static moe_status checked_arrive(moe_group *g, const char *op, const thr_slot *desc, bool check_count,
                                 const char *arg_name)
{
    MOE_TRY(arrive(g, op, desc));
    moe_status st = check_slots(g, op, check_count, arg_name);
    if (st != MOE_OK) inner_barrier(g);
    return st;
}

/* ---- copies ---------------------------------------------------------------------------- */

/* Balanced slice [lo, hi) of COUNT for rank R of N. */
static void slice(int64_t count, int n, int r, int64_t *lo, int64_t *hi)
{
    *lo = count / n * r + (r < count % n ? r : count % n);
    *hi = *lo + count / n + (r < count % n ? 1 : 0);
}

/* ---- collectives --------------------------------------------------------------------------- */

static moe_status threads_all_reduce(moe_group *g, void *buf, int64_t count, moe_dtype dt, moe_reduce_op op)
{
    thr_shared *s = g->impl;
    thr_slot d = {.kind = MOE_COLL_ALL_REDUCE, .count = count, .dtype = dt, .arg = op, .recv = buf};
    MOE_TRY(checked_arrive(g, "all-reduce", &d, true, "reduce op"));
    /* Rank r owns slice r of every buffer: it reduces the slice from all
     * ranks' buffers in rank order and writes the result into all of them.
     * Nobody else touches slice r, so one pass suffices (a fused
     * reduce-scatter + all-gather: each rank reads and writes count elements). */
    int n = s->n;
    size_t esz = moe_dtype_size(dt);
    int64_t lo, hi;
    slice(count, n, g->rank, &lo, &hi);
    void *bufs[n];
    for (int q = 0; q < n; q++) bufs[q] = (char *)s->slots[q].recv + lo * (int64_t)esz;
    moe_cpu_reduce_bcast(dt, bufs, n, hi - lo, op);
    inner_barrier(g);
    return MOE_OK;
}

static moe_status threads_all_gather(moe_group *g, void *recv, const void *send, int64_t count, moe_dtype dt)
{
    thr_shared *s = g->impl;
    thr_slot d = {.kind = MOE_COLL_ALL_GATHER, .count = count, .dtype = dt, .send = send};
    MOE_TRY(checked_arrive(g, "all-gather", &d, true, NULL));
    size_t bytes = (size_t)count * moe_dtype_size(dt);
    for (int q = 0; q < s->n; q++) moe_cpu_copy_bytes((char *)recv + (size_t)q * bytes, s->slots[q].send, bytes);
    inner_barrier(g);
    return MOE_OK;
}

static moe_status threads_reduce_scatter(moe_group *g, void *recv, const void *send, int64_t count,
                                         moe_dtype dt, moe_reduce_op op)
{
    thr_shared *s = g->impl;
    thr_slot d = {.kind = MOE_COLL_REDUCE_SCATTER, .count = count, .dtype = dt, .arg = op, .send = send};
    MOE_TRY(checked_arrive(g, "reduce-scatter", &d, true, "reduce op"));
    int n = s->n;
    size_t esz = moe_dtype_size(dt);
    const void *srcs[n];
    for (int q = 0; q < n; q++) srcs[q] = (const char *)s->slots[q].send + (size_t)g->rank * (size_t)count * esz;
    moe_cpu_reduce_n(dt, recv, srcs, n, count, op);
    inner_barrier(g);
    return MOE_OK;
}

static moe_status threads_all_to_all(moe_group *g, void *recv, const int64_t *recv_counts, const void *send,
                                     const int64_t *send_counts, moe_dtype dt)
{
    const char *opn = "all-to-all";
    thr_shared *s = g->impl;
    thr_slot d = {.kind = MOE_COLL_ALL_TO_ALL, .dtype = dt, .send = send, .send_counts = send_counts,
                  .recv_counts = recv_counts};
    MOE_TRY(checked_arrive(g, opn, &d, false, NULL));
    int n = s->n, me = g->rank;
    char lp[64], lq[64];
    moe_status st = MOE_OK;
    for (int p = 0; p < n && st == MOE_OK; p++)
        for (int q = 0; q < n && st == MOE_OK; q++)
            if (s->slots[p].send_counts[q] != s->slots[q].recv_counts[p])
                st = moe_fail(MOE_ERR_SHAPE, opn, "split mismatch: %s sends %lld elements to %s, which expects %lld",
                              rank_label(g, p, lp, sizeof lp), (long long)s->slots[p].send_counts[q],
                              rank_label(g, q, lq, sizeof lq), (long long)s->slots[q].recv_counts[p]);
    if (st == MOE_OK) {
        size_t esz = moe_dtype_size(dt);
        int64_t roff = 0;
        for (int q = 0; q < n; q++) {
            const thr_slot *src = &s->slots[q];
            int64_t soff = 0;
            for (int k = 0; k < me; k++) soff += src->send_counts[k];
            moe_cpu_copy_bytes((char *)recv + roff * (int64_t)esz, (const char *)src->send + soff * (int64_t)esz,
                       (size_t)recv_counts[q] * esz);
            roff += recv_counts[q];
        }
    }
    inner_barrier(g);
    return st;
}

static moe_status threads_broadcast(moe_group *g, void *buf, int64_t count, moe_dtype dt, int root)
{
    thr_shared *s = g->impl;
    thr_slot d = {.kind = MOE_COLL_BROADCAST, .count = count, .dtype = dt, .arg = root, .recv = buf};
    MOE_TRY(checked_arrive(g, "broadcast", &d, true, "root"));
    if (g->rank != root) moe_cpu_copy_bytes(buf, s->slots[root].recv, (size_t)count * moe_dtype_size(dt));
    inner_barrier(g);
    return MOE_OK;
}

static moe_status threads_barrier(moe_group *g)
{
    thr_slot d = {.kind = MOE_COLL_BARRIER};
    MOE_TRY(checked_arrive(g, "barrier", &d, false, NULL));
    inner_barrier(g); /* nobody posts again while a peer still checks the kinds */
    return MOE_OK;
}

/* ---- split ---------------------------------------------------------------------------------- */

typedef struct member {
    int key, rank;
} member;

static int member_cmp(const void *a, const void *b)
{
    const member *x = a, *y = b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return x->rank - y->rank;
}

static moe_status threads_split(moe_group **out, moe_group *g, int color, int key)
{
    const char *opn = "group-split";
    *out = NULL;
    thr_shared *s = g->impl;
    int n = s->n;
    thr_slot d = {.kind = MOE_COLL_SPLIT, .color = color, .key = key};
    MOE_TRY(checked_arrive(g, opn, &d, false, NULL));
    moe_status st = MOE_OK;
    member *mem = malloc(sizeof *mem * (size_t)n);
    int *wr = malloc(sizeof *wr * (size_t)n);
    int m = 0, pos = -1;
    if (st == MOE_OK && (!mem || !wr))
        st = moe_fail(MOE_ERR_NOMEM, opn, "out of memory for %zu bytes of split members (%d ranks)",
                      (sizeof *mem + sizeof *wr) * (size_t)n, n);
    if (st == MOE_OK && color >= 0) {
        for (int q = 0; q < n; q++)
            if (s->slots[q].color == color) mem[m++] = (member){s->slots[q].key, q};
        qsort(mem, (size_t)m, sizeof *mem, member_cmp);
        for (int i = 0; i < m; i++) {
            wr[i] = g->world_ranks[mem[i].rank];
            if (mem[i].rank == g->rank) pos = i;
        }
        if (pos == 0) { /* the leader makes the state */
            pthread_mutex_lock(&s->w->mu);
            s->slots[g->rank].pub = shared_new_locked(s->w, m);
            pthread_mutex_unlock(&s->w->mu);
        }
    }
    inner_barrier(g); /* published */
    thr_shared *ns = NULL;
    if (st == MOE_OK && color >= 0) {
        ns = s->slots[mem[0].rank].pub;
        if (!ns)
            st = moe_fail(MOE_ERR_NOMEM, opn, "out of memory for %zu bytes of the shared state of a group of %d ranks",
                          shared_bytes(m), m);
    }
    inner_barrier(g); /* everyone has read the leader's slot */
    if (st == MOE_OK && ns) {
        st = moe_group_alloc(out, threads_ops(), pos, m, wr, ns);
        if (st != MOE_OK) {
            /* drop this member's reference so the state is still freed */
            moe_group tmp = {.impl = ns};
            threads_destroy(&tmp);
        }
    }
    free(mem);
    free(wr);
    return st;
}

/* ---- point to point -------------------------------------------------------------------------- */

static moe_status threads_send(moe_group *g, const void *buf, int64_t count, moe_dtype dt, int dst, int tag)
{
    thr_shared *s = g->impl;
    size_t bytes = (size_t)count * moe_dtype_size(dt);
    thr_msg *m = malloc(sizeof *m + bytes);
    if (!m) return moe_fail(MOE_ERR_NOMEM, "send!", "out of memory for %zu bytes of a message", sizeof *m + bytes);
    *m = (thr_msg){NULL, g->rank, tag, count, dt};
    if (bytes) memcpy(m->data, buf, bytes);
    pthread_mutex_lock(&s->w->mu);
    if (s->w->poisoned) {
        moe_status st = poisoned_fail(s->w, "send!");
        pthread_mutex_unlock(&s->w->mu);
        free(m);
        return st;
    }
    thr_msg **tail = &s->inbox[dst];
    while (*tail) tail = &(*tail)->next;
    *tail = m;
    pthread_cond_broadcast(&s->w->cv);
    pthread_mutex_unlock(&s->w->mu);
    return MOE_OK;
}

static moe_status threads_recv(moe_group *g, void *buf, int64_t count, moe_dtype dt, int src, int tag)
{
    thr_shared *s = g->impl;
    thr_world *w = s->w;
    double timeout;
    MOE_TRY(moe_comm_wait_limit("recv!", &timeout));
    struct timespec deadline = deadline_after(isfinite(timeout) ? timeout : 0);
    char who[64];
    moe_status st = MOE_OK;
    thr_msg *m = NULL;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        thr_msg **p = &s->inbox[g->rank];
        while (*p && !((*p)->src == src && (*p)->tag == tag)) p = &(*p)->next;
        if (*p) {
            m = *p;
            *p = m->next;
            break;
        }
        if (!w->poisoned && w->exited[g->world_ranks[src]])
            poison_locked(w, g->world_ranks[src], MOE_ERR_STATE, "%s returned without sending tag %d",
                          rank_label(g, src, who, sizeof who), tag);
        if (w->poisoned) {
            st = poisoned_fail(w, "recv!");
            break;
        }
        int rc = isfinite(timeout) ? pthread_cond_timedwait(&w->cv, &w->mu, &deadline)
                             : pthread_cond_wait(&w->cv, &w->mu);
        if (rc == ETIMEDOUT) {
            int wr = g->world_ranks[g->rank];
            rank_label(g, src, who, sizeof who);
            poison_locked(w, wr, MOE_ERR_BACKEND, "rank %d timed out after %g s in recv waiting for %s (tag %d)",
                          wr, timeout, who, tag);
            st = moe_fail(MOE_ERR_BACKEND, "recv!", "timed out after %g s waiting for %s (tag %d)", timeout, who, tag);
            break;
        }
    }
    pthread_mutex_unlock(&w->mu);
    if (st != MOE_OK) return st;
    if (m->count != count || m->dtype != dt) {
        st = moe_fail(MOE_ERR_SHAPE, "recv!", "size mismatch: %s sent %lld elements (%s), rank %d expects %lld elements (%s)",
                      rank_label(g, src, who, sizeof who), (long long)m->count, moe_dtype_name(m->dtype),
                      g->rank, (long long)count, moe_dtype_name(dt));
        threads_poison(g, st, moe_last_error());
    } else if (count) {
        memcpy(buf, m->data, (size_t)count * moe_dtype_size(dt));
    }
    free(m);
    return st;
}

static const moe_comm_backend threads_backend = {
    .name = "threads",
    .needs_check = false,
    .native_bf16 = true,
    .all_reduce = threads_all_reduce,
    .all_gather = threads_all_gather,
    .reduce_scatter = threads_reduce_scatter,
    .all_to_all = threads_all_to_all,
    .broadcast = threads_broadcast,
    .send = threads_send,
    .recv = threads_recv,
    .barrier = threads_barrier,
    .split = threads_split,
    .all_reduce_start = NULL,
    .poison = threads_poison,
    .destroy = threads_destroy,
};
const moe_comm_backend moe_comm_threads_backend = threads_backend;

static const moe_comm_backend *threads_ops(void) { return &moe_comm_threads_backend; }

/* ---- the runner ---------------------------------------------------------------------------------- */

typedef struct rank_arg {
    int rank, nthreads;
    moe_group *world;
    moe_rank_fn fn;
    void *ctx;
    moe_status status;
    char message[512];
    pthread_t thread;
    bool started;
} rank_arg;

static void *rank_main(void *p)
{
    rank_arg *a = p;
    thr_shared *s = a->world->impl;
    thr_world *w = s->w;
    moe_comm_set_world(a->world);
    omp_set_num_threads(a->nthreads);
    moe_clear_error();
    a->status = a->fn(a->rank, a->world, a->ctx);
    if (a->status != MOE_OK) {
        snprintf(a->message, sizeof a->message, "%s", *moe_last_error() ? moe_last_error() : moe_status_name(a->status));
    }
    pthread_mutex_lock(&w->mu);
    if (a->status != MOE_OK)
        poison_locked(w, a->rank, a->status, "rank %d failed: %s", a->rank, a->message);
    w->exited[a->rank] = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    moe_comm_set_world(NULL);
    return NULL;
}

static _Thread_local char **last_errors;
static _Thread_local int last_nranks;

const char *moe_threads_rank_error(int r)
{
    return last_errors && r >= 0 && r < last_nranks && last_errors[r] ? last_errors[r] : "";
}

static void keep_errors(const rank_arg *args, int n)
{
    for (int i = 0; i < last_nranks; i++) free(last_errors[i]);
    free(last_errors);
    last_errors = calloc((size_t)n, sizeof *last_errors);
    last_nranks = last_errors ? n : 0;
    for (int i = 0; last_errors && i < n; i++)
        if (args[i].status != MOE_OK) last_errors[i] = strdup(args[i].message);
}

moe_status moe_threads_run(int nranks, moe_rank_fn fn, void *ctx, moe_status *rank_status)
{
    const char *opn = "with-ranks";
    if (nranks < 1 || nranks > 4096)
        return moe_fail(MOE_ERR_ARG, opn, "%d ranks requested; 1 to 4096 are supported", nranks);
    if (!fn) return moe_fail(MOE_ERR_ARG, opn, "rank function is NULL");
    thr_world *w = world_new(nranks);
    rank_arg *args = calloc((size_t)nranks, sizeof *args);
    thr_shared *s = w ? shared_new_locked(w, nranks) : NULL;
    if (!w || !args || !s) {
        free(args);
        if (s) {
            free(s->slots);
            free(s->inbox);
            free(s);
        }
        if (w) world_free(w);
        return moe_fail(MOE_ERR_NOMEM, opn, "out of memory for %zu bytes of the world and rank state of %d ranks",
                        world_bytes(nranks) + shared_bytes(nranks) + sizeof *args * (size_t)nranks, nranks);
    }
    moe_status st = MOE_OK;
    int made = 0;
    for (; made < nranks && st == MOE_OK; made++)
        st = moe_group_alloc(&args[made].world, threads_ops(), made, nranks, NULL, s);
    if (st != MOE_OK) {
        made--;
        /* the state counts nranks references; drop those never handed out */
        for (int i = made; i < nranks; i++) {
            moe_group tmp = {.impl = s};
            threads_destroy(&tmp);
        }
        for (int i = 0; i < made; i++) moe_group_release(args[i].world);
        world_unref(w);
        free(args);
        return st;
    }
    int total = omp_get_max_threads();
    int per = total / nranks > 1 ? total / nranks : 1;
    for (int r = 0; r < nranks; r++) {
        moe_group_set_name(args[r].world, "world");
        args[r].rank = r;
        args[r].nthreads = per;
        args[r].fn = fn;
        args[r].ctx = ctx;
    }
    for (int r = 0; r < nranks; r++) {
        int rc = pthread_create(&args[r].thread, NULL, rank_main, &args[r]);
        if (rc != 0) {
            /* the ranks already running see this one as failed */
            args[r].status = MOE_ERR_BACKEND;
            snprintf(args[r].message, sizeof args[r].message, "could not start the rank thread (%s)", strerror(rc));
            pthread_mutex_lock(&w->mu);
            poison_locked(w, r, MOE_ERR_BACKEND, "rank %d failed: %s", r, args[r].message);
            w->exited[r] = true;
            pthread_cond_broadcast(&w->cv);
            pthread_mutex_unlock(&w->mu);
        } else {
            args[r].started = true;
        }
    }
    for (int r = 0; r < nranks; r++)
        if (args[r].started) pthread_join(args[r].thread, NULL);
    /* the root cause: the rank that poisoned the world, if its function failed */
    int culprit = -1;
    pthread_mutex_lock(&w->mu);
    if (w->poisoned && w->poison_rank >= 0 && args[w->poison_rank].status != MOE_OK) culprit = w->poison_rank;
    pthread_mutex_unlock(&w->mu);
    for (int r = 0; r < nranks && culprit < 0; r++)
        if (args[r].status != MOE_OK) culprit = r;
    for (int r = 0; r < nranks; r++) {
        if (rank_status) rank_status[r] = args[r].status;
        moe_group_release(args[r].world);
    }
    keep_errors(args, nranks);
    st = culprit >= 0 ? moe_fail(args[culprit].status, opn, "rank %d failed: %s", culprit, args[culprit].message)
                      : MOE_OK;
    free(args);
    world_unref(w);
    return st;
}
