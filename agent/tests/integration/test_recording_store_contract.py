"""The contract of a recording store (auth/recording_store.py), run against every implementation.

Today there is one, LocalRecordingStore on a real directory; an S3-compatible store is
added to STORES and must pass the same tests unchanged. What a store must do: resumable,
idempotent uploads (size, append at exactly the held size, complete with size and
SHA-256), reads of complete recordings only, in bounded pieces, a listing of complete
recordings with their time for retention, idempotent deletes, ids checked before any
storage is touched, and one-sentence errors.
"""

from __future__ import annotations

import hashlib

import pytest

from gatehouse.auth.recording_store import MAX_PIECE, LocalRecordingStore, RecordingStore, open_recording_store
from gatehouse.errors import AlreadyExists, BadParameter, GatehouseError, NotFound

SID = "0f0e0d0c-0b0a-4908-8706-050403020100"
OTHER = "0f0e0d0c-0b0a-4908-8706-050403020101"
DATA = b'{"version": 2, "width": 80, "height": 24}\n[0.5, "o", "hello"]\n' * 50


def local(tmp_path) -> RecordingStore:
    return open_recording_store("recordings", str(tmp_path))


STORES = {"local": local}


@pytest.fixture(params=sorted(STORES))
def store(request, tmp_path) -> RecordingStore:
    return STORES[request.param](tmp_path)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def upload(store: RecordingStore, data: bytes, sid: str = SID, piece: int = 1000) -> None:
    for offset in range(0, len(data), piece):
        held = await store.append("c.test", sid, offset, data[offset:offset + piece])
        assert held == min(len(data), offset + piece)


async def test_an_upload_resumes_from_the_held_size_and_completes_once(store):
    assert await store.size("c.test", SID) == (0, False)
    await upload(store, DATA[:1500])
    assert await store.size("c.test", SID) == (1500, False)
    with pytest.raises(NotFound):                              # not readable before it is complete
        await store.read("c.test", SID, 0, 100)
    with pytest.raises(BadParameter, match="the next piece starts at offset 1500"):
        await store.append("c.test", SID, 1000, DATA[1000:2000])   # a resent piece: told where to resume
    await store.append("c.test", SID, 1500, DATA[1500:])
    assert await store.complete("c.test", SID, len(DATA), sha(DATA)) is True
    assert await store.complete("c.test", SID, len(DATA), sha(DATA)) is False       # idempotent
    assert await store.size("c.test", SID) == (len(DATA), True)
    with pytest.raises(AlreadyExists):
        await store.append("c.test", SID, len(DATA), b"more")
    with pytest.raises(AlreadyExists, match="a session id names one recording"):
        await store.complete("c.test", SID, 4, sha(b"diff"))


async def test_a_complete_that_does_not_match_removes_the_upload(store):
    await upload(store, DATA)
    with pytest.raises(BadParameter, match="upload it again from offset 0"):
        await store.complete("c.test", SID, len(DATA), sha(DATA + b"x"))
    assert await store.size("c.test", SID) == (0, False)
    with pytest.raises(NotFound, match="upload it from offset 0"):
        await store.complete("c.test", SID, len(DATA), sha(DATA))


async def test_reads_are_bounded_pieces_of_complete_recordings(store):
    await upload(store, DATA)
    await store.complete("c.test", SID, len(DATA), sha(DATA))
    got, offset = b"", 0
    while True:
        piece, total = await store.read("c.test", SID, offset, 700)
        assert total == len(DATA) and len(piece) <= 700
        if not piece:
            break
        got += piece
        offset += len(piece)
    assert got == DATA
    piece, _total = await store.read("c.test", SID, 0, 10 * MAX_PIECE)
    assert len(piece) <= MAX_PIECE
    with pytest.raises(NotFound, match="holds no recording of session"):
        await store.read("c.test", OTHER, 0, 10)


async def test_entries_list_complete_recordings_and_delete_is_idempotent(store):
    await upload(store, DATA)
    await store.complete("c.test", SID, len(DATA), sha(DATA))
    await upload(store, DATA[:100], sid=OTHER)                  # in progress: not listed
    entries = await store.entries()
    assert [(e.cluster, e.sid, e.size) for e in entries] == [("c.test", SID, len(DATA))]
    assert entries[0].mtime > 0
    await store.delete("c.test", SID)
    await store.delete("c.test", SID)
    await store.delete("c.test", OTHER)
    assert await store.entries() == []
    assert await store.size("c.test", OTHER) == (0, False)


@pytest.mark.parametrize("cluster,sid,fragment", [
    ("../etc", SID, "cluster name"),
    ("c.test", "../../passwd", "is not a session id"),
    ("c.test", SID + "/x", "is not a session id"),
])
async def test_ids_are_checked_before_storage_is_touched(store, cluster, sid, fragment):
    for call in (store.size(cluster, sid), store.append(cluster, sid, 0, b"x"), store.read(cluster, sid, 0, 1),
                 store.complete(cluster, sid, 1, sha(b"x")), store.delete(cluster, sid)):
        with pytest.raises(BadParameter) as exc:
            await call
        assert fragment in str(exc.value) and "\n" not in str(exc.value)
    assert await store.entries() == []


async def test_a_piece_larger_than_the_limit_is_refused(store):
    with pytest.raises(BadParameter, match="at most"):
        await store.append("c.test", SID, 0, b"x" * (MAX_PIECE + 1))


def test_the_store_is_chosen_from_the_config(tmp_path):
    assert isinstance(open_recording_store("", str(tmp_path)), LocalRecordingStore)
    assert open_recording_store("", str(tmp_path)).dir == str(tmp_path / "recordings")
    assert open_recording_store("/srv/rec", str(tmp_path)).dir == "/srv/rec"
    assert open_recording_store("file:///srv/rec", str(tmp_path)).dir == "/srv/rec"
    with pytest.raises(GatehouseError) as exc:
        open_recording_store("s3://bucket/prefix", str(tmp_path))
    assert str(exc.value) == ("audit.recordings_dir 's3://bucket/prefix' names an s3 store, which this version does "
                              "not have; use a local directory (a path or file:///path)")
