"""What goes over a tunnel subsystem, read with bounds: the other end may be hostile.

Request/answer subsystems carry one JSON object each way, read until EOF but never
beyond a limit (a leaf streaming gigabytes makes the root's question fail, not its
memory grow); heartbeats are JSON lines of bounded length, and a line that is not a
JSON object is reported and skipped, never raised out of the heartbeat loop (what a
valid one may say is checked by each end: wire.heartbeat_interval, MAX_ANNOUNCED_PROXIES).
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
