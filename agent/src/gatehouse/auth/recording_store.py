"""Where the auth service keeps session recordings: a store interface and a local-directory store.

A recording is one asciicast v2 file per (cluster, session id): this cluster's own
sessions, and at a root the sessions of its users on forwarding leaves. Uploads are
resumable and idempotent: a writer asks how many bytes the store holds (``size``),
appends at exactly that offset (``append``), and ``complete`` checks the whole
file's size and SHA-256 before the recording becomes readable; completing the same
recording again is a no-op, completing a different one under the same id is refused.

The interface (``RecordingStore``) is what auth needs and nothing more, so an
S3-compatible object store fits behind it (the natural next step for several auth
servers); each method names its object-store counterpart:

=================  ==========================================  ==================================
method             contract                                    S3-compatible store
=================  ==========================================  ==================================
``size``           bytes held and whether complete             HEAD object, else ListParts sum
``append``         only at exactly the held size; a torn       UploadPart (parts of 5 MiB and
                   piece never stays                           more: buffer small pieces)
``complete``       size and SHA-256 checked, then readable     CompleteMultipartUpload after the
                   at once; again: no-op; other data: refused  checksum (x-amz-checksum-sha256)
``read``           complete recordings only, <= MAX_PIECE      ranged GET
``delete``         complete or partial, idempotent             DeleteObject / AbortMultipartUpload
``entries``        complete recordings with size and time      ListObjectsV2 (LastModified)
=================  ==========================================  ==================================

Every id is checked (``check_ids``) before storage is touched; every storage failure is
one sentence (``store_problem``: a full disk, an unwritable place). The contract is a
test suite every store must pass: integration/test_recording_store_contract.py.
``open_recording_store`` picks the store from ``audit.recordings_dir``: a path (or
``file:///path``) is a ``LocalRecordingStore``, files under that directory (default
``data_dir/recordings``; several auth servers need it on shared storage). A URL of
another scheme (``s3://bucket/prefix``) is refused with one sentence until a store for
it is added to ``STORES``.
"""

from __future__ import annotations

import abc
import asyncio
import errno
import hashlib
import os
from dataclasses import dataclass
from typing import Optional

from ..errors import AlreadyExists, BadParameter, GatehouseError, NotFound
from ..resources import validate_name
from ..wire import is_session_id

#: Largest recording a store accepts (one session).
MAX_RECORDING = 64 * 1024 ** 3
#: Largest piece of one append or read.
MAX_PIECE = 1024 * 1024


@dataclass(frozen=True)
class RecordingEntry:
    cluster: str
    sid: str
    size: int
    mtime: float


class RecordingStore(abc.ABC):
    @abc.abstractmethod
    async def size(self, cluster: str, sid: str) -> tuple[int, bool]:
        """(bytes held, complete) for a recording; (0, False) when there is none."""

    @abc.abstractmethod
    async def append(self, cluster: str, sid: str, offset: int, data: bytes) -> int:
        """Append DATA at OFFSET, which must be the bytes held; returns the new size."""

    @abc.abstractmethod
    async def complete(self, cluster: str, sid: str, size: int, sha256: str) -> bool:
        """Make the upload readable if it holds SIZE bytes hashing to SHA256; True when it was newly completed."""

    @abc.abstractmethod
    async def read(self, cluster: str, sid: str, offset: int, limit: int) -> tuple[bytes, int]:
        """(up to LIMIT bytes from OFFSET, total size) of a complete recording; NotFound otherwise."""

    @abc.abstractmethod
    async def delete(self, cluster: str, sid: str) -> None:
        """Remove a recording (complete or partial)."""

    @abc.abstractmethod
    async def entries(self) -> list:
        """Every complete recording, as RecordingEntry (for retention)."""


def check_ids(cluster: str, sid: str) -> None:
    validate_name(cluster, "cluster name")
    if not is_session_id(sid):
        raise BadParameter(f'"{str(sid)[:60]}" is not a session id; copy the sid from an audit event')


