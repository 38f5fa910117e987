"""Load weights from a HF safetensors folder (sharded) or a GGUF file into our decoder.

GGUF files are dequantised once through ``transformers``/``gguf`` and written to a cached safetensors
folder (``KB_ENGINE_CACHE``), so later loads are a plain mmap-backed safetensors read (< 1 s for small
models) instead of ~17 s of dequantisation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.config import ModelConfig, default_cache_dir
from engine.model import LlamaForCausalLM

log = logging.getLogger(__name__)


def _gguf_cache_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def convert_gguf(gguf_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Dequantise a GGUF file to a safetensors folder (config, weights, tokenizer); idempotent."""
    gguf_path = Path(gguf_path)
    out = Path(cache_dir or default_cache_dir()) / f"{gguf_path.stem}-{_gguf_cache_key(gguf_path)}"
    if (out / "model.safetensors").exists() and (out / ".complete").exists():
        return out
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to %s (one time)", gguf_path, out)
    kw = {"gguf_file": gguf_path.name}
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, **kw)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kw)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    save_file(sd, str(tmp / "model.safetensors"))
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["source_gguf"] = {"file": gguf_path.name, "sha_key": _gguf_cache_key(gguf_path)}
    (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
    tok.save_pretrained(tmp)
    (tmp / ".complete").write_text("ok")
    if out.exists():  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out


def resolve_model_dir(model: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Accept a folder or a ``.gguf`` file (or a folder holding exactly one .gguf and no safetensors)."""
    p = Path(model)
    if p.is_file() and p.suffix == ".gguf":
        return convert_gguf(p, cache_dir)
    if p.is_dir() and not list(p.glob("*.safetensors")):
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return convert_gguf(ggufs[0], cache_dir)
    if not (p / "config.json").exists():
        raise FileNotFoundError(f"no config.json / .gguf model at {p}")
    return p


def weight_fingerprint(model_dir: Path) -> str:
    """Identity of the weights, cheap for 16 GB folders: config + per-file size + header + sampled bytes.

    Why not a full hash: hashing 16 GB at start costs seconds; the sampled chunks plus sizes and the
    safetensors headers (names, shapes, dtypes, offsets) separate any two real checkpoints.
    """
    h = hashlib.sha256((model_dir / "config.json").read_bytes())
    for f in sorted(model_dir.glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            for off in range(0, size, max(1, size // 64)):
                fh.seek(off)
                h.update(fh.read(4096))
    return h.hexdigest()[:32]


def _target(model: LlamaForCausalLM, name: str) -> tuple[str, slice | None]:
    """Map a HF tensor name to our parameter and the row slice it fills (q/k/v, gate/up are fused)."""
    c = model.cfg
    q, kv, inter = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.intermediate_size
    for part, sl in (
        ("q_proj", slice(0, q)),
        ("k_proj", slice(q, q + kv)),
        ("v_proj", slice(q + kv, q + 2 * kv)),
    ):
        if f"self_attn.{part}." in name:
            return name.replace(part, "qkv_proj"), sl
    for part, sl in (("gate_proj", slice(0, inter)), ("up_proj", slice(inter, 2 * inter))):
        if f"mlp.{part}." in name:
            return name.replace(part, "gate_up_proj"), sl
    return name, None


def load_tensors(model: LlamaForCausalLM, tensors: dict[str, torch.Tensor]) -> set[str]:
    """Copy HF-named tensors into our parameters; returns the (param, slice) keys it filled."""
    params = dict(model.named_parameters())
    filled: set[str] = set()
    for name, t in tensors.items():
        if "rotary_emb" in name:
            continue
        ours, sl = _target(model, name)
        if ours not in params:
            if name == "lm_head.weight" and model.cfg.tie_word_embeddings:
                continue
            raise KeyError(f"unexpected weight {name}")
        with torch.no_grad():
            (params[ours] if sl is None else params[ours][sl]).copy_(t)
        filled.add(f"{ours}:{sl}")
    return filled


def _expected(model: LlamaForCausalLM) -> set[str]:
    keys = set()
    for name, _ in model.named_parameters():
        if name == "lm_head.weight" and model.cfg.tie_word_embeddings:
            continue
        if "qkv_proj" in name:
            for part in ("q_proj", "k_proj", "v_proj"):
                keys.add("{}:{}".format(*_target(model, name.replace("qkv_proj", part))))
        elif "gate_up_proj" in name:
            for part in ("gate_proj", "up_proj"):
                keys.add("{}:{}".format(*_target(model, name.replace("gate_up_proj", part))))
        else:
            keys.add(f"{name}:None")
    return keys


def load_model(model_dir: Path, device: torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    """Build the decoder on ``device`` and stream each shard's tensors into it, one at a time."""
    if json.loads((model_dir / "config.json").read_text()).get("quantization_config"):
        from engine.quant.loaders.prequant import is_dense_checkpoint, load_prequantized

        if not is_dense_checkpoint(model_dir):  # GPTQ / AWQ int4 checkpoints
            return load_prequantized(model_dir, device, dtype)
    cfg = ModelConfig.from_dir(model_dir)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to(dtype).to_empty(device=device)  # cast on meta: never materialise fp32 on the GPU
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors in {model_dir}")
    filled: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt", device="cpu") as fh:
            for k in list(fh.keys()):  # noqa: SIM118 - safe_open is not iterable
                filled |= load_tensors(model, {k: fh.get_tensor(k)})
    missing = _expected(model) - filled
    if missing:
        raise KeyError(f"missing weights: {sorted(missing)[:5]}")
    model.finish_load(device)
    return model.eval()
