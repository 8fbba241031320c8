/* router.cu — the fused router forward and backward (see router.h).
 *
 * Layout: one warp per token row; a block of W warps keeps each warp's row
 * in shared memory (z, s, selection values, a top-k index list, group
 * scores) plus each warp's running loss sums. Rows go to warps by a grid
 * stride over a grid that depends on T and E only, so the per-block partials
 * and their in-order reduction give the same bits every run.
 *
 * Dimension letters: T tokens, E experts, K top-k, G groups, W warps per
 * block, B blocks. */
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

#include "cuda_internal.h"
#include "device_math.cuh"
#include "router.h"

#define OP "cuda-router"
#define MAX_BLOCKS 1024
#define SMEM_BUDGET (46 * 1024)

namespace {

__device__ __forceinline__ float load_z(const float *z, int64_t i) { return z[i]; }
__device__ __forceinline__ float load_z(const __nv_bfloat16 *z, int64_t i) { return __bfloat162float(z[i]); }
__device__ __forceinline__ void store_z(float *z, int64_t i, float v) { z[i] = v; }
__device__ __forceinline__ void store_z(__nv_bfloat16 *z, int64_t i, float v) { z[i] = __float2bfloat16(v); }

/* (x, j) comes after (pv, pi) in the order "descending value, then
 * ascending index": the elements not picked yet. */
__device__ __forceinline__ bool after(float x, int j, float pv, int pi)
{
    return x < pv || (x == pv && j > pi);
}

/* The K largest of V[0..N) (shared memory) into IDX[0..K), descending, ties
 * toward the lower index: K rounds of a warp arg-max over the elements after
 * the previous pick. Every lane takes part; lane 0 writes IDX. */
__device__ void warp_topk(const float *v, int n, int k, int *idx, int lane)
{
    float pv = INFINITY;
    int pi = -1;
    for (int r = 0; r < k; r++) {
        float bv = -INFINITY;
        int bi = INT32_MAX; /* none yet */
        for (int j = lane; j < n; j += 32) {
            float x = v[j];
            if (after(x, j, pv, pi) && (bi == INT32_MAX || x > bv)) { /* j grows: ties keep the first */
                bv = x;
                bi = j;
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (oi != INT32_MAX && (bi == INT32_MAX || ov > bv || (ov == bv && oi < bi))) {
                bv = ov;
                bi = oi;
            }
        }
        if (lane == 0) idx[r] = bi;
        pv = bv;
        pi = bi;
    }
    __syncwarp();
}

/* Sum of the M largest of V[0..N), added in descending order from 0 in f32
 * (the CPU's f32 path sums its top-m values the same way). One lane. */
__device__ float top_sum(const float *v, int n, int m)
{
    float pv = INFINITY, sum = 0.0f;
    int pi = -1;
    for (int r = 0; r < m; r++) {
        float bv = -INFINITY;
        int bi = -1;
        for (int j = 0; j < n; j++)
            if (after(v[j], j, pv, pi) && (bi < 0 || v[j] > bv)) {
                bv = v[j];
                bi = j;
            }
        sum += bv;
        pv = bv;
        pi = bi;
    }
    return sum;
}

/* Shared memory of one warp: z, s, v [E] f32, idx [E] int, gs [G] f32, acc [E+2] f32. */
struct warp_smem {
    float *z, *s, *v, *gs, *acc;
    int *idx;
};

__host__ __device__ inline int64_t warp_floats(int64_t E, int64_t G) { return 5 * E + G + 2; }

__device__ inline warp_smem carve(float *base, int warp, int64_t E, int64_t G)
{
    float *p = base + (int64_t)warp * warp_floats(E, G);
    warp_smem w;
    w.z = p;
    w.s = p + E;
    w.v = p + 2 * E;
    w.idx = (int *)(p + 3 * E);
    w.acc = p + 4 * E;       /* [E+2] */
    w.gs = p + 5 * E + 2;    /* [G] */
    return w;
}

/* Scores of one row (z already in w.z): s, and the row's max, sum and lse.
 * Returns false when the row holds NaN/Inf. */
__device__ bool row_scores(const moe_cuda_router_args &a, const warp_smem &w, int lane, float *rowsum,
                           double *lse)
{
    const int E = (int)a.E;
    float m = -INFINITY;
    int bad = 0;
    for (int j = lane; j < E; j += 32) {
        float x = w.z[j];
        bad |= !isfinite(x);
        m = fmaxf(m, x);
    }
    if (warp_reduce(bad, d_or{})) return false;
    m = warp_reduce(m, d_fmax{});
    float sum = 0.0f;
    for (int j = lane; j < E; j += 32) sum += expf(w.z[j] - m);
    sum = warp_reduce(sum, d_sum{});
    *lse = (double)m + log((double)sum);
    if (a.score == MOE_SCORE_SOFTMAX) {
        float inv = 1.0f / sum;
        for (int j = lane; j < E; j += 32) w.s[j] = expf(w.z[j] - m) * inv;
        *rowsum = 1.0f;
    } else {
        float off = (float)a.score_offset, rs = 0.0f;
        for (int j = lane; j < E; j += 32) {
            float q = 1.0f / (1.0f + expf(-w.z[j])) + off;
            w.s[j] = q;
            rs += q;
        }
        *rowsum = warp_reduce(rs, d_sum{});
    }
    __syncwarp();
    return true;
}

template <typename TZ>
__global__ void router_forward_kernel(moe_cuda_router_args a, moe_cuda_router_out o, const TZ *z,
                                      double *partial, int W)
{
    extern __shared__ float smem[];
    const int64_t T = a.T;
    const int E = (int)a.E, K = (int)a.K, G = (int)a.groups;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    warp_smem w = carve(smem, warp, E, G);
    int *cnt = (int *)(smem + (int64_t)W * warp_floats(E, G)); /* [2E] block counts */
    for (int j = threadIdx.x; j < 2 * E; j += blockDim.x) cnt[j] = 0;
    for (int j = lane; j < E + 2; j += 32) w.acc[j] = 0.0f;
    __syncthreads();

    for (int64_t t = (int64_t)blockIdx.x * W + warp; t < T; t += (int64_t)gridDim.x * W) {
        const bool valid = !a.valid || a.valid[t];
        for (int j = lane; j < E; j += 32) w.z[j] = load_z(z, t * E + j);
        __syncwarp();
        float rowsum;
        double lse;
        if (!row_scores(a, w, lane, &rowsum, &lse)) { /* placeholders; the caller reports */
            if (lane == 0) atomicAdd(o.bad_rows, 1);
            for (int k = lane; k < K; k += 32) {
                o.ids[t * K + k] = k;
                o.weights[t * K + k] = 0.0f;
            }
            __syncwarp();
            continue;
        }
        if (o.s)
            for (int j = lane; j < E; j += 32) o.s[t * E + j] = w.s[j];
        if (o.lse && lane == 0) o.lse[t] = (float)lse;

        /* selection values */
        const float *base = a.select_on_logits ? w.z : w.s;
        for (int j = lane; j < E; j += 32) w.v[j] = a.bias ? base[j] + a.bias[j] : base[j];
        __syncwarp();
        if (G > 0) {
            const int per = E / G;
            for (int g = lane; g < G; g += 32) w.gs[g] = top_sum(w.v + g * per, per, (int)a.group_m);
            __syncwarp();
            warp_topk(w.gs, G, (int)a.group_topk, w.idx, lane);
            /* flags in gs: 1 for kept groups */
            for (int g = lane; g < G; g += 32) w.gs[g] = 0.0f;
            __syncwarp();
            for (int i = lane; i < a.group_topk; i += 32) w.gs[w.idx[i]] = 1.0f;
            __syncwarp();
            for (int j = lane; j < E; j += 32)
                if (w.gs[j / per] == 0.0f) w.v[j] = -INFINITY;
            __syncwarp();
        }
        warp_topk(w.v, E, K, w.idx, lane);

        /* weights (K-level sums in double, as on the CPU) */
        double denom = 1.0, m2 = -INFINITY;
        if (a.wmode == MOE_WMODE_POST_SOFTMAX) {
            for (int k = lane; k < K; k += 32) m2 = fmax(m2, (double)w.z[w.idx[k]]);
            for (int o2 = 16; o2 > 0; o2 >>= 1) m2 = fmax(m2, __shfl_xor_sync(0xffffffffu, m2, o2));
            double sum = 0;
            for (int k = lane; k < K; k += 32) sum += (double)expf((float)((double)w.z[w.idx[k]] - m2));
            denom = warp_reduce(sum, d_sum{});
        } else if (a.wnorm != MOE_WNORM_NONE) {
            double sum = 0;
            for (int k = lane; k < K; k += 32) {
                double u = w.s[w.idx[k]];
                sum += a.wnorm == MOE_WNORM_PNORM ? pow(u, a.norm_p) : u;
            }
            sum = warp_reduce(sum, d_sum{});
            denom = a.wnorm == MOE_WNORM_SUM ? sum + a.norm_eps : pow(sum, 1.0 / a.norm_p);
        }
        for (int k = lane; k < K; k += 32) {
            int e = w.idx[k];
            double wu = a.wmode == MOE_WMODE_POST_SOFTMAX
                            ? (double)expf((float)((double)w.z[e] - m2)) / denom
                            : (double)w.s[e] / denom;
            o.ids[t * K + k] = e;
            o.weights[t * K + k] = valid ? (float)(wu * a.scaling) : 0.0f;
            if (valid) atomicAdd(&cnt[e], 1);
        }
        __syncwarp();
        if (!valid) continue;

        /* loss statistics of the valid row */
        if (o.loss_counts) {
            bool own = a.count_topk && (a.bias || G > 0 || a.select_on_logits);
            if (own) {
                warp_topk(w.s, E, K, w.idx, lane);
            }
            for (int k = lane; k < K; k += 32) atomicAdd(&cnt[E + w.idx[k]], 1);
            __syncwarp();
        }
        float inv = a.score == MOE_SCORE_SOFTMAX ? 1.0f : (float)(1.0 / ((double)rowsum + a.loss_eps));
        for (int j = lane; j < E; j += 32) w.acc[j] += w.s[j] * inv;
        if (lane == 0) {
            w.acc[E] += (float)(lse * lse);
            w.acc[E + 1] += 1.0f;
        }
        __syncwarp();
    }
    __syncthreads();
    /* block partials in double, warps in order; counts are exact integers */
    for (int j = threadIdx.x; j < E + 2; j += blockDim.x) {
        double sum = 0;
        for (int q = 0; q < W; q++) sum += (double)carve(smem, q, E, G).acc[j];
        partial[(int64_t)blockIdx.x * (E + 2) + j] = sum;
    }
    for (int j = threadIdx.x; j < E; j += blockDim.x) {
        if (cnt[j]) atomicAdd(&o.counts[j], cnt[j]);
        if (o.loss_counts && cnt[E + j]) atomicAdd(&o.loss_counts[j], cnt[E + j]);
    }
}

/* stats[j] = Σ_b partial[b][j], blocks in order. */
__global__ void reduce_partials(double *stats, const double *partial, int B, int n)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    double sum = 0;
    for (int b = 0; b < B; b++) sum += partial[(int64_t)b * n + j];
    stats[j] = sum;
}

__global__ void balance_coeffs_kernel(float *W, const int32_t *counts, const double *stats, int64_t E,
                                      int64_t K, double alpha)
{
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= E) return;
    double Tv = stats[E + 1];
    W[i] = Tv > 0 ? (float)(alpha * (double)E / ((double)K * Tv * Tv) * (double)counts[i]) : 0.0f;
}

