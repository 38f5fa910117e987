"""Pull a layer's next weights into L2 while its decode attention runs.

Why: a one-token decode step streams ~4.3 GB of int4 weights, and HBM is what bounds it, yet HBM idles
while the small kernels between two matmuls run: RoPE, attention and its combine between qkv and o, a norm
before gate_up (~10 us a layer on an H100 at short contexts, bench/RESULTS.md). Loads issued by the GEMVs
themselves cannot fill that gap: a kernel's loads start only when its programs do, and pulling a GEMV's
own slice into L2 before PDL's wait competed with the GEMV ahead (measured slower, `engine.pdl`). Here a
kernel on a side stream, forked right after qkv's GEMV, asks for o's weights (and the first share of
gate_up's) once qkv has read its last bytes, so they stream in while attention runs; o's GEMV and the
start of gate_up's then read L2. No kernel waits on it: prefetches are hints, so the main stream's chain
(and its PDL edges) is unchanged, and the side stream joins the main one once, at the end of the step.

Sizes: o is 8.9 MB and gate_up 62 MB at the Llama-3-8B shape in int4 g128; an H100's L2 holds 50 MB and an
RTX 4090's 72 MB, so only o and a share of gate_up are asked for. Bulk prefetches
(``cp.async.bulk.prefetch.L2``, one instruction a chunk) need sm_90; line prefetches (one a 128-byte line,
what older GPUs have) are built too but off, as they made the step slower on an H100.

Measured (bench/RESULTS.md, 2026-12-07): a small gain, -0.9 % a batch-1 int4 step, +0.5 % tok/s. o's
split-1 GEMV programs already load their whole K slice before PDL's wait, during attention, so only
gate_up's first half is new work for that window.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

ENABLED = True  # on an H100: -0.9 % a batch-1 int4 step, +0.5 % tok/s (bench/RESULTS.md); quant_e2e's 'l2'
O_SHARE = 1.0  # of o_proj's bytes
GATE_UP_SHARE = 0.5  # of gate_up's bytes, each tensor's first bytes in memory order
MAX_ROWS = 1  # decode steps of up to this many tokens: measured at batch 1 only
LINES: bool | None = None  # None: bulk prefetches on sm_90+ (and none before: line prefetches were slower)
CHUNK = 16384  # bytes a lane asks for by one bulk prefetch
LINE_CHUNK = 2048  # ... by line prefetches (16 of them)
_LANES = 32  # one warp a program: the chunks spread over many SMs' memory pipes

_BULK = tl.constexpr(
    "{ .reg .pred p; setp.ne.s32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.b32 $0, 0; }"
)
_LINE = tl.constexpr("{ .reg .pred p; setp.ne.s32 p, $2, 0; @p prefetch.global.L2 [$1]; mov.b32 $0, 0; }")


@triton.jit
def l2_prefetch_kernel(addr_ptr, size_ptr, n, LINES: tl.constexpr, STEPS: tl.constexpr):
    """Chunk ``i`` of the table (its address and byte count) asked into L2 by lane ``i``: one bulk
    prefetch, or ``STEPS`` line prefetches 128 bytes apart. Returns at once; the lines arrive later."""
    i = tl.program_id(0) * 32 + tl.arange(0, 32)
    ok = i < n
    a = tl.load(addr_ptr + i, mask=ok, other=0)
    s = tl.load(size_ptr + i, mask=ok, other=0)
    if LINES:
        off = tl.arange(0, STEPS) * 128
        live = (off[None, :] < s[:, None]).to(tl.int32)
        tl.inline_asm_elementwise(
            _LINE, "=r,l,r", [a[:, None] + off[None, :], live], dtype=tl.int32, is_pure=False, pack=1
        )
    else:
        tl.inline_asm_elementwise(_BULK, "=r,l,r", [a, s], dtype=tl.int32, is_pure=False, pack=1)


@dataclass
class Plan:
    """One layer's chunk table: device addresses (int64) and byte counts (int32, multiples of 16)."""

    addrs: torch.Tensor
    sizes: torch.Tensor
    key: tuple  # the settings it was built for
    nbytes: int


def byte_ranges(tensors: list[torch.Tensor], share: float) -> list[tuple[int, int]]:
    """``(address, bytes)`` of each tensor's first ``share`` of bytes, 16-byte aligned and whole (a
    range may grow by up to 15 bytes each side, within the tensor's 512-byte allocator block)."""
    out = []
    for t in tensors:
        if not t.is_contiguous():
            raise ValueError("L2 prefetch needs contiguous weight tensors")
        n = int(t.numel() * t.element_size() * min(max(share, 0.0), 1.0))
        if n <= 0:
            continue
        start = t.data_ptr()
        lo, hi = start & ~15, (start + n + 15) & ~15
        out.append((lo, hi - lo))
    return out


def chunks(ranges: list[tuple[int, int]], chunk: int) -> tuple[list[int], list[int]]:
    """The ranges cut into pieces of at most ``chunk`` bytes (a multiple of 16)."""
    if chunk <= 0 or chunk % 16:
        raise ValueError(f"chunk must be a positive multiple of 16, not {chunk}")
    addrs, sizes = [], []
    for start, n in ranges:
        for off in range(0, n, chunk):
            addrs.append(start + off)
            sizes.append(min(chunk, n - off))
    return addrs, sizes


