"""Fixtures for the storage conformance suite: every backend, on real storage.

``backend`` is parametrised over ``sqlite`` and ``postgresql``: it is a
:class:`Store`, one empty storage place (a SQLite file, or a fresh database on the
session's throwaway PostgreSQL server) that tests open as many backend instances on
as they need. ``db`` is one open instance on it.

The PostgreSQL server is started once per session (see ``pgserver``); when
PostgreSQL is not installed the tests that need it fail and say how to install it.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from gatehouse.backend import PostgresBackend, SQLiteBackend

from .pgserver import PgServer, find_bindir

KINDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg_server():
    try:
        find_bindir()
    except AssertionError as err:
        pytest.fail(str(err), pytrace=False)
    PgServer.remove_stale()
    server = PgServer()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_database(pg_server):
    """A fresh, empty database on the session's server (dropped afterwards)."""
    name = pg_server.create_database()
    yield name
    pg_server.drop_database(name)


class Store:
    """One storage place under test and the instances opened on it."""

    def __init__(self, kind: str, path: str = "", server: PgServer = None, dbname: str = ""):
        self.kind = kind
        self.path = path
        self.server = server
        self.dbname = dbname
        self._opened: list = []

    @property
    def conn_string(self) -> str:
        return self.server.conn_string(self.dbname)

    @property
    def config(self) -> dict:
        """The config file's storage section for this place."""
        if self.kind == "sqlite":
            return {"type": "sqlite", "path": self.path}
        return {"type": "postgresql", "conn_string": self.conn_string}

    @property
    def config_json(self) -> str:
        return json.dumps(self.config)

    async def open(self, **options):
        """A new backend instance on this storage (options the backend does not take are dropped)."""
        if self.kind == "sqlite":
            options.pop("listen", None)
            options.pop("history", None)
            backend = await SQLiteBackend.open(self.path, **options)
        else:
            backend = await PostgresBackend.open(self.conn_string, **options)
        self._opened.append(backend)
        return backend

    def query(self, sqlite_sql: str, pg_sql: str) -> list:
        """Rows of a raw query on the stored tables, to check what really is on disk."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.path)
            try:
                return conn.execute(sqlite_sql).fetchall()
            finally:
                conn.close()
        return self.server.query(self.dbname, pg_sql)

    def stored_value(self, key: str) -> str:
        rows = self.query(f"SELECT value FROM items WHERE key = '{key}'",
                          f"SELECT value FROM gatehouse_items WHERE key = '{key}'")
        return rows[0][0]

    def stored_keys(self) -> list:
        return [row[0] for row in self.query("SELECT key FROM items ORDER BY key",
                                             "SELECT key FROM gatehouse_items ORDER BY key")]

    async def close_all(self) -> None:
        for backend in self._opened:
            await backend.close()


@pytest.fixture(params=KINDS)
async def backend(request, tmp_path):
    if request.param == "sqlite":
        store = Store("sqlite", path=str(tmp_path / "data" / "backend.sqlite"))
        yield store
        await store.close_all()
        return
    server = request.getfixturevalue("pg_server")
    dbname = server.create_database()
    store = Store("postgresql", server=server, dbname=dbname)
    try:
        yield store
    finally:
        await store.close_all()
        server.drop_database(dbname)


@pytest.fixture
async def db(backend):
    return await backend.open(reap_interval=0.2)

