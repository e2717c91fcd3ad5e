"""Shared storage in PostgreSQL (psycopg 3, asyncio), for several auth servers.

Tables (created and migrated by :func:`migrate`): ``gatehouse_items`` (the data),
``gatehouse_revision`` (one row: the global revision counter), ``gatehouse_events``
(the last ``history`` writes) and ``gatehouse_schema_version``.

Revisions and order. Every write transaction bumps the counter row
(``UPDATE ... SET revision = revision + n RETURNING revision``). The row lock that
takes serialises the writers of every process until they commit, so revisions are
gap-free and commit in revision order: whoever sees revision N committed sees every
revision below it. Each write inserts its events in the same transaction, so
"events after N" is one indexed query that can never skip or reorder a write.
LISTEN/NOTIFY only wakes other processes up to run that query; a lost notification
(reconnect) costs latency, never an event. A process that fell further behind than
the kept history gets a gap, reported the way ChangeFeed.gap does.

Short lock. The lock is held only while the server runs one pipelined batch, never
across a client round trip: a write with conditions first reads the rows they
depend on (no lock), evaluates them here, then sends one batch -- BEGIN, lock the
counter, check that those rows are unchanged (if not, the rest of the batch does
nothing and we re-read and re-evaluate), bump the counter, write items and events,
NOTIFY, COMMIT. Item revisions are computed by the server from the bumped
counter. A plain put needs no read, so it is one round trip; a compare-and-swap
that is going to fail never touches the lock. After a few conflicts in a row a
write takes the lock before reading, so a hot key cannot starve it.

Connections: a small pool for requests plus one LISTEN connection, which notices
when the server goes away and reconnects with backoff. Requests on a dead
connection raise ConnectionProblem; the pool drops idle connections the server has
closed, and a request that fails before it could have written anything is retried
once on a fresh connection, so the first request after the server returns works.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import secrets
import select
import time
from typing import Awaitable, Callable, Optional

from ..errors import BadParameter, ConnectionProblem, GatehouseError
from .audit_postgres import PostgresAudit
from .base import (KEY_MAX, Backend, ChangeFeed, Event, Item, Op, Watcher, apply_op, check_expires, check_key,
                   check_op, check_prefix, encode_value, normalise_prefixes, not_found)

try:
    import psycopg
    from psycopg import pq
    from psycopg.conninfo import conninfo_to_dict
except ImportError:  # reported when someone configures PostgreSQL storage
    psycopg = None

log = logging.getLogger("gatehouse.backend")

# Writes kept in gatehouse_events for other processes to catch up from. They catch
# up on every NOTIFY, so this only has to cover reconnects and slow processes.
EVENTS_KEEP = 10000
CHANNEL = "gatehouse_changes"
SCHEMA_LOCK = int.from_bytes(b"GATEHOUS", "big")   # pg_advisory_xact_lock key for migrations
DEFAULT_CONNECT_TIMEOUT = 10
OPTIMISTIC_TRIES = 3   # conflicts in a row before a write locks first
MAX_GROUP = 256        # atomic() calls committed together at most (see _commit_pending)

# Entry i migrates the schema from version i to i+1. Never edit a released entry:
# append a new one.
MIGRATIONS: list = [
    (
        'CREATE TABLE gatehouse_items (key text COLLATE "C" PRIMARY KEY, value text NOT NULL,'
        ' revision bigint NOT NULL, expires double precision)',
        "CREATE INDEX gatehouse_items_expires ON gatehouse_items (expires) WHERE expires IS NOT NULL",
        "CREATE TABLE gatehouse_revision (only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),"
        " revision bigint NOT NULL)",
        "INSERT INTO gatehouse_revision (revision) VALUES (0)",
        'CREATE TABLE gatehouse_events (revision bigint PRIMARY KEY, type text NOT NULL,'
        ' key text COLLATE "C" NOT NULL, value text, expires double precision)',
    ),
]

_VERSION_TABLE = ("CREATE TABLE IF NOT EXISTS gatehouse_schema_version (only_row boolean PRIMARY KEY"
                  " DEFAULT true CHECK (only_row), version integer NOT NULL)")
_COUNTER = "SELECT revision FROM gatehouse_revision"
_LOCK = "SELECT revision FROM gatehouse_revision FOR UPDATE"
_ROW = "SELECT key, value, revision, expires FROM gatehouse_items"
# One statement, so one snapshot: the counter and every event up to it.
_EVENTS_SINCE = ("SELECT c.revision, e.revision, e.type, e.key, e.value, e.expires"
                 " FROM gatehouse_revision c LEFT JOIN gatehouse_events e"
                 " ON e.revision > %s AND e.revision <= c.revision ORDER BY e.revision")
# The write batch is BEGIN, _LOCK, _WRITE, _BACKLOG, COMMIT. _WRITE is one statement
# (fewer statements, less per-statement overhead) run after the lock, so its
# snapshot holds every earlier commit. It bumps the counter only when {check} holds
# (the rows the write was computed from are unchanged) and everything else hangs
# off that bump: a conflict writes nothing and needs no error, which would abort
# the pipeline. "b.revision - n + rel" turns a write's 1-based position in the
# transaction into its revision. The NOTIFY payload is "revision token".
_WRITE = """
WITH bump AS (
  UPDATE gatehouse_revision SET revision = revision + %(n)s WHERE {check} RETURNING revision
), put AS (
  INSERT INTO gatehouse_items (key, value, revision, expires)
  SELECT u.key, u.value, b.revision - %(n)s + u.rel, u.expires FROM bump b,
    unnest(%(put_keys)s::text[], %(put_values)s::text[], %(put_rels)s::bigint[],
           %(put_expires)s::float8[]) AS u(key, value, rel, expires)
  ON CONFLICT (key) DO UPDATE
    SET value = EXCLUDED.value, revision = EXCLUDED.revision, expires = EXCLUDED.expires
), removed AS (
  DELETE FROM gatehouse_items WHERE key = ANY(%(delete_keys)s::text[]) AND EXISTS (SELECT 1 FROM bump)
), events AS (
  INSERT INTO gatehouse_events (revision, type, key, value, expires)
  SELECT b.revision - %(n)s + u.rel, u.type, u.key, u.value, u.expires FROM bump b,
    unnest(%(event_rels)s::bigint[], %(event_types)s::text[], %(event_keys)s::text[],
           %(event_values)s::text[], %(event_expires)s::float8[]) AS u(rel, type, key, value, expires)
  WHERE u.rel > %(n)s - %(history)s   -- what pruned would delete at once (it cannot see these rows)
), pruned AS (   -- what just left the history (earlier writes pruned the rest); the lower
                 -- bound makes this an index range scan rather than a full scan
  DELETE FROM gatehouse_events WHERE revision BETWEEN
    (SELECT revision - %(history)s - %(n)s - 1000 FROM bump) AND (SELECT revision - %(history)s FROM bump)
)
SELECT b.revision, pg_notify(%(channel)s, b.revision || ' ' || %(token)s)::text FROM bump b
"""
_UNCHANGED = ("(SELECT md5(coalesce(string_agg(key || ' ' || revision, ',' ORDER BY key), ''))"
              " = %(digest)s FROM ({load}) AS loaded)")
_WRITE_UNCHECKED = _WRITE.format(check="true")
_BACKLOG = ("SELECT e.revision, e.type, e.key, e.value, e.expires FROM gatehouse_events e,"
            " gatehouse_revision c WHERE e.revision > %(seen)s AND e.revision <= c.revision - %(n)s"
            " ORDER BY e.revision")


# --------------------------------------------------------------------------- conn strings

_URI_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)[^/\s]*@", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_QUOTED = re.compile(r'"([^"]*)"')


def redact(text: str, conn_string: Optional[str] = None) -> str:
    """``text`` with every password masked: ``password=...`` pairs, the password part of
    ``postgresql://user:PASS@host`` URIs and, when ``conn_string`` parses, its password
    wherever it appears."""
    text = _URI_PASSWORD.sub(r"\1***@", str(text))
    text = _KEYWORD_PASSWORD.sub(r"\1***", text)
    secret = _password_of(conn_string) if conn_string else None
    if secret:
        text = text.replace(secret, "***")
    return text


def _password_of(conn_string: str) -> Optional[str]:
    try:
        return conninfo_to_dict(conn_string).get("password") or None
    except Exception:
        return None


def describe_target(conn_string: str) -> str:
    """'database "gh" at 10.0.0.5:5432, 10.0.0.6:5432' for messages (never the password)."""
    try:
        params = conninfo_to_dict(conn_string)
    except Exception:
        return "the configured PostgreSQL server"
    hosts = (params.get("host") or params.get("hostaddr") or "").split(",")
    ports = (params.get("port") or "").split(",")
    places = []
    for i, host in enumerate(hosts):
        port = ports[i] if i < len(ports) else ports[-1]
        places.append(f"{host or 'the local socket'}:{port or 5432}")
    db = params.get("dbname")
    return (f'database "{db}" at ' if db else "database at ") + ", ".join(places)


def _parse_error(err: Exception, conn_string: str) -> str:
    """A libpq parse error without echoing secrets. libpq quotes the word it choked on,
    which may be a piece of a password (``password=a b`` reads "b" as an option), so a
    quoted word that occurs after "password" is masked, and otherwise kept only when it
    is "=", an option name or written as a key (``word=``, ``?word``, ``&word``)."""
    lowered = conn_string.lower()
    secret_part = conn_string[lowered.index("password"):] if "password" in lowered else ""

    def keep(match):
        word = match.group(1)
        if word != "=" and word in secret_part:
            return '"***"'
        if word == "=" or word in _option_names() or re.search(
                rf"((^|\s){re.escape(word)}\s*=)|([?&]{re.escape(word)}($|[=&]))", conn_string):
            return match.group(0)
        return '"***"'
    return redact(_QUOTED.sub(keep, _first_line(err)), conn_string)


def _option_names() -> set:
    try:
        return {opt.keyword.decode() for opt in pq.Conninfo.get_defaults()}
    except Exception:
        return set()


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__).rstrip(".")


def check_conn_string(conn_string) -> str:
    """BadParameter unless ``conn_string`` is a libpq key=value string or URI."""
    if psycopg is None:
        raise GatehouseError("PostgreSQL storage needs the psycopg package; install it with "
                             "pip install 'psycopg[binary]>=3.2,<4'")
    if not isinstance(conn_string, str) or not conn_string.strip():
        raise BadParameter("storage.conn_string is missing or not a string; set it to a PostgreSQL "
                           "connection string such as 'host=db.example dbname=gatehouse user=gatehouse'")
    try:
        conninfo_to_dict(conn_string)
    except Exception as err:
        raise BadParameter(f"storage.conn_string is not a valid PostgreSQL connection string "
                           f"({_parse_error(err, conn_string)}); use key=value pairs or a "
                           f"postgresql:// URI") from None
    return conn_string


# --------------------------------------------------------------------------- errors

class _OutcomeUnknown(Exception):
    """The connection broke while COMMIT may have been on its way."""

    def __init__(self, err: BaseException):
        super().__init__(str(err))
        self.err = err


class _Conflict(Exception):
    """Rows a conditional write depends on changed between reading and writing."""


def _connection_lost(conn, err: BaseException) -> bool:
    return conn is None or conn.closed or conn.broken or isinstance(err, psycopg.InterfaceError)


# --------------------------------------------------------------------------- connections

def _looks_dead(conn) -> bool:
    """An idle connection has nothing to read; if it has, the server closed it (restart,
    pg_terminate_backend) and said so. Costs no round trip."""
    try:
        poller = select.poll()     # not select(): a busy proxy has descriptors above 1024
        poller.register(conn.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class _Pool:
    """At most ``size`` request connections; idle ones are reused, dead ones dropped."""

    def __init__(self, connect: Callable[[], Awaitable], size: int):
        self._connect = connect
        self._idle: list = []
        self._slots = asyncio.Semaphore(size)
        self._all: set = set()

    async def acquire(self):
        await self._slots.acquire()
        try:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed and not conn.broken and not _looks_dead(conn):
                    return conn
                await self._drop(conn)
            conn = await self._connect()
            self._all.add(conn)
            return conn
        except BaseException:
            self._slots.release()
            raise

    async def release(self, conn) -> None:
        try:
            if (conn.closed or conn.broken
                    or conn.info.transaction_status != pq.TransactionStatus.IDLE):
                await self._drop(conn)   # never hand out a connection mid-transaction
            else:
                self._idle.append(conn)
        finally:
            self._slots.release()

    async def discard_idle(self) -> None:
        """After an outage every idle connection is dead: connect afresh."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._drop(conn)

    async def _drop(self, conn) -> None:
        self._all.discard(conn)
        with contextlib.suppress(Exception):
            await conn.close()

    async def close(self) -> None:
        self._idle = []
        for conn in list(self._all):
            await self._drop(conn)


