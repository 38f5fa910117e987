"""CUDA graphs for short prefills: one sequence's chunk of up to ``prefill_graph_tokens`` new tokens.

Why: a chat turn is a short prefill over a cached history, and eagerly it is host-bound. On an H200 a
256-token prefill of an 8B model is 6.8 ms of kernels (12.9 ms over a 15K-token history) but 14-58 ms of
wall time by machine: 334 launches from Python, Triton's argument binding on every call
(`bench/prefill_probe.py`, bench/RESULTS.md). Decode steps replay graphs already; this does the same for
prefill chunks, padded up to a token bucket (64, 128, 192, 256, ...), one graph per (bucket, table width).
A step that also carries one-token rows (other sessions decoding) runs as a decode graph, then the prefill
graph (`run_mixed`), rather than as one eager pass that would leave those decodes waiting on the host.

How padding stays invisible: the padded tokens come after the real ones, write their K/V only into the
scratch block, and the attention kernel reads each sequence's real query count and context length from
device tensors, so no real token attends to a padded one; only the last real row's logits are kept.
The paged Triton reader serves every chunk (also a fresh one, which eager runs through SDPA). On by
default up to 512 tokens (``EngineConfig.prefill_graph_tokens``): on an H100 a 256-token turn went from
14.2 to 8.8 ms with bf16 weights (302 launches -> 5) and from 25.4 to 15.4 ms with int4 weights.

Quantized models too: buckets of up to ``CHUNK_ROWS`` tokens run the GEMV kernels, larger ones dequantize
a layer's weight into the graphs' shared pool, which keeps one such copy; the KV budget reserves it
(`prefill_graphs_dequantize`). An int8 KV cache is written by `engine.kv_int8_store` from a
plan in the same buffer, padded with empty entries, so padded tokens write no KV at all.
On CPU (tests, ``force``) the same buffers run eagerly through the gather reader.

A turn whose history comes back from the CPU tier keeps its graph: with a layer-wise restorer
(`engine.kv_restore`), every graph also holds each layer's copy of the staged slots on a side stream and
each layer's wait for it; a replay with nothing staged copies nothing.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

# a chunk of up to this many tokens replays a graph unless the config says otherwise: 512 covers a chat
# turn, and larger chunks are GPU-bound anyway
DEFAULT_PREFILL_GRAPH_TOKENS = 512


def prefill_graph_limit(cfg: Any) -> int:
    """The largest prefill chunk (tokens) that replays a CUDA graph, 0 for none: the config's value, else
    512, for plain and quantized weights alike (both timed on an H100, bench/RESULTS.md)."""
    if cfg.prefill_graph_tokens is not None:
        return cfg.prefill_graph_tokens
    return DEFAULT_PREFILL_GRAPH_TOKENS


def prefill_graphs_dequantize(cfg: Any) -> bool:
    """Whether a prefill graph's bucket is large enough for quantized layers to dequantize their weight
    (`engine.quant.cuda_linear`: more than ``CHUNK_ROWS`` rows), which the graphs' pool then keeps."""
    from engine.quant.gpu import CHUNK_ROWS

    return prefill_graph_limit(cfg) > CHUNK_ROWS


def token_buckets(max_tokens: int) -> list[int]:
    """Chunk sizes graphs are captured for, up to ``max_tokens`` (and it): powers of two to 128, then steps
    of 64 to 512, then powers of two. Why the steps: a chat turn's new tokens are rarely a power of two (a
    "256-token" turn reached the engine as 288-320 before `BlockManager.keep_tail`, 257 since), and padding
    288-320 to 512 cost a reuse turn over a 15K history 24-26 ms against 9 ms for 256 tokens alone (H100,
    bench/RESULTS.md)."""
    grid = [16, 32, 64, 128, *range(192, 513, 64), 1024, 2048]
    sizes = [t for t in grid if t < max_tokens]
    return sizes + [max_tokens] if max_tokens > 0 else []


