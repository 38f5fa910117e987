"""Per-caller rate limit (`KB_RATE_LIMIT`) on the `limits` library: Redis in production, memory embedded.

Why Redis in production: several API replicas must share one count per key, or each replica would
allow the full rate. Why the moving window: it is exact (no request over the limit in any window, no
burst at a fixed window's edge, a true Retry-After); it keeps one timestamp per allowed request, so at
most the limit's amount per key (120 by default), which is small.

If Redis is unreachable, requests are let through and a warning is logged (at most once a minute): the
limit protects capacity, and turning a Redis outage into a full API outage would be worse.
"""

from __future__ import annotations

import logging
import time

from limits import RateLimitItem, parse_many
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from services.core.config import Settings

log = logging.getLogger("kb.ratelimit")


class RateLimiter:
    """`await hit(who)` -> None if allowed, else the seconds until the caller may retry."""

    def __init__(self, limit: str, storage_uri: str = "async+memory://", **storage_options: object) -> None:
        self.limit = limit
        self.items: list[RateLimitItem] = parse_many(limit)
        self.storage = storage_from_string(storage_uri, **storage_options)
        self.strategy = MovingWindowRateLimiter(self.storage)  # type: ignore[arg-type]
        self._warned_at = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter | None:
        limit = settings.effective_rate_limit
        if not limit:
            return None
        kind = settings.rate_limit_storage
        if kind == "auto":
            kind = "redis" if settings.ingest_runner == "celery" else "memory"
        if kind == "memory":
            return cls(limit)
        return cls(
            limit,
            "async+" + settings.redis_url,
            implementation="redispy",
            key_prefix=f"{settings.redis_prefix}ratelimit",
            socket_connect_timeout=1.0,
            socket_timeout=1.0,
        )

    async def hit(self, who: str) -> float | None:
        try:
            for item in self.items:
                if not await self.strategy.hit(item, who):
                    stats = await self.strategy.get_window_stats(item, who)
                    return max(1.0, stats.reset_time - time.time())
        except Exception as exc:  # noqa: BLE001 - storage down: fail open, loudly
            now = time.monotonic()
            if now - self._warned_at > 60:
                self._warned_at = now
                log.warning("rate limit storage unavailable, not limiting: %s", exc)
        return None

    async def reset(self, who: str) -> None:
        """Forget `who`'s counts (tests, and an operator lifting a block)."""
        for item in self.items:
            await self.strategy.clear(item, who)
