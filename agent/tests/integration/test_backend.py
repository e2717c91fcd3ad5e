"""Storage backend conformance: the interface contract, on real SQLite files and on a real
PostgreSQL server (the ``backend`` fixture in conftest.py runs each test on both; ``db`` is
one open instance, ``backend.open()`` opens more on the same storage).

At the end: SQLite-only tests (file modes, WAL, sqlite config) and PostgreSQL-only tests
(config and conn-string secrets, TLS, multi-host, schema migrations, server outages).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
import sys
import textwrap
import time

import pytest

from gatehouse.backend import Op, SQLiteBackend, open_backend
from gatehouse.backend import postgres as postgres_mod
from gatehouse.backend import sqlite as sqlite_mod
from gatehouse.errors import AlreadyExists, BadParameter, CompareFailed, GatehouseError, LimitExceeded, NotFound

from .pgserver import PASSWORD as PG_PASSWORD
from .pgserver import free_port

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src")


async def next_event(watcher, timeout=5.0):
    return await asyncio.wait_for(watcher.__anext__(), timeout)


async def run_python(code: str, *args: str) -> str:
    """Run a snippet in another process (with the agent's sources importable)."""
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", textwrap.dedent(code), *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 300)   # generous: shared 2-core machine
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()
    return out.decode()


# --------------------------------------------------------------------------- CRUD

async def test_crud_roundtrip(db):
    created = await db.create("users/alice", {"roles": ["access"], "n": 1})
    assert created.key == "users/alice" and created.value == {"roles": ["access"], "n": 1}
    assert created.revision == 1 and created.expires is None
    assert await db.get("users/alice") == created

    updated = await db.update("users/alice", {"roles": ["editor"]})
    assert updated.revision == 2
    assert (await db.get("users/alice")).value == {"roles": ["editor"]}

    put = await db.put("users/bob", {"x": None})
    assert put.revision == 3
    overwritten = await db.put("users/bob", {"x": 2})
    assert overwritten.revision == 4 and (await db.get("users/bob")).value == {"x": 2}

    await db.delete("users/alice")
    with pytest.raises(NotFound):
        await db.get("users/alice")
    assert await db.revision() == 5


async def test_returned_values_are_copies(db):
    value = {"list": [1, 2]}
    item = await db.put("a/b", value)
    value["list"].append(3)
    item.value["list"].append(4)
    assert (await db.get("a/b")).value == {"list": [1, 2]}


async def test_get_range_sorted_and_prefix_bounded(db):
    for key in ["roles/b", "roles/a", "users/z", "roles/c/d", "rolesx/a", "roles"]:
        await db.put(key, {"k": key})
    assert [i.key for i in await db.get_range("roles/")] == ["roles/a", "roles/b", "roles/c/d"]
    assert [i.key for i in await db.get_range("roles")] == ["roles", "roles/a", "roles/b",
                                                             "roles/c/d", "rolesx/a"]
    assert [i.key for i in await db.get_range("")] == sorted(
        ["roles/b", "roles/a", "users/z", "roles/c/d", "rolesx/a", "roles"])
    assert await db.get_range("nothing/") == []


async def test_prefix_is_not_a_like_pattern(db):
    for key in ["a%/1", "a_b/1", "axb/1", "ab/1", "a\\/1"]:
        await db.put(key, {})
    assert [i.key for i in await db.get_range("a_")] == ["a_b/1"]
    assert [i.key for i in await db.get_range("a%")] == ["a%/1"]
    assert [i.key for i in await db.get_range("a\\")] == ["a\\/1"]
    assert await db.delete_range("a_") == 1
    assert [i.key for i in await db.get_range("a")] == ["a%/1", "a\\/1", "ab/1", "axb/1"]


async def test_unicode_keys_inside_prefix(db):
    await db.put("nodes/\U0001F600", {})
    await db.put("nodes/\u00e9", {})
    assert [i.key for i in await db.get_range("nodes/")] == ["nodes/\u00e9", "nodes/\U0001F600"]


async def test_delete_range(db):
    for key in ["tokens/a", "tokens/b", "tokens/c", "users/a"]:
        await db.put(key, {})
    before = await db.revision()
    assert await db.delete_range("tokens/") == 3
    assert await db.get_range("tokens/") == []
    assert [i.key for i in await db.get_range("")] == ["users/a"]
    assert await db.revision() == before + 3
    assert await db.delete_range("tokens/") == 0


async def test_json_stored_canonical(db, backend):
    await db.put("a/b", {"z": 1, "a": {"y": [1, "x"], "b": True}})
    text = backend.stored_value("a/b")
    assert text == '{"a":{"b":true,"y":[1,"x"]},"z":1}'


# --------------------------------------------------------------------------- errors

async def test_not_found_errors(db):
    for call in (db.get("users/nobody"), db.update("users/nobody", {}),
                 db.compare_and_swap("users/nobody", 1, {}), db.delete("users/nobody")):
        with pytest.raises(NotFound) as info:
            await call
        assert str(info.value) == 'storage item "users/nobody" not found'
        assert info.value.status == 404


async def test_exists_follows_presence_and_expiry(db):
    assert not await db.exists("users/alice")
    await db.create("users/alice", {"v": 1})
    assert await db.exists("users/alice")
    await db.put("nodes/gone", {"v": 1}, expires=time.time() - 1)
    assert not await db.exists("nodes/gone")


async def test_already_exists_error(db):
    await db.create("users/alice", {"v": 1})
    with pytest.raises(AlreadyExists) as info:
        await db.create("users/alice", {"v": 2})
    assert str(info.value) == 'storage item "users/alice" already exists'
    assert (await db.get("users/alice")).value == {"v": 1}


@pytest.mark.parametrize("key", ["", "/users/alice", "users/../etc", "..", "users//alice",
                                 "users/alice/", "users/./x", "a\nb", "a\x00b", 42, None])
async def test_bad_keys_rejected(db, key):
    with pytest.raises(BadParameter) as info:
        await db.put(key, {})
    assert "storage key" in str(info.value) and "invalid" in str(info.value)
    with pytest.raises(BadParameter):
        await db.get(key)
    assert await db.revision() == 0


@pytest.mark.parametrize("prefix", ["/users/", "a//", "../", "a/../"])
async def test_bad_prefixes_rejected(db, prefix):
    with pytest.raises(BadParameter) as info:
        await db.get_range(prefix)
    assert "storage prefix" in str(info.value)
    with pytest.raises(BadParameter):
        await db.delete_range(prefix)


@pytest.mark.parametrize("value", [["a"], "text", None, {"x": object()}, {"x": float("nan")}, {1: {2j}}])
async def test_bad_values_rejected(db, value):
    with pytest.raises(BadParameter) as info:
        await db.put("a/b", value)
    assert "a/b" in str(info.value)
    with pytest.raises(NotFound):
        await db.get("a/b")


async def test_bad_expiry_and_ops_rejected(db):
    with pytest.raises(BadParameter):
        await db.put("a/b", {}, expires="tomorrow")
    with pytest.raises(BadParameter):
        await db.put("a/b", {}, expires=float("inf"))
    with pytest.raises(BadParameter) as info:
        await db.atomic([Op("upsert", "a/b", {})])
    assert "unknown atomic operation 'upsert'" in str(info.value)
    with pytest.raises(BadParameter):
        await db.atomic([Op("cas", "a/b", {})])  # no revision
    with pytest.raises(BadParameter):
        await db.atomic([("put", "a/b", {})])
    with pytest.raises(BadParameter):
        await db.wait_for_change("5", 0.1)
    assert await db.revision() == 0


# --------------------------------------------------------------------------- CAS, atomic

async def test_compare_and_swap(db):
    first = await db.create("cas/root/host", {"gen": 1})
    second = await db.compare_and_swap("cas/root/host", first.revision, {"gen": 2})
    assert second.revision > first.revision and second.value == {"gen": 2}
    with pytest.raises(CompareFailed) as info:
        await db.compare_and_swap("cas/root/host", first.revision, {"gen": 3})
    assert str(info.value) == (f'storage item "cas/root/host" was changed by another writer '
                               f'(revision {second.revision}, expected {first.revision}); '
                               f'read it again and retry')
    assert info.value.status == 409
    assert (await db.get("cas/root/host")).value == {"gen": 2}


async def test_atomic_success_returns_per_op_results(db):
    base = await db.put("a/base", {"v": 0})
    await db.put("a/old", {})
    results = await db.atomic([
        Op("require_revision", "a/base", revision=base.revision),
        Op("require_absent", "a/new"),
        Op("create", "a/new", {"v": 1}),
        Op("cas", "a/base", {"v": 1}, revision=base.revision),
        Op("put", "a/put", {"v": 2}),
        Op("delete", "a/old"),
    ])
    assert results[0] == base
    assert results[1] is None and results[5] is None
    assert results[2].value == {"v": 1} and results[3].value == {"v": 1} and results[4].value == {"v": 2}
    revs = [r.revision for r in results[2:5]]
    assert revs == sorted(revs) and len(set(revs)) == 3
    assert [i.key for i in await db.get_range("a/")] == ["a/base", "a/new", "a/put"]
    assert await db.atomic([]) == []


async def test_atomic_ops_see_earlier_ops(db):
    results = await db.atomic([Op("create", "k/x", {"v": 1}), Op("update", "k/x", {"v": 2})])
    assert (await db.get("k/x")).value == {"v": 2} and results[1].revision == results[0].revision + 1
    with pytest.raises(AlreadyExists):
        await db.atomic([Op("put", "k/y", {}), Op("create", "k/y", {})])
    with pytest.raises(NotFound):
        await db.get("k/y")


@pytest.mark.parametrize("failing, error", [
    (Op("create", "t/existing", {}), AlreadyExists),
    (Op("update", "t/missing", {}), NotFound),
    (Op("cas", "t/existing", {}, revision=999), CompareFailed),
    (Op("delete", "t/missing"), NotFound),
    (Op("require_absent", "t/existing"), AlreadyExists),
    (Op("require_revision", "t/existing", revision=999), CompareFailed),
    (Op("require_revision", "t/missing", revision=1), NotFound),
])
async def test_atomic_all_or_nothing(db, failing, error):
    existing = await db.put("t/existing", {"v": "original"})
    victim = await db.put("t/victim", {"v": "kept"})
    watcher = db.watch(["t/"])
    before = await db.revision()
    with pytest.raises(error):
        await db.atomic([
            Op("put", "t/first", {"v": 1}),
            Op("delete", "t/victim"),
            Op("put", "t/existing", {"v": "changed"}),
            Op("put", "t/second", {"v": 2}),
            failing,
            Op("put", "t/after", {"v": 3}),
        ])
    assert await db.get_range("t/") == [existing, victim]
    assert await db.revision() == before
    # nothing was announced either: the next event is a later write
    await db.put("t/marker", {})
    event = await next_event(watcher)
    assert event.key == "t/marker" and event.revision == before + 1


# --------------------------------------------------------------------------- expiry

async def test_expired_items_behave_as_absent(db):
    ttl = time.time() + 0.4
    item = await db.put("tokens/short", {"role": "node"}, expires=ttl)
    assert item.expires == ttl
    await db.put("tokens/long", {}, expires=time.time() + 3600)
    await db.put("tokens/forever", {})
    assert (await db.get("tokens/short")).expires == ttl
    await asyncio.sleep(0.6)
    with pytest.raises(NotFound):
        await db.get("tokens/short")
    assert [i.key for i in await db.get_range("tokens/")] == ["tokens/forever", "tokens/long"]
    for call in (db.update("tokens/short", {}), db.delete("tokens/short"),
                 db.compare_and_swap("tokens/short", item.revision, {})):
        with pytest.raises(NotFound):
            await call
    recreated = await db.create("tokens/short", {"again": True})
    assert recreated.value == {"again": True} and recreated.expires is None


async def test_already_expired_write_is_invisible(db):
    await db.put("x/past", {}, expires=time.time() - 1)
    with pytest.raises(NotFound):
        await db.get("x/past")
    await db.atomic([Op("require_absent", "x/past")])


async def test_reaper_deletes_and_announces(db, backend):
    watcher = db.watch(["sessions/"])
    put = await db.put("sessions/s1", {}, expires=time.time() + 0.3)
    await db.put("sessions/keep", {})
    assert (await next_event(watcher)).revision == put.revision
    await next_event(watcher)
    event = await next_event(watcher, timeout=10)
    assert (event.type, event.key, event.item) == ("delete", "sessions/s1", None)
    assert event.revision > put.revision
    keys = backend.stored_keys()
    assert keys == ["sessions/keep"]


async def test_reaper_starts_for_items_found_at_open(backend):
    first = await backend.open()
    await first.put("a/b", {}, expires=time.time() + 0.2)
    await first.close()
    second = await backend.open(reap_interval=0.1)
    try:
        watcher = second.watch(["a/"])
        event = await next_event(watcher, timeout=10)
        assert (event.type, event.key) == ("delete", "a/b")
    finally:
        await second.close()


# --------------------------------------------------------------------------- persistence, revisions

async def test_persistence_and_revision_across_reopen(backend):
    first = await backend.open()
    await first.put("users/alice", {"n": 1})
    await first.put("users/bob", {"n": 2}, expires=time.time() + 3600)
    await first.put("users/tmp", {})
    await first.delete("users/tmp")
    await first.delete_range("users/bob")
    last = await first.revision()
    assert last == 5
    await first.close()

    second = await backend.open()
    try:
        assert await second.revision() == last
        alice = await second.get("users/alice")
        assert alice.value == {"n": 1} and alice.revision == 1
        with pytest.raises(NotFound):
            await second.get("users/bob")
        nxt = await second.put("users/carol", {})
        assert nxt.revision == last + 1
    finally:
        await second.close()


async def test_revision_never_goes_backwards_after_deleting_everything(backend):
    store = backend
    backend = await store.open()
    seen = []
    for i in range(5):
        seen.append((await backend.put(f"k/{i}", {})).revision)
    await backend.delete_range("")
    seen.append(await backend.revision())
    await backend.close()
    backend = await store.open()
    try:
        assert await backend.revision() == seen[-1] == 10
        seen.append((await backend.create("k/0", {})).revision)
    finally:
        await backend.close()
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


async def test_closed_backend_refuses_work(backend):
    backend = await backend.open()
    watcher = backend.watch([])
    pending = asyncio.ensure_future(watcher.__anext__())
    await asyncio.sleep(0)
    await backend.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, 5)
    with pytest.raises(GatehouseError, match="closed"):
        await backend.get("a/b")
    with pytest.raises(GatehouseError, match="closed"):
        backend.watch(["a/"])
    await backend.close()  # idempotent


