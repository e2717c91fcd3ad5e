"""What goes over a tunnel subsystem, read with bounds: the other end may be hostile.

Request/answer subsystems carry one JSON object each way, read until EOF but never
beyond a limit (a leaf streaming gigabytes makes the root's question fail, not its
memory grow); heartbeats are JSON lines of bounded length, and a line that is not a
JSON object is reported and skipped, never raised out of the heartbeat loop.
"""

from __future__ import annotations

import json

from ..errors import BadParameter

#: Largest answer a leaf may send to one question of its root (node lists, access checks).
MAX_ANSWER = 1024 * 1024
#: Largest request the root may send on a request/answer subsystem.
MAX_REQUEST = 64 * 1024
#: Longest heartbeat line either end accepts.
MAX_HEARTBEAT_LINE = 16 * 1024
#: Longest proxy name and most proxies a heartbeat may name.
MAX_PROXY_NAME = 253
MAX_PROXIES = 256

_CHUNK = 64 * 1024


class TooLarge(BadParameter):
    """More bytes than the limit arrived; ``limit`` is the limit in words ("1 MiB")."""

    def __init__(self, message: str, limit: str):
        super().__init__(message)
        self.limit = limit


def size_text(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit // 1024} KiB"


async def read_bounded(reader, limit: int, what: str) -> bytes:
    """Everything READER sends until EOF, as bytes; TooLarge (naming WHAT) beyond LIMIT bytes."""
    chunks, size = [], 0
    while True:
        chunk = await reader.read(_CHUNK)
        if not chunk:
            return b"".join(chunks)
        if isinstance(chunk, str):
            chunk = chunk.encode()
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"{what} is larger than {size_text(limit)}", size_text(limit))
        chunks.append(chunk)


def too_long(line) -> bool:
    """Whether a heartbeat line read with readline() is over the limit (or was cut at the receive window)."""
    return len(line) > MAX_HEARTBEAT_LINE


def parse_heartbeat(line) -> dict | None:
    """A heartbeat line as a JSON object, or None when it is not one."""
    try:
        beat = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return beat if isinstance(beat, dict) else None


def heartbeat_interval(beat: dict, default: float) -> float:
    """The interval a peer announces, when it is a sane number of seconds (up to an hour); else DEFAULT."""
    value = beat.get("interval")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 3600:
        return default
    return float(value)


def heartbeat_name(beat: dict, key: str) -> str:
    """A short name a peer announces (its proxy name); "" when absent or not a short string."""
    value = beat.get(key)
    return value if isinstance(value, str) and 0 < len(value) <= MAX_PROXY_NAME and value.isprintable() else ""


def heartbeat_names(beat: dict, key: str) -> set[str] | None:
    """The list of proxy names a root announces; None when the field is not a bounded list of names."""
    value = beat.get(key)
    if not isinstance(value, list) or len(value) > MAX_PROXIES:
        return None
    if not all(isinstance(v, str) and 0 < len(v) <= MAX_PROXY_NAME and v.isprintable() for v in value):
        return None
    return set(value)
