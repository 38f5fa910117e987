"""Continuous batching: which sequences run this step, and how many tokens each.

Each step spends at most ``max_batch_tokens``: running decodes first (one token each, so long prompts
never stall them), then prefill chunks, shortest uncached prompts first. Admission looks every full
prompt block up in GPU -> CPU -> disk and lets the cost model decide between restoring and recomputing.
"""

from __future__ import annotations

import time

from engine.block_manager import BlockManager, NoFreeBlocks, chain_hashes
from engine.kv_tiers import CostModel, CpuTier, DiskTier
from engine.sequence import Sequence, Status


class Scheduler:
    def __init__(
        self,
        bm: BlockManager,
        fingerprint: str,
        max_batch_tokens: int,
        max_num_seqs: int,
        cpu: CpuTier | None = None,
        disk: DiskTier | None = None,
        cost: CostModel | None = None,
        prefix_cache: bool = True,
    ) -> None:
        self.prefix_cache = prefix_cache
        self.max_wait_s = 5.0
        self.bm = bm
        self.fp = fingerprint
        self.bs = bm.block_size
        self.max_batch_tokens = max_batch_tokens
        self.max_num_seqs = max_num_seqs
        self.cpu, self.disk = cpu, disk
        self.cost = cost or CostModel()
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        # CPU-tier blocks are copied layer by layer during the step's forward (`engine.kv_restore`), set
        # by the engine where it runs; None: copied here, before the step
        self.restorer = None

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # --- admission --------------------------------------------------------------------------
    def _prefix_keys(self, seq: Sequence) -> list[str]:
        """Keys of the full blocks of every token but the last (the last is always computed)."""
        return chain_hashes(seq.tokens[: len(seq.tokens) - 1], self.bs, self.fp) if self.prefix_cache else []

    def _admit(self, seq: Sequence, keys: list[str] | None = None) -> bool:
        """Attach cached prefix blocks and allocate the rest of the prompt; False if no room. ``keys``:
        `_prefix_keys` of ``seq`` where the caller has them already (hashing a 15K-token prompt takes ms)."""
        keys = self._prefix_keys(seq) if keys is None else keys
        plan: list[tuple[str, str]] = []  # (tier, key) per reusable block, in order
        for k in keys:
            if self.bm.lookup(k) is not None:
                plan.append(("gpu", k))
            elif self.cpu is not None and k in self.cpu:
                plan.append(("cpu", k))
            elif self.disk is not None and k in self.disk:
                plan.append(("disk", k))
            else:
                break
        blk_bytes = self.bm.kv[:, :, 0].numel() * self.bm.kv.element_size()
        first_slow = next((i for i, (t, _) in enumerate(plan) if t != "gpu"), len(plan))
        if first_slow < len(plan):
            slow = plan[first_slow:]
            cpu_b = blk_bytes * sum(t == "cpu" for t, _ in slow)
            disk_b = blk_bytes * sum(t == "disk" for t, _ in slow)
            est_r = self.cost.restore_ms(cpu_b, disk_b)
            est_c = self.cost.recompute_ms(len(slow) * self.bs)
            choice = "restore" if est_r <= est_c else "recompute"
            seq.reuse = {
                "choice": choice,
                "restore_ms_est": round(est_r, 3),
                "recompute_ms_est": round(est_c, 3),
            }
            if choice == "recompute":
                plan = plan[:first_slow]
        total_blocks = (len(seq.tokens) + self.bs - 1) // self.bs
        gpu_hits = [self.bm.lookup(k) for t, k in plan if t == "gpu"]
        evictable_hits = sum(1 for b in gpu_hits if self.bm.ref[b] == 0)
        if self.bm.num_free - evictable_hits < total_blocks - len(gpu_hits):
            return False
        table: list[int] = []
        hit_keys: list[str] = []
        counts = {"gpu": 0, "cpu": 0, "disk": 0}
        disk_keys = [k for t, k in plan if t == "disk"]
        loaded = self.disk.iter_many(disk_keys) if disk_keys else iter(())  # in plan order, as read
        disk_bytes, disk_s = 0, 0.0  # the disk's rate as a restore sees it: reads overlapped with copies
        for tier, k in plan:
            if tier == "gpu":
                b = self.bm.lookup(k)
                self.bm.acquire(b)
            else:
                t0 = time.perf_counter()
                data = self.cpu.get(k) if tier == "cpu" else next(loaded)
                if data is None:  # vanished or corrupt: recompute from here
                    break
                b = self.bm.allocate()
                if tier == "cpu" and self.restorer is not None and not self.restorer.broken:
                    self.restorer.add(b, data, k)
                else:
                    self.bm.write_block(b, data)
                self.bm.register(b, k)
                if tier == "disk":
                    disk_bytes += data.numel() * data.element_size()
                    disk_s += time.perf_counter() - t0  # wait for the read + copy into the pool
                    if self.cpu is not None:
                        self.cpu.put(k, data)
            table.append(b)
            hit_keys.append(k)
            counts[tier] += self.bs
        if disk_bytes:
            self.cost.observe_disk(disk_bytes, disk_s)
        tail_rows = 0
        if self.prefix_cache:  # a finished turn's partial last block (`BlockManager.keep_tail`)
            needed = seq.tokens[len(table) * self.bs : len(seq.tokens) - 1]  # the last token is computed
            tail = self.bm.take_tail(hit_keys[-1] if hit_keys else None, needed)
            if tail is not None:
                table.append(tail[0])
                tail_rows = tail[1]
                counts["gpu"] += tail_rows
        while len(table) < total_blocks:
            table.append(self.bm.allocate())
        seq.block_table, seq.block_keys = table, hit_keys
        seq.num_computed = len(hit_keys) * self.bs + tail_rows
        if not seq.admitted:  # a preempted sequence keeps its first admission's numbers
            seq.cached_tokens, seq.cached_from = seq.num_computed, counts
        seq.status = Status.RUNNING
        seq.admitted = True
        return True

    def admit_resident(self, seq: Sequence) -> bool:
        """Admit ``seq`` only if every token but its last has KV on the GPU (its full blocks cached, the
        rest in a kept tail), as `engine.answer_feed` needs: nothing restored or recomputed. False leaves
        nothing held."""
        if not self.prefix_cache:
            return False
        keys = self._prefix_keys(seq)
        if any(self.bm.lookup(k) is None for k in keys) or not self._admit(seq, keys):
            return False
        if seq.remaining != 1:  # the tail was gone or held other rows
            self.free(seq, keep_tail=True)
            return False
        return True

    # --- per-step plan ----------------------------------------------------------------------
    def ensure_slots(self, seq: Sequence, upto: int) -> None:
        """Blocks for the first ``upto`` positions of ``seq`` (raises `NoFreeBlocks`)."""
        while len(seq.block_table) * self.bs < upto:
            seq.block_table.append(self.bm.allocate())

    def free(self, seq: Sequence, keep_tail: bool = False) -> None:
        """Release a sequence's blocks at once (finish, cancel or preemption). ``keep_tail``: a finished
        sequence's partial last block stays findable for the next turn (its full blocks are registered)."""
        rows = seq.num_computed % self.bs
        full = seq.num_computed // self.bs
        if keep_tail and self.prefix_cache and rows and len(seq.block_keys) == full < len(seq.block_table):
            parent = seq.block_keys[-1] if full else None
            self.bm.keep_tail(seq.block_table[full], parent, seq.tokens[full * self.bs : seq.num_computed])
        self.bm.release(seq.block_table)
        seq.block_table, seq.block_keys = [], []

    def _preempt(self, victim: Sequence) -> None:
        """Give a running sequence's blocks back; its full blocks stay cached, so re-admission is cheap."""
        self.free(victim)
        victim.num_computed = 0
        victim.status = Status.WAITING
        self.running.remove(victim)
        self.waiting.insert(0, victim)

    def schedule(self) -> list[tuple[Sequence, int]]:
        """Pick (sequence, number of new tokens) pairs for one model step."""
        budget = self.max_batch_tokens
        batch: list[tuple[Sequence, int]] = []
        for seq in sorted(self.running, key=lambda s: (s.remaining > 1, s.remaining)):
            if budget <= 0 or seq.status is not Status.RUNNING:
                break
            n = min(seq.remaining, budget)
            while True:
                try:
                    self.ensure_slots(seq, seq.num_computed + n)
                    break
                except NoFreeBlocks:
                    victims = [s for s in self.running if s is not seq and s not in dict(batch)]
                    if not victims:
                        self._preempt(seq)
                        n = 0
                        break
                    self._preempt(max(victims, key=lambda s: s.arrival))
            if n:
                batch.append((seq, n))
                budget -= n
        # short interactive requests first; anything waiting longer than max_wait_s goes first (no starvation)
        now = time.perf_counter()
        self.waiting.sort(key=lambda s: (now - s.arrival < self.max_wait_s, len(s.tokens), s.arrival))
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self._admit(seq):
                break
            self.waiting.pop(0)
            self.running.append(seq)
            n = min(seq.remaining, budget)
            batch.append((seq, n))
            budget -= n
        return batch