/* The gradient of slot k's unscaled weight: g·scaling on kept slots. */
__device__ __forceinline__ double grad_k(const moe_cuda_router_args &a, const moe_cuda_router_grad &g,
                                         int64_t t, int k, bool valid)
{
    bool kp = g.kept ? g.kept[t * a.K + k] != 0 : valid;
    return kp ? (double)g.dweights[t * a.K + k] * a.scaling : 0.0;
}

template <typename TZ>
__global__ void router_backward_kernel(moe_cuda_router_args a, moe_cuda_router_grad g, const TZ *z,
                                       TZ *dz, int W)
{
    extern __shared__ float smem[];
    const int64_t T = a.T;
    const int E = (int)a.E, K = (int)a.K;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    warp_smem w = carve(smem, warp, E, 0); /* v holds dz, acc the aux coefficients */
    const double Tv = g.stats ? g.stats[E + 1] : 0.0;
    const double zc = Tv > 0 ? g.z_coeff * 2.0 / Tv : 0.0;

    for (int64_t t = (int64_t)blockIdx.x * W + warp; t < T; t += (int64_t)gridDim.x * W) {
        const bool valid = !a.valid || a.valid[t];
        for (int j = lane; j < E; j += 32) {
            w.z[j] = load_z(z, t * E + j);
            w.v[j] = 0.0f;
        }
        __syncwarp();
        float rowsum;
        double lse;
        if (!row_scores(a, w, lane, &rowsum, &lse)) {
            for (int j = lane; j < E; j += 32) store_z(dz, t * E + j, 0.0f);
            continue;
        }
        /* the weights' part, K-level work on lane 0 in double: dz at the
         * selected experts into v (sigmoid, post-softmax), or ds_k there and
         * the dot Σ ds_k s_k handed over in acc (softmax gather) */
        if (lane == 0) {
            float flag = 0.0f, hand = 0.0f;
            const int64_t *ids = g.ids + t * K;
            bool any = false;
            for (int k = 0; g.dweights && k < K; k++) {
                bool kp = g.kept ? g.kept[t * K + k] != 0 : valid;
                any |= kp && g.dweights[t * K + k] != 0.0f;
            }
            if (any && a.wmode == MOE_WMODE_POST_SOFTMAX) {
                double m2 = -INFINITY, sm = 0, dot = 0;
                for (int k = 0; k < K; k++) m2 = fmax(m2, (double)w.z[ids[k]]);
                for (int k = 0; k < K; k++) sm += (double)expf((float)((double)w.z[ids[k]] - m2));
                for (int k = 0; k < K; k++)
                    dot += grad_k(a, g, t, k, valid) * (double)expf((float)((double)w.z[ids[k]] - m2)) / sm;
                for (int k = 0; k < K; k++) {
                    double wu = (double)expf((float)((double)w.z[ids[k]] - m2)) / sm;
                    w.v[ids[k]] = (float)(wu * (grad_k(a, g, t, k, valid) - dot));
                }
            } else if (any) {
                double su = 0, c = 0, sdot = 0;
                for (int k = 0; k < K; k++) {
                    double u = w.s[ids[k]];
                    c += grad_k(a, g, t, k, valid) * u;
                    su += a.wnorm == MOE_WNORM_PNORM ? pow(u, a.norm_p) : u;
                }
                double d = su + a.norm_eps, nrm = a.wnorm == MOE_WNORM_PNORM ? pow(su, 1.0 / a.norm_p) : 1.0;
                for (int k = 0; k < K; k++) {
                    double gkk = grad_k(a, g, t, k, valid), u = w.s[ids[k]], ds;
                    if (a.wnorm == MOE_WNORM_SUM) ds = gkk / d - c / (d * d);
                    else if (a.wnorm == MOE_WNORM_PNORM)
                        ds = gkk / nrm - c / (nrm * nrm) * pow(u / nrm, a.norm_p - 1.0);
                    else ds = gkk;
                    if (a.score == MOE_SCORE_SIGMOID) {
                        double sg = u - a.score_offset;
                        w.v[ids[k]] = (float)(ds * sg * (1.0 - sg));
                    } else {
                        w.v[ids[k]] = (float)ds;
                        sdot += ds * u;
                    }
                }
                if (a.score == MOE_SCORE_SOFTMAX) {
                    flag = 1.0f;
                    hand = (float)sdot;
                }
            }
            w.acc[0] = hand;
            w.acc[1] = flag;
        }
        __syncwarp();
        /* softmax gather: dz_j = s_j (ds_j − Σ_k ds_k s_k), ds_j = 0 off the selection */
        const bool softmax_gather = w.acc[1] != 0.0f;
        const float sdot = w.acc[0];
        __syncwarp();
        /* the balance and z terms (valid rows) */
        float dot = 0.0f, S = 0.0f;
        if (valid && g.aux_w)
            for (int j = lane; j < E; j += 32) {
                dot += g.aux_w[j] * w.s[j];
                S += w.s[j];
            }
        dot = warp_reduce(dot, d_sum{});
        S = warp_reduce(S, d_sum{});
        const float coef = valid ? (float)(zc * lse) : 0.0f;
        const float invD = (float)(1.0 / ((double)S + a.loss_eps)), c2 = dot * invD * invD;
        const float off = (float)a.score_offset;
        for (int j = lane; j < E; j += 32) {
            float s = w.s[j], d = w.v[j];
            if (softmax_gather) d = s * (d - sdot);
            if (valid && g.aux_w) {
                if (a.score == MOE_SCORE_SOFTMAX) d += s * (g.aux_w[j] - dot);
                else {
                    float sg = s - off;
                    d += (g.aux_w[j] * invD - c2) * sg * (1.0f - sg);
                }
            }
            if (coef != 0.0f) d += coef * (a.score == MOE_SCORE_SOFTMAX ? s : expf(w.z[j] - (float)lse));
            store_z(dz, t * E + j, d);
        }
        __syncwarp();
    }
}

