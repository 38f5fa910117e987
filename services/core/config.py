"""Settings for every kb process (API, CLI, workers), read from `KB_*` variables.

The defaults are the embedded mode: SQLite and index files under `KB_DATA_DIR`,
in-process ingestion, CPU. Production only changes variables (see compose.yaml).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
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


@lru_cache
def get_settings() -> Settings:
    return Settings()