def store_problem(what: str, where: str, exc: OSError) -> GatehouseError:
    """One sentence for a failed write (a full disk above all)."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return GatehouseError(f"auth cannot store {what}: the disk holding {where} is full ({reason}); free space "
                              f"there or lower audit.recordings_max_size")
    return GatehouseError(f"auth cannot store {what} in {where} ({reason}); check that the directory is writable")


class LocalRecordingStore(RecordingStore):
    """Recordings as files: DIR/CLUSTER/SID.cast, uploads in progress as DIR/CLUSTER/.SID.part."""

    def __init__(self, directory: str):
        self.dir = os.path.abspath(directory)

    def _paths(self, cluster: str, sid: str) -> tuple[str, str]:
        check_ids(cluster, sid)
        base = os.path.join(self.dir, cluster)
        return os.path.join(base, f"{sid}.cast"), os.path.join(base, f".{sid}.part")

    async def size(self, cluster: str, sid: str) -> tuple[int, bool]:
        final, part = self._paths(cluster, sid)

        def stat():
            for path, done in ((final, True), (part, False)):
                try:
                    return os.stat(path).st_size, done
                except FileNotFoundError:
                    continue
            return 0, False
        return await asyncio.to_thread(stat)

    async def append(self, cluster: str, sid: str, offset: int, data: bytes) -> int:
        final, part = self._paths(cluster, sid)
        if len(data) > MAX_PIECE:
            raise BadParameter(f"a recording piece may hold at most {MAX_PIECE // 1024} KiB")

        def write():
            if os.path.exists(final):
                raise AlreadyExists(f"recording {sid} of cluster {cluster} is already complete")
            os.makedirs(os.path.dirname(part), mode=0o700, exist_ok=True)
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                held = os.fstat(fd).st_size
                if offset != held:
                    raise BadParameter(f"recording {sid} holds {held} bytes, so the next piece starts at offset "
                                       f"{held}, not {offset}; ask for the size and resume from there")
                if held + len(data) > MAX_RECORDING:
                    raise BadParameter(f"recording {sid} would be larger than {MAX_RECORDING // 1024 ** 3} GiB")
                os.lseek(fd, held, os.SEEK_SET)
                view = memoryview(data)
                try:
                    while view:
                        view = view[os.write(fd, view):]
                except OSError:
                    os.ftruncate(fd, held)   # a torn piece never stays: the writer resends it whole
                    raise
                finally:
                    view.release()
                return held + len(data)
            finally:
                os.close(fd)
        try:
            return await asyncio.to_thread(write)
        except OSError as exc:
            raise store_problem(f"recording {sid}", self.dir, exc) from None

    async def complete(self, cluster: str, sid: str, size: int, sha256: str) -> bool:
        final, part = self._paths(cluster, sid)

        def finish():
            if os.path.exists(final):
                if _sha256(final) != sha256:
                    raise AlreadyExists(f"cluster {cluster} already holds a different recording {sid}; a session id "
                                        f"names one recording")
                return False
            if not os.path.exists(part):
                raise NotFound(f"no upload of recording {sid} is in progress; upload it from offset 0")
            held = os.stat(part).st_size
            if held != size or _sha256(part) != sha256:
                os.unlink(part)
                raise BadParameter(f"the upload of recording {sid} ({held} bytes) does not match its size and SHA-256 "
                                   f"({size} bytes); it was removed, upload it again from offset 0")
            with open(part, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(part, final)
            dir_fd = os.open(os.path.dirname(final), os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            return True
        try:
            return await asyncio.to_thread(finish)
        except OSError as exc:
            raise store_problem(f"recording {sid}", self.dir, exc) from None

    async def read(self, cluster: str, sid: str, offset: int, limit: int) -> tuple[bytes, int]:
        final, _unused = self._paths(cluster, sid)
        limit = max(0, min(int(limit), MAX_PIECE))

        def get():
            try:
                with open(final, "rb") as fh:
                    total = os.fstat(fh.fileno()).st_size
                    fh.seek(max(0, offset))
                    return fh.read(limit), total
            except FileNotFoundError:
                raise NotFound(f"cluster {cluster} holds no recording of session {sid}") from None
        return await asyncio.to_thread(get)

    async def delete(self, cluster: str, sid: str) -> None:
        def remove():
            for path in self._paths(cluster, sid):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        await asyncio.to_thread(remove)

    async def entries(self) -> list:
        def scan():
            out = []
            try:
                clusters = os.listdir(self.dir)
            except FileNotFoundError:
                return out
            for cluster in clusters:
                folder = os.path.join(self.dir, cluster)
                try:
                    names = os.listdir(folder)
                except (NotADirectoryError, FileNotFoundError):
                    continue
                for name in names:
                    if name.endswith(".cast") and not name.startswith("."):
                        try:
                            st = os.stat(os.path.join(folder, name))
                        except FileNotFoundError:
                            continue
                        out.append(RecordingEntry(cluster, name[:-5], st.st_size, st.st_mtime))
            return out
        return await asyncio.to_thread(scan)


#: Stores by URL scheme of audit.recordings_dir (a plain path is "file").
STORES = {"file": LocalRecordingStore}


def open_recording_store(recordings_dir: str, data_dir: str) -> RecordingStore:
    """The store audit.RECORDINGS_DIR names: a path relative to DATA_DIR, an absolute one, or a URL."""
    where = recordings_dir or "recordings"
    scheme, sep, rest = where.partition("://")
    if not sep:
        scheme, rest = "file", where
    elif scheme == "file":
        rest = rest if rest.startswith("/") else "/" + rest
    store = STORES.get(scheme.lower())
    if store is None:
        raise BadParameter(f"audit.recordings_dir {where!r} names an {scheme} store, which this version does not "
                           f"have; use a local directory (a path or file:///path)")
    return store(rest if os.path.isabs(rest) else os.path.join(data_dir, rest))


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path: str) -> Optional[str]:
    """SHA-256 (hex) of a file, or None when it cannot be read."""
    try:
        return _sha256(path)
    except OSError:
        return None
