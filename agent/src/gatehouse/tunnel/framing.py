"""What goes over a tunnel subsystem, read with bounds: the other end may be hostile.

Request/answer subsystems carry one JSON object each way, read until EOF but never
beyond a limit (a leaf streaming gigabytes makes the root's question fail, not its
memory grow); heartbeats are lines of bounded length: a JSON object when something
changed (protocol 1: every time), otherwise one empty line (protocol 2, `TINY_BEAT`).
A line that is neither is reported and skipped, never raised out of the heartbeat loop,
and never counts as a beat (what a valid one may say is checked by each end:
wire.heartbeat_interval, MAX_ANNOUNCED_PROXIES).
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
#: A protocol-2 heartbeat that says nothing new: one empty line.
TINY_BEAT = b"\n"

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


def is_tiny_beat(line) -> bool:
    """Whether a heartbeat line (without its newline) is the empty beat of protocol 2 (spaces and a
    carriage return allowed)."""
    return not line.strip()


class LineReader:
    """Whole lines from data that arrives in pieces (an SSH session's data_received), without ever
    holding more than MAX_HEARTBEAT_LINE bytes of an unfinished line: a peer sending an endless
    line makes `feed` raise TooLarge. Lines come back without their newline."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list:
        if data == TINY_BEAT and not self._pending:
            return [b""]  # the steady state: one empty line per packet
        if b"\n" not in data:
            self._pending += data
            if len(self._pending) > MAX_HEARTBEAT_LINE:
                raise TooLarge(f"a heartbeat line is longer than {size_text(MAX_HEARTBEAT_LINE)}",
                               size_text(MAX_HEARTBEAT_LINE))
            return []
        *lines, self._pending = (self._pending + data).split(b"\n")
        if len(self._pending) > MAX_HEARTBEAT_LINE or any(len(line) > MAX_HEARTBEAT_LINE for line in lines):
            raise TooLarge(f"a heartbeat line is longer than {size_text(MAX_HEARTBEAT_LINE)}",
                           size_text(MAX_HEARTBEAT_LINE))
        return lines