async def _rollback(conn) -> None:
    """End a transaction; a dead connection is dropped on release anyway."""
    with contextlib.suppress(psycopg.Error):
        await conn.execute("ROLLBACK")


def _pipeline(conn):
    """Send a batch of statements in one round trip where libpq supports it."""
    return conn.pipeline() if psycopg.Pipeline.is_supported() else contextlib.nullcontext()


# --------------------------------------------------------------------------- transactions

class _Load:
    """The rows a write depends on: ``sql`` (a SELECT of key, value, revision, expires
    with named parameters) and ``params(now)``, a dict. They are read before the
    write and checked unchanged inside it."""

    def __init__(self, where: str, params: Callable[[float], dict]):
        self.sql = f"{_ROW} WHERE {where}"
        self.params = params
        self.write_sql = _WRITE.format(check=_UNCHANGED.format(load=self.sql))

    @staticmethod
    def digest(rows: list) -> str:
        """What _UNCHANGED computes on the server for the same rows."""
        text = ",".join(f"{key} {rev}" for key, _unused1, rev, _unused2 in sorted(rows, key=lambda r: r[0]))
        return hashlib.md5(text.encode("utf-8")).hexdigest()


class _Txn:
    """Evaluates one write on an overlay of the loaded rows.

    Revisions are not known until the server bumps the counter, so written items
    carry ``-position`` (1-based) until :meth:`settle` gives them their revision.
    """

    def __init__(self, now: float, rows: list):
        self.now = now
        self.writes: list = []        # (type, key, item or None, text or None)
        self.expired: list = []       # loaded keys whose item has expired (the reaper's work)
        self._items: dict = {}
        for key, text, rev, expires in rows:
            if expires is None or expires > now:
                self._items[key] = Item(key, json.loads(text), rev, expires)
            else:
                self.expired.append(key)

    def current(self, key: str) -> Optional[Item]:
        return self._items.get(key)

    def savepoint(self) -> tuple:
        """The state to go back to when one write of a group commit fails (see rollback)."""
        return len(self.writes), dict(self._items)

    def rollback(self, savepoint: tuple) -> None:
        count, items = savepoint
        del self.writes[count:]
        self._items = items

    def keys(self) -> list:
        return sorted(self._items)

    def write(self, key: str, text: str, expires: Optional[float]) -> Item:
        item = Item(key, json.loads(text), -(len(self.writes) + 1), expires)
        self._items[key] = item
        self.writes.append(("put", key, item, text))
        return item

    def remove(self, key: str) -> None:
        self._items.pop(key, None)
        self.writes.append(("delete", key, None, None))

    def params(self) -> dict:
        """_WRITE's parameters for these writes: each key's final state, every event."""
        final: dict = {}
        for rel, (kind, key, item, text) in enumerate(self.writes, 1):
            final[key] = (rel, kind, item, text)
        puts = [(key, rel, item, text) for key, (rel, kind, item, text) in final.items() if kind == "put"]
        return {
            "n": len(self.writes),
            "put_keys": [p[0] for p in puts], "put_values": [p[3] for p in puts],
            "put_rels": [p[1] for p in puts], "put_expires": [p[2].expires for p in puts],
            "delete_keys": [key for key, (_unused1, kind, _unused2, _unused3) in final.items() if kind == "delete"],
            "event_rels": list(range(1, len(self.writes) + 1)),
            "event_types": [w[0] for w in self.writes], "event_keys": [w[1] for w in self.writes],
            "event_values": [w[3] for w in self.writes],
            "event_expires": [w[2].expires if w[2] else None for w in self.writes],
        }

    def settle(self, base: int):
        """The committed events, and a function giving a result its real revision."""
        def real(value):
            if isinstance(value, Item) and value.revision < 0:
                return dataclasses.replace(value, revision=base - value.revision)
            return value
        events = [Event(kind, key, real(item), base + rel)
                  for rel, (kind, key, item, _unused) in enumerate(self.writes, 1)]
        return events, real


