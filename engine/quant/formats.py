"""Canonical, unpacked weight-only quantization formats shared by the CPU path, the loaders and the GPU code.

Why unpacked: one layout that every producer (our quantizer, GPTQ/AWQ/GGUF loaders, 2:4 pruning) writes and
every consumer (the CPU reference matmul, the GPU packer in ``engine.quant.gpu``) reads, so a loader bug
shows up as a numerical mismatch against a reference instead of as a silently different bit packing.
`nbytes_packed` is what the packed GPU form takes, and is what the memory budget counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

SCALE_BYTES = 2  # scales and zeros are stored as fp16/bf16 in the packed GPU form


@dataclass
class Int8Weight:
    """``w = q * scale[:, None]``: symmetric int8 per output channel."""

    q: torch.Tensor  # int8 [N, K]
    scale: torch.Tensor  # float32 [N]

    def __post_init__(self) -> None:
        if self.q.dtype != torch.int8 or self.q.dim() != 2:
            raise ValueError(f"Int8Weight.q must be int8 [N, K], got {self.q.dtype} {tuple(self.q.shape)}")
        if self.scale.shape != (self.q.shape[0],):
            raise ValueError(f"Int8Weight.scale must be [{self.q.shape[0]}], got {tuple(self.scale.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)  # type: ignore[return-value]

    @property
    def mask(self) -> None:
        return None

    def dequantize(self, dtype: torch.dtype = torch.float32, rows: slice | None = None) -> torch.Tensor:
        """``[N, K]`` (or the given row range) in ``dtype``; computed in fp32 then cast."""
        rows = rows or slice(None)
        return (self.q[rows].float() * self.scale[rows, None].float()).to(dtype)

    def nbytes_packed(self) -> int:
        n, k = self.shape
        return n * k + n * SCALE_BYTES

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Int8Weight:
        """Map each tensor (device moves), keeping its dtype."""
        return Int8Weight(_keep(fn, self.q), _keep(fn, self.scale))

    def to(self, device: torch.device | str) -> Int8Weight:
        return self.apply(lambda t: t.to(device))


@dataclass
class Int4Weight:
    """``w[n, k] = (q[n, k] - zero[n, k // group]) * scale[n, k // group]`` (times ``mask`` when 2:4).

    ``q`` holds values 0..15 one per byte; ``G = ceil(K / group)``. Zeros are float so that formats with a
    real-valued minimum (GGUF Q4_1) convert without loss; our quantizer fits real zeros too (integer ones
    with a 2:4 mask, whose pruned weights store the zero point).
    """

    q: torch.Tensor  # uint8 [N, K], 0..15
    scale: torch.Tensor  # float32 [N, G]
    zero: torch.Tensor  # float32 [N, G]
    group: int
    mask: torch.Tensor | None = None  # bool [N, K]: 2 of every 4 along K kept

    def __post_init__(self) -> None:
        if self.q.dtype != torch.uint8 or self.q.dim() != 2:
            raise ValueError(f"Int4Weight.q must be uint8 [N, K], got {self.q.dtype} {tuple(self.q.shape)}")
        n, k = self.q.shape
        g = math.ceil(k / self.group)
        for name in ("scale", "zero"):
            if tuple(getattr(self, name).shape) != (n, g):
                raise ValueError(f"Int4Weight.{name} must be [{n}, {g}] for group {self.group}")
        if self.mask is not None and (self.mask.dtype != torch.bool or tuple(self.mask.shape) != (n, k)):
            raise ValueError(f"Int4Weight.mask must be bool [{n}, {k}]")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)  # type: ignore[return-value]

    def dequantize(self, dtype: torch.dtype = torch.float32, rows: slice | None = None) -> torch.Tensor:
        """``[N, K]`` (or the given row range) in ``dtype``; computed in fp32 then cast."""
        rows = rows or slice(None)
        n, k = self.q[rows].shape
        if k % self.group == 0:  # broadcast over groups: the same values, 4x faster than expanding
            g = k // self.group
            q = self.q[rows].reshape(n, g, self.group).float()
            w = ((q - self.zero[rows].float()[..., None]) * self.scale[rows].float()[..., None]).reshape(n, k)
            return (w if self.mask is None else w * self.mask[rows]).to(dtype)
        scale = self.scale[rows].float().repeat_interleave(self.group, dim=1)[:, :k]
        zero = self.zero[rows].float().repeat_interleave(self.group, dim=1)[:, :k]
        w = (self.q[rows].float() - zero) * scale
        if self.mask is not None:
            w = w * self.mask[rows]
        return w.to(dtype)

    def nbytes_packed(self) -> int:
        """Half a byte per value (2:4: half the values plus a 2-bit index each) + 2-byte scales and zeros."""
        n, k = self.shape
        values = math.ceil(n * k / 2) if self.mask is None else math.ceil(n * k / 4) + math.ceil(n * k / 8)
        return values + 2 * self.scale.numel() * SCALE_BYTES

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Int4Weight:
        """Map each tensor (device moves), keeping its dtype."""
        mask = None if self.mask is None else _keep(fn, self.mask)
        return Int4Weight(_keep(fn, self.q), _keep(fn, self.scale), _keep(fn, self.zero), self.group, mask)

    def to(self, device: torch.device | str) -> Int4Weight:
        return self.apply(lambda t: t.to(device))


QWeight = Int8Weight | Int4Weight


def _keep(fn: Callable[[torch.Tensor], torch.Tensor], t: torch.Tensor) -> torch.Tensor:
    out = fn(t)
    return out if out.dtype == t.dtype else out.to(t.dtype)
