#!/usr/bin/python3
"""gen_model_refs.py — reference vectors for moelab's MoE transformer
(tests/unit/check_model.c and tests/scheme/model.scm read them).

An independent implementation in PyTorch (f64 autograd) of the architecture
the manual's "Models" chapter describes; it shares no code with moelab's C
core. Run with Debian's python3-torch:

    /usr/bin/python3 tests/reference/gen_model_refs.py > tests/reference/model_refs.txt

For each case it draws parameters (moelab's tests set them by name, so
moelab's own initialisation does not matter), tokens and targets (some
targets -100, ignored), and writes the logits, the mean cross-entropy, each
MoE layer's unscaled aux losses, and the gradient of every parameter with
respect to  cross-entropy + Σ_layers Σ_kinds coefficient × aux  (what both
gradient modes deliver).

Model: x = embed[tokens]; per layer h = x + attn(rms(x; attn-norm)),
x = h + ffn(rms(h; ffn-norm)); logits = rms(x; norm)·lm-headᵀ (embedᵀ when
tied); rms(x; g) = x·(mean(x²) + eps)^-1/2·g. Attention: q, k, v = x Wᵀ per
head, RoPE rotate-half (angle pos·θ^(-2i/hd)) on q and k, kv heads repeated
to the query heads (query head h reads kv head h·KV/H), causal
softmax(q kᵀ/√hd) v, heads concatenated, ·Woᵀ. Dense MLP (silu(x Wgᵀ) ⊙ x Wuᵀ)
Wdᵀ. MoE layer: router logits z = x Wrᵀ, top-k of z, weights softmax over the
K chosen logits; expert e: (silu(x Wg_e) ⊙ x Wu_e) Wd_e with [E D F] / [E F D]
weights; plus the shared MLP (silu(x Sg) ⊙ x Su) Sd ([D Fs] / [Fs D]).
Losses over the T = B·S tokens of the batch: micro-batch
E/(K·T²)·Σ_i c_i P_i (c_i tokens choosing expert i, P_i = Σ_t softmax(z_t)_i)
and z = mean_t logsumexp(z_t)².

File format (one record per line): case NAME / set KEY VALUE /
tensor NAME DTYPE NDIM D0 .. Dn-1 V0 V1 ... Parameters are "p:NAME", their
gradients "g:NAME", aux losses "aux:LAYER:KIND".
"""
import math
import sys

import torch
import torch.nn.functional as Fn

torch.set_default_dtype(torch.float64)
OUT = sys.stdout
# The first lines of every file: the format the C reader (tests/reference/refs.c)
# checks, and the command that wrote the file.
FORMAT_LINES = ("# moelab-refs 1\n"
                "# regenerate: /usr/bin/python3 tests/reference/gen_model_refs.py > tests/reference/model_refs.txt\n")


def write_tensor(name, t, dtype="f64"):
    shape = list(t.shape)
    flat = t.detach().reshape(-1).tolist()
    vals = " ".join(str(int(v)) if dtype == "i64" else repr(float(v)) for v in flat)
    OUT.write("tensor %s %s %d %s %s\n" % (name, dtype, len(shape), " ".join(map(str, shape)), vals))


