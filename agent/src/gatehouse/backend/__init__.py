"""Storage backends: the interface (``base``) and the embedded SQLite implementation.

``open_backend(storage_config, data_dir)`` is the one way the services open storage.
"""

from __future__ import annotations

import os
from typing import Optional

from ..errors import BadParameter
from .base import Backend, Event, Item, Op, Watcher
from .sqlite import SQLiteBackend

__all__ = ["Backend", "Event", "Item", "Op", "Watcher", "SQLiteBackend", "open_backend",
           "DEFAULT_FILENAME"]

DEFAULT_FILENAME = "backend.sqlite"


async def open_backend(storage: Optional[dict], data_dir: str) -> Backend:
    """Open the backend described by the config's ``auth_service.storage`` section.

    ``{}`` or ``{"type": "sqlite"}`` means ``data_dir/backend.sqlite``; a relative
    ``path`` is taken relative to ``data_dir``.
    """
    cfg = dict(storage or {})
    kind = cfg.pop("type", None) or "sqlite"
    if kind != "sqlite":
        raise BadParameter(f"unknown storage type {kind!r}; use sqlite")
    path = cfg.pop("path", None) or DEFAULT_FILENAME
    if cfg:
        names = ", ".join(repr(k) for k in sorted(cfg, key=str))
        raise BadParameter(f"unknown storage setting {names}; sqlite storage takes only "
                           f"'type' and 'path'")
    if not isinstance(path, str):
        raise BadParameter(f"storage path {path!r} is not a string; set storage.path to a file path")
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        path = os.path.join(data_dir, path)
    return await SQLiteBackend.open(path)
