"""The audit-event part of the storage interface: chained events, indexed for searches.

Audit events are not key/value items: they are append-only, far more numerous (a
million is ordinary), searched by cluster, user, event, session and time, and never
watched. So both backends keep them in a table of their own (SQLite ``audit_events``,
PostgreSQL ``gatehouse_audit_events``), created on first use, outside the key/value
revisions and change feed. One row per event of a *stream* (a cluster's chain):

    stream, seq        primary key; seq 1, 2, 3 … per stream, with no gap
    uid                the event's id, unique per stream (a resent event is a duplicate)
    ts                 the event's time (unix seconds)
    event, user, sid   what searches filter on
    success, hash      the outcome; the chain hash (auditchain.py)
    body               the canonical JSON text, whose SHA-256 is ``hash``

Indexes: (ts, stream, seq), and (stream | user | event | sid, ts, stream, seq), so each
search filter with a time range and the newest-first order is an index range scan.

:meth:`AuditTable.audit_append` is the only write and it is conditional: it stores the
records only if they continue the stream exactly where the caller read its head, and
none of their uids is stored yet. Several auth servers appending to one stream
therefore keep it linear: the loser of a race re-reads the head and links again
(auth/audit_store.py). Both implementations pass ``test_backend.py``'s audit suite.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Optional

from ..auditchain import Head, Record
from ..auditquery import Query
from ..errors import AlreadyExists, BadParameter, CompareFailed
from .base import KEY_MAX

#: Records one audit_append may take (callers batch above this).
MAX_APPEND = 5000
#: Records one audit_range may return.
MAX_RANGE = 10000


@dataclass(frozen=True)
class StreamBounds:
    first: int = 0   # lowest stored seq (0: the stream is empty)
    last: int = 0    # highest stored seq


class AuditTable(abc.ABC):
    """Mixed into every Backend."""

    @abc.abstractmethod
    async def audit_head(self, stream: str) -> Head:
        """Seq and hash of the stream's last event (Head(0, "") when it has none)."""

    @abc.abstractmethod
    async def audit_append(self, stream: str, after_seq: int, records: list) -> None:
        """Store RECORDS (seq after_seq+1, +2 …) as one transaction, only if AFTER_SEQ is the stream's last
        seq (else CompareFailed) and no record's uid is stored (else AlreadyExists); all or nothing."""

    @abc.abstractmethod
    async def audit_known_uids(self, stream: str, uids: list) -> set:
        """Which of UIDS the stream already holds."""

    @abc.abstractmethod
    async def audit_range(self, stream: str, after_seq: int, limit: int) -> list:
        """Records of STREAM with seq > AFTER_SEQ, in seq order, at most LIMIT."""

    @abc.abstractmethod
    async def audit_search(self, query: Query) -> list:
        """Records matching QUERY, newest first (time, then stream and seq, descending), at most query.limit,
        after query.after when it is set."""

    @abc.abstractmethod
    async def audit_bounds(self, stream: str) -> StreamBounds:
        """First and last seq stored for STREAM."""

    @abc.abstractmethod
    async def audit_last_before(self, stream: str, ts: float) -> int:
        """The highest seq of STREAM whose event time is before TS (0 when none)."""

    @abc.abstractmethod
    async def audit_prune(self, stream: str, through_seq: int) -> int:
        """Remove the events of STREAM with seq <= THROUGH_SEQ (the start of the chain); returns how many."""

    @abc.abstractmethod
    async def audit_streams(self) -> list:
        """The names of the streams that hold events."""


# --------------------------------------------------------------------------- shared helpers
def check_append(stream: str, after_seq: int, records: list) -> None:
    if not records:
        return
    if len(records) > MAX_APPEND:
        raise BadParameter(f"audit_append takes at most {MAX_APPEND} records at once; append in batches")
    for i, rec in enumerate(records):
        if not isinstance(rec, Record) or rec.stream != stream or rec.seq != after_seq + 1 + i:
            raise BadParameter(f"audit record {i} does not continue stream {stream!r} at seq {after_seq + 1 + i}")
    uids = [r.uid for r in records]
    if len(set(uids)) != len(uids):
        raise BadParameter("an audit_append batch holds the same uid twice; drop the duplicate")


def moved(stream: str, after_seq: int, last: int) -> CompareFailed:
    return CompareFailed(f"audit stream {stream!r} moved on (its last event is {last}, not {after_seq}); read its head "
                         f"again and link the events after it")


def duplicate(stream: str) -> AlreadyExists:
    return AlreadyExists(f"audit stream {stream!r} already holds an event with one of these uids; drop the events it "
                         f"holds and append the rest")


def search_where(query: Query, param) -> tuple[str, list]:
    """The WHERE clause (without "WHERE") and its arguments for QUERY; PARAM is the placeholder ("?" or "%s")."""
    clauses, args = [], []
    for column, value in (("stream", query.cluster), ("user_name", query.user), ("sid", query.session)):
        if value:
            clauses.append(f"{column} = {param}")
            args.append(value)
    if query.event_prefix:
        clauses.append(f"event >= {param} AND event < {param}")
        args += [query.event_prefix, query.event_prefix + KEY_MAX]
    elif query.event:
        clauses.append(f"event = {param}")
        args.append(query.event)
    if query.since is not None:
        clauses.append(f"ts >= {param}")
        args.append(query.since)
    if query.until is not None:
        clauses.append(f"ts <= {param}")
        args.append(query.until)
    if query.after is not None:
        clauses.append(f"(ts, stream, seq) < ({param}, {param}, {param})")
        args += list(query.after)
    return (" AND ".join(clauses) or "TRUE"), args


COLUMNS = "stream, seq, uid, ts, event, user_name, sid, success, hash, body"


def to_record(row) -> Record:
    stream, seq, uid, ts, event, user, sid, success, hsh, body = row
    return Record(stream, int(seq), uid, float(ts), event, user, sid, bool(success), hsh, body)


def row_of(rec: Record) -> tuple:
    return (rec.stream, rec.seq, rec.uid, rec.ts, rec.event, rec.user, rec.sid, rec.success, rec.hash, rec.body)


def optional_int(value) -> Optional[int]:
    return None if value is None else int(value)
