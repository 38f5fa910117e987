"""The A/B switches of bench/quant_e2e.py (``--launches``) and its ``--tune`` configs: each switch sets one
module setting of kb (or a bench-only stand-in) on and off, so that settings are timed on one engine.

Measurement-only switches (``skip*``) make a kernel launch nothing: the step's tokens are then wrong.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from engine import fused_ops, l2_prefetch, paged_attn_triton, pdl
from engine import model as engine_model
from engine.llm_engine import Engine
from engine.quant import gpu, launch_configs

# mode -> the kernel-sweep kind (quant_kernels.json) of its int4 layers; sweep kind -> `engine.quant.gpu` kind
SWEPT = {"int4": "int4k_g128", "int4_g64": "int4k_g64", "int4_24": "int4_24", "int4_teal": "int4_g128_teal"}
GPU_KIND = {"int8": "int8", "int4k_g128": "int4k", "int4k_g64": "int4k", "int4_24": "int4_24",
            "int4_g128_teal": "int4_teal"}  # fmt: skip


class _Tuned:
    """The 'tuned' switch of ``--launches``: the configs of ``--tune`` in use (on), or kb's shipped table
    (off), so that a sweep's winners and the shipped configs are timed on one engine."""

    saved: dict = {}

    @property
    def on(self) -> bool:
        return bool(gpu.TUNING)

    @on.setter
    def on(self, value: bool) -> None:
        gpu.TUNING.clear()
        gpu.TUNING.update(self.saved if value else {})


TUNED = _Tuned()


class _Panels:
    """The 'panels' switch of ``--launches``: every K-packed int4 layer of the engine's model moved to panels
    of its one-token tile (`gpu.to_panels`, as `gpu.PANELS` packs them) or back to rows: same bits."""

    model: torch.nn.Module | None = None

    @property
    def on(self) -> bool:
        return gpu.PANELS

    @on.setter
    def on(self, value: bool) -> None:
        gpu.PANELS = value
        for mod in self.model.modules() if self.model is not None else ():
            g = getattr(mod, "gpu", None)
            if isinstance(g, gpu.GpuWeight) and g.kind == "int4k":
                mod.gpu = gpu.to_panels(g, gpu.panel_width(g))
        torch.cuda.empty_cache()


PANELS = _Panels()


class _Level:
    """An on/off switch over a module's setting (a level, or a function): ``off`` and ``on`` are the values it
    sets."""

    def __init__(self, obj: object, attr: str, off: object, on: object) -> None:
        self.obj, self.attr, self.off_value, self.on_value = obj, attr, off, on

    @property
    def on(self) -> bool:
        return getattr(self.obj, self.attr) == self.on_value

    @on.setter
    def on(self, value: bool) -> None:
        setattr(self.obj, self.attr, self.on_value if value else self.off_value)


def _no_add_norm(x: torch.Tensor, residual: torch.Tensor, weight, eps, row_amax=False) -> tuple:
    return x, residual


def _no_rope(q: torch.Tensor, k: torch.Tensor, cos, sin, into=None) -> tuple:
    return q, k


def _no_attention(q: torch.Tensor, *args) -> torch.Tensor:
    return torch.empty_like(q)  # contiguous, no kernel: o_proj's input as attention would hand it over


# Measurement only, wrong tokens: the step's add + RMSNorms, its RoPE + KV store, its paged attention (and
# combine) launch nothing, so the graph step's change says what each costs. Not for the norms: without
# them the GEMVs take their own absmax pass and follow a GEMV directly, and the step grew (RESULTS.md)
SKIP_NORM = _Level(fused_ops, "add_rmsnorm", fused_ops.add_rmsnorm, _no_add_norm)
SKIP_ROPE = _Level(fused_ops, "rope_qk", fused_ops.rope_qk, _no_rope)
SKIP_ATTN = _Level(paged_attn_triton, "paged_attention", paged_attn_triton.paged_attention, _no_attention)
DECODE_SPLIT = _Level(paged_attn_triton, "DECODE_TILES_PER_SPLIT", 4, 1)  # 1-sequence decode: a tile a split
PREFETCH_ANY = _Level(launch_configs, "H2_PREFETCH", 0, 3)  # configs' PREFETCH slots ignored / obeyed
SB_AHEAD = _Level(launch_configs, "H2_PREFETCH", 1, 3)  # level 2 (scales a step ahead) capped to 1 / obeyed
L2_LINES = _Level(l2_prefetch, "LINES", None, True)  # the L2 prefetch by lines, or as the GPU allows (bulk)