def rms(x, g, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g


def rope(x, theta):
    B, S, N, hd = x.shape
    P = hd // 2
    inv = theta ** (-2.0 * torch.arange(P, dtype=torch.float64) / hd)
    ang = torch.arange(S, dtype=torch.float64)[:, None] * inv[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1)[None, :, None, :]
    sin = torch.cat([ang.sin(), ang.sin()], -1)[None, :, None, :]
    rot = torch.cat([-x[..., P:], x[..., :P]], -1)
    return x * cos + rot * sin


def attention(x, p, pre, c):
    B, S, D = x.shape
    H, KV = c["heads"], c["kv_heads"]
    hd = D // H
    q = (x @ p[pre + "attn.wq"].T).view(B, S, H, hd)
    k = (x @ p[pre + "attn.wk"].T).view(B, S, KV, hd)
    v = (x @ p[pre + "attn.wv"].T).view(B, S, KV, hd)
    q, k = rope(q, c["rope_theta"]), rope(k, c["rope_theta"])
    k = k.repeat_interleave(H // KV, dim=2)
    v = v.repeat_interleave(H // KV, dim=2)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B H S hd]
    sc = q @ k.transpose(-1, -2) / math.sqrt(hd)
    future = torch.triu(torch.ones(S, S, dtype=torch.bool), 1)
    sc = sc.masked_fill(future, float("-inf"))
    o = (sc.softmax(-1) @ v).transpose(1, 2).reshape(B, S, H * hd)
    return o @ p[pre + "attn.wo"].T


def swiglu_xw(x, wg, wu, wd):  # weights in x·W layout
    return (Fn.silu(x @ wg) * (x @ wu)) @ wd


def moe(x, p, pre, c, aux):
    B, S, D = x.shape
    E, K = c["experts"], c["top_k"]
    x2 = x.reshape(B * S, D)
    T = x2.shape[0]
    z = x2 @ p[pre + "moe.router.weight"].T  # [T E]
    topv, topi = z.topk(K, dim=-1)
    srt = z.sort(-1, descending=True).values
    assert (srt[:, K - 1] - srt[:, K]).min() > 1e-3, "near tie in the routing: pick another seed"
    w = topv.softmax(-1)
    out = torch.zeros_like(x2)
    for e in range(E):
        rows, slots = (topi == e).nonzero(as_tuple=True)
        if len(rows) == 0:
            continue
        y = swiglu_xw(x2[rows], p[pre + "moe.experts.w-gate"][e], p[pre + "moe.experts.w-up"][e],
                      p[pre + "moe.experts.w-down"][e])
        out = out.index_add(0, rows, y * w[rows, slots][:, None])
    if pre + "moe.shared.w-up" in p:
        out = out + swiglu_xw(x2, p[pre + "moe.shared.w-gate"], p[pre + "moe.shared.w-up"],
                              p[pre + "moe.shared.w-down"])
    counts = torch.zeros(E).index_add(0, topi.reshape(-1), torch.ones(T * K))
    P = z.softmax(-1).sum(0)
    aux.append({"micro-batch": E / (K * T * T) * (counts * P).sum(),
                "z": z.logsumexp(-1).pow(2).mean()})
    return out.reshape(B, S, D)


def is_moe(c, l):
    return l >= c["first_dense"] and (l - c["first_dense"]) % c["moe_every"] == 0


def shapes(c):
    V, D, H, KV = c["vocab"], c["hidden"], c["heads"], c["kv_heads"]
    hd = D // H
    E, F, Fd = c["experts"], c["ffn"], c["dense_ffn"]
    Fs = c["shared_experts"] * F
    s = {"embed": [V, D]}
    for l in range(c["layers"]):
        pre = "layers.%d." % l
        s[pre + "attn-norm"] = [D]
        s[pre + "attn.wq"] = [H * hd, D]
        s[pre + "attn.wk"] = [KV * hd, D]
        s[pre + "attn.wv"] = [KV * hd, D]
        s[pre + "attn.wo"] = [D, H * hd]
        s[pre + "ffn-norm"] = [D]
        if is_moe(c, l):
            s[pre + "moe.router.weight"] = [E, D]
            s[pre + "moe.experts.w-gate"] = [E, D, F]
            s[pre + "moe.experts.w-up"] = [E, D, F]
            s[pre + "moe.experts.w-down"] = [E, F, D]
            if Fs:
                s[pre + "moe.shared.w-gate"] = [D, Fs]
                s[pre + "moe.shared.w-up"] = [D, Fs]
                s[pre + "moe.shared.w-down"] = [Fs, D]
        else:
            s[pre + "mlp.w-gate"] = [Fd, D]
            s[pre + "mlp.w-up"] = [Fd, D]
            s[pre + "mlp.w-down"] = [D, Fd]
    s["norm"] = [D]
    if not c["tie"]:
        s["lm-head"] = [V, D]
    return s


def case(name, c, seed):
    g = torch.Generator().manual_seed(seed)
    p = {}
    for n, shp in shapes(c).items():
        if n.endswith("norm"):
            p[n] = 1 + 0.1 * torch.randn(shp, generator=g)
        elif n.endswith("router.weight"):
            p[n] = torch.randn(shp, generator=g)
        else:
            p[n] = torch.randn(shp, generator=g) / math.sqrt(shp[-2] if len(shp) == 3 else shp[-1])
        p[n].requires_grad_(True)
    B, S = c["batch"], c["seq"]
    tokens = torch.randint(0, c["vocab"], (B, S), generator=g)
    targets = torch.randint(0, c["vocab"], (B, S), generator=g)
    targets[0, 1] = -100
    targets[B - 1, S - 1] = -100
    aux = []
    x = p["embed"][tokens]
    for l in range(c["layers"]):
        pre = "layers.%d." % l
        h = x + attention(rms(x, p[pre + "attn-norm"], c["eps"]), p, pre, c)
        f = rms(h, p[pre + "ffn-norm"], c["eps"])
        if is_moe(c, l):
            y = moe(f, p, pre, c, aux)
        else:
            y = (Fn.silu(f @ p[pre + "mlp.w-gate"].T) * (f @ p[pre + "mlp.w-up"].T)) @ p[pre + "mlp.w-down"].T
        x = h + y
    logits = rms(x, p["norm"], c["eps"]) @ (p["embed"] if c["tie"] else p["lm-head"]).T
    ce = Fn.cross_entropy(logits.reshape(B * S, -1), targets.reshape(-1), ignore_index=-100)
    total = ce
    for a in aux:
        total = total + c["coeff_micro"] * a["micro-batch"] + c["coeff_z"] * a["z"]
    total.backward()

    OUT.write("case %s\n" % name)
    for key in ["vocab", "layers", "hidden", "heads", "kv_heads", "ffn", "experts", "top_k",
                "moe_every", "first_dense", "dense_ffn", "shared_experts", "max_seq",
                "rope_theta", "eps", "tie", "coeff_micro", "coeff_z", "batch", "seq"]:
        OUT.write("set %s %s\n" % (key, repr(c[key])))
    write_tensor("tokens", tokens, "i64")
    write_tensor("targets", targets, "i64")
    write_tensor("logits", logits)
    write_tensor("ce", ce)
    write_tensor("total", total)
    moe_layers = [l for l in range(c["layers"]) if is_moe(c, l)]
    for l, a in zip(moe_layers, aux):
        for kind, v in a.items():
            write_tensor("aux:%d:%s" % (l, kind), v)
    for n, t in p.items():
        write_tensor("p:" + n, t)
    for n, t in p.items():
        write_tensor("g:" + n, t.grad)
    OUT.write("end\n")


BASE = dict(vocab=13, layers=3, hidden=8, heads=4, kv_heads=2, ffn=6, experts=4, top_k=2,
            moe_every=1, first_dense=1, dense_ffn=10, shared_experts=1, max_seq=8,
            rope_theta=10000.0, eps=1e-5, tie=1, coeff_micro=1e-2, coeff_z=1e-3, batch=2, seq=6)

OUT.write(FORMAT_LINES)
OUT.write("# moelab MoE transformer reference vectors (generated by gen_model_refs.py; do not edit)\n")
# GQA, a dense first layer, tied embeddings, a shared expert
case("gqa-dense-first-tied-shared", BASE, 1)
# every other layer MoE (0 MoE, 1 dense), untied, plain multi-head, no shared experts
case("moe-every-2-untied", dict(BASE, layers=2, heads=2, kv_heads=2, first_dense=0, moe_every=2,
                                shared_experts=0, tie=0, experts=3, top_k=1 + 1, seq=7), 2)