def _weights(linear: torch.nn.Module) -> list[torch.Tensor] | None:
    """The packed GPU tensors of a quantized layer (`engine.quant.gpu.GpuWeight`), or None."""
    g = getattr(linear, "gpu", None)
    tensors = getattr(g, "tensors", None)
    return list(tensors.values()) if tensors else None


class LayerPrefetch:
    """What one decoder layer asks into L2 after its qkv GEMV: its o_proj's weights and the first share
    of its gate_up's. Attached to the layer's attention module by `attach`."""

    def __init__(self, o_proj: torch.nn.Module, gate_up: torch.nn.Module) -> None:
        self.o_proj, self.gate_up = o_proj, gate_up
        self.plan: Plan | None = None

    def _key(self) -> tuple:
        lines = _lines(self.o_proj)
        return (O_SHARE, GATE_UP_SHARE, LINE_CHUNK if lines else CHUNK, lines, id(self.o_proj.gpu),
                id(self.gate_up.gpu))  # fmt: skip

    def current(self) -> Plan | None:
        """The chunk table for the current settings, built outside graph capture (a table built during
        capture would be a copy captured into the graph)."""
        key = self._key()
        if self.plan is not None and self.plan.key == key:
            return self.plan
        o, gu = _weights(self.o_proj), _weights(self.gate_up)
        if o is None or gu is None or (o[0].is_cuda and torch.cuda.is_current_stream_capturing()):
            return None
        ranges = byte_ranges(o, O_SHARE) + byte_ranges(gu, GATE_UP_SHARE)
        addrs, sizes = chunks(ranges, key[2])
        dev = o[0].device
        self.plan = Plan(
            torch.tensor(addrs, dtype=torch.int64, device=dev),
            torch.tensor(sizes, dtype=torch.int32, device=dev),
            key,
            sum(sizes),
        )
        return self.plan


def _lines(linear: torch.nn.Module) -> bool:
    if LINES is not None:
        return LINES
    w = _weights(linear)
    return not (w and w[0].is_cuda and torch.cuda.get_device_capability(w[0].device)[0] >= 9)


def attach(model: torch.nn.Module) -> int:
    """Give every decoder layer whose o_proj and gate_up are packed quantized layers its `LayerPrefetch`
    (``self_attn.l2_next``); returns how many layers got one."""
    n = 0
    for layer in getattr(getattr(model, "model", None), "layers", ()):
        attn, mlp = layer.self_attn, layer.mlp
        if _weights(attn.o_proj) is not None and _weights(mlp.gate_up_proj) is not None:
            attn.l2_next = LayerPrefetch(attn.o_proj, mlp.gate_up_proj)
            n += 1
    return n


_SIDE: dict[torch.device, torch.cuda.Stream] = {}
_FORKED: set[torch.device] = set()


def usable(x: torch.Tensor) -> bool:
    """Only compiled, on an NVIDIA GPU, when on, for steps of up to `MAX_ROWS` tokens. Line prefetches
    (before sm_90) only when asked for (``LINES``): on an H100 they made the step slower (RESULTS.md)."""
    compiled = x.is_cuda and torch.version.hip is None and os.environ.get("TRITON_INTERPRET") != "1"
    if not (ENABLED and compiled and x.shape[0] <= MAX_ROWS):
        return False
    return bool(LINES) or torch.cuda.get_device_capability(x.device)[0] >= 9


def launch(pf: LayerPrefetch, x: torch.Tensor) -> bool:
    """Fork a side stream from the current one (after what was queued last, qkv's GEMV) and queue the
    layer's prefetch there; `join` must follow before the step ends. Eager decode steps fork too (a
    graph's warm-ups, or graphs turned off), as measured; the chunk table is built in the first of them,
    outside any capture."""
    if not usable(x):
        return False
    plan = pf.current()
    if plan is None:
        return False
    main = torch.cuda.current_stream(x.device)
    side = _SIDE.get(x.device)
    if side is None:
        side = _SIDE[x.device] = torch.cuda.Stream(x.device)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        run_plan(plan)
    _FORKED.add(x.device)
    return True


def run_plan(plan: Plan) -> None:
    """Queue ``plan``'s prefetches on the current stream (`launch` forks first; bench/l2_probe.py calls it
    directly)."""
    lines, n = plan.key[3], plan.addrs.numel()
    l2_prefetch_kernel[(triton.cdiv(n, _LANES),)](
        plan.addrs, plan.sizes, n, LINES=lines, STEPS=plan.key[2] // 128 if lines else 1, num_warps=1
    )


def join(x: torch.Tensor) -> None:
    """Make the current stream wait for the side stream's prefetches, if any were queued since the last
    join (a captured graph must end with every forked stream joined)."""
    if x.device in _FORKED:
        _FORKED.discard(x.device)
        torch.cuda.current_stream(x.device).wait_stream(_SIDE[x.device])