# --------------------------------------------------------------------------- files

async def test_file_modes(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "newdir" / "backend.sqlite"
        backend = await SQLiteBackend.open(str(path))
        try:
            await backend.put("a/b", {"secret": "x"})
            for suffix in ("", "-wal", "-shm"):
                mode = stat.S_IMODE(os.stat(str(path) + suffix).st_mode)
                assert mode == 0o600, f"{suffix or 'db'} mode {oct(mode)}"
            assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
            conn = sqlite3.connect(str(path))
            try:
                assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            finally:
                conn.close()
        finally:
            await backend.close()
    finally:
        os.umask(old)


async def test_loose_existing_file_is_tightened(tmp_path):
    path = tmp_path / "backend.sqlite"
    path.touch()
    os.chmod(path, 0o644)
    backend = await SQLiteBackend.open(str(path))
    await backend.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


async def test_not_a_database(tmp_path):
    path = tmp_path / "backend.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(GatehouseError, match="not a usable SQLite database"):
        await SQLiteBackend.open(str(path))


async def test_open_backend(tmp_path):
    backend = await open_backend({}, str(tmp_path))
    try:
        await backend.put("a/b", {})
        assert os.path.exists(tmp_path / "backend.sqlite")
    finally:
        await backend.close()
    backend = await open_backend({"type": "sqlite", "path": "sub/other.sqlite"}, str(tmp_path))
    await backend.close()
    assert os.path.exists(tmp_path / "sub" / "other.sqlite")
    explicit = str(tmp_path / "explicit.sqlite")
    backend = await open_backend({"type": "sqlite", "path": explicit}, "/nonexistent")
    await backend.close()
    assert os.path.exists(explicit)

    with pytest.raises(BadParameter) as info:
        await open_backend({"type": "etcd"}, str(tmp_path))
    assert str(info.value) == "unknown storage type 'etcd'; use sqlite or postgresql"
    with pytest.raises(BadParameter, match="unknown storage setting 'pth'"):
        await open_backend({"type": "sqlite", "pth": "x"}, str(tmp_path))


# --------------------------------------------------------------------------- watch

async def test_watch_order_and_prefix_filter(db):
    await db.put("roles/before", {})
    watcher = db.watch(["roles/", "cas/"])
    assert watcher.start_revision == 1
    await db.put("roles/a", {"v": 1})
    await db.put("users/x", {})
    await db.atomic([Op("put", "cas/root/user", {}), Op("delete", "roles/before")])
    await db.update("roles/a", {"v": 2})
    await db.delete_range("roles/")
    events = [await next_event(watcher) for _ in range(5)]
    assert [(e.type, e.key) for e in events] == [
        ("put", "roles/a"), ("put", "cas/root/user"), ("delete", "roles/before"),
        ("put", "roles/a"), ("delete", "roles/a")]
    assert [e.revision for e in events] == [2, 4, 5, 6, 7]
    assert events[3].item.value == {"v": 2} and events[3].item.revision == 6
    assert events[4].item is None
    watcher.close()
    with pytest.raises(StopAsyncIteration):
        await next_event(watcher)


async def test_watch_all_keys_and_context_manager(db):
    async with db.watch([]) as watcher:
        await db.put("a/1", {})
        await db.put("z/1", {})
        assert [(await next_event(watcher)).key for _ in range(2)] == ["a/1", "z/1"]
    assert watcher.closed


async def test_watch_is_cancel_safe(db):
    watcher = db.watch(["a/"])
    waiting = asyncio.ensure_future(watcher.__anext__())
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await db.put("a/1", {})
    await db.put("a/2", {})
    # a cancelled wait loses nothing and delivers nothing twice
    assert [(await next_event(watcher)).key for _ in range(2)] == ["a/1", "a/2"]
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(watcher.__anext__(), 0.1)
    await db.put("a/3", {})
    assert (await next_event(watcher)).key == "a/3"


async def test_many_watchers_get_every_event(db):
    watchers = [db.watch(["n/"]) for _ in range(5)]

    async def consume(w):
        return [(await next_event(w)).revision for _ in range(50)]

    consumers = [asyncio.ensure_future(consume(w)) for w in watchers]
    for i in range(50):
        await db.put(f"n/{i % 7}", {"i": i})
    results = await asyncio.gather(*consumers)
    assert all(r == list(range(1, 51)) for r in results)


async def test_slow_watcher_is_closed_not_blocking(backend):
    backend = await backend.open(watcher_queue=5)
    try:
        slow = backend.watch(["a/"])
        fast = backend.watch(["a/"])
        got = []

        async def consume():
            async for event in fast:
                got.append(event.revision)
                if len(got) == 20:
                    return
        consumer = asyncio.ensure_future(consume())
        for i in range(20):
            await backend.put(f"a/{i}", {})   # never blocks on the slow watcher
        await asyncio.wait_for(consumer, 5)
        assert got == list(range(1, 21))
        assert slow.closed
        with pytest.raises(LimitExceeded, match="fell behind"):
            await next_event(slow)
        with pytest.raises(StopAsyncIteration):
            await next_event(slow)
    finally:
        await backend.close()


# --------------------------------------------------------------------------- wait_for_change

async def test_wait_for_change_wakes_on_matching_write(db):
    await db.put("other/x", {})
    since = await db.revision()
    waiter = asyncio.ensure_future(db.wait_for_change(since, 30, ["roles/"]))
    await asyncio.sleep(0.1)
    await db.put("other/y", {})         # not under the prefix
    await asyncio.sleep(0.3)
    assert not waiter.done()
    written = await db.put("roles/r", {})
    assert await asyncio.wait_for(waiter, 5) == written.revision


async def test_wait_for_change_any_key_and_timeout(db):
    since = await db.revision()
    started = time.monotonic()
    assert await db.wait_for_change(since, 0.2) == since
    assert time.monotonic() - started >= 0.15
    assert await db.wait_for_change(since, 0) == since
    waiter = asyncio.ensure_future(db.wait_for_change(since, 30))
    await asyncio.sleep(0.05)
    item = await db.put("x/y", {})
    assert await asyncio.wait_for(waiter, 5) == item.revision


async def test_wait_for_change_past_revision(db):
    first = await db.put("roles/a", {})
    await db.put("users/a", {})
    await db.put("users/b", {})
    current = await db.revision()
    # a matching change after `since` already happened: answer at once
    assert await asyncio.wait_for(db.wait_for_change(0, 30, ["roles/"]), 5) == current
    # only non-matching changes since then: wait (here: until the timeout)
    assert await db.wait_for_change(first.revision, 0.2, ["roles/"]) == current
    # a revision from the future (e.g. restored database): answer at once
    assert await asyncio.wait_for(db.wait_for_change(current + 100, 30), 5) == current


async def test_wait_for_change_with_unknown_history_answers_at_once(backend):
    first = await backend.open()
    await first.put("roles/a", {})
    await first.put("users/a", {})
    await first.close()
    second = await backend.open()
    try:
        # what happened before this process opened the file is unknown: answer early, not late
        assert await asyncio.wait_for(second.wait_for_change(1, 30, ["users/"]), 5) == 2
        assert await asyncio.wait_for(second.wait_for_change(1, 30, ["roles/"]), 5) == 2
        assert await second.wait_for_change(2, 0.1, ["roles/"]) == 2
    finally:
        await second.close()


async def test_reads_not_blocked_by_long_poll(db):
    await db.put("a/b", {"v": 1})
    waiters = [asyncio.ensure_future(db.wait_for_change(await db.revision(), 30)) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert (await asyncio.wait_for(db.get("a/b"), 2)).value == {"v": 1}
    assert len(await asyncio.wait_for(db.get_range("a/"), 2)) == 1
    assert not any(w.done() for w in waiters)
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert not db._feed.active


async def test_close_wakes_waiters(backend):
    backend = await backend.open()
    waiter = asyncio.ensure_future(backend.wait_for_change(0, 30))
    await asyncio.sleep(0.05)
    await backend.close()
    assert await asyncio.wait_for(waiter, 5) == 0


# --------------------------------------------------------------------------- other writers

WRITER = """
import asyncio, json, sys, time
from gatehouse.backend import open_backend

async def main(config, action, key):
    db = await open_backend(json.loads(config), "/nonexistent")
    try:
        if action == "put":
            item = await db.put(key, {"from": "subprocess"}, expires=time.time() + 3600)
            print(item.revision)
        else:
            await db.delete(key)
            print(await db.revision())
    finally:
        await db.close()

asyncio.run(main(*sys.argv[1:]))
"""


async def test_cross_process_write_wakes_waiter_and_watcher(db, backend):
    config = backend.config_json
    await db.put("users/local", {})
    since = await db.revision()
    watcher = db.watch(["roles/"])
    waiter = asyncio.ensure_future(db.wait_for_change(since, 60, ["roles/"]))
    await asyncio.sleep(0.1)
    revision = int(await run_python(WRITER, config, "put", "roles/remote"))
    assert revision == since + 1
    assert await asyncio.wait_for(waiter, 10) == revision
    event = await next_event(watcher, 10)
    assert (event.type, event.key, event.revision) == ("put", "roles/remote", revision)
    assert event.item.value == {"from": "subprocess"} and event.item.expires is not None
    assert (await db.get("roles/remote")).revision == revision

    deleted = int(await run_python(WRITER, config, "delete", "roles/remote"))
    event = await next_event(watcher, 10)
    assert (event.type, event.key, event.revision) == ("delete", "roles/remote", deleted)
    # our own next write continues after the other process's revisions
    assert (await db.put("users/after", {})).revision == deleted + 1


async def test_second_connection_writes_interleave_in_order(backend):
    a = await backend.open()
    b = await backend.open()
    try:
        watcher = a.watch([])
        await b.put("k/1", {})          # other connection
        await a.put("k/2", {})          # ours: must come after k/1
        await b.put("k/3", {})
        await b.delete("k/1")
        events = [await next_event(watcher, 10) for _ in range(4)]
        assert [(e.type, e.key, e.revision) for e in events] == [
            ("put", "k/1", 1), ("put", "k/2", 2), ("put", "k/3", 3), ("delete", "k/1", 4)]
        assert await a.revision() == await b.revision() == 4
    finally:
        await a.close()
        await b.close()


async def test_missed_history_ends_watchers_and_wakes_waiters(backend, monkeypatch):
    monkeypatch.setattr(sqlite_mod, "CHANGES_KEEP", 3)
    monkeypatch.setattr(postgres_mod, "EVENTS_KEEP", 3)
    a = await backend.open(poll_interval=3600, listen=False)   # catches up only when asked
    b = await backend.open()
    try:
        await a.put("x/0", {})
        watcher = a.watch(["roles/"])
        waiter = asyncio.ensure_future(a.wait_for_change(1, 30, ["roles/"]))
        await asyncio.sleep(0.05)
        for i in range(10):
            await b.put(f"other/{i}", {})   # more than the change history keeps
        assert not waiter.done()
        assert await a.revision() == 11
        assert await asyncio.wait_for(waiter, 5) == 11
        with pytest.raises(GatehouseError, match="changes were missed"):
            await next_event(watcher, 5)
        # a new watch works normally again
        fresh = a.watch(["roles/"])
        await a.put("roles/r", {})
        assert (await next_event(fresh)).revision == 12
    finally:
        await a.close()
        await b.close()


# --------------------------------------------------------------------------- concurrency

async def cas_increment(db, key, times):
    retries = 0
    for _ in range(times):
        while True:
            item = await db.get(key)
            try:
                await db.compare_and_swap(key, item.revision, {"n": item.value["n"] + 1})
                break
            except CompareFailed:
                retries += 1
    return retries


async def test_concurrent_cas_increments_are_exact(db):
    await db.create("counters/c", {"n": 0})
    retries = await asyncio.gather(*(cas_increment(db, "counters/c", 20) for _ in range(25)))
    assert (await db.get("counters/c")).value == {"n": 500}
    assert sum(retries) > 0   # the tasks really did race


async def test_concurrent_writes_fail_alone_and_commit_in_order(db):
    """Many atomic() calls at once (the PostgreSQL backend commits them together, one flush for the
    group): each one succeeds or fails on its own, every result carries the revision of its write,
    and the feed holds exactly the successful writes, each once, in revision order."""
    watcher = db.watch(["g/"])
    start = await db.revision()

    async def call(i: int):
        ops = [Op("create", f"g/shared/{i % 5}", {"by": i}), Op("put", f"g/own/{i}", {"i": i})]
        if i % 7 == 3:
            ops.append(Op("update", "g/missing", {}))    # this call fails as a whole
        try:
            return await db.atomic(ops)
        except (AlreadyExists, NotFound) as err:
            return err
    outcomes = await asyncio.gather(*(call(i) for i in range(60)))
    written = [o for o in outcomes if isinstance(o, list)]
    failed = [o for o in outcomes if not isinstance(o, list)]
    assert len(written) == 5 and len(failed) == 55   # one creator per shared key; the rest fail alone
    assert all("already exists" in str(e) or "not found" in str(e) for e in failed)
    revisions = sorted(item.revision for result in written for item in result)
    assert revisions == list(range(start + 1, start + 11))
    events = [await next_event(watcher) for _ in range(10)]
    assert [e.revision for e in events] == revisions
    for result in written:
        for item in result:
            assert await db.get(item.key) == item
    assert sorted(item.key for item in await db.get_range("g/own/")) == sorted(
        result[1].key for result in written)


INCREMENTER = """
import asyncio, json, sys
sys.path.insert(0, sys.argv[3])
from gatehouse.backend import open_backend
from gatehouse.errors import CompareFailed

async def main(config, times):
    db = await open_backend(json.loads(config), "/nonexistent")
    try:
        async def one():
            for _ in range(times):
                while True:
                    item = await db.get("counters/c")
                    try:
                        await db.compare_and_swap("counters/c", item.revision, {"n": item.value["n"] + 1})
                        break
                    except CompareFailed:
                        pass
        await asyncio.gather(*(one() for _ in range(5)))
    finally:
        await db.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_concurrent_cas_increments_across_processes(db, backend):
    config = backend.config_json
    await db.create("counters/c", {"n": 0})
    others = [asyncio.ensure_future(run_python(INCREMENTER, config, "40", SRC)) for _ in range(2)]
    try:
        await asyncio.gather(*(cas_increment(db, "counters/c", 40) for _ in range(5)))
    finally:
        await asyncio.gather(*others)
    item = await db.get("counters/c")
    assert item.value == {"n": 600}
    assert await db.revision() == item.revision == 601


# --------------------------------------------------------------------------- several instances, one storage

BURST = """
import asyncio, json, sys
from gatehouse.backend import Op, open_backend

async def main(config, count):
    db = await open_backend(json.loads(config), "/nonexistent")
    try:
        for i in range(int(count)):
            key = f"w/proc/{i % 3}"
            if i % 4 == 3:
                await db.atomic([Op("delete", key), Op("put", f"w/proc/x{i}", {"i": i}), Op("put", key, {"i": i})])
            else:
                await db.put(key, {"i": i})
    finally:
        await db.close()

asyncio.run(main(*sys.argv[1:]))
"""


async def write_burst(db, name: str, count: int) -> None:
    """Puts, and atomic delete+put+put, on keys of its own (so writers never conflict)."""
    for i in range(count):
        key = f"w/{name}/{i % 4}"
        if i % 5 == 4:
            await db.atomic([Op("delete", key), Op("put", f"w/{name}/x{i}", {"i": i}), Op("put", key, {"i": i})])
        else:
            await db.put(key, {"i": i})


async def collect_until(watcher, revision: int, timeout: float = 30) -> list:
    events = []
    while not events or events[-1].revision < revision:
        events.append(await next_event(watcher, timeout))
    return events


async def test_feed_gap_free_and_ordered_with_concurrent_writers(backend):
    a = await backend.open()
    b = await backend.open()
    reader = await backend.open()
    watchers = [inst.watch([]) for inst in (a, b, reader)]
    start = await reader.revision()
    await asyncio.gather(run_python(BURST, backend.config_json, "40"),
                         *(write_burst(a, f"a{i}", 30) for i in range(3)),
                         *(write_burst(b, f"b{i}", 30) for i in range(3)))
    final = await reader.revision()
    assert final > start + 6 * 30 + 40
    feeds = [await collect_until(w, final) for w in watchers]
    for events in feeds:
        # every revision exactly once, in order, whoever wrote it
        assert [e.revision for e in events] == list(range(start + 1, final + 1))
        assert [(e.type, e.key, e.item) for e in events] == [(e.type, e.key, e.item) for e in feeds[0]]
    # replaying the feed gives exactly what is stored
    state = {}
    for event in feeds[0]:
        if event.type == "put":
            assert event.item.revision == event.revision
            state[event.key] = event.item
        else:
            del state[event.key]
    assert state == {item.key: item for item in await reader.get_range("")}


async def test_wait_for_change_wakes_across_instances(backend):
    a = await backend.open()
    b = await backend.open()
    await b.put("other/x", {})
    since = await a.revision()
    watcher = a.watch(["roles/"])
    waiter = asyncio.ensure_future(a.wait_for_change(since, 60, ["roles/"]))
    await asyncio.sleep(0.1)
    await b.put("users/y", {})          # not under the prefix
    await asyncio.sleep(0.3)
    assert not waiter.done()
    written = await b.put("roles/r", {"v": 1})
    assert await asyncio.wait_for(waiter, 10) == written.revision
    event = await next_event(watcher, 10)
    assert (event.type, event.key, event.revision, event.item.value) == ("put", "roles/r", written.revision, {"v": 1})


async def test_expiry_is_the_same_for_every_instance(backend):
    a = await backend.open(reap_interval=0.2)
    b = await backend.open(reap_interval=0.2)
    watcher = b.watch(["tokens/"])
    item = await a.put("tokens/t", {"role": "node"}, expires=time.time() + 0.5)
    assert (await b.get("tokens/t")).revision == item.revision
    assert (await next_event(watcher, 10)).revision == item.revision
    event = await next_event(watcher, 10)    # both instances reap; one delete is announced
    assert (event.type, event.key, event.item) == ("delete", "tokens/t", None)
    for inst in (a, b):
        with pytest.raises(NotFound):
            await inst.get("tokens/t")
    assert backend.stored_keys() == []
    marker = await a.put("tokens/marker", {})
    assert (await next_event(watcher, 10)).revision == marker.revision   # no second delete


async def test_cas_and_create_races_between_instances_have_one_winner(backend):
    a = await backend.open()
    b = await backend.open()
    current = await a.create("locks/l", {"owner": None})
    for round_ in range(10):
        results = await asyncio.gather(
            a.compare_and_swap("locks/l", current.revision, {"owner": "a", "round": round_}),
            b.compare_and_swap("locks/l", current.revision, {"owner": "b", "round": round_}),
            return_exceptions=True)
        winners = [r for r in results if not isinstance(r, BaseException)]
        assert len(winners) == 1 and sum(isinstance(r, CompareFailed) for r in results) == 1, results
        current = winners[0]
        assert await a.get("locks/l") == await b.get("locks/l") == current
        created = await asyncio.gather(a.create(f"once/{round_}", {"by": "a"}),
                                       b.create(f"once/{round_}", {"by": "b"}), return_exceptions=True)
        assert sum(isinstance(r, AlreadyExists) for r in created) == 1, created


async def test_cas_increments_across_instances_are_exact(backend):
    a = await backend.open()
    b = await backend.open()
    await a.create("counters/c", {"n": 0})
    retries = await asyncio.gather(*(cas_increment(inst, "counters/c", 20) for inst in (a, b) for _ in range(4)))
    item = await b.get("counters/c")
    assert item.value == {"n": 160}
    assert await a.revision() == item.revision == 161
    assert sum(retries) > 0


# --------------------------------------------------------------------------- PostgreSQL only



def pg_error(err: BaseException) -> str:
    """The message, after checking it is one line without the password."""
    message = str(err)
    assert "\n" not in message and PG_PASSWORD not in message, message
    return message


def test_redact_masks_passwords():
    redact = postgres_mod.redact
    assert redact("host=db password=s3cret user=gh") == "host=db password=*** user=gh"
    assert redact("host=db PASSWORD = 's3 cr\\'et' user=gh") == "host=db PASSWORD = *** user=gh"
    assert redact("postgresql://gh:p%40ss@db:5432/gh") == "postgresql://gh:***@db:5432/gh"
    assert redact("postgres://gh:pa@ss@db/gh?sslmode=require") == "postgres://gh:***@db/gh?sslmode=require"
    assert redact("postgresql://gh@db/gh?password=zz&sslmode=require") == "postgresql://gh@db/gh?password=***"
    assert redact("postgresql://db/gh") == "postgresql://db/gh"
    assert redact("auth failed for p4ss-w0rd today", "host=db password=p4ss-w0rd") == "auth failed for *** today"
    assert redact("no secrets here", "host=db") == "no secrets here"


@pytest.mark.parametrize("conn_string, fragment", [
    ("host=db password = my secret", "missing"),                 # stray spaces: libpq quotes "secret"
    ("host=db pasword=hunter2", 'invalid connection option "pasword"'),
    ("postgresql://gh:hunter2@db/gh?sslmode", 'URI query parameter: "sslmode"'),
])
async def test_bad_conn_strings_are_refused_without_secrets(conn_string, fragment):
    with pytest.raises(BadParameter) as info:
        await open_backend({"type": "postgresql", "conn_string": conn_string}, "/nonexistent")
    message = str(info.value)
    assert message.startswith("storage.conn_string is not a valid PostgreSQL connection string")
    assert fragment in message and "secret" not in message and "hunter2" not in message, message


async def test_postgres_config_is_checked():
    with pytest.raises(BadParameter) as info:
        await open_backend({"type": "postgresql"}, "/nonexistent")
    assert str(info.value).startswith("storage.conn_string is missing or not a string;")
    with pytest.raises(BadParameter, match="missing or not a string"):
        await open_backend({"type": "postgresql", "conn_string": 42}, "/nonexistent")
    with pytest.raises(BadParameter) as info:
        await open_backend({"type": "postgresql", "conn_string": "host=db", "pool_size": 3}, "/nonexistent")
    assert str(info.value) == ("unknown storage setting 'pool_size'; postgresql storage takes only "
                               "'type' and 'conn_string'")


async def test_open_backend_postgresql(pg_server, pg_database):
    config = {"type": "postgresql", "conn_string": pg_server.conn_string(pg_database)}
    first = await open_backend(config, "/nonexistent")
    try:
        assert isinstance(first, postgres_mod.PostgresBackend)
        await first.put("a/b", {"v": 1})
    finally:
        await first.close()
    second = await open_backend(config, "/nonexistent")
    try:
        assert (await second.get("a/b")).value == {"v": 1}
    finally:
        await second.close()
    assert pg_server.query(pg_database, "SELECT version FROM gatehouse_schema_version") == [(1,)]


async def test_unreachable_database_names_host_not_password(pg_server):
    port = free_port()
    for conn_string in (f"host=127.0.0.1 port={port} dbname=gh user=gh password={PG_PASSWORD}",
                        f"postgresql://gh:{PG_PASSWORD}@127.0.0.1:{port}/gh"):
        with pytest.raises(postgres_mod.ConnectionProblem) as info:
            await open_backend({"type": "postgresql", "conn_string": conn_string}, "/nonexistent")
        message = pg_error(info.value)
        assert message.startswith(f'cannot reach the PostgreSQL database "gh" at 127.0.0.1:{port} (')
        assert "check that the server runs" in message and "storage.conn_string" in message


async def test_wrong_password_is_reported_without_it(pg_server, pg_database):
    conn_string = pg_server.conn_string(pg_database).replace(PG_PASSWORD, "Wrong-Secret-99")
    with pytest.raises(postgres_mod.ConnectionProblem) as info:
        await postgres_mod.PostgresBackend.open(conn_string)
    message = pg_error(info.value)
    assert "password authentication failed" in message and "Wrong-Secret-99" not in message


async def test_tls_verify_full(pg_server, pg_database, tmp_path):
    ca = os.path.join(pg_server.tls, "ca.pem")
    conn_string = pg_server.conn_string(pg_database, host="localhost", sslmode="verify-full", sslrootcert=ca)
    db = await postgres_mod.PostgresBackend.open(conn_string)
    try:
        await db.put("a/b", {"tls": True})
        rows = pg_server.query("postgres", "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a"
                               " ON a.pid = s.pid WHERE a.datname = %s AND a.application_name = 'gatehouse'",
                               (pg_database,))
        assert rows and all(ssl for (ssl,) in rows)
    finally:
        await db.close()
    # a CA that did not sign the server's certificate: refused, and said why
    other = tmp_path / "other-ca.pem"
    other.write_bytes(open(os.path.join(pg_server.tls, "server.crt"), "rb").read())
    with pytest.raises(postgres_mod.ConnectionProblem) as info:
        await postgres_mod.PostgresBackend.open(conn_string.replace(ca, str(other)))
    assert "certificate verify failed" in pg_error(info.value)


async def test_multi_host_conn_strings(pg_server, pg_database):
    dead = free_port()
    live = pg_server.port
    keyword = (f"host=127.0.0.1,127.0.0.1 port={dead},{live} dbname={pg_database} user=gatehouse "
               f"password={PG_PASSWORD} sslmode=disable target_session_attrs=read-write")
    uri = (f"postgresql://gatehouse:{PG_PASSWORD}@127.0.0.1:{dead},127.0.0.1:{live}/{pg_database}"
           f"?target_session_attrs=read-write&sslmode=disable")
    for conn_string in (keyword, uri):
        db = await postgres_mod.PostgresBackend.open(conn_string)
        try:
            assert repr(db) == (f"PostgresBackend('database \"{pg_database}\" at 127.0.0.1:{dead}, "
                                f"127.0.0.1:{live}')")
            await db.put("a/b", {"via": conn_string[:9]})
            assert (await db.get("a/b")).value == {"via": conn_string[:9]}
        finally:
            await db.close()
    # and over the Unix socket in the server's directory
    db = await postgres_mod.PostgresBackend.open(pg_server.admin_conn_string(pg_database))
    try:
        assert (await db.get("a/b")).value == {"via": uri[:9]}
    finally:
        await db.close()


async def test_newer_schema_is_refused(pg_server, pg_database):
    conn_string = pg_server.conn_string(pg_database)
    db = await postgres_mod.PostgresBackend.open(conn_string)
    await db.put("a/b", {})
    await db.close()
    pg_server.query(pg_database, "UPDATE gatehouse_schema_version SET version = 99")
    with pytest.raises(GatehouseError) as info:
        await postgres_mod.PostgresBackend.open(conn_string)
    assert pg_error(info.value) == (
        f'the PostgreSQL database "{pg_database}" at 127.0.0.1:{pg_server.port} holds Gatehouse storage '
        f'schema version 99, newer than version 1 this agent knows; upgrade Gatehouse on this host to '
        f'the release that wrote it')
    assert pg_server.query(pg_database, "SELECT key FROM gatehouse_items") == [("a/b",)]


async def test_older_schema_is_migrated(pg_server, pg_database, monkeypatch):
    conn_string = pg_server.conn_string(pg_database)
    db = await postgres_mod.PostgresBackend.open(conn_string)
    await db.put("a/b", {"kept": True})
    await db.close()
    newer = postgres_mod.MIGRATIONS + [("CREATE TABLE gatehouse_test_extra (x integer)",
                                        "INSERT INTO gatehouse_test_extra VALUES (42)")]
    monkeypatch.setattr(postgres_mod, "MIGRATIONS", newer)
    db = await postgres_mod.PostgresBackend.open(conn_string)
    try:
        assert (await db.get("a/b")).value == {"kept": True}
        assert (await db.put("a/c", {})).revision == 2
    finally:
        await db.close()
    assert pg_server.query(pg_database, "SELECT version FROM gatehouse_schema_version") == [(2,)]
    assert pg_server.query(pg_database, "SELECT x FROM gatehouse_test_extra") == [(42,)]
    monkeypatch.undo()   # the older code now refuses the upgraded database
    with pytest.raises(GatehouseError, match="schema version 2, newer than version 1"):
        await postgres_mod.PostgresBackend.open(conn_string)


async def test_concurrent_first_opens_create_the_schema_once(pg_server, pg_database):
    conn_string = pg_server.conn_string(pg_database)
    instances = await asyncio.gather(*(postgres_mod.PostgresBackend.open(conn_string) for _ in range(4)))
    try:
        written = await asyncio.gather(*(inst.put(f"k/{i}", {}) for i, inst in enumerate(instances)))
        assert sorted(item.revision for item in written) == [1, 2, 3, 4]
    finally:
        for inst in instances:
            await inst.close()
    assert pg_server.query(pg_database, "SELECT version FROM gatehouse_schema_version") == [(1,)]


async def waiting(db, timeout: float = 10) -> None:
    """Until a wait_for_change() call has checked the database and waits on the feed."""
    deadline = time.monotonic() + timeout
    while not db._feed._waiters:
        assert time.monotonic() < deadline, "wait_for_change() did not start waiting"
        await asyncio.sleep(0.02)


async def test_recovers_after_the_server_restarts(pg_server, pg_database, caplog):
    caplog.set_level(logging.DEBUG)
    conn_string = pg_server.conn_string(pg_database)
    db = await postgres_mod.PostgresBackend.open(conn_string, reconnect_max=0.5)
    try:
        watcher = db.watch(["r/"])
        first = await db.put("r/1", {})
        assert (await next_event(watcher)).revision == first.revision
        waiter = asyncio.ensure_future(db.wait_for_change(first.revision, 60, ["r/"]))
        await waiting(db)
        await asyncio.to_thread(pg_server.stop)
        try:
            for call in (db.get("r/1"), db.put("r/2", {}), db.get_range("r/"), db.revision()):
                with pytest.raises(postgres_mod.ConnectionProblem) as info:
                    await call
                assert f"at 127.0.0.1:{pg_server.port}" in pg_error(info.value)
            assert not waiter.done()
        finally:
            await asyncio.to_thread(pg_server.start)
        # back by itself: the first call after the restart works
        second = await db.put("r/2", {})
        other = await postgres_mod.PostgresBackend.open(conn_string)
        try:
            third = await other.put("r/3", {})
        finally:
            await other.close()
        events = [await next_event(watcher, 10) for _ in range(2)]
        assert [(e.key, e.revision) for e in events] == [("r/2", second.revision), ("r/3", third.revision)]
        assert await asyncio.wait_for(waiter, 10) >= second.revision
    finally:
        await db.close()
    assert "lost the connection to the PostgreSQL" in caplog.text
    assert all(PG_PASSWORD not in record.getMessage() for record in caplog.records)


async def test_gap_reported_when_history_was_pruned_during_an_outage(pg_server, pg_database):
    conn_string = pg_server.conn_string(pg_database)
    db = await postgres_mod.PostgresBackend.open(conn_string, reconnect_max=0.5)
    try:
        await db.put("x/0", {})
        watcher = db.watch(["roles/"])
        waiter = asyncio.ensure_future(db.wait_for_change(1, 60, ["roles/"]))
        await waiting(db)
        await asyncio.to_thread(pg_server.stop)
        await asyncio.to_thread(pg_server.start)
        other = await postgres_mod.PostgresBackend.open(conn_string, history=3)
        try:
            # ten writes, of which the history keeps three, in one commit: whenever the
            # first instance catches up, seven of them are gone
            await other.atomic([Op("put", f"other/{i}", {}) for i in range(10)])
        finally:
            await other.close()
        with pytest.raises(GatehouseError, match="changes were missed"):
            await next_event(watcher, 10)
        assert await asyncio.wait_for(waiter, 10) == 11
        fresh = db.watch(["roles/"])
        await db.put("roles/r", {})
        assert (await next_event(fresh, 10)).revision == 12
    finally:
        await db.close()


async def test_stored_layout(pg_server, pg_database):
    db = await postgres_mod.PostgresBackend.open(pg_server.conn_string(pg_database), history=2)
    try:
        await db.put("a/1", {"v": 1}, expires=time.time() + 3600)
        await db.atomic([Op("put", "a/2", {}), Op("delete", "a/1"), Op("put", "a/3", {})])
    finally:
        await db.close()
    assert pg_server.query(pg_database, "SELECT key, revision FROM gatehouse_items ORDER BY key") == [
        ("a/2", 2), ("a/3", 4)]
    assert pg_server.query(pg_database, "SELECT revision FROM gatehouse_revision") == [(4,)]
    # events are pruned to the history, and written with their items
    assert pg_server.query(pg_database, "SELECT revision, type, key FROM gatehouse_events ORDER BY 1") == [
        (3, "delete", "a/1"), (4, "put", "a/3")]


# --------------------------------------------------------------------------- audit events (backend/audit.py)
# The audit table on both backends: conditional appends that keep a chain linear, uids that
# make resent events duplicates, indexed newest-first searches with cursors, pruning.

def _audit_entries(n, start=0, user="alice", event="session.start", sid="", t0=1_800_000_000.0):
    from gatehouse.clock import now_iso
    return [{"event": event, "uid": f"uid-{start + i:06d}", "time": now_iso(t0 + start + i),
             "cluster_name": "c1", "success": True, "user": user, **({"sid": sid} if sid else {})}
            for i in range(n)]


async def test_audit_append_links_and_reads_back(db):
    from gatehouse import auditchain
    assert await db.audit_head("c1") == auditchain.Head()
    records = auditchain.link("c1", auditchain.Head(), _audit_entries(3))
    await db.audit_append("c1", 0, records)
    head = await db.audit_head("c1")
    assert head == auditchain.Head(3, records[-1].hash)
    assert await db.audit_range("c1", 0, 10) == records
    assert await db.audit_range("c1", 1, 1) == records[1:2]
    assert (await db.audit_bounds("c1")).first == 1 and (await db.audit_bounds("c1")).last == 3
    assert await db.audit_streams() == ["c1"]
    state = auditchain.walk(auditchain.Walk("c1", 1, ""), await db.audit_range("c1", 0, 10))
    assert not state.problem and state.checked == 3


async def test_audit_append_is_conditional(db, backend):
    from gatehouse import auditchain
    first = auditchain.link("c1", auditchain.Head(), _audit_entries(2))
    await db.audit_append("c1", 0, first)
    # a second writer that read the head before the first wrote: refused, nothing stored
    late = auditchain.link("c1", auditchain.Head(), _audit_entries(2, start=10))
    with pytest.raises(CompareFailed, match="moved on"):
        await db.audit_append("c1", 0, late)
    # another instance (another auth server) sees the same head and continues the same chain
    other = await backend.open()
    head = await other.audit_head("c1")
    more = auditchain.link("c1", head, _audit_entries(2, start=10))
    await other.audit_append("c1", head.seq, more)
    # a resent event (same uid) is refused as a whole batch
    again = auditchain.link("c1", await db.audit_head("c1"), _audit_entries(1, start=0))
    with pytest.raises(AlreadyExists, match="already holds"):
        await db.audit_append("c1", 4, again)
    assert await db.audit_known_uids("c1", ["uid-000000", "uid-000011", "nope"]) == {"uid-000000", "uid-000011"}
    assert [r.seq for r in await db.audit_range("c1", 0, 100)] == [1, 2, 3, 4]
    with pytest.raises(BadParameter, match="does not continue"):
        await db.audit_append("c1", 4, first)


async def test_audit_concurrent_appenders_keep_one_chain(backend):
    """Two instances append to one stream at once: every event lands once, the chain stays linear."""
    from gatehouse import auditchain
    dbs = [await backend.open(), await backend.open()]

    async def writer(db, base):
        for i in range(10):
            batch = _audit_entries(3, start=base + 3 * i)
            while True:
                head = await db.audit_head("c1")
                try:
                    await db.audit_append("c1", head.seq, auditchain.link("c1", head, batch))
                    break
                except CompareFailed:
                    await asyncio.sleep(0)
    await asyncio.gather(writer(dbs[0], 0), writer(dbs[1], 1000))
    records = await dbs[0].audit_range("c1", 0, 1000)
    assert [r.seq for r in records] == list(range(1, 61))
    assert len({r.uid for r in records}) == 60
    assert not auditchain.walk(auditchain.Walk("c1", 1, ""), records).problem


async def test_audit_search_filters_order_and_cursor(db):
    from gatehouse import auditchain
    from gatehouse.auditquery import parse_query
    t0 = 1_800_000_000.0
    entries = (_audit_entries(5, 0, user="alice", event="session.start", sid="3f2c9a7e-1b2d-4c3e-8f4a-5b6c7d8e9f00")
               + _audit_entries(5, 5, user="bob", event="session.end")
               + _audit_entries(5, 10, user="alice", event="user.login"))
    await db.audit_append("c1", 0, auditchain.link("c1", auditchain.Head(), entries))
    await db.audit_append("leaf", 0, auditchain.link("leaf", auditchain.Head(),
                                                               _audit_entries(3, 100, user="alice", event="tunnel.connect")))

    async def search(**params):
        return [(r.stream, r.seq) for r in await db.audit_search(parse_query(params, now=t0 + 1000))]
    everything = await search(limit="100")
    assert everything[:3] == [("leaf", 3), ("leaf", 2), ("leaf", 1)] and len(everything) == 18  # newest first
    assert await search(user="bob") == [("c1", 10), ("c1", 9), ("c1", 8), ("c1", 7), ("c1", 6)]
    assert await search(event="session.*", user="alice") == [("c1", 5), ("c1", 4), ("c1", 3), ("c1", 2), ("c1", 1)]
    assert await search(cluster="leaf", user="alice") == [("leaf", 3), ("leaf", 2), ("leaf", 1)]
    assert await search(session="3f2c9a7e-1b2d-4c3e-8f4a-5b6c7d8e9f00", limit="2") == [("c1", 5), ("c1", 4)]
    assert await search(since=str(t0 + 12), until=str(t0 + 13.5)) == [("c1", 14), ("c1", 13)]
    # paging: each page continues after the last event of the one before, nothing twice, nothing missed
    pages, cursor = [], None
    while True:
        params = {"limit": "4", **({"cursor": cursor} if cursor else {})}
        page = await db.audit_search(parse_query(params))
        pages += [(r.stream, r.seq) for r in page]
        if len(page) < 4:
            break
        from gatehouse.auditquery import encode_cursor
        cursor = encode_cursor((page[-1].ts, page[-1].stream, page[-1].seq))
    assert pages == everything


async def test_audit_prune_and_time_bounds(db):
    from gatehouse import auditchain
    await db.audit_append("c1", 0, auditchain.link("c1", auditchain.Head(), _audit_entries(10)))
    assert await db.audit_last_before("c1", 1_800_000_004.5) == 5
    assert await db.audit_prune("c1", 5) == 5
    assert await db.audit_bounds("c1") == (await db.audit_bounds("c1")).__class__(6, 10)
    assert [r.seq for r in await db.audit_range("c1", 0, 100)] == [6, 7, 8, 9, 10]
    # the chain continues after a prune; the head is unchanged
    head = await db.audit_head("c1")
    assert head.seq == 10
    await db.audit_append("c1", 10, auditchain.link("c1", head, _audit_entries(1, 50)))
    assert (await db.audit_head("c1")).seq == 11
