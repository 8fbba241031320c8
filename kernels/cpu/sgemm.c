/* sgemm.c — moelab's own f32 GEMM for x86-64 CPUs with AVX-512 or AVX2:
 *     C [M N] = alpha op(A) [M K] op(B) [K N] + beta C, row-major.
 *
 * Dimension letters: M rows of A and C, K the inner dim, N columns of B and C.
 *
 * Why not BLAS here: a training step's products are thin (K and N of 256
 * to 512). On them OpenBLAS spent about a sixth of its time packing both
 * operands into its own layout and zeroing C before adding into it, and a
 * product split over threads had each thread pack all of op(B).
 *
 * The scheme (this file is the driver; the micro-kernels, one per ISA, are
 * in sgemm_avx512.c and sgemm_avx2.c, see sgemm_kernel.h):
 *   - op(B) is packed once per product into panels of NR columns ([K NR],
 *     k-major, zero-padded at the right edge), shared by the whole team;
 *   - A is read where it lies: the micro-kernel broadcasts A's elements
 *     from MR rows, fetching the next MR rows as it goes;
 *   - a product of A stored transposed and B not (xᵀ dy) reads both where
 *     they lie ("direct"); A stored transposed otherwise is first copied,
 *     a unit's rows at a time;
 *   - C is written once per block of KC inner indices;
 *   - the work is cut into units of a few micro-tiles' rows (by all
 *     panels, or a run of them when rows are few), which the threads take
 *     one at a time, so a core that runs slower for a while does not hold
 *     the other back at the end; a direct product is instead cut in one
 *     part per thread along its longer side, each walking its inner blocks
 *     outermost.
 *
 * Every element of C is the same sum whichever thread, and whichever
 * kernel, computes it: over each block of KC inner indices a chain of FMAs
 * from zero, the blocks added to C in order. Results are therefore
 * deterministic and have the same bits on any number of threads. */
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "sgemm.h"
#include "sgemm_kernel.h"

#if defined(__x86_64__) && defined(__GNUC__)

/* ---- the per-thread pack buffer ------------------------------------------------------ */

/* Kept from call to call (a training step should not call malloc), grown
 * as needed, freed when its thread ends. */
static pthread_key_t pack_key;
static pthread_once_t pack_key_once = PTHREAD_ONCE_INIT;
static __thread float *pack_buf;
static __thread size_t pack_floats;

static void pack_key_make(void)
{
    (void)pthread_key_create(&pack_key, free);
}

static float *pack_buffer(size_t floats)
{
    if (floats <= pack_floats) return pack_buf;
    free(pack_buf);
    pack_floats = 0;
    pack_buf = aligned_alloc(64, (floats * sizeof(float) + 63) / 64 * 64);
    (void)pthread_once(&pack_key_once, pack_key_make);
    (void)pthread_setspecific(pack_key, pack_buf);
    if (pack_buf) pack_floats = floats;
    return pack_buf;
}

/* ---- units of work ------------------------------------------------------------------- */

/* A team takes units of whole row runs (tile_rows rows by all panels),
 * each thread reading its own rows of A, unless that leaves fewer than
 * UNITS_PER_THREAD each: then the panels are cut into GROUPS runs too. */
#define UNITS_PER_THREAD 8

static int64_t row_runs(const sgemm_job *jb)
{
    return (jb->m + jb->kern->tile_rows - 1) / jb->kern->tile_rows;
}

static int64_t unit_groups(const sgemm_job *jb, int threads)
{
    int64_t runs = row_runs(jb), want = (int64_t)UNITS_PER_THREAD * threads;
    return runs >= want ? 1 : min64(jb->panels, (want + runs - 1) / runs);
}

/* Unit U (the block's panels cut into GROUPS runs): its rows and panels. */
static void run_unit(const sgemm_job *jb, int64_t u, int64_t groups)
{
    int64_t g = u % groups, r0 = u / groups * jb->kern->tile_rows;
    jb->kern->run_unit(jb, r0, min64(jb->m, r0 + jb->kern->tile_rows), jb->panels * g / groups,
                       jb->panels * (g + 1) / groups);
}

/* Pack the current block, then run its units. TEAM: we are inside our own
 * parallel region, whose loops share the work (their barriers keep the
 * two phases and the blocks apart); else all on the calling thread, which
 * may be inside somebody else's region, where a worksharing loop must not
 * appear. */
