"""Launch configs of the quantized decode kernels, measured by ``bench/quant_gpu.py`` and shipped with kb.

Why shipped rather than tuned at start: a sweep takes minutes of GPU time (bench/RESULTS.md), and the
heuristic in `engine.quant.gpu` is up to 2x slower than the measured best on some shapes. Configs are keyed
by compute capability: one Hopper table serves the H100 and the H200 (132 SMs each), and a table keyed
``"9.0 H100"`` overrides it for that model's shapes; elsewhere the heuristic applies. Only the speed
depends on a config, never the result.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

TABLE = Path(__file__).resolve().parents[1] / "data" / "quant_tuning.json"


@functools.cache
def shipped(arch: str) -> dict[tuple[str, int, int, int], dict[int, tuple[int, ...]]]:
    """``{(kind, group, N, K): {M: config}}`` measured on compute capability ``arch`` (e.g. ``"9.0"``)."""
    if not TABLE.exists():
        return {}
    out: dict[tuple[str, int, int, int], dict[int, tuple[int, ...]]] = {}
    for key, cfg in json.loads(TABLE.read_text()).get("configs", {}).get(arch, {}).items():
        kind, group, n, k, m = key.split("|")
        out.setdefault((kind, int(group), int(n), int(k)), {})[int(m)] = tuple(cfg)
    return out


@functools.cache
def lookup(kind: str, group: int, n: int, k: int, m: int) -> tuple[int, ...] | None:
    """The config measured for this shape at the smallest measured batch >= ``m`` (else the largest)."""
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}.{minor}"
    key = (kind, group, n, k)
    by_m = shipped(arch).get(key, {}) | shipped(f"{arch} {_model()}").get(key, {})  # the model's own win
    if not by_m:
        return None
    ms = sorted(by_m)
    return by_m[next((x for x in ms if x >= m), ms[-1])]


def _model() -> str:
    """The GPU's model as the table names it (``"H100"`` of "NVIDIA H100 80GB HBM3"): the H100 and the
    H200 share compute capability 9.0, and a one-token config measured on one need not be the other's
    fastest (bench/RESULTS.md, issue 6: o 9.88 -> 8.56 us on an H100 with a config the H200 did not pick)."""
    name = torch.cuda.get_device_name()
    return next((w for w in name.split() if w[:1].isalpha() and w[1:].isdigit()), name)


def merge(sweep: dict, arch: str, kinds: dict[str, tuple[str, int]]) -> dict:
    """The shipped table with ``sweep`` (quant_kernels.json) added for ``arch``; ``kinds`` maps the sweep's
    kind names to ``(gpu kind, group)``."""
    table = json.loads(TABLE.read_text()) if TABLE.exists() else {"configs": {}, "sources": {}}
    configs = table["configs"].setdefault(arch, {})
    for key, cfg in sweep.get("tuning", {}).items():
        kind, n, k, m = key.split("|")
        if cfg and kind in kinds:
            gk, group = kinds[kind]
            configs[f"{gk}|{group}|{n}|{k}|{m}"] = list(cfg)
    table["sources"][arch] = f"{sweep.get('gpu', '?')}, copy {sweep.get('copy_gbps', 0):.0f} GB/s"
    return table
