"""Append-only audit log: one JSON object per line under data_dir/log/, and its way to auth.

Every auth decision (login, cert issue, trust changes, role mapping results,
session start/end, denials with their reason) is written here. Secrets never are:
callers pass names and fingerprints, not tokens or keys.

Each process keeps its own copy (``audit.jsonl``, rotated to ``audit-TIME.jsonl``
at ``audit.log_max_size``), which is also the on-disk buffer from which an
:class:`AuditShipper` delivers the events to the cluster's audit chain: auth stores
them in its backend (auth/audit_store.py), a node or proxy sends them to auth. The
shipper remembers, in ``audit.cursor``, up to where auth has them, so events survive
restarts of either side and are delivered at least once; their ``uid`` makes a
resent event a duplicate that auth drops.

Writing never raises into the caller: when the disk is full the event is kept in
memory (bounded) for the shipper, and the failure is logged once a minute.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import threading
import time
import uuid
from typing import Awaitable, Callable, Optional

from .clock import now_iso
from .waits import wait_event

log = logging.getLogger("gatehouse.audit")

CURRENT = "audit.jsonl"
CURSOR = "audit.cursor"
#: Events kept in memory while the log file cannot be written.
MAX_UNWRITTEN = 10000
#: A delivery batch holds at most this many events, or this many bytes.
BATCH_EVENTS = 500
BATCH_BYTES = 512 * 1024


class AuditLog:
    def __init__(self, data_dir: str, cluster_name: str = "", *, max_size: int = 100 * 1000 ** 2,
                 max_files: int = 10, max_age: float = 30 * 86400):
        self.dir = os.path.join(data_dir, "log")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.path = os.path.join(self.dir, CURRENT)
        self.cluster_name = cluster_name
        self.max_size = max_size
        self.max_files = max_files
        self.max_age = max_age
        self._lock = threading.Lock()
        self._fh = None
        self._open()
        #: Events that could not be written to the file (disk full), oldest first.
        self.unwritten: collections.deque = collections.deque(maxlen=MAX_UNWRITTEN)
        self._warned = 0.0
        self._listeners: list[Callable[[], None]] = []

    @classmethod
    def for_config(cls, cfg, cluster_name: str = "") -> "AuditLog":
        """This process's local audit log, rotated as the config's audit section says."""
        return cls(cfg.data_dir, cluster_name, max_size=cfg.audit.bytes("log_max_size"),
                   max_files=cfg.audit.log_max_files, max_age=cfg.audit.seconds("log_max_age"))

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._fh = os.fdopen(fd, "a", buffering=1, encoding="utf-8")

    def on_emit(self, callback: Callable[[], None]) -> None:
        """Call CALLBACK() after every event (the shipper wakes up)."""
        self._listeners.append(callback)

    def emit(self, event: str, *, success: bool = True, **fields) -> dict:
        entry = {
            "event": event,
            "uid": uuid.uuid4().hex,
            "time": now_iso(),
            "cluster_name": self.cluster_name,
            "success": success,
        }
        entry.update({k: v for k, v in fields.items() if v is not None})
        line = json.dumps(entry, sort_keys=True, default=str)
        with self._lock:
            try:
                if self._fh is None:
                    self._open()
                self._fh.write(line + "\n")
                if self._fh.tell() >= self.max_size:
                    self._rotate()
            except (OSError, ValueError) as exc:
                self._unwritable(line, exc)
        log.debug("audit %s", line)
        for callback in self._listeners:
            callback()
        return entry

    def _unwritable(self, line: str, exc: Exception) -> None:
        self.unwritten.append(line)
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None
        now = time.monotonic()
        if now - self._warned > 60:
            self._warned = now
            log.error("cannot write the audit log %s (%s); keeping up to %d events in memory for auth until the disk "
                      "has room again", self.path, getattr(exc, "strerror", None) or exc, MAX_UNWRITTEN)

    def _rotate(self) -> None:
        """Lock held: the current file becomes audit-TIME.jsonl; a new one starts."""
        self._fh.close()
        self._fh = None
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f".{time.time_ns() % 10 ** 9:09d}Z"
        os.rename(self.path, os.path.join(self.dir, f"audit-{stamp}.jsonl"))
        self._open()

    def segments(self) -> list[str]:
        """Paths of the log's files, oldest first (the current one last)."""
        rotated = sorted(n for n in os.listdir(self.dir) if n.startswith("audit-") and n.endswith(".jsonl"))
        return [os.path.join(self.dir, n) for n in rotated] + [self.path]

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


