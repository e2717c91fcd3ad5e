"""Session recordings in the asciicast v2 format (https://docs.asciinema.org/manual/asciicast/v2/).

A recording is newline-delimited JSON: a header object, then one event per line,
``[seconds since start, code, data]`` with the codes Gatehouse writes:

* ``"o"`` output the client saw (PTY output, or an exec session's stdout and stderr),
* ``"r"`` a window change, data ``"COLSxROWS"``,
* ``"m"`` a marker: the exit status at the end, or why the recording stopped early.

The header holds the standard ``version``, ``width``, ``height``, ``timestamp``,
``env`` and ``title``, plus a ``gatehouse`` object (session id, cluster, node, user,
login, command, kind) that players ignore.

:class:`CastWriter` appends to a file (the node's spool); :class:`CastReader` parses
what is read back, chunk by chunk, and says exactly where a truncated or corrupt
recording stops making sense (:class:`CastDamaged`), so a player can play up to there.
"""

from __future__ import annotations

import codecs
import json
import os
import time
from typing import Optional

#: Output is buffered up to this many bytes before it is written to the file.
FLUSH_BYTES = 64 * 1024
#: Longest line a reader accepts (one event; a writer never writes more than ~1.6 MiB per line).
MAX_LINE = 8 * 1024 * 1024
EVENT_CODES = ("o", "i", "r", "m")


class CastWriter:
    """Writes one recording; raises OSError (ENOSPC, EIO …) from whichever call could not write."""

    def __init__(self, path: str, header: dict, *, mode: int = 0o600):
        self.path = path
        self._fd: Optional[int] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        self._buf = bytearray()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.start = time.monotonic()
        self.size = 0
        self.events = 0
        self._last = 0.0
        try:
            self._buf += (json.dumps(header, sort_keys=True, separators=(",", ":")) + "\n").encode()
            self.flush()
        except BaseException:
            self.abandon()
            raise

    def _elapsed(self) -> float:
        # Never backwards, so every reader accepts the times (monotonic clock, rounded).
        self._last = max(self._last, round(time.monotonic() - self.start, 6))
        return self._last

    def _event(self, code: str, data: str) -> None:
        self._buf += json.dumps([self._elapsed(), code, data], ensure_ascii=False).encode("utf-8", "replace")
        self._buf += b"\n"
        self.events += 1
        if len(self._buf) >= FLUSH_BYTES:
            self.flush()

    def output(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        if text:
            self._event("o", text)

    def resize(self, width: int, height: int) -> None:
        self._event("r", f"{int(width)}x{int(height)}")

    def marker(self, label: str) -> None:
        tail = self._decoder.decode(b"", final=True)
        if tail:
            self._event("o", tail)
        self._event("m", label)

    def flush(self) -> None:
        if self._fd is None or not self._buf:
            return
        view = memoryview(self._buf)
        try:
            while view:
                written = os.write(self._fd, view)
                self.size += written
                view = view[written:]
        finally:
            view.release()
        self._buf.clear()

    def close(self, sync: bool = True) -> None:
        """Write what is buffered, fsync (so it survives a crash of the host) and close."""
        if self._fd is None:
            return
        try:
            self.flush()
            if sync:
                os.fsync(self._fd)
        finally:
            fd, self._fd = self._fd, None
            os.close(fd)

    def abandon(self) -> None:
        """Close without writing what is buffered (after a write failed)."""
        self._buf.clear()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass


class CastDamaged(Exception):
    """The recording stops making sense at LINE (1-based; the header is line 1), byte OFFSET."""

    def __init__(self, line: int, offset: int, reason: str):
        super().__init__(f"line {line} (byte {offset}): {reason}")
        self.line, self.offset, self.reason = line, offset, reason


def check_header(obj) -> dict:
    if not isinstance(obj, dict) or obj.get("version") != 2:
        raise ValueError("the header is not an asciicast v2 header")
    for key in ("width", "height"):
        if isinstance(obj.get(key), bool) or not isinstance(obj.get(key), int) or not 0 < obj[key] <= 10000:
            raise ValueError(f"the header has no valid {key}")
    return obj


class CastReader:
    """Parses a recording fed in chunks: :meth:`feed` returns the complete events so far."""

    def __init__(self):
        self.header: Optional[dict] = None
        self.line = 0
        self.offset = 0          # bytes consumed up to the end of the last complete line
        self._partial = bytearray()
        self._last = 0.0

    def feed(self, data: bytes) -> list:
        events = []
        self._partial += data
        start = 0
        while True:
            end = self._partial.find(b"\n", start)
            if end < 0:
                break
            raw = bytes(self._partial[start:end])
            self.line += 1
            item = self._parse(raw)
            self.offset += end - start + 1
            start = end + 1
            if item is not None:
                events.append(item)
        del self._partial[:start]
        if len(self._partial) > MAX_LINE:
            raise CastDamaged(self.line + 1, self.offset, f"a line is longer than {MAX_LINE // (1024 * 1024)} MiB")
        return events

    def finish(self) -> None:
        """The recording ended: a last line without its newline means it was cut off mid-write."""
        if self._partial.strip():
            raise CastDamaged(self.line + 1, self.offset, "the recording ends in the middle of a line (it was cut "
                                                          "off)")
        if self.header is None:
            raise CastDamaged(1, 0, "the recording is empty")

    def _parse(self, raw: bytes):
        try:
            obj = json.loads(raw)
        except ValueError:
            raise CastDamaged(self.line, self.offset, "the line is not valid JSON") from None
        if self.header is None:
            try:
                self.header = check_header(obj)
            except ValueError as exc:
                raise CastDamaged(self.line, self.offset, str(exc)) from None
            return None
        if (not isinstance(obj, list) or len(obj) != 3 or isinstance(obj[0], bool)
                or not isinstance(obj[0], (int, float)) or obj[1] not in EVENT_CODES or not isinstance(obj[2], str)):
            raise CastDamaged(self.line, self.offset, 'the line is not an event [time, "o"|"r"|"m", "data"]')
        if not obj[0] >= self._last:
            raise CastDamaged(self.line, self.offset, "the event's time goes backwards")
        self._last = float(obj[0])
        return self._last, obj[1], obj[2]


def repair(path: str, note: str) -> int:
    """Make a recording cut off by a crash readable: drop a torn last line, append a marker saying NOTE.
    Returns the new size. Raises OSError when the file cannot be read or written."""
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        base = max(0, size - 2 * MAX_LINE)
        fh.seek(base)
        tail = fh.read()
        cut = tail.rfind(b"\n")
        keep = base + cut + 1 if cut >= 0 else 0
        last = 0.0
        lines = tail[:cut + 1].splitlines() if cut >= 0 else []
        for line in reversed(lines):   # the time of the last whole event
            try:
                event = json.loads(line)
                if isinstance(event, list):
                    last = float(event[0])
                    break
            except (ValueError, TypeError, IndexError):
                continue
        fh.seek(keep)
        fh.truncate()
        if keep:  # a header was written: the recording says how it ended
            fh.write(json.dumps([last, "m", note]).encode() + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
        return fh.tell()
