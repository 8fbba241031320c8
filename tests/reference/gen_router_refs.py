#!/usr/bin/python3
"""gen_router_refs.py — reference vectors for moelab's router and
load-balancing losses (tests/unit/check_router_refs.c reads them).

An independent implementation of the published formulas in PyTorch (f64
autograd): it shares no code with moelab's C core. Run with Debian's
python3-torch (torch 1.13):

    /usr/bin/python3 tests/reference/gen_router_refs.py > tests/reference/router_refs.txt
    /usr/bin/python3 tests/reference/gen_router_refs.py --conventions \
        > tests/reference/router_conv_refs.txt

The first file holds moelab's exact forms; the second (check_router_conv_refs
reads it) the frameworks' conventions and the newer routing modes:

  Megatron sequence      every sequence uses T̄ = Σ c/(K·N), mean over all N sequences
  Megatron global-batch  f_i = (c_i^acc/M)/(K·T_cur), M micro-batches accumulated
  Megatron capacity      ⌈T·K/E·cf⌉ reported even above T
  OLMo-core z-loss       Σ_t lse_t² / loss_div when the divisor is set
  MegaBlocks uniform     forced ids arange(T·K) mod E with the router's own top-k weights
  sqrtsoftplus           s = √softplus(z), handled as sigmoid (renormalised, s/(Σs+ε))
  replay                 given ids, weights from the score function at them
  quantile balancing     top-K of z − β; α_t = (K+1)-th largest of z_t − β,
                         q_e = (T·K/E+1)-th largest of z_e − α; at the step
                         β ← ema·β + (1−ema)·mean q, centred (f32)

Formulas: the manual, chapter "Routers and balancing losses". T valid tokens, E experts, K top-k,
p loss scores (softmax over E, or sigmoid normalised per token s/(Σs+ε)),
c_i routing counts, P_i = Σ_t p_{t,i}:

  micro-batch   E/(K·T²)·Σ c_i P_i                     (Switch; Megatron aux_loss)
  sequence      mean over sequences b of E/(K·T_b²)·Σ c_bi P_bi   (DeepSeek-V3 eq. 17-20)
  global-batch  E·Σ (c_i^acc/(K·T^acc))·(P_i/T)        ("Demons in the Detail", buffered)
  olmo-local    E/K·Σ c_i (P_i/T) / div, div = T       (OLMo-core local_batch)
  olmo-instance E/K·Σ_b Σ_i c_bi (P_bi/T_b) / Σ_b T_b  (OLMo-core instance)
  megablocks    E/(L·K·T²)·Σ c_i P_i per layer          (MegaBlocks batched, L layers)
  z             mean_t logsumexp(z_t)²                  (ST-MoE)

Router: softmax post-softmax (top-k of logits, softmax over the K) or
pre-softmax (top-k of the softmax), sigmoid (top-k of σ + bias, weights from σ,
renormalised), group-limited top-k (group score = sum of the top-m scores),
Sinkhorn (Megatron's iteration), capacity (Megatron ⌈T·K/E·cf⌉ or MegaBlocks
⌊cf·K·T/E⌋, policies probs/position, pad to capacity), scaling factor, expert
bias updated b += u·sign(mean c − c) (centred or not).

File format, one record per line:
    case NAME
    set KEY VALUE
    tensor NAME DTYPE NDIM D0 .. Dn-1 V0 V1 ...
    end
Inputs and expectations share the tensor records; names ending in #m index
micro-batches (or layers). The generator avoids near-ties (every selection has
a margin), so f32 and f64 runs select the same experts.
"""
import math
import sys

import torch

torch.set_default_dtype(torch.float64)

OUT = sys.stdout
# The first lines of every file: the format the C reader (tests/reference/refs.c)
# checks, and the command that wrote the file.
FORMAT_LINES = ("# moelab-refs 1\n"
                "# regenerate: /usr/bin/python3 tests/reference/gen_router_refs.py%s > tests/reference/%s\n")
NCASES = 0
# --conventions: write the second vector file (router_conv_refs.txt): the
# frameworks' conventions and the newer routing modes. Without it, the
# original file (router_refs.txt), computed with the exact forms throughout.
CONV = "--conventions" in sys.argv

# ---- presets: the conventions each reference uses ------------------------------
PRESETS = {
    "megatron": dict(score="softmax", pre_softmax=0, normalize="auto", norm_eps=1e-20,
                     count_from="topk", loss_eps=1e-20, grad_mode="inject",
                     losses="micro-batch:0.01", capacity_formula="megatron", drop="probs",
                     convention="megatron"),
    "olmo-core": dict(score="softmax", pre_softmax=1, normalize="off", norm_eps=0.0,
                      score_offset=1e-7, loss_eps=0.0, count_from="actual", grad_mode="add",
                      losses="olmo-local-batch:0.01,z:0.001", z_loss_div=1),
    "torchtitan": dict(score="sigmoid", pre_softmax=1, normalize="off", group_score_top=2,
                       expert_bias=1, bias_center=1, count_from="actual", losses=""),
    "megablocks": dict(score="softmax", pre_softmax=1, normalize="off",
                       capacity_formula="megablocks", drop="position", count_from="actual",
                       grad_mode="add", losses="megablocks:0.1", debug_keep_weights=1),
    "deepseek-v3": dict(score="sigmoid", pre_softmax=1, normalize="auto", scaling=2.5,
                        group_score_top=2, expert_bias=1, loss_eps=0.0, losses="sequence:0.0001",
                        convention="megatron"),
    "qwen-global": dict(score="softmax", pre_softmax=1, normalize="on", norm_eps=0.0,
                        losses="global-batch:0.001", convention="megatron"),
}

DEFAULTS = dict(score="softmax", pre_softmax=0, normalize="auto", norm_eps=1e-20, norm_p=1.0,
                groups=0, group_topk=0, group_score_top=0, scaling=1.0, score_offset=0.0,
                sinkhorn=0, debug="none", capacity="none", capacity_formula="megatron", ep=1,
                drop="probs", pad=0, expert_bias=0, bias_rate=1e-3, bias_center=0,
                count_from="topk", loss_eps=1e-20, loss_div=0.0, num_layers=1, k_in_f=1,
                global_buffer=1, grad_mode="inject", losses="", convention="exact",
                routing="topk", qb_ema=0.0, debug_keep_weights=0, z_loss_div=0)


def parse_losses(spec):
    out = []
    for item in filter(None, spec.split(",")):
        k, a = item.split(":")
        out.append((k, float(a)))
    return out


# ---- output -----------------------------------------------------------------------
def fmt(v):
    return repr(float(v)) if not isinstance(v, int) else str(v)


