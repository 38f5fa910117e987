"""`QuantLinear`: a drop-in for ``nn.Linear`` holding an `Int8Weight` or `Int4Weight`.

On CUDA the matmul is the GPU engineer's ``engine.quant.cuda_linear``. On CPU, few bf16 rows (decode)
go through torch's packed CPU kernels (``engine.quant.cpu_linear``); everything else takes the reference
path that CI runs: dequantize a block of output rows, matmul in the input's dtype, next block. No dequantized
copy is cached between calls: a cache would make the CPU path use fp32 weights for everything after the
first call and hide mistakes in the memory accounting (the budget counts packed bytes).

TEAL activation sparsity: with ``act_threshold`` set, input elements with ``|x| < threshold`` are zeroed
before the matmul at decode (``<= TEAL_MAX_ROWS`` rows), where a sparse GPU kernel skips the weight
columns they would multiply. `teal_everywhere` applies it to all rows, so a perplexity pass (one prefill)
measures the same per-token numerics that decode would see.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from engine.quant import cpu_linear
from engine.quant.formats import Int4Weight, Int8Weight

TEAL_MAX_ROWS = 16
ROW_CHUNK_ELEMS = 1 << 22  # dequantize ~4M weights (16 MB fp32) at a time
_TEAL_ALL = [False]


@contextlib.contextmanager
def teal_everywhere() -> Iterator[None]:
    """Apply TEAL thresholds to every row (prefill too); for quality evaluation."""
    old = _TEAL_ALL[0]
    _TEAL_ALL[0] = True
    try:
        yield
    finally:
        _TEAL_ALL[0] = old


class QuantLinear(nn.Module):
    """``y = x @ dequant(qweight).T + bias`` with optional TEAL input sparsification."""

    # The CUDA path reads the absmax of the input's rows when the norm before it computed them
    # (`engine.fused_ops.row_amax`), so its one-token GEMV skips that pass.
    takes_row_amax = True

    def __init__(
        self,
        qweight: Int8Weight | Int4Weight,
        bias: torch.Tensor | None = None,
        act_threshold: float | None = None,
    ) -> None:
        super().__init__()
        self.qweight = qweight
        self.out_features, self.in_features = qweight.shape
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.act_threshold = act_threshold
        self.gpu: object | None = None  # packed form, owned by engine.quant.gpu
        self.cpu: cpu_linear.CpuPacked | bool | None = None  # packed on first CPU use; False: kernels n/a

    def extra_repr(self) -> str:
        kind = "int8" if isinstance(self.qweight, Int8Weight) else f"int4 g{self.qweight.group}"
        if self.qweight.mask is not None:
            kind += " 2:4"
        teal = f", teal={self.act_threshold:.4g}" if self.act_threshold is not None else ""
        return f"in={self.in_features}, out={self.out_features}, {kind}{teal}"

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> QuantLinear:
        """Move the quantized tensors with the module (``.to(device)``) without casting their dtypes."""
        super()._apply(fn, recurse)
        self.qweight = self.qweight.apply(fn)
        self.cpu = None  # packed from the moved weight when next needed
        return self

    def sparsify(self, x: torch.Tensor) -> torch.Tensor:
        """Zero the small input elements when TEAL applies to this call."""
        thr = self.act_threshold
        if thr is None or not (_TEAL_ALL[0] or x.reshape(-1, self.in_features).shape[0] <= TEAL_MAX_ROWS):
            return x
        return x.masked_fill(x.abs() < thr, 0.0)

    def silu_mul(self, x: torch.Tensor, inter: int) -> torch.Tensor | None:
        """``silu(gate) * up`` of this ``[gate | up]`` layer's product, written by its CUDA GEMV where the
        launch config allows (`engine.quant.cuda_linear.cuda_silu_mul`: one kernel instead of two, same bits);
        None: the caller takes the product and `engine.fused_ops.silu_mul`."""
        if not x.is_cuda:
            return None
        from engine.quant.cuda_linear import cuda_silu_mul

        return cuda_silu_mul(self, x, inter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            from engine.quant.cuda_linear import cuda_linear

            return cuda_linear(self, x)
        y = self._cpu_product(self.sparsify(x))
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def _cpu_product(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T`` on the CPU: torch's packed kernels for few bf16 rows, else dequantize-then-matmul, a
        chunk of output rows at a time so that a large layer (an LM head) never exists whole in fp32."""
        if cpu_linear.applies(x):
            if self.cpu is None:
                self.cpu = cpu_linear.pack(self.qweight) or False
            if self.cpu:
                return cpu_linear.matmul(self.cpu, x)
        n = self.out_features
        step = max(1, ROW_CHUNK_ELEMS // max(1, self.in_features))
        if step >= n:  # one chunk: no output buffer to copy into (~10 % of an int4 prefill's layer time)
            return x @ self.qweight.dequantize(x.dtype).T
        out = torch.empty(*x.shape[:-1], n, dtype=x.dtype, device=x.device)
        for r0 in range(0, n, step):
            rows = slice(r0, min(n, r0 + step))
            out[..., rows] = x @ self.qweight.dequantize(x.dtype, rows).T
        return out
