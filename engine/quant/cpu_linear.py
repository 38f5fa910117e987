"""Packed int4/int8 matmuls on the CPU for few rows (decode), through torch's own CPU kernels.

Why: the reference path (`QuantLinear.forward`) dequantizes every weight on every call, which costs
~1 ms per 1.8M weights here, 100+ ms per SmolLM2 step. torch ships packed CPU kernels for exactly this
(``_weight_int4pack_mm_for_cpu``, tinygemm's layout; ``_weight_int8pack_mm``); with bf16 activations
they read the packed bytes and never build the dense weight. Measured on a 2-core Sapphire Rapids
(bench/RESULTS.md "CPU engine"): a 3072x576 layer at one row takes 46 us (int4) and 44 us (int8)
against 112 us for the dense bf16 weight and 1.6 ms for dequantize-then-matmul. Their cost grows
linearly with the rows (no tensor cores), so above `MAX_ROWS` the dequantizing path wins and is used.

These kernels take bf16 scales only: a scale rounds to bf16 here (8 bits of mantissa) while the
reference path keeps fp32. On SmolLM2 that moved perplexity by +0.1 % (int4, the GGUF's own blocks)
and -0.1 % (int8); `tests/engine/quant/test_cpu_linear.py` bounds the difference per layer.
fp32 activations keep the reference path: these kernels are 10x slower in fp32 than a dense matmul.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.quant.formats import Int4Weight, Int8Weight

MAX_ROWS = 32  # at 64 rows the dequantizing path is already faster (3072x576: 0.9 vs 1.3 ms)
INT4_INNER_TILES = 2  # the packing argument of _convert_weight_to_int4pack_for_cpu


@dataclass
class CpuPacked:
    """A layer's weight in the layout of one of torch's CPU kernels."""

    kind: str  # "int4" or "int8"
    weight: torch.Tensor  # int4: uint8 [N, K/2] tinygemm-packed; int8: int8 [N, K]
    scales: torch.Tensor  # int4: bf16 [K/group, N, 2] (scale, offset); int8: bf16 [N]
    group: int = 0


def pack(qweight: Int8Weight | Int4Weight) -> CpuPacked | None:
    """The packed form, or None where the kernels do not apply (2:4 masks; N not a multiple of 16 or
    K not of the group, which tinygemm requires)."""
    if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        return None
    n, k = qweight.shape
    if isinstance(qweight, Int8Weight):
        return CpuPacked("int8", qweight.q.contiguous(), qweight.scale.to(torch.bfloat16))
    if qweight.mask is not None or n % 16 or k % qweight.group or k % 2:
        return None
    # ours: w = (q - zero) * scale; tinygemm: w = (q - 8) * scale + offset, so offset = (8 - zero) * scale
    scale, zero = qweight.scale.float(), qweight.zero.float()
    sz = torch.stack([scale, (8 - zero) * scale], -1).transpose(0, 1).contiguous().to(torch.bfloat16)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(qweight.q.to(torch.int32), INT4_INNER_TILES)
    return CpuPacked("int4", packed, sz, qweight.group)


def applies(x: torch.Tensor) -> bool:
    """bf16 rows on the CPU, few enough that the packed kernel beats dequantizing."""
    return x.device.type == "cpu" and x.dtype == torch.bfloat16 and x.numel() <= MAX_ROWS * x.shape[-1]


def matmul(p: CpuPacked, x: torch.Tensor) -> torch.Tensor:
    """``x @ W.T`` for ``x [..., K]`` in bf16."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    if p.kind == "int4":
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, p.weight, p.group, p.scales)
    else:
        y = torch.ops.aten._weight_int8pack_mm(rows, p.weight, p.scales)
    return y.view(*x.shape[:-1], y.shape[-1])
