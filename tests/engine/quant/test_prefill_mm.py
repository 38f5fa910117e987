"""`engine.quant.prefill_mm`: prefill rows of an int4 K-packed weight on tensor cores, tiled over rows,
against the reference dequantization; which rows and layers it takes; `cuda_linear` reaching it only when
switched on. Interpreter in CI, compiled on a GPU."""

from __future__ import annotations

import pytest
import torch

from engine.quant import gpu, prefill_mm
from engine.quant.cuda_linear import cuda_linear
from engine.quant.quantize import quantize_int4, quantize_int8
from tests.engine.quant.test_gpu_kernels import (  # noqa: F401 - _interpreter: the autouse fixture
    DEVICE,
    TOL,
    K,
    N,
    _interpreter,
    _on_device,
    _ref,
    _weight,
)

ROWS = gpu.CHUNK_ROWS + 6  # a prefill: more rows than a decode chunk


@pytest.mark.parametrize(
    "group, cfg",
    [
        (128, (32, 32, 16, 4, 2)),
        (64, (32, 64, 8, 4, 2)),
        (64, (16, 32, 2, 4, 2)),
        (128, (32, 32, 16, 4, 2, 1)),
        (64, (16, 32, 4, 4, 2, 1)),
    ],
)
def test_prefill_rows_tile_over_rows_and_columns_as_the_reference(group: int, cfg: tuple) -> None:
    """70 rows in tiles of 16 or 32 (the last partly masked) x column tiles, steps of 2-16 word rows:
    every row equals its product with the reference dequantization; codes out of K order, a wrong row
    offset, a missed tile or a step's scales from another group would break some rows."""
    q = quantize_int4(_weight(11), group=group)
    gw = _on_device(gpu.pack(q))
    x = torch.randn(ROWS, K, generator=torch.Generator().manual_seed(12))
    got = prefill_mm.matmul_prefill(gw, x.to(DEVICE), cfg)
    assert got is not None and got.shape == (ROWS, N)
    torch.testing.assert_close(got.cpu(), x @ _ref(q).t(), **TOL)


def test_prefill_path_declines_decode_rows_other_formats_and_steps_that_cross_groups() -> None:
    q = quantize_int4(_weight(13), group=64)
    gw = _on_device(gpu.pack(q))
    cfg = (32, 32, 8, 4, 2)
    assert prefill_mm.matmul_prefill(gw, torch.randn(gpu.CHUNK_ROWS, K).to(DEVICE), cfg) is None
    assert prefill_mm.matmul_prefill(gw, torch.randn(prefill_mm.MAX_ROWS + 1, K).to(DEVICE), cfg) is None
    assert (
        prefill_mm.matmul_prefill(gw, torch.randn(ROWS, K).to(DEVICE), (32, 32, 16, 4, 2)) is None
    )  # 128 > 64
    g8 = _on_device(gpu.pack(quantize_int8(_weight(13))))
    assert prefill_mm.matmul_prefill(g8, torch.randn(ROWS, K).to(DEVICE), cfg) is None


@pytest.mark.parametrize("enabled", [False, True])
def test_cuda_linear_takes_the_prefill_kernel_only_when_enabled(enabled: bool, monkeypatch) -> None:
    """Prefill rows of an int4 layer: through `prefill_mm` when switched on (no dequantized weight made),
    else the dequantize + GEMM path; the same numbers, with the bias, either way."""
    from engine.quant.linear import QuantLinear

    q = quantize_int4(_weight(14), group=128)
    bias = torch.randn(N)
    layer = QuantLinear(q, bias).to(DEVICE)
    gpu.prepare_model(torch.nn.Sequential(layer))
    monkeypatch.setattr(prefill_mm, "ENABLED", enabled)
    monkeypatch.setitem(prefill_mm.CONFIGS, (N, K), (32, 32, 16, 4, 2))
    dense, fused = [], []
    real_dense, real_fused = gpu.dense_weight, prefill_mm.matmul_prefill
    monkeypatch.setattr(gpu, "dense_weight", lambda g, dt: dense.append(1) or real_dense(g, dt))
    monkeypatch.setattr(prefill_mm, "matmul_prefill", lambda g, x: fused.append(len(x)) or real_fused(g, x))
    x = torch.randn(ROWS, K, generator=torch.Generator().manual_seed(15))
    got = cuda_linear(layer, x.to(DEVICE)).cpu()
    torch.testing.assert_close(got, x @ _ref(q).t() + bias, **TOL)
    assert (fused, dense) == (([ROWS], []) if enabled else ([], [1]))
