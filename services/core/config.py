"""Settings for every kb process (API, CLI, workers), read from `KB_*` variables.

The defaults are the embedded mode: SQLite and index files under `KB_DATA_DIR`,
in-process ingestion, CPU. Production only changes variables (see compose.yaml).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KB_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default=Path("./data"), description="Where SQLite, index files and caches live.")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty means SQLite in data_dir.")
    redis_url: str = Field(default="redis://127.0.0.1:6379/0")
    max_upload_mb: float = Field(default=50.0, gt=0)

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(default=1, ge=1, le=64, description="API server processes.")

    default_embedder: str = "minilm"
    embed_batch_size: int = Field(default=64, gt=0)
    chunk_tokens: int = Field(default=200, gt=16, description="Chunk size in the embedder's word pieces.")
    chunk_overlap: int = Field(default=32, ge=0)

    dense_index: Literal["flat", "hnsw"] = "flat"
    hnsw_m: int = 32
    hnsw_ef_search: int = 128

    fusion: Literal["zscore", "rrf", "weighted"] = "zscore"
    rrf_k: int = 60
    dense_weight: float = Field(default=1.0, ge=0)
    lexical_weight: float = Field(default=0.25, ge=0)
    candidates: int = Field(default=50, gt=0, description="Hits each retriever hands to fusion.")
    max_top_k: int = 100

    # --- chat (issue 4): generator backend -------------------------------------------------------
    generator: Literal["engine", "remote", "fake"] = Field(
        default="engine", description="engine: in-process; remote: any OpenAI-compatible server; fake: tests."
    )
    generator_url: str = Field(default="http://127.0.0.1:8001/v1", description="Base URL for 'remote'.")
    generator_model: str = Field(
        default="", description="engine: model folder or .gguf (empty: packaged SmolLM2); remote: model name."
    )
    generator_model_name: str = Field(default="", description="Name shown in /v1/models (default: derived).")
    generator_api_key: str = ""
    generator_timeout_s: float = Field(default=120.0, gt=0, description="Whole answer, per request.")
    generator_connect_timeout_s: float = Field(default=5.0, gt=0)
    generator_retry_after_s: int = Field(default=1, ge=0, description="Retry-After sent with a 429.")
    generator_preload: bool = Field(default=True, description="Load the generator when `kb serve` starts.")
    engine_device: str = "auto"
    engine_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="auto: bf16 on CUDA, fp32 on CPU. bfloat16 on a CPU with AMX/AVX512-BF16 prefills ~3x "
        "faster, but greedy text may then depend on what was cached (engine/devices.py).",
    )
    engine_kv_cache_gb: float | None = Field(default=None, gt=0, description="KV pool (CPU default 1 GiB).")
    engine_cpu_cache_gb: float = Field(default=0.5, ge=0)
    engine_disk_cache: bool = Field(default=True, description="KV disk tier under data_dir/kv_cache.")
    engine_prefix_cache: bool = Field(default=True, description="False: recompute every prompt (baseline).")
    engine_max_queue: int = Field(default=256, ge=1, description="Waiting requests before 429.")
    engine_overlap_decode: bool | None = Field(
        default=None,
        description="Launch a greedy decode step before the previous one's tokens reach the host "
        "(unset: on for CUDA, off on CPU).",
    )
    engine_quant: str = Field(
        default="none",
        description="Weight quantization policy (engine.quant.policy): none, int8, int4:g128, "
        "int4:g64,attn=int8, int4:g128+teal0.3, gguf, ...",
    )
    engine_gpu_memory_gb: float = Field(
        default=22.0, gt=0, description="GPU budget for weights + KV pool + activations (a 24 GiB card)."
    )
    # --- chat (issue 4): turns --------------------------------------------------------------------
    chat_system_prompt: str = (
        "You are a helpful customer-service assistant. Answer from the numbered sources only and cite them "
        "like [1]. If the sources do not contain the answer, say that you do not know."
    )
    chat_top_k: int = Field(default=4, ge=1, le=50, description="Passages retrieved per turn.")
    chat_context_tokens: int = Field(default=600, ge=32, description="New context per turn, in tokens.")
    chat_max_prompt_tokens: int = Field(
        default=4096, ge=256, description="Context window for prompt + answer; see README 'Chat'."
    )
    chat_trim_to: float = Field(
        default=0.6, gt=0.1, le=1.0, description="When trimming, cut the prompt to this share of the window."
    )
    chat_max_tokens: int = Field(default=256, ge=1, description="Default answer length.")
    chat_min_score: float | None = Field(
        default=None, description="Dense cosine a passage needs; empty: per-embedder default."
    )
    chat_rewrite: Literal["auto", "generator", "heuristic", "off"] = Field(
        default="auto", description="Follow-up rewrite: auto = generator only for follow-ups."
    )
    chat_rewrite_timeout_s: float = Field(default=20.0, gt=0)
    chat_no_answer: str = "I could not find anything about that in the knowledge base."

    # --- batch ingestion (issue 5) ----------------------------------------------------------------
    ingest_runner: Literal["inprocess", "celery"] = Field(
        default="inprocess", description="Where ingest jobs run: a thread pool in the API, or Celery workers."
    )
    ingest_threads: int = Field(default=2, ge=1, le=64, description="In-process runner threads.")
    ingest_batch_files: int = Field(default=16, ge=1, le=1024, description="Files per task and per commit.")
    ingest_allowed_roots: str = Field(
        default="", description="Comma-separated server folders that jobs may read by path (empty: none)."
    )
    ingest_staging_dir: Path | None = Field(
        default=None, description="Uploaded dumps (default data_dir/uploads); workers must see it too."
    )
    ingest_max_files: int = Field(default=100_000, ge=1, description="Files per dump.")
    ingest_max_total_mb: float = Field(default=2048.0, gt=0, description="Uncompressed bytes per dump.")
    ingest_max_file_mb: float = Field(default=50.0, gt=0, description="Per file inside a dump.")
    ingest_max_ratio: float = Field(default=200.0, gt=1, description="Max compression ratio of a member.")
    ingest_max_depth: int = Field(default=1, ge=0, le=3, description="Nested archive levels expanded.")
    ingest_max_attempts: int = Field(default=5, ge=1, description="Deliveries of a batch before it fails.")
    redis_prefix: str = Field(default="kb:", description="Prefix of every Redis key kb and Celery use.")
    worker_queue: str = "kb.ingest"
    worker_visibility_timeout: int = Field(
        default=600, ge=1, description="Seconds before a dead worker's unacknowledged task is redelivered."
    )
    worker_restore_interval: int = Field(default=10, ge=1, description="How often workers look for those.")
    commit_lock_ttl: int = Field(default=30, ge=2, description="Redis commit lock lease, renewed while held.")
    # Issue 7: each file of a batch job is parsed in a child process with these limits (ingest/sandbox.py).
    parse_timeout_s: float = Field(default=60.0, gt=0, description="Per-file parse time limit (jobs).")
    parse_memory_mb: int = Field(default=2048, ge=64, description="Per-file parser memory cap (jobs).")

    # --- security, limits and metrics (issue 7; services/api/auth.py, ratelimit.py, observability/) -------
    auth: Literal["off", "required"] = Field(
        default="off", description="required: every /v1 route needs an API key (`kb keys create`)."
    )
    rate_limit: str = Field(
        default="",
        description="Per key (per client IP without auth), e.g. '120/minute' or '10/second;300/hour'. "
        "Empty: 120/minute with KB_AUTH=required, none otherwise; 'off': none.",
    )
    rate_limit_storage: Literal["auto", "memory", "redis"] = Field(
        default="auto", description="auto: Redis (KB_REDIS_URL) when KB_INGEST_RUNNER=celery, else memory."
    )
    max_tokens: int = Field(default=4096, ge=1, description="Largest max_tokens a chat request may ask for.")
    request_timeout_s: float = Field(
        default=300.0, ge=0, description="504 if a response has not started by then; 0: no limit."
    )
    metrics_auth: bool = Field(default=False, description="true: /metrics needs an admin key.")
    log_format: Literal["json", "text"] = Field(default="json", description="`kb serve` log lines.")

    @property
    def auth_required(self) -> bool:
        return self.auth == "required"

    @property
    def effective_rate_limit(self) -> str:
        """The limit string in force ('' = none): see `rate_limit`."""
        value = self.rate_limit.strip()
        if value.lower() in ("off", "none", "0"):
            return ""
        return value or ("120/minute" if self.auth_required else "")

    @field_validator("engine_quant")
    @classmethod
    def _known_quant_policy(cls, value: str) -> str:
        """A typo in KB_ENGINE_QUANT fails at start with the parser's reason, not at the first chat."""
        if value.strip().lower() not in ("", "none"):
            from engine.quant.policy import QuantPolicy

            QuantPolicy.parse(value)
        return value

    @model_validator(mode="after")
    def _check_rate_limit(self) -> Settings:
        if self.effective_rate_limit:
            from limits import parse_many

            try:
                parse_many(self.effective_rate_limit)
            except ValueError as exc:
                raise ValueError(f"KB_RATE_LIMIT: {exc} (e.g. '120/minute')") from None
        return self

    @model_validator(mode="after")
    def _check_overlap(self) -> Settings:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError("KB_CHUNK_OVERLAP must be smaller than KB_CHUNK_TOKENS")
        return self

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'kb.sqlite3').resolve()}"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "indexes"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def allowed_roots(self) -> list[Path]:
        return [Path(p.strip()).resolve() for p in self.ingest_allowed_roots.split(",") if p.strip()]

    @property
    def staging_dir(self) -> Path:
        return self.ingest_staging_dir or self.data_dir / "uploads"


@lru_cache
def get_settings() -> Settings:
    return Settings()
