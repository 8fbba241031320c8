#!/usr/bin/env python3
"""PyTorch eager reference MoE layer for tests/bench/gpu-moe.c, bf16 on the
GPU: gate linear, softmax over the top-K logits, micro-batch balance loss,
tokens sorted by expert, one SwiGLU MLP per expert (a Python loop of
matmuls), weighted scatter-add back; forward + backward of
sum(out * dout) + 1e-3 * aux.

usage: moe_torch_gpu.py T D F E K   -> prints "torch_tokens_per_s <value>"
"""
import sys
import time

import torch
import torch.nn.functional as Fn


def layer(x, Wr, wg, wu, wd, K):
    T, E = x.shape[0], Wr.shape[0]
    logits = x @ Wr.t()
    topv, ids = logits.topk(K, dim=-1)
    w = torch.softmax(topv.float(), dim=-1)
    probs = torch.softmax(logits.float(), dim=-1)
    counts = torch.bincount(ids.flatten(), minlength=E).float()
    aux = E / (K * T * T) * (counts * probs.sum(0)).sum()
    flat = ids.flatten()
    order = torch.argsort(flat, stable=True)
    tok = order // K
    xs = x[tok]
    sizes = counts.long().tolist()
    outs, start = [], 0
    for e in range(E):
        n = sizes[e]
        xe = xs[start:start + n]
        outs.append((Fn.silu(xe @ wg[e]) * (xe @ wu[e])) @ wd[e])
        start += n
    y = torch.cat(outs) * w.flatten()[order].unsqueeze(1).to(x.dtype)
    out = torch.zeros_like(x).index_add_(0, tok, y)
    return out, aux


def main():
    T, D, F, E, K = (int(a) for a in sys.argv[1:6])
    dev, dt = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(1)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, device=dev, generator=g) * scale).to(dt).requires_grad_(True)

    x = rnd(T, D)
    Wr = rnd(E, D, scale=0.02)
    wg, wu = rnd(E, D, F, scale=D ** -0.5), rnd(E, D, F, scale=D ** -0.5)
    wd = rnd(E, F, D, scale=F ** -0.5)
    dout = (torch.randn(T, D, device=dev, generator=g) * 1e-2).to(dt)
    reps = 10

    def step():
        for p in (x, Wr, wg, wu, wd):
            p.grad = None
        out, aux = layer(x, Wr, wg, wu, wd, K)
        ((out.float() * dout.float()).sum() + 1e-3 * aux).backward()

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    torch.cuda.synchronize()
    print("torch_tokens_per_s %.1f" % (T * reps / (time.perf_counter() - t0)))


if __name__ == "__main__":
    main()