static void run_block(const sgemm_job *jb, bool team)
{
    if (!team) {
        for (int64_t p = 0; p < jb->panels; p++) jb->kern->pack_panel(jb, p);
        for (int64_t u = 0; u < row_runs(jb); u++) run_unit(jb, u, 1);
        return;
    }
    int64_t groups = unit_groups(jb, omp_get_num_threads());
#pragma omp for schedule(static)
    for (int64_t p = 0; p < jb->panels; p++) jb->kern->pack_panel(jb, p);
#pragma omp for schedule(dynamic)
    for (int64_t u = 0; u < row_runs(jb) * groups; u++) run_unit(jb, u, groups);
}

/* A direct product on the calling thread, or (TEAM) cut in one part per
 * thread along its longer side, rows in whole micro-tiles: each thread
 * then reads all of the other operand but only its share of this one. */
static void run_direct(const sgemm_job *jb, bool team)
{
    const sgemm_kernel *kn = jb->kern;
    if (!team) {
        kn->direct_part(jb, jb->pack, 0, jb->m, 0, jb->panels);
        return;
    }
    int64_t t = omp_get_thread_num(), nt = omp_get_num_threads(), mr = kn->mr;
    int64_t tiles = (jb->m + mr - 1) / mr;
    float *scratch = jb->pack ? jb->pack + t * kn->direct_scratch : NULL;
    if (tiles >= jb->panels)
        kn->direct_part(jb, scratch, min64(jb->m, tiles * t / nt * mr),
                        min64(jb->m, tiles * (t + 1) / nt * mr), 0, jb->panels);
    else
        kn->direct_part(jb, scratch, 0, jb->m, jb->panels * t / nt, jb->panels * (t + 1) / nt);
}

/* The block of op(B) at inner index K0 and column J0: inner indices in
 * runs of KS, columns in runs of NC_MAX (the packed block within PACK_CAP
 * floats). */
static void set_block(sgemm_job *jb, int64_t k0, int64_t j0, int64_t n, int64_t nc_max)
{
    jb->k0 = k0;
    jb->ks = min64(KS, jb->k - k0);
    jb->j0 = j0;
    jb->nc = min64(nc_max, n - j0);
    jb->panels = (jb->nc + jb->kern->nr - 1) / jb->kern->nr;
}

/* Every block of op(B), inner runs outermost. */
static void run_blocks(sgemm_job *jb, int64_t n, int64_t nc_max, bool team)
{
    for (int64_t k0 = 0; k0 < jb->k; k0 += KS)
        for (int64_t j0 = 0; j0 < n; j0 += nc_max) {
            set_block(jb, k0, j0, n, nc_max);
            run_block(jb, team);
        }
}

/* C = beta C, the whole product when K or alpha is 0. */
static void scale_c(int64_t m, int64_t n, float beta, float *c, int64_t ldc)
{
    for (int64_t i = 0; i < m; i++) {
        float *row = c + i * ldc;
        if (beta == 0.0f)
            memset(row, 0, (size_t)n * sizeof(float));
        else
            for (int64_t j = 0; j < n; j++) row[j] *= beta;
    }
}

/* ---- which kernel ------------------------------------------------------------------ */

/* The kernel in use (NULL: none runs here), chosen once: the widest the
 * CPU runs, or AVX2 where MOELAB_SGEMM=avx2 asks for it (to compare). */
static pthread_once_t cpu_once = PTHREAD_ONCE_INIT;
static const sgemm_kernel *kernel_in_use;

/* every kernel, the widest first */
static const sgemm_kernel *const kernels[] = {&moe_sgemm_avx512, &moe_sgemm_avx2};
#define KERNELS (sizeof kernels / sizeof kernels[0])

static bool cpu_runs(const sgemm_kernel *kn)
{
    if (!kn->name || !__builtin_cpu_supports("fma")) return false;
    if (kn == &moe_sgemm_avx512) return __builtin_cpu_supports("avx512f");
    return __builtin_cpu_supports("avx2");
}

static void cpu_check(void)
{
    __builtin_cpu_init();
    const char *want = getenv("MOELAB_SGEMM");
    bool avx2_asked = want && strcmp(want, "avx2") == 0;
    const sgemm_kernel *kn = NULL;
    for (size_t i = 0; i < KERNELS && !kn; i++)
        if (cpu_runs(kernels[i]) && !(avx2_asked && kernels[i] == &moe_sgemm_avx512))
            kn = kernels[i];
    __atomic_store_n(&kernel_in_use, kn, __ATOMIC_RELEASE);
}

