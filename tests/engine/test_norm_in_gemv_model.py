"""The decoder with its norms inside the int4 GEMVs (`engine.quant.gpu.NORM_IN_GEMV`): decode steps through
the runner give the bits of the norm kernels followed by the GEMVs, and every one-row step of every layer
after the first takes both fused launches (qkv, and gate_up with its SiLU x up).

In CI the quantized layers' CUDA path (`engine.quant.cuda_linear`) runs on CPU tensors in Triton's
interpreter, bf16 as on a GPU; on a GPU, compiled, the fused launches' sums of squares may round apart
from the norm kernel's (an fp32 ulp of rstd), so the logits are compared within bf16's tolerance there.
"""

from __future__ import annotations

import torch

from engine.quant import cuda_linear, gpu
from engine.quant.linear import QuantLinear
from tests.engine.test_paged_attn_rope import engine_still, prefill_then_decode  # noqa: F401 (fixture)
from tests.engine.test_prefill_graphs import _tiny_runner
from tests.engine.test_split_kv import _interp

# the tiny model's int4 layers (hidden 64, inter 128, g32): fp16 GEMV configs that the norm can go into
CONFIGS = {
    ("int4k", 128, 64): (32, 1, 4, 2, 5, 4, 2, 1, 2),  # qkv: 64 + 2 * 32 outputs
    ("int4k", 256, 64): (32, 1, 4, 2, 5, 4, 2, 2, 2),  # gate_up, two column tiles: silu(gate) * up
    ("int4k", 64, 64): (32, 1, 4, 2, 5, 4, 2, 1, 2),  # o
    ("int4k", 64, 128): (32, 1, 4, 2, 5, 4, 2, 1, 2),  # down
}


def test_decode_with_the_norms_in_the_gemvs_gives_the_same_logits_and_kv(engine_still, monkeypatch):  # noqa: F811
    with engine_still:
        _same_decode(monkeypatch)


def _same_decode(monkeypatch) -> None:
    device = _interp(monkeypatch)
    monkeypatch.setattr("engine.model.FUSED", True)
    if device == "cpu":  # the CUDA path of the quantized layers, on CPU tensors
        monkeypatch.setattr(QuantLinear, "forward", cuda_linear.cuda_linear)
        monkeypatch.setattr(QuantLinear, "silu_mul", cuda_linear.cuda_silu_mul)
        monkeypatch.setattr(QuantLinear, "norm_linear", cuda_linear.cuda_norm_linear)
    for key, cfg in CONFIGS.items():
        monkeypatch.setitem(gpu.TUNING, key, cfg)
    fused: list[bool] = []
    real = cuda_linear.cuda_norm_linear

    def counted(*args, **kwargs):
        out = real(*args, **kwargs)
        fused.append(out is not None)
        return out

    monkeypatch.setattr(cuda_linear, "cuda_norm_linear", counted)
    if device == "cpu":
        monkeypatch.setattr(QuantLinear, "norm_linear", counted)
    runs = []
    for on in (False, True):
        monkeypatch.setattr(gpu, "NORM_IN_GEMV", on)
        fused.clear()
        r = _tiny_runner(True, quant="int4:g32", graph_tokens=None, dtype=torch.bfloat16)
        runs.append((*prefill_then_decode(r, seed=5), list(fused)))
    (want, kv_want, off), (got, kv_got, on) = runs
    assert not any(off)
    # asked 3 times a forward (layer 0's input norm has no residual: the embedding; then its gate_up, and
    # layer 1's qkv and gate_up): declined for the 35-row prefill, taken in each of the 4 one-row steps
    assert on[:3] == [False] * 3 and on[3:] and all(on[3:])
    if device == "cpu":  # eager steps: every one asks (graph replays, on a GPU, run no Python)
        assert len(on) == 3 + 4 * 3
    assert torch.isfinite(got).all()
    if device == "cpu":
        assert torch.equal(got, want) and torch.equal(kv_got, kv_want)
    else:
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(kv_got.float(), kv_want.float(), rtol=2e-2, atol=2e-2)
