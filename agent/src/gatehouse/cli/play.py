"""`gate play SESSION_ID`: replay a session recording in the terminal.

The recording is read from the proxy in pieces (``/webapi/recordings/SID``, which auth
answers only for the user's own sessions or with ``audit: read``) and played as it
arrives, with its original timing scaled by ``--speed`` and idle stretches cut to
``--skip-idle`` seconds. On a terminal, space pauses and resumes, ``q`` stops. A
recording that is cut off or damaged plays up to the damage, then one line says where
it stops (asciicast.CastDamaged). ``--list`` shows the recordings one may replay.
"""

from __future__ import annotations

import base64
import os
import select
import sys
import time

from ..asciicast import CastDamaged, CastReader
from ..errors import BadParameter
from .common import table

PIECE = 512 * 1024


def cmd_play(args) -> int:
    from ..profile import load_profile
    profile = load_profile()
    profile.require_valid()
    api = profile.api()
    if args.list:
        return _list(api, args)
    if not args.session:
        raise BadParameter("name the session to replay, e.g. gate play 3f2c9a7e-…; list yours with gate play --list")
    if args.speed <= 0 or args.speed > 1000:
        raise BadParameter(f"--speed must be more than 0 and at most 1000, not {args.speed:g}")
    if args.skip_idle < 0:
        raise BadParameter("--skip-idle must be 0 (keep idle time) or a number of seconds")
    out = sys.stdout.buffer
    keys = _Keys() if sys.stdin.isatty() and not args.no_timing else None
    reader = CastReader()
    offset, clock, last = 0, time.monotonic(), 0.0
    damaged = None
    try:
        while True:
            params = {"offset": str(offset), "limit": str(PIECE)}
            if args.cluster:
                params["cluster"] = args.cluster
            piece = api.get(f"/webapi/recordings/{args.session}", params=params)
            data = base64.b64decode(piece.get("data") or "")
            try:
                events = reader.feed(data)
            except CastDamaged as exc:
                damaged = exc
                events = []
            for when, code, text in events:
                if code == "o":
                    if not args.no_timing:
                        gap = when - last
                        if args.skip_idle and gap > args.skip_idle:
                            gap = args.skip_idle
                        clock = _wait(clock + gap / args.speed, keys)
                        if clock is None:
                            return 0   # q
                    out.write(text.encode("utf-8", "replace"))
                    out.flush()
                last = when
            offset += len(data)
            if damaged is not None:
                break
            if not data or offset >= int(piece.get("size", 0)):
                try:
                    reader.finish()
                except CastDamaged as exc:
                    damaged = exc
                break
    finally:
        if keys is not None:
            keys.restore()
    if damaged is not None:
        print(f"\r\ngate: recording {args.session} is damaged at {damaged}; played up to there", file=sys.stderr)
        return 1
    return 0


def _list(api, args) -> int:
    params = {"limit": str(args.limit)}
    if args.cluster:
        params["cluster"] = args.cluster
    items = api.get("/webapi/recordings", params=params)["items"]
    rows = [[i.get("sid", ""), i.get("cluster", ""), i.get("node", ""), f"{i.get('user', '')} as {i.get('login', '')}",
             _when(i.get("started")), _duration(i.get("started"), i.get("ended")), i.get("kind", ""),
             (i.get("command") or "")[:40]] for i in items]
    print(table(["Session", "Cluster", "Node", "User", "Started (UTC)", "Length", "Kind", "Command"], rows))
    return 0


def _when(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if isinstance(ts, (int, float)) else ""


def _duration(start, end) -> str:
    if not isinstance(start, (int, float)) or not isinstance(end, (int, float)):
        return ""
    seconds = max(0, int(end - start))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _wait(until: float, keys) -> float | None:
    """Sleep until UNTIL (monotonic), pausing while space is toggled; None when q was pressed."""
    paused_for = 0.0
    while True:
        now = time.monotonic()
        left = until + paused_for - now
        if keys is None:
            if left > 0:
                time.sleep(left)
            return until
        key = keys.read(max(0.0, left) if left > 0 else 0.0)
        if key in (b"q", b"Q", b"\x03"):
            return None
        if key == b" ":
            started = time.monotonic()
            while True:
                key = keys.read(None)
                if key in (b"q", b"Q", b"\x03"):
                    return None
                if key == b" ":
                    break
            paused_for += time.monotonic() - started
            continue
        if time.monotonic() >= until + paused_for:
            return until + paused_for


class _Keys:
    """Single key presses from the terminal (raw mode for the replay, restored after)."""

    def __init__(self):
        import termios
        import tty
        self.fd = sys.stdin.fileno()
        self.saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)

    def read(self, timeout) -> bytes:
        ready, _unused1, _unused2 = select.select([self.fd], [], [], timeout)
        return os.read(self.fd, 1) if ready else b""

    def restore(self) -> None:
        import termios
        termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


def add_parser(sub) -> None:
    play = sub.add_parser("play", help="replay a session recording (your own, or any with audit: read)")
    play.add_argument("session", nargs="?", help="the session id (see gate play --list)")
    play.add_argument("--cluster", help="the cluster whose recording it is (default: found by the id)")
    play.add_argument("--speed", type=float, default=1.0, help="play this many times faster (default 1)")
    play.add_argument("--skip-idle", type=float, default=2.0,
                      help="cut pauses longer than this many seconds to it (default 2; 0 keeps them)")
    play.add_argument("--no-timing", action="store_true", help="print the output at once, without the timing")
    play.add_argument("--list", action="store_true", help="list the recordings you may replay, newest first")
    play.add_argument("--limit", type=int, default=50, help="with --list: how many (default 50)")
    play.set_defaults(func=cmd_play)