def _settled(result, real):
    """RESULT with every Item in it (also in nested lists: a group commit's results) given its revision;
    errors and other values unchanged."""
    if isinstance(result, list):
        return [_settled(r, real) for r in result]
    return real(result)


def _conditional_keys(ops: list) -> list:
    """Keys whose stored state decides the outcome: those whose first op is not a put
    (later ops on a key only see what earlier ops in the same call wrote)."""
    first: dict = {}
    for op in ops:
        first.setdefault(op.key, op.kind)
    return sorted(key for key, kind in first.items() if kind != "put")


def _rows_to_events(rows: list) -> list:
    return [Event(kind, key, Item(key, json.loads(text), rev, expires) if kind == "put" else None, rev)
            for rev, kind, key, text, expires in rows]


def _contiguous(events: list, seen: int, upto: int) -> list:
    """``events`` if they are every revision in (seen, upto], else [] (history was pruned:
    publishing none up to ``upto`` reports the gap)."""
    return events if upto <= seen or len(events) == upto - seen else []


# --------------------------------------------------------------------------- schema

async def _schema_version(conn) -> Optional[int]:
    """The stored schema version, or None when there is no Gatehouse schema yet."""
    cur = await conn.execute("SELECT to_regclass('gatehouse_schema_version') IS NOT NULL")
    if not (await cur.fetchone())[0]:
        return None
    row = await (await conn.execute("SELECT version FROM gatehouse_schema_version")).fetchone()
    return row[0] if row else None


