#!/usr/bin/python3
"""moe_reference.py - the PyTorch (CPU) reference MoE layer for bench-moe.

The usual eager implementation (as in Hugging Face's Mixtral block): a
linear router, softmax over the top-k logits, then a loop over experts that
picks each expert's tokens with index_select, runs the SwiGLU MLP and adds
the weighted result back in place with index_add_. Forward and backward
(autograd) are timed together.

Usage: moe_reference.py DIR T D F E K THREADS ITERS
DIR holds the inputs bench-moe wrote as raw little-endian f32:
  x [T D], router [E D], w_gate [E D F], w_up [E D F], w_down [E F D],
  grad [T D] (the output gradient).
Writes DIR/out.f32 [T D] and DIR/dx.f32 [T D] (first iteration's output and
input gradient, for bench-moe to compare) and prints one line:
  seconds=<best fwd+bwd time> torch=<version> threads=<n>
"""
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


def load(path, shape):
    return torch.from_numpy(np.fromfile(path, dtype="<f4").reshape(shape).copy())


def moe_layer(x, w_router, w_gate, w_up, w_down, k):
    """out[t] = sum over the top-k experts e of w[t, e] * mlp_e(x[t])."""
    n_tok = x.shape[0]
    n_exp = w_router.shape[0]
    logits = x @ w_router.t()
    top_logits, top_ids = logits.topk(k, dim=-1)
    weights = torch.softmax(top_logits, dim=-1)
    flat_ids = top_ids.reshape(-1)
    flat_w = weights.reshape(-1)
    token_of_slot = torch.arange(n_tok).repeat_interleave(k)
    out = torch.zeros_like(x)
    for e in range(n_exp):
        slots = (flat_ids == e).nonzero().squeeze(1)
        if slots.numel() == 0:
            continue
        tokens = token_of_slot.index_select(0, slots)
        xe = x.index_select(0, tokens)
        h = F.silu(xe @ w_gate[e]) * (xe @ w_up[e])
        ye = (h @ w_down[e]) * flat_w.index_select(0, slots).unsqueeze(1)
        out.index_add_(0, tokens, ye)
    return out


def main():
    d, n_tok, dim, ffn, n_exp, k, threads, iters = sys.argv[1:9]
    n_tok, dim, ffn, n_exp, k = int(n_tok), int(dim), int(ffn), int(n_exp), int(k)
    threads, iters = int(threads), int(iters)
    torch.set_num_threads(threads)
    x = load(d + "/x.f32", (n_tok, dim)).requires_grad_()
    params = [
        load(d + "/router.f32", (n_exp, dim)),
        load(d + "/w_gate.f32", (n_exp, dim, ffn)),
        load(d + "/w_up.f32", (n_exp, dim, ffn)),
        load(d + "/w_down.f32", (n_exp, ffn, dim)),
    ]
    for p in params:
        p.requires_grad_()
    grad = load(d + "/grad.f32", (n_tok, dim))
    best = float("inf")
    for it in range(iters):
        for t in [x] + params:
            t.grad = None
        t0 = time.perf_counter()
        out = moe_layer(x, *params, k)
        out.backward(grad)
        best = min(best, time.perf_counter() - t0)
        if it == 0:
            out.detach().numpy().astype("<f4").tofile(d + "/out.f32")
            x.grad.numpy().astype("<f4").tofile(d + "/dx.f32")
    print("seconds=%.6f torch=%s threads=%d" % (best, torch.__version__, torch.get_num_threads()))


if __name__ == "__main__":
    main()
