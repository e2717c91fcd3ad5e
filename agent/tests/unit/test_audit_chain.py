"""auditchain.py, auditquery.py and asciicast.py: the pure parts of the audit trail (issue 18)."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from conftest import raised_message
from gatehouse import auditchain, auditquery, pki
from gatehouse.asciicast import CastDamaged, CastReader, CastWriter, repair
from gatehouse.auditchain import Head, Walk
from gatehouse.clock import now_iso
from gatehouse.errors import BadParameter

T0 = 1_790_000_000.0


def entries(n, start=0, **extra):
    return [{"event": "session.start", "uid": f"uid-{start + i:08d}", "time": now_iso(T0 + start + i),
             "cluster_name": "c1", "success": True, "user": "alice", **extra} for i in range(n)]


def walked(records, key=None, start=1, prev=""):
    return auditchain.walk(Walk("c1", start, prev), records, key)


# --------------------------------------------------------------------------- the chain
def test_links_are_sequential_and_canonical():
    records = auditchain.link("c1", Head(), entries(3))
    assert [r.seq for r in records] == [1, 2, 3]
    bodies = [json.loads(r.body) for r in records]
    assert bodies[0]["prev"] == "" and bodies[1]["prev"] == records[0].hash and bodies[2]["prev"] == records[1].hash
    assert all(auditchain.canonical(b) == r.body and auditchain.digest(r.body) == r.hash
               for b, r in zip(bodies, records))
    more = auditchain.link("c1", Head(3, records[-1].hash), entries(1, 10))
    assert more[0].seq == 4 and json.loads(more[0].body)["prev"] == records[-1].hash
    state = walked(records + more)
    assert not state.problem and state.checked == 4 and state.next_seq == 5 and state.prev == more[0].hash


def test_every_kind_of_tampering_is_found_at_its_link():
    records = auditchain.link("c1", Head(), entries(5))
    # a changed event: its own hash no longer matches
    body = json.loads(records[2].body)
    body["user"] = "mallory"
    changed = records[:2] + [dataclasses.replace(records[2], body=auditchain.canonical(body))] + records[3:]
    state = walked(changed)
    assert state.problem_seq == 3 and "was changed after it was written" in state.problem and state.checked == 2
    # a changed event whose hash was recomputed too: the next link breaks
    rehashed = dataclasses.replace(records[2], body=auditchain.canonical(body),
                                   hash=auditchain.digest(auditchain.canonical(body)))
    state = walked(records[:2] + [rehashed] + records[3:])
    assert state.problem_seq == 4 and "does not link to event 3" in state.problem
    # a removed event
    state = walked(records[:2] + records[3:])
    assert state.problem_seq == 3 and "event 3 is missing" in state.problem
    # two events swapped
    state = walked([records[0], records[2], records[1]])
    assert state.problem_seq == 2 and "missing" in state.problem


def test_anchors_sign_the_link_before_them():
    ca = pki.new_ssh_key()
    fp = pki.ssh_fingerprint(ca.public_line)
    records = auditchain.link("c1", Head(), entries(2))
    head = Head(2, records[-1].hash)

    def anchor(private, key=fp, seq=2, hsh=head.hash):
        sig = pki.sign_blob(private, auditchain.ANCHOR_DOMAIN, auditchain.anchor_payload("c1", seq, hsh))
        return auditchain.link("c1", head, [{"event": auditchain.ANCHOR_EVENT, "uid": "anchor-0001",
                                             "time": now_iso(T0 + 9), "cluster_name": "c1", "success": True,
                                             "anchored_seq": seq, "anchored_hash": hsh, "key": key,
                                             "signature": sig}])

    keys = {fp: ca.public_line}.get
    state = walked(records + anchor(ca.private_openssh), keys)
    assert not state.problem and state.anchors == 1 and state.last_anchor_seq == 3
    other = pki.new_ssh_key()
    state = walked(records + anchor(other.private_openssh), keys)
    assert state.problem_seq == 3 and "does not verify with the cluster's host CA" in state.problem
    state = walked(records + anchor(other.private_openssh, key="SHA256:unknown"), keys)
    assert "signed by a key this cluster does not know" in state.problem
    state = walked(records + anchor(ca.private_openssh, seq=1), keys)
    assert "does not sign the event just before it" in state.problem


def test_forwarded_text_must_be_canonical_and_bounded():
    rec = auditchain.link("leaf", Head(), entries(1))[0]
    assert auditchain.record_from_text("leaf", rec.body) == dataclasses.replace(rec, stream="leaf")
    spaced = json.dumps(json.loads(rec.body), indent=1)
    assert raised_message(auditchain.record_from_text, "leaf", spaced) == (
        "a forwarded event is not in canonical form (sorted keys, no spaces, ASCII)")
    assert "NaN or Infinity" in raised_message(auditchain.record_from_text, "leaf", '{"a":NaN}')
    body = json.loads(rec.body)
    body["seq"] = 0
    assert raised_message(auditchain.record_from_text, "leaf", auditchain.canonical(body)) == (
        "a forwarded event has no valid seq")
    body = json.loads(rec.body)
    body["blob"] = "x" * 20000
    assert raised_message(auditchain.record_from_text, "leaf", auditchain.canonical(body)) == (
        "a forwarded event is not text of at most 16 KiB")


@pytest.mark.parametrize("entry,message", [
    ([], "event 0 is not a JSON object"),
    ({"event": "Session", "uid": "u" * 10, "time": now_iso()}, "event 0 has no valid event name"),
    ({"event": "session.start", "uid": "x", "time": now_iso()}, "event 0 has no valid uid"),
    ({"event": "session.start", "uid": "u" * 10, "time": "1999-01-01T00:00:00Z"}, "event 0 has no valid time"),
    ({"event": "session.start", "uid": "u" * 10, "time": now_iso(), "user": 7}, "event 0 has a user that is not"),
    ({"event": "session.start", "uid": "u" * 10, "time": now_iso(), "success": "yes"}, "success field"),
    ({"event": "session.start", "uid": "u" * 10, "time": now_iso(), **{f"f{i}": i for i in range(70)}},
     "more than 64 fields"),
])
def test_member_events_are_checked(entry, message):
    assert message in raised_message(auditchain.check_entry, entry, "event 0")


def test_own_events_are_never_refused_only_fitted():
    fitted = auditchain.fit({"event": "user.login", "user": "a" * 40000, "n": float("inf"), "seq": 9,
                             "obj": object()}, "c1")
    assert fitted["event"] == "user.login" and fitted["cluster_name"] == "c1" and "seq" not in fitted
    assert fitted["truncated"] is True and len(auditchain.canonical(fitted)) <= auditchain.MAX_EVENT_BYTES
    assert fitted["n"] == "inf" and isinstance(fitted["obj"], str)
    assert auditchain.fit({"event": "BAD NAME"}, "c1")["event"] == "audit.unknown"


# --------------------------------------------------------------------------- search parameters
def test_search_parameters_parse():
    q = auditquery.parse_query({"since": "1h30m", "until": "now", "user": "alice@corp", "event": "session.*",
                                "limit": "10", "cluster": "leaf.test"}, now=T0)
    assert (q.since, q.until, q.limit, q.event_prefix, q.cluster) == (T0 - 5400, T0, 10, "session.", "leaf.test")
    assert auditquery.parse_query({"since": "2026-12-01T10:00:00Z"}).since == 1796119200.0
    assert auditquery.parse_query({"event": "*"}).event == ""
    after = (T0, "c1", 7)
    assert auditquery.parse_query({"cursor": auditquery.encode_cursor(after)}).after == after


@pytest.mark.parametrize("params,message", [
    ({"since": "yesterday"}, '--since "yesterday" is neither a duration back from now (like 1h or 30m) nor an RFC '
                             '3339 time (like 2026-12-01T10:00:00Z)'),
    ({"until": "2026-13-40T00:00:00Z"}, '--until "2026-13-40T00:00:00Z" is neither'),
    ({"since": "now", "until": "1h"}, "--since is later than --until; swap them or widen the range"),
    ({"limit": "0"}, "--limit must be a whole number from 1 to 1000, not '0'"),
    ({"limit": "many"}, "--limit must be a whole number from 1 to 1000, not 'many'"),
    ({"event": "Session.Start"}, '--event "Session.Start" is not an event name'),
    ({"session": "123"}, '--session "123" is not a session id'),
    ({"user": "a b"}, '--user "a b" is not a user name'),
    ({"cluster": "-x"}, '--cluster "-x" is not a cluster name'),
    ({"cursor": "nonsense"}, "--cursor is not a cursor this search returned"),
    ({"colour": "red"}, "unknown search parameter 'colour'"),
])
def test_search_parameters_that_do_not_parse_get_one_sentence(params, message):
    assert raised_message(auditquery.parse_query, params, flags="--").startswith(message)


# --------------------------------------------------------------------------- recordings
def test_recording_round_trip_with_resizes_and_markers(tmp_path):
    path = str(tmp_path / "s.cast")
    writer = CastWriter(path, {"version": 2, "width": 80, "height": 24, "gatehouse": {"sid": "x"}})
    writer.output("héllo ".encode()[:2])          # a multibyte character split across two reads
    writer.output("héllo ".encode()[2:] + b"\xff")  # invalid UTF-8 is shown as a replacement character
    writer.resize(120, 40)
    writer.marker("exit status 0")
    writer.close()
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    reader = CastReader()
    events = reader.feed(open(path, "rb").read())
    reader.finish()
    assert reader.header["gatehouse"] == {"sid": "x"}
    assert [(c, d) for _t, c, d in events] == [("o", "h"), ("o", "éllo \ufffd"), ("r", "120x40"),
                                              ("m", "exit status 0")]
    assert [t for t, _c, _d in events] == sorted(t for t, _c, _d in events)


def test_damaged_recordings_say_where_they_stop(tmp_path):
    good = b'{"version":2,"width":80,"height":24}\n[0.1,"o","a"]\n[0.2,"o","b"]\n'
    reader = CastReader()
    assert len(reader.feed(good)) == 2

    def damage(data):
        reader = CastReader()
        played = []
        with pytest.raises(CastDamaged) as info:
            for i in range(0, len(data), 7):        # arrives in pieces, as gate play reads it
                played += reader.feed(data[i:i + 7])
            reader.finish()
        return played, info.value
    played, exc = damage(good + b'[0.3,"o","c')
    assert [d for _t, _c, d in played] == ["a", "b"] and exc.line == 4 and exc.offset == len(good)
    assert "cut off" in exc.reason
    played, exc = damage(good + b'[0.1,"o","back in time"]\n')
    assert exc.line == 4 and "goes backwards" in exc.reason
    played, exc = damage(good.replace(b'[0.2,"o","b"]', b'{"not": "an event"}'))
    assert [d for _t, _c, d in played] == ["a"] and exc.line == 3 and "not an event" in exc.reason
    _unused, exc = damage(b'{"version":1}\n')
    assert exc.line == 1 and "not an asciicast v2 header" in exc.reason
    _unused, exc = damage(b"")
    assert "empty" in exc.reason


def test_a_recording_cut_by_a_crash_is_repaired(tmp_path):
    path = tmp_path / "s.cast"
    path.write_bytes(b'{"version":2,"width":80,"height":24}\n[0.5,"o","a"]\n[0.9,"o","tor')
    repair(str(path), "recording interrupted: the node stopped")
    reader = CastReader()
    events = reader.feed(path.read_bytes())
    reader.finish()
    assert events == [(0.5, "o", "a"), (0.5, "m", "recording interrupted: the node stopped")]
