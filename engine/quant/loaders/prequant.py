"""Load a pre-quantized Hugging Face checkpoint (AutoGPTQ or AutoAWQ GEMM, 4-bit) into our decoder.

The folder is what users download (``config.json`` with a ``quantization_config``, safetensors with
``*.qweight/qzeros/scales[/g_idx]`` per projection). Linears are built directly as `QuantLinear`: the
dense weights are never materialised, so an 8B int4 checkpoint loads in its ~5 GB. q/k/v and gate/up
are fused by stacking their rows, which needs one group size per fused layer (always true: one
``group_size`` per checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from engine.config import ModelConfig
from engine.model import LlamaForCausalLM
from engine.quant.formats import Int4Weight
from engine.quant.linear import QuantLinear
from engine.quant.loaders.awq import awq_to_int4
from engine.quant.loaders.gptq import gptq_to_int4

FUSED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attn.o_proj": ("self_attn.o_proj",),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.down_proj": ("mlp.down_proj",),
}
QPARTS = ("qweight", "qzeros", "scales", "g_idx")


def quantization_config(model_dir: Path) -> dict | None:
    return json.loads((Path(model_dir) / "config.json").read_text()).get("quantization_config")


def is_dense_checkpoint(model_dir: Path) -> bool:
    """A compressed-tensors checkpoint stored dense (``sparsity_config.format == "dense"``, no quantization
    groups), e.g. RedHat's Sparse-Llama-3.1-8B-2of4: plain weights with 2 zeros in every 4, loaded as usual.

    ``+2:4`` (magnitude) in the quant policy then recovers exactly that mask (the two non-zeros are the two
    largest of each quad) and stores it with the int4 weight."""
    qc = quantization_config(model_dir) or {}
    if str(qc.get("quant_method", "")).lower() != "compressed-tensors":
        return False
    sparsity = qc.get("sparsity_config") or {}
    if qc.get("config_groups") or str(sparsity.get("format", "dense")).lower() != "dense":
        fmt = sparsity.get("format")
        raise ValueError(
            f"compressed-tensors checkpoint with format {fmt!r} or quantization groups is not supported;"
            " only dense-stored (sparse) weights load"
        )
    return True


def _check(qc: dict) -> str:
    method = str(qc.get("quant_method", "")).lower()
    if method not in ("gptq", "awq"):
        raise ValueError(f"unsupported pre-quantized checkpoint: quant_method={method!r} (gptq or awq)")
    bits = qc.get("bits", qc.get("w_bit", 4))
    if bits != 4:
        raise ValueError(f"only 4-bit {method} checkpoints are supported, got bits={bits}")
    if method == "awq" and str(qc.get("version", "gemm")).lower() != "gemm":
        raise ValueError(f"AWQ version {qc.get('version')!r} is not supported (only 'gemm')")
    return method


def _to_int4(method: str, qc: dict, t: dict[str, torch.Tensor], name: str) -> Int4Weight:
    group = int(qc.get("group_size", qc.get("q_group_size", 128)))
    missing = [p for p in QPARTS[:3] if p not in t]
    if missing:
        raise KeyError(f"{name}: missing {missing} in the checkpoint")
    if method == "awq":
        return awq_to_int4(t["qweight"], t["qzeros"], t["scales"], group)
    fmt = str(qc.get("checkpoint_format", "gptq")).lower()
    return gptq_to_int4(t["qweight"], t["qzeros"], t["scales"], t.get("g_idx"), group, checkpoint_format=fmt)


@torch.no_grad()
def load_prequantized(model_dir: Path, device: torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    """Build the decoder with `QuantLinear` layers straight from the packed checkpoint."""
    from engine.loader import _expected, load_tensors

    qc = quantization_config(model_dir) or {}
    method = _check(qc)
    cfg = ModelConfig.from_dir(model_dir)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    for layer in model.model.layers:
        for ours in FUSED:
            parent, _, leaf = ours.rpartition(".")
            setattr(layer.get_submodule(parent), leaf, nn.Identity())  # placeholder, never run
    model = model.to(dtype).to_empty(device=device)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    filled: set[str] = set()
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors in {model_dir}")
    for f in files:
        with safe_open(str(f), framework="pt", device="cpu") as fh:
            for k in list(fh.keys()):  # noqa: SIM118 - safe_open is not iterable
                prefix, _, leaf = k.rpartition(".")
                if leaf in QPARTS or (leaf == "bias" and prefix.rsplit(".", 1)[-1].endswith("_proj")):
                    parts.setdefault(prefix, {})[leaf] = fh.get_tensor(k)
                else:
                    filled |= load_tensors(model, {k: fh.get_tensor(k)})
    missing = _expected(model) - filled
    if missing:
        raise KeyError(f"missing weights: {sorted(missing)[:5]}")
    for i, layer in enumerate(model.model.layers):
        for ours, hf_names in FUSED.items():
            ws, biases = [], []
            for hf in hf_names:
                name = f"model.layers.{i}.{hf}"
                t = parts.get(name, {})
                ws.append(_to_int4(method, qc, t, name))
                biases.append(t.get("bias"))
            qw = Int4Weight(
                *(torch.cat([getattr(w, a) for w in ws]) for a in ("q", "scale", "zero")), ws[0].group
            )
            bias = None if biases[0] is None else torch.cat(biases).to(dtype)
            parent, _, leaf = ours.rpartition(".")
            setattr(layer.get_submodule(parent), leaf, QuantLinear(qw.to(device), bias))
    model.finish_load(device)
    return model.eval()
