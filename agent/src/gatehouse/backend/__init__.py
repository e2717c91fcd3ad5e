"""Storage backends: the interface (``base``), embedded SQLite and shared PostgreSQL.

``open_backend(storage_config, data_dir)`` is the one way the services open storage.
"""

from __future__ import annotations

import os
from typing import Optional

from ..errors import BadParameter
from .base import Backend, Event, Item, Op, Watcher
from .postgres import PostgresBackend
from .sqlite import SQLiteBackend

__all__ = ["Backend", "Event", "Item", "Op", "Watcher", "SQLiteBackend", "PostgresBackend",
           "open_backend", "DEFAULT_FILENAME"]

DEFAULT_FILENAME = "backend.sqlite"
STORAGE_TYPES = ("sqlite", "postgresql")


async def open_backend(storage: Optional[dict], data_dir: str) -> Backend:
    """Open the backend described by the config's ``auth_service.storage`` section.

    ``{}`` or ``{"type": "sqlite"}`` means ``data_dir/backend.sqlite``; a relative
    ``path`` is taken relative to ``data_dir``. ``{"type": "postgresql",
    "conn_string": ...}`` opens shared storage in PostgreSQL.
    """
    cfg = dict(storage or {})
    kind = cfg.pop("type", None) or "sqlite"
    if kind == "postgresql":
        return await _open_postgres(cfg)
    if kind != "sqlite":
        raise BadParameter(f"unknown storage type {kind!r}; use {' or '.join(STORAGE_TYPES)}")
    path = cfg.pop("path", None) or DEFAULT_FILENAME
    _refuse_unknown(cfg, "sqlite storage takes only 'type' and 'path'")
    if not isinstance(path, str):
        raise BadParameter(f"storage path {path!r} is not a string; set storage.path to a file path")
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        path = os.path.join(data_dir, path)
    return await SQLiteBackend.open(path)


async def _open_postgres(cfg: dict) -> Backend:
    conn_string = cfg.pop("conn_string", None)
    _refuse_unknown(cfg, "postgresql storage takes only 'type' and 'conn_string'")
    return await PostgresBackend.open(conn_string)


def _refuse_unknown(cfg: dict, allowed: str) -> None:
    if cfg:
        names = ", ".join(repr(k) for k in sorted(cfg, key=str))
        raise BadParameter(f"unknown storage setting {names}; {allowed}")
