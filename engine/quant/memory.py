"""Weight bytes as the device holds them, and the start-up check against ``gpu_memory_gb``.

Quantized layers count their packed size (`nbytes_packed`: what the GPU form takes), not the unpacked
CPU reference tensors, so the KV pool derived from the budget is the one the card really has room for.
Tied tensors (embeddings shared with the LM head) count once.
"""

from __future__ import annotations

from torch import nn

GiB = 1024**3


def _size(b: float) -> str:
    return f"{b / GiB:.3f} GiB" if abs(b) >= GiB / 100 else f"{b / 2**20:.2f} MiB"


class ModelTooLarge(ValueError):
    """The weights (plus the activation reserve) do not fit the configured memory budget."""


def weight_bytes(model: nn.Module) -> int:
    """Parameters and buffers (each storage once) + packed bytes of every `QuantLinear`."""
    from engine.quant.linear import QuantLinear

    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.device.type == "meta" or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    for m in model.modules():
        if isinstance(m, QuantLinear):
            total += m.qweight.nbytes_packed()
    return total


def dequant_reserve(model: nn.Module, max_num_seqs: int, elt: int) -> int:
    """Bytes of the largest weight a prefill dequantizes at once (`engine.quant.gpu.dense_weight`).

    Inputs of more than their fused kernel takes (`engine.quant.gpu.fused_rows`) get a transient ``elt``-byte
    copy of their layer's weight; the LM head sees one row per sequence, so it is counted only when
    ``max_num_seqs`` exceeds that."""
    from engine.quant.gpu import fused_rows
    from engine.quant.linear import QuantLinear

    head = getattr(model, "lm_head", None)
    sizes = [
        m.out_features * m.in_features * elt
        for m in model.modules()
        if isinstance(m, QuantLinear) and (m is not head or max_num_seqs > fused_rows(m.qweight))
    ]
    return max(sizes, default=0)


def check_budget(weights: int, act_reserve: int, budget_gb: float, device: str) -> int:
    """Bytes left for the KV pool; raises `ModelTooLarge` with the numbers when nothing is left."""
    budget = budget_gb * GiB
    left = budget - weights - act_reserve
    if weights > budget or left <= 0:
        raise ModelTooLarge(
            f"model does not fit gpu_memory_gb={budget_gb:g} on {device}: weights {_size(weights)}"
            f" + activation reserve {_size(act_reserve)} = {_size(weights + act_reserve)}"
            f" > budget {_size(budget)}; raise gpu_memory_gb, lower max_batch_tokens or quantize"
            f" the weights (quant='int8' or 'int4:g128')"
        )
    return int(left)