def emit_tensor(name, t, dtype=None):
    t = t.detach()
    if dtype is None:
        dtype = {torch.float64: "f64", torch.float32: "f32", torch.int64: "i64",
                 torch.bool: "bool"}[t.dtype]
    vals = t.reshape(-1).tolist()
    shape = list(t.shape)
    body = " ".join("%.17g" % v if isinstance(v, float) else str(int(v)) for v in vals)
    OUT.write("tensor %s %s %d %s %s\n" % (name, dtype, len(shape), " ".join(map(str, shape)), body))


def begin(name, sets):
    global NCASES
    NCASES += 1
    OUT.write("case %s\n" % name)
    for k, v in sets.items():
        OUT.write("set %s %s\n" % (k, v))


def end():
    OUT.write("end\n")


# ---- the maths ------------------------------------------------------------------------
def raw_scores(z, score, offset):
    if score == "sqrtsoftplus":  # Megatron-Core: sqrt(softplus(z))
        return torch.sqrt(torch.nn.functional.softplus(z)) + offset
    return torch.sigmoid(z) + offset


def base_scores(z, c):
    if c["score"] == "softmax":
        return torch.softmax(z, dim=-1)
    return raw_scores(z, c["score"], c["score_offset"])


def loss_scores(z, c, score=None):
    score = score or c["score"]
    if score == "softmax":
        return torch.softmax(z, dim=-1)
    s = raw_scores(z, score, c["score_offset"])
    return s / (s.sum(-1, keepdim=True) + c["loss_eps"])


def topk_ids(v, k):
    return torch.topk(v, k, dim=-1).indices


def margin_ok(v, k, tol):
    """The K-th and (K+1)-th largest of each row differ by more than tol."""
    if k >= v.shape[-1]:
        return True
    srt = torch.sort(v, dim=-1, descending=True).values
    gap = srt[..., k - 1] - srt[..., k]
    return bool((gap > tol).all())


