"""The cluster's audit trail at its auth service: the hash chain, searches, recordings, forwarding.

* **Chain.** Events reach the chain from this process's own audit log (an AuditShipper
  delivers them) and from members (``POST /v1/audit/events``). Each batch is linked
  after the stream's head and written with the backend's conditional append; when
  another auth server wrote first, the batch is linked again after the new head, so
  one cluster has one linear chain however many auth servers write (backend/audit.py).
  A resent event (same uid) is dropped. Anchors (``audit.anchor``) sign the head with
  the cluster's host CA key at least every ``audit.anchor_interval`` while events
  arrive, and every ANCHOR_EVERY events.
* **Members.** What a node or proxy reports is bounded and checked (auditchain.check_entry),
  limited to the events its kind emits, stamped with ``reporter``, and never refused as a
  batch: a bad event is dropped and its refusal audited, so a member's log never jams.
* **Forwarding.** A leaf exports its chain to its root when its trusted_cluster says
  ``forward_audit: true``: batches signed with the leaf's host CA key. The root checks
  the signature with the leaf's CA, that every event is canonical, the leaf's, and links
  to the copy it holds; it stores them in the leaf's stream with the leaf's own seq and
  hashes. Forged, broken or replayed batches are refused and audited.
* **Recordings** (recording_store.py): uploaded by nodes (their own sessions) and, at a
  root, forwarded by root proxies for sessions of root users on leaves, accepted only
  with the size and SHA-256 the leaf's signed chain names.
* **Reading.** The admin identity, and users whose roles say ``audit: read``, search and
  verify the trail and replay every recording; any user replays their own sessions.
* **Retention.** Events beyond ``audit.events_max_age`` / ``events_max_count`` leave the
  start of a stream (an ``audit.prune`` event records where the kept chain starts);
  recordings beyond ``recordings_max_age`` / ``recordings_max_size`` are removed, oldest
  first. One auth server at a time runs it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import random
import time
import uuid
from typing import Optional

from .. import auditchain, pki
from ..audit import AuditShipper
from ..auditchain import ANCHOR_EVENT, GAP_EVENT, PRUNE_EVENT, Head, Walk
from ..auditquery import MAX_LIMIT, Query, encode_cursor, parse_query
from ..backend.audit import MAX_RANGE
from ..backend.base import Op
from ..clock import now_iso
from ..resources import validate_name
from ..errors import AccessDenied, AlreadyExists, BadParameter, CompareFailed, GatehouseError, NotFound
from ..wire import is_session_id
from . import keys
from .authz import Identity, require_kind
from .recording_store import MAX_PIECE, RecordingStore, open_recording_store

log = logging.getLogger("gatehouse.auth.audit")

ANCHOR_EVERY = 1000
APPEND_BATCH = 1000
APPEND_TRIES = 100
#: An export batch holds at most this many events and this many bytes of event text.
EXPORT_EVENTS = 1000
EXPORT_BYTES = 768 * 1024
#: Recordings a root asks a leaf for at once.
MAX_WANTED = 100
#: Events members may report, by kind (prefixes). Chain events (anchors, prunes, gaps) never.
MEMBER_EVENTS = {"node": ("session.", "access.denied", "port", "audit.dropped"),
                 "proxy": ("session.", "tunnel.", "audit.dropped", "audit.forward")}
_CHAIN_EVENTS = (ANCHOR_EVENT, PRUNE_EVENT, GAP_EVENT)
#: Recording metadata a node sends with a finished recording (strings bounded to 1 KiB).
RECORDING_META = ("node", "user", "login", "user_cluster", "kind", "command", "started", "ended", "exit_status",
                  "exit_signal", "interrupted", "failed", "truncated", "subsystem", "roles")


class AuditStore:
    def __init__(self, svc, recordings: Optional[RecordingStore] = None):
        self.svc = svc
        self.backend = svc.backend
        self.cluster = svc.cluster_name
        self.cfg = svc.cfg.audit
        self.recordings = recordings or open_recording_store(self.cfg.recordings_dir, svc.cfg.data_dir)
        self._lock = asyncio.Lock()
        self._ingest_lock = asyncio.Lock()
        self._since_anchor = 0
        self._tasks: list[asyncio.Task] = []
        self.shipper: Optional[AuditShipper] = None
        self._refusals = 0.0

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self.shipper = AuditShipper(self.svc.audit, self.deliver_own, what="the audit chain in storage")
        self.shipper.start()
        self._tasks = [asyncio.create_task(self._anchor_loop(), name="audit-anchors"),
                       asyncio.create_task(self._retention_loop(), name="audit-retention")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        if self.shipper is not None:
            await self.shipper.stop()

    # ---------------------------------------------------------------- the chain
    async def _host_ca(self) -> dict:
        return await self.svc.local_ca("host")

    async def store_entries(self, entries: list) -> int:
        """Chain ENTRIES (checked events of this cluster) into its stream, dropping ones already stored."""
        stored = 0
        async with self._lock:
            for i in range(0, len(entries), APPEND_BATCH):
                batch = entries[i:i + APPEND_BATCH]

                async def fresh(head, batch=batch):
                    known = await self.backend.audit_known_uids(self.cluster, [e["uid"] for e in batch])
                    seen, out = set(known), []
                    for entry in batch:
                        if entry["uid"] not in seen:
                            seen.add(entry["uid"])
                            out.append(entry)
                    return out
                for attempt in range(APPEND_TRIES):
                    head = await self.backend.audit_head(self.cluster)
                    todo = await fresh(head)
                    if not todo:
                        break
                    try:
                        await self.backend.audit_append(self.cluster, head.seq, auditchain.link(self.cluster, head, todo))
                        stored += len(todo)
                        break
                    except (CompareFailed, AlreadyExists):
                        await asyncio.sleep(random.uniform(0, 0.005 * min(attempt + 1, 20)))
                else:
                    raise GatehouseError(f"could not add events to the audit stream {self.cluster} after "
                                         f"{APPEND_TRIES} tries; they are kept and sent again")
        self._since_anchor += stored
        if self._since_anchor >= ANCHOR_EVERY:
            asyncio.get_running_loop().create_task(self.anchor())
        return stored

    async def record(self, event: str, **fields) -> None:
        """Emit an event this store relies on (prunes, gaps, recordings) and return once it is in the chain, after
        the events written before it; if delivery is stuck, chain it at once (the later delivery drops it)."""
        entry = self.svc.audit.emit(event, **fields)
        if self.shipper is None or not await self.shipper.delivered_event(entry["uid"], 10.0):
            await self.store_entries([auditchain.fit(entry, self.cluster)])

    async def deliver_own(self, batch: list) -> None:
        """This process's events (from its local log) into the chain."""
        await self.store_entries([auditchain.fit(e, self.cluster) for e in batch])

    async def deliver_member(self, ident: Identity, events) -> dict:
        """Events a node or proxy reports: each checked on its own; refused ones are audited, never stored."""
        require_kind(ident, ("node", "proxy", "admin"), "only cluster members send audit events to auth")
        if not isinstance(events, list) or len(events) > 2000:
            raise BadParameter("events must be a list of at most 2000 audit events")
        allowed = MEMBER_EVENTS.get(ident.kind)
        accepted, refused = [], []
        for i, entry in enumerate(events):
            try:
                entry = auditchain.check_entry(entry, f"event {i}")
                name = entry["event"]
                if name in _CHAIN_EVENTS or (allowed is not None and not name.startswith(allowed)):
                    raise BadParameter(f"a {ident.kind} may not report {name} events")
            except BadParameter as exc:
                refused.append(exc.message)
                continue
            entry = {k: v for k, v in entry.items() if k not in auditchain.CHAIN_FIELDS and k not in ("hash", "stream")}
            entry["cluster_name"] = self.cluster
            entry["reporter"] = f"{ident.kind}/{ident.name}"
            accepted.append(entry)
        if refused:
            self._refused(f"{ident.kind} {ident.name}", len(refused), refused[0])
        stored = await self.store_entries(accepted)
        return {"stored": stored, "refused": len(refused)}

    def _refused(self, who: str, count: int, first: str) -> None:
        now = time.monotonic()
        if now - self._refusals < 10:   # at most one refusal event every 10 s, so refusals cannot flood the log
            return
        self._refusals = now
        log.warning("refused %d audit event(s) from %s: %s", count, who, first)
        self.svc.audit.emit("audit.event_refused", success=False, reporter=who, count=count, reason=first)

    # ---------------------------------------------------------------- anchors
    async def anchor(self) -> Optional[int]:
        """Sign the head of this cluster's stream into the chain (nothing when the head is an anchor)."""
        ca = await self._host_ca()
        fingerprint = pki.ssh_fingerprint(ca["public"])
        async with self._lock:
            last = None

            def make(head: Head) -> list:
                if head.seq == 0 or (last is not None and last.seq == head.seq and last.event == ANCHOR_EVENT):
                    return []
                signature = pki.sign_blob(ca["private"], auditchain.ANCHOR_DOMAIN,
                                          auditchain.anchor_payload(self.cluster, head.seq, head.hash))
                return [{"event": ANCHOR_EVENT, "uid": uuid.uuid4().hex, "time": now_iso(),
                         "cluster_name": self.cluster, "success": True, "anchored_seq": head.seq,
                         "anchored_hash": head.hash, "key": fingerprint, "signature": signature}]
            for _unused in range(APPEND_TRIES):
                head = await self.backend.audit_head(self.cluster)
                tail = await self.backend.audit_range(self.cluster, head.seq - 1, 1) if head.seq else []
                last = tail[0] if tail else None
                entries = make(head)
                if not entries:
                    self._since_anchor = 0
                    return None
                try:
                    await self.backend.audit_append(self.cluster, head.seq, auditchain.link(self.cluster, head, entries))
                    self._since_anchor = 0
                    log.info("audit anchor: %s event %d hash %s", self.cluster, head.seq, head.hash)
                    return head.seq + 1
                except (CompareFailed, AlreadyExists):
                    await asyncio.sleep(random.uniform(0, 0.01))
        return None

    async def _anchor_loop(self) -> None:
        interval = self.cfg.seconds("anchor_interval")
        while True:
            await asyncio.sleep(interval)
            try:
                await self.anchor()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - tried again next interval
                log.warning("cannot write an audit anchor: %s", exc)

    async def _anchor_key(self, stream: str):
        """fingerprint -> host CA public line, for the anchors of STREAM (this cluster's or a leaf's)."""
        keys_by_fp = {}
        for ca in await self.svc.cert_authorities():
            if ca["type"] == "host" and ca["cluster_name"] == stream:
                keys_by_fp[ca["fingerprint"]] = ca["public"]
        return keys_by_fp.get

    # ---------------------------------------------------------------- reading
    async def can_read(self, ident: Identity) -> bool:
        if ident.is_admin:
            return True
        if ident.kind != "user":
            return False
        try:
            user = await self.svc.get_user(ident.name)
        except NotFound:
            return False
        return (await self.svc.checker_for_user(user)).can_read_audit()

    async def require_read(self, ident: Identity) -> None:
        if not await self.can_read(ident):
            raise AccessDenied(f"{ident.kind} {ident.name!r} may not read the audit log; a role with options.audit: "
                               f"read allows it (anyone may replay their own sessions with 'gate play')")

    async def search(self, ident: Identity, params) -> dict:
        await self.require_read(ident)
        query = parse_query(dict(params))
        records = await self.backend.audit_search(query)
        nxt = encode_cursor((records[-1].ts, records[-1].stream, records[-1].seq)) if len(records) == query.limit else ""
        return {"items": [r.value() for r in records], "next": nxt}

    async def streams(self, ident: Identity) -> dict:
        await self.require_read(ident)
        out = []
        for stream in await self.backend.audit_streams():
            bounds = await self.backend.audit_bounds(stream)
            head = await self.backend.audit_head(stream)
            out.append({"cluster": stream, "first": bounds.first, "last": bounds.last, "head": head.hash,
                        "local": stream == self.cluster})
        return {"items": out}

    async def _restart_points(self, stream: str) -> dict:
        """seq -> prev hash where STREAM's chain legitimately starts again: after a prune (retention) or a gap
        a leaf's signed export declared; recorded in this cluster's own chain (the event's ``chain`` field names
        the stream: ``stream`` is what a search adds to every event, so an event cannot carry it)."""
        points = {}
        for event in (PRUNE_EVENT, GAP_EVENT):
            for rec in await self.backend.audit_search(Query(cluster=self.cluster, event=event, limit=MAX_LIMIT)):
                body = json.loads(rec.body)
                if body.get("chain") == stream and isinstance(body.get("through_seq"), int):
                    points[body["through_seq"] + 1] = str(body.get("through_hash", ""))
        return points

    async def verify(self, ident: Identity, stream: str, after: int = 0, prev: str = "", limit: int = 20000) -> dict:
        """Check up to LIMIT events of STREAM after seq AFTER (whose hash is PREV); call again with the returned
        ``next`` until ``done``. The first call (AFTER 0) starts where the kept chain starts."""
        await self.require_read(ident)
        stream = stream or self.cluster
        limit = max(1, min(int(limit), 100000))
        bounds = await self.backend.audit_bounds(stream)
        points = await self._restart_points(stream)
        if bounds.last == 0:
            raise NotFound(f"no audit events of cluster {stream} are stored here")
        state = Walk(stream, after + 1, prev)
        gaps = []
        if after == 0 and bounds.first > 1:
            if bounds.first in points:
                state.next_seq, state.prev = bounds.first, points[bounds.first]
                gaps.append({"from": 1, "to": bounds.first - 1, "why": "removed by retention, or never forwarded"})
            else:
                state.fail(1, f"events 1 to {bounds.first - 1} are missing and no {PRUNE_EVENT} or {GAP_EVENT} event "
                              f"records their removal")
        anchor_key = await self._anchor_key(stream)
        checked = 0
        while not state.problem and checked < limit and state.next_seq <= bounds.last:
            page = await self.backend.audit_range(stream, state.next_seq - 1, min(MAX_RANGE, limit - checked))
            if not page:
                break
            for run in _runs(page):
                if run[0].seq != state.next_seq:
                    if run[0].seq not in points:
                        state.fail(state.next_seq, f"events {state.next_seq} to {run[0].seq - 1} are missing and no "
                                                   f"{PRUNE_EVENT} or {GAP_EVENT} event records their removal")
                        break
                    gaps.append({"from": state.next_seq, "to": run[0].seq - 1,
                                 "why": "removed by retention, or never forwarded"})
                    state.next_seq, state.prev = run[0].seq, points[run[0].seq]
                before = state.checked
                auditchain.walk(state, run, anchor_key)
                checked += state.checked - before
                if state.problem:
                    break
        done = bool(state.problem) or state.next_seq > bounds.last
        return {"cluster": stream, "checked": checked, "next": state.next_seq - 1, "prev": state.prev,
                "anchors": state.anchors, "last_anchor": state.last_anchor_seq, "first": bounds.first,
                "last": bounds.last, "done": done, "ok": not state.problem,
                "broken": {"seq": state.problem_seq, "reason": state.problem} if state.problem else None,
                "gaps": gaps}

    # ---------------------------------------------------------------- leaf side: export to the root
    async def _forwarding_root(self, root: str) -> dict:
        try:
            tc = (await self.backend.get(keys.trusted_cluster(root))).value
        except NotFound:
            raise NotFound(f'this cluster does not trust a cluster named "{root}"') from None
        spec = tc.get("spec") or {}
        if not spec.get("enabled") or not spec.get("forward_audit"):
            raise AccessDenied(f'audit forwarding to "{root}" is off: its trusted_cluster says forward_audit: false '
                               f"(or trust is disabled); the leaf's administrator decides")
        return tc

    async def export(self, ident: Identity, root: str, after: int, limit: int = EXPORT_EVENTS) -> dict:
        """The next events of this cluster's chain for ROOT, signed with this cluster's host CA key."""
        require_kind(ident, ("proxy", "admin"), "only this cluster's proxies export its audit events")
        await self._forwarding_root(root)
        limit = max(1, min(int(limit), EXPORT_EVENTS))
        bounds = await self.backend.audit_bounds(self.cluster)
        gap = bounds.first > after + 1 and bounds.last > after
        records = await self.backend.audit_range(self.cluster, max(after, bounds.first - 1) if gap else after, limit)
        events, size = [], 0
        for rec in records:
            size += len(rec.body)
            if events and size > EXPORT_BYTES:
                break
            events.append(rec)
        if not events:
            return {"stream": self.cluster, "events": [], "head": bounds.last}
        first_prev = json.loads(events[0].body).get("prev", "")
        ca = await self._host_ca()
        signature = pki.sign_blob(ca["private"], auditchain.BATCH_DOMAIN, auditchain.batch_payload(
            self.cluster, events[0].seq, first_prev, events[-1].seq, events[-1].hash))
        return {"stream": self.cluster, "events": [r.body for r in events], "first_seq": events[0].seq,
                "first_prev": first_prev, "last_seq": events[-1].seq, "last_hash": events[-1].hash,
                "gap": gap, "key": pki.ssh_fingerprint(ca["public"]), "signature": signature, "head": bounds.last}

    async def export_ack(self, ident: Identity, root: str, seq: int) -> None:
        """The root holds this cluster's events up to SEQ: retention may drop them here now."""
        require_kind(ident, ("proxy", "admin"), "only this cluster's proxies report what the root holds")
        key = keys.audit_forwarded(root)
        for _unused in range(5):
            try:
                item = await self.backend.get(key)
            except NotFound:
                try:
                    await self.backend.create(key, {"seq": int(seq), "time": now_iso()})
                    return
                except AlreadyExists:
                    continue
            if item.value.get("seq", 0) >= seq:
                return
            try:
                await self.backend.compare_and_swap(key, item.revision, {"seq": int(seq), "time": now_iso()})
                return
            except (CompareFailed, NotFound):
                continue

    async def export_recording(self, ident: Identity, root: str, sid: str, offset: int, limit: int) -> dict:
        """A piece of the recording of a ROOT user's session here, for forwarding."""
        require_kind(ident, ("proxy", "admin"), "only this cluster's proxies forward its recordings")
        await self._forwarding_root(root)
        event = await self._recording_event(self.cluster, sid)
        if event is None or event.get("user_cluster") != root:
            raise NotFound(f"this cluster holds no recording of a session of a {root} user with id {sid}")
        data, total = await self.recordings.read(self.cluster, sid, offset, min(limit, MAX_PIECE))
        return {"sid": sid, "offset": offset, "data": base64.b64encode(data).decode(), "size": total}

    # ---------------------------------------------------------------- root side: what leaves forward
    async def _leaf(self, leaf: str) -> None:
        if not await self.backend.exists(keys.remote_cluster(leaf)):
            raise NotFound(f'cluster "{leaf}" is not a leaf of this cluster')

    async def forward_lease(self, ident: Identity, leaf: str) -> dict:
        """Whether the calling root proxy may forward LEAF's audit now: one proxy at a time. The holder
        keeps the lease while it lives, with no renewal (an idle leaf costs no write: issue 16), and
        gives it back when it stops forwarding (release_lease); the lease of a proxy that died (its
        `proxies/` record expired) goes to the next proxy that asks."""
        require_kind(ident, ("proxy",), "only root proxies forward leaves' audit events")
        await self._leaf(leaf)
        key, value = keys.audit_forwarder(leaf), {"proxy": ident.name}
        try:
            item = await self.backend.get(key)
        except NotFound:
            try:
                await self.backend.create(key, value)
                return {"granted": True}
            except AlreadyExists:
                item = await self.backend.get(key)
        holder = str(item.value.get("proxy") or "")
        if holder == ident.name:
            return {"granted": True}
        if holder and await self.backend.exists(keys.proxy(holder)):
            return {"granted": False, "holder": holder}
        try:
            await self.backend.compare_and_swap(key, item.revision, value)
        except (CompareFailed, NotFound):
            return {"granted": False, "holder": ""}
        log.info("audit: root proxy %s forwards leaf %s's audit now (proxy %s is gone)", ident.name, leaf,
                 holder or "?")
        return {"granted": True}

    async def release_lease(self, ident: Identity, leaf: str) -> dict:
        """The calling root proxy stops forwarding LEAF (its tunnel went, or the leaf turned forwarding
        off): the next proxy that asks gets the lease. Only the holder releases it."""
        require_kind(ident, ("proxy",), "only root proxies forward leaves' audit events")
        key = keys.audit_forwarder(leaf)
        try:
            item = await self.backend.get(key)
            if item.value.get("proxy") != ident.name:
                return {"released": False}
            await self.backend.atomic([Op("delete", key, revision=item.revision)])
        except (NotFound, CompareFailed):
            return {"released": False}
        return {"released": True}

    async def forward_state(self, ident: Identity, leaf: str) -> dict:
        """What this root holds of LEAF's stream, and the recordings it still wants."""
        require_kind(ident, ("proxy", "admin"), "only root proxies ask what a leaf forwarded")
        await self._leaf(leaf)
        head = await self.backend.audit_head(leaf)
        return {"seq": head.seq, "hash": head.hash, "want": await self._wanted(leaf)}

    async def _wanted(self, leaf: str, records=None) -> list:
        """Recordings of this cluster's users' sessions on LEAF that the leaf's chain names and are not here."""
        if records is None:
            records = await self.backend.audit_search(Query(cluster=leaf, event="session.recording", limit=200))
        want = []
        for rec in records:
            if rec.event != "session.recording" or not is_session_id(rec.sid):
                continue
            body = json.loads(rec.body)
            if body.get("user_cluster") != self.cluster:
                continue
            _size, complete = await self.recordings.size(leaf, rec.sid)
            if not complete:
                want.append(rec.sid)
            if len(want) >= MAX_WANTED:
                break
        return want

    def _forward_refused(self, leaf: str, reason: str, seq: int = 0) -> AccessDenied:
        log.warning("refused audit events forwarded for leaf %s: %s", leaf, reason)
        self.svc.audit.emit("audit.forward_refused", success=False, cluster=leaf, seq=seq or None, reason=reason)
        return AccessDenied(f"the audit events forwarded for leaf {leaf} were refused: {reason}")

    async def ingest(self, ident: Identity, leaf: str, batch) -> dict:
        """Store a batch a leaf exported (forwarded by a root proxy) in the leaf's stream, after checking it."""
        require_kind(ident, ("proxy",), "only root proxies forward leaves' audit events")
        await self._leaf(leaf)
        if not isinstance(batch, dict):
            raise BadParameter("the forwarded batch is not a JSON object")
        texts = batch.get("events")
        if not isinstance(texts, list) or not texts or len(texts) > EXPORT_EVENTS:
            raise BadParameter(f"the forwarded batch must hold 1 to {EXPORT_EVENTS} events")
        first_seq, last_seq = batch.get("first_seq"), batch.get("last_seq")
        first_prev, last_hash = batch.get("first_prev"), batch.get("last_hash")
        if (batch.get("stream") != leaf or not isinstance(first_seq, int) or not isinstance(last_seq, int)
                or isinstance(first_seq, bool) or first_seq < 1 or last_seq != first_seq + len(texts) - 1
                or not isinstance(first_prev, str) or not auditchain.is_hash(last_hash)):
            raise self._forward_refused(leaf, "the batch does not say which part of the leaf's chain it is")
        host_ca = await self.backend.get(keys.ca(leaf, "host")) if await self.backend.exists(keys.ca(leaf, "host")) else None
        if host_ca is None or not pki.verify_blob(host_ca.value["public"], auditchain.BATCH_DOMAIN,
                                                  auditchain.batch_payload(leaf, first_seq, first_prev, last_seq,
                                                                           last_hash), batch.get("signature")):
            raise self._forward_refused(leaf, "its signature does not verify with the leaf's host CA (forged, or "
                                              "meant for another cluster)", first_seq)
        records, prev = [], first_prev
        for i, text in enumerate(texts):
            try:
                rec = auditchain.record_from_text(leaf, text)
            except BadParameter as exc:
                raise self._forward_refused(leaf, exc.message, first_seq + i) from None
            body = json.loads(rec.body)
            if rec.seq != first_seq + i or body["prev"] != prev:
                raise self._forward_refused(leaf, f"event {first_seq + i} breaks the chain of the batch", rec.seq)
            if body.get("cluster_name") != leaf:
                raise self._forward_refused(leaf, f"event {rec.seq} names cluster {str(body.get('cluster_name'))[:80]!r}"
                                                  f", not {leaf}", rec.seq)
            records.append(rec)
            prev = rec.hash
        if prev != last_hash:
            raise self._forward_refused(leaf, "the batch's last event is not the one its signature names", last_seq)
        async with self._ingest_lock:
            head = await self.backend.audit_head(leaf)
            if last_seq <= head.seq or first_seq <= head.seq:
                # Resent (at least once): what overlaps must be exactly what is stored.
                overlap = await self.backend.audit_range(leaf, first_seq - 1, min(len(records), head.seq - first_seq + 1))
                stored = {r.seq: r.hash for r in overlap}
                for rec in records:
                    if rec.seq in stored and stored[rec.seq] != rec.hash:
                        raise self._forward_refused(leaf, f"event {rec.seq} differs from the copy this root holds (the "
                                                          f"leaf's log was rewritten, or the batch was replayed)", rec.seq)
                records = [r for r in records if r.seq > head.seq]
                if not records:
                    return {"seq": head.seq, "hash": head.hash, "stored": 0, "want": []}
            first = records[0]
            first_body = json.loads(first.body)
            if first.seq > head.seq + 1:
                if not batch.get("gap") or first.seq != first_seq:
                    raise self._forward_refused(leaf, f"events {head.seq + 1} to {first.seq - 1} are missing",
                                                first.seq)
                await self.record(GAP_EVENT, success=False, cluster=leaf, chain=leaf, from_seq=head.seq + 1,
                                  through_seq=first.seq - 1, through_hash=first_body["prev"],
                                  reason="the leaf no longer had these events when it forwarded (its retention "
                                         "removed them first)")
            elif first_body["prev"] != head.hash:
                raise self._forward_refused(leaf, f"event {first.seq} does not link to event {head.seq} held here",
                                            first.seq)
            known = await self.backend.audit_known_uids(leaf, [r.uid for r in records])
            if known:
                raise self._forward_refused(leaf, f"event uid {sorted(known)[0][:64]} is already stored under "
                                                  f"another seq (a replayed event)", records[0].seq)
            try:
                await self.backend.audit_append(leaf, head.seq, records)
            except (CompareFailed, AlreadyExists) as exc:
                raise CompareFailed(f"another root proxy stored events of leaf {leaf} at the same time ({exc}); "
                                    f"ask for the head again") from None
        return {"seq": records[-1].seq, "hash": records[-1].hash, "stored": len(records),
                "want": await self._wanted(leaf, records)}

    # ---------------------------------------------------------------- recordings
    async def _recording_event(self, cluster: str, sid: str) -> Optional[dict]:
        records = await self.backend.audit_search(Query(cluster=cluster, event="session.recording", session=sid,
                                                        limit=1))
        return json.loads(records[0].body) if records else None

    async def upload_size(self, ident: Identity, cluster: str, sid: str) -> dict:
        await self._may_upload(ident, cluster or self.cluster, sid)
        size, complete = await self.recordings.size(cluster or self.cluster, sid)
        return {"size": size, "complete": complete}

    async def upload(self, ident: Identity, cluster: str, sid: str, offset, data) -> dict:
        cluster = cluster or self.cluster
        await self._may_upload(ident, cluster, sid)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise BadParameter("offset must be a whole number of bytes")
        try:
            raw = base64.b64decode(data if isinstance(data, str) else "", validate=True)
        except (binascii.Error, ValueError):
            raise BadParameter("data must be base64") from None
        return {"size": await self.recordings.append(cluster, sid, offset, raw)}

    async def _may_upload(self, ident: Identity, cluster: str, sid: str) -> None:
        if not is_session_id(sid):
            raise BadParameter(f'"{str(sid)[:60]}" is not a session id')
        if ident.kind == "node":
            if cluster != self.cluster:
                raise AccessDenied("a node uploads recordings of its own cluster only")
        elif ident.kind == "proxy":
            await self._leaf(cluster)
        else:
            raise AccessDenied("only nodes (and root proxies, for leaves) upload recordings")

    async def complete(self, ident: Identity, cluster: str, sid: str, size, sha256, meta) -> dict:
        cluster = cluster or self.cluster
        await self._may_upload(ident, cluster, sid)
        if ident.kind == "proxy":
            # A leaf's recording is kept only as the leaf's signed chain names it (its size and SHA-256).
            event = await self._recording_event(cluster, sid)
            if (event is None or event.get("user_cluster") != self.cluster or not auditchain.is_hash(event.get("sha256"))
                    or isinstance(event.get("size"), bool) or not isinstance(event.get("size"), int)):
                raise self._forward_refused(cluster, f"recording {sid} is not named by a session.recording event of "
                                                     f"the leaf's chain for a session of a user of this cluster")
            try:
                await self.recordings.complete(cluster, sid, event["size"], event["sha256"])
            except (BadParameter, AlreadyExists) as exc:
                raise self._forward_refused(cluster, f"recording {sid}: {exc.message}") from None
            return {"sid": sid, "cluster": cluster}
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 or not auditchain.is_hash(sha256):
            raise BadParameter("size must be a number of bytes and sha256 a hex SHA-256")
        info = _recording_meta(meta)
        if info.get("node") != ident.name:
            raise AccessDenied(f"node {ident.name} uploads recordings of its own sessions only, not of node "
                               f"{str(info.get('node'))[:80]}")
        if await self.recordings.complete(cluster, sid, size, sha256) or await self._recording_event(cluster, sid) is None:
            await self.record("session.recording", sid=sid, size=size, sha256=sha256, reporter=f"node/{ident.name}",
                              **info)
        return {"sid": sid, "cluster": cluster}

    async def locate(self, ident: Identity, sid: str, cluster: str = "") -> tuple[str, dict]:
        """(cluster, recording event) of a recording IDENT may replay."""
        if not is_session_id(sid):
            raise BadParameter(f'"{str(sid)[:60]}" is not a session id; list your recordings with '
                               f"'gate play --list'")
        if cluster:
            validate_name(cluster, "cluster name")
        records = await self.backend.audit_search(Query(cluster=cluster, event="session.recording", session=sid,
                                                        limit=1))
        if not records:
            raise NotFound(await self._why_no_recording(sid))
        body = json.loads(records[0].body)
        own = (ident.kind == "user" and body.get("user") == ident.name and body.get("user_cluster") == self.cluster)
        if not own and not await self.can_read(ident):
            raise AccessDenied(f"recording {sid} is of another user's session; a role with options.audit: read may "
                               f"replay it")
        return records[0].stream, body

    async def _why_no_recording(self, sid: str) -> str:
        routes = await self.backend.audit_search(Query(cluster=self.cluster, event="session.route", session=sid,
                                                       limit=1))
        if routes:
            leaf = json.loads(routes[0].body).get("cluster")
            if leaf and leaf != self.cluster:
                return (f"session {sid} ran on cluster {leaf}, and its recording has not reached {self.cluster}: the "
                        f"leaf forwards recordings only when its trusted_cluster says forward_audit: true")
        return (f"no recording of session {sid} is stored on cluster {self.cluster} (not recorded, still running "
                f"or uploading, or removed by retention)")

    async def read_recording(self, ident: Identity, sid: str, cluster: str, offset, limit) -> dict:
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise BadParameter("offset must be a whole number of bytes")
        where, event = await self.locate(ident, sid, cluster)
        data, total = await self.recordings.read(where, sid, offset, min(int(limit or MAX_PIECE), MAX_PIECE))
        return {"sid": sid, "cluster": where, "offset": offset, "size": total,
                "data": base64.b64encode(data).decode(), "event": event}

    async def list_recordings(self, ident: Identity, params) -> dict:
        """Recordings (their session.recording events): every one for readers, else the caller's own."""
        params = dict(params)
        reader = await self.can_read(ident)
        if not reader:
            if ident.kind != "user":
                raise AccessDenied("only users and the admin list recordings")
            params["user"] = ident.name
        params["event"] = "session.recording"
        query = parse_query(params)
        records = await self.backend.audit_search(query)
        items = [{**json.loads(r.body), "cluster": r.stream} for r in records]
        if not reader:
            items = [i for i in items if i.get("user_cluster") == self.cluster]
        nxt = encode_cursor((records[-1].ts, records[-1].stream, records[-1].seq)) if len(records) == query.limit else ""
        return {"items": items, "next": nxt}

    # ---------------------------------------------------------------- retention
    async def _retention_loop(self) -> None:
        interval = self.cfg.seconds("retention_interval")
        while True:
            await asyncio.sleep(interval)
            try:
                await self.retention()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - tried again next interval
                log.warning("audit retention failed: %s", exc)

    async def retention(self) -> dict:
        """One pass: prune event streams and recordings (one auth server at a time)."""
        try:
            await self.backend.create(keys.AUDIT_RETENTION, {"holder": uuid.uuid4().hex},
                                      expires=time.time() + 600)
        except AlreadyExists:
            return {"skipped": True}
        try:
            pruned = {}
            for stream in await self.backend.audit_streams():
                count = await self._prune_stream(stream)
                if count:
                    pruned[stream] = count
            removed = await self._prune_recordings()
            return {"events": pruned, "recordings": removed}
        finally:
            try:
                await self.backend.delete(keys.AUDIT_RETENTION)
            except NotFound:
                pass

    async def _prune_stream(self, stream: str) -> int:
        bounds = await self.backend.audit_bounds(stream)
        if not bounds.last:
            return 0
        cut = 0
        max_age = self.cfg.seconds("events_max_age")
        if max_age > 0:
            cut = await self.backend.audit_last_before(stream, time.time() - max_age)
        cut = max(cut, bounds.last - self.cfg.events_max_count)
        cut = min(cut, bounds.last - 1)   # the head stays: the chain (and forwarding) goes on from it
        if stream == self.cluster:
            forwarded = await self._forwarded_upto()
            if forwarded is not None and cut > forwarded and bounds.last - forwarded <= self.cfg.forward_buffer_max:
                cut = forwarded   # the root does not have these yet: keep them for it (bounded)
        if cut < bounds.first:
            return 0
        edge = await self.backend.audit_range(stream, cut - 1, 1)
        if not edge or edge[0].seq != cut:
            return 0
        removed = 0
        for through in range(bounds.first + 9999, cut + 10000, 10000):
            removed += await self.backend.audit_prune(stream, min(through, cut))
        await self.record(PRUNE_EVENT, chain=stream, through_seq=cut, through_hash=edge[0].hash, count=removed)
        log.info("audit retention: removed %d events of %s (up to event %d)", removed, stream, cut)
        return removed

    async def _forwarded_upto(self) -> Optional[int]:
        """The seq the root confirmed, when this cluster forwards its audit; None otherwise."""
        for item in await self.backend.get_range(keys.TRUSTED_CLUSTERS_PREFIX):
            spec = item.value.get("spec") or {}
            if spec.get("forward_audit") and spec.get("enabled"):
                try:
                    return int((await self.backend.get(keys.audit_forwarded(item.value["metadata"]["name"])))
                               .value.get("seq", 0))
                except NotFound:
                    return 0
        return None

    async def _prune_recordings(self) -> dict:
        entries = sorted(await self.recordings.entries(), key=lambda e: e.mtime)
        max_age = self.cfg.seconds("recordings_max_age")
        budget = self.cfg.bytes("recordings_max_size")
        total = sum(e.size for e in entries)
        now = time.time()
        gone, freed = 0, 0
        for entry in entries:
            if (max_age > 0 and now - entry.mtime > max_age) or total > budget:
                await self.recordings.delete(entry.cluster, entry.sid)
                total -= entry.size
                gone += 1
                freed += entry.size
        if gone:
            self.svc.audit.emit("session.recording_pruned", count=gone, bytes=freed,
                                reason="audit.recordings_max_age or recordings_max_size")
            log.info("audit retention: removed %d recordings (%d bytes)", gone, freed)
        return {"count": gone, "bytes": freed}


def _recording_meta(meta) -> dict:
    """What a node says about its recording: known fields only, bounded."""
    if not isinstance(meta, dict):
        raise BadParameter("meta must be a JSON object")
    out = {}
    for key in RECORDING_META:
        value = meta.get(key)
        if value is None:
            continue
        if isinstance(value, (bool, int, float)) and not (isinstance(value, float) and math.isnan(value)):
            out[key] = value
        elif isinstance(value, str):
            out[key] = value[:1024]
        elif isinstance(value, list) and len(value) <= 64 and all(isinstance(v, str) for v in value):
            out[key] = [v[:253] for v in value]
    return out


def _runs(records: list) -> list:
    """RECORDS (in seq order) cut into runs of consecutive seqs."""
    runs, current = [], []
    for rec in records:
        if current and rec.seq != current[-1].seq + 1:
            runs.append(current)
            current = []
        current.append(rec)
    if current:
        runs.append(current)
    return runs
