"""A live copy of what nodes and proxies need from auth, kept by long-polling.

Access decisions read this cache, so they cost no network round-trip, and a change
at the auth server (a role edit, trust disabled) reaches every member within a
second: `/v1/snapshot?since=REV` returns as soon as something changes.

Callers read the snapshot through the accessors below, never its raw dicts. After the
first sync auth sends deltas: only the records that changed (auth/snapshots.py), and
only those this member needs (a node gets no other cluster's host CA, no remote
cluster); `last_changes` says what the last update changed, for listeners that can
look at just that.
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


#: The sections of a snapshot, and how a record of each is identified (deltas name records by it).
SECTIONS = ("cas", "roles", "nodes", "remote_clusters", "trusted_clusters", "locks")


class ClusterCache:
    def __init__(self, client: AsyncAPIClient):
        self.client = client
        self.revision = 0
        self._cluster_name = ""
        self._ready = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._listeners: list[Callable[[], Optional[Awaitable[None]]]] = []
        #: Records by section and id, as the last full snapshot and the deltas since then left them.
        self._records: dict[str, dict[str, dict]] = {section: {} for section in SECTIONS}
        self._user_cas: dict[str, dict] = {}
        self._host_cas: dict[str, dict] = {}
        self._ca_keys: dict[str, tuple[str, str, dict]] = {}  # CA id -> (index it is in, its key, the record)
        self._host_ca_clusters: dict[str, int] = {}
        self._revoked: dict[str, set[str]] = {}
        #: What the last update changed: (section, id) pairs, or None after a full snapshot.
        self.last_changes: set[tuple[str, str]] | None = None
        #: Bytes of snapshot answers received (full and delta), for the fleet benchmark.
        self.full_snapshots = 0
        self.deltas = 0

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
        # Deltas after the first sync (auth answers with a full snapshot when it cannot give one).
        snap = await self.client.call("GET", "/v1/snapshot", params={"since": str(since), "timeout": str(timeout),
                                                                     "delta": "1"},
                                      timeout=timeout + 10)
        if snap.get("delta") is True and self._ready.is_set():
            changes = [c for c in snap.get("changes") or [] if isinstance(c, dict)]
            if not changes:
                self.revision = max(self.revision, int(snap.get("revision") or 0))
                return
            self._apply_delta(changes)
            self.revision = snap["revision"]
            self.deltas += 1
        else:
            if snap["revision"] == self.revision and self._ready.is_set():
                return
            self._apply(snap)
            self.full_snapshots += 1
        log.debug("cluster cache at revision %d", self.revision)
        for callback in self._listeners:
            result = callback()
            if asyncio.iscoroutine(result):
                await result

    def _apply(self, snap: dict) -> None:
        # One record that does not parse is skipped (and logged), never the whole snapshot.
        self._records = {section: {} for section in SECTIONS}
        self._user_cas, self._host_cas, self._ca_keys, self._host_ca_clusters = {}, {}, {}, {}
        for ca in _records(snap, "cas"):
            self._put("cas", _ca_id(ca), ca)
        for section in _NAMED:
            self._records[section] = _by_name(snap, section)
        for lock in _records(snap, "locks"):
            self._records["locks"][f'{lock.get("kind")}/{lock.get("name")}'] = lock
        self._index_locks()
        self._cluster_name = snap.get("cluster_name", "")
        self.revision = snap["revision"]
        self.last_changes = None
        self._ready.set()

    def _apply_delta(self, changes: list[dict]) -> None:
        """Records that changed: a value replaces the record, None removes it."""
        applied = set()
        for change in changes:
            section, ident, value = change.get("section"), change.get("id"), change.get("value")
            if section not in SECTIONS or not isinstance(ident, str) or not (value is None or isinstance(value, dict)):
                log.error("skipping a change of the snapshot that does not parse: %.200r", change)
                continue
            if value is not None and section in _NAMED and _name_of(value) != ident:
                # As in a full snapshot (_by_name): a record without its name is left out.
                log.error("skipping a record of the snapshot's %s that has no name: %.200r", section, value)
                value = None
            self._put(section, ident, value)
            applied.add((section, ident))
        if any(section == "locks" for section, _unused in applied):
            self._index_locks()
        self.last_changes = applied

    def _put(self, section: str, ident: str, value: dict | None) -> None:
        if section == "cas":
            self._unindex_ca(ident)
        if value is None:
            self._records[section].pop(ident, None)
            return
        self._records[section][ident] = value
        if section == "cas":
            self._index_ca(ident, value)

    def _index_ca(self, ident: str, ca: dict) -> None:
        try:
            if ca["active"] and ca["type"] in ("user", "host"):
                key = key_only(ca["public"])
                index = self._user_cas if ca["type"] == "user" else self._host_cas
                index[key] = ca
                self._ca_keys[ident] = (ca["type"], key, ca)
                if ca["type"] == "host":
                    self._host_ca_clusters[ca["cluster_name"]] = self._host_ca_clusters.get(ca["cluster_name"], 0) + 1
        except (KeyError, TypeError, AttributeError):
            log.error("skipping a certificate authority of the snapshot that does not parse: %.200r", ca)

    def _unindex_ca(self, ident: str) -> None:
        old = self._ca_keys.pop(ident, None)
        if old is None:
            return
        ca_type, key, ca = old
        index = self._user_cas if ca_type == "user" else self._host_cas
        if index.get(key) is ca:  # another record holding the same key (never stored by auth) stays
            del index[key]
        if ca_type == "host":
            left = self._host_ca_clusters.get(ca["cluster_name"], 1) - 1
            if left > 0:
                self._host_ca_clusters[ca["cluster_name"]] = left
            else:
                self._host_ca_clusters.pop(ca["cluster_name"], None)

    def _index_locks(self) -> None:
        self._revoked = {}
        for lock in self._records["locks"].values():
            try:
                self._revoked.setdefault(lock["kind"], set()).update(lock["ssh_keys"])
            except (KeyError, TypeError):
                log.error("skipping a revocation of the snapshot that does not parse: %.200r", lock)

    # -- this cluster ----------------------------------------------------------
    @property
    def cluster_name(self) -> str:
        return self._cluster_name

    def roles(self) -> dict[str, dict]:
        return dict(self._records["roles"])

    def nodes(self) -> list[dict]:
        return list(self._records["nodes"].values())

    def node(self, name: str) -> dict | None:
        return self._records["nodes"].get(name)

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
        return [tc for name, tc in self._records["trusted_clusters"].items()
                if isinstance(tc.get("spec"), dict) and tc["spec"].get("enabled") and name in active]

    # -- root side: the leaves that trust this cluster -----------------------------
    def remote_cluster(self, name: str) -> dict | None:
        return self._records["remote_clusters"].get(name)

    def remote_clusters(self) -> list[dict]:
        return list(self._records["remote_clusters"].values())

    def leaf_of_host_ca(self, public_line: str) -> str:
        """The registered leaf whose active host CA this is, or ""."""
        ca = self.host_ca(public_line)
        if ca is None or ca.get("local") or ca["cluster_name"] not in self._records["remote_clusters"]:
            return ""
        return ca["cluster_name"]

    def leaf_is_trusted(self, leaf: str) -> bool:
        """Whether leaf LEAF still has an active host CA here (it is gone after 'gatectl rm rc/LEAF')."""
        return self._host_ca_clusters.get(leaf, 0) > 0

    def is_cluster(self, name: str) -> bool:
        """Whether NAME is this cluster or one it trusts or is trusted by (a suffix `node.CLUSTER` may use)."""
        return (name == self.cluster_name or name in self._records["remote_clusters"]
                or name in self._records["trusted_clusters"])

    def cluster_names(self) -> list[str]:
        """This cluster and every cluster it trusts or is trusted by: the suffixes `node.CLUSTER` may use."""
        return [self.cluster_name, *self._records["remote_clusters"], *self._records["trusted_clusters"]]


def _records(snap: dict, field: str) -> list:
    value = snap.get(field)
    return [r for r in value if isinstance(r, dict)] if isinstance(value, list) else []


#: Sections whose records are named by metadata.name (a delta names them by it too).
_NAMED = ("roles", "nodes", "remote_clusters", "trusted_clusters")


def _name_of(record: dict) -> str | None:
    name = record["metadata"].get("name") if isinstance(record.get("metadata"), dict) else None
    return name if isinstance(name, str) and name else None


def _by_name(snap: dict, field: str) -> dict[str, dict]:
    """Records of one snapshot field by metadata.name; one that has no name is skipped and logged."""
    out = {}
    for record in _records(snap, field):
        name = _name_of(record)
        if name:
            out[name] = record
        else:
            log.error("skipping a record of the snapshot's %s that has no name: %.200r", field, record)
    return out


def key_only(line: str) -> str:
    """'type base64 comment' -> 'type base64' so comments never affect CA matching."""
    return " ".join(line.split()[:2])


def _ca_id(ca: dict) -> str:
    """How deltas name a CA record: CLUSTER/TYPE."""
    return f'{ca.get("cluster_name")}/{ca.get("type")}'
