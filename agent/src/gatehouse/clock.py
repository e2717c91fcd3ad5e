"""UTC timestamps as the API and audit log write them (RFC 3339, microseconds, "Z")."""

from __future__ import annotations

import time
from datetime import datetime, timezone


def now_iso(ts: float | None = None) -> str:
    ts = time.time() if ts is None else ts
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(value: str) -> float:
    """Unix time of a timestamp written by now_iso (or any RFC 3339 UTC time)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
