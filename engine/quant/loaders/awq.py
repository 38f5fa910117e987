"""AutoAWQ int4 (GEMM) checkpoints -> `Int4Weight`.

Layout (AutoAWQ ``WQLinear_GEMM``, ``w_bit=4``): ``qweight int32 [K, N/8]`` and ``qzeros int32 [G, N/8]``
pack 8 output columns per int32 in the interleaved order ``[0, 2, 4, 6, 1, 3, 5, 7]`` (nibble ``i`` holds
column ``8c + ORDER[i]``, chosen for its dequantization kernel); ``scales fp16 [G, N]``;
``w[n, k] = scales[k // group, n] * (q[k, n] - z[k // group, n])`` (no off-by-one, unlike GPTQ v1).
"""

from __future__ import annotations

import torch

from engine.quant.formats import Int4Weight
from engine.quant.loaders.gptq import unpack_cols

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of a packed int32 holds column AWQ_ORDER[i] of its 8
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # column j of the 8 is nibble AWQ_REVERSE_ORDER[j]


def unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    """``int32 [R, C]`` -> ``uint8 [R, 8C]`` in natural column order."""
    v = unpack_cols(packed)  # nibble order
    r, c8 = v.shape
    return v.view(r, c8 // 8, 8)[:, :, list(AWQ_REVERSE_ORDER)].reshape(r, c8)


def awq_to_int4(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group: int = 128, bits: int = 4
) -> Int4Weight:
    """One AutoAWQ GEMM linear -> `Int4Weight` (``[N, K]``, canonical)."""
    if bits != 4:
        raise ValueError(f"only 4-bit AWQ checkpoints are supported, got w_bit={bits}")
    q = unpack_awq(qweight)  # [K, N]
    k, n = q.shape
    if group == -1:
        group = k
    z = unpack_awq(qzeros)[:, :n].float()  # [G, N]
    return Int4Weight(q.T.contiguous(), scales.float().T.contiguous(), z.T.contiguous(), group)
