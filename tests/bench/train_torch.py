#!/usr/bin/python3
"""train_torch.py — the PyTorch eager side of tests/bench/bench-train.scm.

The same MoE transformer as moelab's (pre-norm decoder: RMSNorm, attention
with rotate-half RoPE and a causal softmax, top-k softmax router with the
micro-batch balancing loss and the z-loss, SwiGLU experts), written
independently in plain PyTorch (f32, eager), trained with torch.optim.AdamW
and clip_grad_norm_ from the initial weights and on the batches that
bench-train.scm wrote to DIR:

    /usr/bin/python3 tests/bench/train_torch.py DIR

It takes a step each time a line arrives on standard input and answers
with "step MS"; one more line, and it measures the sgemm rate and prints
its results (bench-train.scm's two sides take turns this way; `yes |` runs
it alone).

DIR/manifest.json: {"config": {...}, "params": {name: shape, ...},
"steps": N, "warmup": W, "lr", "betas", "eps", "weight_decay", "clip",
"threads"}; DIR/<name>.f32 each parameter (raw little-endian f32);
DIR/tokens.f32 and DIR/targets.f32 the N batches [N B S]. Prints one JSON
line: the losses of every step, the mean time of the steps after the first
W, the peak RSS and the sgemm rate of this process.
"""
import json
import math
import os
import resource
import sys
import time

import torch
import torch.nn.functional as Fn


def rms(x, g, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g


class Rope:
    def __init__(self, S, hd, theta):
        P = hd // 2
        inv = theta ** (-2.0 * torch.arange(P, dtype=torch.float64) / hd)
        ang = torch.arange(S, dtype=torch.float64)[:, None] * inv[None, :]
        self.cos = torch.cat([ang.cos(), ang.cos()], -1).float()[None, :, None, :]
        self.sin = torch.cat([ang.sin(), ang.sin()], -1).float()[None, :, None, :]
        self.P = P

    def __call__(self, x):
        P = self.P
        rot = torch.cat([-x[..., P:], x[..., :P]], -1)
        return x * self.cos + rot * self.sin


def attention(x, p, pre, c, rope, mask):
    B, S, D = x.shape
    H, KV = c["heads"], c["kv-heads"]
    hd = D // H
    q = rope((x @ p[pre + "attn.wq"].T).view(B, S, H, hd))
    k = rope((x @ p[pre + "attn.wk"].T).view(B, S, KV, hd))
    v = (x @ p[pre + "attn.wv"].T).view(B, S, KV, hd)
    if KV != H:
        k = k.repeat_interleave(H // KV, dim=2)
        v = v.repeat_interleave(H // KV, dim=2)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    sc = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    sc = sc.masked_fill(mask, float("-inf"))
    o = (sc.softmax(-1) @ v).transpose(1, 2).reshape(B, S, H * hd)
    return o @ p[pre + "attn.wo"].T


def moe(x, p, pre, c, coeffs):
    B, S, D = x.shape
    E, K = c["experts"], c["top-k"]
    x2 = x.reshape(B * S, D)
    T = x2.shape[0]
    z = x2 @ p[pre + "moe.router.weight"].T
    topv, topi = z.topk(K, dim=-1)
    w = topv.softmax(-1)
    out = torch.zeros_like(x2)
    wg, wu, wd = p[pre + "moe.experts.w-gate"], p[pre + "moe.experts.w-up"], p[pre + "moe.experts.w-down"]
    for e in range(E):
        rows, slots = (topi == e).nonzero(as_tuple=True)
        if len(rows) == 0:
            continue
        xe = x2[rows]
        y = (Fn.silu(xe @ wg[e]) * (xe @ wu[e])) @ wd[e]
        out = out.index_add(0, rows, y * w[rows, slots][:, None])
    counts = torch.bincount(topi.reshape(-1), minlength=E).float()
    P = z.softmax(-1).sum(0)
    aux = 0.0
    if "micro-batch" in coeffs:
        aux = aux + coeffs["micro-batch"] * E / (K * T * T) * (counts * P).sum()
    if "z" in coeffs:
        aux = aux + coeffs["z"] * z.logsumexp(-1).pow(2).mean()
    return out.reshape(B, S, D), aux


def forward(p, c, tokens, targets, rope, mask, coeffs):
    eps = c["norm-eps"]
    x = p["embed"][tokens]
    aux = 0.0
    for l in range(c["layers"]):
        pre = "layers.%d." % l
        h = x + attention(rms(x, p[pre + "attn-norm"], eps), p, pre, c, rope, mask)
        y, a = moe(rms(h, p[pre + "ffn-norm"], eps), p, pre, c, coeffs)
        aux = aux + a
        x = h + y
    logits = rms(x, p["norm"], eps) @ p["lm-head"].T
    ce = Fn.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return ce, aux


def sgemm_gflops(n=1024, reps=5):
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2.0 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def main():
    d = sys.argv[1]
    man = json.load(open(os.path.join(d, "manifest.json")))
    torch.set_num_threads(man["threads"])
    c = man["config"]
    p = {}
    for name, shape in man["params"].items():  # in the model's order
        t = torch.from_file(os.path.join(d, name + ".f32"), size=math.prod(shape), dtype=torch.float32)
        p[name] = t.reshape(shape).clone().requires_grad_(True)
    N, B, S = man["steps"], man["batch"], man["seq"]
    tokens = torch.from_file(os.path.join(d, "tokens.f32"), size=N * B * S, dtype=torch.float32)
    targets = torch.from_file(os.path.join(d, "targets.f32"), size=N * B * S, dtype=torch.float32)
    tokens = tokens.long().reshape(N, B, S)
    targets = targets.long().reshape(N, B, S)
    decay = [t for n, t in p.items() if not any(s in n for s in man["no_decay"])]
    nodecay = [t for n, t in p.items() if any(s in n for s in man["no_decay"])]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": man["weight_decay"]},
                             {"params": nodecay, "weight_decay": 0.0}],
                            lr=man["lr"], betas=tuple(man["betas"]), eps=man["eps"])
    rope = Rope(S, c["hidden"] // c["heads"], c["rope-theta"])
    mask = torch.triu(torch.ones(S, S, dtype=torch.bool), 1)
    coeffs = dict(man["losses"])
    losses, times = [], []
    for s in range(N):
        if not sys.stdin.readline():
            sys.exit("train_torch.py: standard input ended before step %d" % s)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        ce, aux = forward(p, c, tokens[s], targets[s], rope, mask, coeffs)
        (ce + aux).backward()
        torch.nn.utils.clip_grad_norm_(list(p.values()), man["clip"])
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(ce.item())
        print("step %.3f" % (1000 * times[-1]), flush=True)
    sys.stdin.readline()  # the other side is idle now
    W = man["warmup"]
    step_s = sum(times[W:]) / len(times[W:])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"losses": losses, "step_s": step_s, "tokens_per_s": B * S / step_s,
                      "peak_rss": rss, "sgemm_gflops": sgemm_gflops(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
