"""Owns the KV tensor and turns a scheduled batch into one forward pass.

The KV pool is sized from a memory budget (`engine.kv_pool`): on CUDA, ``gpu_memory_gb`` minus the
weights and an activation reserve; on CPU, ``kv_cache_gb`` (default 1 GiB). Layout
``[L, 2, blocks, block, kvh, hd]`` keeps one block of all layers addressable as one strided copy for the
CPU/disk tiers. With ``kv_dtype="int8"`` the pool is ``int8 [L, 2, blocks, block*kvh*hd + 4*kvh]``: each
block's int8 values are followed by its fp32 per-head scales, so a block (values + scales) still moves as
one copy through the tiers, and its bytes are about half of bf16's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from engine.attention import AttnBatch, pack_meta
from engine.config import EngineConfig
from engine.graph_inputs import PinnedRing, StaticInputs
from engine.kv_pool import kv_pool_blocks
from engine.model import LlamaForCausalLM
from engine.prefill_graphs import PrefillGraphs, prefill_graph_limit
from engine.sampling import argmax_rows
from engine.sequence import Sequence

GiB = 1024**3


def use_triton(cfg: EngineConfig, device: torch.device, dtype) -> bool:
    """The in-place paged kernel runs on CUDA in bf16/fp16; the gather path serves CPU and fp32."""
    if cfg.attn_backend == "gather" or device.type != "cuda" or dtype == torch.float32:
        return False
    try:
        import engine.paged_attn_triton  # noqa: F401
    except ImportError:
        if cfg.attn_backend == "triton":
            raise
        return False
    return True


# Which reader serves a prefill on the CUDA bf16/fp16 path (measured in bench/engine_gpu.py, docs/engine.md):
# "dense" = SDPA over the chunk's own K/V when one sequence has no cached prefix; a prefix goes to the paged
# Triton kernel, or to gather + SDPA flash ("prefix_flash") when its query count reaches the threshold.
PREFILL_POLICY: dict = {"dense": True, "prefix_flash_min_q": None}


def prefill_mode(seqs: list, int8: bool, decode: bool) -> str:
    """``dense`` | ``prefix_flash`` | ``paged`` for one step's sequences ``(q_start, q_len, ctx, table)``.

    int8 caches always use the paged kernel, so a fresh chunk attends to the same dequantised values that a
    later reuse of its blocks will read (reuse and recompute give the same tokens)."""
    if decode or int8 or len(seqs) != 1:
        return "paged"
    _, q_len, ctx, _ = seqs[0]
    if q_len == ctx and PREFILL_POLICY["dense"]:
        return "dense"
    thr = PREFILL_POLICY["prefix_flash_min_q"]
    if thr is not None and q_len >= thr:
        return "prefix_flash"
    return "paged"


def int8_store_fits(k_cache: torch.Tensor) -> bool:
    """Whether `engine.kv_int8_store` (Triton) writes this int8 cache on CUDA; else `attention.write_kv`."""
    try:
        from engine import kv_int8_store
    except ImportError:
        return False
    return kv_int8_store.ENABLED and kv_int8_store.supported(k_cache)


def graph_batches(max_num_seqs: int) -> list[int]:
    """Batch sizes decode graphs are captured for: powers of two to 16, then steps of 16. A step pads its
    batch up to the next one (decode is memory-bound: padded rows cost little), so a few dozen graphs
    serve every batch instead of one per batch size and table width."""
    sizes = [b for b in (1, 2, 4, 8, 16) if b < max_num_seqs] + list(range(32, max_num_seqs, 16))
    return sizes + [max_num_seqs]


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, cfg: EngineConfig, device: torch.device) -> None:
        self.model = model
        self.device = device
        cfg = cfg.for_device(device.type)
        self.bs = cfg.block_size
        m = model.cfg
        dtype = next(model.parameters()).dtype
        n = kv_pool_blocks(model, cfg, device, dtype)
        self.int8 = cfg.kv_dtype == "int8"
        self.triton = use_triton(cfg, device, dtype)
        # one extra scratch block at the end: CUDA-graph warm-up/capture writes land there
        shape = (self.bs, m.num_kv_heads, m.head_dim)
        if self.int8:
            payload = self.bs * m.num_kv_heads * m.head_dim
            self.kv = torch.zeros(
                m.num_layers, 2, n + 1, payload + 4 * m.num_kv_heads, dtype=torch.int8, device=device
            )
            self.k_cache = [self.kv[i, 0, :, :payload].unflatten(-1, shape) for i in range(m.num_layers)]
            self.v_cache = [self.kv[i, 1, :, :payload].unflatten(-1, shape) for i in range(m.num_layers)]
            self.k_scale = [self.kv[i, 0, :, payload:].view(torch.float32) for i in range(m.num_layers)]
            self.v_scale = [self.kv[i, 1, :, payload:].view(torch.float32) for i in range(m.num_layers)]
        else:
            self.kv = torch.zeros(m.num_layers, 2, n + 1, *shape, dtype=dtype, device=device)
            self.k_cache = [self.kv[i, 0] for i in range(m.num_layers)]
            self.v_cache = [self.kv[i, 1] for i in range(m.num_layers)]
            self.k_scale = self.v_scale = None
        self.int8_store = self.int8 and int8_store_fits(self.k_cache[0])
        self.pool_kv = self.kv[:, :, :n]  # what the block manager hands out
        self.scratch = n
        self.use_graphs = cfg.cuda_graphs and device.type == "cuda"
        if device.type == "cuda":  # one engine a process (as split-K's counters assume)
            from engine import pdl  # Triton: imported only where the CUDA kernels run

            pdl.LIBRARY_MATMULS = pdl.uses_library_matmuls(model)
            from engine import l2_prefetch

            l2_prefetch.attach(model)  # decode steps ask o's and gate_up's weights into L2 (where on)
        self.graphs: dict[tuple[int, int], dict] = {}
        self.graph_pool = None
        self.batch_buckets = graph_batches(cfg.max_num_seqs)
        self.logits_out: torch.Tensor | None = None  # one buffer every decode graph writes its logits into
        # token ids every decode graph reads, and (argmax_in_graph) its greedy argmax written back at its end:
        # a greedy step launched ahead finds its input already there (engine.graph_inputs says why)
        self.tokens = torch.zeros(self.batch_buckets[-1], dtype=torch.long, device=device)
        self.argmax_in_graph = True
        self.staging = PinnedRing(device)
        self._graph_logits: torch.Tensor | None = None  # what the last static decode returned
        self._graph_wrote_ids = False  # whether that decode wrote its argmax into `tokens`
        self.last_prefill: tuple[int, float] = (0, 0.0)
        self.force_static = False  # tests: run the graph path's static buffers eagerly on CPU
        self.prefill = PrefillGraphs(self, prefill_graph_limit(cfg))  # short prefill chunks, as graphs
        # `engine.kv_restore.LayerwiseRestore`, set by an engine whose CPU tier restores layer by layer
        self.restore: Any = None

    def bucket(self, batch: int) -> int:
        """The graph batch size that serves ``batch`` running sequences (itself beyond the largest)."""
        return next((b for b in self.batch_buckets if b >= batch), batch)

    @torch.inference_mode()
    def precapture(self, max_len: int) -> int:
        """Capture the decode graph of every (batch bucket, table width) a context of ``max_len`` tokens
        can need, now, so that no request waits for a capture (tens of ms each on an 8B model, seen as
        TTFT spikes under load in bench/RESULTS.md); returns how many were captured.

        Only for the in-place Triton reader: the gather path (CPU's reader, on CUDA only for checks)
        materializes each sequence's K/V, so its graph for 64 sequences x 16K tokens would pin gigabytes
        in the graph pool (an H200 run ran out of memory that way); it keeps capturing on first use.
        Inference mode as in `run`: a capture with autograd on, over weights that require grad, made the
        KV pool itself require grad, and the CPU tier's copies of it then failed (H200, engine_gpu)."""
        if not self.use_graphs or not self.triton:
            return 0
        widths = self.table_widths(max_len)
        todo = [(b, w) for b in self.batch_buckets for w in widths if (b, w) not in self.graphs]
        for key in todo:
            self._make_static(*key)
        return len(todo) + self.prefill.precapture(max_len)

    @staticmethod
    def table_width(blocks: int) -> int:
        """The graph table width that serves ``blocks``: powers of two bound the graph count."""
        return 1 << (blocks - 1).bit_length()

    def table_widths(self, max_len: int) -> list[int]:
        """Every graph table width a context of up to ``max_len`` tokens can need."""
        top = min(-(-max_len // self.bs), self.scratch)
        return [1 << i for i in range(max(top - 1, 0).bit_length() + 1)]

    def capture(self, warm: Callable[[], Any], body: Callable[[], Any]) -> tuple[torch.cuda.CUDAGraph, Any]:
        """A CUDA graph of ``body`` in the pool every graph shares, after two runs of ``warm`` on a side
        stream (compiles, cuBLAS workspaces); returns it and what the captured ``body`` returned."""
        s = torch.cuda.Stream(self.device)
        s.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(s):
            for _ in range(2):
                warm()
        torch.cuda.current_stream(self.device).wait_stream(s)
        if self.graph_pool is None:
            self.graph_pool = torch.cuda.graph_pool_handle()
        g = torch.cuda.CUDAGraph()
        # thread_local: CUDA calls of other threads (the disk tier's writer and readers, a client's
        # pinned copies) during the capture must not invalidate it, as the default "global" mode lets
        # them (seen on an H200: cudaErrorStreamCaptureInvalidated in bench/engine_check.py)
        with torch.cuda.graph(g, pool=self.graph_pool, capture_error_mode="thread_local"):
            out = body()
        return g, out

    def graph_argmax(self, logits: torch.Tensor) -> torch.Tensor | None:
        """The greedy ids of ``logits``' rows the decode graph already wrote, when ``logits`` is what the
        last static decode returned (the same object, so no step ran since); None otherwise."""
        if logits is self._graph_logits and self._graph_wrote_ids:
            return self.tokens[: logits.shape[0]]
        return None

    def _static_decode(
        self, ids, pos, slots, tables, lens, ahead: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Decode through fixed-shape buffers; on CUDA, replay a captured graph per (batch, width).

        Why: at batch 1 an 8B model's decode step is ~5 ms of GPU time but hundreds of small kernel
        launches from Python; replaying a CUDA graph removes that launch overhead. Its inputs arrive in
        one copy (two when the ids come from the host; none for them when ``ahead`` is already the ids
        buffer the previous graph wrote).
        """
        b = len(ids)
        key = (b, len(tables[0]))
        st = self.graphs.get(key)
        if st is None:
            st = self._make_static(*key)  # before the ids are placed: its warm-up runs the model
        inp: StaticInputs = st["inp"]
        host = self.staging.take(inp.ids_offset + 8 * b)
        inp.pack(host, pos, slots, tables, lens)
        inp.load(host)
        if ahead is None:
            self.tokens[:b].copy_(inp.host_ids(host, ids), non_blocking=True)
        elif ahead.data_ptr() != self.tokens.data_ptr():  # not this buffer's own argmax
            self.tokens[: ahead.shape[0]].copy_(ahead)
        self.staging.copied()
        if st["graph"] is None:
            st["argmax"] = self.argmax_in_graph
            out = self._static_body(st, b, argmax=st["argmax"])
        else:
            st["graph"].replay()
            out = st["out"]
        self._graph_wrote_ids = st["argmax"]
        return out

    def _static_forward(self, st: dict, b: int) -> torch.Tensor:
        inp: StaticInputs = st["inp"]
        if self.triton:
            ab = self._ab(inp["slots"])
            ab.meta = st["meta"]
        else:
            ab = self._ab(inp["slots"], inp["tables"], inp["lens"])
        ab.decode = True
        return self.model.logits(self.model(self.tokens[:b], inp["pos"], ab))

    def _static_body(self, st: dict, b: int, argmax: bool) -> torch.Tensor:
        """What a decode graph holds: the forward, its logits into the shared buffer (graphs only) and,
        with ``argmax``, the greedy ids into `tokens`, where a step launched ahead reads them."""
        logits = self._static_forward(st, b)
        if self.logits_out is not None and self.use_graphs:
            # the logits go to the shared buffer: a graph's own output would stay allocated per graph
            # (~0.5 MB a row at a 128K vocabulary), while its intermediates return to the shared pool
            logits = self.logits_out[:b].copy_(logits)
        if argmax:
            self.tokens[:b].copy_(argmax_rows(logits))
        return logits

    def _make_static(self, b: int, width: int) -> dict:
        inp = StaticInputs(b, width, self.device, int32_meta=self.triton)
        host = self.staging.take(inp.nbytes)
        inp.pack(host, [0] * b, [self.scratch * self.bs] * b, [[self.scratch] * width] * b, [1] * b)
        inp.load(host)
        self.staging.copied()
        st = {"inp": inp, "graph": None, "argmax": False}
        if self.triton:
            i32 = {"dtype": torch.int32, "device": self.device}
            st["meta"] = {
                "tables": inp["tables32"],
                "q_starts": torch.arange(b, **i32),
                "q_lens": torch.ones(b, **i32),
                "ctx_lens": inp["lens32"],
                "max_q": 1,
                "max_ctx": width * self.bs,  # static per graph: the kernel's KV split count depends on it
            }
        if self.use_graphs:
            if self.logits_out is None or self.logits_out.shape[0] < b:  # earlier graphs keep their view
                rows, vocab = max(self.batch_buckets[-1], b), self.model.cfg.vocab_size
                self.logits_out = torch.empty(rows, vocab, dtype=torch.float32, device=self.device)
            g, st["out"] = self.capture(
                # warm-up without argmax: `tokens` may hold the ids a step launched ahead needs
                lambda: self._static_body(st, b, argmax=False),
                lambda: self._static_body(st, b, argmax=self.argmax_in_graph),
            )
            st["graph"], st["argmax"] = g, self.argmax_in_graph
        self.graphs[(b, width)] = st
        return st

    def _ab(self, slots, tables=None, lens=None) -> AttnBatch:
        ab = AttnBatch(slots, [], self.k_cache, self.v_cache, tables, lens, self.k_scale, self.v_scale)
        ab.int8_store = self.int8_store
        return ab

    def _tensor(self, data: list[int]) -> torch.Tensor:
        return torch.tensor(data, dtype=torch.long).to(self.device, non_blocking=True)

    @torch.inference_mode()
    def run(self, batch: list[tuple[Sequence, int]], ahead: torch.Tensor | None = None) -> torch.Tensor:
        """Forward the scheduled tokens; returns fp32 logits of each sequence's last new token.

        ``ahead``: a decode step whose input tokens are not on the host yet (`engine.lookahead`), one per
        sequence on the device, at each sequence's position ``num_computed``.

        A step with blocks restored from the CPU tier (`engine.kv_restore`) replays its prefill graph, which
        holds every layer's copy and wait, where one serves it; else it runs eagerly with each layer waiting
        for its own copy, or, for a small restore, waits for the whole copy first."""
        if self.restore is None or not self.restore.pending():
            return self._run(batch, ahead, None)
        try:
            if self.restore.rides_graph(self.prefill, batch, ahead):
                self.restore.stage()
                return self._run(batch, ahead, None)
            self.restore.start()
            if not self.restore.worth_it():
                self.restore.wait_all()
                return self._run(batch, ahead, None)
            self.restore.layerwise_steps += 1
            return self._run(batch, ahead, self.restore.wait_layer)
        finally:
            self.restore.finish()

    def _run(self, batch, ahead: torch.Tensor | None, layer_ready) -> torch.Tensor:
        if ahead is None and len(batch) > 1 and layer_ready is None:
            split = self.prefill.run_mixed(batch)  # decodes + one short chunk: two graph replays
            if split is not None:
                return split
        t0 = time.perf_counter()
        self._graph_logits = None
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        seqs = []
        last_rows: list[int] = []
        for seq, n in batch:
            start = seq.num_computed
            q_start = len(ids)
            ids.extend(seq.tokens[start : start + n] if ahead is None else [0])
            rng = range(start, start + n)
            pos.extend(rng)
            slots.extend(seq.block_table[p // self.bs] * self.bs + p % self.bs for p in rng)
            ctx = start + n
            nblk = (ctx + self.bs - 1) // self.bs
            seqs.append((q_start, n, ctx, seq.block_table[:nblk]))
            last_rows.append(len(ids) - 1)
        decode = all(n == 1 for _, n in batch)
        self.model.ensure_rope(max(pos))
        if layer_ready is None and self.prefill.serves(seqs, decode, ahead):
            return self._timed_prefill(self.prefill.run(ids, pos, slots, seqs[0]), len(ids), t0)
        if decode and (self.use_graphs or self.force_static) and layer_ready is None:
            width = self.table_width(max(len(s[3]) for s in seqs))
            tables = [s[3] + [self.scratch] * (width - len(s[3])) for s in seqs]
            lens = [s[2] for s in seqs]
            pad = self.bucket(len(seqs)) - len(seqs)  # padded rows write and read only the scratch block
            ids, pos, lens = ids + [0] * pad, pos + [0] * pad, lens + [1] * pad
            slots = slots + [self.scratch * self.bs] * pad
            tables = tables + [[self.scratch] * width] * pad
            self._graph_logits = self._static_decode(ids, pos, slots, tables, lens, ahead)[: len(seqs)]
            return self._graph_logits
        ab = self._ab(self._tensor(slots))
        ab.decode = decode
        ab.layer_ready = layer_ready
        if self.int8_store and not decode:  # where the CUDA path's int8 store puts each block's new rows
            from engine.kv_int8_store import store_plan

            chunks = [(q0, ctx - n, n, table) for q0, n, ctx, table in seqs]
            ab.kv_plan = self._tensor(store_plan(chunks, self.bs)).view(-1, 3)
        if self.triton:
            ab.meta = pack_meta(seqs, self.device)
            ab.meta["mode"] = prefill_mode(seqs, self.int8, decode)
            if ab.meta["mode"] == "prefix_flash":
                ab.meta["table0"] = self._tensor(seqs[0][3])
        elif decode:
            width = max(len(s[3]) for s in seqs)
            ab.block_tables = self._tensor([t for s in seqs for t in s[3] + [0] * (width - len(s[3]))]).view(
                len(seqs), width
            )
            ab.context_lens = self._tensor([s[2] for s in seqs])
        else:
            ab.seqs = [(a, b, c, self._tensor(t)) for a, b, c, t in seqs]
        hidden = self.model(self._tensor(ids) if ahead is None else ahead, self._tensor(pos), ab)
        logits = self.model.logits(hidden[self._tensor(last_rows)])
        return logits if decode else self._timed_prefill(logits, len(ids), t0)

    def _timed_prefill(self, logits: torch.Tensor, tokens: int, t0: float) -> torch.Tensor:
        """Record a prefill step's tokens and time (once its work is done) for the cost model."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.last_prefill = (tokens, time.perf_counter() - t0)
        return logits