/* Warps per block for rows of E (each warp keeps warp_floats of smem). */
int warps_for(int64_t E, int64_t G, int extra_bytes_per_block)
{
    int64_t per = warp_floats(E, G) * 4;
    int64_t w = (SMEM_BUDGET - extra_bytes_per_block) / per;
    return w < 1 ? 0 : (w > 8 ? 8 : (int)w);
}

int blocks_for(int64_t T, int W)
{
    int64_t b = (T + W - 1) / W;
    return b < 1 ? 1 : (b > MAX_BLOCKS ? MAX_BLOCKS : (int)b);
}

moe_status check_args(const moe_cuda_router_args *a)
{
    if (a->E < 1 || a->E > MOE_CUDA_ROUTER_MAX_E)
        return moe_fail(MOE_ERR_UNSUPPORTED, OP, "E = %lld experts; the fused router handles 1..%d",
                        (long long)a->E, MOE_CUDA_ROUTER_MAX_E);
    if (a->K < 1 || a->K > a->E)
        return moe_fail(MOE_ERR_ARG, OP, "top-k %lld must be in [1, E = %lld]", (long long)a->K, (long long)a->E);
    if (a->groups > 0) {
        if (a->E % a->groups || a->group_topk < 1 || a->group_topk > a->groups || a->group_m < 1 ||
            a->group_m > a->E / a->groups || a->K > a->group_topk * (a->E / a->groups))
            return moe_fail(MOE_ERR_ARG, OP,
                            "bad groups: E %lld, G %lld, kept %lld, top-m %lld, K %lld (need G | E, 1 <= kept "
                            "<= G, 1 <= m <= E/G, K <= kept·E/G)",
                            (long long)a->E, (long long)a->groups, (long long)a->group_topk,
                            (long long)a->group_m, (long long)a->K);
    }
    if (warps_for(a->E, a->groups, (int)(8 * a->E)) < 1)
        return moe_fail(MOE_ERR_UNSUPPORTED, OP, "E = %lld, G = %lld: a row does not fit in shared memory",
                        (long long)a->E, (long long)a->groups);
    return MOE_OK;
}

} // namespace

