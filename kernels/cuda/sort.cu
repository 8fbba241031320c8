/* sort.cu — sort and top-k along the rows of a contiguous [R E] (see sort.h).
 *
 * One block per row sorts (key, index) pairs with a bitonic network over the
 * row padded to a power of two NP. Pads carry index -1 and sort after every
 * real entry. The network runs in shared memory when NP pairs fit
 * (SMEM_BYTES), else in a global scratch slice per row, processed
 * SCRATCH_ROWS rows at a time so the scratch stays bounded. */
#include <math.h>

#include "cuda_internal.h"
#include "device_math.cuh"
#include "sort.h"

static const size_t SMEM_BYTES = 48 * 1024;
static const int64_t MAX_THREADS = 1024;
static const size_t SCRATCH_LIMIT = (size_t)256 << 20; /* bytes of global scratch at once */

static int64_t pow2_at_least(int64_t n)
{
    int64_t p = 1;
    while (p < n) p <<= 1;
    return p;
}

template <typename T> static size_t pair_bytes() { return sizeof(T) + sizeof(int32_t); }

/* NaN above every number (as KEY_LT/KEY_GT in kernels/cpu/index.c). */
template <typename T> static __device__ inline bool key_lt(T x, T y) { return x < y || (!isnan(x) && isnan(y)); }
template <typename T> static __device__ inline bool key_gt(T x, T y) { return x > y || (isnan(x) && !isnan(y)); }

/* Does pair (ka, ia) come before (kb, ib) in the final order? */
template <typename T>
static __device__ inline bool before(T ka, int32_t ia, T kb, int32_t ib, bool first_big)
{
    if (ia < 0) return false; /* pads last */
    if (ib < 0) return true;
    if (first_big) {
        if (key_gt(ka, kb)) return true;
        if (key_gt(kb, ka)) return false;
    } else {
        if (key_lt(ka, kb)) return true;
        if (key_lt(kb, ka)) return false;
    }
    return ia < ib; /* equal keys: index order */
}

/* Sort NP pairs (keys, ids) of this block in place into "before" order. */
template <typename T>
static __device__ void bitonic(T *keys, int32_t *ids, int64_t np, bool first_big)
{
    for (int64_t k = 2; k <= np; k <<= 1)
        for (int64_t j = k >> 1; j > 0; j >>= 1) {
            for (int64_t i = threadIdx.x; i < np; i += blockDim.x) {
                int64_t p = i ^ j;
                if (p <= i) continue;
                bool up = (i & k) == 0; /* this block of K ends ascending in "before" order */
                bool swap = up ? before(keys[p], ids[p], keys[i], ids[i], first_big)
                               : before(keys[i], ids[i], keys[p], ids[p], first_big);
                if (swap) {
                    T tk = keys[i];
                    keys[i] = keys[p];
                    keys[p] = tk;
                    int32_t ti = ids[i];
                    ids[i] = ids[p];
                    ids[p] = ti;
                }
            }
            __syncthreads();
        }
}

/* Rows [row0, row0 + rows) of x; GLOBAL_KEYS/IDS (when not NULL) give each
 * block-row a slice of NP pairs, else dynamic shared memory holds them. */
template <typename T>
__global__ void __launch_bounds__(1024) sort_rows_kernel(T *vals, int64_t *idx, const T *x, int64_t row0, int64_t rows, int64_t E,
                                 int64_t K, int64_t np, bool first_big, T *global_keys, int32_t *global_ids)
{
    extern __shared__ __align__(16) unsigned char smem[];
    for (int64_t rr = blockIdx.x; rr < rows; rr += gridDim.x) {
        int64_t r = row0 + rr;
        T *keys;
        int32_t *ids;
        if (global_keys) {
            keys = global_keys + rr * np;
            ids = global_ids + rr * np;
        } else {
            keys = (T *)smem;
            ids = (int32_t *)(smem + np * sizeof(T));
        }
        const T *xr = x + r * E;
        for (int64_t i = threadIdx.x; i < np; i += blockDim.x) {
            keys[i] = i < E ? xr[i] : T(0);
            ids[i] = i < E ? (int32_t)i : -1;
        }
        __syncthreads();
        bitonic(keys, ids, np, first_big);
        for (int64_t i = threadIdx.x; i < K; i += blockDim.x) {
            if (vals) vals[r * K + i] = keys[i];
            idx[r * K + i] = ids[i];
        }
        __syncthreads(); /* the next row reuses the pairs */
    }
}

