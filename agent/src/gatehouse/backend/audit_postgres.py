"""Audit events in PostgreSQL (backend/audit.py has the table and the rules).

The table is created on first use, under an advisory lock in one transaction, when
``to_regclass`` says it is missing: several auth servers starting at once create it
once, and a later start with a user that may not create tables works once it exists.
It has its own creation step, apart from ``MIGRATIONS`` (the key/value schema), so the
two evolve independently.

An append is one transaction: it checks that the stream's last seq is the one the
caller linked to and inserts the batch with ``ON CONFLICT DO NOTHING``; if another
writer took one of those seqs, or stored one of those uids, fewer rows go in and the
transaction is rolled back, so a chain never forks, however many auth servers write.
"""

from __future__ import annotations

from ..auditchain import Head
from ..auditquery import Query
from .audit import (COLUMNS, MAX_RANGE, AuditTable, StreamBounds, check_append, duplicate, moved, row_of,
                    search_where, to_record)

AUDIT_SCHEMA_LOCK = int.from_bytes(b"GHAUDIT1", "big")
_SCHEMA = (
    'CREATE TABLE IF NOT EXISTS gatehouse_audit_events (stream text COLLATE "C" NOT NULL, seq bigint NOT NULL,'
    ' uid text COLLATE "C" NOT NULL, ts double precision NOT NULL, event text COLLATE "C" NOT NULL,'
    ' user_name text COLLATE "C" NOT NULL, sid text COLLATE "C" NOT NULL, success boolean NOT NULL,'
    ' hash text NOT NULL, body text NOT NULL, PRIMARY KEY (stream, seq))',
    "CREATE UNIQUE INDEX IF NOT EXISTS gatehouse_audit_uid ON gatehouse_audit_events (stream, uid)",
    "CREATE INDEX IF NOT EXISTS gatehouse_audit_ts ON gatehouse_audit_events (ts, stream, seq)",
    "CREATE INDEX IF NOT EXISTS gatehouse_audit_stream_ts ON gatehouse_audit_events (stream, ts, seq)",
    "CREATE INDEX IF NOT EXISTS gatehouse_audit_user ON gatehouse_audit_events (user_name, ts, stream, seq)",
    "CREATE INDEX IF NOT EXISTS gatehouse_audit_event ON gatehouse_audit_events (event, ts, stream, seq)",
    "CREATE INDEX IF NOT EXISTS gatehouse_audit_sid ON gatehouse_audit_events (sid, ts, stream, seq)",
)
_TABLE = "gatehouse_audit_events"
_INSERT = (f"INSERT INTO {_TABLE} ({COLUMNS}) SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[],"
           f" %s::float8[], %s::text[], %s::text[], %s::text[], %s::boolean[], %s::text[], %s::text[])"
           f" ON CONFLICT DO NOTHING")


