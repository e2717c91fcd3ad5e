"""`gatectl audit search` and `gatectl audit verify` (through the auth API; audit_store.py decides)."""

from __future__ import annotations

import json
import time

from ..errors import BadParameter
from .common import table

#: Events `--all` fetches at most (a search is paged; narrow it with filters for more).
ALL_LIMIT = 100000
_SUMMARY_SKIP = {"event", "uid", "time", "cluster_name", "success", "seq", "prev", "hash", "stream", "user", "sid"}


def search_params(args) -> dict:
    """The API parameters of a search from the flags, checked here first (one sentence for a bad one)."""
    from ..auditquery import parse_query
    params = {k: v for k, v in (("cluster", args.cluster), ("user", args.user), ("event", args.event),
                                ("session", args.session), ("since", args.since), ("until", args.until),
                                ("limit", args.limit), ("cursor", args.cursor)) if v not in (None, "")}
    parse_query(params, flags="--")   # refuses what does not parse, before anything is sent
    return {k: str(v) for k, v in params.items()}


def cmd_audit_search(args, client) -> int:
    params = search_params(args)
    items, nxt = [], ""
    while True:
        page = client.get("/v1/audit/events", params=params)
        items += page["items"]
        nxt = page.get("next", "")
        if not args.all or not nxt or len(items) >= ALL_LIMIT:
            break
        params["cursor"] = nxt
    if args.format == "json":
        print(json.dumps({"items": items, "next": nxt}, indent=2))
        return 0
    rows = [[e.get("time", "")[:19].replace("T", " "), e.get("stream", ""), e.get("event", ""), e.get("user", ""),
             e.get("sid", "")[:36], ("" if e.get("success", True) else "FAILED ") + _summary(e)] for e in items]
    print(table(["Time (UTC)", "Cluster", "Event", "User", "Session", "Details"], rows))
    if nxt:
        print(f"\nMore events: add --cursor={nxt} (or --all)")
    return 0


def _summary(event: dict) -> str:
    parts = []
    for key in sorted(event):
        if key in _SUMMARY_SKIP:
            continue
        value = event[key]
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        parts.append(f"{key}={text[:60]}")
    line = " ".join(parts)
    return line[:160] + ("…" if len(line) > 160 else "")


def cmd_audit_verify(args, client) -> int:
    if args.cluster:
        streams = [args.cluster]
    else:
        streams = [s["cluster"] for s in client.get("/v1/audit/streams")["items"]]
        if not streams:
            raise BadParameter("no audit events are stored on this cluster yet")
    reports, broken = [], False
    for stream in streams:
        report = _verify_stream(client, stream)
        reports.append(report)
        broken = broken or not report["ok"]
    if args.format == "json":
        print(json.dumps(reports, indent=2))
        return 1 if broken else 0
    for r in reports:
        span = f"events {r['first']}-{r['last']}" if r["first"] else "no events"
        gaps = "".join(f"; events {g['from']}-{g['to']} are not here ({g['why']})" for g in r["gaps"])
        if r["ok"]:
            print(f"{r['cluster']}: chain intact, {r['checked']} {span} checked, {r['anchors']} signed anchors "
                  f"(last at event {r['last_anchor'] or '-'}); head {r['prev'][:16]}{gaps}")
        else:
            print(f"{r['cluster']}: BROKEN at event {r['broken']['seq']}: {r['broken']['reason']} "
                  f"({r['checked']} events checked before it){gaps}")
    return 1 if broken else 0


def _verify_stream(client, stream: str) -> dict:
    """Verify STREAM page by page; the first broken link ends it."""
    total, after, prev, gaps, anchors, last_anchor = 0, 0, "", [], 0, 0
    started = time.monotonic()
    while True:
        page = client.get("/v1/audit/verify", params={"cluster": stream, "after": str(after), "prev": prev},
                          timeout=300)
        total += page["checked"]
        gaps += page["gaps"]
        anchors += page["anchors"]
        last_anchor = page["last_anchor"] or last_anchor
        if page["done"] or page["next"] <= after:
            page.update(checked=total, gaps=gaps, anchors=anchors, last_anchor=last_anchor,
                        seconds=round(time.monotonic() - started, 3))
            return page
        after, prev = page["next"], page["prev"]


def add_parser(sub, add, client_of) -> None:
    """Register `audit search` and `audit verify` on gatectl's subcommands (ADD as gatectl defines it)."""
    audit = sub.add_parser("audit", help="search and verify the audit log").add_subparsers(dest="sub", required=True)
    search = add(audit, "search", lambda args: cmd_audit_search(args, client_of(args)),
                 "search audit events (this cluster's and, on a root, its forwarding leaves'), newest first")
    search.add_argument("--cluster", help="only events of this cluster (on a root: itself or a leaf)")
    search.add_argument("--user", help="only events about this user")
    search.add_argument("--event", help="only this event type (session.start), or a prefix (session.*)")
    search.add_argument("--since", help="from this long ago (1h, 30m) or this time (2026-12-01T10:00:00Z)")
    search.add_argument("--until", help="up to this long ago or this time")
    search.add_argument("--session", help="only events of this session id")
    search.add_argument("--limit", type=str, help="events per page (1-1000, default 100)")
    search.add_argument("--cursor", help="the next page of an earlier search (printed at its end)")
    search.add_argument("--all", action="store_true", help=f"follow every page (at most {ALL_LIMIT} events)")
    verify = add(audit, "verify", lambda args: cmd_audit_verify(args, client_of(args)),
                 "check the hash chain of the audit log; reports the first broken link")
    verify.add_argument("--cluster", help="only this cluster's chain (default: every chain stored here)")
