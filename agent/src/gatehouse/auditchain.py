"""The hash chain of a cluster's audit log: canonical events, links, anchors, checks.

Pure (no I/O). Every cluster keeps one chain, its *stream*, named after the cluster;
at a root, each forwarding leaf's chain is kept as a stream of its own, exactly as the
leaf wrote it.

An event in the chain is the JSON object the emitter wrote (``event``, ``uid``,
``time``, ``cluster_name``, ``success``, fields) plus ``seq`` (1, 2, 3 … with no gap)
and ``prev`` (the previous event's hash; ``""`` before the first). Its text is the
canonical JSON of that object (sorted keys, no spaces, ASCII) and its hash is the
SHA-256 of the text, in hex. Changing, removing or reordering any stored event breaks
the link from the event after it.

Anchors are chain events (``audit.anchor``) that sign the hash of the event before
them with the cluster's host CA key, so a copy of the chain can be checked against
the cluster without trusting whoever holds the copy; an export to the root carries
the same kind of signature over its last link (:func:`batch_payload`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Iterable, Optional

from .clock import parse_iso
from .errors import BadParameter

#: Domain of anchor signatures and of export-batch signatures (pki.sign_blob).
ANCHOR_DOMAIN = b"gatehouse-audit-anchor-v1"
BATCH_DOMAIN = b"gatehouse-audit-batch-v1"
ANCHOR_EVENT = "audit.anchor"
#: The event a cluster writes into its own chain when retention removed the start of a stream.
PRUNE_EVENT = "audit.prune"
#: The event a root writes into its own chain when a leaf's export skipped events it no longer had.
GAP_EVENT = "audit.forward_gap"

#: Bounds on one event a member or a leaf sends (its canonical text), and on its shape.
MAX_EVENT_BYTES = 16 * 1024
MAX_FIELDS = 64
MAX_FIELD_NAME = 64
_EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){0,3}$")
_UID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_HASH = re.compile(r"^[0-9a-f]{64}$")
#: Fields the chain sets; an emitter never sends them.
CHAIN_FIELDS = ("seq", "prev")
#: Earliest and latest event times accepted (unix seconds): from 2000 to now + this much.
MAX_CLOCK_AHEAD = 3600.0
EPOCH_2000 = 946684800.0


def canonical(obj) -> str:
    """The canonical JSON text of OBJ (what is hashed and stored)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Record:
    """One chained event as storage holds it."""

    stream: str
    seq: int
    uid: str
    ts: float            # the event's time as unix seconds (for searches)
    event: str
    user: str            # "" when the event names no user
    sid: str             # session id, "" when none
    success: bool
    hash: str
    body: str            # canonical text; sha256(body) == hash

    def value(self) -> dict:
        """The event as a dict, with its hash (what searches return)."""
        out = json.loads(self.body)
        out["hash"] = self.hash
        out["stream"] = self.stream
        return out


@dataclass(frozen=True)
class Head:
    seq: int = 0
    hash: str = ""


def event_time(entry: dict) -> float:
    try:
        return parse_iso(str(entry.get("time", "")))
    except (ValueError, OverflowError):
        return 0.0


def index_fields(entry: dict) -> tuple[str, str]:
    """(user, session id) of an event, as searches see them."""
    user = entry.get("user")
    sid = entry.get("sid")
    return (user if isinstance(user, str) else ""), (sid if isinstance(sid, str) else "")


def link(stream: str, head: Head, entries: Iterable[dict]) -> list[Record]:
    """Chain ENTRIES (without seq/prev) after HEAD: the records to store, in order."""
    out = []
    seq, prev = head.seq, head.hash
    for entry in entries:
        seq += 1
        body = dict(entry)
        body["seq"], body["prev"] = seq, prev
        text = canonical(body)
        prev = digest(text)
        user, sid = index_fields(body)
        out.append(Record(stream, seq, str(body.get("uid", "")), event_time(body), str(body.get("event", "")),
                          user, sid, bool(body.get("success", True)), prev, text))
    return out