class AuditShipper:
    """Delivers the events of an AuditLog to the cluster's chain, at least once, in order.

    DELIVER(batch) is a coroutine taking a list of event dicts; it raises (any exception)
    when they were not taken, and the same events are offered again after a pause.
    """

    def __init__(self, audit: AuditLog, deliver: Callable[[list], Awaitable[None]], what: str = "auth"):
        self.audit = audit
        self.deliver = deliver
        self.what = what
        self.cursor_path = os.path.join(audit.dir, CURSOR)
        self._wake = asyncio.Event()
        self._task: Optional[asyncio.Task] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self.delivered = 0
        self.failing_since = 0.0
        self._waiting: dict[str, asyncio.Future] = {}
        audit.on_emit(self._emitted)

    def _emitted(self) -> None:
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:   # loop closed
                pass

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="audit-shipper")

    async def stop(self, flush_timeout: float = 5.0) -> None:
        """Deliver what is pending (for at most FLUSH_TIMEOUT seconds), then stop."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self.flush(), flush_timeout)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - what is left is delivered after a restart
            pass
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001
            pass
        self._task = None

    async def flush(self) -> None:
        """Deliver every event written so far (raises when auth does not take them)."""
        while True:
            batch, cursor = self._read_batch()
            if not batch:
                if cursor is None:
                    return
                self._save_cursor(cursor)   # only lines that are not events: step over them
                continue
            await self._send(batch, cursor)

    async def _run(self) -> None:
        delay = 0.5
        while True:
            try:
                await self.flush()
                delay = 0.5
                self.failing_since = 0.0
                self._prune()
                self._wake.clear()
                await wait_event(self._wake, 5.0)
                await asyncio.sleep(0.05)   # let a burst of events gather into one batch
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - delivery is retried forever
                if not self.failing_since:
                    self.failing_since = time.monotonic()
                    log.warning("cannot deliver audit events to %s (%s); they stay in %s and are sent when it is "
                                "back", self.what, exc, self.audit.dir)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def delivered_event(self, uid: str, timeout: float) -> bool:
        """Wait until the event with UID was delivered (in order, after everything written before it)."""
        fut = self._waiting.setdefault(uid, asyncio.get_running_loop().create_future())
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._waiting.pop(uid, None)

    async def _send(self, batch: list, cursor) -> None:
        await self.deliver(batch)
        self.delivered += len(batch)
        if self._waiting:
            for entry in batch:
                fut = self._waiting.get(entry.get("uid")) if isinstance(entry, dict) else None
                if fut is not None and not fut.done():
                    fut.set_result(True)
        if self.failing_since:
            log.warning("delivered the audit events that waited for %s again", self.what)
            self.failing_since = 0.0
        if cursor is None:   # events from memory
            for _unused in batch:
                self.audit.unwritten.popleft()
        else:
            self._save_cursor(cursor)

    # -- the cursor: (inode, offset) of the first event not yet delivered ------------
    def _load_cursor(self) -> tuple:
        try:
            with open(self.cursor_path, encoding="utf-8") as fh:
                data = json.load(fh)
            return int(data["ino"]), int(data["offset"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0, 0

    def _save_cursor(self, cursor: tuple) -> None:
        tmp = self.cursor_path + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump({"ino": cursor[0], "offset": cursor[1]}, fh)
            os.replace(tmp, self.cursor_path)
        except OSError as exc:   # a full disk: delivered again later, auth drops the duplicates
            log.debug("cannot save the audit cursor: %s", exc)

    def _read_batch(self) -> tuple[list, Optional[tuple]]:
        """(events, cursor after them): from memory first (events the disk refused), else from the files."""
        if self.audit.unwritten:
            batch = []
            for line in list(self.audit.unwritten)[:BATCH_EVENTS]:
                try:
                    batch.append(json.loads(line))
                except ValueError:
                    batch.append({})
            return batch, None
        ino, offset = self._load_cursor()
        segments = []
        for path in self.audit.segments():
            try:
                segments.append((path, os.stat(path).st_ino))
            except FileNotFoundError:
                continue
        start = next((i for i, (_unused, seg_ino) in enumerate(segments) if seg_ino == ino), None)
        if start is None:   # first run, or the file it pointed into is gone: from the oldest one kept
            start, offset = 0, 0
        for i in range(start, len(segments)):
            path, seg_ino = segments[i]
            events, end = _read_lines(path, offset)
            if events or end > offset:
                return events, (seg_ino, end)
            if i + 1 < len(segments):
                return [], (segments[i + 1][1], 0)   # this rotated file is delivered: point past it
            offset = 0
        return [], None

    def _prune(self) -> None:
        """Remove rotated files that were delivered and are old, and any beyond log_max_files."""
        ino, _unused = self._load_cursor()
        segments = self.audit.segments()
        rotated = segments[:-1]
        inodes = []
        for path in segments:
            try:
                inodes.append(os.stat(path).st_ino)
            except FileNotFoundError:
                inodes.append(None)
        # The cursor points into the first file not fully delivered. No cursor, or one into a file
        # that is gone, means delivery starts from the oldest file (_read_batch): none is delivered.
        pending_from = next((i for i, seg in enumerate(inodes) if seg == ino), 0)
        now = time.time()
        for i, path in enumerate(rotated):
            delivered = i < pending_from
            try:
                old = now - os.stat(path).st_mtime > self.audit.max_age
            except FileNotFoundError:
                continue
            over = len(rotated) - i > self.audit.max_files
            if (delivered and old) or over:
                if over and not delivered:
                    log.error("the audit log %s holds more than %d rotated files; removing %s before %s has its "
                              "events", self.audit.dir, self.audit.max_files, os.path.basename(path), self.what)
                    self.audit.emit("audit.dropped", success=False, file=os.path.basename(path),
                                    reason=f"more than audit.log_max_files ({self.audit.max_files}) rotated files "
                                           f"while {self.what} was unreachable")
                try:
                    os.unlink(path)
                except OSError:
                    pass


def _read_lines(path: str, offset: int) -> tuple[list, int]:
    """Complete JSON lines of PATH from OFFSET, bounded by BATCH_EVENTS and BATCH_BYTES: (events, end offset).
    A torn or unreadable line is skipped (it is not an event)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(BATCH_BYTES)
    except OSError:
        return [], offset
    events, pos = [], 0
    while len(events) < BATCH_EVENTS:
        end = data.find(b"\n", pos)
        if end < 0:
            if pos == 0 and len(data) >= BATCH_BYTES:   # one line longer than a batch: skip it
                return [], offset + len(data)
            break
        raw = data[pos:end]
        pos = end + 1
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict):
            events.append(entry)
    return events, offset + pos