class PrefillGraphs:
    def __init__(self, runner: Any, max_tokens: int) -> None:
        self.runner = runner
        self.buckets = token_buckets(max_tokens)
        # int8 KV needs the one-launch store (`engine.kv_int8_store`): torch's write syncs on the GPU
        self.enabled = bool(self.buckets) and (not runner.int8 or runner.int8_store)
        self.force = False  # tests: the static buffers on CPU, eagerly, through the gather reader
        self.graphs: dict[tuple[int, int], dict] = {}
        self.logits: torch.Tensor | None = None  # the last row's logits, written by every graph

    def serves(self, seqs: list, decode: bool, ahead: torch.Tensor | None) -> bool:
        """Whether this step is one sequence's prefill chunk that a graph (or, forced, its buffers) runs."""
        if decode or ahead is not None or len(seqs) != 1 or not self.enabled:
            return False
        if not (self.force or (self.runner.use_graphs and self.runner.triton)):
            return False
        return seqs[0][1] <= self.buckets[-1]

    def run_mixed(self, batch: list) -> torch.Tensor | None:
        """A step of one-token rows and one short prefill chunk as two replays, a decode graph then a
        prefill graph, instead of one eager pass; None where the graphs cannot serve it. Why: eagerly the
        chunk's ~330 launches make the step host-bound, and every running decode waits for them. The two
        passes write different blocks, so their order does not matter."""
        r = self.runner
        long = [i for i, (_, n) in enumerate(batch) if n > 1]
        if len(long) != 1 or not (r.use_graphs or r.force_static):
            return None
        i = long[0]
        seq, n = batch[i]
        ctx = seq.num_computed + n
        if not self.serves([(0, n, ctx, seq.block_table[: -(-ctx // r.bs)])], False, None):
            return None
        rest = [j for j in range(len(batch)) if j != i]
        decoded = r.run([batch[j] for j in rest])
        prefilled = r.run([batch[i]])  # recorded for the cost model as its own prefill
        out = torch.empty(len(batch), prefilled.shape[-1], dtype=prefilled.dtype, device=prefilled.device)
        out[rest] = decoded
        out[i] = prefilled[0]
        return out

    def run(self, ids: list[int], pos: list[int], slots: list[int], seq: tuple) -> torch.Tensor:
        """Logits ``[1, vocab]`` of the chunk's last token."""
        r = self.runner
        _, n, ctx, table = seq
        t = next(b for b in self.buckets if b >= n)
        width = r.table_width(len(table))
        st = self.graphs.get((t, width)) or self._make(t, width)
        pad = t - n
        fields = (
            ids + [0] * pad,
            pos + [pos[-1]] * pad,
            slots + [r.scratch * r.bs] * pad,
            list(table) + [r.scratch] * (width - len(table)),
            self._plan(t, pos[0], n, table),
            [n, ctx, n - 1],
        )
        host = r.staging.take(8 * st["buf"].numel())
        raw = host.view(torch.int64).numpy()
        off = 0
        for f in fields:
            raw[off : off + len(f)] = f
            off += len(f)
        st["buf"].copy_(host.view(torch.int64), non_blocking=True)
        r.staging.copied()
        if st["graph"] is None:
            out = self._body(st, t, width, (n, ctx, list(table)))
        else:
            st["graph"].replay()
            out = self.logits
        if r.restore is not None:  # a staged restore's copies ran in there
            r.restore.replayed = True
        return out

    def _plan(self, t: int, start: int, n: int, table: list[int]) -> list[int]:
        """The int8 store's plan for a chunk of ``n`` tokens from position ``start``, padded to what any
        chunk of bucket ``t`` can touch; empty for bf16/fp16 KV (the fused RoPE kernel stores those)."""
        if not self.runner.int8:
            return []
        from engine.kv_int8_store import plan_entries, store_plan

        plan = store_plan([(0, start, n, table)], self.runner.bs)
        return plan + [0] * (3 * plan_entries(t, self.runner.bs) - len(plan))

    def _body(self, st: dict, t: int, width: int, host_seq: tuple | None = None) -> torch.Tensor:
        """The forward a graph holds: its inputs are views of one int64 buffer; the int32 tensors the
        Triton reader wants are converted inside the graph."""
        r = self.runner
        b = st["buf"]
        ids, pos, slots = b[:t], b[t : 2 * t], b[2 * t : 3 * t]
        table = b[3 * t : 3 * t + width]
        plan = b[3 * t + width : -3]  # int8 KV: the chunk's blocks, padded with empty entries
        extents = b[-3:]  # real query count, context length, last real row
        ab = r._ab(slots)
        if plan.numel():
            ab.kv_plan = plan.view(-1, 3)
        if r.triton:
            ext32 = extents.to(torch.int32)
            ab.meta = {
                "tables": table.to(torch.int32).view(1, width),
                "q_starts": st["zero32"],
                "q_lens": ext32[0:1],
                "ctx_lens": ext32[1:2],
                "max_q": t,
                "max_ctx": width * r.bs,  # static per graph: the kernel's plan depends on it
                "mode": "paged",
            }
        else:  # gather (CPU): host extents; the padded rows attend to themselves in the scratch block
            n, ctx, tab = host_seq
            dev = b.device
            ab.seqs = [(0, n, ctx, torch.tensor(tab, device=dev))]
            if t > n:
                scratch = torch.full((-(-(t - n) // r.bs),), r.scratch, device=dev)
                ab.seqs.append((n, t - n, t - n, scratch))
        restore = r.restore if r.restore is not None and r.restore.in_graphs else None
        if restore is not None:  # every layer's copy of a staged CPU-tier restore (engine.kv_restore)
            ab.layer_ready = restore.graph_copies()
        hidden = r.model(ids, pos, ab)
        logits = r.model.logits(hidden[extents[2:3]])
        if self.logits is None:
            self.logits = torch.empty_like(logits)
        out = self.logits.copy_(logits)
        if restore is not None:
            restore.graph_join()
        return out

    def _make(self, t: int, width: int) -> dict:
        r = self.runner
        size = 3 * t + width + len(self._plan(t, 0, 0, [])) + 3
        st: dict = {"buf": torch.zeros(size, dtype=torch.long, device=r.device), "graph": None}
        st["zero32"] = torch.zeros(1, dtype=torch.int32, device=r.device)
        b = st["buf"]
        b[2 * t : 3 * t] = r.scratch * r.bs  # warm-up and capture write only the scratch block
        b[3 * t : 3 * t + width] = r.scratch
        m = min(t, width * r.bs)  # a warm-up context the table covers
        b[-3:] = torch.tensor([m, m, m - 1])  # the int8 plan stays empty: warm-up writes no KV
        if r.use_graphs and r.triton:
            body = partial(self._body, st, t, width)
            st["graph"], _ = r.capture(body, body)
        self.graphs[(t, width)] = st
        return st

    def plan(self, max_len: int) -> list[tuple[int, int]]:
        """The (bucket, width) pairs that contexts of up to ``max_len`` tokens can need."""
        if not self.enabled:
            return []
        bs = self.runner.bs
        widths = self.runner.table_widths(max_len)
        lows = [1] + [b + 1 for b in self.buckets[:-1]]  # the fewest new tokens each bucket serves
        return [(t, w) for t, lo in zip(self.buckets, lows, strict=True) for w in widths if w * bs >= lo]

    def precapture(self, max_len: int) -> int:
        """Capture every graph a context of ``max_len`` tokens can need now (see `ModelRunner.precapture`)."""
        if not (self.enabled and self.runner.use_graphs and self.runner.triton):
            return 0
        todo = [k for k in self.plan(max_len) if k not in self.graphs]
        for key in todo:
            self._make(*key)
        return len(todo)
