"""`SplitPartials`: a split-K matmul's output handed over unsummed, for the kernel after it to add up."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SplitPartials:
    """The partial rows of a split-K GEMV, ``parts [split, M, N]`` float32, whose sum in split order,
    rounded to ``dtype``, is the GEMV's output.

    Why: the GEMV's own sum needs an arrival ticket (an L2 round trip) and a last program that loads
    every partial and stores the result, all on the critical path at the kernel's end, where the next
    kernel (launched early by PDL) waits. The fused kernel after each GEMV of a layer (RoPE + KV store
    after qkv, add + RMSNorm after o_proj and down_proj, SiLU x up after gate_up) loads its input anyway;
    it adds the partials as it loads them, in the same order and rounding: the same bits
    (`engine.fused_ops`, `engine.quant.gpu.matmul_small`)."""

    parts: torch.Tensor
    dtype: torch.dtype

    def __post_init__(self) -> None:
        if not self.parts.is_contiguous():  # the readers step from the first partial by `stride`
            raise ValueError("split-K partials must be contiguous")

    @property
    def shape(self) -> torch.Size:
        return self.parts.shape[1:]

    @property
    def splits(self) -> int:
        return self.parts.shape[0]

    @property
    def first(self) -> torch.Tensor:
        """The first partial ``[M, N]``: the base a reader's pointers start from (views of it too)."""
        return self.parts[0]

    @property
    def stride(self) -> int:
        """Elements from one partial to the next."""
        return self.parts[0].numel()
