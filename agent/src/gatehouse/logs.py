"""Logging setup: stderr or a file, text or JSON lines, DEBUG with --debug."""

from __future__ import annotations

import json
import logging
import sys
import time

from .errors import BadParameter


#: Control characters (and Unicode line breaks) in a logged message are written as escapes, so
#: a value from the network (a user name, a leaf's name, a command) can never start a new
#: line that looks like one of ours. JSON lines escape them already.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t",
                 0x85: "\\x85", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape(text: str) -> str:
    """TEXT with control characters and line breaks written as backslash escapes."""
    return text.translate(_ESCAPES)


class _TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)


#: asyncssh messages that carry what a client asked to run: at DEBUG only (a command line
#: can hold secrets; the audit log records commands for those who need them).
_ASYNCSSH_COMMAND_MESSAGES = ("  Command: %s", "  Subsystem: %s", "  Forced command override: %s")


class _CommandsAtDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # asyncssh prefixes its context ("[conn=0, chan=1] ") to the message template.
        if record.levelno <= logging.DEBUG or not str(record.msg).endswith(_ASYNCSSH_COMMAND_MESSAGES):
            return True
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


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
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)-5s [%(name)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # asyncssh is chatty at DEBUG; keep its logs one step quieter than ours.
    asyncssh_log = logging.getLogger("asyncssh")
    asyncssh_log.setLevel(max(level, logging.INFO))
    if not any(isinstance(f, _CommandsAtDebug) for f in asyncssh_log.filters):
        asyncssh_log.addFilter(_CommandsAtDebug())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING if level > logging.DEBUG else logging.DEBUG)
