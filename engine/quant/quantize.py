"""Quantize bf16/fp32 weights into `Int8Weight` / `Int4Weight`, and 2:4 pruning masks.

int4 is asymmetric with a real-valued zero point per group (``w = (q - zero) * scale``, as GGUF's Q4_1
stores a real minimum), chosen by a clipping search refined by least squares: each group tries a few
shrunken [min, max] ranges, and for each, alternates between rounding the weights onto the grid and
solving the (activation-weighted, when input norms are given) least-squares scale and offset for those
codes, keeping the pair with the smallest error. Why: a group's range is set by one or two outliers, and
a grid pinned to [min, max] (or to an integer zero) wastes levels. On SmolLM2, whose packaged weights sit
on Q4_1's grid, real zeros alone took int4 g128 from +20.9 % to +7.4 % perplexity (1,024 tokens), and GPTQ
over partial last groups on top to +3.3 %; at 2,048 tokens g128 went from +22.0 % to +4.25 % and g64 from
+8.0 % to +1.99 % (bench/RESULTS.md). The GPU form stores ``-zero * scale`` as an fp16 bias and the CPU
kernels an offset, so a real zero costs nothing at run time. With a 2:4 mask the zero stays an integer in
[0, 15], so that pruned weights can hold the zero point itself and dequantize to exactly 0.
"""

from __future__ import annotations

import math

import torch

from engine.quant.formats import Int4Weight, Int8Weight

CLIP_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


