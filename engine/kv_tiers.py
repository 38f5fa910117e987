"""CPU and disk tiers for KV blocks, and the restore-vs-recompute cost model.

Blocks are found by the same content keys as in the GPU pool, so no session id is needed and a new
process finds the blocks of an earlier one. Disk files carry a checksum of their payload (xxh3-128; SHA-256
in files written without the xxhash package, still read) and the model fingerprint; anything that does not
verify is deleted with a warning and the block is recomputed. Why xxh3: the checksum guards against torn
or rotten files, not an attacker (who could rewrite an unkeyed SHA-256 as easily), and SHA-256 at ~1.8 GB/s
a core was what kept a restore at 1.3x the disk's read time on a 2-core box (bench/restore_disk.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import struct
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

try:
    import xxhash
except ImportError:  # pragma: no cover - a dependency; a box without it writes SHA-256
    xxhash = None

log = logging.getLogger(__name__)
CHECKSUM = "xxh3_128" if xxhash is not None else "sha256"  # what new files carry


def digest(algo: str, payload: memoryview) -> str:
    """Hex checksum of ``payload``; raises ValueError for an algorithm this process cannot compute."""
    if algo == "xxh3_128" and xxhash is not None:
        return xxhash.xxh3_128(payload).hexdigest()
    if algo == "sha256":
        return hashlib.sha256(payload).hexdigest()
    raise ValueError(f"checksum {algo!r} unavailable")


MAGIC = b"KBKV1\n"
_DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.int8)}


class CpuTier:
    """LRU of blocks in host memory (pinned when a GPU is present so restores are async DMA)."""

    def __init__(
        self, max_bytes: int, pin: bool = False, on_evict: Callable[[str, torch.Tensor], None] | None = None
    ) -> None:
        self.max_bytes = max_bytes
        self.pin = pin
        self.on_evict = on_evict  # called before an entry's host buffer is reused (write it to disk)
        self.pending = False  # an async device->host copy may still be landing in some slot
        self.bytes = 0
        self.items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.free: list[torch.Tensor] = []
        self.slab_bytes = 0
        self.lock = threading.Lock()
        # slots a layer-wise restore still reads on the GPU (`engine.kv_restore`): never evicted or reused
        # until released; a dropped held key's slot is freed on release
        self.held: dict[str, int] = {}
        self.dropped_held: dict[str, torch.Tensor] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.items

    def _slot(self, like: torch.Tensor) -> torch.Tensor | None:
        """A host buffer for one block: reuse a free slot, else pin a new slab of 32 slots.

        Why slabs: pinning (cudaHostAlloc) costs ~1 ms per call; per-block allocation put that on the
        request path whenever the GPU pool spilled.
        """
        if not self.free or self.free[-1].shape != like.shape or self.free[-1].dtype != like.dtype:
            n = like.numel() * like.element_size()
            room = (self.max_bytes - self.slab_bytes) // n
            if room <= 0:
                return None
            k = int(min(32, room))
            slab = torch.empty((k, *like.shape), dtype=like.dtype, pin_memory=self.pin)
            self.slab_bytes += k * n
            self.free = [slab[i] for i in range(k)]
        return self.free.pop()

    def reserve(self, like: torch.Tensor) -> None:
        """Allocate (pin) every slot up front, in slabs of 32 blocks.

        Why: pinning a 32-block slab of the 8B shape (256 MB) is a page-locking call of tens of ms; done
        lazily it lands inside whichever request first spills into a new slab, as a TTFT outlier. vLLM pins
        its CPU swap space at start for the same reason."""
        n = like.numel() * like.element_size()
        with self.lock:
            while (room := (self.max_bytes - self.slab_bytes) // n) > 0:
                k = int(min(32, room))
                slab = torch.empty((k, *like.shape), dtype=like.dtype, pin_memory=self.pin)
                self.slab_bytes += k * n
                self.free.extend(slab[i] for i in range(k))

    def _evict_oldest(self) -> torch.Tensor | None:
        key = next((k for k in self.items if k not in self.held), None)
        if key is None:
            return None
        old = self.items.pop(key)
        self.bytes -= old.numel() * old.element_size()
        if self.on_evict is not None:
            self.on_evict(key, old)
        return old

    def put(self, key: str, data: torch.Tensor, non_blocking: bool = False) -> bool:
        """Copy ``data`` in; True when the tier holds ``key`` afterwards.

        ``non_blocking`` (a GPU block into pinned memory): the copy is queued on the current CUDA stream,
        so later kernels that overwrite the GPU block and later host->device restores from this slot run
        after it, with no host sync on the request path. Host-side readers (disk write-back) synchronise
        first; a host-side write into a slot synchronises here.
        """
        n = data.numel() * data.element_size()
        if key in self.items:
            return True
        if n > self.max_bytes:
            return False
        with self.lock:
            while self.bytes + n > self.max_bytes and (old := self._evict_oldest()) is not None:
                self.free.append(old)
            if self.bytes + n > self.max_bytes:
                return False  # what is left is held by a restore in flight
            host = self._slot(data)
            if host is None:
                host = self._evict_oldest()
                if host is None:
                    return False
            asynchronous = non_blocking and self.pin and data.is_cuda
            if not asynchronous and self.pending and torch.cuda.is_available():
                torch.cuda.current_stream().synchronize()  # a queued copy may still target this slot
                self.pending = False
            host.copy_(data, non_blocking=asynchronous)
            self.pending = self.pending or asynchronous
            self.items[key] = host
            self.bytes += n
            return True

    def drop(self, key: str) -> bool:
        """Forget ``key`` without calling ``on_evict`` (a deletion, not a demotion to disk)."""
        with self.lock:
            host = self.items.pop(key, None)
            if host is None:
                return False
            self.bytes -= host.numel() * host.element_size()
            if key in self.held:
                self.dropped_held[key] = host  # a restore still reads it
            else:
                self.free.append(host)
            return True

    def hold(self, key: str) -> None:
        with self.lock:
            self.held[key] = self.held.get(key, 0) + 1

    def release(self, keys: list[str]) -> None:
        """The GPU no longer reads these slots once the model stream has passed the restore's last event;
        a later host-side write into one synchronises first (``pending``)."""
        with self.lock:
            for key in keys:
                left = self.held.get(key, 0) - 1
                if left > 0:
                    self.held[key] = left
                    continue
                self.held.pop(key, None)
                if key in self.dropped_held:
                    self.free.append(self.dropped_held.pop(key))
            self.pending = True

    def get(self, key: str) -> torch.Tensor | None:
        with self.lock:
            t = self.items.get(key)
            if t is not None:
                self.items.move_to_end(key)
            return t


class DiskTier:
    """One checksummed file per block under ``root``; LRU by last use; writes on a background thread."""

    def __init__(self, root: str | Path, max_bytes: int, fingerprint: str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.fingerprint = fingerprint
        self.lock = threading.Lock()
        self.index: OrderedDict[str, int] = OrderedDict()  # key -> file size, oldest first
        entries = []
        for p in self.root.glob("*/*.kvb"):
            try:
                st = p.stat()
            except OSError:
                continue
            entries.append((st.st_mtime, p.stem, st.st_size))
        for _, key, size in sorted(entries):
            self.index[key] = size
        self.bytes = sum(self.index.values())
        self.dropped: set[str] = set()  # deleted keys whose queued writes must not land
        self.q: queue.Queue[tuple[str, torch.Tensor] | None] = queue.Queue()
        self.writer = threading.Thread(target=self._write_loop, daemon=True, name="kv-disk")
        self.writer.start()
        self.pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="kv-read")
        self.read_seconds = 0.0
        self.read_bytes = 0

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.kvb"

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def put(self, key: str, data: torch.Tensor) -> None:
        """Queue a block for writing (the caller's tensor is copied first)."""
        if key in self.index:
            return
        with self.lock:
            self.dropped.discard(key)
        self.q.put((key, data.to("cpu", copy=True)))

    def pending(self) -> int:
        """Blocks queued for writing, each a host copy held until written."""
        return self.q.qsize()

    def drop(self, key: str) -> bool:
        """Delete ``key``'s file; a write of it still queued is skipped, so a deletion sticks."""
        with self.lock:
            self.dropped.add(key)
            size = self.index.pop(key, None)
            if size is not None:
                self.bytes -= size
        self.path(key).unlink(missing_ok=True)
        return size is not None

    def flush(self) -> None:
        self.q.join()

    def close(self) -> None:
        self.flush()
        self.q.put(None)
        self.writer.join(timeout=10)

    def _write_loop(self) -> None:
        while True:
            item = self.q.get()
            try:
                if item is None:
                    return
                self._write(*item)
            except Exception:  # noqa: BLE001 - a failed write only costs a later recompute
                log.exception("disk tier write failed")
            finally:
                self.q.task_done()

    def _write(self, key: str, data: torch.Tensor) -> None:
        if key in self.dropped:
            return
        # a view, not a copy: writing it releases the GIL (and xxh3 runs at ~50 GB/s)
        payload = memoryview(data.contiguous().view(-1).view(torch.uint8).numpy())
        header = json.dumps(
            {
                "key": key,
                "fingerprint": self.fingerprint,
                "dtype": str(data.dtype),
                "shape": list(data.shape),
                "checksum": CHECKSUM,
                "digest": digest(CHECKSUM, payload),
                "nbytes": len(payload),
            }
        ).encode()
        p = self.path(key)
        p.parent.mkdir(exist_ok=True)
        tmp = p.with_suffix(f".tmp{threading.get_ident()}")
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<I", len(header)) + header)
            f.write(payload)
        os.replace(tmp, p)
        size = len(MAGIC) + 4 + len(header) + len(payload)
        with self.lock:
            self.index[key] = size
            self.bytes += size
            while self.bytes > self.max_bytes and len(self.index) > 1:
                old, osize = self.index.popitem(last=False)
                self.bytes -= osize
                self.path(old).unlink(missing_ok=True)

    def iter_many(self, keys: list[str]) -> Iterator[torch.Tensor | None]:
        """Blocks in ``keys`` order as their reads complete, read in parallel (file reads and checksums
        release the GIL). A consumer copies each block to the GPU while later ones are still being read,
        so a restore costs the disk time plus one block's copy, not the sum (bench/RESULTS.md)."""
        if len(keys) <= 1:
            return (self.get(k) for k in keys)
        return self.pool.map(self.get, keys)

    def _drop(self, key: str, why: str, delete: bool = True) -> None:
        log.warning("kv disk tier: skipping block %s (%s); it will be recomputed", key[:12], why)
        with self.lock:
            self.bytes -= self.index.pop(key, 0)
        if delete:  # damaged files go; another model's files stay (only it can use them)
            self.path(key).unlink(missing_ok=True)

    def get(self, key: str) -> torch.Tensor | None:
        """Read and verify one block; None (with a warning) if missing, truncated or corrupt."""
        if key not in self.index:
            return None
        t0 = time.perf_counter()
        try:
            p = self.path(key)
            size = p.stat().st_size
            buf = torch.empty(size, dtype=torch.uint8)  # not zero-filled, unlike a bytearray
            with open(p, "rb") as f:
                got = f.readinto(memoryview(buf.numpy()))
            if got != size:
                raise OSError(f"read {got} of {size} bytes")
        except OSError as e:
            self._drop(key, f"unreadable: {e}")
            return None
        try:
            mv = memoryview(buf.numpy())
            if bytes(mv[: len(MAGIC)]) != MAGIC:
                raise ValueError("bad magic")
            (hlen,) = struct.unpack("<I", mv[len(MAGIC) : len(MAGIC) + 4])
            start = len(MAGIC) + 4
            header = json.loads(bytes(mv[start : start + hlen]))
            payload = mv[start + hlen :]
            if header["fingerprint"] != self.fingerprint:
                self._drop(key, "written by another model fingerprint", delete=False)
                return None
            if header["key"] != key:
                raise ValueError("key mismatch")
            if len(payload) != header["nbytes"]:
                raise ValueError("truncated")
            algo = header.get("checksum", "sha256")  # files of earlier versions: SHA-256 only
            if algo not in ("sha256", CHECKSUM):  # e.g. xxh3 read where xxhash is missing: keep the file
                self._drop(key, f"checksum {algo} unavailable here", delete=False)
                return None
            if digest(algo, payload) != header.get("digest", header.get("sha256")):
                raise ValueError("checksum mismatch")
            dtype = _DTYPES[header["dtype"]]
            t = torch.frombuffer(payload, dtype=torch.uint8).view(dtype).view(header["shape"])
        except Exception as e:  # noqa: BLE001 - any damage means "recompute", never a crash
            self._drop(key, str(e))
            return None
        with self.lock:
            if key in self.index:
                self.index.move_to_end(key)
        with contextlib.suppress(OSError):
            os.utime(self.path(key))
        self.read_seconds += time.perf_counter() - t0
        self.read_bytes += size
        return t


@dataclass
class CostModel:
    """Restore-vs-recompute estimate per request.

    Restoring costs bytes / bandwidth (CPU->GPU copy or disk read, measured as we go); recomputing costs
    tokens / prefill rate (measured from our own prefills). With a fast GPU and a slow disk a short
    prefix can be cheaper to recompute; the choice is reported in each request's usage.
    """

    disk_gbps: float = 2.0
    cpu_gbps: float = 10.0
    prefill_tok_s: float = 5000.0  # a prior until prefills are observed

    def __post_init__(self) -> None:
        self.recent_rates: deque[float] = deque(maxlen=64)  # not a field: stats() reports the fields

    def observe_prefill(self, tokens: int, seconds: float) -> None:
        """The prefill rate is the best of the recent prefills', not their average.

        Why: recomputing a prefix adds its tokens to a prefill that runs anyway, so what it costs is the
        marginal rate, which long chunks approach. A short chunk's time is mostly per-step cost: on an
        H200 a 256-token prefill is 6.8 ms of kernels and 14-58 ms of host-bound wall time
        (bench/prefill_probe.py). Averaged in, a chat's short turns made recomputing a long prefix look
        several times dearer than it is, so a restore from a slow disk could win against a faster
        recompute. A window, so a slower device (or a new model) is seen again."""
        if tokens >= 16 and seconds > 0:
            self.recent_rates.append(tokens / seconds)
            self.prefill_tok_s = max(self.recent_rates)

    def observe_disk(self, nbytes: int, seconds: float) -> None:
        if nbytes > 0 and seconds > 0:
            self.disk_gbps = 0.7 * self.disk_gbps + 0.3 * nbytes / seconds / 1e9

    def restore_ms(self, cpu_bytes: int, disk_bytes: int) -> float:
        return 1e3 * (cpu_bytes / (self.cpu_gbps * 1e9) + disk_bytes / (self.disk_gbps * 1e9))

    def recompute_ms(self, tokens: int) -> float:
        return 1e3 * tokens / self.prefill_tok_s