extern "C" size_t moe_cuda_router_workspace(int64_t T, int64_t E, int64_t G)
{
    int W = warps_for(E, G, (int)(8 * E));
    if (W < 1) W = 1;
    return sizeof(double) * (size_t)blocks_for(T, W) * (size_t)(E + 2);
}

extern "C" moe_status moe_cuda_router_forward(const moe_cuda_router_args *a, const moe_cuda_router_out *o)
{
    MOE_TRY(check_args(a));
    if (!o->ids || !o->weights || !o->counts || !o->stats || !o->bad_rows || !o->work)
        return moe_fail(MOE_ERR_ARG, OP, "ids, weights, counts, stats, bad_rows and work are required");
    const int64_t E = a->E, G = a->groups;
    cudaStream_t st = moe_cuda_stream();
    CHECK_CUDA(OP, cudaMemsetAsync(o->counts, 0, sizeof(int32_t) * (size_t)E, st));
    if (o->loss_counts) CHECK_CUDA(OP, cudaMemsetAsync(o->loss_counts, 0, sizeof(int32_t) * (size_t)E, st));
    CHECK_CUDA(OP, cudaMemsetAsync(o->bad_rows, 0, sizeof(int32_t), st));
    const int W = warps_for(E, G, (int)(8 * E));
    const int B = blocks_for(a->T, W);
    size_t smem = sizeof(float) * (size_t)(W * warp_floats(E, G)) + sizeof(int) * (size_t)(2 * E);
    double *partial = (double *)o->work;
    if (a->z_bf16)
        router_forward_kernel<__nv_bfloat16><<<B, 32 * W, smem, st>>>(*a, *o, (const __nv_bfloat16 *)a->z, partial, W);
    else
        router_forward_kernel<float><<<B, 32 * W, smem, st>>>(*a, *o, (const float *)a->z, partial, W);
    CHECK_LAUNCH(OP);
    int n = (int)(E + 2);
    reduce_partials<<<(n + 127) / 128, 128, 0, st>>>(o->stats, partial, B, n);
    CHECK_LAUNCH(OP);
    return MOE_OK;
}

