#!/usr/bin/python3
"""gen_optim_refs.py — reference vectors for moelab's optimizers, gradient
clipping and learning-rate schedules (tests/unit/check_optim.c and
tests/scheme/train.scm read them).

The optimizer and clipping cases run PyTorch itself (torch.optim.AdamW,
torch.optim.SGD, torch.nn.utils.clip_grad_norm_), which shares no code with
moelab. The schedules are the formulas of the manual ("Optimizers and
schedules") written out here in Python. Run with Debian's python3-torch:

    /usr/bin/python3 tests/reference/gen_optim_refs.py > tests/reference/optim_refs.txt

File format (the reader is tests/reference/refs.c), one record per line:
    case NAME
    set KEY VALUE
    tensor NAME DTYPE NDIM D0 .. Dn-1 V0 V1 ...
    end
Optimizer cases: "set params a,b,…" names the parameters; tensors
"param:NAME#0" (initial), "grad:NAME#s" (the gradient of step s, absent when
that parameter has no gradient at step s), "param:NAME#s+1" (after step s),
"exp_avg:NAME" / "exp_avg_sq:NAME" / "momentum_buffer:NAME" (final state),
"step:NAME" (that parameter's step count). Clip cases: "grad:NAME" before,
"clipped:NAME" after, "norm" the returned total norm. Schedule cases: "lr"
holds the learning rates of steps 0..N-1.
"""
import math
import sys

import torch

OUT = sys.stdout
# The first lines of every file: the format the C reader (tests/reference/refs.c)
# checks, and the command that wrote the file.
FORMAT_LINES = ("# moelab-refs 1\n"
                "# regenerate: /usr/bin/python3 tests/reference/gen_optim_refs.py > tests/reference/optim_refs.txt\n")


def emit_tensor(name, t):
    t = t.detach()
    dtype = {torch.float64: "f64", torch.float32: "f32", torch.int64: "i64"}[t.dtype]
    vals = t.reshape(-1).tolist()
    shape = list(t.shape)
    body = " ".join("%.17g" % v if isinstance(v, float) else str(int(v)) for v in vals)
    OUT.write("tensor %s %s %d%s %s\n" % (name, dtype, len(shape),
                                          "".join(" %d" % d for d in shape), body))


def begin(name, sets):
    OUT.write("case %s\n" % name)
    for k, v in sets.items():
        OUT.write("set %s %s\n" % (k, v))


def end():
    OUT.write("end\n")


SHAPES = {"layers.0.attn.wq": (3, 4), "layers.0.attn-norm": (4,), "lm-head.bias": (2, 3)}


def make_params(dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
            for n, s in SHAPES.items()}


