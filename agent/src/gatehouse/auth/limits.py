"""Rate limits kept in the backend, so they hold across every auth server of a cluster.

One limiter per kind of caller key (client addresses, user names, joins and trust
handshakes per address). Each key counts attempts in fixed windows of ``window``
seconds, one small record per key and window
(``ratelimits/<limiter>/<digest of the key>/<window number>``), and an attempt is
allowed while the *sliding* estimate

    previous window's count x (the part of it still inside the last ``window`` s) + this window's count

stays below ``limit``. That is the usual sliding-window counter: no burst of twice the
limit at a window boundary, two records per key at most, and no clock but the wall
clock auth servers already share for expiry (run NTP).

Cheap: a refused attempt is one range read and writes nothing; an allowed one adds
one conditional write (create, or compare-and-swap on the count), retried when
another auth server counted the same key at the same moment, so concurrent attempts
on several servers are all counted, exactly.

Bounded without eviction: records expire two windows after their window opened, and
the backend's reaper deletes them, so storage holds only the keys seen in the last
two windows. Callers check the address before the user name, so junk user names from
a limited address never create records; nothing is ever cleared wholesale, so no
flood can reset the count of a key that is being limited.
"""

from __future__ import annotations

import hashlib
import math
import time

from ..errors import AlreadyExists, CompareFailed, LimitExceeded, NotFound
from . import keys

#: Conflicting writes in a row (other servers counting the same key) before an attempt is refused.
MAX_CONFLICTS = 16


class SharedRateLimiter:
    """``per_minute`` attempts per key, counted in the backend (see the module text)."""

    def __init__(self, backend, name: str, per_minute: float, clock=time.time):
        self.backend = backend
        self.name = name
        per_minute = float(per_minute)
        # A window holds at least one attempt: 0.1/min means one attempt per 10 minutes.
        self.window = max(60.0, 60.0 / per_minute)
        self.limit = max(1, int(per_minute * self.window / 60.0 + 1e-9))
        self._clock = clock

    async def check(self, key: str, what: str) -> None:
        """Count one attempt for KEY, or raise LimitExceeded naming WHAT and when to retry."""
        digest = hashlib.sha256(str(key).encode("utf-8", "surrogatepass")).hexdigest()[:32]
        prefix = keys.rate_limits_of(self.name, digest)
        for _attempt in range(MAX_CONFLICTS):
            now = self._clock()
            number = int(now // self.window)
            counts = {}
            current = None
            for item in await self.backend.get_range(prefix):
                try:
                    window = int(item.key.rsplit("/", 1)[1])
                    count = int(item.value.get("count", 0))
                except (ValueError, TypeError, AttributeError):
                    continue
                counts[window] = count
                if window == number:
                    current = item
            cur, prev = counts.get(number, 0), counts.get(number - 1, 0)
            start = number * self.window
            estimate = prev * (1.0 - (now - start) / self.window) + cur
            if estimate + 1.0 > self.limit + 1e-9:
                wait = self._wait(now, start, prev, cur)
                raise LimitExceeded(f"too many {what} attempts; wait {math.ceil(wait)}s and try again")
            expires = start + 2 * self.window
            try:
                if current is None:
                    await self.backend.create(keys.rate_limit(self.name, digest, number), {"count": 1}, expires=expires)
                else:
                    await self.backend.compare_and_swap(current.key, current.revision, {"count": cur + 1},
                                                        expires=expires)
                return
            except (AlreadyExists, CompareFailed, NotFound):
                continue   # another auth server counted this key just now: count again
        raise LimitExceeded(f"too many {what} attempts at once; wait a few seconds and try again")

    def _wait(self, now: float, start: float, prev: int, cur: int) -> float:
        """Seconds until one more attempt fits under the limit."""
        room = self.limit - 1 - cur
        if room >= 0 and prev > 0:
            # Within this window, as the previous window's share shrinks.
            at = start + self.window * (1.0 - room / prev)
            if at < start + self.window:
                return max(1.0, at - now)
        # In the next window, as this window's count becomes the shrinking previous one.
        at = start + self.window + self.window * max(0.0, 1.0 - (self.limit - 1) / max(cur, 1))
        return max(1.0, at - now)