def _newer_schema(version: int, target: str) -> GatehouseError:
    return GatehouseError(f"the PostgreSQL {target} holds Gatehouse storage schema version {version}, "
                          f"newer than version {len(MIGRATIONS)} this agent knows; upgrade Gatehouse "
                          f"on this host to the release that wrote it")


async def migrate(conn, target: str) -> int:
    """Bring the schema to ``len(MIGRATIONS)``; refuse a newer one. Returns the version.

    Needs CREATE rights only when there is something to migrate; several auth
    servers starting at once serialise on an advisory lock, in one transaction.
    """
    latest = len(MIGRATIONS)
    version = await _schema_version(conn)
    if version == latest:
        return version
    if version is not None and version > latest:
        raise _newer_schema(version, target)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        await conn.execute(_VERSION_TABLE)
        row = await (await conn.execute("SELECT version FROM gatehouse_schema_version")).fetchone()
        version = row[0] if row else 0
        if version > latest:
            raise _newer_schema(version, target)
        for number in range(version, latest):
            for statement in MIGRATIONS[number]:
                await conn.execute(statement)
        if row is None:
            await conn.execute("INSERT INTO gatehouse_schema_version (version) VALUES (%s)", (latest,))
        else:
            await conn.execute("UPDATE gatehouse_schema_version SET version = %s", (latest,))
    if version < latest:
        log.info("storage schema in the PostgreSQL %s migrated from version %d to %d",
                 target, version, latest)
    return latest


# --------------------------------------------------------------------------- backend