def record_from_text(stream: str, text: str) -> Record:
    """A chained event received as text (from a leaf); BadParameter unless it is canonical and bounded."""
    if not isinstance(text, str) or len(text) > MAX_EVENT_BYTES + 200:
        raise BadParameter("a forwarded event is not text of at most 16 KiB")
    try:
        body = json.loads(text, parse_constant=_no_constant)
    except ValueError:
        raise BadParameter("a forwarded event is not valid JSON (or holds NaN or Infinity)") from None
    if not isinstance(body, dict) or canonical(body) != text:
        raise BadParameter("a forwarded event is not in canonical form (sorted keys, no spaces, ASCII)")
    seq, prev = body.get("seq"), body.get("prev")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise BadParameter("a forwarded event has no valid seq")
    if not isinstance(prev, str) or (prev and not _HASH.match(prev)):
        raise BadParameter(f"forwarded event {seq} has no valid prev hash")
    check_entry({k: v for k, v in body.items() if k not in CHAIN_FIELDS}, where=f"forwarded event {seq}")
    user, sid = index_fields(body)
    return Record(stream, seq, body["uid"], event_time(body), body["event"], user, sid,
                  bool(body.get("success", True)), digest(text), text)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def check_entry(entry, where: str = "an audit event", now: Optional[float] = None) -> dict:
    """ENTRY if it is an event a member or leaf may send: bounded, named, with a uid and a sane time."""
    import time
    if not isinstance(entry, dict):
        raise BadParameter(f"{where} is not a JSON object")
    if len(entry) > MAX_FIELDS + len(CHAIN_FIELDS):
        raise BadParameter(f"{where} has more than {MAX_FIELDS} fields")
    for key in entry:
        if not isinstance(key, str) or not key or len(key) > MAX_FIELD_NAME or not key.isprintable():
            raise BadParameter(f"{where} has a field name that is not short printable text")
    name = entry.get("event")
    if not isinstance(name, str) or not _EVENT_NAME.match(name):
        raise BadParameter(f"{where} has no valid event name (lower-case words joined by dots)")
    if not isinstance(entry.get("uid"), str) or not _UID.match(entry["uid"]):
        raise BadParameter(f"{where} has no valid uid (8-64 letters, digits, '-' or '_')")
    ts = event_time(entry)
    now = time.time() if now is None else now
    if not EPOCH_2000 <= ts <= now + MAX_CLOCK_AHEAD:
        raise BadParameter(f"{where} has no valid time (an RFC 3339 UTC time between 2000 and now)")
    if not isinstance(entry.get("success", True), bool):
        raise BadParameter(f"{where} has a success field that is not true or false")
    for key in ("user", "sid", "cluster_name"):
        if key in entry and not isinstance(entry[key], str):
            raise BadParameter(f"{where} has a {key} that is not a string")
    try:
        size = len(canonical(entry))
    except (TypeError, ValueError):
        raise BadParameter(f"{where} holds values that are not plain JSON") from None
    if size > MAX_EVENT_BYTES:
        raise BadParameter(f"{where} is larger than {MAX_EVENT_BYTES // 1024} KiB")
    return entry


def fit(entry: dict, cluster: str) -> dict:
    """This process's own event made storable: plain JSON, bounded (long texts cut, marked), with the
    fields a chained event needs. Own events are never refused, so one odd value cannot hold up the log."""
    import time
    import uuid
    from .clock import now_iso
    out = _plain(entry) if isinstance(entry, dict) else {}
    out = {k: v for k, v in out.items() if k not in CHAIN_FIELDS and k not in ("hash", "stream")}
    if not isinstance(out.get("event"), str) or not _EVENT_NAME.match(out["event"]):
        out["event"] = "audit.unknown"
    if not isinstance(out.get("uid"), str) or not _UID.match(out["uid"]):
        out["uid"] = uuid.uuid4().hex
    if not EPOCH_2000 <= event_time(out) <= time.time() + MAX_CLOCK_AHEAD:
        out["time"] = now_iso()
    out["cluster_name"] = out.get("cluster_name") or cluster
    if not isinstance(out.get("success", True), bool):
        out["success"] = bool(out["success"])
    if len(canonical(out)) > MAX_EVENT_BYTES:
        for key, value in sorted(out.items(), key=lambda kv: -len(canonical(kv[1]))):
            if key in ("event", "uid", "time", "cluster_name", "success"):
                continue
            text = canonical(value)
            out[key] = text[:1024] + "…(cut)"
            if len(canonical(out)) <= MAX_EVENT_BYTES:
                break
        out["truncated"] = True
    return out