template <typename T> static bool fits_smem(int64_t E) { return (size_t)pow2_at_least(E) * pair_bytes<T>() <= SMEM_BYTES; }

/* Rows sorted per launch when the scratch is used. */
template <typename T> static int64_t scratch_rows(int64_t R, int64_t E)
{
    size_t row = (size_t)pow2_at_least(E) * pair_bytes<T>();
    int64_t n = (int64_t)(SCRATCH_LIMIT / row);
    if (n < 1) n = 1;
    return n < R ? n : R;
}

template <typename T> static size_t scratch_bytes(int64_t R, int64_t E)
{
    if (R == 0 || E == 0 || fits_smem<T>(E)) return 0;
    return (size_t)scratch_rows<T>(R, E) * (size_t)pow2_at_least(E) * pair_bytes<T>();
}

extern "C" moe_status moe_cuda_sort_scratch_bytes(moe_dtype dt, int64_t R, int64_t E, size_t *nbytes)
{
    *nbytes = dt == MOE_F64 ? scratch_bytes<double>(R, E) : scratch_bytes<float>(R, E);
    return MOE_OK;
}

template <typename T>
static moe_status sort_rows(T *vals, int64_t *idx, const T *x, int64_t R, int64_t E, int64_t K, bool first_big,
                            void *scratch)
{
    if (R == 0 || K == 0) return MOE_OK;
    if (E > INT32_MAX)
        return moe_fail(MOE_ERR_UNSUPPORTED, "sort", "rows of %lld entries exceed the GPU sort's int32 positions",
                        (long long)E);
    int64_t np = pow2_at_least(E);
    int threads = (int)(np < MAX_THREADS ? (np < 32 ? 32 : np) : MAX_THREADS);
    cudaStream_t s = moe_cuda_stream();
    if (fits_smem<T>(E)) {
        size_t smem = (size_t)np * pair_bytes<T>();
        sort_rows_kernel<T><<<moe_cuda_grid(R, 1), threads, smem, s>>>(vals, idx, x, 0, R, E, K, np, first_big,
                                                                       NULL, NULL);
        CHECK_LAUNCH("sort");
        return MOE_OK;
    }
    if (!scratch)
        return moe_fail(MOE_ERR_ARG, "sort", "rows of %lld entries need %zu bytes of scratch, got none",
                        (long long)E, scratch_bytes<T>(R, E));
    int64_t step = scratch_rows<T>(R, E);
    T *keys = (T *)scratch;
    int32_t *ids = (int32_t *)((char *)scratch + (size_t)step * np * sizeof(T));
    for (int64_t r0 = 0; r0 < R; r0 += step) { /* stream order: each launch reuses the scratch after the last */
        int64_t rows = R - r0 < step ? R - r0 : step;
        sort_rows_kernel<T><<<moe_cuda_grid(rows, 1), threads, 0, s>>>(vals, idx, x, r0, rows, E, K, np, first_big,
                                                                       keys, ids);
        CHECK_LAUNCH("sort");
    }
    return MOE_OK;
}

extern "C" moe_status moe_cuda_sort_rows(moe_dtype dt, void *vals, int64_t *idx, const void *x, int64_t R,
                                         int64_t E, int64_t K, bool first_big, void *scratch)
{
    if (dt == MOE_F32) return sort_rows<float>((float *)vals, idx, (const float *)x, R, E, K, first_big, scratch);
    if (dt == MOE_F64)
        return sort_rows<double>((double *)vals, idx, (const double *)x, R, E, K, first_big, scratch);
    return moe_fail(MOE_ERR_DTYPE, "sort", "no GPU kernel for %s", moe_dtype_name(dt));
}