def load_tuning(path: str | None, mode: str) -> None:
    """Launch configs from the kernel sweep (``kind|N|K|M`` -> config) for this mode's weight formats."""
    gpu.TUNING.clear()
    if path:
        tuning = json.loads(Path(path).read_text()).get("tuning", {})
        for key, cfg in tuning.items():
            kind, n, k, m = key.split("|")
            if cfg and kind in ("int8", SWEPT.get(mode)):
                gpu.TUNING[(GPU_KIND[kind], int(n), int(k), int(m))] = tuple(cfg)
    TUNED.saved = dict(gpu.TUNING)


def drop_graphs(eng: Engine) -> None:
    """Forget the engine's decode and prefill graphs, to be captured again on next use, into a fresh pool:
    torch refuses to capture into a pool whose graphs are gone while it still holds their blocks, and a
    graph keeps the addresses of the weights it read (the 'panels' switch moves them)."""
    eng.runner.graphs.clear()
    eng.runner.prefill.graphs.clear()
    eng.runner.graph_pool = None


def _knobs(eng: Engine) -> dict[str, tuple[object, str]]:
    """The A/B settings of ``--launches`` by name, each an (object, attribute) switch: 'pdl' (`engine.pdl`),
    'argmax' (the greedy argmax after the replay, or inside the decode graph), 'amax' (the norms hand their
    rows' absmax to the one-token int4 GEMV, or it takes its own), 'attnpre' (attention loads its metadata
    and first old tile before PDL's wait), 'prefetch' (the fp16 GEMV's configs may load a step ahead),
    'sbahead' (... their scales and biases too, where a config says PREFETCH 2), 'tuned' (the configs of
    ``--tune``, or the shipped table), 'silugemv' (gate_up's GEMV writes ``silu(gate) * up`` itself),
    'gemvpre' (the fp16 GEMV's first step of weights loads before PDL's wait), 'panels' (int4 weights in
    panels of their one-token tile, `gpu.to_panels`), 'early' (the one-token GEMVs release PDL's next kernel
    as they start), 'dsplit' (one sequence's decode attention splits its KV down to a tile a program),
    'ropeattn' (decode attention rotates q and the new key and stores K/V itself, no RoPE launch),
    'l2' (after qkv's GEMV each layer asks o's and some of gate_up's weights into L2, `engine.l2_prefetch`),
    'l2lines' (... by line prefetches instead of bulk ones), 'l2gu<percent>' (that share, e.g. l2gu30);
    'skipnorm', 'skiprope', 'skipattn' (measurement only, wrong tokens: the add + RMSNorms, RoPE + KV
    store, paged attention launch nothing)."""
    return {
        "pdl": (pdl, "ENABLED"),
        "argmax": (eng.runner, "argmax_in_graph"),
        "amax": (engine_model, "ROW_AMAX"),
        "attnpre": (paged_attn_triton, "PRE_WAIT"),
        "prefetch": (PREFETCH_ANY, "on"),
        "sbahead": (SB_AHEAD, "on"),
        "silugemv": (gpu, "SILU_IN_GEMV"),
        "gemvpre": (gpu, "H2_PRE_WAIT"),
        "early": (gpu, "GEMV_EARLY_RELEASE"),
        "tuned": (TUNED, "on"),
        "panels": (PANELS, "on"),
        "dsplit": (DECODE_SPLIT, "on"),
        "ropeattn": (paged_attn_triton, "ROPE_IN_KERNEL"),
        "l2": (l2_prefetch, "ENABLED"),
        "l2lines": (L2_LINES, "on"),
        "l2gu": (l2_prefetch, "GATE_UP_SHARE"),  # set by 'l2gu<percent>' (`_apply`), restored after
        "skipnorm": (SKIP_NORM, "on"),
        "skiprope": (SKIP_ROPE, "on"),
        "skipattn": (SKIP_ATTN, "on"),
    }


def _apply(eng: Engine, item: str) -> str:
    """One A/B setting, a `_knobs` name and 0/1 ('0'/'1' alone: PDL), or 'l2gu<percent>'."""
    name = f"pdl{item}" if item.isdigit() else item
    if share := re.fullmatch(r"l2gu(\d+)", name):
        l2_prefetch.GATE_UP_SHARE = int(share[1]) / 100
        return name
    flag, on = name[:-1], bool(int(name[-1]))
    knobs = _knobs(eng)
    if flag not in knobs:
        raise ValueError(f"unknown --launches item {item!r}")
    setattr(*knobs[flag], on)
    return name
