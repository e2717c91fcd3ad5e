"""Audit searches: the parameters of `gatectl audit search` (and its API) and their paging cursor.

Pure: parsing and checking only. Every parameter that does not parse is refused with
one sentence that names it and shows what it takes.

* ``cluster`` a cluster (stream) name; ``user`` a user name; ``session`` a session id;
* ``event`` an event name (``session.start``) or a prefix ending in ``*`` (``session.*``);
* ``since`` / ``until`` a duration back from now (``1h``, ``30m``, ``1h30m``), an RFC 3339
  time (``2026-12-01T10:00:00Z``) or ``now``;
* ``limit`` 1 to MAX_LIMIT events per page (default DEFAULT_LIMIT), newest first;
* ``cursor`` the ``next`` value of the previous page.
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass
from typing import Optional

from .clock import parse_iso
from .durations import parse_duration
from .errors import BadParameter
from .wire import is_session_id

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_EVENT = re.compile(r"^[a-z][a-z0-9_.]{0,127}\*?$|^\*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,252}$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$", re.I)


@dataclass(frozen=True)
class Query:
    cluster: str = ""
    user: str = ""
    event: str = ""          # exact name, or a prefix when it ends in "*"
    session: str = ""
    since: Optional[float] = None
    until: Optional[float] = None
    limit: int = DEFAULT_LIMIT
    #: (time, stream, seq) of the last event of the previous page: this page starts after it.
    after: Optional[tuple] = None

    @property
    def event_prefix(self) -> str:
        """The prefix an event filter ending in "*" selects ("" for an exact name)."""
        return self.event[:-1] if self.event.endswith("*") else ""

    def params(self) -> dict:
        """The query as API parameters (times as unix seconds), for the next hop."""
        out = {k: v for k, v in (("cluster", self.cluster), ("user", self.user), ("event", self.event),
                                 ("session", self.session)) if v}
        if self.since is not None:
            out["since"] = repr(self.since)
        if self.until is not None:
            out["until"] = repr(self.until)
        out["limit"] = str(self.limit)
        if self.after is not None:
            out["cursor"] = encode_cursor(self.after)
        return out


def parse_time(value, flag: str, now: Optional[float] = None) -> Optional[float]:
    """``1h`` (that long ago), an RFC 3339 time, ``now`` or unix seconds → unix seconds; None when empty."""
    if value in (None, ""):
        return None
    now = time.time() if now is None else now
    text = str(value).strip()
    if len(text) > 64:
        raise BadParameter(f"{flag} is too long; give a duration like 1h or a time like 2026-12-01T10:00:00Z")
    if text.lower() == "now":
        return now
    if _RFC3339.match(text):
        try:
            return parse_iso(text.upper())
        except ValueError:
            pass
    elif re.fullmatch(r"\d{9,11}(\.\d+)?", text):
        return float(text)
    else:
        try:
            seconds = parse_duration(text, flag)
        except BadParameter:
            seconds = None
        if seconds is not None and seconds >= 0:
            return now - seconds
    raise BadParameter(f'{flag} "{text}" is neither a duration back from now (like 1h or 30m) nor an RFC 3339 '
                       f"time (like 2026-12-01T10:00:00Z)")


def parse_query(params, now: Optional[float] = None, flags: str = "") -> Query:
    """A Query from search parameters (a mapping of strings: CLI flags or API query parameters). FLAGS is put in
    front of parameter names in messages ("--" for the CLI)."""
    get = params.get if hasattr(params, "get") else (lambda k: None)
    unknown = sorted(set(params) - {"cluster", "user", "event", "session", "since", "until", "limit", "cursor"})
    if unknown:
        raise BadParameter(f"unknown search parameter {unknown[0]!r}; use cluster, user, event, session, since, "
                           f"until, limit or cursor")
    cluster, user, event, session = (str(get(k) or "").strip() for k in ("cluster", "user", "event", "session"))
    if cluster and not _NAME.match(cluster):
        raise BadParameter(f'{flags}cluster "{cluster[:80]}" is not a cluster name; use the name \'gatectl status\' shows')
    if user and not _NAME.match(user):
        raise BadParameter(f'{flags}user "{user[:80]}" is not a user name (letters, digits, ".", "-", "_" or "@")')
    if event and not _EVENT.match(event):
        raise BadParameter(f'{flags}event "{event[:80]}" is not an event name; use one like session.start, or a prefix '
                           f"ending in * like session.*")
    if event == "*":
        event = ""
    if session and not is_session_id(session):
        raise BadParameter(f'{flags}session "{session[:80]}" is not a session id; copy the sid of an event '
                           f"(a UUID like 3f2c…)")
    since = parse_time(get("since"), f"{flags}since", now)
    until = parse_time(get("until"), f"{flags}until", now)
    if since is not None and until is not None and since > until:
        raise BadParameter(f"{flags}since is later than {flags}until; swap them or widen the range")
    raw_limit = get("limit")
    if raw_limit in (None, ""):
        limit = DEFAULT_LIMIT
    else:
        try:
            limit = int(str(raw_limit))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            raise BadParameter(f"{flags}limit must be a whole number from 1 to {MAX_LIMIT}, not {str(raw_limit)[:20]!r}")
    cursor = get("cursor")
    return Query(cluster, user, event, session, since, until, limit,
                 decode_cursor(cursor, flags) if cursor not in (None, "") else None)


def encode_cursor(after: tuple) -> str:
    ts, stream, seq = after
    return base64.urlsafe_b64encode(json.dumps([ts, stream, seq]).encode()).decode().rstrip("=")


def decode_cursor(text, flags: str = "") -> tuple:
    bad = BadParameter(f"{flags}cursor is not a cursor this search returned; copy the 'next' value of the previous "
                       "page, or leave it out to start from the newest event")
    if not isinstance(text, str) or len(text) > 600:
        raise bad
    try:
        ts, stream, seq = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, TypeError):
        raise bad from None
    if (isinstance(ts, bool) or not isinstance(ts, (int, float)) or not isinstance(stream, str)
            or not _NAME.match(stream) or isinstance(seq, bool) or not isinstance(seq, int) or seq < 0):
        raise bad
    return float(ts), stream, seq
