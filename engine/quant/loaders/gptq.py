"""AutoGPTQ / GPTQModel int4 checkpoints -> `Int4Weight`.

Layout (AutoGPTQ ``QuantLinear``, ``bits=4``): ``qweight int32 [K/8, N]`` packs 8 consecutive input rows
per int32, row ``8i+j`` in bits ``4j..4j+3``; ``qzeros int32 [G, N/8]`` packs 8 consecutive output
columns the same way; ``scales fp16 [G, N]``; ``g_idx int32 [K]`` maps each input row to its group.
``w[n, k] = scales[g, n] * (q[k, n] - z[g, n])`` with ``g = g_idx[k]``, where the stored zero is ``z - 1``
in the original ``gptq`` format (AutoGPTQ's historical off-by-one) and ``z`` itself in ``gptq_v2``.
"""

from __future__ import annotations

import torch

from engine.quant.formats import Int4Weight

SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)


def unpack_rows(packed: torch.Tensor) -> torch.Tensor:
    """``int32 [R, C]`` -> ``uint8 [8R, C]``: nibble ``j`` of row ``i`` becomes row ``8i+j``."""
    r, c = packed.shape
    v = (packed.to(torch.int32)[:, None, :] >> SHIFTS[None, :, None]) & 0xF
    return v.reshape(8 * r, c).to(torch.uint8)


def unpack_cols(packed: torch.Tensor) -> torch.Tensor:
    """``int32 [R, C]`` -> ``uint8 [R, 8C]``: nibble ``j`` of column ``i`` becomes column ``8i+j``."""
    r, c = packed.shape
    v = (packed.to(torch.int32)[:, :, None] >> SHIFTS[None, None, :]) & 0xF
    return v.reshape(r, 8 * c).to(torch.uint8)


def check_g_idx(g_idx: torch.Tensor | None, k: int, group: int) -> None:
    """Accept only the trivial ``g_idx[k] = k // group``; act-order checkpoints are refused.

    Why refuse: with ``desc_act=True`` the groups are not contiguous along K, so the weight cannot be
    expressed in the canonical ``[N, G]`` scale layout without permuting the layer's input, which our
    kernels do not do."""
    if g_idx is None:
        return
    expect = torch.arange(k, dtype=torch.int64) // group
    if g_idx.shape != (k,) or not torch.equal(g_idx.to(torch.int64).cpu(), expect):
        raise ValueError(
            "GPTQ checkpoint uses act-order (desc_act=True: g_idx is not k // group_size); this is not"
            " supported, use a checkpoint quantized with desc_act=False"
        )


def gptq_to_int4(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor | None = None,
    group: int = 128,
    bits: int = 4,
    checkpoint_format: str = "gptq",
) -> Int4Weight:
    """One AutoGPTQ linear -> `Int4Weight` (``[N, K]``, canonical)."""
    if bits != 4:
        raise ValueError(f"only 4-bit GPTQ checkpoints are supported, got bits={bits}")
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise ValueError(f"unknown GPTQ checkpoint_format {checkpoint_format!r} (gptq or gptq_v2)")
    q = unpack_rows(qweight)  # [K, N]
    k, n = q.shape
    if group == -1:
        group = k
    check_g_idx(g_idx, k, group)
    z = unpack_cols(qzeros)[:, :n].float()  # [G, N]
    if checkpoint_format == "gptq":
        z = z + 1  # v1 stores zero - 1 (and wraps 0 - 1 to 15, whose +1 is 16: kept, as AutoGPTQ does)
    return Int4Weight(q.T.contiguous(), scales.float().T.contiguous(), z.T.contiguous(), group)