class PostgresBackend(PostgresAudit, Backend):
    """Storage in PostgreSQL; open with ``await PostgresBackend.open(conn_string)``.

    ``listen=False`` (tests) turns NOTIFY wake-ups off: the instance then catches up
    with other processes' writes only every ``poll_interval`` or when asked.
    """

    def __init__(self, conn_string: str, *, pool_size: int = 10, reap_interval: float = 2.0,
                 poll_interval: float = 5.0, listen: bool = True, history: Optional[int] = None,
                 watcher_queue: int = 4096, reconnect_max: float = 2.0):
        self.conn_string = check_conn_string(conn_string)
        self.target = describe_target(conn_string)
        self.reap_interval = reap_interval
        self.poll_interval = poll_interval   # catch-up without a NOTIFY (safety net, or listen=False)
        self.listen = listen
        self.history = history or EVENTS_KEEP
        self.reconnect_max = reconnect_max
        self._watcher_queue = watcher_queue
        self._token = secrets.token_hex(6)   # marks our own NOTIFYs: we publish those ourselves
        self._pool = _Pool(self._connect, pool_size)
        self._feed: Optional[ChangeFeed] = None
        self._listen_conn = None
        self._tasks: set = set()
        self._connecting: set = set()     # connection attempts in flight
        self._pending: list = []          # atomic() calls waiting for the next group commit
        self._committer: Optional[asyncio.Task] = None
        self._closed = True

    @classmethod
    async def open(cls, conn_string: str, **options) -> "PostgresBackend":
        backend = cls(conn_string, **options)
        await backend._start()
        return backend

    def __repr__(self) -> str:
        return f"PostgresBackend({self.target!r})"

    # ------------------------------------------------------------------ connections

    async def _connect(self):
        """A new autocommit connection. Shielded: a caller cancelled mid-handshake must not
        leave a half-open session behind (the server keeps it for authentication_timeout,
        and DROP DATABASE waits for it); the orphan is closed once it is up, and close()
        waits for that."""
        task = asyncio.ensure_future(self._new_connection())
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_close_orphan)
            raise

    async def _new_connection(self):
        params = conninfo_to_dict(self.conn_string)
        # Statements are prepared after a few uses (psycopg's default): that needs a
        # direct or session-pooled connection, which LISTEN needs anyway.
        extra = {"autocommit": True}
        if "connect_timeout" not in params:
            extra["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
        if "application_name" not in params:
            extra["application_name"] = "gatehouse"
        try:
            conn = await psycopg.AsyncConnection.connect(self.conn_string, **extra)
        except psycopg.Error as err:
            raise self._unreachable(err) from None
        try:
            # A process stuck inside a transaction must not hold the revision lock forever.
            await conn.execute("SET idle_in_transaction_session_timeout = '60s'")
        except psycopg.Error as err:
            await conn.close()
            raise self._unreachable(err) from None
        return conn

    def _unreachable(self, err: BaseException) -> ConnectionProblem:
        return ConnectionProblem(
            f"cannot reach the PostgreSQL {self.target} ({redact(_first_line(err), self.conn_string)}); "
            f"check that the server runs and accepts this host, and the host, port, user, password "
            f"and TLS settings in storage.conn_string")

    def _failed(self, err: BaseException) -> GatehouseError:
        return GatehouseError(
            f"storage operation on the PostgreSQL {self.target} failed "
            f"({redact(_first_line(err), self.conn_string)}); check the PostgreSQL server log")

    async def _start(self) -> None:
        conn = await self._connect()
        try:
            encoding = conn.info.parameter_status("server_encoding")
            if encoding != "UTF8":
                raise GatehouseError(f"the PostgreSQL {self.target} uses encoding {encoding}; create "
                                     f"it with ENCODING 'UTF8' so every storage key fits")
            await migrate(conn, self.target)
            row = await (await conn.execute(_COUNTER)).fetchone()
            if self.listen:
                await conn.execute(f"LISTEN {CHANNEL}")
        except psycopg.errors.InsufficientPrivilege as err:
            await conn.close()
            raise GatehouseError(
                f"the PostgreSQL user may not create Gatehouse's tables in the {self.target} "
                f"({redact(_first_line(err), self.conn_string)}); make it the database owner or "
                f"grant it CREATE on the schema") from None
        except psycopg.Error as err:
            await conn.close()
            raise self._failed(err) from None
        except BaseException:
            await conn.close()
            raise
        self._listen_conn = conn
        self._feed = ChangeFeed(row[0], watcher_queue=self._watcher_queue)
        self._closed = False
        self._spawn(self._listen_loop() if self.listen else self._poll_loop())
        self._spawn(self._reap_loop())

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()

    def _closed_error(self) -> GatehouseError:
        return GatehouseError(f"the storage backend ({self.target}) is closed; open it again")

    async def _run(self, fn: Callable):
        """``await fn(conn)`` on a pool connection, mapping psycopg errors to ours.

        A connection that turns out dead before anything could be written (idle
        across a server restart) is replaced and the call retried once.
        """
        self._check_open()
        for attempt in (1, 2):
            conn = await self._pool.acquire()
            try:
                return await fn(conn)
            except _OutcomeUnknown as unknown:
                self._spawn(self._catch_up_quietly())   # our own NOTIFY is ignored: look
                raise ConnectionProblem(
                    f"lost the connection to the PostgreSQL {self.target} while committing a write "
                    f"({redact(_first_line(unknown.err), self.conn_string)}); it may or may not have "
                    f"been applied, so read the item again before retrying") from None
            except psycopg.Error as err:
                if not _connection_lost(conn, err):
                    raise self._failed(err) from None
                await self._pool.discard_idle()
                if attempt == 2:
                    raise self._unreachable(err) from None
            finally:
                await self._pool.release(conn)

    # ------------------------------------------------------------------ change feed

    def _deliver(self, events: list, revision: int) -> None:
        if self._feed is not None:
            self._feed.publish(events, revision)

    async def _catch_up(self) -> int:
        """Publish every write after the feed's revision; returns the current revision."""
        async def read(conn):
            seen = self._feed.revision
            rows = await (await conn.execute(_EVENTS_SINCE, (seen,))).fetchall()
            counter = rows[0][0] if rows else seen
            events = _rows_to_events([row[1:] for row in rows if row[1] is not None])
            return _contiguous(events, seen, counter), counter
        events, counter = await self._run(read)
        self._deliver(events, counter)
        return counter

    async def _catch_up_quietly(self) -> None:
        with contextlib.suppress(Exception):
            await self._catch_up()

    # ------------------------------------------------------------------ writes

    async def _write(self, load: Optional[_Load], apply: Callable[[_Txn], object]):
        """Evaluate ``apply`` on the rows ``load`` selects and commit what it wrote.

        Optimistic first (read without the lock, verify in the write batch); after
        OPTIMISTIC_TRIES conflicts in a row, lock first and read under the lock.
        """
        async def run(conn):
            for attempt in range(1, OPTIMISTIC_TRIES + 2):
                try:
                    return await self._attempt(conn, load, apply, locked=attempt > OPTIMISTIC_TRIES)
                except _Conflict:
                    continue
            raise AssertionError("a locked write cannot conflict")
        return await self._run(run)

    async def _attempt(self, conn, load: Optional[_Load], apply, locked: bool):
        now = time.time()
        rows = []
        if locked:
            async with _pipeline(conn):
                await conn.execute("BEGIN")
                await conn.execute(_LOCK)
                cur = await conn.execute(load.sql, load.params(now)) if load else None
            rows = await cur.fetchall() if cur else []
        elif load:
            rows = await (await conn.execute(load.sql, load.params(now))).fetchall()
        txn = _Txn(now, rows)
        try:
            result = apply(txn)
        except GatehouseError:
            if locked:
                await _rollback(conn)
            raise
        if not txn.writes:
            if locked:
                await _rollback(conn)
            return result
        verify = None if locked or load is None else (load, _Load.digest(rows), now)
        events, real = await self._commit(conn, txn, verify, locked)
        return _settled(result, real)

    async def _commit(self, conn, txn: _Txn, verify, in_transaction: bool):
        """Send the write batch; returns the committed events and the result mapper."""
        seen = self._feed.revision
        n = len(txn.writes)
        params = {**txn.params(), "history": self.history, "channel": CHANNEL, "token": self._token}
        sql = _WRITE_UNCHECKED
        if verify:
            load, digest, now = verify
            sql = load.write_sql
            params.update(load.params(now), digest=digest)
        try:
            async with _pipeline(conn):
                if not in_transaction:
                    await conn.execute("BEGIN")
                    await conn.execute(_LOCK)
                bumped = await conn.execute(sql, params)
                backlog = await conn.execute(_BACKLOG, {"seen": seen, "n": n})
                await conn.execute("COMMIT")
            row = await bumped.fetchone()
        except psycopg.Error as err:
            if _connection_lost(conn, err):
                raise _OutcomeUnknown(err) from None
            # An aborted pipeline can leave psycopg's prepared-statement cache out of
            # step with the server: do not reuse this connection.
            await conn.close()
            raise self._failed(err) from None
        if row is None:
            raise _Conflict()   # nothing was written; read again and re-evaluate
        revision = row[0]
        base = revision - n
        others = _contiguous(_rows_to_events(await backlog.fetchall()), seen, base)
        events, real = txn.settle(base)
        self._deliver(others, base)
        self._deliver(events, revision)
        return events, real

    async def create(self, key: str, value: dict, expires: Optional[float] = None) -> Item:
        return (await self.atomic([Op("create", key, value, expires)]))[0]

    async def put(self, key: str, value: dict, expires: Optional[float] = None) -> Item:
        return (await self.atomic([Op("put", key, value, expires)]))[0]

    async def update(self, key: str, value: dict, expires: Optional[float] = None) -> Item:
        return (await self.atomic([Op("update", key, value, expires)]))[0]

    async def compare_and_swap(self, key: str, expected_revision: int, value: dict,
                               expires: Optional[float] = None) -> Item:
        return (await self.atomic([Op("cas", key, value, expires, expected_revision)]))[0]

    async def delete(self, key: str) -> None:
        await self.atomic([Op("delete", key)])

    async def delete_range(self, prefix: str) -> int:
        check_prefix(prefix)

        def remove(txn: _Txn) -> int:
            keys = txn.keys()
            for key in keys:
                txn.remove(key)
            return len(keys)
        load = _Load("key >= %(low)s AND key < %(high)s AND (expires IS NULL OR expires > %(now)s)"
                     " ORDER BY key", lambda now: {"low": prefix, "high": prefix + KEY_MAX, "now": now})
        return await self._write(load, remove)

    async def atomic(self, ops: list) -> list:
        if not isinstance(ops, (list, tuple)):
            raise BadParameter("atomic() takes a list of Op; wrap a single Op in a list")
        prepared = []
        for op in ops:
            check_op(op)
            text = encode_value(op.key, op.value) if op.kind in ("create", "put", "update", "cas") else None
            prepared.append((op, text, check_expires(op.expires)))
        if not prepared:
            return []
        self._check_open()
        request = asyncio.get_running_loop().create_future()
        self._pending.append((prepared, request))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.get_running_loop().create_task(self._commit_pending())
        return await request

    # ------------------------------------------------------------------ group commit

    async def _commit_pending(self) -> None:
        """Commit the atomic() calls waiting now as ONE transaction, then the next group, until none wait.

        Every write holds the revision counter's lock until its commit is durable (flushed,
        and acknowledged by a synchronous standby), so one transaction at a time costs one
        flush per write. Writes that arrive while a group commits wait and go together in
        the next, so concurrent writers share a flush: throughput grows with concurrency
        while every call still returns only once its write is durable. Each call is
        evaluated on what the earlier calls of its group wrote, in order, and fails alone
        (its writes are taken back, the others commit); their revisions follow that order,
        so the change feed is exactly as if they had been committed one by one.
        """
        while self._pending:
            group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
            group = [(prepared, request) for prepared, request in group if not request.done()]
            if not group:
                continue
            try:
                outcomes = await self._write_group([prepared for prepared, _unused in group])
            except asyncio.CancelledError:
                for _unused, request in group:
                    if not request.done():
                        request.set_exception(self._closed_error())
                raise
            except BaseException as err:   # noqa: BLE001 - each caller gets the error of its write
                outcomes = [err] * len(group)
            for (_unused, request), outcome in zip(group, outcomes):
                if request.done():
                    continue
                if isinstance(outcome, BaseException):
                    request.set_exception(outcome)
                else:
                    request.set_result(outcome)

    async def _write_group(self, group: list) -> list:
        """One transaction for several atomic() calls: per call, its results or its error."""
        keys = sorted({key for prepared in group
                       for key in _conditional_keys([op for op, _unused1, _unused2 in prepared])})
        load = _Load("key = ANY(%(keys)s::text[]) ORDER BY key", lambda now: {"keys": keys}) if keys else None

        def apply(txn: _Txn) -> list:
            outcomes = []
            for prepared in group:
                savepoint = txn.savepoint()
                try:
                    outcomes.append([apply_op(txn, op, text, expires) for op, text, expires in prepared])
                except GatehouseError as err:
                    txn.rollback(savepoint)
                    outcomes.append(err)
            return outcomes
        return await self._write(load, apply)

    # ------------------------------------------------------------------ moving a site here

    async def load_site(self, items: list, revision: int) -> int:
        """Store ITEMS (with their revisions and expiry) in this EMPTY storage and set the revision
        counter to REVISION, all in one transaction: a site moved from SQLite keeps its revisions,
        so members' caches only ever see them go forward. Refuses (one sentence, nothing written)
        when the database already holds Gatehouse data. Returns how many items were stored."""
        rows = []
        for item in items:
            check_key(item.key)
            rows.append((item.key, encode_value(item.key, item.value), int(item.revision),
                         check_expires(item.expires)))
        top = max([revision, *(r[2] for r in rows)]) if rows else revision

        async def load(conn):
            async with conn.transaction():
                counter = (await (await conn.execute(_LOCK)).fetchone())[0]
                present = (await (await conn.execute("SELECT count(*) FROM gatehouse_items")).fetchone())[0]
                if counter or present:
                    raise GatehouseError(
                        f"the PostgreSQL {self.target} already holds Gatehouse storage ({present} items, "
                        f"revision {counter}); move the site into a new, empty database")
                async with conn.cursor() as cur:
                    await cur.executemany("INSERT INTO gatehouse_items (key, value, revision, expires)"
                                          " VALUES (%s, %s, %s, %s)", rows)
                await conn.execute("UPDATE gatehouse_revision SET revision = %s", (top,))
            return len(rows)
        stored = await self._run(load)
        await self._catch_up()
        return stored

    # ------------------------------------------------------------------ reads

    async def get(self, key: str) -> Item:
        check_key(key)

        async def read(conn):
            return await (await conn.execute(f"{_ROW} WHERE key = %s", (key,))).fetchone()
        row = await self._run(read)
        if row is None or (row[3] is not None and row[3] <= time.time()):
            raise not_found(key)
        return Item(key, json.loads(row[1]), row[2], row[3])

    async def get_range(self, prefix: str) -> list:
        check_prefix(prefix)

        async def read(conn):
            cur = await conn.execute(
                f"{_ROW} WHERE key >= %s AND key < %s AND (expires IS NULL OR expires > %s) ORDER BY key",
                (prefix, prefix + KEY_MAX, time.time()))
            return await cur.fetchall()
        return [Item(k, json.loads(v), r, e) for k, v, r, e in await self._run(read)]

    async def revision(self) -> int:
        return await self._catch_up()

    # ------------------------------------------------------------------ background

    async def _listen_loop(self) -> None:
        """Catch up on every NOTIFY; reconnect the LISTEN connection when it breaks."""
        conn, delay, lost = self._listen_conn, 0.1, False
        while not self._closed:
            try:
                if conn is None:
                    conn = self._listen_conn = await self._connect()
                    await conn.execute(f"LISTEN {CHANNEL}")
                    await self._pool.discard_idle()
                    await self._catch_up()       # whatever NOTIFY we missed while away
                    if lost:
                        log.warning("reconnected to the PostgreSQL %s; storage works again", self.target)
                    lost, delay = False, 0.1
                await self._serve_notifies(conn)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if conn is not None and not _connection_lost(conn, err):
                    log.warning("catching up with storage changes in the PostgreSQL %s failed: %s",
                                self.target, redact(err, self.conn_string))
                    await asyncio.sleep(delay)
                    continue
                if not lost:
                    log.warning("lost the connection to the PostgreSQL %s (%s); reconnecting",
                                self.target, redact(_first_line(err), self.conn_string))
                lost = True
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
                conn = self._listen_conn = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max)

    async def _serve_notifies(self, conn) -> None:
        async for notify in conn.notifies(timeout=self.poll_interval):
            revision, _unused, token = notify.payload.partition(" ")
            if token != self._token and (not revision.isdigit() or int(revision) > self._feed.revision):
                await self._catch_up()
        # Prove the connection is alive, then catch up, which also covers a NOTIFY
        # psycopg consumed while running this query rather than inside notifies().
        await conn.execute("SELECT 1")
        await self._catch_up()

    async def _poll_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.poll_interval)
            try:
                await self._catch_up()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("catching up with storage changes in the PostgreSQL %s failed: %s",
                            self.target, redact(err, self.conn_string))

    async def _reap_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.reap_interval)
            try:
                count = await self._reap()
                if count:
                    log.debug("removed %d expired items from the PostgreSQL %s", count, self.target)
            except asyncio.CancelledError:
                raise
            except ConnectionProblem:
                pass   # the LISTEN loop reports outages, once
            except Exception as err:
                log.warning("removing expired items from the PostgreSQL %s failed: %s", self.target, err)

    async def _reap(self) -> int:
        """Delete expired items (each one a delete event); every instance does this, the
        verification makes sure an item re-written meanwhile is left alone."""
        def remove(txn: _Txn) -> int:
            for key in txn.expired:
                txn.remove(key)
            return len(txn.expired)
        load = _Load("expires IS NOT NULL AND expires <= %(now)s ORDER BY key", lambda now: {"now": now})
        return await self._write(load, remove)

    # ------------------------------------------------------------------ changes

    async def wait_for_change(self, since_revision: int, timeout: float,
                              prefixes: Optional[list] = None) -> int:
        if isinstance(since_revision, bool) or not isinstance(since_revision, int):
            raise BadParameter(f"revision {since_revision!r} is invalid; pass the integer revision "
                               f"returned by the previous call")
        wanted = normalise_prefixes(prefixes)
        self._check_open()
        feed = self._feed
        if since_revision >= feed.revision:
            await self._catch_up()   # see other processes' writes now, not at the next NOTIFY
        if since_revision > feed.revision:
            return feed.revision     # from another or restored database: let the caller resync now
        if feed.changed_since(since_revision, wanted):
            return feed.revision
        await feed.wait(since_revision, timeout, wanted)
        return feed.revision

    def watch(self, prefixes: Optional[list] = None) -> Watcher:
        self._check_open()
        return self._feed.watch(prefixes)

    async def close(self) -> None:
        if self._closed:
            return
        if self._committer is not None and not self._committer.done():
            with contextlib.suppress(BaseException):
                await self._committer     # writes already accepted are finished, not dropped
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._feed.close()
        if self._listen_conn is not None:
            with contextlib.suppress(Exception):
                await self._listen_conn.close()
            self._listen_conn = None
        await self._pool.close()
        for attempt in list(self._connecting):
            with contextlib.suppress(BaseException):
                await (await attempt).close()


def _close_orphan(task: asyncio.Task) -> None:
    """Close a connection whose requester went away before it was established."""
    if not task.cancelled() and task.exception() is None:
        with contextlib.suppress(RuntimeError):   # loop already closed
            asyncio.ensure_future(task.result().close())
