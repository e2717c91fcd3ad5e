"""Leaf events at the root: the audit subsystem on a leaf's reverse tunnel (``wire.AUDIT_SUBSYSTEM``).

The root drives it, like every tunnel subsystem: one root proxy per leaf (a lease at
the root's auth) opens the channel and asks, one JSON line per request, one JSON line
per answer:

    {"events": {"after": N, "limit": L, "wait": S}}  ->  {"batch": EXPORT}
        the leaf's events after seq N (a batch its auth signed with the leaf's host CA;
        empty after waiting up to S seconds for new ones)
    {"ack": N}                                        ->  {"ok": true}
        the root stored the leaf's events up to N: the leaf's retention may drop them
    {"recording": {"sid", "offset", "limit"}}         ->  {"chunk": {"sid", "offset", "data", "size"}}
        a piece of the recording of a root user's session on the leaf

The leaf decides: its heartbeats say whether its trusted_cluster has ``forward_audit``
on (tunnel/agent.py), and the root proxy opens the channel only while they do, so a leaf
that keeps its audit to itself costs the root no lease, no channel and no request. A
leaf that says it forwards but answers with ``{"error": …}`` anyway (it turned forwarding
off between two beats, or it lies) is asked again a minute later, or at once when it
reconnects; a leaf that says nothing (an older one) is asked the same way.

The root proxy hands each batch to its auth, which checks and stores it
(auth/audit_store.py) and says what it now holds, so a batch lost anywhere is asked for
again: delivery is at least once, and the leaf's seq and uids make a resent event a
duplicate the root drops. Nothing is kept only in memory: the leaf's events stay in its
own chain until the root confirms them, the root asks from what it has stored.

Bounds: a request line is at most MAX_REQUEST (64 KiB); an answer line at most
MAX_ANSWER_LINE (2 MiB, more than the largest batch or chunk); a leaf's batch is
checked event by event by the root's auth, and every refusal closes the channel.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import random
import time

import asyncssh

from ..errors import AccessDenied, BadParameter, CompareFailed, ConnectionProblem, GatehouseError, NotFound, from_dict
from ..waits import wait_event
from ..wire import AUDIT_SUBSYSTEM, is_session_id
from .framing import MAX_REQUEST

log = logging.getLogger("gatehouse.tunnel.forwarding")

MAX_ANSWER_LINE = 2 * 1024 * 1024
BATCH_EVENTS = 1000
CHUNK = 512 * 1024
#: How long a leaf waits for new events before it answers an empty batch, by the tunnel's
#: heartbeat mode: new events are answered at once, so this only sets what an idle leaf costs
#: (one request and one empty answer per wait on the wire; issue 16's bytes per leaf per day).
LONG_POLL = 60.0
LONG_POLL_BY_MODE = {"default": LONG_POLL, "low_bandwidth": 600.0}
#: The longest wait a leaf accepts (a root asks for at most the low-bandwidth wait).
MAX_WAIT = 900.0
POLL_EVERY = 0.5
#: How long the root waits before asking a leaf that said forwarding is off again.
OFF_RETRY = 60.0
#: The shortest time between two starts of a leaf's forwarding (each takes a lease, a backend
#: write): a leaf whose beats turn forwarding on and off again and again costs no more than this.
RESTART_GAP = 10.0
#: How often a forwarding proxy checks, while events flow, that the lease is still its own.
LEASE_EVERY = 10.0
#: How long a proxy that did not get a leaf's lease waits before asking again (times 1 to 1.5), unless
#: a root proxy leaves first (the holder died or stopped: its leases are free). A holder that stays
#: but lost the leaf's tunnel hands the lease back; the others learn it by this timer.
LEASE_RETRY = 120.0


# --------------------------------------------------------------------------- leaf side
async def serve(link, process) -> None:
    """Answer the root's audit requests on one channel (tunnel/agent.py calls this for AUDIT_SUBSYSTEM)."""
    client, root = link.pool.client, link.root
    while True:
        line = await process.stdin.readline()
        if not line:
            return
        if len(line) > MAX_REQUEST or not line.endswith(b"\n"):
            log.warning("tunnel: root %s sent an audit request longer than %d bytes; closing the channel", root,
                        MAX_REQUEST)
            return
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError
        except ValueError:
            _answer(process, BadParameter("the audit request is not a JSON object").to_dict())
            return
        try:
            answer = await _handle(client, root, request)
        except GatehouseError as exc:
            answer = exc.to_dict()
        _answer(process, answer)
        await process.stdout.drain()


def _answer(process, answer: dict) -> None:
    process.stdout.write(json.dumps(answer, separators=(",", ":")).encode() + b"\n")


