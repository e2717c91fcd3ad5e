"""Append-only audit log: one JSON object per line under data_dir/log/.

Every auth decision (login, cert issue, trust changes, role mapping results,
session start/end, denials with their reason) is written here. Secrets never are:
callers pass names and fingerprints, not tokens or keys.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid

from .clock import now_iso

log = logging.getLogger("gatehouse.audit")


class AuditLog:
    def __init__(self, data_dir: str, cluster_name: str = ""):
        self.dir = os.path.join(data_dir, "log")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.path = os.path.join(self.dir, "audit.jsonl")
        self.cluster_name = cluster_name
        self._lock = threading.Lock()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._fh = os.fdopen(fd, "a", buffering=1, encoding="utf-8")

    def emit(self, event: str, *, success: bool = True, **fields) -> dict:
        entry = {
            "event": event,
            "uid": uuid.uuid4().hex,
            "time": now_iso(),
            "cluster_name": self.cluster_name,
            "success": success,
        }
        entry.update({k: v for k, v in fields.items() if v is not None})
        line = json.dumps(entry, sort_keys=True, default=str)
        with self._lock:
            self._fh.write(line + "\n")
        log.debug("audit %s", line)
        return entry

    def close(self) -> None:
        self._fh.close()
