"""Root side: tunnel presence as root proxies report it, and the status of leaf clusters it gives.

Root proxies hold tunnel heartbeats in memory (`tunnel/presence.py`) and report, per
shard of leaf names, which leaves hold a tunnel to them: when one connects or
disconnects (batched, about a second) and in a summary every `summary_interval`
seconds. Each report replaces `presence/<shard>/<proxy>`; a leaf the proxy no longer
lists stays in the record as disconnected with its last heartbeat, so `last_heartbeat`
survives the proxy's restart and death. Nothing is written per heartbeat.

A leaf is **online** while some root proxy lists it as connected, that proxy is live
(`proxies/<name>`, renewed every `tunnel_heartbeat_interval`, gone after
`MISSED_HEARTBEATS` of them) and the record is fresh (rewritten within
`MISSED_HEARTBEATS` summary intervals). So a dead proxy's tunnels stop counting once its
liveness record expires (9 s with the defaults), whatever its presence records say.
`last_heartbeat` is the newest heartbeat any proxy reported for the leaf: at most one
summary interval (plus a second) older than the newest one a proxy received.

Records of proxies from before presence existed (`tunnels/<leaf>/<proxy>`, one per
tunnel, written per heartbeat) still count, the way they always did.
"""

from __future__ import annotations

import logging
import time

from .. import resources
from ..backend.base import Op
from ..errors import AlreadyExists, BadParameter, CompareFailed, NotFound
from ..wire import (MAX_HEARTBEAT_INTERVAL, PRESENCE_SHARDS, connection_status, heartbeat_interval,
                    heartbeat_mode, is_live, presence_shard)
from . import keys
from .authz import Identity, require_kind

log = logging.getLogger("gatehouse.presence")

#: A disconnected leaf's last heartbeat is kept this long in its proxy's records.
FORGET_AFTER = 7 * 24 * 3600
#: The most leaves one presence record may list (one shard of one proxy).
MAX_LEAVES_PER_SHARD = 50_000


class LeafPresence:
    """What the presence records say about one leaf."""

    __slots__ = ("online", "last", "mode", "proxies")

    def __init__(self):
        self.online = False
        self.last = 0.0
        self.mode = ""
        self.proxies: list[str] = []   # live root proxies holding a tunnel from it

    @property
    def connection(self) -> str:
        return "online" if self.online else "offline"


