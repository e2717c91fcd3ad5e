"""Tunnel heartbeats v2 and presence, without daemons.

* The heartbeat framing (tunnel/framing.py): an empty line is a beat, lines arrive in any
  pieces, an endless line is refused with the limit's size.
* The heartbeat modes' timing (wire.py) keeps the documented offline bounds: 15 s by
  default, 90 s in low-bandwidth mode.
* A root proxy's presence (tunnel/presence.py) reported to a real auth service in process
  (auth/presence.py on SQLite): heartbeats write nothing, a summary writes one record per
  shard whatever the number of leaves, a disconnect keeps the last heartbeat, a leaf stays
  online while any live proxy holds it, and a dead proxy's presence expires with its
  liveness record (or when its summaries stop).

The same with real processes is in e2e/test_trust_e2e.py (a leaf in low-bandwidth mode
goes online and is reported offline after it stops answering).
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatehouse import wire
from gatehouse.auth import keys
from gatehouse.auth.authz import Identity
from gatehouse.tunnel.framing import MAX_HEARTBEAT_LINE, TINY_BEAT, LineReader, TooLarge, is_tiny_beat, parse_heartbeat
from gatehouse.tunnel.presence import PRESENCE_PATH, PresenceReporter


# ---------------------------------------------------------------- framing
def test_tiny_beat_is_one_empty_line():
    assert TINY_BEAT == b"\n"
    reader = LineReader()
    assert reader.feed(TINY_BEAT) == [b""]
    assert is_tiny_beat(b"") and is_tiny_beat(b" \r") and not is_tiny_beat(b"{}")
    assert parse_heartbeat(b"") is None  # an empty line is not a JSON heartbeat


def test_lines_in_pieces_and_together():
    reader = LineReader()
    assert reader.feed(b'{"interval": 4,') == []
    assert reader.feed(b' "mode": "low_bandwidth"}\n\n') == [b'{"interval": 4, "mode": "low_bandwidth"}', b""]
    assert parse_heartbeat(b'{"interval": 4, "mode": "low_bandwidth"}') == {"interval": 4, "mode": "low_bandwidth"}
    assert reader.feed(b"\n") == [b""]
    assert reader.feed(b"\n\n\n") == [b"", b"", b""]


def test_an_endless_line_is_refused_with_the_limit():
    reader = LineReader()
    reader.feed(b"x" * (MAX_HEARTBEAT_LINE - 10))
    with pytest.raises(TooLarge) as info:
        reader.feed(b"x" * 20)
    assert "a heartbeat line is longer than" in str(info.value)
    with pytest.raises(TooLarge):
        LineReader().feed(b"y" * (MAX_HEARTBEAT_LINE + 1) + b"\n")


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.lists(st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")), max_size=12),
       st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=20))
def test_any_split_gives_the_same_lines(lines, cuts):
    stream = b"".join(line + b"\n" for line in lines)
    reader, got, pos, i = LineReader(), [], 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        got += reader.feed(stream[pos:pos + step])
        pos, i = pos + step, i + 1
    assert got == lines


# ---------------------------------------------------------------- modes
def test_heartbeat_modes_keep_their_offline_bounds():
    assert wire.HEARTBEAT_MODES == ("default", "low_bandwidth")
    leaf_default, _ = wire.heartbeat_timing("default")
    leaf_low, root_low = wire.heartbeat_timing("low_bandwidth")
    assert wire.MISSED_HEARTBEATS * leaf_default <= 15
    assert wire.MISSED_HEARTBEATS * leaf_low <= 90
    assert leaf_low > leaf_default and root_low >= leaf_low
    assert wire.heartbeat_timing("nonsense") == wire.heartbeat_timing("default")
    assert wire.heartbeat_timing(None) == wire.heartbeat_timing("default")
    assert wire.heartbeat_mode("low_bandwidth") == "low_bandwidth" and wire.heartbeat_mode("LOW") is None


def test_presence_shards_are_stable_and_in_range():
    names = [f"leaf{i}.example.com" for i in range(2000)]
    shards = [wire.presence_shard(n) for n in names]
    assert all(0 <= s < wire.PRESENCE_SHARDS for s in shards)
    assert shards == [wire.presence_shard(n) for n in names]
    assert len(set(shards)) == wire.PRESENCE_SHARDS  # 2,000 names use every shard


# ---------------------------------------------------------------- presence through a real auth service
class AuthCaller:
    """The proxy's API client as the presence reporter uses it, answered by the auth service in this
    process (the body goes through JSON as on the wire; auth's handler is AuthAPI.tunnel_presence)."""

    def __init__(self, svc, proxy: str):
        self.svc, self.ident = svc, Identity(proxy, "proxy", svc.cluster_name)
        self.posts = 0

    async def call(self, method, path, body=None, **_kw):
        assert (method, path) == ("POST", PRESENCE_PATH)
        body = json.loads(json.dumps(body))
        self.posts += 1
        return {"written": await self.svc.presence.report(self.ident, body.get("shards"),
                                                           body.get("summary_interval"))}


async def _live(svc, proxy: str, interval: float = 3.0) -> None:
    await svc.trust.proxy_heartbeat(Identity(proxy, "proxy", svc.cluster_name), interval)


async def _flush(reporter: PresenceReporter, summary: bool = False) -> None:
    await reporter._report(reporter._shards(all_shards=summary))


async def test_beats_write_nothing_and_a_summary_writes_one_record_per_shard(auth):
    await _live(auth, "p1")
    reporter = PresenceReporter(AuthCaller(auth, "p1"), 30.0)
    leaves = [f"leaf{i}.test" for i in range(300)]
    for leaf in leaves:
        reporter.connected(leaf, 4.0, "default")
    await _flush(reporter)
    presence = await auth.presence.of_leaves()
    assert all(presence[leaf].online and presence[leaf].proxies == ["p1"] for leaf in leaves)
    revision = await auth.backend.revision()
    for _ in range(20):  # 20 beats from each of 300 leaves
        for leaf in leaves:
            reporter.beat(leaf)
    assert reporter._shards(all_shards=False) == {}  # nothing changed: nothing to report
    assert await auth.backend.revision() == revision  # and nothing was written
    posts = reporter.client.posts
    await _flush(reporter, summary=True)
    assert reporter.client.posts == posts + 1
    assert await auth.backend.revision() - revision == wire.PRESENCE_SHARDS  # one write per shard, not per leaf
    assert len(await auth.backend.get_range(keys.PRESENCE_PREFIX)) == wire.PRESENCE_SHARDS


async def test_disconnect_keeps_the_last_heartbeat_and_mode(auth):
    await _live(auth, "p1")
    reporter = PresenceReporter(AuthCaller(auth, "p1"), 30.0)
    reporter.connected("meter.test", 25.0, "low_bandwidth")
    await _flush(reporter)
    leaf = await auth.presence.of_leaf("meter.test")
    assert (leaf.connection, leaf.mode) == ("online", "low_bandwidth")
    first = leaf.last
    reporter.beat("meter.test")
    await _flush(reporter, summary=True)
    assert (await auth.presence.of_leaf("meter.test")).last >= first
    reporter.disconnected("meter.test")
    await _flush(reporter)
    leaf = await auth.presence.of_leaf("meter.test")
    assert leaf.connection == "offline" and leaf.last >= first and leaf.mode == "low_bandwidth"
    assert "meter.test" not in reporter.entries  # the proxy forgets it; auth keeps its last heartbeat
    await _flush(reporter, summary=True)  # a later summary does not lose it either
    assert (await auth.presence.of_leaf("meter.test")).last >= first
    rc = {"kind": "remote_cluster", "metadata": {"name": "meter.test", "labels": {}}}
    from gatehouse.auth.trust import remote_cluster_view
    view = remote_cluster_view(rc, leaf)
    assert view["status"]["connection"] == "offline" and view["status"]["last_heartbeat"]
    with open(auth.audit.path, encoding="utf-8") as fh:  # one connect and one disconnect, none per beat
        events = [json.loads(line) for line in fh]
    assert [e["event"] for e in events if e.get("leaf") == "meter.test"] == ["tunnel.connect", "tunnel.disconnect"]


async def test_a_dead_proxys_presence_expires_and_another_proxy_keeps_the_leaf_online(auth):
    # p1 beats every 0.5 s: its liveness record lasts MISSED_HEARTBEATS of those.
    await _live(auth, "p1", interval=0.5)
    await _live(auth, "p2", interval=3.0)
    one, two = PresenceReporter(AuthCaller(auth, "p1"), 30.0), PresenceReporter(AuthCaller(auth, "p2"), 30.0)
    one.connected("both.test", 4.0, "default")
    one.connected("only-p1.test", 4.0, "default")
    two.connected("both.test", 4.0, "default")
    await _flush(one)
    await _flush(two)
    presence = await auth.presence.of_leaves()
    assert sorted(presence["both.test"].proxies) == ["p1", "p2"] and presence["only-p1.test"].online
    # p1 dies: no disconnect report, no more heartbeats. Its presence stops counting when its liveness expires.
    deadline = time.time() + 30
    while time.time() < deadline and "p1" in await auth.presence.live_proxies():
        await asyncio.sleep(0.2)
    presence = await auth.presence.of_leaves()
    assert presence["only-p1.test"].connection == "offline" and presence["only-p1.test"].last > 0
    assert presence["both.test"].online and presence["both.test"].proxies == ["p2"]


async def test_a_proxy_whose_summaries_stopped_no_longer_counts(auth):
    """A live proxy (its heartbeat still renewed) whose presence record was not rewritten for
    MISSED_HEARTBEATS summary intervals: its leaves count as offline."""
    await _live(auth, "p1")
    reporter = PresenceReporter(AuthCaller(auth, "p1"), 30.0)
    reporter.connected("stale.test", 4.0, "default")
    await _flush(reporter)
    assert (await auth.presence.of_leaf("stale.test")).online
    key = keys.presence(wire.presence_shard("stale.test"), "p1")
    item = await auth.backend.get(key)
    old = dict(item.value, updated=time.time() - wire.MISSED_HEARTBEATS * 30.0 - 1)
    await auth.backend.put(key, old, expires=item.expires)
    assert (await auth.presence.of_leaf("stale.test")).connection == "offline"
    await _flush(reporter, summary=True)  # the next summary brings it back
    assert (await auth.presence.of_leaf("stale.test")).online


async def test_stopping_a_proxy_reports_its_leaves_disconnected(auth):
    await _live(auth, "p1")
    reporter = PresenceReporter(AuthCaller(auth, "p1"), 30.0)
    reporter.connected("a.test", 4.0, "default")
    reporter.connected("b.test", 4.0, "default")
    reporter.start()
    deadline = time.time() + 30
    while time.time() < deadline and not (await auth.presence.of_leaf("b.test")).online:
        await asyncio.sleep(0.2)  # reported within PRESENCE_FLUSH_DELAY of the connect
    assert (await auth.presence.of_leaf("a.test")).online
    await reporter.stop()
    presence = await auth.presence.of_leaves()
    assert presence["a.test"].connection == presence["b.test"].connection == "offline"
    assert presence["a.test"].last > 0


async def test_forgetting_a_proxy_and_a_leaf(auth):
    await _live(auth, "p1")
    reporter = PresenceReporter(AuthCaller(auth, "p1"), 30.0)
    reporter.connected("gone.test", 4.0, "default")
    reporter.connected("kept.test", 4.0, "default")
    await _flush(reporter)
    await auth.presence.forget_leaf("gone.test")
    presence = await auth.presence.of_leaves()
    assert "gone.test" not in presence and presence["kept.test"].online
    await auth.presence.forget_proxy("p1")
    assert await auth.backend.get_range(keys.PRESENCE_PREFIX) == []
    assert (await auth.presence.of_leaf("kept.test")).connection == "offline"


async def test_a_member_that_is_not_a_proxy_cannot_report(auth):
    from gatehouse.errors import AccessDenied
    with pytest.raises(AccessDenied):
        await auth.presence.report(Identity("n1", "node", auth.cluster_name), [], 30)