def _number(value, default: float, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return max(low, min(float(value), high))


async def _handle(client, root: str, request: dict) -> dict:
    if isinstance(request.get("events"), dict):
        ask = request["events"]
        after = int(_number(ask.get("after"), 0, 0, 2 ** 62))
        limit = int(_number(ask.get("limit"), BATCH_EVENTS, 1, BATCH_EVENTS))
        wait = _number(ask.get("wait"), 0, 0, MAX_WAIT)
        deadline = time.monotonic() + wait
        while True:
            batch = await client.call("GET", "/v1/audit/export",
                                      params={"root": root, "after": str(after), "limit": str(limit)})
            if batch.get("events") or time.monotonic() >= deadline:
                return {"batch": batch}
            await asyncio.sleep(POLL_EVERY)
    if "ack" in request:
        seq = int(_number(request.get("ack"), 0, 0, 2 ** 62))
        await client.call("POST", "/v1/audit/export/ack", {"root": root, "seq": seq})
        return {"ok": True}
    if isinstance(request.get("recording"), dict):
        ask = request["recording"]
        sid = ask.get("sid")
        if not is_session_id(sid):
            raise BadParameter("the recording request names no valid session id")
        chunk = await client.call("GET", "/v1/audit/export/recording", params={
            "root": root, "sid": sid, "offset": str(int(_number(ask.get("offset"), 0, 0, 2 ** 62))),
            "limit": str(int(_number(ask.get("limit"), CHUNK, 1, CHUNK)))})
        return {"chunk": chunk}
    raise BadParameter("unknown audit request; this leaf answers events, ack and recording")


# --------------------------------------------------------------------------- root side
class ForwardingOff(Exception):
    pass


class AuditReceiver:
    """Root proxy: keeps one forwarding loop per connected leaf, while this proxy holds the leaf's lease."""

    def __init__(self, server):
        self.server = server
        self.client = server.client
        self.tasks: dict[str, asyncio.Task] = {}
        #: Per leaf: events received and when the last batch arrived (for logs and the benchmark).
        self.received: dict[str, int] = {}
        #: Per leaf: set when a tunnel from it registers, so a leaf that said forwarding is off is
        #: asked again at once (it may have restarted with forwarding on), not after OFF_RETRY.
        self._reconnected: dict[str, asyncio.Event] = {}
        #: Per leaf: when its forwarding last started (monotonic), for RESTART_GAP.
        self._started: dict[str, float] = {}
        #: Set (and replaced) when a root proxy leaves: leaves whose lease another proxy held ask again.
        self._proxy_left = asyncio.Event()
        self._waiting = 0

    def proxy_left(self) -> None:
        """A root proxy left (it stopped, or its record expired): its leases are free, ask again now."""
        self._proxy_left.set()
        self._proxy_left = asyncio.Event()

    async def _wait_for_lease(self) -> None:
        """Until a proxy leaves (then after a jitter that spreads the fleet's asks: 2 ms per waiting leaf,
        at most 30 s), or LEASE_RETRY to 1.5 × LEASE_RETRY seconds, whichever comes first."""
        left = self._proxy_left
        self._waiting += 1
        try:
            if await wait_event(left, LEASE_RETRY * random.uniform(1, 1.5)):
                await asyncio.sleep(random.uniform(0, min(30.0, 0.002 * self._waiting)))
        finally:
            self._waiting -= 1

    def wanted(self, leaf: str) -> bool:
        """Whether LEAF may have audit to forward: connected, with a tunnel whose beats do not say forwarding is off."""
        return any(t.forwards_audit is not False for t in self.server.tunnels.get(leaf, ()))

    def ensure(self, leaf: str) -> None:
        """Forward LEAF's audit, if its beats say it forwards (a tunnel registered, or a beat turned it on)."""
        if not self.wanted(leaf):
            return
        task = self.tasks.get(leaf)
        if task is None or task.done():
            now = time.monotonic()
            delay = max(0.0, self._started.get(leaf, now - RESTART_GAP) + RESTART_GAP - now)
            self._started[leaf] = now + delay
            self.tasks[leaf] = asyncio.create_task(self._run(leaf, delay), name=f"audit-forward-{leaf}")
        else:
            self._reconnected.setdefault(leaf, asyncio.Event()).set()

    async def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        for task in self.tasks.values():
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass

    async def _run(self, leaf: str, delay: float = 0.0) -> None:
        await asyncio.sleep(delay)
        backoff, held = 1.0, False
        while self.wanted(leaf):
            try:
                lease = await self.client.call("POST", f"/v1/audit/forwarded/{leaf}/lease")
                held = bool(lease.get("granted"))
                if not held:    # another proxy forwards it; its lease is ours when it lets go or dies
                    await self._wait_for_lease()
                    continue
                await self._session(leaf)
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except ForwardingOff as exc:
                if not self.wanted(leaf):
                    log.info("audit forwarding from leaf %s is off, as its heartbeats say", leaf)
                    break  # its beats turn it on again (LeafTunnel.on_line)
                log.info("audit forwarding from leaf %s is off (%s); asking again in %ds or when it reconnects",
                         leaf, exc, OFF_RETRY)
                reconnected = self._reconnected.setdefault(leaf, asyncio.Event())
                reconnected.clear()
                await wait_event(reconnected, OFF_RETRY)
            except NotFound as exc:
                log.info("audit forwarding from leaf %s stops: %s", leaf, exc)
                return
            except (GatehouseError, asyncssh.Error, OSError, ValueError, asyncio.TimeoutError) as exc:
                log.warning("audit forwarding from leaf %s paused: %s; retrying in %.0fs", leaf,
                            str(exc) or exc.__class__.__name__, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
        if held:    # the leaf went from this proxy, or keeps its audit now: another proxy may take over
            try:
                await self.client.call("DELETE", f"/v1/audit/forwarded/{leaf}/lease")
            except GatehouseError as exc:
                log.info("audit forwarding from leaf %s: could not hand the lease back (%s); it goes to another "
                         "proxy when this one's record expires", leaf, exc)

    async def _session(self, leaf: str) -> None:
        tunnel = self.server.tunnel_for(leaf)
        writer, reader, _unused = await tunnel.conn.open_session(subsystem=AUDIT_SUBSYSTEM, encoding=None)
        try:
            state = await self.client.call("GET", f"/v1/audit/forwarded/{leaf}")
            have, want = int(state["seq"]), list(state.get("want") or [])
            leased = time.monotonic()
            while True:
                for sid in want:
                    await self._pull_recording(leaf, sid, writer, reader)
                want = []
                wait = LONG_POLL_BY_MODE.get(tunnel.mode, LONG_POLL)
                answer = await self._ask(leaf, writer, reader, {"events": {"after": have, "limit": BATCH_EVENTS,
                                                                           "wait": wait}}, wait)
                batch = answer.get("batch")
                if not isinstance(batch, dict):
                    raise ConnectionProblem(f"leaf {leaf} answered an audit request without a batch")
                if batch.get("events"):
                    try:
                        stored = await self.client.call("POST", f"/v1/audit/forwarded/{leaf}", {"batch": batch})
                    except CompareFailed:   # another proxy stored some meanwhile: start from what is held
                        state = await self.client.call("GET", f"/v1/audit/forwarded/{leaf}")
                        have, want = int(state["seq"]), list(state.get("want") or [])
                        continue
                    have, want = int(stored["seq"]), list(stored.get("want") or [])
                    self.received[leaf] = self.received.get(leaf, 0) + int(stored.get("stored", 0))
                    await self._ask(leaf, writer, reader, {"ack": have})
                # While events flow, check now and then that the lease is still this proxy's (a read:
                # another proxy takes it over only if this one's record expired, say while the
                # database was away; the stored seq made the copies both sent duplicates, refused).
                if batch.get("events") and time.monotonic() - leased > LEASE_EVERY:
                    lease = await self.client.call("POST", f"/v1/audit/forwarded/{leaf}/lease")
                    if not lease.get("granted"):
                        return
                    leased = time.monotonic()
        finally:
            writer.channel.close()

    async def _ask(self, leaf: str, writer, reader, request: dict, wait: float = 0.0) -> dict:
        writer.write(json.dumps(request, separators=(",", ":")).encode() + b"\n")
        line = await asyncio.wait_for(reader.readline(), wait + 60)
        if not line:
            raise ConnectionProblem(f"leaf {leaf} closed the audit channel")
        if len(line) > MAX_ANSWER_LINE or not line.endswith(b"\n"):
            raise ConnectionProblem(f"leaf {leaf} sent an audit answer longer than {MAX_ANSWER_LINE // (1024 * 1024)} "
                                    f"MiB")
        try:
            answer = json.loads(line)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise ConnectionProblem(f"leaf {leaf} sent an audit answer that is not a JSON object")
        if "error" in answer:
            err = from_dict(answer)
            if isinstance(err, (AccessDenied, NotFound)):
                raise ForwardingOff(err.message)
            raise err
        return answer

    async def _pull_recording(self, leaf: str, sid: str, writer, reader) -> None:
        """Copy a recording from the leaf to this root's auth, resuming where the root's copy stops."""
        if not is_session_id(sid):
            return
        state = await self.client.call("GET", f"/v1/recordings/{sid}/upload", params={"cluster": leaf})
        if state.get("complete"):
            return
        offset = int(state.get("size", 0))
        while True:
            try:
                answer = await self._ask(leaf, writer, reader,
                                         {"recording": {"sid": sid, "offset": offset, "limit": CHUNK}})
            except ForwardingOff as exc:
                log.warning("leaf %s did not send the recording of session %s: %s", leaf, sid, exc)
                return
            chunk = answer.get("chunk") if isinstance(answer.get("chunk"), dict) else {}
            try:
                data = base64.b64decode(chunk.get("data") or "", validate=True)
            except (binascii.Error, ValueError, TypeError):
                raise ConnectionProblem(f"leaf {leaf} sent a recording piece that is not base64") from None
            total = chunk.get("size")
            if (chunk.get("offset") != offset or len(data) > CHUNK or isinstance(total, bool)
                    or not isinstance(total, int) or total < offset):
                raise ConnectionProblem(f"leaf {leaf} sent a recording piece that does not continue at {offset}")
            if data:
                offset = int((await self.client.call("POST", f"/v1/recordings/{sid}/upload", {
                    "cluster": leaf, "offset": offset, "data": chunk["data"]}))["size"])
            if offset >= total or not data:
                break
        await self.client.call("POST", f"/v1/recordings/{sid}/complete", {"cluster": leaf})
        log.info("received the recording of session %s from leaf %s (%d bytes)", sid, leaf, offset)
