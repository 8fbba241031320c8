#!/usr/bin/env python3
"""PyTorch eager reference for tests/bench/gpu-router.c: the same router
forward + backward from given logits (gate GEMM excluded): sigmoid scores,
expert bias for selection, group-limited top-k (group score = sum of the top-2
scores, GROUP_TOPK groups kept), weights renormalised and scaled by 2.5,
counts of the plain top-k, micro-batch balance loss (s / sum s) and z-loss,
backward of sum(weights * R) + aux.

usage: router_torch.py T E K G GROUP_TOPK   -> prints "torch_ms <mean ms>"
"""
import sys
import time

import torch


def route(z, bias, R, K, G, keep, alpha=1e-4, alpha_z=1e-3):
    T, E = z.shape
    s = torch.sigmoid(z)
    v = (s + bias).detach()
    gs = v.view(T, G, E // G).topk(2, dim=-1).values.sum(-1)
    gidx = gs.topk(keep, dim=-1).indices
    gmask = torch.zeros(T, G, dtype=torch.bool, device=z.device).scatter_(1, gidx, True)
    v = v.masked_fill(~gmask.repeat_interleave(E // G, dim=1), float("-inf"))
    ids = v.topk(K, dim=-1).indices
    u = s.gather(1, ids)
    w = u / (u.sum(-1, keepdim=True) + 1e-20) * 2.5
    counts = torch.bincount(s.detach().topk(K, dim=-1).indices.flatten(), minlength=E).float()
    p = s / (s.sum(-1, keepdim=True) + 1e-20)
    aux = E / (K * T * T) * (counts * p.sum(0)).sum()
    zl = torch.logsumexp(z, dim=-1).pow(2).mean()
    return (w * R).sum() + alpha * aux + alpha_z * zl


def main():
    T, E, K, G, keep = (int(a) for a in sys.argv[1:6])
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(1)
    z = torch.randn(T, E, device=dev, generator=g).requires_grad_(True)
    bias = torch.randn(E, device=dev, generator=g) * 0.01
    R = torch.randn(T, K, device=dev, generator=g)
    reps = 20
    for _ in range(2):
        route(z, bias, R, K, G, keep).backward()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        z.grad = None
        route(z, bias, R, K, G, keep).backward()
    torch.cuda.synchronize()
    print("torch_ms %.6f" % ((time.perf_counter() - t0) * 1e3 / reps))


if __name__ == "__main__":
    main()
