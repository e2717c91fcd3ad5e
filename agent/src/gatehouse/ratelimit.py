"""Token-bucket rate limiting keyed by caller (user name, client address).

Memory is bounded: at most ``max_keys`` buckets are kept. When a new key arrives at
that bound, one bucket goes: a bucket that has filled up again if one is among the
least recently used (dropping it forgets nothing), else the least recently used one.
Buckets are never cleared wholesale, so a flood of new keys cannot reset the bucket
of a key that is being limited; callers keep keys of different kinds (addresses,
user names) in separate limiters so one kind cannot push out the other.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from .errors import LimitExceeded

#: How many of the least recently used buckets are looked at for a full one to drop.
_EVICTION_WINDOW = 64


class RateLimiter:
    def __init__(self, per_minute: float, burst: int | None = None, max_keys: int = 10000):
        self.rate = per_minute / 60.0
        self.burst = float(burst if burst is not None else max(1, int(per_minute)))
        self.max_keys = max(1, int(max_keys))
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def check(self, key: str, what: str) -> None:
        """Take one token for `key` or raise LimitExceeded naming `what` and when to retry."""
        now = time.monotonic()
        bucket = self._buckets.get(key)
        tokens, last = bucket if bucket is not None else (self.burst, now)
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if bucket is None and len(self._buckets) >= self.max_keys:
            self._evict(now)
        if tokens < 1.0:
            self._store(key, tokens, now)
            wait = (1.0 - tokens) / self.rate
            raise LimitExceeded(f"too many {what} attempts; wait {wait:.0f}s and try again")
        self._store(key, tokens - 1.0, now)

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)

    def _evict(self, now: float) -> None:
        """Drop one bucket: a refilled one among the least recently used, else the least recently used."""
        for i, (key, (tokens, last)) in enumerate(self._buckets.items()):
            if i >= _EVICTION_WINDOW:
                break
            if tokens + (now - last) * self.rate >= self.burst:
                del self._buckets[key]
                return
        self._buckets.popitem(last=False)
