"""Launch configs of the quantized decode kernels, measured by ``bench/quant_gpu.py`` and shipped with kb.

Why shipped rather than tuned at start: a sweep takes minutes of GPU time (bench/RESULTS.md), and the
heuristic in `engine.quant.gpu` is up to 2x slower than the measured best on some shapes. Configs are keyed
by compute capability: one Hopper table serves the H100 and the H200 (132 SMs each); elsewhere the
heuristic applies. Only the speed depends on a config, never the result.
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
    by_m = shipped(f"{major}.{minor}").get((kind, group, n, k))
    if not by_m:
        return None
    ms = sorted(by_m)
    return by_m[next((x for x in ms if x >= m), ms[-1])]


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
