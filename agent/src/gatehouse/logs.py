"""Logging setup: stderr or a file, text or JSON lines, DEBUG with --debug."""

from __future__ import annotations

import json
import logging
import sys
import time

from .errors import BadParameter


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "component": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup(output: str = "stderr", severity: str = "INFO", fmt: str = "text", debug: bool = False) -> None:
    """Send every log record to one place: stderr, stdout or the file `output` (appended to).

    Text lines look like ``2026-11-21 20:23:17,809 INFO  [gatehouse.join] message``; JSON
    lines are one object each with ``time`` (UTC), ``level``, ``component``, ``message``
    and, for exceptions, ``error``. `debug` (``--debug``) forces DEBUG whatever
    `severity` says. Raises BadParameter when the file cannot be opened.
    """
    levels = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
              "WARNING": logging.WARNING, "ERROR": logging.ERROR}
    level = logging.DEBUG if debug else levels.get(severity.upper(), logging.INFO)
    if output in ("stderr", ""):
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    elif output == "stdout":
        handler = logging.StreamHandler(sys.stdout)
    else:
        try:
            handler = logging.FileHandler(output, encoding="utf-8")
        except OSError as exc:
            raise BadParameter(f"cannot open the log file {output} (gatehouse.log.output): "
                               f"{exc.strerror or exc}; create its directory or choose another path") from None
    if fmt == "json":
        handler.setFormatter(_JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s [%(name)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # asyncssh is chatty at DEBUG; keep its logs one step quieter than ours.
    logging.getLogger("asyncssh").setLevel(max(level, logging.INFO))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING if level > logging.DEBUG else logging.DEBUG)