def grads_for(params, steps, seed, skip):
    """Per step, a dict name -> gradient; (step, name) in SKIP has none."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in range(steps):
        out.append({n: torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
                    for n, p in params.items() if (s, n) not in skip})
    return out


def optimizer_case(name, kind, dtype, steps, sets, make, seed, skip=()):
    params = make_params(dtype, seed)
    grads = grads_for(params, steps, seed + 1, skip)
    sets = dict(sets)
    sets["optimizer"] = kind
    sets["dtype"] = "f64" if dtype == torch.float64 else "f32"
    sets["steps"] = steps
    sets["params"] = ",".join(params)
    begin(name, sets)
    for n, p in params.items():
        emit_tensor("param:%s#0" % n, p)
    opt = make(params)
    for s in range(steps):
        for n, p in params.items():
            p.grad = grads[s][n].clone() if n in grads[s] else None
            if n in grads[s]:
                emit_tensor("grad:%s#%d" % (n, s), grads[s][n])
        opt.step()
        for n, p in params.items():
            emit_tensor("param:%s#%d" % (n, s + 1), p)
    for n, p in params.items():
        st = opt.state[p]
        for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
            if key in st and st[key] is not None:
                emit_tensor("%s:%s" % (key, n), st[key])
        step = st.get("step", None)
        if step is None:  # SGD keeps no step count: count the gradients
            step = sum(1 for s in range(steps) if n in grads[s])
        emit_tensor("step:%s" % n, torch.tensor(int(step), dtype=torch.int64))
    end()


def adamw_cases():
    no_decay = ["norm", "bias"]

    def adamw(lr, betas, eps, wd):
        def make(params):
            decay = [p for n, p in params.items() if not any(s in n for s in no_decay)]
            plain = [p for n, p in params.items() if any(s in n for s in no_decay)]
            return torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                                      {"params": plain, "weight_decay": 0.0}],
                                     lr=lr, betas=betas, eps=eps)
        return make

    def sets(lr, betas, eps, wd):
        return {"lr": repr(lr), "beta1": repr(betas[0]), "beta2": repr(betas[1]), "eps": repr(eps),
                "weight_decay": repr(wd), "no_decay": ",".join(no_decay)}

    for dtype, tag in ((torch.float64, "f64"), (torch.float32, "f32")):
        args = (1e-2, (0.9, 0.95), 1e-8, 0.1)
        optimizer_case("adamw-decay-" + tag, "adamw", dtype, 4, sets(*args), adamw(*args), 10,
                       skip={(1, "layers.0.attn-norm")})
        args = (3e-3, (0.8, 0.999), 1e-6, 0.0)
        optimizer_case("adamw-nodecay-" + tag, "adamw", dtype, 3, sets(*args), adamw(*args), 20)


def sgd_cases():
    def sgd(lr, momentum, dampening, wd, nesterov):
        def make(params):
            return torch.optim.SGD(list(params.values()), lr=lr, momentum=momentum, dampening=dampening,
                                   weight_decay=wd, nesterov=nesterov)
        return make

    def sets(lr, momentum, dampening, wd, nesterov):
        return {"lr": repr(lr), "momentum": repr(momentum), "dampening": repr(dampening),
                "weight_decay": repr(wd), "nesterov": int(nesterov)}

    for dtype, tag in ((torch.float64, "f64"), (torch.float32, "f32")):
        args = (0.05, 0.9, 0.1, 0.01, False)
        optimizer_case("sgd-momentum-" + tag, "sgd", dtype, 4, sets(*args), sgd(*args), 30,
                       skip={(0, "lm-head.bias")})
        args = (0.1, 0.8, 0.0, 0.0, True)
        optimizer_case("sgd-nesterov-" + tag, "sgd", dtype, 3, sets(*args), sgd(*args), 40)
        args = (0.1, 0.0, 0.0, 0.0, False)
        optimizer_case("sgd-plain-" + tag, "sgd", dtype, 2, sets(*args), sgd(*args), 50)


def clip_cases():
    for dtype, tag in ((torch.float64, "f64"), (torch.float32, "f32")):
        for where, max_norm in (("above", 1.0), ("below", 100.0)):
            params = make_params(dtype, 60)
            g = torch.Generator().manual_seed(61)
            for p in params.values():
                p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype)
            begin("clip-%s-%s" % (where, tag), {"dtype": tag, "max": repr(max_norm),
                                                "params": ",".join(params)})
            for n, p in params.items():
                emit_tensor("grad:%s" % n, p.grad)
            norm = torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm)
            emit_tensor("norm", norm.to(torch.float64))
            for n, p in params.items():
                emit_tensor("clipped:%s" % n, p.grad)
            end()


def schedule(kind, s, lr, warmup, total, min_lr, fraction, decay):
    if s < warmup:
        return lr * (s + 1) / warmup
    if kind == "constant":
        return lr
    if s >= total:
        return min_lr
    if kind == "cosine":
        p = (s - warmup) / (total - warmup)
        return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * p))
    d = math.floor(fraction * total)
    if s < total - d:
        return lr
    p = (s - total + d) / d
    if decay == "linear":
        return lr - (lr - min_lr) * p
    return min_lr + (lr - min_lr) * (1 - math.sqrt(p))


def schedule_cases():
    cases = [
        ("cosine-warmup", dict(kind="cosine", lr=3e-4, warmup=5, total=40, min_lr=3e-5, fraction=0.0, decay="linear")),
        ("cosine-plain", dict(kind="cosine", lr=1.0, warmup=0, total=50, min_lr=0.0, fraction=0.0, decay="linear")),
        ("wsd-linear", dict(kind="wsd", lr=1e-3, warmup=4, total=40, min_lr=1e-5, fraction=0.25, decay="linear")),
        ("wsd-1-sqrt", dict(kind="wsd", lr=1e-3, warmup=4, total=45, min_lr=0.0, fraction=0.3, decay="1-sqrt")),
        ("constant-warmup", dict(kind="constant", lr=2e-3, warmup=10, total=0, min_lr=0.0, fraction=0.0, decay="linear")),
    ]
    for name, a in cases:
        begin("schedule-" + name, {"kind": a["kind"], "lr": repr(a["lr"]), "warmup": a["warmup"],
                                   "total": a["total"], "min_lr": repr(a["min_lr"]),
                                   "decay_fraction": repr(a["fraction"]), "decay_type": a["decay"]})
        lrs = [schedule(a["kind"], s, a["lr"], a["warmup"], a["total"], a["min_lr"], a["fraction"], a["decay"])
               for s in range(50)]
        emit_tensor("lr", torch.tensor(lrs, dtype=torch.float64))
        end()


def main():
    torch.set_default_dtype(torch.float64)
    OUT.write(FORMAT_LINES)
    OUT.write("# moelab optimizer / clipping / schedule reference vectors "
              "(generated by gen_optim_refs.py with torch %s; do not edit)\n" % torch.__version__)
    adamw_cases()
    sgd_cases()
    clip_cases()
    schedule_cases()


if __name__ == "__main__":
    main()