static const sgemm_kernel *current_kernel(void)
{
    (void)pthread_once(&cpu_once, cpu_check);
    return __atomic_load_n(&kernel_in_use, __ATOMIC_ACQUIRE);
}

bool moe_cpu_sgemm_native_ok(void)
{
    return current_kernel() != NULL;
}

const char *moe_cpu_sgemm_native_kernel(void)
{
    const sgemm_kernel *kn = current_kernel();
    return kn ? kn->name : NULL;
}

bool moe_cpu_sgemm_native_select(const char *name)
{
    (void)current_kernel(); /* the first choice must not overwrite this one later */
    for (size_t i = 0; i < KERNELS; i++)
        if (name && kernels[i]->name && strcmp(name, kernels[i]->name) == 0 &&
            cpu_runs(kernels[i])) {
            __atomic_store_n(&kernel_in_use, kernels[i], __ATOMIC_RELEASE);
            return true;
        }
    return false;
}

/* ---- the product ------------------------------------------------------------------- */

/* Columns of op(B) packed at a time for inner dim K (PACK_CAP floats) in
 * panels of NR, and the floats a pack buffer needs for N columns. */
static int64_t cols_per_block(int64_t k, int64_t nr)
{
    int64_t nc = PACK_CAP / min64(k, KS) / nr * nr;
    return nc < nr ? nr : nc;
}

static size_t pack_size(int64_t n, int64_t k, int64_t nr)
{
    int64_t cols = min64(n, cols_per_block(k, nr));
    return (size_t)min64(k, KS) * (size_t)((cols + nr - 1) / nr * nr);
}

/* A product whose A is stored transposed and B not runs direct (no pack). */
static bool is_direct(bool ta, bool tb)
{
    return ta && !tb;
}

/* The whole product over the team (TEAM: called inside our own parallel
 * region) or on the calling thread, op(B) packed into PACK unless direct. */
static void run_product(const sgemm_kernel *kn, bool ta, bool tb, int64_t m, int64_t n,
                        int64_t k, float alpha, const float *a, int64_t lda, const float *b,
                        int64_t ldb, float beta, float *c, int64_t ldc, float *pack, bool team)
{
    sgemm_job jb = {.kern = kn, .ta = ta, .tb = tb, .m = m, .k = k, .alpha = alpha,
                    .beta = beta, .a = a, .b = b, .rsa = ta ? 1 : lda, .csa = ta ? lda : 1,
                    .ldb = ldb, .c = c, .ldc = ldc, .pack = pack};
    if (is_direct(ta, tb)) {
        jb.nc = n;
        jb.panels = (n + kn->nr - 1) / kn->nr;
        run_direct(&jb, team);
    } else {
        run_blocks(&jb, n, cols_per_block(k, kn->nr), team);
    }
}

/* ---- op(B) packed ahead ------------------------------------------------------------- */

/* Floats op(B) [K N] takes packed by KN: its blocks one after the other,
 * in run_blocks' order. */
static size_t packed_floats(const sgemm_kernel *kn, int64_t k, int64_t n)
{
    sgemm_job jb = {.kern = kn, .k = k};
    int64_t nc_max = cols_per_block(k, kn->nr);
    size_t floats = 0;
    for (int64_t k0 = 0; k0 < k; k0 += KS)
        for (int64_t j0 = 0; j0 < n; j0 += nc_max) {
            set_block(&jb, k0, j0, n, nc_max);
            floats += (size_t)jb.ks * (size_t)(jb.panels * kn->nr);
        }
    return floats;
}

size_t moe_cpu_sgemm_pack_floats(int64_t k, int64_t n)
{
    (void)current_kernel();
    size_t most = 0;
    if (k <= 0 || n <= 0) return 0;
    for (size_t i = 0; i < KERNELS; i++) /* whichever kernel is in use when packing */
        if (cpu_runs(kernels[i])) {
            size_t f = packed_floats(kernels[i], k, n);
            most = f > most ? f : most;
        }
    return most;
}

