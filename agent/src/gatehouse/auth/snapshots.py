"""Members' snapshots by revision: a full one on the first sync or after a gap, deltas after that.

A member (node or proxy) long-polls `/v1/snapshot?since=REV&delta=1`. Auth keeps the
recent changes to what snapshots are made of (`keys.SNAPSHOT_PREFIXES`), read from the
backend's change feed (`backend.watch()`, in commit order and without gaps, also for
writes by other auth servers on the same database), and answers with just the records
that changed after REV: `{"revision", "delta": true, "changes": [{"section", "id",
"value"}]}`, where a `null` value means the record is gone. A member whose REV is older
than this auth server's history (it just started, the member was away long, or it
switched auth servers), or newer than it (a restored database), gets a full snapshot.

Each member gets only what it needs (`member_needs`): a node decides sessions with user
CAs and roles, so it gets no host CA of another cluster, no remote cluster and no node
records; proxies (and admins) get everything. A delta that holds nothing a member needs
is not sent: the long poll keeps waiting.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from ..errors import GatehouseError
from ..waits import wait_event
from . import keys

log = logging.getLogger("gatehouse.auth.snapshots")

#: Changes kept for deltas (a member further behind gets a full snapshot).
HISTORY = 50_000

#: Snapshot sections by storage prefix (users/ wakes the long poll but is in no section).
SECTIONS = {keys.CAS_PREFIX: "cas", keys.ROLES_PREFIX: "roles", keys.NODES_PREFIX: "nodes",
            keys.REMOTE_CLUSTERS_PREFIX: "remote_clusters", keys.TRUSTED_CLUSTERS_PREFIX: "trusted_clusters",
            keys.LOCKS_PREFIX: "locks"}


def section_of(key: str) -> tuple[str, str] | None:
    """(section, id) of a storage key that is part of members' snapshots, else None."""
    for prefix, section in SECTIONS.items():
        if key.startswith(prefix):
            return section, key[len(prefix):]
    return None


def member_needs(kind: str, section: str, ident: str, local_cluster: str) -> bool:
    """Whether a member of KIND in LOCAL_CLUSTER needs the record ID of SECTION."""
    if kind not in ("node",):
        return True  # proxies route to everything and hold the tunnels; admins see it all
    if section in ("nodes", "remote_clusters"):
        return False
    if section == "cas":
        cluster, _sep, ca_type = ident.rpartition("/")
        # Users' certificates; and its own cluster's host CA, which signs the proxies' session
        # answers (member/session_header.py). Leaves' host CAs are for clients and tunnels.
        return ca_type == "user" or (ca_type == "host" and cluster == local_cluster)
    return True


class SnapshotFeed:
    """The recent snapshot changes, by revision, kept from the backend's change feed."""

    def __init__(self, backend, history: int = HISTORY):
        self.backend = backend
        self.history = history
        self._changes: collections.deque = collections.deque()   # (revision, key, item or None)
        #: Every change with a revision above `first` and up to `revision` is in _changes.
        self.first = 0
        self.revision = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._watcher = None
        #: Set when auth stops (or the backend closed): long polls answer at once instead of waiting.
        self.stopped = False

    async def start(self) -> None:
        self._restart()
        self._task = asyncio.create_task(self._follow(), name="snapshot-feed")

    async def stop(self) -> None:
        self.stopped = True
        self._wake()  # members' long polls end now, so the API server stops without waiting for them
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping anyway
                pass
        if self._watcher is not None:
            self._watcher.close()

    def _restart(self) -> None:
        """Watch from now on: changes before this point are only in full snapshots."""
        if self._watcher is not None:
            self._watcher.close()
        self._watcher = self.backend.watch(None)  # every write, so `revision` follows the backend's
        self._changes.clear()
        self.first = self.revision = self._watcher.start_revision
        self._wake()

    async def _follow(self) -> None:
        while True:
            try:
                async for event in self._watcher:
                    self.revision = event.revision
                    if section_of(event.key) is not None:
                        self._changes.append((event.revision, event.key, event.item))
                        if len(self._changes) > self.history:
                            self.first = self._changes.popleft()[0]
                        self._wake()
                self.stopped = True  # the backend closed
                self._wake()
                return
            except GatehouseError as exc:  # fell behind, or the backend lost changes: history starts anew
                log.warning("snapshot history restarted (%s); members get a full snapshot on their next poll", exc)
                self._restart()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def covers(self, since: int) -> bool:
        """Whether every change after SINCE is known here (else a full snapshot is due)."""
        return self.first <= since <= self.revision

    def since(self, since: int) -> list:
        """The changes after SINCE, oldest first (callers check `covers` first)."""
        if since >= self.revision:
            return []
        out = []
        for change in reversed(self._changes):
            if change[0] <= since:
                break
            out.append(change)
        out.reverse()
        return out

    async def wait(self, timeout: float) -> None:
        """Until the next snapshot change (or TIMEOUT seconds)."""
        await wait_event(self._changed, timeout)


def delta_changes(changes: list, kind: str, local_cluster: str, public_ca) -> list[dict]:
    """CHANGES (revision, key, item) as a member of KIND receives them: the last change of each record,
    in the section's public form (PUBLIC_CA turns a stored CA record into its public view, raising
    when it does not parse: then the record counts as gone, as in a full snapshot)."""
    latest: dict[str, object] = {}
    for _revision, key, item in changes:
        latest.pop(key, None)
        latest[key] = item
    out = []
    for key, item in latest.items():
        section, ident = section_of(key)
        value = item.value if item is not None and not item.expired(time.time()) else None
        if not member_needs(kind, section, ident, local_cluster):
            continue
        if value is not None and section == "cas":
            try:
                value = public_ca(value)
            except (GatehouseError, KeyError, TypeError, ValueError, AttributeError) as exc:
                log.error("skipping the certificate authority record %r, which does not parse (%s)", key, exc)
                value = None
        elif value is not None and section == "locks":
            value = public_lock(value)
        out.append({"section": section, "id": ident, "value": value})
    return out


def public_lock(v: dict) -> dict:
    """What members see of a revocation (no secrets: fingerprints of public keys)."""
    return {"kind": v["kind"], "name": v["name"], "ssh_keys": v["ssh_keys"], "revoked": v["revoked"]}


#: How long a delta waits for this server's history to reach a revision another auth server gave out.
CATCH_UP = 5.0


async def delta(svc, kind: str, since: int, timeout: float) -> dict | None:
    """The changes after SINCE that a member of KIND needs, waiting up to TIMEOUT seconds for one;
    None when this server cannot tell them (then the member gets a full snapshot)."""
    feed = svc.snapshot_feed
    if since > feed.revision and since <= await svc.backend.revision():
        # Another auth server on the same database answered the member's last poll: catch up with it.
        deadline = time.monotonic() + CATCH_UP
        while since > feed.revision and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    deadline = time.monotonic() + max(timeout, 0)
    while True:
        if not feed.covers(since):
            return None
        changes = delta_changes(feed.since(since), kind, svc.cluster_name, svc.public_ca)
        revision = feed.revision
        left = deadline - time.monotonic()
        if changes or left <= 0 or feed.stopped:
            return {"revision": revision, "cluster_name": svc.cluster_name, "delta": True, "changes": changes}
        since = revision  # nothing this member needs changed up to here: keep waiting
        await feed.wait(left)
