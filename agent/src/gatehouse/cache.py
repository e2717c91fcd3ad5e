"""A live copy of what nodes and proxies need from auth, kept by long-polling.

Access decisions read this cache, so they cost no network round-trip, and a change
at the auth server (a role edit, trust disabled) reaches every member within a
second: `/v1/snapshot?since=REV` returns as soon as something changes.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Awaitable, Callable, Optional

from .client import AsyncAPIClient
from .errors import GatehouseError

log = logging.getLogger("gatehouse.cache")

POLL_TIMEOUT = 25.0


class ClusterCache:
    def __init__(self, client: AsyncAPIClient):
        self.client = client
        self.snapshot: dict = {}
        self.revision = 0
        self._ready = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._listeners: list[Callable[[dict], Optional[Awaitable[None]]]] = []
        self._user_cas: dict[str, dict] = {}
        self._host_cas: dict[str, dict] = {}

    def on_change(self, callback) -> None:
        self._listeners.append(callback)

    async def start(self) -> None:
        await self._fetch(0, 0)
        self._task = asyncio.create_task(self._loop(), name="cluster-cache")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _loop(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._fetch(self.revision, POLL_TIMEOUT)
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except GatehouseError as exc:
                log.warning("cannot refresh the cluster cache: %s", exc)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 10.0)

    async def _fetch(self, since: int, timeout: float) -> None:
        snap = await self.client.call("GET", "/v1/snapshot", params={"since": str(since), "timeout": str(timeout)},
                                      timeout=timeout + 10)
        if snap["revision"] == self.revision and self._ready.is_set():
            return
        self.snapshot, self.revision = snap, snap["revision"]
        self._user_cas = {_key_only(c["public"]): c for c in snap["cas"] if c["type"] == "user" and c["active"]}
        self._host_cas = {_key_only(c["public"]): c for c in snap["cas"] if c["type"] == "host" and c["active"]}
        self._ready.set()
        log.debug("cluster cache at revision %d", self.revision)
        for callback in self._listeners:
            result = callback(snap)
            if asyncio.iscoroutine(result):
                await result

    # -- lookups -------------------------------------------------------------
    @property
    def cluster_name(self) -> str:
        return self.snapshot.get("cluster_name", "")

    def user_ca(self, public_line: str) -> dict | None:
        return self._user_cas.get(_key_only(public_line))

    def host_ca(self, public_line: str) -> dict | None:
        return self._host_cas.get(_key_only(public_line))

    def roles(self) -> dict[str, dict]:
        return {r["metadata"]["name"]: r for r in self.snapshot.get("roles", [])}

    def nodes(self) -> list[dict]:
        return self.snapshot.get("nodes", [])

    def trusted_cluster(self, name: str) -> dict | None:
        for tc in self.snapshot.get("trusted_clusters", []):
            if tc["metadata"]["name"] == name:
                return tc
        return None


def _key_only(line: str) -> str:
    """'type base64 comment' -> 'type base64' so comments never affect CA matching."""
    return " ".join(line.split()[:2])
