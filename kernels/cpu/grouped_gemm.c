/* grouped_gemm.c — GEMMs over variable-size expert groups and the fused
 * expert MLP on top of them (see grouped_gemm.h).
 *
 * Dimension letters: E experts, N rows (expert-contiguous), n_e rows of
 * group e, D model dim, F expert ffn dim, S scratch slots (one per group
 * running at the same time). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "grouped_gemm.h"
#include "gemm.h"
#include "sgemm.h"
#include "../gelu.h"
#include "vector_math.h"

/* The activation loops vectorise on AVX2 too (see exp_f32). */
#pragma GCC optimize("no-trapping-math")

#define PAR_MIN 32768 /* elementwise loops below this many elements stay on one thread */

/* ---- schedule ------------------------------------------------------------------- */

static int forced_mode = -1; /* -1: not read from the environment yet */

static moe_cpu_group_mode env_mode(void)
{
    int m = __atomic_load_n(&forced_mode, __ATOMIC_RELAXED);
    if (m >= 0) return (moe_cpu_group_mode)m;
    const char *s = getenv("MOELAB_GROUPED_GEMM");
    m = MOE_CPU_GROUP_AUTO;
    if (s && strcmp(s, "parallel") == 0) m = MOE_CPU_GROUP_PARALLEL;
    if (s && strcmp(s, "serial") == 0) m = MOE_CPU_GROUP_SERIAL;
    __atomic_store_n(&forced_mode, m, __ATOMIC_RELAXED);
    return (moe_cpu_group_mode)m;
}

void moe_cpu_group_set_mode(moe_cpu_group_mode mode)
{
    __atomic_store_n(&forced_mode, (int)mode, __ATOMIC_RELAXED);
}

moe_cpu_group_mode moe_cpu_group_get_mode(void) { return env_mode(); }

/* Threads a side-by-side loop over these groups runs on: the team, but no
 * more than there are non-empty groups (a thread with no group would only
 * wait). moe_cpu_group_plan's slots, so thread t may use slot t. */
static int team_size(int64_t E, const int64_t *off)
{
    int64_t nonempty = 0;
    for (int64_t e = 0; e < E; e++) nonempty += off[e + 1] > off[e];
    int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (nt > nonempty) nt = nonempty > 0 ? (int)nonempty : 1;
    return nt;
}

moe_cpu_group_mode moe_cpu_group_plan(int64_t E, const int64_t *off, int *slots, int64_t *max_rows)
{
    int64_t mx = 0, total = off[E] - off[0];
    int nonempty = 0;
    for (int64_t e = 0; e < E; e++) {
        int64_t n = off[e + 1] - off[e];
        if (n > mx) mx = n;
        nonempty += n > 0;
    }
    *max_rows = mx;
    int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    moe_cpu_group_mode mode = env_mode();
    if (mode == MOE_CPU_GROUP_AUTO) {
        /* Side by side when the largest group is no more than a fair share
         * of the work (a dynamic largest-first loop then keeps every thread
         * busy), or when groups are too small for threaded BLAS to pay. */
        bool even = mx * nt <= total + total / 4;
        mode = (nt > 1 && nonempty >= 2 && (even || mx < 64)) ? MOE_CPU_GROUP_PARALLEL
                                                             : MOE_CPU_GROUP_SERIAL;
    }
    *slots = mode == MOE_CPU_GROUP_PARALLEL ? team_size(E, off) : 1;
    return mode;
}

/* Run BODY(i) for the tasks i < N that have work (COST(i) > 0, in any
 * unit proportional to their time). Side by side on NT threads: a dynamic
 * loop that starts the costliest first (ties: lower index first), so the
 * cheap tasks come last and even out the threads' ends. With one thread,
 * or without memory for the order: in index order. */
typedef void (*task_body)(int64_t i, void *ctx);
typedef int64_t (*task_cost)(int64_t i, const void *ctx);

typedef struct task_key {
    int64_t cost, i;
} task_key;

static int by_cost(const void *va, const void *vb)
{
    const task_key *a = va, *b = vb;
    if (a->cost != b->cost) return a->cost > b->cost ? -1 : 1;
    return (a->i > b->i) - (a->i < b->i);
}

static void for_each_task(int64_t n, task_cost cost, task_body body, void *ctx, int nt)
{
    task_key stack_keys[256];
    task_key *keys = nt < 2 ? NULL : n <= 256 ? stack_keys : malloc(sizeof *keys * (size_t)n);
    if (!keys) {
        for (int64_t i = 0; i < n; i++)
            if (cost(i, ctx) > 0) body(i, ctx);
        return;
    }
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t c = cost(i, ctx);
        if (c > 0) keys[count++] = (task_key){c, i};
    }
    qsort(keys, (size_t)count, sizeof *keys, by_cost);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t k = 0; k < count; k++) body(keys[k].i, ctx);
    if (keys != stack_keys) free(keys);
}

