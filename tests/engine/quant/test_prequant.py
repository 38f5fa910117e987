"""Whole GPTQ / AWQ checkpoints (small, generated here) load through `load_model` into QuantLinear layers
and compute what the same weights, dequantized by the published formula and loaded dense, compute."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine.loader import load_model
from engine.quant.evaluate import forward_dense
from engine.quant.linear import QuantLinear
from engine.quant.policy import apply_policy

HID, INTER, HEADS, KVH, HD, GROUP = 64, 128, 4, 2, 16, 32
SHAPES = {  # HF projection -> (in K, out N)
    "self_attn.q_proj": (HID, HEADS * HD),
    "self_attn.k_proj": (HID, KVH * HD),
    "self_attn.v_proj": (HID, KVH * HD),
    "self_attn.o_proj": (HEADS * HD, HID),
    "mlp.gate_proj": (HID, INTER),
    "mlp.up_proj": (HID, INTER),
    "mlp.down_proj": (INTER, HID),
}
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def _pack_rows(v: np.ndarray) -> torch.Tensor:
    out = np.zeros((v.shape[0] // 8, v.shape[1]), dtype=np.uint32)
    for j in range(8):
        out |= (v[j::8, :] & 0xF) << np.uint32(4 * j)
    return torch.from_numpy(out.view(np.int32))


def _pack_cols(v: np.ndarray, order: list[int]) -> torch.Tensor:
    out = np.zeros((v.shape[0], v.shape[1] // 8), dtype=np.uint32)
    for c in range(v.shape[1] // 8):
        for i in range(8):
            out[:, c] |= (v[:, 8 * c + order[i]] & 0xF) << np.uint32(4 * i)
    return torch.from_numpy(out.view(np.int32))


def _write(folder: Path, method: str | None, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """A 2-layer checkpoint; ``method=None`` writes the dense reference of the same random draw."""
    folder.mkdir()
    cfg = {
        "model_type": "llama",
        "vocab_size": 128,
        "hidden_size": HID,
        "intermediate_size": INTER,
        "num_hidden_layers": 2,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KVH,
        "head_dim": HD,
        "tie_word_embeddings": True,
    }
    if method == "gptq":
        cfg["quantization_config"] = {
            "quant_method": "gptq",
            "bits": 4,
            "group_size": GROUP,
            "desc_act": False,
        }
    elif method == "awq":
        cfg["quantization_config"] = {
            "quant_method": "awq",
            "bits": 4,
            "group_size": GROUP,
            "version": "gemm",
        }
    (folder / "config.json").write_text(json.dumps(cfg))
    t = {"model.embed_tokens.weight": torch.from_numpy(rng.standard_normal((128, HID)).astype(np.float32))}
    t["model.norm.weight"] = torch.ones(HID)
    for i in range(2):
        t[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(HID)
        t[f"model.layers.{i}.post_attention_layernorm.weight"] = torch.ones(HID)
        for proj, (k, n) in SHAPES.items():
            q = rng.integers(0, 16, (k, n)).astype(np.uint32)
            z = rng.integers(1, 16, (k // GROUP, n)).astype(np.uint32)
            s = (rng.random((k // GROUP, n)) * 0.05 / np.sqrt(k) + 1e-3).astype(np.float16)
            name = f"model.layers.{i}.{proj}"
            if method is None:  # published formula, in fp32
                g = np.arange(k) // GROUP
                w = s[g].astype(np.float32) * (q.astype(np.float32) - z[g].astype(np.float32))  # [K, N]
                t[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(w.T))
            elif method == "gptq":
                t[f"{name}.qweight"] = _pack_rows(q)
                t[f"{name}.qzeros"] = _pack_cols(z - 1, list(range(8)))
                t[f"{name}.scales"] = torch.from_numpy(s)
                t[f"{name}.g_idx"] = torch.from_numpy((np.arange(k) // GROUP).astype(np.int32))
            else:
                t[f"{name}.qweight"] = _pack_cols(q, AWQ_ORDER)
                t[f"{name}.qzeros"] = _pack_cols(z, AWQ_ORDER)
                t[f"{name}.scales"] = torch.from_numpy(s)
    save_file(t, str(folder / "model.safetensors"))
    return t


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_prequantized_checkpoint_matches_dense_reference(method: str, tmp_path: Path) -> None:
    _write(tmp_path / "q", method, np.random.default_rng(0))
    _write(tmp_path / "dense", None, np.random.default_rng(0))
    cpu = torch.device("cpu")
    qm = load_model(tmp_path / "q", cpu, torch.float32)
    dm = load_model(tmp_path / "dense", cpu, torch.float32)
    assert isinstance(qm.model.layers[0].self_attn.qkv_proj, QuantLinear)
    assert qm.model.layers[1].mlp.gate_up_proj.qweight.shape == (2 * INTER, HID)
    ids = torch.arange(0, 120, 7)
    with torch.inference_mode():
        torch.testing.assert_close(qm.logits(forward_dense(qm, ids)), dm.logits(forward_dense(dm, ids)))


def test_unsupported_checkpoints_are_refused_clearly(tmp_path: Path) -> None:
    _write(tmp_path / "q", "gptq", np.random.default_rng(0))
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    for qc, match in [
        ({"quant_method": "bitsandbytes"}, "quant_method"),
        ({"quant_method": "gptq", "bits": 8}, "4-bit"),
        ({"quant_method": "awq", "version": "gemv"}, "gemm"),
    ]:
        (tmp_path / "q" / "config.json").write_text(json.dumps({**cfg, "quantization_config": qc}))
        with pytest.raises(ValueError, match=match):
            load_model(tmp_path / "q", torch.device("cpu"), torch.float32)


def test_dense_stored_2of4_checkpoint_keeps_its_mask_under_int4(tmp_path: Path) -> None:
    """compressed-tensors, format "dense" (as RedHat's Sparse-Llama-3.1-8B-2of4): 2 zeros in every 4."""
    t = _write(tmp_path / "s", None, np.random.default_rng(1))
    g = torch.Generator().manual_seed(0)
    for k, v in t.items():
        if k.endswith("_proj.weight"):
            keep = torch.rand(v.shape[0], v.shape[1] // 4, 4, generator=g).argsort(-1) < 2
            t[k] = v * keep.view_as(v)
    save_file(t, str(tmp_path / "s" / "model.safetensors"))
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    sparse = {"format": "dense", "sparsity_structure": "2:4", "targets": ["Linear"], "ignore": ["lm_head"]}
    cfg["quantization_config"] = {"quant_method": "compressed-tensors", "sparsity_config": sparse}
    (tmp_path / "s" / "config.json").write_text(json.dumps(cfg))
    m = load_model(tmp_path / "s", torch.device("cpu"), torch.float32)
    w = m.model.layers[0].mlp.down_proj.weight.detach().clone()
    assert torch.equal(w, t["model.layers.0.mlp.down_proj.weight"])
    apply_policy(m, "int4:g32+2:4")
    mask = m.model.layers[0].mlp.down_proj.qweight.mask
    assert mask[w != 0].all() and (mask.view(w.shape[0], -1, 4).sum(-1) == 2).all()  # every non-zero kept
    cfg["quantization_config"]["sparsity_config"]["format"] = "sparse-24-bitmask"
    (tmp_path / "s" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="sparse-24-bitmask"):
        load_model(tmp_path / "s", torch.device("cpu"), torch.float32)
