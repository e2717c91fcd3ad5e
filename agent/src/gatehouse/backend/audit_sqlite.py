"""Audit events in the SQLite file (backend/audit.py has the table and the rules).

Runs on the backend's one worker thread like every other statement; the table and
its indexes are created on first use (IF NOT EXISTS, so several processes on one
file agree), and an append is one BEGIN IMMEDIATE transaction, so writers of every
process on the file are serialised and the head check cannot race.
"""

from __future__ import annotations

import sqlite3

from ..auditchain import Head
from ..auditquery import Query
from .audit import (COLUMNS, MAX_RANGE, AuditTable, StreamBounds, check_append, duplicate, moved, row_of,
                    search_where, to_record)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS audit_events (stream TEXT NOT NULL, seq INTEGER NOT NULL, uid TEXT NOT NULL,"
    " ts REAL NOT NULL, event TEXT NOT NULL, user_name TEXT NOT NULL, sid TEXT NOT NULL, success INTEGER NOT NULL,"
    " hash TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (stream, seq)) WITHOUT ROWID",
    "CREATE UNIQUE INDEX IF NOT EXISTS audit_events_uid ON audit_events (stream, uid)",
    "CREATE INDEX IF NOT EXISTS audit_events_ts ON audit_events (ts, stream, seq)",
    "CREATE INDEX IF NOT EXISTS audit_events_stream_ts ON audit_events (stream, ts, seq)",
    "CREATE INDEX IF NOT EXISTS audit_events_user ON audit_events (user_name, ts, stream, seq)",
    "CREATE INDEX IF NOT EXISTS audit_events_event ON audit_events (event, ts, stream, seq)",
    "CREATE INDEX IF NOT EXISTS audit_events_sid ON audit_events (sid, ts, stream, seq)",
)


class SQLiteAudit(AuditTable):
    """Mixed into SQLiteBackend: uses its worker thread (``_call``) and connection (``_conn``)."""

    _audit_ready = False

    def _audit_conn(self):
        """Worker thread: the connection, with the audit table created once per process."""
        conn = self._conn
        if not self._audit_ready:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'audit_events_sid'").fetchone() is None:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            self._audit_ready = True
        return conn

    async def audit_head(self, stream: str) -> Head:
        def read():
            row = self._audit_conn().execute(
                "SELECT seq, hash FROM audit_events WHERE stream = ? ORDER BY seq DESC LIMIT 1", (stream,)).fetchone()
            return Head(row[0], row[1]) if row else Head()
        return await self._call(read)

    async def audit_append(self, stream: str, after_seq: int, records: list) -> None:
        check_append(stream, after_seq, records)
        if not records:
            return

        def write():
            conn = self._audit_conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT MAX(seq) FROM audit_events WHERE stream = ?", (stream,)).fetchone()
                last = row[0] or 0
                if last != after_seq:
                    raise moved(stream, after_seq, last)
                try:
                    conn.executemany(f"INSERT INTO audit_events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                     [row_of(r) for r in records])
                except sqlite3.IntegrityError:
                    raise duplicate(stream) from None
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        await self._call(write)

    async def audit_known_uids(self, stream: str, uids: list) -> set:
        uids = list(uids)

        def read():
            conn, found = self._audit_conn(), set()
            for i in range(0, len(uids), 500):
                part = uids[i:i + 500]
                marks = ",".join("?" * len(part))
                found.update(r[0] for r in conn.execute(
                    f"SELECT uid FROM audit_events WHERE stream = ? AND uid IN ({marks})", (stream, *part)))
            return found
        return await self._call(read) if uids else set()

    async def audit_range(self, stream: str, after_seq: int, limit: int) -> list:
        limit = max(0, min(int(limit), MAX_RANGE))

        def read():
            rows = self._audit_conn().execute(
                f"SELECT {COLUMNS} FROM audit_events WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?",
                (stream, after_seq, limit)).fetchall()
            return [to_record(r) for r in rows]
        return await self._call(read)

    async def audit_search(self, query: Query) -> list:
        where, args = search_where(query, "?")

        def read():
            rows = self._audit_conn().execute(
                f"SELECT {COLUMNS} FROM audit_events WHERE {where} ORDER BY ts DESC, stream DESC, seq DESC LIMIT ?",
                (*args, query.limit)).fetchall()
            return [to_record(r) for r in rows]
        return await self._call(read)

    async def audit_bounds(self, stream: str) -> StreamBounds:
        def read():
            row = self._audit_conn().execute(
                "SELECT MIN(seq), MAX(seq) FROM audit_events WHERE stream = ?", (stream,)).fetchone()
            return StreamBounds(row[0] or 0, row[1] or 0)
        return await self._call(read)

    async def audit_last_before(self, stream: str, ts: float) -> int:
        def read():
            row = self._audit_conn().execute(
                "SELECT MAX(seq) FROM audit_events WHERE stream = ? AND ts < ?", (stream, ts)).fetchone()
            return row[0] or 0
        return await self._call(read)

    async def audit_prune(self, stream: str, through_seq: int) -> int:
        def write():
            conn = self._audit_conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                count = conn.execute("DELETE FROM audit_events WHERE stream = ? AND seq <= ?",
                                     (stream, through_seq)).rowcount
                conn.execute("COMMIT")
                return count
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return await self._call(write)

    async def audit_streams(self) -> list:
        def read():
            # A skip-scan over the primary key: one probe per stream, however many events each holds.
            out, last = [], ""
            conn = self._audit_conn()
            while True:
                row = conn.execute("SELECT stream FROM audit_events WHERE stream > ? ORDER BY stream LIMIT 1",
                                   (last,)).fetchone()
                if row is None:
                    return out
                out.append(row[0])
                last = row[0]
        return await self._call(read)