/* Run BODY(e, r0, r1, slot) over row ranges that cover every group's rows,
 * for work whose rows are independent. Side by side: thread t of nt takes
 * the rows [t N/nt, (t+1) N/nt) of the expert-ordered rows, each end moved
 * to a tile edge (cut_on_tile), and the pieces of the groups that meet
 * them (a group may be cut between threads), so every thread gets about
 * the same number of rows and none waits for the tail of a large group at
 * the end; the cut depends only on OFF and nt. One after the other: whole
 * groups. */
typedef void (*rows_body)(int64_t e, int64_t r0, int64_t r1, int slot, void *ctx);

#define CUT_ALIGN 32 /* rows: whole micro-kernel tiles, as gemm.c's blocks */

/* Row R moved to the nearest multiple of CUT_ALIGN rows from the start of
 * the group it falls in (at most that group's end). BLAS handles the rows
 * of a tile together, and a piece that ends inside a tile can give its rows
 * other bits (OpenBLAS's AVX2 kernels do): on tile edges a cut group gives
 * the bits of the whole group, so results match the one-thread run. */
static int64_t cut_on_tile(int64_t E, const int64_t *off, int64_t r)
{
    for (int64_t e = 0; e < E; e++)
        if (off[e] < r && r < off[e + 1]) {
            int64_t q = off[e] + (r - off[e] + CUT_ALIGN / 2) / CUT_ALIGN * CUT_ALIGN;
            return q < off[e + 1] ? q : off[e + 1];
        }
    return r;
}

static void for_each_row_range(int64_t E, const int64_t *off, moe_cpu_group_mode mode,
                               rows_body body, void *ctx)
{
    int nt = team_size(E, off);
    if (mode != MOE_CPU_GROUP_PARALLEL || nt < 2) {
        for (int64_t e = 0; e < E; e++)
            if (off[e + 1] > off[e]) body(e, off[e], off[e + 1], 0, ctx);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), team = omp_get_num_threads();
        int64_t total = off[E] - off[0];
        int64_t lo = cut_on_tile(E, off, off[0] + total * t / team);
        int64_t hi = cut_on_tile(E, off, off[0] + total * (t + 1) / team);
        for (int64_t e = 0; e < E; e++) {
            int64_t r0 = off[e] > lo ? off[e] : lo, r1 = off[e + 1] < hi ? off[e + 1] : hi;
            if (r0 < r1) body(e, r0, r1, t, ctx);
        }
    }
}

/* ---- BLAS dispatch -------------------------------------------------------------- */

/* Through gemm.c's wrappers: outside a parallel region (the serial
 * schedule) they spread one product over the threads. */
