/* moelab.h — the moelab C core in one include.
 *
 * A short tour. Tensors are views on refcounted storage; every call returns a
 * moe_status and hands out owned references:
 *
 *     #include <moelab.h>
 *
 *     moe_tensor *x, *w, *y, *loss;
 *     moe_rng rng;  moe_rng_init(&rng, 42);
 *     moe_tensor_randn(&x, &rng, MOE_F32, MOE_CPU, 2, (int64_t[]){4, 8});
 *     moe_tensor_randn(&w, &rng, MOE_F32, MOE_CPU, 2, (int64_t[]){3, 8});
 *     moe_tensor_requires_grad_(w, true);
 *
 *     if (moe_linear(&y, x, w, NULL) != MOE_OK)          // y = x wᵀ  [4 3]
 *         fprintf(stderr, "%s\n", moe_last_error());     // "linear: …"
 *     moe_mean(&loss, y, 0, NULL, false);                // all dims → scalar
 *     moe_backward(loss, NULL, false);                   // fills w->grad
 *
 *     moe_tensor_release(loss); moe_tensor_release(y);
 *     moe_tensor_release(x);    moe_tensor_release(w);
 *
 * Layers of the core:
 *   error.h     status codes and moe_last_error()
 *   dtype.h     f32 f64 bf16 i32 i64 bool; cpu and cuda devices
 *   tensor.h    creation, views, RNG, element access
 *   autograd.h  grad mode, backward, hooks, custom functions
 *   ops.h       every op, forward and backward
 *   dist/comm.h process groups and (differentiable) collectives: threads,
 *               MPI and NCCL backends
 *   dist/mesh.h the world factored into named dims (pp dp cp tp ep)
 *   moe/router.h     routers: scoring, top-k, groups, capacity, expert bias
 *   moe/aux_loss.h   every load-balancing loss, z-loss, balance trackers
 *   moe/metrics.h    per-layer routing metrics (MaxVio, CV, entropy, …)
 *   moe/dispatch.h   token permutation by expert and the weighted combine
 *   moe/experts.h    E MLPs as a grouped GEMM (SwiGLU, GELU)
 *   moe/layer.h      the MoE layer: router + dispatch + experts (+ shared), EP
 *   train/optim.h    AdamW and SGD over named parameters, gradient clipping
 *   train/schedule.h learning-rate schedules (constant, cosine, wsd)
 *   train/log.h      metrics files (JSON Lines, through jansson)
 */
#ifndef MOELAB_H
#define MOELAB_H

#include "autograd.h"
#include "dist/comm.h"
#include "dist/grad_sync.h"
#include "dist/mesh.h"
#include "dtype.h"
#include "error.h"
#include "moe/aux_loss.h"
#include "moe/dispatch.h"
#include "moe/experts.h"
#include "moe/layer.h"
#include "moe/metrics.h"
#include "moe/router.h"
#include "ops.h"
#include "tensor.h"
#include "train/log.h"
#include "train/optim.h"
#include "train/schedule.h"

#define MOELAB_VERSION "0.1.0"

#endif
