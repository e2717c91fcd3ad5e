"""Root side: which leaves hold a tunnel to this proxy, kept in memory and reported to auth coarsely.

Heartbeats never reach auth one by one: a beat only stamps the leaf's entry here. Auth
hears about a leaf when it connects or disconnects (batched, at most every
`wire.PRESENCE_FLUSH_DELAY` seconds) and in a summary of every entry each
`proxy_service.presence_interval` seconds, as `wire.PRESENCE_SHARDS` records per
proxy (one per shard of leaf names, `wire.presence_shard`). So the backend sees a
constant number of writes per proxy at idle, whatever the number of leaves and their
heartbeat rate, and a state change reaches `remote_cluster.status` within about a second.
Auth's side (how a leaf's status is computed from these records, and for how long a
dead proxy's records still count) is `auth/presence.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .. import listeners
from ..errors import GatehouseError
from ..waits import wait_event
from ..wire import PRESENCE_FLUSH_DELAY, presence_shard

log = logging.getLogger("gatehouse.tunnel.presence")

#: The largest request body a presence report may have (auth accepts 1 MiB); bigger reports go in parts.
MAX_REPORT_BYTES = 512 * 1024
PRESENCE_PATH = "/v1/tunnels/presence"


class _Entry:
    __slots__ = ("last", "tunnels", "interval", "mode")

    def __init__(self, interval: float, mode: str):
        self.last = time.time()
        self.tunnels = 0
        self.interval = interval
        self.mode = mode

    def row(self) -> list:
        return [round(self.last, 1), 1 if self.tunnels else 0, self.interval, self.mode]


class PresenceReporter:
    """This proxy's tunnels by leaf: stamped on every beat, reported on change and every INTERVAL seconds."""

    def __init__(self, client, interval: float):
        self.client = client
        self.interval = interval
        self.entries: dict[str, _Entry] = {}
        self._dirty: set[int] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._failing = False
        #: Reports sent and shards written, for the fleet benchmark.
        self.reports = 0
        self.shards_written = 0

    # -- what the tunnel server tells it (cheap: called on every beat) ---------------
    def connected(self, leaf: str, interval: float, mode: str) -> None:
        entry = self.entries.get(leaf)
        if entry is None:
            entry = self.entries[leaf] = _Entry(interval, mode)
        entry.last = time.time()
        if entry.tunnels == 0 or (entry.interval, entry.mode) != (interval, mode):
            self._changed(leaf)
        entry.tunnels += 1
        entry.interval, entry.mode = interval, mode

    def announced(self, leaf: str, interval: float, mode: str) -> None:
        """A tunnel's end said (again) which interval and mode it beats with."""
        entry = self.entries.get(leaf)
        if entry is not None and (entry.interval, entry.mode) != (interval, mode):
            entry.interval, entry.mode = interval, mode
            self._changed(leaf)

    def beat(self, leaf: str) -> None:
        entry = self.entries.get(leaf)
        if entry is not None:
            entry.last = time.time()

    def disconnected(self, leaf: str) -> None:
        entry = self.entries.get(leaf)
        if entry is None or entry.tunnels == 0:
            return
        entry.tunnels -= 1
        if entry.tunnels == 0:
            self._changed(leaf)

    def _changed(self, leaf: str) -> None:
        self._dirty.add(presence_shard(leaf))
        self._wake.set()

    # -- reporting ---------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tunnel-presence")

    async def stop(self) -> None:
        """Report every leaf as disconnected (this proxy is going away), then stop."""
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping anyway
                pass
        if listeners.draining():
            return  # a successor under this proxy's name reports these leaves now
        for entry in self.entries.values():
            entry.tunnels = 0
        if self.entries:
            try:
                await asyncio.wait_for(self._report(self._shards(all_shards=True)), 5)
            except (GatehouseError, asyncio.TimeoutError):
                pass

    async def _run(self) -> None:
        next_summary = time.monotonic() + self.interval
        while True:
            if await wait_event(self._wake, next_summary - time.monotonic()):
                await asyncio.sleep(PRESENCE_FLUSH_DELAY)  # connects and disconnects come in bursts
            self._wake.clear()
            summary = time.monotonic() >= next_summary
            if summary:
                next_summary = time.monotonic() + self.interval
            shards = self._shards(all_shards=summary)
            if not shards or listeners.draining():
                continue  # while draining, the successor (same proxy name) reports; this view is going stale
            try:
                await self._report(shards)
                if self._failing:
                    log.info("tunnel presence reported to auth again")
                self._failing = False
            except GatehouseError as exc:
                if not self._failing:
                    log.warning("cannot report tunnel presence to auth (%s); retrying", exc)
                self._failing = True
                self._dirty |= set(shards)
                await asyncio.sleep(PRESENCE_FLUSH_DELAY * 2)
                self._wake.set()

    def _shards(self, all_shards: bool) -> dict[int, dict]:
        """The rows of the dirty shards (of every shard with an entry, for the summary)."""
        wanted = set(self._dirty)
        self._dirty.clear()
        if all_shards:
            wanted |= {presence_shard(leaf) for leaf in self.entries}
        shards: dict[int, dict] = {shard: {} for shard in wanted}
        if not wanted:
            return shards
        for leaf, entry in self.entries.items():
            shard = presence_shard(leaf)
            if shard in shards:
                shards[shard][leaf] = entry.row()
        return shards

    async def _report(self, shards: dict[int, dict]) -> None:
        """Send the shards (in parts of at most MAX_REPORT_BYTES); forget leaves reported disconnected."""
        batch, size = [], 0
        for shard, rows in sorted(shards.items()):
            cost = 40 + sum(len(leaf) + 40 for leaf in rows)
            if batch and size + cost > MAX_REPORT_BYTES:
                await self._post(batch)
                batch, size = [], 0
            batch.append({"shard": shard, "leaves": rows})
            size += cost
        if batch:
            await self._post(batch)
        for rows in shards.values():
            for leaf, row in rows.items():
                entry = self.entries.get(leaf)
                if entry is not None and entry.tunnels == 0 and not row[1]:
                    del self.entries[leaf]  # auth keeps its last heartbeat from now on

    async def _post(self, batch: list) -> None:
        await self.client.call("POST", PRESENCE_PATH, {"summary_interval": self.interval, "shards": batch})
        self.reports += 1
        self.shards_written += len(batch)