static inline void gemm(moe_dtype dt, bool ta, bool tb, int64_t m, int64_t n, int64_t k,
                        double alpha, const void *a, int64_t lda, const void *b, int64_t ldb,
                        double beta, void *c, int64_t ldc)
{
    if (m == 0 || n == 0) return;
    if (dt == MOE_F32)
        moe_cpu_sgemm(ta, tb, m, n, k, (float)alpha, a, lda, b, ldb, (float)beta, c, ldc);
    else
        moe_cpu_dgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

static inline char *at(moe_dtype dt, const void *p, int64_t elems)
{
    return (char *)p + elems * (int64_t)(dt == MOE_F32 ? sizeof(float) : sizeof(double));
}

/* ---- generic grouped GEMM ----------------------------------------------------------- */

typedef struct gg_ctx {
    moe_dtype dt;
    const int64_t *off;
    moe_cpu_gmat a, b, c;
    int64_t m, n, k;
    double alpha, beta;
} gg_ctx;

static const char *gmat_ptr(moe_dtype dt, const moe_cpu_gmat *g, const int64_t *off, int64_t e)
{
    return g->kind == MOE_CPU_GROUP_ROWS ? at(dt, g->data, off[e] * g->ld)
                                         : at(dt, g->data, e * g->stride);
}

static int64_t gg_cost(int64_t e, const void *vctx)
{
    const gg_ctx *x = vctx;
    return x->off[e + 1] - x->off[e]; /* empty groups: skipped */
}

static void gg_body(int64_t e, void *vctx)
{
    const gg_ctx *x = vctx;
    int64_t rows = x->off[e + 1] - x->off[e];
    bool a_rows = x->a.kind == MOE_CPU_GROUP_ROWS, b_rows = x->b.kind == MOE_CPU_GROUP_ROWS;
    int64_t m = a_rows && !x->a.trans ? rows : x->m;
    int64_t k = a_rows && x->a.trans ? rows : x->k;
    int64_t n = b_rows && x->b.trans ? rows : x->n;
    gemm(x->dt, x->a.trans, x->b.trans, m, n, k, x->alpha, gmat_ptr(x->dt, &x->a, x->off, e),
         x->a.ld, gmat_ptr(x->dt, &x->b, x->off, e), x->b.ld, x->beta,
         (void *)gmat_ptr(x->dt, &x->c, x->off, e), x->c.ld);
}

void moe_cpu_grouped_gemm(moe_dtype dtype, int64_t E, const int64_t *off, moe_cpu_gmat a,
                          moe_cpu_gmat b, moe_cpu_gmat c, int64_t m_fixed, int64_t n_fixed,
                          int64_t k_fixed, double alpha, double beta)
{
    gg_ctx x = {dtype, off, a, b, c, m_fixed, n_fixed, k_fixed, alpha, beta};
    int slots;
    int64_t max_rows;
    moe_cpu_group_mode mode = moe_cpu_group_plan(E, off, &slots, &max_rows);
    for_each_task(E, gg_cost, gg_body, &x, mode == MOE_CPU_GROUP_PARALLEL ? slots : 1);
}

/* ---- activations ------------------------------------------------------------------------ */

static inline float erf_f32(float x) { return erff(x); }
static inline double erf_f64(double x) { return erf(x); }
static inline float tanh_f32(float x) { return tanhf(x); }
static inline double tanh_f64(double x) { return tanh(x); }

#define SQRT1_2 MOE_GELU_SQRT1_2
#define INV_SQRT_2PI MOE_GELU_INV_SQRT_2PI
#define GELU_C MOE_GELU_TANH_C
#define GELU_A MOE_GELU_TANH_K

/* The SwiGLU loops are compiled for AVX-512, AVX2 and baseline x86-64
 * (SIMD_CLONES), so the vectorised exp runs 16 or 8 lanes wide on CPUs that
 * have them. */

#define CHUNK 4096 /* elements per task of the elementwise loops */

/* The per-element maps, f32 and f64 from one template:
 *   act_fw:   h = act(g, u)
 *   act_bw:   h = act(g, u) into H (the backward's dWd = hᵀ dY needs it, and
 *             the activation is already being evaluated), and from dh in A:
 *             (SwiGLU) dU = dh silu(g) into BU, dG = dh u silu'(g) into A;
 *             (GELU)   dU = dh gelu'(u) into A (in place).
 * SwiGLU takes one exp and one division an element: s = σ(g), silu(g) = g s,
 * silu'(g) = s (1 + g (1 - s)). */
#define DEFINE_ACT(T, SFX)                                                                    \
    SIMD_CLONES static void swiglu_fw_##SFX(const T *restrict g, const T *restrict u,         \
                                            T *restrict h, int64_t n)                         \
    {                                                                                         \
        _Pragma("omp simd")                                                                   \
        for (int64_t i = 0; i < n; i++) {                                                     \
            T x = g[i], s = (T)1 / ((T)1 + exp_##SFX(-x));                                    \
            h[i] = x * s * u[i];                                                              \
        }                                                                                     \
    }                                                                                         \
    SIMD_CLONES static void swiglu_bw_##SFX(const T *restrict g, const T *restrict u,         \
                                            T *restrict a, T *restrict bu, T *restrict h,     \
                                            int64_t n)                                        \
    {                                                                                         \
        _Pragma("omp simd")                                                                   \
        for (int64_t i = 0; i < n; i++) {                                                     \
            T x = g[i], s = (T)1 / ((T)1 + exp_##SFX(-x)), dh = a[i], up = u[i];              \
            h[i] = x * s * up;                                                                \
            bu[i] = dh * x * s;                                                               \
            a[i] = dh * up * s * ((T)1 + x * ((T)1 - s));                                     \
        }                                                                                     \
    }                                                                                         \
    static void act_fw_##SFX(moe_cpu_ffn_act act, const T *restrict g, const T *restrict u,   \
                             T *restrict h, int64_t n, bool par)                              \
    {                                                                                         \
        if (act == MOE_CPU_FFN_SWIGLU) {                                                      \
            _Pragma("omp parallel for if (par && n > PAR_MIN) schedule(static)")              \
            for (int64_t b = 0; b < n; b += CHUNK)                                            \
                swiglu_fw_##SFX(g + b, u + b, h + b, n - b < CHUNK ? n - b : CHUNK);          \
        } else if (act == MOE_CPU_FFN_GELU) {                                                 \
            _Pragma("omp parallel for if (par && n > PAR_MIN) schedule(static)")              \
            for (int64_t i = 0; i < n; i++)                                                   \
                h[i] = (T)0.5 * u[i] * ((T)1 + erf_##SFX(u[i] * (T)SQRT1_2));                 \
        } else {                                                                              \
            _Pragma("omp parallel for if (par && n > PAR_MIN) schedule(static)")              \
            for (int64_t i = 0; i < n; i++) {                                                 \
                T x = u[i];                                                                   \
                h[i] = (T)0.5 * x * ((T)1 + tanh_##SFX((T)GELU_C * (x + (T)GELU_A * x * x * x))); \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
    static void act_bw_##SFX(moe_cpu_ffn_act act, const T *restrict g, const T *restrict u,   \
                             T *restrict a, T *restrict bu, T *restrict h, int64_t n, bool par) \
    {                                                                                         \
        if (act == MOE_CPU_FFN_SWIGLU) {                                                      \
            _Pragma("omp parallel for if (par && n > PAR_MIN) schedule(static)")              \
            for (int64_t b = 0; b < n; b += CHUNK)                                            \
                swiglu_bw_##SFX(g + b, u + b, a + b, bu + b, h + b,                           \
                                n - b < CHUNK ? n - b : CHUNK);                               \
        } else if (act == MOE_CPU_FFN_GELU) {                                                 \
            _Pragma("omp parallel for if (par && n > PAR_MIN) schedule(static)")              \
            for (int64_t i = 0; i < n; i++) {                                                 \
                T x = u[i];                                                                   \
                T cdf = (T)0.5 * ((T)1 + erf_##SFX(x * (T)SQRT1_2));                          \
                T pdf = exp_##SFX((T)-0.5 * x * x) * (T)INV_SQRT_2PI;                         \
                h[i] = x * cdf;                                                               \
                a[i] *= cdf + x * pdf;                                                        \
            }                                                                                 \
        } else {                                                                              \
            _Pragma("omp parallel for if (par && n > PAR_MIN) schedule(static)")              \
            for (int64_t i = 0; i < n; i++) {                                                 \
                T x = u[i], x2 = x * x;                                                       \
                T th = tanh_##SFX((T)GELU_C * (x + (T)GELU_A * x * x * x)); /* as act_fw */   \
                T dinner = (T)GELU_C * ((T)1 + (T)(3 * GELU_A) * x2);                         \
                h[i] = (T)0.5 * x * ((T)1 + th);                                              \
                a[i] *= (T)0.5 * ((T)1 + th) + (T)0.5 * x * ((T)1 - th * th) * dinner;        \
            }                                                                                 \
        }                                                                                     \
    }

DEFINE_ACT(float, f32)
DEFINE_ACT(double, f64)

static void act_fw(moe_dtype dt, moe_cpu_ffn_act act, const void *g, const void *u, void *h,
                   int64_t n, bool par)
{
    if (dt == MOE_F32)
        act_fw_f32(act, g, u, h, n, par);
    else
        act_fw_f64(act, g, u, h, n, par);
}

static void act_bw(moe_dtype dt, moe_cpu_ffn_act act, const void *g, const void *u, void *a,
                   void *bu, void *h, int64_t n, bool par)
{
    if (dt == MOE_F32)
        act_bw_f32(act, g, u, a, bu, h, n, par);
    else
        act_bw_f64(act, g, u, a, bu, h, n, par);
}

static void zero(moe_dtype dt, void *p, int64_t n)
{
    if (p && n > 0) memset(p, 0, (size_t)n * (dt == MOE_F32 ? sizeof(float) : sizeof(double)));
}

/* ---- fused expert MLP: forward ------------------------------------------------------------ */

/* [rows F] blocks of scratch: the forward's h; the backward's dh/dG, dU
 * (SwiGLU only) and h. */
static int scratch_blocks(moe_cpu_ffn_act act, bool backward)
{
    return backward ? (act == MOE_CPU_FFN_SWIGLU ? 3 : 2) : 1;
}

/* Elements rounded up to whole 64-byte lines of floats (packed weights
 * must start on one). */
static int64_t whole_lines(int64_t elems)
{
    return (elems + 15) / 16 * 16;
}

/* Floats one expert's weights take packed for moelab's f32 kernel (Wg, Wu
 * [D F] and Wd [F D]; 0 where no kernel runs). */
static int64_t packed_expert_floats(moe_cpu_ffn_act act, int64_t D, int64_t F)
{
    int64_t in = whole_lines((int64_t)moe_cpu_sgemm_pack_floats(D, F));
    int64_t out = whole_lines((int64_t)moe_cpu_sgemm_pack_floats(F, D));
    return in == 0 || out == 0 ? 0 : (act == MOE_CPU_FFN_SWIGLU ? 2 : 1) * in + out;
}

int64_t moe_cpu_ffn_scratch(moe_cpu_ffn_act act, moe_cpu_group_mode mode, int slots,
                            int64_t max_rows, int64_t N, int64_t D, int64_t F, bool backward)
{
    /* The side-by-side backward keeps every row's dG, dU and h from its
     * first loop to its second; otherwise one group per slot, and in the
     * side-by-side forward the slot's packed weights after it. */
    if (backward)
        return scratch_blocks(act, true) *
               (mode == MOE_CPU_GROUP_PARALLEL ? N : slots * max_rows) * F;
    int64_t slot = whole_lines(max_rows * F);
    if (mode == MOE_CPU_GROUP_PARALLEL) slot += packed_expert_floats(act, D, F);
    return slots * slot;
}

typedef struct ffn_ctx {
    const moe_cpu_ffn *p;
    const void *g, *u, *dy;
    void *go, *uo, *y; /* forward outputs */
    void *dx, *dwg, *dwu, *dwd, *dbg, *dbu, *dbd;
    void *scratch;
    int64_t max_rows;
    bool par_inner; /* elementwise loops may use threads (serial schedule) */
    /* backward: */
    bool all_rows;  /* scratch blocks hold all N rows (else one group's) */
    int64_t blk;    /* elements of a scratch block */
    bool need_in;   /* dX or a gate/up gradient: dG, dU needed */
} ffn_ctx;

/* One expert's weights packed (moe_cpu_sgemm_pack), kept by a thread of
 * the side-by-side forward while it takes that expert's rows. */
typedef struct packed_expert {
    int64_t e;   /* -1: none yet */
    float *mem;  /* Wg (SwiGLU), Wu, then Wd, packed */
    int64_t in;  /* floats of a [D F] weight packed, on whole lines */
    moe_cpu_sgemm_packed wg, wu, wd;
} packed_expert;

/* XW (x [n k] times an expert's weight W [k cols]) into OUT, through the
 * packed W when there is one. */
static void expert_product(moe_dtype dt, int64_t n, int64_t cols, int64_t k, const void *x,
                           const void *w, const moe_cpu_sgemm_packed *packed, double beta,
                           void *out)
{
    if (packed)
        moe_cpu_sgemm_packed_product(packed, n, 1.0f, x, k, (float)beta, out, cols);
    else
        gemm(dt, false, false, n, cols, k, 1, x, k, w, cols, beta, out, cols);
}

/* Rows [R0, R1) of group e (rows are independent in the forward), h in
 * scratch at H; PE: the expert's weights packed, or NULL. */
static void ffn_fw_piece(const ffn_ctx *c, int64_t e, int64_t r0, int64_t r1, void *h,
                         const packed_expert *pe)
{
    const moe_cpu_ffn *p = c->p;
    moe_dtype dt = p->dtype;
    int64_t n = r1 - r0, D = p->D, F = p->F;
    const void *x = at(dt, p->x, r0 * D);
    void *g = p->act == MOE_CPU_FFN_SWIGLU ? at(dt, c->go, r0 * F) : NULL;
    void *u = at(dt, c->uo, r0 * F), *y = at(dt, c->y, r0 * D);
    if (g) {
        if (p->bg) moe_cpu_fill_rows(dt, g, n, F, at(dt, p->bg, e * F));
        expert_product(dt, n, F, D, x, at(dt, p->wg, e * D * F), pe ? &pe->wg : NULL,
                       p->bg ? 1 : 0, g);
    }
    if (p->bu) moe_cpu_fill_rows(dt, u, n, F, at(dt, p->bu, e * F));
    expert_product(dt, n, F, D, x, at(dt, p->wu, e * D * F), pe ? &pe->wu : NULL, p->bu ? 1 : 0,
                   u);
    act_fw(dt, p->act, g, u, h, n * F, c->par_inner);
    if (p->bd) moe_cpu_fill_rows(dt, y, n, D, at(dt, p->bd, e * D));
    expert_product(dt, n, D, F, h, at(dt, p->wd, e * F * D), pe ? &pe->wd : NULL, p->bd ? 1 : 0,
                   y);
}

static void ffn_fw_rows(int64_t e, int64_t r0, int64_t r1, int slot, void *vctx)
{
    const ffn_ctx *c = vctx;
    int64_t h = slot * whole_lines(c->max_rows * c->p->F);
    ffn_fw_piece(c, e, r0, r1, at(c->p->dtype, c->scratch, h), NULL);
}

/* ---- the side-by-side forward on moelab's kernel: rows taken, and stolen, a chunk at a time */

/* Each thread starts on its share of the expert-ordered rows, as
 * for_each_row_range cuts them, and takes them CHUNK_ROWS at a time from
 * the front, each expert's weights packed once for all its chunks; a
 * thread done with its share takes chunks from the back of the share with
 * the most rows left (packing that expert's weights too, unless it holds
 * them). So a core that runs slower for a while, as the two of a VM can by
 * 10-20%, does not leave the other waiting at the end, as the fixed cut
 * did (about 3 ms a layer in bench-train's step, whole steps 0-3.5% longer
 * than this way); and a chunk's h (192 KiB at F 512) can stay in L2 from
 * one product to the next. Chunks start on CUT_ALIGN rows from their
 * group's start, so every row has the bits of the one-thread forward. */
#define CHUNK_ROWS 96
#define MAX_SHARES 64 /* threads that take part (more: the fixed cut) */

static bool steal_first; /* moe_cpu_ffn_steal_first */

void moe_cpu_ffn_steal_first(bool on)
{
    __atomic_store_n(&steal_first, on, __ATOMIC_RELAXED);
}

typedef struct row_share { /* rows [front, back) of a thread's share, not yet taken */
    omp_lock_t lock;
    int64_t front, back;
} row_share;

/* The group holding row R < off[E] (off[e] <= r < off[e + 1], so never
 * an empty one). */
static int64_t group_of(const int64_t *off, int64_t r)
{
    int64_t e = 0;
    while (off[e + 1] <= r) e++;
    return e;
}

/* Take a chunk of S's rows from its front (FRONT) or its back, within one
 * group: false when none are left. */
static bool take_chunk(row_share *s, const int64_t *off, bool front, int64_t *e, int64_t *r0,
                       int64_t *r1)
{
    omp_set_lock(&s->lock);
    bool got = s->front < s->back;
    if (got && front) {
        *e = group_of(off, s->front);
        *r0 = s->front;
        int64_t end = off[*e] + (s->front - off[*e]) / CUT_ALIGN * CUT_ALIGN + CHUNK_ROWS;
        *r1 = end < off[*e + 1] ? end : off[*e + 1];
        if (*r1 > s->back) *r1 = s->back;
        __atomic_store_n(&s->front, *r1, __ATOMIC_RELAXED);
    } else if (got) {
        *e = group_of(off, s->back - 1);
        *r1 = s->back;
        int64_t start = off[*e] + (s->back - 1 - off[*e]) / CUT_ALIGN * CUT_ALIGN -
                        (CHUNK_ROWS - CUT_ALIGN);
        if (start < off[*e]) start = off[*e];
        *r0 = start > s->front ? start : s->front;
        __atomic_store_n(&s->back, *r0, __ATOMIC_RELAXED);
    }
    omp_unset_lock(&s->lock);
    return got;
}

/* The share with the most rows left but MINE (-1: none left). */
static int fullest_share(row_share *shares, int n, int mine)
{
    int best = -1;
    int64_t most = 0;
    for (int i = 0; i < n; i++) {
        int64_t left = __atomic_load_n(&shares[i].back, __ATOMIC_RELAXED) -
                       __atomic_load_n(&shares[i].front, __ATOMIC_RELAXED);
        if (i != mine && left > most) {
            most = left;
            best = i;
        }
    }
    return best;
}

/* Rows [R0, R1) of group e with its weights packed into PE. */
static void fw_chunk(const ffn_ctx *c, packed_expert *pe, void *h, int64_t e, int64_t r0,
                     int64_t r1)
{
    const moe_cpu_ffn *p = c->p;
    int64_t D = p->D, F = p->F, in = pe->in;
    if (pe->e != e) {
        const float *wg = p->wg, *wu = p->wu, *wd = p->wd;
        float *mem = pe->mem + (p->act == MOE_CPU_FFN_SWIGLU ? in : 0);
        bool packed = (p->act != MOE_CPU_FFN_SWIGLU ||
                       moe_cpu_sgemm_pack(&pe->wg, false, D, F, wg + e * D * F, F, pe->mem)) &&
                      moe_cpu_sgemm_pack(&pe->wu, false, D, F, wu + e * D * F, F, mem) &&
                      moe_cpu_sgemm_pack(&pe->wd, false, F, D, wd + e * F * D, D, mem + in);
        pe->e = packed ? e : -1;
    }
    ffn_fw_piece(c, e, r0, r1, h, pe->e == e ? pe : NULL); /* not packed: as the fixed cut */
}

/* True when the forward can take its rows this way: f32 on moelab's
 * kernel, side by side, the scratch laid out for it. */
static bool fw_steals(const moe_cpu_ffn *p, moe_cpu_group_mode mode, void *scratch, int nt)
{
    return p->dtype == MOE_F32 && mode == MOE_CPU_GROUP_PARALLEL && nt >= 2 &&
           nt <= MAX_SHARES && strcmp(moe_cpu_sgemm_kernel(), "blas") != 0 &&
           packed_expert_floats(p->act, p->D, p->F) > 0 && (uintptr_t)scratch % 64 == 0;
}

static void ffn_fw_stealing(const ffn_ctx *c, int nt)
{
    const moe_cpu_ffn *p = c->p;
    int64_t E = p->E, h_floats = whole_lines(c->max_rows * p->F);
    int64_t slot = h_floats + packed_expert_floats(p->act, p->D, p->F);
    int64_t in = whole_lines((int64_t)moe_cpu_sgemm_pack_floats(p->D, p->F));
    const int64_t *off = p->off;
    row_share shares[MAX_SHARES];
    int team = nt;
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
#pragma omp single
        team = omp_get_num_threads();
        int64_t total = off[E] - off[0];
        shares[t].front = cut_on_tile(E, off, off[0] + total * t / team);
        shares[t].back = cut_on_tile(E, off, off[0] + total * (t + 1) / team);
        omp_init_lock(&shares[t].lock);
#pragma omp barrier
        float *mine = (float *)c->scratch + t * slot;
        packed_expert pe = {.e = -1, .mem = mine + h_floats, .in = in};
        int64_t e, r0, r1;
        if (__atomic_load_n(&steal_first, __ATOMIC_RELAXED) &&
            take_chunk(&shares[(t + 1) % team], off, false, &e, &r0, &r1))
            fw_chunk(c, &pe, mine, e, r0, r1);
        while (take_chunk(&shares[t], off, true, &e, &r0, &r1))
            fw_chunk(c, &pe, mine, e, r0, r1);
        for (int v; (v = fullest_share(shares, team, t)) >= 0;)
            if (take_chunk(&shares[v], off, false, &e, &r0, &r1))
                fw_chunk(c, &pe, mine, e, r0, r1);
#pragma omp barrier
        omp_destroy_lock(&shares[t].lock);
    }
}

void moe_cpu_ffn_forward(const moe_cpu_ffn *p, void *g, void *u, void *y, void *scratch,
                         moe_cpu_group_mode mode, int64_t max_rows)
{
    ffn_ctx c = {.p = p, .go = g, .uo = u, .y = y, .scratch = scratch, .max_rows = max_rows,
                 .par_inner = mode != MOE_CPU_GROUP_PARALLEL};
    int nt = team_size(p->E, p->off);
    if (fw_steals(p, mode, scratch, nt))
        ffn_fw_stealing(&c, nt);
    else
        for_each_row_range(p->E, p->off, mode, ffn_fw_rows, &c);
}

/* ---- fused expert MLP: backward ----------------------------------------------------------- */

/* Two steps. The first: dh = dY Wdᵀ and one pass of the activation's
 * backward give dG, dU and h (its exp or erf evaluated once). The second:
 * dWd = hᵀ dY, dWg = xᵀ dG, dWu = xᵀ dU, dX = dG Wgᵀ + dU Wuᵀ and the bias
 * sums. Side by side: the first step of every group as tasks, then the
 * second step's products of every group as separate tasks, each loop
 * costliest first, so the short tasks at the end keep a thread from
 * waiting long for the last large group. The first step does not cut a
 * group by rows as the forward does: OpenBLAS gives a piece of a few rows
 * of dY Wdᵀ (B transposed) other bits than the whole product, even on
 * 32-row tiles. One at a time: both steps for a group, then the next.
 * Either way every product has the same operands and shape. */

enum { TASK_DOWN, TASK_GATE, TASK_UP, TASK_DX, TASK_KINDS }; /* one group's products */
enum { SCR_DH, SCR_DU, SCR_H };                              /* dh then dG (GELU: dU), dU, h */

/* Group e's rows of scratch block WHICH. */
static void *bw_scratch(const ffn_ctx *c, int which, int64_t e)
{
    const moe_cpu_ffn *p = c->p;
    int blk = which == SCR_H && p->act != MOE_CPU_FFN_SWIGLU ? 1 : which; /* GELU: no dU block */
    int64_t row = c->all_rows ? p->off[e] - p->off[0] : 0;
    return at(p->dtype, c->scratch, blk * c->blk + row * p->F);
}

/* The first step for group e; h alone when only the down projection
 * wants gradients. Its cost: rows (0: nothing to do). */
static int64_t ffn_bw_act_cost(int64_t e, const void *vctx)
{
    const ffn_ctx *c = vctx;
    return c->need_in || c->dwd ? c->p->off[e + 1] - c->p->off[e] : 0;
}

static void ffn_bw_act(int64_t e, void *vctx)
{
    const ffn_ctx *c = vctx;
    const moe_cpu_ffn *p = c->p;
    moe_dtype dt = p->dtype;
    bool swiglu = p->act == MOE_CPU_FFN_SWIGLU;
    int64_t r0 = p->off[e], n = p->off[e + 1] - r0, D = p->D, F = p->F;
    const void *g = swiglu ? at(dt, c->g, r0 * F) : NULL, *u = at(dt, c->u, r0 * F);
    void *dh = bw_scratch(c, SCR_DH, e), *h = bw_scratch(c, SCR_H, e);
    void *du = swiglu ? bw_scratch(c, SCR_DU, e) : NULL;
    if (c->need_in) {
        gemm(dt, false, true, n, F, D, 1, at(dt, c->dy, r0 * D), D, at(dt, p->wd, e * D * F), D, 0,
             dh, F);
        act_bw(dt, p->act, g, u, dh, du, h, n * F, c->par_inner);
    } else if (c->dwd) {
        act_fw(dt, p->act, g, u, h, n * F, c->par_inner);
    }
}

/* Task i: product i % TASK_KINDS of group i / TASK_KINDS. Its cost in rows
 * times GEMMs, plus one for a bias sum; 0: nothing to do. */
static int64_t ffn_bw_cost(int64_t i, const void *vctx)
{
    const ffn_ctx *c = vctx;
    const moe_cpu_ffn *p = c->p;
    int64_t e = i / TASK_KINDS, n = p->off[e + 1] - p->off[e];
    bool swiglu = p->act == MOE_CPU_FFN_SWIGLU;
    int64_t gemms = 0, sums = 0;
    switch (i % TASK_KINDS) {
    case TASK_DOWN:
        gemms = c->dwd != NULL;
        sums = c->dbd != NULL;
        break;
    case TASK_GATE:
        gemms = swiglu && c->dwg;
        sums = swiglu && c->dbg;
        break;
    case TASK_UP:
        gemms = c->dwu != NULL;
        sums = c->dbu != NULL;
        break;
    default:
        gemms = c->dx ? (swiglu ? 2 : 1) : 0;
        break;
    }
    return n == 0 ? 0 : n * gemms + sums;
}

static void ffn_bw_task(int64_t i, void *vctx)
{
    const ffn_ctx *c = vctx;
    const moe_cpu_ffn *p = c->p;
    moe_dtype dt = p->dtype;
    bool swiglu = p->act == MOE_CPU_FFN_SWIGLU;
    int64_t e = i / TASK_KINDS, r0 = p->off[e], n = p->off[e + 1] - r0, D = p->D, F = p->F;
    int64_t wsz = D * F;
    const void *x = at(dt, p->x, r0 * D), *dy = at(dt, c->dy, r0 * D);
    const void *dg = swiglu ? bw_scratch(c, SCR_DH, e) : NULL;
    const void *du = bw_scratch(c, swiglu ? SCR_DU : SCR_DH, e);
    switch (i % TASK_KINDS) {
    case TASK_DOWN:
        if (c->dwd)
            gemm(dt, true, false, F, D, n, 1, bw_scratch(c, SCR_H, e), F, dy, D, 0,
                 at(dt, c->dwd, e * wsz), D);
        if (c->dbd) moe_cpu_sum_rows(dt, at(dt, c->dbd, e * D), dy, n, D);
        break;
    case TASK_GATE:
        if (c->dwg) gemm(dt, true, false, D, F, n, 1, x, D, dg, F, 0, at(dt, c->dwg, e * wsz), F);
        if (c->dbg) moe_cpu_sum_rows(dt, at(dt, c->dbg, e * F), dg, n, F);
        break;
    case TASK_UP:
        if (c->dwu) gemm(dt, true, false, D, F, n, 1, x, D, du, F, 0, at(dt, c->dwu, e * wsz), F);
        if (c->dbu) moe_cpu_sum_rows(dt, at(dt, c->dbu, e * F), du, n, F);
        break;
    default: { /* one task, in this order, so dX gets the same bits either way */
        void *dx = at(dt, c->dx, r0 * D);
        if (swiglu) gemm(dt, false, true, n, D, F, 1, dg, F, at(dt, p->wg, e * wsz), F, 0, dx, D);
        gemm(dt, false, true, n, D, F, 1, du, F, at(dt, p->wu, e * wsz), F, swiglu ? 1 : 0, dx, D);
        break;
    }
    }
}

/* An expert with no rows: zero weight and bias gradients. */
static void zero_group_grads(const ffn_ctx *c, int64_t e)
{
    moe_dtype dt = c->p->dtype;
    int64_t D = c->p->D, F = c->p->F, wsz = D * F;
    if (c->dwg) zero(dt, at(dt, c->dwg, e * wsz), wsz);
    if (c->dwu) zero(dt, at(dt, c->dwu, e * wsz), wsz);
    if (c->dwd) zero(dt, at(dt, c->dwd, e * wsz), wsz);
    if (c->dbg) zero(dt, at(dt, c->dbg, e * F), F);
    if (c->dbu) zero(dt, at(dt, c->dbu, e * F), F);
    if (c->dbd) zero(dt, at(dt, c->dbd, e * D), D);
}

void moe_cpu_ffn_backward(const moe_cpu_ffn *p, const void *g, const void *u, const void *dy,
                          void *dx, void *dwg, void *dwu, void *dwd, void *dbg, void *dbu,
                          void *dbd, void *scratch, moe_cpu_group_mode mode, int64_t max_rows)
{
    int64_t E = p->E;
    const int64_t *off = p->off;
    bool side = mode == MOE_CPU_GROUP_PARALLEL;
    ffn_ctx c = {.p = p, .g = g, .u = u, .dy = dy, .dx = dx, .dwg = dwg, .dwu = dwu, .dwd = dwd,
                 .dbg = dbg, .dbu = dbu, .dbd = dbd, .scratch = scratch, .max_rows = max_rows,
                 .par_inner = !side, .all_rows = side,
                 .blk = (side ? off[E] - off[0] : max_rows) * p->F,
                 .need_in = dx || dwg || dwu || dbg || dbu};
    for (int64_t e = 0; e < E; e++)
        if (off[e + 1] == off[e]) zero_group_grads(&c, e);
    if (side) {
        /* The first loop ends (its join) before any product starts. */
        int nt = team_size(E, off);
        for_each_task(E, ffn_bw_act_cost, ffn_bw_act, &c, nt);
        for_each_task(E * TASK_KINDS, ffn_bw_cost, ffn_bw_task, &c, nt);
        return;
    }
    for (int64_t e = 0; e < E; e++) { /* BLAS threads inside each product (gemm.c) */
        if (off[e + 1] == off[e]) continue;
        if (ffn_bw_act_cost(e, &c) > 0) ffn_bw_act(e, &c);
        for (int k = 0; k < TASK_KINDS; k++)
            if (ffn_bw_cost(e * TASK_KINDS + k, &c) > 0) ffn_bw_task(e * TASK_KINDS + k, &c);
    }
}

double moe_cpu_ffn_flops(moe_cpu_ffn_act act, int64_t N, int64_t D, int64_t F, bool backward)
{
    double one = 2.0 * (double)N * (double)D * (double)F;
    int gemms = act == MOE_CPU_FFN_SWIGLU ? (backward ? 6 : 3) : (backward ? 4 : 2);
    return one * gemms;
}