class PostgresAudit(AuditTable):
    """Mixed into PostgresBackend: uses its pool (``_run``)."""

    _audit_ready = False

    async def _audit(self, fn):
        """``await fn(conn)`` on a pool connection, once the audit table exists."""
        if not self._audit_ready:
            async def create(conn):
                found = await (await conn.execute(f"SELECT to_regclass('{_TABLE}') IS NOT NULL")).fetchone()
                if found[0]:
                    return
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_SCHEMA_LOCK,))
                    for statement in _SCHEMA:
                        await conn.execute(statement)
            await self._run(create)
            self._audit_ready = True
        return await self._run(fn)

    async def audit_head(self, stream: str) -> Head:
        async def read(conn):
            row = await (await conn.execute(
                f"SELECT seq, hash FROM {_TABLE} WHERE stream = %s ORDER BY seq DESC LIMIT 1", (stream,))).fetchone()
            return Head(int(row[0]), row[1]) if row else Head()
        return await self._audit(read)

    async def audit_append(self, stream: str, after_seq: int, records: list) -> None:
        check_append(stream, after_seq, records)
        if not records:
            return
        columns = [list(c) for c in zip(*(row_of(r) for r in records))]

        async def write(conn):
            async with conn.transaction():   # an error rolls it back
                row = await (await conn.execute(f"SELECT max(seq) FROM {_TABLE} WHERE stream = %s", (stream,))).fetchone()
                last = int(row[0] or 0)
                if last != after_seq:
                    raise moved(stream, after_seq, last)
                cur = await conn.execute(_INSERT, columns)
                if cur.rowcount != len(records):
                    # Rows after the head that are not ours: another writer took those seqs; none: a uid was stored.
                    others = await (await conn.execute(
                        f"SELECT max(seq) FROM {_TABLE} WHERE stream = %s AND seq > %s AND uid <> ALL(%s::text[])",
                        (stream, after_seq, columns[2]))).fetchone()
                    raise moved(stream, after_seq, int(others[0])) if others[0] else duplicate(stream)
        await self._audit(write)

    async def audit_known_uids(self, stream: str, uids: list) -> set:
        uids = list(uids)
        if not uids:
            return set()

        async def read(conn):
            rows = await (await conn.execute(
                f"SELECT uid FROM {_TABLE} WHERE stream = %s AND uid = ANY(%s::text[])", (stream, uids))).fetchall()
            return {r[0] for r in rows}
        return await self._audit(read)

    async def audit_range(self, stream: str, after_seq: int, limit: int) -> list:
        limit = max(0, min(int(limit), MAX_RANGE))

        async def read(conn):
            rows = await (await conn.execute(
                f"SELECT {COLUMNS} FROM {_TABLE} WHERE stream = %s AND seq > %s ORDER BY seq LIMIT %s",
                (stream, after_seq, limit))).fetchall()
            return [to_record(r) for r in rows]
        return await self._audit(read)

    async def audit_search(self, query: Query) -> list:
        where, args = search_where(query, "%s")

        async def read(conn):
            rows = await (await conn.execute(
                f"SELECT {COLUMNS} FROM {_TABLE} WHERE {where} ORDER BY ts DESC, stream DESC, seq DESC LIMIT %s",
                (*args, query.limit))).fetchall()
            return [to_record(r) for r in rows]
        return await self._audit(read)

    async def audit_bounds(self, stream: str) -> StreamBounds:
        async def read(conn):
            row = await (await conn.execute(
                f"SELECT min(seq), max(seq) FROM {_TABLE} WHERE stream = %s", (stream,))).fetchone()
            return StreamBounds(int(row[0] or 0), int(row[1] or 0))
        return await self._audit(read)

    async def audit_last_before(self, stream: str, ts: float) -> int:
        async def read(conn):
            row = await (await conn.execute(
                f"SELECT max(seq) FROM {_TABLE} WHERE stream = %s AND ts < %s", (stream, ts))).fetchone()
            return int(row[0] or 0)
        return await self._audit(read)

    async def audit_prune(self, stream: str, through_seq: int) -> int:
        async def write(conn):
            cur = await conn.execute(f"DELETE FROM {_TABLE} WHERE stream = %s AND seq <= %s", (stream, through_seq))
            return cur.rowcount
        return await self._audit(write)

    async def audit_streams(self) -> list:
        async def read(conn):
            # A recursive skip-scan over the primary key: one probe per stream.
            rows = await (await conn.execute(
                f"WITH RECURSIVE s(stream) AS ((SELECT stream FROM {_TABLE} ORDER BY stream LIMIT 1) UNION ALL"
                f" SELECT (SELECT t.stream FROM {_TABLE} t WHERE t.stream > s.stream ORDER BY t.stream LIMIT 1)"
                f" FROM s WHERE s.stream IS NOT NULL) SELECT stream FROM s WHERE stream IS NOT NULL")).fetchall()
            return [r[0] for r in rows]
        return await self._audit(read)
