"""A live copy of what nodes and proxies need from auth, kept by long-polling.

Access decisions read this cache, so they cost no network round-trip, and a change
at the auth server (a role edit, trust disabled) reaches every member within a
second: `/v1/snapshot?since=REV` returns as soon as something changes.

Callers read the snapshot through the accessors below, never its raw dicts, so the
snapshot's shape can change (deltas, per-member filtering) without touching them.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Awaitable, Callable, Optional

from ..client import AsyncAPIClient
from ..errors import GatehouseError

log = logging.getLogger("gatehouse.cache")

POLL_TIMEOUT = 25.0


class ClusterCache:
    def __init__(self, client: AsyncAPIClient):
        self.client = client
        self.revision = 0
        self._snapshot: dict = {}
        self._ready = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._listeners: list[Callable[[], Optional[Awaitable[None]]]] = []
        self._user_cas: dict[str, dict] = {}
        self._host_cas: dict[str, dict] = {}
        self._nodes: dict[str, dict] = {}
        self._remote_clusters: dict[str, dict] = {}
        self._trusted_clusters: dict[str, dict] = {}
        self._roles: dict[str, dict] = {}
        self._revoked: dict[str, set[str]] = {}

    def on_change(self, callback: Callable[[], Optional[Awaitable[None]]]) -> None:
        """Call ``callback()`` (a function or coroutine function) after every new revision."""
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
        self._apply(snap)
        log.debug("cluster cache at revision %d", self.revision)
        for callback in self._listeners:
            result = callback()
            if asyncio.iscoroutine(result):
                await result

    def _apply(self, snap: dict) -> None:
        # One record that does not parse is skipped (and logged), never the whole snapshot.
        self._user_cas, self._host_cas = {}, {}
        for ca in _records(snap, "cas"):
            try:
                if ca["active"] and ca["type"] in ("user", "host"):
                    (self._user_cas if ca["type"] == "user" else self._host_cas)[key_only(ca["public"])] = ca
            except (KeyError, TypeError, AttributeError):
                log.error("skipping a certificate authority of the snapshot that does not parse: %.200r", ca)
        self._nodes = _by_name(snap, "nodes")
        self._remote_clusters = _by_name(snap, "remote_clusters")
        self._trusted_clusters = _by_name(snap, "trusted_clusters")
        self._roles = _by_name(snap, "roles")
        self._revoked = {}
        for lock in _records(snap, "locks"):
            try:
                self._revoked.setdefault(lock["kind"], set()).update(lock["ssh_keys"])
            except (KeyError, TypeError):
                log.error("skipping a revocation of the snapshot that does not parse: %.200r", lock)
        self._snapshot, self.revision = snap, snap["revision"]
        self._ready.set()

    # -- this cluster ----------------------------------------------------------
    @property
    def cluster_name(self) -> str:
        return self._snapshot.get("cluster_name", "")

    def roles(self) -> dict[str, dict]:
        return dict(self._roles)

    def nodes(self) -> list[dict]:
        return list(self._nodes.values())

    def node(self, name: str) -> dict | None:
        return self._nodes.get(name)

    # -- revoked members (`gatectl rm node/NAME`, `gatectl rm proxy/NAME`) ---------
    def revoked_keys(self, kind: str) -> list[str]:
        """SSH key fingerprints of this cluster's revoked members of KIND (node or proxy)."""
        return sorted(self._revoked.get(kind, ()))

    # -- certificate authorities ------------------------------------------------
    def user_ca(self, public_line: str) -> dict | None:
        """The active user CA with this public key (this cluster's or a trusted root's)."""
        return self._user_cas.get(key_only(public_line))

    def host_ca(self, public_line: str) -> dict | None:
        """The active host CA with this public key (this cluster's or a leaf's)."""
        return self._host_cas.get(key_only(public_line))

    # -- leaf side: the roots this cluster trusts ---------------------------------
    def active_root_user_ca(self, root: str) -> dict | None:
        """Root ROOT's user CA as this leaf holds it (with the role map), while trust is enabled."""
        return next((c for c in self._user_cas.values() if c["cluster_name"] == root and not c.get("local")), None)

    def trusted_roots(self) -> list[dict]:
        """The trusted_cluster records of the roots whose trust is enabled and whose CAs are active."""
        active = {c["cluster_name"] for c in self._user_cas.values() if not c.get("local")}
        return [tc for name, tc in self._trusted_clusters.items()
                if isinstance(tc.get("spec"), dict) and tc["spec"].get("enabled") and name in active]

    # -- root side: the leaves that trust this cluster -----------------------------
    def remote_cluster(self, name: str) -> dict | None:
        return self._remote_clusters.get(name)

    def leaf_of_host_ca(self, public_line: str) -> str:
        """The registered leaf whose active host CA this is, or ""."""
        ca = self.host_ca(public_line)
        if ca is None or ca.get("local") or ca["cluster_name"] not in self._remote_clusters:
            return ""
        return ca["cluster_name"]

    def leaf_is_trusted(self, leaf: str) -> bool:
        """Whether leaf LEAF still has an active host CA here (it is gone after 'gatectl rm rc/LEAF')."""
        return any(c["cluster_name"] == leaf for c in self._host_cas.values())

    def cluster_names(self) -> list[str]:
        """This cluster and every cluster it trusts or is trusted by: the suffixes `node.CLUSTER` may use."""
        return [self.cluster_name, *self._remote_clusters, *self._trusted_clusters]


def _records(snap: dict, field: str) -> list:
    value = snap.get(field)
    return [r for r in value if isinstance(r, dict)] if isinstance(value, list) else []


def _by_name(snap: dict, field: str) -> dict[str, dict]:
    """Records of one snapshot field by metadata.name; one that has no name is skipped and logged."""
    out = {}
    for record in _records(snap, field):
        name = (record.get("metadata") or {}).get("name") if isinstance(record.get("metadata"), dict) else None
        if isinstance(name, str) and name:
            out[name] = record
        else:
            log.error("skipping a record of the snapshot's %s that has no name: %.200r", field, record)
    return out


def key_only(line: str) -> str:
    """'type base64 comment' -> 'type base64' so comments never affect CA matching."""
    return " ".join(line.split()[:2])
