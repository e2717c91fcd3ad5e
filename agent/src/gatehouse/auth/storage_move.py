"""Moving a site's storage from embedded SQLite to PostgreSQL (`gatehouse migrate`).

Run on the auth host, with the auth service stopped: the SQLite file is read in one
read-only transaction (a consistent snapshot) and every record that is state -- the
CAs with their keys, users and password hashes, roles, tokens, trusted and remote
clusters, SSO connectors and users, member name claims, revocations -- is written to
the PostgreSQL database in ONE transaction, with its revision and expiry, and the
revision counter continues where SQLite's stopped. Presence (node, proxy and tunnel
heartbeats), SSO logins in progress and rate-limit counts are left behind: the members
report themselves again within seconds. Nodes, proxies and leaves keep their
certificates and their trust: nothing is re-issued, no leaf re-joins.

Refusals, each one sentence, with nothing written: the config runs no auth service or
does not use SQLite, the auth service still answers (a write after the copy would be
lost), the SQLite file is missing or unreadable, the database is unreachable, or it
already holds Gatehouse data.
"""

from __future__ import annotations

import collections
import os
import socket

from ..backend import sqlite as sqlite_backend
from ..backend.postgres import PostgresBackend, describe_target
from ..config import Config, split_hostport
from ..errors import BadParameter, GatehouseError
from ..wire import AUTH_PORT
from . import keys


def _sqlite_path(cfg: Config) -> str:
    if not cfg.auth.enabled:
        raise BadParameter(f"{cfg.path} runs no auth service; run gatehouse migrate with the config of the auth "
                           f"server whose storage moves")
    storage = dict(cfg.auth.storage or {})
    kind = storage.get("type") or "sqlite"
    if kind != "sqlite":
        raise BadParameter(f"the auth service of {cfg.path} already uses {kind} storage; migrate copies a site "
                           f"from SQLite storage")
    from ..backend import DEFAULT_FILENAME
    path = os.path.expanduser(str(storage.get("path") or DEFAULT_FILENAME))
    return path if os.path.isabs(path) else os.path.join(cfg.data_dir, path)


def _refuse_if_running(cfg: Config) -> None:
    host, port = split_hostport(cfg.auth.listen_addr, AUTH_PORT)
    host = "127.0.0.1" if host in ("", "0.0.0.0") else ("::1" if host == "::" else host)
    try:
        with socket.create_connection((host, port), timeout=2):
            pass
    except OSError:
        return
    raise GatehouseError(f"the auth service of {cfg.path} still answers at {host}:{port}; stop it first, so no "
                         f"write lands in SQLite after the copy")


def presence(key: str) -> bool:
    return key.startswith(tuple(keys.PRESENCE_PREFIXES))


async def copy_to_postgresql(cfg: Config, conn_string: str) -> dict:
    """Copy the site of CFG's auth service from SQLite into the empty PostgreSQL database at CONN_STRING.

    Returns what was done: {"source", "target", "revision", "copied": {kind: n}, "skipped": n}."""
    path = _sqlite_path(cfg)
    _refuse_if_running(cfg)
    revision, items = sqlite_backend.read_snapshot(path)
    kept = [item for item in items if not presence(item.key)]
    target = await PostgresBackend.open(conn_string, listen=False)
    try:
        await target.load_site(kept, revision)
    finally:
        await target.close()
    copied = collections.Counter(item.key.split("/", 1)[0] for item in kept)
    return {"source": path, "target": describe_target(conn_string), "revision": revision,
            "copied": dict(sorted(copied.items())), "skipped": len(items) - len(kept)}
