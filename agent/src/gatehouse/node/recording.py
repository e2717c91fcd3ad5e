"""Session recording on the node: a spool that survives restarts, and its upload to auth.

Each recorded session writes ``data_dir/recording-spool/SID.cast`` (asciicast v2, see
asciicast.py) while it runs; when it ends the node appends a marker with the exit
status, fsyncs, and writes ``SID.json`` (what auth records with it). The uploader
sends every finished recording to auth (resumable: it asks auth how many bytes it
holds and continues from there; auth checks size and SHA-256 before it keeps it and
writes the ``session.recording`` audit event), then removes it from the spool. A
recording without its ``.json`` was cut off by a crash or a kill of the node: at the
next start it is repaired (a torn last line dropped, a marker saying so appended) and
uploaded like the others.

Whether a session is recorded, and what happens when its recording cannot be written
(a full disk, a spool over ``audit.spool_max_size``), is the deciding roles' choice
(``record_session``, ``recording_failure``): ``fail_closed`` refuses the session, or
ends it with a message when writing fails later; ``fail_open`` lets it go on and
writes ``session.recording_failed`` to the audit log.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import time
from typing import Callable, Optional

from .. import asciicast
from ..errors import BadParameter, GatehouseError
from ..waits import wait_event
from ..wire import is_session_id

log = logging.getLogger("gatehouse.node.recording")

SPOOL_DIR = "recording-spool"
UPLOAD_PIECE = 512 * 1024


class RecordingFailed(Exception):
    """A recording cannot be started; ``message`` is the one line for the user."""


class SessionRecorder:
    """The output tap of one session (node/session.py calls output/resize; bind gives it a way to end the session)."""

    def __init__(self, spool: "RecordingSpool", sid: str, header: dict, meta: dict, policy: str):
        self.spool = spool
        self.sid = sid
        self.meta = meta
        self.policy = policy
        self.failed = ""
        self._stop: Optional[Callable[[str, str], None]] = None
        self.path = os.path.join(spool.dir, f"{sid}.cast")
        spool.check_room(0)
        self.writer: Optional[asciicast.CastWriter] = asciicast.CastWriter(self.path, header)
        spool.add(self.writer.size)

    def bind(self, stop: Callable[[str, str], None]) -> None:
        self._stop = stop

    def output(self, data: bytes) -> bool:
        """Record DATA; False when it could not be and the policy is fail_closed (the session must not show it)."""
        if self.writer is None:
            return not (self.failed and self.policy == "fail_closed")
        try:
            self.spool.check_room(len(data))
            before = self.writer.size
            self.writer.output(data)
            self.writer.flush()   # to the file (page cache) at once: a killed node loses no output it showed
            self.spool.add(self.writer.size - before)
        except (OSError, RecordingSpoolFull) as exc:
            self._failed(exc)
            return self.policy != "fail_closed"
        return True

    def resize(self, width: int, height: int) -> None:
        if self.writer is None:
            return
        try:
            self.writer.resize(width, height)
        except OSError as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        reason = describe_failure(exc, self.spool)
        self.failed = reason
        if self.writer is not None:
            self.writer.abandon()
            self.writer = None
        log.warning("recording of session %s failed: %s", self.sid, reason)
        self.spool.audit.emit("session.recording_failed", success=False, sid=self.sid, node=self.meta.get("node"),
                              user=self.meta.get("user"), login=self.meta.get("login"), error=reason,
                              policy=self.policy)
        if self.policy == "fail_closed" and self._stop is not None:
            self._stop("recording_failed", f"gatehouse: this session must be recorded (recording_failure: fail_closed "
                                           f"in your roles) but node \"{self.meta.get('node')}\" cannot write its "
                                           f"recording ({reason}), so it was ended")

    def finish(self, marker: str, **meta) -> None:
        """The session ended: write MARKER and the metadata, so the uploader sends the recording."""
        self.meta.update({k: v for k, v in meta.items() if v is not None})
        self.meta["ended"] = time.time()
        if self.writer is not None:
            try:
                self.writer.marker(marker)
                self.writer.close()
            except OSError as exc:
                self._failed(exc)
        if self.failed:
            self.meta["failed"] = self.failed
            self.meta["truncated"] = True
        self.spool.finish(self.sid, self.meta)


class RecordingSpoolFull(Exception):
    pass


def describe_failure(exc: Exception, spool: "RecordingSpool") -> str:
    if isinstance(exc, RecordingSpoolFull):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc} in {spool.dir}"
    return str(exc)


class RecordingSpool:
    """The node's recordings waiting for auth, and the task that uploads them."""

    def __init__(self, data_dir: str, node: str, max_size: int, audit, client):
        self.dir = os.path.join(data_dir, SPOOL_DIR)
        self.node = node
        self.max_size = max_size
        self.audit = audit
        self.client = client
        self.used = 0
        self._wake = asyncio.Event()
        self._task: Optional[asyncio.Task] = None
        self.uploaded = 0
        #: Metadata of finished recordings whose SID.json the disk refused (full): uploaded from here,
        #: so a full spool empties without a restart (after one, recover() repairs them instead).
        self._unwritten_meta: dict[str, dict] = {}

    # -- writing -----------------------------------------------------------------
    def prepare(self) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.used = sum(_size(os.path.join(self.dir, n)) for n in os.listdir(self.dir))

    def check_room(self, more: int) -> None:
        if self.used + more > self.max_size:
            raise RecordingSpoolFull(f"the recording spool {self.dir} is full ({self.used // (1024 * 1024)} MiB of "
                                     f"audit.spool_max_size waiting for auth)")

    def add(self, size: int) -> None:
        self.used += size

    def start(self, sid: str, header: dict, meta: dict, policy: str) -> SessionRecorder:
        """A recorder for session SID; RecordingFailed (with the reason) when it cannot be written."""
        if not is_session_id(sid):
            raise RecordingFailed(f"invalid session id {sid!r}")
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
        except OSError as exc:   # a file where the spool should be, no space, read-only: the policy decides
            raise RecordingFailed(describe_failure(exc, self)) from None
        if os.path.exists(os.path.join(self.dir, f"{sid}.cast")):
            raise RecordingFailed(f"a recording of session {sid} already exists on this node")
        try:
            return SessionRecorder(self, sid, header, meta, policy)
        except (OSError, RecordingSpoolFull) as exc:
            # A header the disk cut off records nothing: left behind it would hold space and never be uploaded.
            _remove(os.path.join(self.dir, f"{sid}.cast"))
            raise RecordingFailed(describe_failure(exc, self)) from None

    def finish(self, sid: str, meta: dict) -> None:
        try:
            _write_json(os.path.join(self.dir, f"{sid}.json"), meta)
        except OSError as exc:
            self._unwritten_meta[sid] = meta
            log.error("cannot write the metadata of the recording of session %s (%s); it is uploaded with the "
                      "metadata kept in memory", sid, exc.strerror or exc)
        self._wake.set()

    # -- crash recovery ------------------------------------------------------------
    def recover(self) -> int:
        """Repair recordings a crash cut off (a .cast without its .json) so they are uploaded; returns how many."""
        count = 0
        for name in sorted(os.listdir(self.dir)):
            sid = name[:-5]
            if not name.endswith(".cast") or not is_session_id(sid):
                continue
            if os.path.exists(os.path.join(self.dir, f"{sid}.json")):
                continue
            path = os.path.join(self.dir, name)
            try:
                asciicast.repair(path, "recording interrupted: the node stopped during the session")
                meta = _header_meta(path)
                meta.update({"interrupted": True, "ended": os.stat(path).st_mtime})
                _write_json(os.path.join(self.dir, f"{sid}.json"), meta)
                count += 1
                log.warning("the recording of session %s was cut off when the node stopped; it is uploaded as it is",
                            sid)
            except OSError as exc:
                log.error("cannot repair the interrupted recording %s: %s", path, exc)
        return count

    # -- upload ------------------------------------------------------------------
    def start_uploads(self) -> None:
        self._task = asyncio.create_task(self._upload_loop(), name="recording-upload")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass

    def pending(self) -> list:
        try:
            on_disk = {n[:-5] for n in os.listdir(self.dir) if n.endswith(".json") and is_session_id(n[:-5])}
        except FileNotFoundError:
            on_disk = set()
        return sorted(on_disk | set(self._unwritten_meta))

    async def _upload_loop(self) -> None:
        delay = 1.0
        while True:
            self._wake.clear()
            failed = False
            for sid in self.pending():
                try:
                    await self.upload(sid)
                    delay = 1.0
                except asyncio.CancelledError:
                    raise
                except (GatehouseError, OSError, ValueError) as exc:
                    failed = True
                    log.warning("cannot upload the recording of session %s to auth yet: %s", sid, exc)
                    break
            await wait_event(self._wake, delay if failed else 30.0)
            if failed:
                delay = min(delay * 2, 30.0)

    async def upload(self, sid: str) -> None:
        cast = os.path.join(self.dir, f"{sid}.cast")
        meta_path = os.path.join(self.dir, f"{sid}.json")
        meta = self._unwritten_meta.get(sid)
        if meta is None:
            with open(meta_path, encoding="utf-8") as fh:
                meta = json.load(fh)
        if not os.path.exists(cast):   # the session could not record a byte: nothing to send
            _remove(meta_path)
            self._unwritten_meta.pop(sid, None)
            return
        size = os.path.getsize(cast)
        state = await self.client.call("GET", f"/v1/recordings/{sid}/upload")
        offset = 0 if state.get("complete") else int(state.get("size", 0))
        if not state.get("complete"):
            if offset > size:
                offset = 0
            while offset < size:
                piece = await asyncio.to_thread(_read, cast, offset, UPLOAD_PIECE)
                try:
                    answer = await self.client.call("POST", f"/v1/recordings/{sid}/upload",
                                                    {"offset": offset, "data": base64.b64encode(piece).decode()})
                except BadParameter:   # auth holds another amount (another auth server, or a lost answer)
                    state = await self.client.call("GET", f"/v1/recordings/{sid}/upload")
                    offset = int(state.get("size", 0))
                    continue
                offset = int(answer["size"])
        digest = await asyncio.to_thread(_sha256, cast)
        await self.client.call("POST", f"/v1/recordings/{sid}/complete",
                               {"size": size, "sha256": digest, "meta": meta})
        _remove(cast)
        _remove(meta_path)
        self._unwritten_meta.pop(sid, None)
        self.used = max(0, self.used - size)
        self.uploaded += 1
        log.info("uploaded the recording of session %s (%d bytes)", sid, size)


def _header_meta(path: str) -> dict:
    with open(path, "rb") as fh:
        first = fh.readline(64 * 1024)
    try:
        header = json.loads(first)
        meta = header.get("gatehouse") if isinstance(header, dict) else None
        return dict(meta) if isinstance(meta, dict) else {}
    except ValueError:
        return {}


def _write_json(path: str, value: dict) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(value, fh, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