def group_limited(v, c, K):
    T, E = v.shape
    G, keep = c["groups"], c["group_topk"]
    m = c["group_score_top"] or K // keep
    grouped = v.view(T, G, E // G)
    gscore = grouped.topk(m, dim=-1).values.sum(-1)
    if not margin_ok(gscore, keep, 1e-5):
        raise Retry("group margin")
    inner = grouped.topk(m + 1 if m < E // G else m, dim=-1).values
    if m < E // G and not bool(((inner[..., m - 1] - inner[..., m]) > 1e-5).all()):
        raise Retry("group inner margin")
    gidx = gscore.topk(keep, dim=-1).indices
    gmask = torch.zeros(T, G, dtype=torch.bool)
    gmask.scatter_(1, gidx, True)
    mask = gmask.unsqueeze(-1).expand(T, G, E // G).reshape(T, E)
    return v.masked_fill(~mask, float("-inf"))


def sinkhorn_matrix(z, valid):
    """Megatron's Sinkhorn iteration on exp(z) over the valid rows."""
    cost = torch.exp(z[valid])
    d0 = torch.ones(cost.size(0))
    d1 = torch.ones(cost.size(1))
    eps, tol, err = 1e-8, 1e-4, 1e9
    d1_old = d1
    while err > tol:
        d0 = (1 / d0.size(0)) * 1 / (torch.sum(d1 * cost, 1) + eps)
        d1 = (1 / d1.size(0)) * 1 / (torch.sum(d0.unsqueeze(1) * cost, 0) + eps)
        err = torch.mean(torch.abs(d1_old - d1))
        d1_old = d1
    full = torch.zeros_like(z)
    full[valid] = d1 * cost * d0.unsqueeze(1)
    return full


class Retry(Exception):
    pass


def qb_values(z, beta, f32):
    """z − β as the router compares it (f32 arithmetic for f32 logits)."""
    if f32:
        return (z.detach().float() - beta.float()).double()
    return z.detach() - beta.double()


def qb_quantiles(z, beta, K, f32):
    """Quantile balancing: α_t = (K+1)-th largest of z_t − β, then per expert the
    (T·K/E + 1)-th largest over tokens of z − α."""
    T, E = z.shape
    zz = z.detach().float() if f32 else z.detach()
    v = zz - (beta.float() if f32 else beta.double())
    alpha = torch.sort(v, dim=-1, descending=True).values[:, K]
    w = zz - alpha.unsqueeze(-1)
    return torch.sort(w, dim=0, descending=True).values[T * K // E].double()


def route(z, c, K, bias, valid, given=None, beta=None, f32=False):
    """ids [T K], unscaled normalised weights wu [T K] (in the graph of z)."""
    T, E = z.shape
    post = c["score"] == "softmax" and not c["pre_softmax"] and not c["sinkhorn"]
    if c["sinkhorn"]:
        act = torch.sigmoid(z) if K == 1 else torch.softmax(z, -1)
        sel = sinkhorn_matrix(z.detach(), valid)
        if not margin_ok(sel[valid] / sel[valid].max(), K, 1e-6):
            raise Retry("sinkhorn margin")
        ids = topk_ids(sel, K)
        return ids, act.gather(1, ids)
    s = base_scores(z, c)
    forced = torch.arange(T * K).view(T, K) % E
    keep_weights = c["debug"] == "uniform" and c["debug_keep_weights"] and given is None
    if given is not None:
        ids = given
    elif c["routing"] == "quantile-balancing":
        v = qb_values(z, beta, f32)
        if not margin_ok(v, K, 1e-4):
            raise Retry("qb margin")
        ids = topk_ids(v, K)
    elif c["debug"] == "uniform" and not keep_weights:
        ids = forced
    else:
        v = (z if post else s).detach().clone()
        if bias is not None:
            v = v + bias
        if c["groups"]:
            v = group_limited(v, c, K)
        if not margin_ok(v, K, 1e-5):
            raise Retry("selection margin")
        ids = topk_ids(v, K)
    if post:
        u = torch.softmax(z.gather(1, ids), -1)
        return (forced if keep_weights else ids), u
    u = s.gather(1, ids)
    norm = c["normalize"]
    if norm == "on" or (norm == "auto" and c["score"] != "softmax" and K > 1):
        if c["norm_p"] == 1.0:
            u = u / (u.sum(-1, keepdim=True) + c["norm_eps"])
        else:
            u = u / torch.norm(u, p=c["norm_p"], dim=-1, keepdim=True)
    # MegaBlocks' uniform assignment keeps the weights, pairs them with forced ids
    return (forced if keep_weights else ids), u


def capacity_of(c, Tv, K, E):
    cf = c["capacity"]
    if cf == "none":
        return -1
    cf = float(cf)
    if c["capacity_formula"] == "megablocks":
        cap = math.floor(cf * (K * Tv * c["ep"] / E))
        if cap <= 0:
            return -1
    else:
        cap = math.ceil((Tv * K / E) * cf)
    return min(cap, Tv)


def apply_capacity(ids, w, kept, C, c, T, K, E):
    """kept [T K] bool updated; returns dropped count and pad filler [T E]."""
    dropped = 0
    pad = torch.zeros(T, E, dtype=torch.bool)
    for e in range(E):
        slots = [(t, k) for t in range(T) for k in range(K) if kept[t, k] and ids[t, k] == e]
        if c["drop"] == "probs":
            ws = [float(w[t, k]) for t, k in slots]
            srt = sorted(ws, reverse=True)
            if len(srt) > C and C > 0 and abs(srt[C - 1] - srt[C]) < 1e-5:
                raise Retry("capacity margin")
            slots.sort(key=lambda tk: (-float(w[tk]), tk[0]))
        for t, k in slots[C:]:
            kept[t, k] = False
            dropped += 1
    if c["pad"]:
        routed = torch.zeros(T, E, dtype=torch.bool)
        for t in range(T):
            for k in range(K):
                if kept[t, k]:
                    routed[t, ids[t, k]] = True
        for e in range(E):
            n = int(routed[:, e].sum())
            for t in range(T):
                if n >= min(C, T):
                    break
                if not routed[t, e]:
                    pad[t, e] = True
                    n += 1
    return dropped, pad


def counts_from(ids, valid, E, scopes):
    """[N E] counts of ids over the valid tokens of each scope."""
    out = torch.zeros(len(scopes), E)
    for n, (lo, hi) in enumerate(scopes):
        for t in range(lo, hi):
            if valid[t]:
                for e in ids[t].tolist():
                    out[n, e] += 1
    return out


def scope_sums(p, valid, scopes):
    P = torch.stack([(p[lo:hi] * valid[lo:hi].unsqueeze(-1)).sum(0) for lo, hi in scopes])
    Tn = torch.tensor([float(valid[lo:hi].sum()) for lo, hi in scopes])
    return P, Tn


def balance_loss(kind, p, count_ids, valid, K, E, seq_scopes, c, tracker=None):
    """Unscaled loss (coefficient 1). TRACKER: dict(counts, tokens, buffer) for global."""
    T = p.shape[0]
    kf = K if c["k_in_f"] else 1
    if kind in ("sequence", "olmo-instance"):
        scopes = seq_scopes
    else:
        scopes = [(0, T)]
    P, Tn = scope_sums(p, valid, scopes)
    C = counts_from(count_ids, valid, E, scopes)
    if kind in ("micro-batch", "megablocks"):
        L = c["num_layers"] if kind == "megablocks" else 1
        Tt = Tn[0]
        return E / (kf * L * Tt * Tt) * (C[0] * P[0]).sum() if Tt > 0 else P.sum() * 0
    if kind == "sequence" and c["convention"] == "megatron":
        # Megatron: every sequence uses the average valid length C.sum()/(K·N)
        N = len(scopes)
        Tbar = C.sum() / (K * N)
        return sum(E / (kf * Tbar ** 2) * (C[n] * P[n]).sum() for n in range(N)) / N
    if kind == "sequence":
        terms = [E / (kf * Tn[n] ** 2) * (C[n] * P[n]).sum() for n in range(len(scopes)) if Tn[n] > 0]
        return sum(terms) / len(terms)
    if kind == "olmo-local-batch":
        Tt = Tn[0]
        div = c["loss_div"] or Tt
        return E / kf * (C[0] * P[0] / Tt).sum() / div
    if kind == "olmo-instance":
        div = c["loss_div"] or Tn.sum()
        return sum(E / kf * (C[n] * P[n] / Tn[n]).sum() for n in range(len(scopes)) if Tn[n] > 0) / div
    if kind == "global-batch":
        if tracker["buffer"]:
            tracker["counts"] = tracker["counts"] + C[0]
            tracker["tokens"] += float(Tn[0])
            tracker["micro"] = tracker.get("micro", 0) + 1
            acc, acc_t = tracker["counts"], tracker["tokens"]
        else:
            acc, acc_t = C[0] + tracker["extra"], float(Tn[0]) + tracker["extra_tokens"]
            tracker["micro"] = 1
        if c["convention"] == "megatron":
            # Megatron: counts averaged over the micro-batches seen, over this one's tokens
            acc_t = tracker["micro"] * float(Tn[0])
        return E / kf * (acc / acc_t * P[0] / Tn[0]).sum()
    raise ValueError(kind)


def z_loss(z, valid, div=0.0):
    lse = torch.logsumexp(z, -1)
    if div:  # OLMo-core: the sum divided by the balancing loss's divisor
        return (lse[valid] ** 2).sum() / div
    return (lse[valid] ** 2).mean()


# ---- router cases -------------------------------------------------------------------------
def run_router_case(name, sets, D=6, E=8, K=2, shapes=((10,),), dtype="f64", seed=0,
                    valid_fn=None, bounds=None, bias_init=False, micro=1, step_every=0,
                    dp=1, replay=False, also_exact=None):
    """SHAPES: per micro-batch, (T,) or (B, S). DP > 1: that many data-parallel
    replicas (record k = rank·micro + m), stepping together. REPLAY: each
    forward routes with given random ids. ALSO_EXACT "agree"/"differ": the aux
    values under the exact convention too (aux_exact.*), which must equal
    (agree) or differ by more than 0.1% from (differ) the case's own."""
    c = dict(DEFAULTS)
    if "preset" in sets:
        c.update(PRESETS[sets["preset"]])
    c.update({k: v for k, v in sets.items() if k != "preset"})
    if not CONV:
        c["convention"] = "exact"  # the original file predates the conventions
    for attempt in range(200):
        torch.manual_seed(seed * 1000 + attempt)
        try:
            rec = router_attempt(c, D, E, K, shapes, dtype, valid_fn, bounds, bias_init, micro,
                                 step_every, dp, replay, also_exact)
            break
        except Retry:
            continue
    else:
        raise RuntimeError("no robust draw for " + name)
    allsets = dict(sets)
    allsets.update(op="router", hidden=D, experts=E, top_k=K, dtype=dtype, micro_batches=micro,
                   step_every=step_every)
    if CONV:
        allsets.update(convention=c["convention"], dp=dp)
    begin(name, allsets)
    for nm, t, dt in rec:
        emit_tensor(nm, t, dt)
    end()


def router_attempt(c, D, E, K, shapes, dtype, valid_fn, bounds, bias_init, micro, step_every,
                   dp=1, replay=False, also_exact=None):
    tdt = torch.float32 if dtype == "f32" else torch.float64
    f32 = dtype == "f32"
    W = (torch.randn(E, D) * 0.7).to(tdt).double().requires_grad_(True)
    bias = (torch.randn(E) * 0.05).float().double() if bias_init else None
    if c["expert_bias"] and bias is None:
        bias = torch.zeros(E)
    rec = [("W", W.detach().to(tdt), dtype)]
    if bias is not None:
        rec.append(("bias", bias.float(), "f32"))
    losses = parse_losses(c["losses"])
    qb = c["routing"] == "quantile-balancing"
    beta = torch.zeros(E, dtype=torch.float32)
    qsum, qn = torch.zeros(E), 0

    def new_tracker():
        return dict(counts=torch.zeros(E), tokens=0.0, buffer=bool(c["global_buffer"]), extra=0,
                    extra_tokens=0.0)
    tracker = new_tracker()
    trackers = [new_tracker() for _ in range(dp)] if dp > 1 else [tracker]
    exact_c = dict(c, convention="exact")
    exact_tracker = new_tracker()
    rels = []
    for m in range(micro):
        for rank in range(dp):
            tracker = trackers[rank]
            shp = shapes[m % len(shapes)]
            T = 1
            for d in shp:
                T *= d
            x = (torch.randn(*shp, D)).to(tdt).double().requires_grad_(True)
            valid = torch.ones(T, dtype=torch.bool) if valid_fn is None else valid_fn(m, shp)
            given = torch.stack([torch.randperm(E)[:K] for _ in range(T)]) if replay else None
            z = x.reshape(T, D) @ W.t()
            if dtype == "f32":  # the C side stores the logits in f32
                z = z + (z.detach().float().double() - z.detach())
            ids, wu = route(z, c, K, bias, valid, given, beta, f32)
            w = wu * c["scaling"]
            kept = valid.unsqueeze(-1).expand(T, K).clone()
            Tv = int(valid.sum())
            C = capacity_of(c, Tv, K, E)
            dropped, pad = 0, torch.zeros(T, E, dtype=torch.bool)
            if C >= 0:
                dropped, pad = apply_capacity(ids, w.detach(), kept, C, c, T, K, E)
            wf = w * kept
            probs = torch.zeros(T, E).scatter_add(1, ids, wf)
            mp = torch.zeros(T, E, dtype=torch.bool)
            for t in range(T):
                for k in range(K):
                    if kept[t, k]:
                        mp[t, ids[t, k]] = True
            mp |= pad
            counts = torch.zeros(E, dtype=torch.int64)
            for t in range(T):
                for k in range(K):
                    if kept[t, k]:
                        counts[ids[t, k]] += 1
            # losses
            if len(shp) == 2:
                B, S = shp
                seq_scopes = [(b * S, (b + 1) * S) for b in range(B)]
            else:
                seq_scopes = None
            if bounds is not None:
                seq_scopes = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
            score = c["score"]
            if c["sinkhorn"]:
                score = "sigmoid" if K == 1 else "softmax"
            p = loss_scores(z, c, score)
            if c["count_from"] == "topk":
                sv = base_scores(z, dict(c, score=score)).detach()
                if not margin_ok(sv, K, 1e-5):
                    raise Retry("count margin")
                cids = topk_ids(sv, K)
            else:
                cids = ids
            aux_total = 0
            auxes, exact_auxes = [], []
            zdiv = c["loss_div"] if c["z_loss_div"] else 0.0
            for kind, alpha in losses:
                if kind == "z":
                    L = z_loss(z, valid, zdiv)
                else:
                    L = balance_loss(kind, p, cids, valid, K, E, seq_scopes, c, tracker)
                    if also_exact:
                        Lx = balance_loss(kind, p, cids, valid, K, E, seq_scopes, exact_c, exact_tracker)
                        exact_auxes.append((kind, Lx.detach()))
                        rels.append(abs(float(Lx) - float(L)) / abs(float(Lx)))
                auxes.append((kind, L))
                aux_total = aux_total + alpha * L
            # the objective: random weights on both outputs, plus the α-weighted losses
            R = torch.randn(T, K)
            Rp = torch.randn(T, E)
            objective = (wf * R).sum() + (probs * Rp).sum() + aux_total
            objective.backward()
            sfx = "#%d" % (rank * micro + m)
            rec += [("x" + sfx, x.detach().to(tdt), dtype), ("R" + sfx, R, "f64"), ("Rp" + sfx, Rp, "f64")]
            if valid_fn is not None:
                rec.append(("valid" + sfx, valid.to(torch.int64), "bool"))
            if bounds is not None:
                rec.append(("bounds" + sfx, torch.tensor(bounds, dtype=torch.int64), "i64"))
            if given is not None:
                rec.append(("replay_ids" + sfx, given, "i64"))
            rec += [("weights" + sfx, wf.detach(), "f64"), ("ids" + sfx, ids, "i64"),
                    ("probs" + sfx, probs.detach(), "f64"), ("map" + sfx, mp.to(torch.int64), "bool"),
                    ("counts" + sfx, counts, "i64"),
                    ("dropped" + sfx, torch.tensor([dropped], dtype=torch.int64), "i64"),
                    ("grad_x" + sfx, x.grad.detach(), "f64")]
            if CONV:  # the capacity routing-capacity reports
                cap = C
                if C >= 0 and c["convention"] == "megatron" and c["capacity_formula"] == "megatron":
                    cap = math.ceil((Tv * K / E) * float(c["capacity"]))
                rec.append(("capacity" + sfx, torch.tensor([cap], dtype=torch.int64), "i64"))
            for kind, L in auxes:
                rec.append(("aux." + kind + sfx, L.detach().reshape(1), "f64"))
            for kind, L in exact_auxes:
                rec.append(("aux_exact." + kind + sfx, L.reshape(1), "f64"))
            if qb:
                qsum = qsum + qb_quantiles(z, beta, K, f32)
                qn += 1
        if step_every and (m + 1) % step_every == 0 and bias is not None:
            # bias update from the actual kept counts of the step (summed since last step)
            stepc = counts.double() if step_every == 1 else None
            mean = stepc.mean()
            delta = c["bias_rate"] * torch.sign(mean - stepc)
            if c["bias_center"]:
                delta = delta - delta.mean()
            bias = (bias.float() + delta.float()).double()
            rec.append(("bias_after" + sfx, bias.float(), "f32"))
        if step_every and (m + 1) % step_every == 0 and qb:
            # β ← ema·β + (1−ema)·q̄ in f32, re-centred to zero mean
            qbar = (qsum / qn).float()
            a = torch.tensor(c["qb_ema"], dtype=torch.float32)
            beta = a * beta + (1 - a) * qbar
            beta = beta - beta.mean()
            qsum, qn = torch.zeros(E), 0
            rec.append(("qb_beta_after#%d" % m, beta, "f32"))
        if step_every and (m + 1) % step_every == 0:
            tracker = new_tracker()
            trackers = [new_tracker() for _ in range(dp)] if dp > 1 else [tracker]
            exact_tracker = new_tracker()
    if also_exact == "agree":
        assert max(rels) < 1e-12, rels
    elif also_exact:
        assert max(rels) > 1e-3, rels
    if dp == 1:
        rec.append(("grad_W", W.grad.detach(), "f64"))
    return rec


# ---- standalone loss cases ----------------------------------------------------------------
def run_loss_case(name, kind, shape, K, score="softmax", dtype="f64", seed=0, valid_fn=None,
                  bounds=None, actual=False, extra=None, calls=1, opts=None):
    c = dict(DEFAULTS)
    c.update(score=score)
    c.update(opts or {})
    for attempt in range(200):
        torch.manual_seed(7000 + seed * 1000 + attempt)
        try:
            rec = loss_attempt(c, kind, shape, K, dtype, valid_fn, bounds, actual, extra, calls)
            break
        except Retry:
            continue
    else:
        raise RuntimeError("no robust draw for " + name)
    sets = dict(op="loss", kind=kind, top_k=K, score=score, dtype=dtype, calls=calls)
    sets.update({k: v for k, v in (opts or {}).items()})
    begin(name, sets)
    for nm, t, dt in rec:
        emit_tensor(nm, t, dt)
    end()


def loss_attempt(c, kind, shape, K, dtype, valid_fn, bounds, actual, extra, calls):
    tdt = torch.float32 if dtype == "f32" else torch.float64
    E = shape[-1]
    T = 1
    for d in shape[:-1]:
        T *= d
    rec = []
    tracker = dict(counts=torch.zeros(E), tokens=0.0, buffer=True)
    if extra is not None:
        ec = torch.tensor(extra[0], dtype=torch.float64)
        tracker["counts"] += ec
        tracker["tokens"] += extra[1]
        rec += [("extra_counts", ec, "f64"), ("extra_tokens", torch.tensor([extra[1]]), "f64")]
    for m in range(calls):
        logits = (torch.randn(*shape) * 1.3).to(tdt).double().requires_grad_(True)
        z = logits.reshape(T, E)
        valid = torch.ones(T, dtype=torch.bool) if valid_fn is None else valid_fn(m, shape)
        if len(shape) == 3:
            B, S = shape[0], shape[1]
            scopes = [(b * S, (b + 1) * S) for b in range(B)]
        else:
            scopes = None
        if bounds is not None:
            scopes = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
        if kind == "z":
            L = z_loss(z, valid, c.get("z_div", 0.0))
            ids = None
        else:
            p = loss_scores(z, c)
            sv = base_scores(z, c).detach()
            if actual:
                ids = torch.stack([torch.randperm(E)[:K] for _ in range(T)])
            else:
                if not margin_ok(sv, K, 1e-5):
                    raise Retry("margin")
                ids = topk_ids(sv, K)
            L = balance_loss(kind, p, ids, valid, K, E, scopes, c, tracker)
        L.backward()
        sfx = "#%d" % m
        rec.append(("logits" + sfx, logits.detach().to(tdt), dtype))
        if valid_fn is not None:
            rec.append(("valid" + sfx, valid.to(torch.int64), "bool"))
        if bounds is not None:
            rec.append(("bounds" + sfx, torch.tensor(bounds, dtype=torch.int64), "i64"))
        if actual:
            rec.append(("routing_ids" + sfx, ids, "i64"))
        rec += [("value" + sfx, L.detach().reshape(1), "f64"), ("grad" + sfx, logits.grad.detach(), "f64")]
    return rec


def run_megablocks_case(name, layers, T, E, K, dtype="f64", seed=0, L_total=None, actual=False):
    c = dict(DEFAULTS)
    for attempt in range(200):
        torch.manual_seed(9000 + seed * 1000 + attempt)
        try:
            rec, total = [], 0
            lgs = []
            for l in range(layers):
                lg = (torch.randn(T, E) * 1.1).to(torch.float32 if dtype == "f32" else torch.float64)
                lg = lg.double().requires_grad_(True)
                lgs.append(lg)
                p = torch.softmax(lg, -1)
                if actual:
                    ids = torch.stack([torch.randperm(E)[:K] for _ in range(T)])
                    rec.append(("routing_ids#%d" % l, ids, "i64"))
                else:
                    if not margin_ok(p.detach(), K, 1e-5):
                        raise Retry("margin")
                    ids = topk_ids(p.detach(), K)
                c_i = torch.zeros(E)
                for e in ids.reshape(-1).tolist():
                    c_i[e] += 1
                # MegaBlocks: w·E/(L·T·K)·<c_cat, mean_t p_cat>, w = 1
                total = total + E / ((L_total or layers) * T * K) * (c_i * p.mean(0)).sum()
            total.backward()
            for l, lg in enumerate(lgs):
                rec.append(("logits#%d" % l, lg.detach().to(torch.float32 if dtype == "f32" else torch.float64), dtype))
                rec.append(("grad#%d" % l, lg.grad.detach(), "f64"))
            rec.append(("value", total.detach().reshape(1), "f64"))
            break
        except Retry:
            continue
    begin(name, dict(op="megablocks", layers=layers, top_k=K, dtype=dtype, num_layers=L_total or layers))
    for nm, t, dt in rec:
        emit_tensor(nm, t, dt)
    end()


# ---- the case list ----------------------------------------------------------------------------
def pad_tail(n):
    """Valid mask with the last N tokens of every sequence padded."""
    def f(m, shp):
        if len(shp) == 1:
            v = torch.ones(shp[0], dtype=torch.bool)
            v[shp[0] - n:] = False
            return v
        B, S = shp[0], shp[1]
        v = torch.ones(B, S, dtype=torch.bool)
        for b in range(B):
            v[b, S - n - b % 2:] = False  # uneven valid lengths
        return v.reshape(-1)
    return f


def lengths_mask(lengths, S):
    """Valid mask [B·S] with sequence b holding LENGTHS[b] valid tokens."""
    def f(m, shp):
        L = lengths[m % len(lengths)] if isinstance(lengths[0], (list, tuple)) else lengths
        v = torch.zeros(len(L), S, dtype=torch.bool)
        for b, n in enumerate(L):
            v[b, :n] = True
        return v.reshape(-1)
    return f


def main_conventions():
    OUT.write(FORMAT_LINES % (" --conventions", "router_conv_refs.txt"))
    OUT.write("# moelab reference vectors: the frameworks' conventions and the newer routing modes\n"
              "# (generated by gen_router_refs.py --conventions; do not edit). Formulas written\n"
              "# from the published descriptions (Megatron-Core, OLMo-core, MegaBlocks); no\n"
              "# framework code was run or copied.\n")
    R = run_router_case
    L = run_loss_case
    for dt in ("f64", "f32"):
        # Megatron's sequence loss: average valid length; lengths (12 7 4) differ, equal lengths agree
        R("megatron-seq-padded-12-7-4-" + dt, {"convention": "megatron", "losses": "sequence:0.01"},
          shapes=((3, 12),), valid_fn=lengths_mask([12, 7, 4], 12), dtype=dt, seed=101,
          also_exact="differ")
        R("megatron-seq-equal-lengths-" + dt, {"convention": "megatron", "losses": "sequence:0.01"},
          shapes=((3, 8),), dtype=dt, seed=102, also_exact="agree")
        R("megatron-seq-sigmoid-k1-padded-" + dt, {"convention": "megatron", "score": "sigmoid",
                                                   "losses": "sequence:0.01"},
          K=1, shapes=((3, 6),), valid_fn=lengths_mask([6, 3, 5], 6), dtype=dt, seed=103,
          also_exact="differ")
        # Megatron's global-batch loss under accumulation: unequal micro-batches differ, equal agree
        R("megatron-global-unequal-" + dt, {"convention": "megatron", "losses": "global-batch:0.01"},
          micro=3, shapes=((6,), (10,), (4,)), dtype=dt, seed=104, also_exact="differ")
        R("megatron-global-equal-" + dt, {"convention": "megatron", "losses": "global-batch:0.01"},
          micro=3, shapes=((8,),), dtype=dt, seed=105, also_exact="agree")
        R("megatron-global-padded-two-steps-" + dt, {"convention": "megatron", "score": "sigmoid",
                                                     "losses": "global-batch:0.01"},
          micro=4, step_every=2, shapes=((9,), (5,)), valid_fn=pad_tail(2), dtype=dt, seed=106)
        # Megatron's capacity as computed, above T
        R("megatron-capacity-unclamped-" + dt, {"preset": "megatron", "capacity": 8.0}, shapes=((6,),),
          dtype=dt, seed=107)
        R("megatron-capacity-dropping-" + dt, {"preset": "megatron", "capacity": 0.5}, shapes=((12,),),
          dtype=dt, seed=108)
        # presets built on Megatron: deepseek-v3 with unequal lengths, qwen-global with unequal micro-batches
        R("preset-deepseek-v3-padded-" + dt, {"preset": "deepseek-v3", "groups": 4, "group_topk": 2},
          E=8, K=4, shapes=((3, 6),), valid_fn=lengths_mask([6, 2, 4], 6), bias_init=True, dtype=dt,
          seed=109, also_exact="differ")
        R("preset-qwen-global-unequal-" + dt, {"preset": "qwen-global"}, micro=3,
          shapes=((6,), (5,), (7,)), dtype=dt, seed=110, also_exact="differ")
        R("preset-qwen-global-exact-override-" + dt, {"preset": "qwen-global", "convention": "exact"},
          micro=3, shapes=((6,), (5,), (7,)), dtype=dt, seed=110)
        # OLMo-core: the z-loss divided by the loss divisor
        R("preset-olmo-core-loss-div-" + dt, {"preset": "olmo-core", "loss_div": 24.0}, shapes=((10,),),
          dtype=dt, seed=111)
        # MegaBlocks: uniform debug routing keeps the top-k weights; OLMo-core gathers the forced scores
        R("preset-megablocks-debug-uniform-" + dt, {"preset": "megablocks", "debug": "uniform"},
          shapes=((9,),), dtype=dt, seed=112)
        R("preset-olmo-core-debug-uniform-" + dt, {"preset": "olmo-core", "debug": "uniform"},
          shapes=((9,),), dtype=dt, seed=113)
        # sqrtsoftplus
        R("sqrtsoftplus-k2-" + dt, {"score": "sqrtsoftplus", "losses": "micro-batch:0.01,z:0.001"},
          dtype=dt, seed=120)
        R("sqrtsoftplus-k1-" + dt, {"score": "sqrtsoftplus", "losses": "micro-batch:0.01"}, K=1,
          dtype=dt, seed=121)
        R("sqrtsoftplus-groups-" + dt, {"score": "sqrtsoftplus", "groups": 4, "group_topk": 2,
                                       "losses": "sequence:0.01"}, E=8, K=4, shapes=((2, 5),),
          dtype=dt, seed=122)
        R("sqrtsoftplus-groups-bias-" + dt, {"score": "sqrtsoftplus", "groups": 4, "group_topk": 2,
                                            "group_score_top": 2, "expert_bias": 1,
                                            "losses": "micro-batch:0.01"},
          E=8, K=3, bias_init=True, dtype=dt, seed=123)
        R("sqrtsoftplus-all-losses-" + dt, {"score": "sqrtsoftplus",
                                           "losses": "micro-batch:0.01,sequence:0.02,global-batch:0.03,"
                                                     "olmo-local-batch:0.04,olmo-instance:0.05,megablocks:0.06"},
          shapes=((2, 6),), micro=2, dtype=dt, seed=124)
        # replay: given ids; counts from the loss scores' top-k (Megatron) or the given ids
        R("replay-softmax-post-" + dt, {"losses": "micro-batch:0.01"}, replay=True, dtype=dt, seed=130)
        R("replay-sigmoid-actual-" + dt, {"score": "sigmoid", "count_from": "actual",
                                          "losses": "micro-batch:0.01"}, replay=True, dtype=dt, seed=131)
        R("replay-sqrtsoftplus-topk-" + dt, {"score": "sqrtsoftplus", "losses": "micro-batch:0.01"},
          replay=True, dtype=dt, seed=132)
        # quantile balancing: two steps of two micro-batches, then over dp = 2
        R("qb-two-steps-" + dt, {"routing": "quantile-balancing", "losses": "z:0.001"}, micro=4,
          step_every=2, shapes=((8,),), dtype=dt, seed=140)
        R("qb-ema-sigmoid-" + dt, {"routing": "quantile-balancing", "score": "sigmoid", "qb_ema": 0.5},
          micro=4, step_every=2, shapes=((12,),), K=2, E=6, dtype=dt, seed=141)
        R("qb-dp2-" + dt, {"routing": "quantile-balancing"}, micro=4, step_every=2, shapes=((8,),),
          dp=2, dtype=dt, seed=142)
    L("loss-megatron-seq-12-7-4", "sequence", (3, 12, 6), 2, seed=201,
      valid_fn=lengths_mask([12, 7, 4], 12), opts={"convention": "megatron"})
    L("loss-exact-seq-12-7-4", "sequence", (3, 12, 6), 2, seed=201,
      valid_fn=lengths_mask([12, 7, 4], 12))
    L("loss-megatron-seq-equal", "sequence", (3, 8, 6), 2, "sigmoid", seed=202,
      opts={"convention": "megatron"})
    L("loss-megatron-global-unequal", "global-batch", (7, 6), 2, seed=203, calls=3,
      valid_fn=lambda m, s: torch.arange(7) < [7, 3, 5][m], opts={"convention": "megatron"})
    L("loss-megatron-global-sqrtsoftplus", "global-batch", (7, 6), 2, "sqrtsoftplus", seed=204, calls=2,
      valid_fn=lambda m, s: torch.arange(7) < [6, 4][m], opts={"convention": "megatron"})
    L("loss-z-div", "z", (9, 5), 1, seed=205, valid_fn=lambda m, s: torch.arange(9) < 7,
      opts={"z_div": 32.0})
    L("loss-micro-sqrtsoftplus", "micro-batch", (11, 6), 2, "sqrtsoftplus", seed=206)
    L("loss-micro-sqrtsoftplus-f32", "micro-batch", (11, 6), 2, "sqrtsoftplus", "f32", seed=207)
    sys.stderr.write("gen_router_refs --conventions: %d cases\n" % NCASES)


def main():
    if CONV:
        return main_conventions()
    OUT.write(FORMAT_LINES % ("", "router_refs.txt"))
    OUT.write("# moelab router / aux-loss reference vectors (generated by gen_router_refs.py; do not edit)\n")
    R = run_router_case
    for dt in ("f64", "f32"):
        # score functions and selection rules
        R("softmax-post-k2-" + dt, {"losses": "micro-batch:0.01"}, dtype=dt, seed=1)
        R("softmax-pre-k2-" + dt, {"pre_softmax": 1, "losses": "micro-batch:0.01"}, dtype=dt, seed=2)
        R("sigmoid-k2-auto-" + dt, {"score": "sigmoid", "losses": "micro-batch:0.02"}, dtype=dt, seed=3)
        R("sigmoid-groups-auto-" + dt, {"score": "sigmoid", "groups": 4, "group_topk": 2,
                                         "losses": "micro-batch:0.01,z:0.001"}, E=8, K=4, dtype=dt, seed=4)
        R("softmax-post-groups-top2-" + dt, {"groups": 2, "group_topk": 1, "group_score_top": 2,
                                              "losses": "micro-batch:0.01"}, E=8, K=2, dtype=dt, seed=5)
        R("capacity-probs-" + dt, {"capacity": 1.0, "losses": "micro-batch:0.01"}, dtype=dt, seed=6,
          shapes=((16,),))
        R("sequence-padded-" + dt, {"score": "sigmoid", "losses": "sequence:0.01"}, dtype=dt, seed=7,
          shapes=((3, 6),), valid_fn=pad_tail(1))
        for p in PRESETS:
            extra = {}
            kw = dict(dtype=dt, seed=20 + list(PRESETS).index(p))
            if p == "torchtitan":
                extra = {"groups": 4, "group_topk": 2}
                kw.update(E=8, K=2, bias_init=True)
            if p == "deepseek-v3":
                extra = {"groups": 4, "group_topk": 2}
                kw.update(E=8, K=4, bias_init=True, shapes=((2, 5),))
            if p == "megablocks":
                extra = {"capacity": 1.0, "num_layers": 3}
                kw.update(shapes=((12,),))
            if p == "qwen-global":
                kw.update(micro=3, shapes=((6,), (5,), (7,)))
            if p == "megatron":
                extra = {"capacity": 1.25}
            R("preset-%s-%s" % (p, dt), dict(preset=p, **extra), **kw)
    # f64-only coverage of the remaining rules
    R("softmax-pre-k1", {"pre_softmax": 1, "losses": "micro-batch:0.01"}, K=1, seed=30)
    R("softmax-pre-norm-on", {"pre_softmax": 1, "normalize": "on", "losses": "micro-batch:0.01"}, seed=31)
    R("softmax-pre-norm-p2", {"pre_softmax": 1, "normalize": "on", "norm_p": 2.0,
                              "losses": "micro-batch:0.01"}, K=3, seed=32)
    R("sigmoid-k1-auto", {"score": "sigmoid", "losses": "micro-batch:0.01"}, K=1, seed=33)
    R("sigmoid-k1-norm-on", {"score": "sigmoid", "normalize": "on", "losses": "micro-batch:0.01"}, K=1, seed=34)
    R("sigmoid-k3-norm-off", {"score": "sigmoid", "normalize": "off", "losses": "micro-batch:0.01"}, K=3, seed=35)
    R("sigmoid-bias-select", {"score": "sigmoid", "expert_bias": 1, "losses": "micro-batch:0.01"},
      bias_init=True, seed=36)
    R("sigmoid-bias-count-actual", {"score": "sigmoid", "expert_bias": 1, "count_from": "actual",
                                    "losses": "micro-batch:0.01"}, bias_init=True, seed=37)
    R("softmax-pre-groups-auto", {"pre_softmax": 1, "groups": 4, "group_topk": 2,
                                  "losses": "micro-batch:0.01"}, E=8, K=4, seed=38)
    R("sigmoid-groups-top2-actual", {"score": "sigmoid", "groups": 4, "group_topk": 2, "group_score_top": 2,
                                     "count_from": "actual", "losses": "micro-batch:0.01"}, E=12, K=3, seed=39)
    R("scaling-2.5", {"score": "sigmoid", "scaling": 2.5, "losses": "micro-batch:0.01"}, seed=40)
    R("capacity-position", {"capacity": 1.0, "drop": "position", "losses": "micro-batch:0.01"},
      shapes=((16,),), seed=41)
    R("capacity-pad-probs", {"capacity": 0.75, "pad": 1, "losses": "micro-batch:0.01"}, shapes=((12,),), seed=42)
    R("capacity-pad-position", {"capacity": 0.75, "pad": 1, "drop": "position"}, shapes=((12,),), seed=43)
    R("capacity-megablocks", {"pre_softmax": 1, "capacity": 1.0, "capacity_formula": "megablocks",
                              "drop": "position"}, shapes=((11,),), seed=44)
    R("capacity-megablocks-zero-dropless", {"pre_softmax": 1, "capacity": 0.01,
                                            "capacity_formula": "megablocks"}, shapes=((9,),), seed=45)
    R("capacity-huge-no-drop", {"capacity": 1e9}, shapes=((9,),), seed=46)
    R("capacity-padded-tokens", {"capacity": 1.0, "losses": "micro-batch:0.01"}, shapes=((14,),),
      valid_fn=pad_tail(3), seed=47)
    R("micro-batch-uneven-T7", {"losses": "micro-batch:0.05"}, E=4, K=2, shapes=((7,),), seed=48)
    R("micro-batch-padded", {"losses": "micro-batch:0.05"}, shapes=((9,),), valid_fn=pad_tail(2), seed=49)
    R("sequence-B1", {"losses": "sequence:0.01"}, shapes=((1, 9),), seed=50)
    R("sequence-S1", {"losses": "sequence:0.01"}, shapes=((5, 1),), seed=51)
    R("sequence-softmax-uneven", {"losses": "sequence:0.01,micro-batch:0.01"}, shapes=((3, 5),),
      valid_fn=pad_tail(1), seed=52)
    R("sequence-docs", {"losses": "sequence:0.01"}, shapes=((2, 6),), bounds=[0, 4, 6, 9, 12], seed=53)
    R("global-batch-buffer", {"losses": "global-batch:0.01"}, micro=3, shapes=((6,), (8,), (5,)), seed=54)
    R("global-batch-no-buffer", {"losses": "global-batch:0.01", "global_buffer": 0}, micro=2,
      shapes=((6,), (7,)), seed=55)
    R("global-batch-padded", {"score": "sigmoid", "losses": "global-batch:0.01"}, micro=2,
      shapes=((8,),), valid_fn=pad_tail(2), seed=56)
    R("olmo-local-batch", {"losses": "olmo-local-batch:0.01"}, shapes=((10,),), seed=57)
    R("olmo-local-div", {"losses": "olmo-local-batch:0.01", "loss_div": 32.0}, shapes=((10,),), seed=58)
    R("olmo-instance", {"losses": "olmo-instance:0.01"}, shapes=((3, 5),), valid_fn=pad_tail(1), seed=59)
    R("megablocks-loss", {"pre_softmax": 1, "losses": "megablocks:0.1", "num_layers": 4,
                          "count_from": "actual"}, seed=60)
    R("z-loss-only", {"losses": "z:0.01"}, seed=61)
    R("z-loss-sigmoid-padded", {"score": "sigmoid", "losses": "z:0.01,micro-batch:0.01"},
      valid_fn=pad_tail(2), seed=62)
    R("k-in-f-off", {"losses": "micro-batch:0.01", "k_in_f": 0}, seed=63)
    R("sinkhorn-k1", {"sinkhorn": 1}, K=1, shapes=((12,),), seed=64)
    R("sinkhorn-k2-z", {"sinkhorn": 1, "losses": "z:0.001"}, K=2, shapes=((12,),), seed=65)
    R("debug-uniform", {"debug": "uniform", "losses": "micro-batch:0.01"}, shapes=((9,),), seed=66)
    R("debug-uniform-post-softmax", {"debug": "uniform"}, shapes=((5,),), seed=67)
    R("all-losses", {"score": "sigmoid", "losses": "micro-batch:0.01,sequence:0.02,global-batch:0.03,"
                                                   "olmo-local-batch:0.04,olmo-instance:0.05,megablocks:0.06,z:0.001"},
      shapes=((2, 6),), micro=2, seed=68)
    R("bias-update-centered", {"score": "sigmoid", "expert_bias": 1, "bias_center": 1, "bias_rate": 0.01},
      micro=3, step_every=1, seed=69)
    R("bias-update-plain", {"score": "sigmoid", "expert_bias": 1, "bias_rate": 0.01,
                            "losses": "sequence:0.001"}, micro=3, step_every=1, shapes=((2, 5),), seed=70)
    R("single-token", {"pre_softmax": 1, "losses": "micro-batch:0.01,z:0.01"}, shapes=((1,),), seed=71)
    R("x-3d-B1-S1", {"score": "sigmoid", "losses": "sequence:0.01"}, shapes=((1, 1),), seed=72)

    L = run_loss_case
    for dt in ("f64", "f32"):
        for sc in ("softmax", "sigmoid"):
            L("loss-micro-%s-%s" % (sc, dt), "micro-batch", (11, 6), 2, sc, dt, seed=1)
            L("loss-seq-%s-%s" % (sc, dt), "sequence", (3, 5, 6), 2, sc, dt, seed=2)
            L("loss-global-%s-%s" % (sc, dt), "global-batch", (7, 6), 2, sc, dt, seed=3, calls=3)
            L("loss-olmo-local-%s-%s" % (sc, dt), "olmo-local-batch", (9, 6), 3, sc, dt, seed=4)
            L("loss-olmo-instance-%s-%s" % (sc, dt), "olmo-instance", (2, 7, 6), 2, sc, dt, seed=5)
            L("loss-megablocks-%s-%s" % (sc, dt), "megablocks", (10, 6), 2, sc, dt, seed=6,
              opts={"num_layers": 3})
        L("loss-z-" + dt, "z", (8, 5), 1, dtype=dt, seed=7)
    L("loss-micro-padded", "micro-batch", (10, 5), 2, seed=10, valid_fn=lambda m, s: torch.arange(10) % 3 != 2)
    L("loss-micro-actual-ids", "micro-batch", (10, 5), 2, seed=11, actual=True)
    L("loss-seq-B1", "sequence", (1, 8, 5), 2, seed=12)
    L("loss-seq-S1", "sequence", (6, 1, 5), 1, seed=13)
    L("loss-seq-docs", "sequence", (2, 6, 5), 2, seed=14, bounds=[0, 3, 8, 12])
    L("loss-seq-docs-2d", "sequence", (12, 5), 2, "sigmoid", seed=15, bounds=[0, 5, 12])
    L("loss-seq-padded-sigmoid", "sequence", (3, 6, 5), 2, "sigmoid", seed=16,
      valid_fn=lambda m, s: (torch.arange(18) % 6) < torch.tensor([6, 4, 2]).repeat_interleave(6))
    L("loss-global-dp-extra", "global-batch", (8, 5), 2, seed=17, extra=([3, 1, 4, 1, 7], 8.0))
    L("loss-instance-div", "olmo-instance", (2, 5, 4), 2, seed=18, opts={"loss_div": 20.0})
    L("loss-z-padded", "z", (9, 4), 1, seed=19, valid_fn=lambda m, s: torch.arange(9) < 6)
    L("loss-micro-k-in-f-off", "micro-batch", (9, 6), 3, seed=20, opts={"k_in_f": 0})
    L("loss-sigmoid-eps-offset", "micro-batch", (9, 6), 2, "sigmoid", seed=21,
      opts={"loss_eps": 0.5, "score_offset": 1e-3})
    run_megablocks_case("megablocks-batched-3", 3, 10, 6, 2, seed=1)
    run_megablocks_case("megablocks-batched-stage-of-4", 2, 9, 5, 2, seed=2, L_total=4, actual=True)
    run_megablocks_case("megablocks-batched-f32", 2, 8, 6, 2, dtype="f32", seed=3)
    sys.stderr.write("gen_router_refs: %d cases\n" % NCASES)


if __name__ == "__main__":
    main()