bool moe_cpu_sgemm_pack(moe_cpu_sgemm_packed *pb, bool trans_b, int64_t k, int64_t n,
                        const float *b, int64_t ldb, float *mem)
{
    const sgemm_kernel *kn = current_kernel();
    if (!kn || k <= 0 || n <= 0) return false;
    sgemm_job jb = {.kern = kn, .tb = trans_b, .k = k, .b = b, .ldb = ldb, .pack = mem};
    int64_t nc_max = cols_per_block(k, kn->nr);
    for (int64_t k0 = 0; k0 < k; k0 += KS)
        for (int64_t j0 = 0; j0 < n; j0 += nc_max) {
            set_block(&jb, k0, j0, n, nc_max);
            for (int64_t p = 0; p < jb.panels; p++) kn->pack_panel(&jb, p);
            jb.pack += jb.ks * jb.panels * kn->nr;
        }
    *pb = (moe_cpu_sgemm_packed){.kernel = kn, .data = mem, .k = k, .n = n};
    return true;
}

void moe_cpu_sgemm_packed_product(const moe_cpu_sgemm_packed *pb, int64_t m, float alpha,
                                  const float *a, int64_t lda, float beta, float *c, int64_t ldc)
{
    const sgemm_kernel *kn = pb->kernel;
    if (m <= 0) return;
    sgemm_job jb = {.kern = kn, .m = m, .k = pb->k, .alpha = alpha, .beta = beta, .a = a,
                    .rsa = lda, .csa = 1, .c = c, .ldc = ldc,
                    .pack = (float *)pb->data}; /* only read: a job packs nothing else */
    int64_t nc_max = cols_per_block(pb->k, kn->nr);
    for (int64_t k0 = 0; k0 < pb->k; k0 += KS)
        for (int64_t j0 = 0; j0 < pb->n; j0 += nc_max) {
            set_block(&jb, k0, j0, pb->n, nc_max);
            for (int64_t r0 = 0; r0 < m; r0 += kn->tile_rows)
                kn->run_unit(&jb, r0, min64(m, r0 + kn->tile_rows), 0, jb.panels);
            jb.pack += jb.ks * jb.panels * kn->nr;
        }
}

bool moe_cpu_sgemm_native(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                          float alpha, const float *a, int64_t lda, const float *b, int64_t ldb,
                          float beta, float *c, int64_t ldc)
{
    if (m <= 0 || n <= 0) return true;
    if (k <= 0 || alpha == 0.0f) { /* as BLAS: A and B are not read */
        scale_c(m, n, beta, c, ldc);
        return true;
    }
    const sgemm_kernel *kn = current_kernel();
    if (!kn) return false;
    int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (2.0 * (double)m * (double)n * (double)k < MOE_CPU_SGEMM_SPLIT_FLOPS) nt = 1;
    /* the packed op(B), or a direct product's scratch for each thread */
    size_t floats = is_direct(trans_a, trans_b) ? (size_t)nt * (size_t)kn->direct_scratch
                                                : pack_size(n, k, kn->nr);
    float *pack = floats ? pack_buffer(floats) : NULL;
    if (floats && !pack) return false;
    if (nt > 1) {
#pragma omp parallel num_threads(nt)
        run_product(kn, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, pack,
                    true);
    } else {
        run_product(kn, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, pack,
                    false);
    }
    return true;
}

#else /* no kernel for this CPU family: gemm.c calls BLAS */

bool moe_cpu_sgemm_native_ok(void)
{
    return false;
}

const char *moe_cpu_sgemm_native_kernel(void)
{
    return NULL;
}

bool moe_cpu_sgemm_native_select(const char *name)
{
    return false;
}

bool moe_cpu_sgemm_native(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                          float alpha, const float *a, int64_t lda, const float *b, int64_t ldb,
                          float beta, float *c, int64_t ldc)
{
    return false;
}

size_t moe_cpu_sgemm_pack_floats(int64_t k, int64_t n)
{
    return 0;
}

bool moe_cpu_sgemm_pack(moe_cpu_sgemm_packed *pb, bool trans_b, int64_t k, int64_t n,
                        const float *b, int64_t ldb, float *mem)
{
    return false;
}

void moe_cpu_sgemm_packed_product(const moe_cpu_sgemm_packed *pb, int64_t m, float alpha,
                                  const float *a, int64_t lda, float beta, float *c, int64_t ldc)
{
}

#endif
