"""A quantized layer's forward on CUDA: its rows through the fused kernels of `engine.quant.gpu` (decode
sizes) or the dequantized weight and a GEMM (prefill), and the ``[gate | up]`` layer's GEMV that writes
``silu(gate) * up`` itself. Kept apart from `engine.quant.gpu`, which packs weights and launches kernels,
so that the layer-level choices (row chunks, the norm's absmax, TEAL, bias) read in one place. The
kernels are reached through the module (``gpu.matmul_small``), which tests and benchmarks patch."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from engine.quant import gpu


def cuda_linear(layer: Any, x: torch.Tensor) -> torch.Tensor:
    """`QuantLinear.forward` on CUDA."""
    g = gpu.prepare(layer)
    from engine.fused_ops import row_amax

    lead = x.shape[:-1]
    amax = row_amax(x)
    x2 = x.reshape(-1, g.k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if x2.shape[0] <= gpu.fused_rows(layer.qweight) and g.kind != "fallback":
        thresh = layer.act_threshold if g.kind == "int4" else None  # int4 is N-packed only for TEAL
        if layer.act_threshold is not None and g.kind != "int4":
            x2 = layer.sparsify(x2)
        if amax is not None and amax.shape != x2.shape[:1]:
            raise ValueError(f"row absmax of shape {tuple(amax.shape)} for {x2.shape[0]} rows")
        step = gpu.SMALL_M
        parts = [
            gpu.matmul_small(g, x2[i : i + step], thresh, None if amax is None else amax[i : i + step])
            for i in range(0, x2.shape[0], step)
        ]
        y = parts[0] if len(parts) == 1 else torch.cat(parts)
    else:
        y = F.linear(layer.sparsify(x2), gpu.dense_weight(g, x.dtype))
    if layer.bias is not None:
        y = y + layer.bias.to(y.dtype)
    return y.reshape(*lead, g.n)


def cuda_silu_mul(layer: Any, x: torch.Tensor, inter: int) -> torch.Tensor | None:
    """``silu(gate) * up`` of the ``[gate | up]`` layer's product with ``x`` (1-4 rows, no bias, no TEAL),
    written by its GEMV (`gpu.matmul_small` ``silu_inter``), or None where that GEMV cannot: the caller then
    runs the product and `engine.fused_ops.silu_mul`, which give the same bits."""
    if not gpu.SILU_IN_GEMV or layer.bias is not None or layer.act_threshold is not None:
        return None
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] > 4 or x2.stride(-1) != 1:  # prefill: the plain path, before any packing work
        return None
    g = gpu.prepare(layer)
    if g.kind != "int4k":
        return None
    from engine.fused_ops import row_amax

    h = gpu.matmul_small(g, x2, amax=row_amax(x), silu_inter=inter)
    return None if h is None else h.reshape(*x.shape[:-1], inter)
