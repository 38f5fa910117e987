"""CUDA path of `QuantLinear`: pack the canonical formats for `engine.quant.triton_kernels` and dispatch.

Decode-sized inputs (<= 16 rows) go to the fused-dequantization kernels, which read each weight byte once;
decode batches up to `CHUNK_ROWS` run them once per 16 rows; larger inputs (prefill) dequantize the weight
to the model dtype and use the tensor-core GEMM, which is compute-bound there, so the extra pass over the
weight costs little (measured in bench/RESULTS.md).
Split-K: a decode GEMV of a 4096-wide output has too few output tiles to keep 132 SMs busy, so the K
range is split over programs; each stores its partial tile in an fp32 workspace and the last program of a
column tile adds them (`triton_kernels._finish_split`, counters in `split_locks`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from engine.quant import launch_configs
from engine.quant.formats import Int4Weight, Int8Weight
from engine.quant.launch_configs import (  # noqa: F401  (TUNING, SMALL_M, _int4k_config: the benchmarks' names)
    SMALL_M,
    TUNING,
    _chunks,
    _config,
    _int4k_config,
    _silu_in_gemv,
    _sm_count,
)

# Decode batches of up to this many rows take the fused kernels 16 rows at a time. Why: the dense path
# makes a bf16 copy of the weight (the LM head's is 1 GiB at Llama-3-8B), which a CUDA graph captured for a
# batch of 64 keeps in its pool (OOM at a 24 GiB cap on the H200); 4 passes of int4 (2 B a weight) also
# move less than dequantize + GEMM (4.5 B a weight).
CHUNK_ROWS = 64
# 2:4 layers take their fused kernel (`w4_24_kernel`, which loops a block of rows per program) for this
# many rows; more dequantize and run the GEMM, as prefill does. Why: at 16 rows, with the H100 table's
# one-token configs, it took 2,998 us a call for qkv, 12,483 for gate_up and 281 for down
# (`bench/probe_24_rows.py`, 2026-12-07): a decode step of ~0.57 s, where the GEMM path reads the
# dequantized copy at HBM speed (the copy is one layer's, at most gate_up's 235 MB at 8B; the KV budget
# reserves the largest, as for prefill). The kernel's configs were only ever chosen and timed at one row.
SPARSE24_MAX_ROWS = 1


def fused_rows(qweight: Int8Weight | Int4Weight) -> int:
    """The most rows a layer's fused kernel takes (`CHUNK_ROWS`, 2:4 weights `SPARSE24_MAX_ROWS`); larger
    inputs dequantize the weight and run the GEMM. The launcher and the KV budget both ask this."""
    return SPARSE24_MAX_ROWS if getattr(qweight, "mask", None) is not None else CHUNK_ROWS


# gate_up's one-token GEMV writes silu(gate) * up itself where its config allows (`matmul_small`
# ``silu_inter``; `engine.model.MLP`), saving the SiLU x up kernel and its launch: same bits either way,
# the graph step 2122 -> 2065 us on the H200 (quant_e2e's 'silugemv' switch; `bash bench/gpu_pending.sh silu`)
SILU_IN_GEMV = True
# The fp16 GEMV's first step of weights (configs with PREFETCH 2) loads before PDL's wait, overlapping the
# kernel ahead (`triton_w4k_h2` PRE_WAIT): the int4 batch-1 graph step 2405.9 / 2406.4 -> 2399.5 / 2399.8 us
# on an H100, same tokens (quant_e2e's 'gemvpre' switch; `bash bench/gpu_pending.sh gemvpre`)
H2_PRE_WAIT = True
# The one-token GEMVs (fp16, mode 6) release PDL's next kernel as they start instead of after their main
# loop (`triton_w4k_h2` EARLY_RELEASE; quant_e2e's 'early' switch). Same bits. H100, int4 batch-1 graph
# step with the fp16 GEMV on all four matrices (split 1 for qkv and o): 2349.0 -> 2271.2 us; it lost
# (+2.8 %) while qkv and o ran on tensor cores (mode 6). Only one-token launches, the case measured.
GEMV_EARLY_RELEASE = True
# `triton_w4k_h2` PROBE: measurement-only ablations set by bench/gemv_ablation.py (wrong results); 0 here
H2_PROBE = 0
# K-packed int4 weights are stored in panels of their one-token GEMV's column tile (`to_panels`,
# `panel_width`), so that each program streams one contiguous run instead of a short piece of every row
PANELS = False
# The swapped-operand bf16-pair tensor-core kernel (`w4k_mmt_kernel`, the codes as the dot's first operand,
# in registers for wgmma) by mode: its JOIN, 20 a dot a nibble, 21 a dot a nibble pair, 22 a dot a step
MMT_JOIN = {20: 1, 21: 2, 22: 8}


@dataclass
class GpuWeight:
    kind: str  # "int8" | "int4k" (K-packed) | "int4" (N-packed, for TEAL) | "int4_24" | "fallback"
    n: int
    k: int
    tensors: dict[str, torch.Tensor]
    group: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def panel(self) -> int:
        """The width of the panels int4k tensors are stored in (`to_panels`), 0 for ``[rows, N]``."""
        return self.extra.get("panel", 0)


def _pack_nibbles(q: torch.Tensor, per_word: int, bits: int) -> torch.Tensor:
    """Pack the last dim of ``q`` (ints < 2**bits) ``per_word`` to an int32, element i at bit i*bits."""
    *lead, last = q.shape
    q = q.to(torch.int64).reshape(*lead, last // per_word, per_word)
    shifts = torch.arange(per_word, device=q.device, dtype=torch.int64) * bits
    words = (q << shifts).sum(-1)
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32)


def _scales(w: Int4Weight) -> tuple[torch.Tensor, torch.Tensor]:
    s = w.scale.float()
    return s.t().contiguous().half(), (-w.zero.float() * s).t().contiguous().half()


def pack(w: Int8Weight | Int4Weight, n_major: bool = False) -> GpuWeight:
    """The packed GPU form of a canonical weight (see the kernels' module docstrings for layouts).

    Dense int4 is K-packed (`triton_w4k`, the fast decode kernels) unless ``n_major``: activation
    sparsity (TEAL) skips whole rows of K, which only the N-packed layout stores apart."""
    n, k = w.shape
    if isinstance(w, Int8Weight):
        return GpuWeight("int8", n, k, {"w": w.q.t().contiguous(), "s": w.scale.float().contiguous()})
    ok = k % w.group == 0 and n % 8 == 0 and w.group % 32 == 0 and w.group >= 32
    if not ok:  # shapes the kernels do not tile: keep the canonical form (correct, not fast)
        return GpuWeight("fallback", n, k, {}, w.group, {"w": w})
    s, b = _scales(w)
    if w.mask is None and n_major:
        return GpuWeight(
            "int4", n, k, {"w": _pack_nibbles(w.q.t().contiguous(), 8, 4), "s": s, "b": b}, w.group
        )
    if w.mask is None:
        return GpuWeight(
            "int4k", n, k, {"w": _pack_nibbles(w.q, 8, 4).t().contiguous(), "s": s, "b": b}, w.group
        )
    quads = w.mask.reshape(n, k // 4, 4)
    if not bool((quads.sum(-1) == 2).all()):
        raise ValueError("a 2:4 weight must keep exactly 2 of every 4 values along K")
    pos = torch.argsort((~quads).to(torch.int8), dim=-1, stable=True)[..., :2]  # kept positions, ascending
    vals = w.q.reshape(n, k // 4, 4).gather(-1, pos.to(torch.int64)).reshape(n, k // 2)
    tensors = {
        "v": _pack_nibbles(vals, 8, 4),
        "i": _pack_nibbles(pos.reshape(n, k // 2), 16, 2),
        "s": s,
        "b": b,
    }
    return GpuWeight("int4_24", n, k, tensors, w.group)


def to_panels(g: GpuWeight, panel: int) -> GpuWeight:
    """``g`` (K-packed int4) with words, scales and biases in panels of ``panel`` columns, ``[N // panel,
    rows, panel]`` (0: back to ``[rows, N]``): a program of the one-token GEMV then streams its column
    tile as one contiguous run of memory instead of ``panel * 4`` bytes from each of K / 8 rows
    (`triton_w4k.panel_cols`; every int4k kernel reads either layout)."""
    if g.kind != "int4k" or (panel and g.n % panel):
        raise ValueError(f"panels of {panel} columns need a K-packed int4 weight whose N divides by them")
    old = g.panel

    def move(t: torch.Tensor) -> torch.Tensor:  # t [rows, N] in the memory order of the old layout
        rows = t.shape[0]
        if old:  # [N // old, rows, old] -> [rows, N]
            t = t.reshape(g.n // old, rows, old).transpose(0, 1).reshape(rows, g.n)
        if panel:
            t = t.reshape(rows, g.n // panel, panel).transpose(0, 1)
        return t.contiguous().reshape(rows, g.n)

    tensors = {name: move(t) for name, t in g.tensors.items()}
    return GpuWeight(g.kind, g.n, g.k, tensors, g.group, {**g.extra, "panel": panel})


def panel_width(g: GpuWeight) -> int:
    """The panel width `prepare` gives ``g``: the column tile of its one-token GEMV (so that each program
    streams one contiguous run), where `PANELS` is on and the tile divides N; else 0 (rows)."""
    if not PANELS or g.kind != "int4k":
        return 0
    cfg, h2 = _int4k_config(g, _config("int4k", g.n, g.k, g.group, 1), 1)
    width = 0 if cfg is None else cfg[0] // (h2[1] if h2 else 1)
    return width if width and g.n % width == 0 else 0


_LOCKS: dict[torch.device, torch.Tensor] = {}
LOCK_TILES = 1 << 14  # column tiles a split-K launch may have: N / block_n, 8016 for a 128K vocabulary at 16


def split_locks(device: torch.device) -> torch.Tensor:
    """The split-K arrival counters of ``device``, zero between launches (each launch's last programs
    reset theirs). One buffer serves every layer: launches on a stream run one after another, so split-K
    GEMVs must not run on two streams of one device at once (kb runs one engine, on one stream, per GPU).
    Allocated outside CUDA-graph capture (a zeroing captured into a graph would live in the graph's pool)."""
    device = torch.device(device)
    locks = _LOCKS.get(device)
    if locks is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("split-K counters must be allocated before CUDA graph capture (gpu.prepare)")
        locks = _LOCKS[device] = torch.zeros(LOCK_TILES, dtype=torch.int32, device=device)
    return locks


def prepare(layer: Any) -> GpuWeight:
    """Pack ``layer.qweight`` on its device and drop the canonical tensors (keep shapes on ``meta``)."""
    if layer.gpu is None:
        layer.gpu = pack(layer.qweight, n_major=getattr(layer, "act_threshold", None) is not None)
        if width := panel_width(layer.gpu):
            layer.gpu = to_panels(layer.gpu, width)
        packed = next(iter(layer.gpu.tensors.values()), None)
        if packed is not None and packed.is_cuda:
            split_locks(packed.device)
        if layer.gpu.kind != "fallback":
            layer.qweight = layer.qweight.apply(lambda t: t.to("meta"))
    return layer.gpu


def _asm(t: torch.Tensor) -> bool:
    """Inline PTX (`triton_w4k._magic`) when compiled for an NVIDIA GPU; Triton's interpreter and ROCm
    (where ``is_cuda`` is also true) take the plain two-op form."""
    return t.is_cuda and torch.version.hip is None and os.environ.get("TRITON_INTERPRET") != "1"


def prepare_model(model: torch.nn.Module) -> int:
    """Pack every quantized layer of ``model`` (on CUDA) and release the canonical tensors; returns bytes."""
    total = 0
    for mod in model.modules():
        if hasattr(mod, "qweight") and hasattr(mod, "gpu"):
            total += prepare(mod).nbytes()
    torch.cuda.empty_cache()
    return total


def matmul_small(
    g: GpuWeight,
    x: torch.Tensor,
    thresh: float | None = None,
    amax: torch.Tensor | None = None,
    silu_inter: int = 0,
) -> torch.Tensor | None:
    """``x [M <= 16, K] @ W.T`` with the fused kernel of ``g.kind``. ``amax``: each row's ``max |x|`` as
    float32, for the fp16 GEMV to skip its own pass (`triton_w4k_h2` AMAX_IN; measured by the probe).
    ``silu_inter``: W is ``[gate | up]`` of ``2 * silu_inter`` rows and the result is ``silu(gate) * up``
    (``[M, silu_inter]``, the bits of `engine.fused_ops.silu_mul` on the plain product), written by the
    GEMV itself where its config allows (the fp16 GEMV with two column tiles and no split-K), else None."""
    from engine import pdl
    from engine.fused_ops import _interpreted  # SILU_MUL rounds as `fused_ops.silu_mul` does here
    from engine.quant import triton_kernels as tk
    from engine.quant import triton_w4k as tw4k
    from engine.quant import triton_w4k_h2 as tw4k_h2
    from engine.quant import triton_w4k_mma as tw4k_mma

    m = x.shape[0]
    if thresh and g.kind != "int4":
        raise ValueError(f"activation sparsity needs the N-packed int4 layout, not {g.kind}")
    cfg = _config(g.kind + ("_teal" if thresh else ""), g.n, g.k, g.group or 128, m)
    h2 = None
    if g.kind == "int4k":
        tiled, h2 = _int4k_config(g, cfg, m, bf16=x.dtype == torch.bfloat16 or not _asm(x))
        if tiled is None:
            return None if silu_inter else F.linear(x, dense_weight(g, x.dtype))
        cfg = tiled
    if silu_inter and not _silu_in_gemv(g, cfg, h2, silu_inter):
        return None
    block_n, split, warps, stages = cfg[:4]
    if g.kind == "int4_24":  # rows are looped over: no more than the batch needs
        block_m = 1 << (m - 1).bit_length()
    else:
        block_m = (cfg[4] if len(cfg) > 4 else 1) if m == 1 else SMALL_M
    gather = bool(cfg[5]) if len(cfg) > 5 else True
    chunks = _chunks(g, cfg, m)
    split = min(split, chunks)
    per = -(-chunks // split)
    split = -(-chunks // per)
    nsplit = split if split > 1 else 0  # the kernels' SPLIT: how many partial tiles to add (0: none)
    grid = (-(-g.n // block_n), split)
    y = x.new_empty(m, silu_inter or g.n)
    locks = split_locks(x.device)
    ws = x.new_empty(split, m, g.n, dtype=torch.float32) if nsplit else y  # partial tiles of split-K
    if nsplit and grid[0] > LOCK_TILES:
        raise ValueError(f"{grid[0]} column tiles exceed the {LOCK_TILES} split-K counters")
    t = g.tensors
    panel = g.panel  # int4k words, scales and biases in panels (`to_panels`), else 0
    # PDL (engine.pdl) for the kernels that wait before their first load: K-packed int4 and int8
    pdl_kw = pdl.kwargs(x)
    if g.kind == "int4k" and m == 1 and cfg[4] in (0, 2, 3):  # 2: gemv2 (one lop3 a code, bias by row sums)
        rows = cfg[5] if cfg[4] == 3 else g.group // 8  # 3: gemv3, steps of cfg[5] word rows
        tw4k.w4k_gemv_kernel[grid](
            x, t["w"], t["s"], t["b"], y, ws, locks, g.n, g.k, per * rows,
            GROUP=g.group, BLOCK_N=block_n, SPLIT=nsplit, ASM=cfg[4] >= 2 and _asm(x), ROW_SUMS=cfg[4] >= 2,
            BLOCK_R=rows if cfg[4] == 3 else 0, PANEL=panel, num_warps=warps, num_stages=stages, **pdl_kw,
        )  # fmt: skip
    elif g.kind == "int4k" and cfg[4] == 6:  # tensor cores for one token (bf16 x where compiled)
        prefetch = len(cfg) > 8 and bool(cfg[8]) and launch_configs.H2_PREFETCH > 0
        kw = launch_configs.mma_warps_over_k(cfg)
        xa = x if x.data_ptr() % 16 == 0 else x.clone()  # x's 16-byte loads keep the lanes' layout
        tw4k_mma.w4k_gemv_mma_kernel[grid](
            xa, t["w"], t["s"], t["b"], y, ws, locks, g.n, g.k, per * (g.group // 8),
            GROUP=g.group, BLOCK_N=block_n, SPLIT=nsplit, ASM=_asm(x), NW=warps, KW=kw,
            amax_ptr=x if amax is None else amax, AMAX_IN=amax is not None, PREFETCH=prefetch,
            SILU_MUL=bool(silu_inter), CUDA=not _interpreted(), PRE_WAIT=H2_PRE_WAIT and prefetch,
            EVEN=g.n % block_n == 0, RAGGED=per % kw != 0 or (chunks % per) % kw != 0, num_warps=warps,
            num_stages=stages, EARLY_RELEASE=GEMV_EARLY_RELEASE and m == 1, **pdl_kw,
        )  # fmt: skip
    elif h2 is not None:  # fp16 pairs (5: codes as subnormals), m rows sharing each code pair
        aligned = x.data_ptr() % 4 == 0 and x.stride(-1) == 1 and (m == 1 or x.stride(0) % 2 == 0)
        xa = x if aligned else x.clone(memory_format=torch.contiguous_format)  # bf16: two values an int32
        prefetch = 2 if h2[2] == 3 and chunks % per else h2[2]  # 3: every program has ``per`` steps
        tw4k_h2.w4k_gemv_h2_kernel[grid](
            xa, t["w"], t["s"], t["b"], y, ws, locks, g.n, g.k, per * cfg[5], xa.stride(0), y.stride(0),
            GROUP=g.group, BLOCK_N=block_n, BLOCK_R=cfg[5], SPLIT=nsplit, ASM=_asm(x), DENORM=cfg[4] == 5,
            CHAIN=h2[0], COLS=h2[1], EVEN=g.n % block_n == 0, M_ROWS=m, num_warps=warps, num_stages=stages,
            amax_ptr=xa if amax is None else amax, AMAX_IN=amax is not None, PREFETCH=prefetch,
            SILU_MUL=bool(silu_inter), CUDA=not _interpreted(), PRE_WAIT=H2_PRE_WAIT and prefetch >= 2,
            PANEL=panel, EARLY_RELEASE=GEMV_EARLY_RELEASE and m == 1, PROBE=H2_PROBE,
            STEPS=per if prefetch == 3 else 0, **pdl_kw,
        )  # fmt: skip
    elif g.kind == "int4k" and cfg[4] in (18, *MMT_JOIN) and g.group % (8 * cfg[5]) == 0:  # bf16 pairs
        swapped = {"JOIN": MMT_JOIN[cfg[4]]} if cfg[4] in MMT_JOIN else {}
        kernel = tw4k.w4k_mmt_kernel if swapped else tw4k.w4k_mm2_kernel
        kernel[grid](
            x, t["w"], t["s"], t["b"], y, ws, locks, m, g.n, g.k, x.stride(0), y.stride(0), per * cfg[5],
            GROUP=g.group, BLOCK_M=SMALL_M, BLOCK_N=block_n, BLOCK_R=cfg[5], SPLIT=nsplit,
            ASM=_asm(x), PANEL=panel, num_warps=warps, num_stages=stages, **swapped, **pdl_kw,
        )  # fmt: skip
    elif g.kind == "int4k":
        tw4k.w4k_mm_kernel[grid](
            x, t["w"], t["s"], t["b"], y, ws, locks, m, g.n, g.k, x.stride(0), y.stride(0), per * cfg[5],
            GROUP=g.group, BLOCK_M=SMALL_M, BLOCK_N=block_n, BLOCK_R=cfg[5], SPLIT=nsplit,
            ASM=_asm(x), PANEL=panel, num_warps=warps, num_stages=stages, **pdl_kw,
        )  # fmt: skip
    elif g.kind == "int4" and m == 1 and block_m == 0:  # (..., 0, gather, block_k): 2-D accumulator GEMV
        tk.w4_gemv_kernel[grid](
            x, t["w"], t["s"], t["b"], y, ws, locks, g.n, g.k, float(thresh or 0.0), per,
            GROUP=g.group, BLOCK_K=min(cfg[6], g.group), BLOCK_N=block_n, SPLIT=nsplit, SPARSE=bool(thresh),
            GATHER=gather, num_warps=warps, num_stages=stages,
        )  # fmt: skip
    elif g.kind == "int4":
        tk.w4_kernel[grid](
            x, t["w"], t["s"], t["b"], y, ws, locks, m, g.n, g.k, x.stride(0), y.stride(0),
            float(thresh or 0.0), per,
            GROUP=g.group, BLOCK_M=block_m, BLOCK_N=block_n, SPLIT=nsplit, SPARSE=bool(thresh),
            GATHER=gather, num_warps=warps, num_stages=stages,
        )  # fmt: skip
    elif g.kind == "int8":
        tk.w8_kernel[grid](
            x, t["w"], t["s"], y, ws, locks, m, g.n, g.k, x.stride(0), y.stride(0), per,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=128, SPLIT=nsplit,
            MAGIC=len(cfg) > 5 and bool(cfg[5]), num_warps=warps, num_stages=stages, **pdl_kw,
        )  # fmt: skip
    elif g.kind == "int4_24":
        tk.w4_24_kernel[grid](
            x, t["v"], t["i"], t["s"], t["b"], y, ws, locks, m, g.n, g.k, x.stride(0), y.stride(0), per,
            GROUP=g.group, BLOCK_M=block_m, BLOCK_N=block_n, SPLIT=nsplit, GATHER=gather,
            num_warps=warps, num_stages=stages,
        )  # fmt: skip
    else:
        raise ValueError(f"no small-M kernel for {g.kind}")
    return y


def dense_weight(g: GpuWeight, dtype: torch.dtype) -> torch.Tensor:
    """The weight as ``[N, K]`` in ``dtype`` (a transposed view where the packing is K-major)."""
    from engine.quant import triton_kernels as tk
    from engine.quant import triton_w4k as tw4k

    t = g.tensors
    if g.kind == "int8":
        out = torch.empty(g.k, g.n, device=t["w"].device, dtype=dtype)
        grid = (-(-g.k // 64), -(-g.n // 128))
        tk.dequant_w8_kernel[grid](t["w"], t["s"], out, g.k, g.n, BLOCK_K=64, BLOCK_N=128)
        return out.t()
    if g.kind == "int4k":
        out = torch.empty(g.k, g.n, device=t["w"].device, dtype=dtype)
        tw4k.dequant_w4k_kernel[(-(-g.n // 128), g.k // g.group)](
            t["w"], t["s"], t["b"], out, g.n, GROUP=g.group, BLOCK_N=128, ASM=_asm(out), PANEL=g.panel
        )
        return out.t()
    if g.kind == "int4":
        out = torch.empty(g.k, g.n, device=t["w"].device, dtype=dtype)
        tk.dequant_w4_kernel[(-(-g.n // 128), g.k // g.group)](
            t["w"], t["s"], t["b"], out, g.n, g.k, GROUP=g.group, BLOCK_N=128
        )
        return out.t()
    if g.kind == "int4_24":
        out = torch.zeros(g.n, g.k, device=t["v"].device, dtype=dtype)
        tk.dequant_w4_24_kernel[(-(-g.n // 32), g.k // g.group)](
            t["v"], t["i"], t["s"], t["b"], out, g.n, g.k, GROUP=g.group, BLOCK_N=32
        )
        return out
    return g.extra["w"].dequantize(dtype)