def quantize_int8(w: torch.Tensor) -> Int8Weight:
    """Symmetric per-output-channel int8 (absmax / 127)."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return Int8Weight(q, scale)


def _groups(t: torch.Tensor, group: int, fill: float | bool) -> torch.Tensor:
    """``[N, K]`` -> ``[N, G, group]``, padding K up to a multiple of ``group`` with ``fill``."""
    n, k = t.shape
    pad = math.ceil(k / group) * group - k
    if pad:
        t = torch.cat([t, torch.full((n, pad), fill, dtype=t.dtype, device=t.device)], dim=1)
    return t.view(n, -1, group)


def _search_params(
    wg: torch.Tensor,
    impg: torch.Tensor,
    keep: torch.Tensor,
    clip_grid: tuple[float, ...],
    real_zero: bool = True,
    fit_iters: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero per group of ``wg [N, G, g]`` minimising the weighted error over the clip grid.

    ``real_zero``: the range is ``[min, max]`` shrunk by each factor, and from each range ``fit_iters``
    rounds of least squares (codes fixed) move scale and offset freely; the best pair seen is kept. Fitting
    from every range, not only from the best one, matters: on SmolLM2 at 1,024 tokens g128 gave +3.3 %
    against +5.3 % (3.0 against 1.4 s for a 2048 x 4096 layer on 2 CPU cores). Else (2:4 masks) the
    integer-zero search: the range always holds 0 and the zero is rounded to an integer, so pruned and
    padded weights can store the zero."""
    big = torch.finfo(torch.float32).max
    mn = torch.where(keep, wg, big).amin(-1)
    mx = torch.where(keep, wg, -big).amax(-1)
    if not real_zero:
        mn, mx = mn.clamp(max=0.0), mx.clamp(min=0.0)
    mn, mx = torch.where(keep.any(-1), mn, 0.0), torch.where(keep.any(-1), mx, 0.0)
    wt = impg * keep
    best_err = torch.full(mn.shape, float("inf"), device=wg.device)
    best_scale = torch.ones_like(mn)
    best_zero = torch.zeros_like(mn)

    def keep_better(scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        nonlocal best_err, best_scale, best_zero
        q = torch.round(wg / scale[..., None] + zero[..., None]).clamp(0, 15)
        err = (((q - zero[..., None]) * scale[..., None] - wg) ** 2 * wt).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        best_zero = torch.where(better, zero, best_zero)
        return q

    for f in clip_grid:
        lo, hi = mn * f, mx * f
        scale = ((hi - lo) / 15.0).clamp_min(1e-10)
        zero = -lo / scale if real_zero else torch.round(-lo / scale).clamp(0, 15)
        q = keep_better(scale, zero)
        for _ in range(fit_iters if real_zero else 0):  # codes fixed: scale and zero, then the codes again
            scale, zero = _least_squares(wg, wt, q, scale, zero)
            q = keep_better(scale, zero)
    return best_scale, best_zero


def _least_squares(
    wg: torch.Tensor, wt: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted least-squares ``scale, zero`` for codes ``q`` (``w ~ scale * q + offset``); groups
    whose system is singular or whose scale would not be positive keep the given pair."""
    sw, sq, sqq = wt.sum(-1), (wt * q).sum(-1), (wt * q * q).sum(-1)
    sx, sqx = (wt * wg).sum(-1), (wt * q * wg).sum(-1)
    det = sqq * sw - sq * sq
    ok = det.abs() > 1e-20 * sw.clamp_min(1e-30) ** 2
    det = torch.where(ok, det, torch.ones_like(det))
    s_new = (sqx * sw - sq * sx) / det
    b_new = (sqq * sx - sq * sqx) / det
    ok = ok & (s_new > 1e-10)
    s_safe = torch.where(ok, s_new, torch.ones_like(s_new))
    return torch.where(ok, s_new, scale), torch.where(ok, -b_new / s_safe, zero)


def quantize_int4(
    w: torch.Tensor,
    group: int = 128,
    act_norms: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    clip_grid: tuple[float, ...] = CLIP_GRID,
    fit_iters: int = 2,
) -> Int4Weight:
    """Asymmetric int4 per group of ``group`` input channels, RTN with a clipping search (module doc).

    ``act_norms`` (``[K]``, input-activation L2 norms from calibration) weight the error so that channels
    that carry large activations are reproduced best. ``mask`` (2:4) excludes pruned weights from the
    range and the error, and is stored in the result.
    """
    if group <= 0:
        raise ValueError(f"group must be positive, got {group}")
    w = w.detach().float()
    n, k = w.shape
    wg = _groups(w, group, 0.0)  # [N, G, g]
    keep = _groups(mask if mask is not None else torch.ones_like(w, dtype=torch.bool), group, False)
    imp = torch.ones(k, device=w.device) if act_norms is None else act_norms.float().to(w.device) ** 2
    impg = _groups(imp[None, :], group, 0.0)
    scale, zero = _search_params(wg, impg, keep, clip_grid, real_zero=mask is None, fit_iters=fit_iters)
    q = torch.round(wg / scale[..., None] + zero[..., None]).clamp(0, 15)
    q = q.view(n, -1)[:, :k].to(torch.uint8)
    if mask is not None:  # pruned weights hold the zero point: they dequantize to 0 even without the mask
        q = torch.where(mask, q, zero.repeat_interleave(group, dim=1)[:, :k].to(torch.uint8))
    return Int4Weight(q.contiguous(), scale, zero, group, None if mask is None else mask.bool())


def gptq_int4(
    w: torch.Tensor,
    hessian: torch.Tensor,
    group: int = 128,
    mask: torch.Tensor | None = None,
    damp: float = 0.01,
    clip_grid: tuple[float, ...] = CLIP_GRID,
    act_order: bool = True,
    fit_iters: int = 2,
) -> Int4Weight:
    """GPTQ (Frantar et al. 2022): quantize column by column, pushing each column's error onto the
    columns not yet quantized through the inverse Hessian ``(X^T X)^-1`` of the layer's inputs.

    Why: plain rounding treats weights independently; GPTQ lets later weights compensate (measured on
    SmolLM2-135M in bench/RESULTS.md). ``act_order`` walks the columns by decreasing Hessian diagonal
    (largest activations first) with *static* groups: group parameters (clipping search included) are
    fixed from the original weights, so groups stay contiguous along K and the canonical layout holds
    (no input permutation at run time, unlike AutoGPTQ's ``desc_act``). Without it, each group's
    parameters are chosen when the walk reaches it. With a 2:4 ``mask`` pruned weights are forced to 0
    and their error is compensated as well (SparseGPT with a fixed mask). A K that is not a multiple of
    ``group`` (SmolLM2's 576 at group 128) ends in a partial group, as in `quantize_int4`.
    """
    w = w.detach().float().clone()
    n, k = w.shape
    h = hessian.detach().float().clone().to(w.device)
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    keep = torch.ones_like(w, dtype=torch.bool) if mask is None else mask.bool()
    imp = h.diagonal().clone()
    g_count = -(-k // group)
    scales = torch.empty(n, g_count, device=w.device)
    zeros = torch.empty(n, g_count, device=w.device)
    fit = {"real_zero": mask is None, "fit_iters": fit_iters}
    if act_order:
        wg, impg = _groups(w, group, 0.0), _groups(imp[None, :], group, 0.0)
        scales, zeros = _search_params(wg, impg, _groups(keep, group, False), clip_grid, **fit)
        perm = torch.argsort(imp, descending=True)
    else:
        perm = torch.arange(k, device=w.device)
    w, h, keep_p = w[:, perm], h[perm][:, perm], keep[:, perm]
    h += torch.eye(k, device=w.device) * (damp * h.diagonal().mean())
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q_all = torch.empty(n, k, dtype=torch.uint8, device=w.device)
    block = max(group, 128 // group * group)
    for b0 in range(0, k, block):
        b1 = min(k, b0 + block)
        w1, err1, hinv1 = w[:, b0:b1].clone(), torch.zeros(n, b1 - b0, device=w.device), hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = int(perm[b0 + i])
            gi = col // group
            if not act_order and col % group == 0:  # dynamic groups: from the updated weights
                sl = slice(i, i + group)
                s, z = _search_params(
                    w1[:, None, sl],
                    imp[None, None, col : col + group],
                    keep_p[:, None, b0 + i : b0 + i + group],
                    clip_grid,
                    **fit,
                )
                scales[:, gi], zeros[:, gi] = s[:, 0], z[:, 0]
            s, z = scales[:, gi], zeros[:, gi]
            q = torch.round(w1[:, i] / s + z).clamp(0, 15)
            q = torch.where(keep_p[:, b0 + i], q, z)
            q_all[:, col] = q.to(torch.uint8)
            e = (w1[:, i] - (q - z) * s) / hinv1[i, i]
            w1[:, i:] -= e[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = e
        w[:, b1:] -= err1 @ hinv[b0:b1, b1:]
    return Int4Weight(q_all, scales.contiguous(), zeros.contiguous(), group, None if mask is None else keep)


def prune_2_4(w: torch.Tensor, act_norms: torch.Tensor | None = None) -> torch.Tensor:
    """Bool mask keeping the 2 largest of every 4 consecutive input weights of each row.

    Magnitude by default; with ``act_norms`` ([K] input L2 norms), Wanda's score ``|w| * ||x||``, which
    keeps weights that multiply large activations even when the weight itself is small.
    """
    n, k = w.shape
    if k % 4:
        raise ValueError(f"2:4 sparsity needs the input size to be a multiple of 4, got {k}")
    score = w.detach().float().abs()
    if act_norms is not None:
        if act_norms.shape != (k,):
            raise ValueError(f"act_norms must be [{k}], got {tuple(act_norms.shape)}")
        score = score * act_norms.float().to(score.device)[None, :]
    top = score.view(n, k // 4, 4).topk(2, dim=-1).indices
    mask = torch.zeros(n, k // 4, 4, dtype=torch.bool, device=w.device)
    mask.scatter_(-1, top, True)
    return mask.view(n, k)
