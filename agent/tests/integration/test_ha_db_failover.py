"""Database failover under a running backend (issue 15 item 4), with real PostgreSQL servers.

A primary with a synchronous streaming standby; the backend connects through a multi-host
connection string with target_session_attrs=read-write. Writers run, the primary is killed
(SIGKILL), the standby is promoted: every write the backend acknowledged is on the new
primary, the writes in flight fail with a clear error, and the same backend object writes
again by itself, its revisions going on above what it had seen.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gatehouse.backend import postgres as postgres_mod
from gatehouse.errors import GatehouseError

from .pgserver import PASSWORD, PgServer


@pytest.fixture
def replicated():
    PgServer.remove_stale()
    primary = PgServer()
    standby = None
    try:
        primary.init(replication=True)
        primary.start()
        standby = primary.standby(synchronous=True)
        yield primary, standby
    finally:
        for server in (standby, primary):
            if server is not None:
                server.destroy(mode="immediate")


async def test_promoted_standby_has_every_acknowledged_write(replicated):
    primary, standby = replicated
    db = await postgres_mod.PostgresBackend.open(primary.failover_conn_string(standby))
    acked: dict[str, int] = {}
    errors: list[str] = []
    stop = asyncio.Event()

    async def writer(wid: int):
        n = 0
        while not stop.is_set():
            key = f"storm/{wid}/{n}"
            try:
                item = await db.put(key, {"n": n, "pad": "x" * (n % 40)})
                acked[key] = item.revision
            except GatehouseError as exc:
                errors.append(str(exc))
                await asyncio.sleep(0.05)
            n += 1
    try:
        tasks = [asyncio.create_task(writer(w)) for w in range(4)]
        deadline = time.monotonic() + 60
        while len(acked) < 200:
            assert time.monotonic() < deadline, "the writers did not get going"
            await asyncio.sleep(0.05)
        seen = max(acked.values())
        await asyncio.to_thread(primary.kill)
        await asyncio.to_thread(standby.promote)
        # The backend finds the new primary by itself: writes are acknowledged again.
        count = len(acked)
        deadline = time.monotonic() + 60
        while len(acked) < count + 50:
            assert time.monotonic() < deadline, "no write was acknowledged after the standby was promoted"
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*tasks)
        assert max(acked.values()) > seen
        # Writes in flight at the kill failed with one sentence naming the database, never the password.
        for message in set(errors):
            assert "PostgreSQL database" in message and "\n" not in message and PASSWORD not in message, message
        rows = dict(standby.query("postgres", "SELECT key, revision FROM gatehouse_items WHERE key LIKE %s",
                                   ("storm/%",)))
        lost = [key for key in acked if key not in rows]
        assert not lost, f"{len(lost)} acknowledged writes lost: {lost[:5]}"
        assert all(rows[key] >= acked[key] for key in acked)
    finally:
        stop.set()
        await db.close()
