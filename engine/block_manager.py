"""GPU block pool: block tables, content-addressed full blocks, ref counts and LRU eviction.

A full block's key is ``sha256(parent key | model fingerprint | token ids)``: the same prefix under the
same weights always gives the same chain of keys, in any process, so the keys double as file names for
the disk tier. Unreferenced blocks stay in the pool (still findable) until space is needed, oldest first.

A finished sequence's last, partial block stays findable too, on the GPU only, as a *tail* under its
parent's key with the token ids it holds. Why: a chat's next turn starts with the previous answer, and its
last block is partial in all but 1 of ``block_size`` cases, so without tails every turn recomputes up to a
block of the answer (a "256-token" turn over a 15K history reached the engine as 288-320 new tokens with
64-token blocks). A tail is taken over, not shared: the next turn writes its own tokens into the block's
free rows, so only an unreferenced tail is handed out, and it stops being findable.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch


def block_hash(parent: str | None, fingerprint: str, tokens: list[int]) -> str:
    h = hashlib.sha256()
    h.update((parent or "root").encode())
    h.update(fingerprint.encode())
    h.update(np.asarray(tokens, dtype=np.int64).tobytes())
    return h.hexdigest()


def chain_hashes(tokens: list[int], block_size: int, fingerprint: str) -> list[str]:
    """Keys of all full blocks of ``tokens`` (same keys as `block_hash` per block).

    Why one array conversion: admission hashes the whole prompt (240 blocks at 15K tokens) inside TTFT;
    converting the token list once instead of per block halves that time."""
    out: list[str] = []
    parent = None
    n = len(tokens) // block_size
    if n == 0:
        return out
    arr = np.asarray(tokens[: n * block_size], dtype=np.int64).reshape(n, block_size)
    fp = fingerprint.encode()
    for i in range(n):
        h = hashlib.sha256()
        h.update((parent or "root").encode())
        h.update(fp)
        h.update(arr[i].tobytes())
        parent = h.hexdigest()
        out.append(parent)
    return out


class NoFreeBlocks(RuntimeError):
    """The pool is exhausted by referenced blocks."""


class BlockManager:
    """Owns block ids of the KV tensor ``kv[L, 2, num_blocks, block_size, kv_heads, head_dim]``."""

    def __init__(
        self,
        kv: torch.Tensor,
        block_size: int,
        on_evict: Callable[[str, int], None] | None = None,
    ) -> None:
        self.kv = kv
        self.block_size = block_size
        self.num_blocks = kv.shape[2]
        self.ref = [0] * self.num_blocks
        self.key: list[str | None] = [None] * self.num_blocks
        self.by_key: dict[str, int] = {}
        self.free_plain: list[int] = list(range(self.num_blocks - 1, -1, -1))
        self.free_cached: OrderedDict[int, None] = OrderedDict()  # LRU: oldest first
        self.on_evict = on_evict
        # parent key ("" for the first block) -> (block, the token ids whose KV its first rows hold)
        self.tails: dict[str, tuple[int, tuple[int, ...]]] = {}
        self.tail_parent: dict[int, str] = {}  # block -> its entry in ``tails``

    # --- accounting -------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now (plain free + evictable cached)."""
        return len(self.free_plain) + len(self.free_cached)

    @property
    def num_referenced(self) -> int:
        return sum(1 for r in self.ref if r > 0)

    # --- lookup / sharing -------------------------------------------------------------------
    def lookup(self, key: str) -> int | None:
        return self.by_key.get(key)

    def acquire(self, block: int) -> None:
        """Take a reference on a cached block (a prefix hit)."""
        if self.ref[block] == 0:
            self.free_cached.pop(block, None)
        self.ref[block] += 1

    def allocate(self) -> int:
        """A fresh block: a never-used one first, else evict the least recently used cached one."""
        if self.free_plain:
            b = self.free_plain.pop()
        elif self.free_cached:
            b, _ = self.free_cached.popitem(last=False)
            self._drop_tail_block(b)
            key = self.key[b]
            if key is not None:
                if self.on_evict is not None:
                    self.on_evict(key, b)
                del self.by_key[key]
                self.key[b] = None
        else:
            raise NoFreeBlocks("KV block pool exhausted")
        self.ref[b] = 1
        return b

    def register(self, block: int, key: str) -> bool:
        """Make a full block findable; False if an identical block is already registered."""
        if key in self.by_key or self.key[block] is not None:
            return False
        self.key[block] = key
        self.by_key[key] = block
        return True

    # --- partial tail blocks ------------------------------------------------------------------
    def keep_tail(self, block: int, parent: str | None, tokens: list[int]) -> None:
        """Keep a finishing sequence's partial last block findable after `release` (see the module doc).
        The newest tail under a parent wins; a block already keyed or shared is left alone."""
        if not tokens or self.key[block] is not None or self.ref[block] != 1 or block in self.tail_parent:
            return
        self.drop_tail(parent)
        self.tails[parent or ""] = (block, tuple(tokens))
        self.tail_parent[block] = parent or ""

    def take_tail(self, parent: str | None, tokens: list[int]) -> tuple[int, int] | None:
        """The unreferenced tail under ``parent``, if its token ids and ``tokens`` (those the caller
        needs KV for) start alike: (block, rows of it that are valid for ``tokens``), now referenced once
        and no longer findable; None otherwise. A row's KV depends only on the tokens up to it, so a
        tail that goes on differently (an edited or regenerated turn) still serves its common rows."""
        entry = self.tails.get(parent or "")
        if entry is None:
            return None
        b, held = entry
        common = min(len(held), len(tokens))
        rows = next((i for i in range(common) if held[i] != tokens[i]), common)
        if self.ref[b] != 0 or rows == 0:
            return None
        self._drop_tail_block(b)
        self.acquire(b)
        return b, rows

    def drop_tail(self, parent: str | None) -> None:
        """Make the tail under ``parent`` unfindable (replaced, or its conversation deleted)."""
        entry = self.tails.get(parent or "")
        if entry is None:
            return
        b = entry[0]
        self._drop_tail_block(b)
        if self.ref[b] == 0 and b in self.free_cached:  # it waited among the cached blocks
            del self.free_cached[b]
            self.free_plain.append(b)

    def _drop_tail_block(self, block: int) -> None:
        parent = self.tail_parent.pop(block, None)
        if parent is not None:
            del self.tails[parent]

    def forget(self, key: str) -> bool:
        """Make an unreferenced cached block unfindable (its owner asked for deletion); in-use ones stay."""
        b = self.by_key.get(key)
        if b is None or self.ref[b] != 0:
            return False
        del self.by_key[key]
        self.key[b] = None
        self.free_cached.pop(b, None)
        self.free_plain.append(b)
        return True

    def release(self, blocks: list[int]) -> None:
        """Drop one reference per block; unreferenced cached blocks stay findable (LRU)."""
        for b in reversed(blocks):  # tail blocks first so prefixes outlive their continuations
            self.ref[b] -= 1
            if self.ref[b] < 0:
                raise RuntimeError(f"block {b} released twice")
            if self.ref[b] == 0:
                if self.key[b] is None and b not in self.tail_parent:
                    self.free_plain.append(b)
                else:
                    self.free_cached[b] = None

    # --- data movement (tiers) --------------------------------------------------------------
    def read_block(self, block: int) -> torch.Tensor:
        """The block's K and V for all layers, ``[L, 2, block_size, kv_heads, head_dim]``."""
        return self.kv[:, :, block]

    def write_block(self, block: int, data: torch.Tensor) -> None:
        self.kv[:, :, block].copy_(data, non_blocking=True)