def _plain(value, depth: int = 0):
    """VALUE as plain JSON: keys as text, non-finite numbers and other objects as their text, nesting bounded."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if depth >= 16:
        return str(value)[:1024]
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    return str(value)


def is_hash(value) -> bool:
    return isinstance(value, str) and _HASH.match(value) is not None


# --------------------------------------------------------------------------- signatures
def anchor_payload(stream: str, seq: int, head_hash: str) -> bytes:
    return f"{stream}\n{seq}\n{head_hash}".encode()


def batch_payload(stream: str, first_seq: int, first_prev: str, last_seq: int, last_hash: str) -> bytes:
    """What a leaf signs for one export batch: where it starts (and what it links to) and where it ends."""
    return f"{stream}\n{first_seq}\n{first_prev}\n{last_seq}\n{last_hash}".encode()


# --------------------------------------------------------------------------- verification
@dataclass
class Walk:
    """State of a verification that goes through a stream page by page."""

    stream: str
    next_seq: int            # the seq the next record must have
    prev: str                # the hash the next record must link to
    checked: int = 0
    anchors: int = 0
    last_anchor_seq: int = 0
    problem: str = ""        # "" while every link holds
    problem_seq: int = 0

    def fail(self, seq: int, why: str) -> None:
        if not self.problem:
            self.problem, self.problem_seq = why, seq


def walk(state: Walk, records: Iterable[Record], anchor_key=None) -> Walk:
    """Check RECORDS (consecutive, in seq order) against STATE; stops at the first broken link.

    ANCHOR_KEY(fingerprint) gives the host CA public line an anchor names (None when unknown);
    without it anchors are only checked for shape."""
    for rec in records:
        if state.problem:
            break
        if rec.seq != state.next_seq:
            state.fail(state.next_seq, f"event {state.next_seq} is missing (the next stored event is {rec.seq})")
            break
        if digest(rec.body) != rec.hash:
            state.fail(rec.seq, f"event {rec.seq} was changed after it was written (its hash does not match its "
                                f"content)")
            break
        try:
            body = json.loads(rec.body)
        except ValueError:
            state.fail(rec.seq, f"event {rec.seq} is not valid JSON")
            break
        if body.get("seq") != rec.seq:
            state.fail(rec.seq, f"event {rec.seq} says it is event {body.get('seq')!r}")
            break
        if body.get("prev") != state.prev:
            state.fail(rec.seq, f"event {rec.seq} does not link to event {rec.seq - 1} (an event before it was "
                                f"changed, removed or inserted)")
            break
        if body.get("event") == ANCHOR_EVENT:
            problem = anchor_problem(state.stream, body, anchor_key)
            if problem:
                state.fail(rec.seq, f"anchor {rec.seq} {problem}")
                break
            state.anchors += 1
            state.last_anchor_seq = rec.seq
        state.checked += 1
        state.next_seq, state.prev = rec.seq + 1, rec.hash
    return state


def anchor_problem(stream: str, body: dict, anchor_key) -> str:
    """"" when an anchor event signs the link before it with a known host CA key, else why not."""
    from . import pki
    seq, head = body.get("anchored_seq"), body.get("anchored_hash")
    if seq != body.get("seq", 0) - 1 or head != body.get("prev"):
        return "does not sign the event just before it"
    if anchor_key is None:
        return ""
    public = anchor_key(body.get("key"))
    if public is None:
        return f"is signed by a key this cluster does not know ({str(body.get('key'))[:60]})"
    if not pki.verify_blob(public, ANCHOR_DOMAIN, anchor_payload(stream, seq, head), body.get("signature")):
        return "has a signature that does not verify with the cluster's host CA"
    return ""