class PresenceStore:
    def __init__(self, backend, audit):
        self.backend = backend
        self.audit = audit

    # ------------------------------------------------------------------ reports
    async def report(self, ident: Identity, shards, summary_interval) -> int:
        """A root proxy's presence report: every shard it lists replaces its record of that shard.
        Returns how many records were written."""
        require_kind(ident, ("proxy",), "only root proxies report tunnel presence")
        summary = heartbeat_interval(summary_interval)
        if summary is None:
            raise BadParameter(f"summary_interval must be a number of seconds from 0.5 to {MAX_HEARTBEAT_INTERVAL:g}, "
                               f"not {str(summary_interval)[:40]!r}; check proxy_service.presence_interval")
        if not isinstance(shards, list) or len(shards) > PRESENCE_SHARDS:
            raise BadParameter(f"shards must be a list of at most {PRESENCE_SHARDS} presence shards")
        checked = [self._check_shard(s) for s in shards]
        for shard, rows in checked:
            await self._write(ident.name, shard, rows, summary)
        return len(checked)

    @staticmethod
    def _check_shard(value) -> tuple[int, dict]:
        if not isinstance(value, dict):
            raise BadParameter("each presence shard must be an object with shard and leaves")
        shard, rows = value.get("shard"), value.get("leaves")
        if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < PRESENCE_SHARDS:
            raise BadParameter(f"shard must be a number from 0 to {PRESENCE_SHARDS - 1}, not {str(shard)[:20]!r}")
        if not isinstance(rows, dict) or len(rows) > MAX_LEAVES_PER_SHARD:
            raise BadParameter(f"leaves must be a mapping of at most {MAX_LEAVES_PER_SHARD} leaf names to "
                               f"[last heartbeat, connected, interval, mode]")
        now = time.time()
        out = {}
        for leaf, row in rows.items():
            resources.validate_name(leaf, "leaf cluster name")
            if presence_shard(leaf) != shard:
                raise BadParameter(f'leaf "{leaf}" does not belong to presence shard {shard}')
            if not isinstance(row, list) or len(row) != 4:
                raise BadParameter(f'the presence of leaf "{leaf}" must be [last heartbeat, connected, interval, mode]')
            last, connected, interval, mode = row
            if isinstance(last, bool) or not isinstance(last, (int, float)) or not 0 <= last < 1e11:
                raise BadParameter(f'the last heartbeat of leaf "{leaf}" must be a unix time')
            interval = heartbeat_interval(interval)
            if interval is None:
                raise BadParameter(f'the heartbeat interval of leaf "{leaf}" must be a number of seconds from 0.5 '
                                   f"to {MAX_HEARTBEAT_INTERVAL:g}")
            # A proxy cannot report heartbeats from the future; connected is a flag.
            out[leaf] = [min(float(last), now), 1 if connected in (1, True) else 0, interval,
                         heartbeat_mode(mode) or "default"]
        return shard, out

    async def _write(self, proxy: str, shard: int, rows: dict, summary: float) -> None:
        """Replace the proxy's record of SHARD: leaves it no longer lists stay, disconnected, with their last
        heartbeat (until FORGET_AFTER); connects and disconnects are audited."""
        key = keys.presence(shard, proxy)
        for _attempt in range(5):
            try:
                item = await self.backend.get(key)
            except NotFound:
                item = None
            now = time.time()
            old = (item.value.get("leaves") or {}) if item is not None else {}
            merged = {leaf: [row[0], 0, row[2], row[3]] for leaf, row in old.items()
                      if isinstance(row, list) and len(row) == 4 and now - row[0] < FORGET_AFTER}
            merged.update(rows)
            value = {"proxy": proxy, "shard": shard, "updated": now, "summary_interval": summary, "leaves": merged}
            op = (Op("cas", key, value, expires=now + FORGET_AFTER, revision=item.revision) if item is not None
                  else Op("create", key, value, expires=now + FORGET_AFTER))
            try:
                await self.backend.atomic([op])
            except (CompareFailed, NotFound, AlreadyExists):
                continue  # another report of the same shard (through another auth server) won: read again
            self._audit_changes(proxy, old, merged)
            return
        log.warning("presence: proxy %s's report of shard %d lost five races in a row; it is sent again", proxy, shard)

    def _audit_changes(self, proxy: str, old: dict, new: dict) -> None:
        for leaf, row in new.items():
            before = old.get(leaf)
            was = bool(before[1]) if isinstance(before, list) and len(before) == 4 else False
            if bool(row[1]) != was:
                self.audit.emit("tunnel.connect" if row[1] else "tunnel.disconnect", leaf=leaf, proxy=proxy)

    # ------------------------------------------------------------------ reading
    async def live_proxies(self) -> set[str]:
        return {i.value.get("name") for i in await self.backend.get_range(keys.PROXIES_PREFIX)}

    async def of_leaves(self, names=None) -> dict[str, LeafPresence]:
        """Presence of every leaf any record names (or only of NAMES, reading just their shards)."""
        now = time.time()
        live = await self.live_proxies()
        if names is None:
            records = [i.value for i in await self.backend.get_range(keys.PRESENCE_PREFIX)]
            legacy = await self.backend.get_range(keys.TUNNELS_PREFIX)
        else:
            names = set(names)
            records = []
            for shard in sorted({presence_shard(n) for n in names}):
                records += [i.value for i in await self.backend.get_range(keys.presence_shard_prefix(shard))]
            legacy = [i for n in sorted(names) for i in await self.backend.get_range(keys.tunnels_of(n))]
        out: dict[str, LeafPresence] = {}
        for record in records:
            proxy = record.get("proxy")
            fresh = proxy in live and is_live(record.get("updated", 0), record.get("summary_interval", 30.0), now)
            for leaf, row in (record.get("leaves") or {}).items():
                if names is not None and leaf not in names:
                    continue
                entry = out.get(leaf)
                if entry is None:
                    entry = out[leaf] = LeafPresence()
                if not isinstance(row, list) or len(row) != 4:
                    continue
                if row[0] > entry.last:
                    entry.last, entry.mode = row[0], row[3]
                if row[1] and fresh:
                    entry.online = True
                    entry.proxies.append(proxy)
        for item in legacy:  # tunnels/<leaf>/<proxy>, from proxies of earlier versions
            leaf = item.key.split("/")[1]
            connection, last = connection_status([item.value], now)
            entry = out.setdefault(leaf, LeafPresence())
            entry.last = max(entry.last, last)
            if connection == "online":
                entry.online = True
                entry.proxies.append(item.value.get("proxy") or keys.name_of(keys.name_of(item.key)))
        return out

    async def of_leaf(self, leaf: str) -> LeafPresence:
        return (await self.of_leaves([leaf])).get(leaf) or LeafPresence()

    # ------------------------------------------------------------------ forgetting
    async def forget_proxy(self, proxy: str) -> None:
        """A revoked proxy's presence no longer counts (nor do its legacy tunnel records)."""
        doomed = [keys.presence(shard, proxy) for shard in range(PRESENCE_SHARDS)]
        doomed += [i.key for i in await self.backend.get_range(keys.TUNNELS_PREFIX) if i.key.endswith("/" + proxy)]
        for key in doomed:
            try:
                await self.backend.delete(key)
            except NotFound:
                pass

    async def forget_leaf(self, leaf: str) -> None:
        """A removed leaf leaves every proxy's record of its shard (and its legacy tunnel records)."""
        for _attempt in range(5):
            try:
                items = await self.backend.get_range(keys.presence_shard_prefix(presence_shard(leaf)))
                for item in items:
                    if leaf in (item.value.get("leaves") or {}):
                        value = dict(item.value)
                        value["leaves"] = {k: v for k, v in value["leaves"].items() if k != leaf}
                        await self.backend.compare_and_swap(item.key, item.revision, value, expires=item.expires)
                break
            except (CompareFailed, NotFound):
                continue
        await self.backend.delete_range(keys.tunnels_of(leaf))
