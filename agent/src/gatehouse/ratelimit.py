"""Token-bucket rate limiting keyed by caller (user name, client address)."""

from __future__ import annotations

import time

from .errors import LimitExceeded


class RateLimiter:
    def __init__(self, per_minute: float, burst: int | None = None, max_keys: int = 10000):
        self.rate = per_minute / 60.0
        self.burst = float(burst if burst is not None else max(1, int(per_minute)))
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, key: str, what: str) -> None:
        """Take one token for `key` or raise LimitExceeded naming `what` and when to retry."""
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            wait = (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens, now)
            raise LimitExceeded(f"too many {what} attempts; wait {wait:.0f}s and try again")
        if len(self._buckets) >= self.max_keys and key not in self._buckets:
            self._buckets.clear()  # bounded memory under a flood of distinct keys
        self._buckets[key] = (tokens - 1.0, now)