extern "C" moe_status moe_cuda_router_balance_coeffs(float *W, const int32_t *counts, const double *stats,
                                                     int64_t E, int64_t K, double alpha)
{
    balance_coeffs_kernel<<<(unsigned)((E + 255) / 256), 256, 0, moe_cuda_stream()>>>(W, counts, stats, E, K, alpha);
    CHECK_LAUNCH("cuda-router-balance-coeffs");
    return MOE_OK;
}

extern "C" moe_status moe_cuda_router_backward(const moe_cuda_router_args *a, const moe_cuda_router_grad *g)
{
    MOE_TRY(check_args(a));
    if (!g->dz || !g->ids)
        return moe_fail(MOE_ERR_ARG, OP, "backward needs ids and dz");
    if (g->z_coeff != 0 && !g->stats)
        return moe_fail(MOE_ERR_ARG, OP, "the z term needs the forward's stats (valid tokens)");
    const int64_t E = a->E;
    const int W = warps_for(E, 0, 0);
    const int B = blocks_for(a->T, W);
    size_t smem = sizeof(float) * (size_t)(W * warp_floats(E, 0));
    cudaStream_t st = moe_cuda_stream();
    if (a->z_bf16)
        router_backward_kernel<__nv_bfloat16><<<B, 32 * W, smem, st>>>(*a, *g, (const __nv_bfloat16 *)a->z,
                                                                      (__nv_bfloat16 *)g->dz, W);
    else
        router_backward_kernel<float><<<B, 32 * W, smem, st>>>(*a, *g, (const float *)a->z, (float *)g->dz, W);
    CHECK_LAUNCH(OP);
    return MOE_OK;
}
