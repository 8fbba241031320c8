"""interop.py — the checks of tests/scheme/safetensors-interop.sh on the
Python side, with the independent reader/writer safetensors_np.

    interop.py check-moelab DIR    read what moelab wrote in DIR and check it
    interop.py write DIR           write DIR/from-python.safetensors
    interop.py check-hf DIR        check DIR/hf (export-hf-mixtral) against DIR/model.safetensors
"""
import json
import os
import sys

import numpy as np

import safetensors_np as stn


def check_moelab(d):
    t, meta = stn.read(os.path.join(d, "tensors.safetensors"))  # verifies the checksum
    assert meta["note"] == "from moelab" and meta["moelab.checksum"] == "sha256", meta
    assert list(t) == ["a", "b", "c", "d", "e", "f"], list(t)
    assert t["a"].dtype == np.float64 and t["a"].shape == (2, 3)
    assert np.array_equal(t["a"], np.array([[1, 2, 3], [4, 5, 6]], np.float64) / 8)
    # c is a transposed view in moelab: written as its own row-major elements
    assert t["b"].dtype == np.float32 and t["b"].shape == (3, 2)
    assert np.array_equal(t["b"], np.array([[1, 4], [2, 5], [3, 6]], np.float32))
    assert t["c"].dtype == np.int64 and list(t["c"]) == [-5, 1 << 40]
    assert t["d"].dtype == np.int32 and t["d"].shape == () and int(t["d"]) == -7
    assert t["e"].dtype == np.bool_ and list(t["e"]) == [True, False]
    assert t["f"].dtype == np.uint16 and list(t["f"]) == [0x3F80, 0xC040]  # bf16 1.0 -3.0
    print("python read moelab's file: ok")


def write(d):
    tensors = {"x": np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5,
               "y": np.array([1e-310, -0.0, 7.25], np.float64),
               "z": np.array([[3], [-4]], np.int64),
               "bf": np.array([0x4000, 0xBE80], np.uint16)}  # bf16 2.0 -0.25
    stn.write(os.path.join(d, "from-python.safetensors"), tensors, {"writer": "python"}, bf16={"bf"})
    # the same with moelab's checksum, for the checked path
    stn.write(os.path.join(d, "from-python-summed.safetensors"), tensors, {"writer": "python"},
              checksum=True, bf16={"bf"})
    print("python wrote two files: ok")


def check_hf(d):
    own, _ = stn.read(os.path.join(d, "model.safetensors"))
    hf, meta = stn.read(os.path.join(d, "hf", "model.safetensors"))
    with open(os.path.join(d, "hf", "config.json")) as f:
        cfg = json.load(f)
    assert cfg["model_type"] == "mixtral" and cfg["architectures"] == ["MixtralForCausalLM"]
    L, E, D, F = cfg["num_hidden_layers"], cfg["num_local_experts"], cfg["hidden_size"], cfg["intermediate_size"]
    H, KV, V = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]
    hd = cfg["head_dim"]
    assert (L, E, D, F, H, KV, V, hd) == (2, 3, 8, 6, 2, 1, 16, 4), cfg
    assert cfg["num_experts_per_tok"] == 2 and cfg["tie_word_embeddings"] is False
    assert cfg["sliding_window"] is None and cfg["rope_theta"] == 500.0
    names = {"model.embed_tokens.weight": ((V, D), own["embed"]),
             "model.norm.weight": ((D,), own["norm"]),
             "lm_head.weight": ((V, D), own["lm-head"])}
    for l in range(L):
        p, h = f"layers.{l}.", f"model.layers.{l}."
        names[h + "input_layernorm.weight"] = ((D,), own[p + "attn-norm"])
        names[h + "post_attention_layernorm.weight"] = ((D,), own[p + "ffn-norm"])
        names[h + "self_attn.q_proj.weight"] = ((H * hd, D), own[p + "attn.wq"])
        names[h + "self_attn.k_proj.weight"] = ((KV * hd, D), own[p + "attn.wk"])
        names[h + "self_attn.v_proj.weight"] = ((KV * hd, D), own[p + "attn.wv"])
        names[h + "self_attn.o_proj.weight"] = ((D, H * hd), own[p + "attn.wo"])
        names[h + "block_sparse_moe.gate.weight"] = ((E, D), own[p + "moe.router.weight"])
        for e in range(E):
            x = h + f"block_sparse_moe.experts.{e}."
            names[x + "w1.weight"] = ((F, D), own[p + "moe.experts.w-gate"][e].T)
            names[x + "w3.weight"] = ((F, D), own[p + "moe.experts.w-up"][e].T)
            names[x + "w2.weight"] = ((D, F), own[p + "moe.experts.w-down"][e].T)
    assert set(hf) == set(names), sorted(set(hf) ^ set(names))
    for n, (shape, want) in names.items():
        assert hf[n].shape == shape, (n, hf[n].shape, shape)
        assert hf[n].dtype == np.float32, (n, hf[n].dtype)
        assert np.array_equal(hf[n], want), n
    # One expert's SwiGLU on a vector, both ways: Mixtral w2(silu(w1 x) * w3 x)
    # against moelab's (silu(x Wg) * x Wu) Wd.
    x = np.linspace(-1, 1, D).astype(np.float64)
    silu = lambda v: v / (1 + np.exp(-v))  # noqa: E731
    g, u, dn = (own["layers.1.moe.experts." + k][2].astype(np.float64) for k in ("w-gate", "w-up", "w-down"))
    w1, w3, w2 = (hf["model.layers.1.block_sparse_moe.experts.2." + k].astype(np.float64) for k in ("w1.weight", "w3.weight", "w2.weight"))
    assert np.allclose(w2 @ (silu(w1 @ x) * (w3 @ x)), (silu(x @ g) * (x @ u)) @ dn, rtol=0, atol=1e-12)
    print(f"python checked the Mixtral export: {len(names)} tensors, names, shapes and values: ok")


if __name__ == "__main__":
    {"check-moelab": check_moelab, "write": write, "check-hf": check_hf}[sys.argv[1]](sys.argv[2])
