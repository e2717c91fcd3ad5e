"""Durations as operators write them (``1h30m``, ``15m``, ``90s``) and as Gatehouse shows them.

The one duration parser of the agent: role options, token and certificate TTLs,
CLI flags and API bodies all go through :func:`parse_duration` / :func:`parse_ttl`.
Units are Go's ``h``, ``m`` and ``s``; a bare number in text has no unit and is
refused (``"300"`` could mean seconds or minutes), while an int or whole float
counts as seconds (what YAML and JSON give for ``ttl: 300``).
"""

from __future__ import annotations

import re
from typing import Any

from .errors import BadParameter

_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([hms])")
_UNITS = {"h": 3600, "m": 60, "s": 1}
_HINT = "write it like 1h30m, 15m or 90s"


def describe(value: Any) -> str:
    """How an unexpected value is named in error messages (``the boolean true``, ``a list``)."""
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f'the string "{value}"'
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def parse_duration(value: Any, what: str = "") -> int:
    """``"1h30m"``, ``"15m"``, ``"90s"``, ``"2h"`` or an int of seconds → whole seconds.

    Units may be combined (``30h0m0s``); a leading ``-`` makes the duration negative;
    ``0`` is zero. ``what`` names the setting in error messages
    (``spec.options.max_session_ttl``, ``--ttl``).
    """
    subject = f"{what} " if what else ""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadParameter(f"{what or 'the duration'} must be like 1h30m, 15m or 90s (or a whole number of "
                           f"seconds), not {describe(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise BadParameter(f"{subject}{value!r} is not a whole number of seconds; {_HINT}")
    text = value.strip()
    sign, body = (-1, text[1:]) if text[:1] == "-" else (1, text[1:] if text[:1] == "+" else text)
    if body == "0":
        return 0
    if body.isdigit():
        raise BadParameter(f'{subject}"{value}" has no unit; write it like {body}s, 15m or 1h30m')
    pos, seconds = 0, 0.0
    while pos < len(body):
        match = _PART_RE.match(body, pos)
        if not match:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not body or pos != len(body):
        if re.fullmatch(r"\d+d", body):
            raise BadParameter(f'{subject}"{value}" uses days, which is not a unit here; '
                               f'write {int(body[:-1]) * 24}h instead')
        raise BadParameter(f'{subject}"{value}" is not a valid duration; {_HINT}')
    if abs(seconds - round(seconds)) > 1e-6:
        raise BadParameter(f'{subject}"{value}" is not a whole number of seconds; {_HINT}')
    return sign * int(round(seconds))


def parse_ttl(value: Any, what: str = "TTL") -> int:
    """Like :func:`parse_duration`, but a TTL must be positive."""
    seconds = parse_duration(value, what)
    if seconds <= 0:
        raise BadParameter(f"{what} must be positive, not {format_duration(seconds)}; e.g. 15m or 12h")
    return seconds


def format_duration(seconds: int) -> str:
    """Whole seconds → compact Go-style text (``5400`` → ``1h30m``, ``0`` → ``0s``)."""
    seconds = int(seconds)
    if seconds == 0:
        return "0s"
    sign, rest = ("-", -seconds) if seconds < 0 else ("", seconds)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return sign + "".join(parts)
