"""One session id from the proxy to the node: a signed answer to the node's first line.

The SSH session inside is end-to-end between the user's client and the node, so the
proxy that routes a connection cannot put anything into it. Instead the node opens
every connection with one line before its SSH version line (RFC 4253 lets a server do
that, and SSH clients skip such lines):

    node  -> GATEHOUSE-SESSION-ASK <nonce>\\r\\n
    proxy -> GATEHOUSE-SESSION-1 <payload> <signature> <certificate>\\r\\n   (before the client's bytes)

``payload`` is base64url JSON ``{"sid", "node", "nonce", "origin", "proxy", "time"}``, the
signature is the proxy's host key's Ed25519 signature over it (domain
``gatehouse-session-header-v1``), and the certificate is the proxy's host certificate.
The proxy strips the node's line from what the client sees; a peer whose first line is
not the ask (an SSH server that is not a Gatehouse node, or an older node) gets no
answer and the connection is piped unchanged, so the host-key check still catches an
impostor. The node accepts the answer only when the certificate is a proxy's, signed by
*this cluster's* active host CA, not revoked, valid now; the signature verifies; and it
names this node and this connection's nonce. A client that reaches the node directly
sends its SSH version instead, and the node chooses the session id.

Who can choose a session id (docs/security.md, "Session ids"):

* a user cannot: ids come from the proxy (a random UUID) or the node; an answer the user
  forges fails the signature check, and a captured one names another connection's nonce;
* a root proxy names the id of a session it routes to a leaf in the ``direct-tcpip``
  originator field on the tunnel (only root proxies open channels there); the leaf proxy
  checks its form and signs its own answer for the leaf node. A compromised root proxy
  can thus choose ids for the sessions it routes; a node refuses an id it has seen.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Callable, Optional

from .. import pki
from ..errors import BadParameter
from ..wire import MAX_SESSION_HEADER, SESSION_ASK_PREFIX, SESSION_HEADER_PREFIX, is_session_id, new_session_id

log = logging.getLogger("gatehouse.session_header")

DOMAIN = b"gatehouse-session-header-v1"
#: Session ids a node remembers to refuse a second use (they are random, so this only bounds memory).
REMEMBERED = 100000
#: How long a proxy waits for the node's first line before it pipes without an answer.
FIRST_LINE_WAIT = 5.0


@dataclass(frozen=True)
class SessionOrigin:
    """Who routed a connection to the node: its session id, the cluster the user came through, the proxy."""

    sid: str
    origin: str = ""      # the cluster whose proxy the user connected to ("" when the node chose the id)
    proxy: str = ""       # the proxy that signed the answer ("" without one)


class HeaderRefused(Exception):
    """A session answer that does not hold; the reason is one sentence."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_ask() -> tuple[str, bytes]:
    """(nonce, the node's first line)."""
    nonce = secrets.token_hex(16)
    return nonce, SESSION_ASK_PREFIX + nonce.encode() + b"\r\n"


def parse_ask(line: bytes) -> str:
    """The nonce of a node's ask line, or "" when LINE is not one."""
    if not line.startswith(SESSION_ASK_PREFIX):
        return ""
    nonce = line[len(SESSION_ASK_PREFIX):].strip()
    return nonce.decode() if len(nonce) == 32 and all(c in b"0123456789abcdef" for c in nonce) else ""


def make_header(ident, node: str, sid: str, nonce: str, origin: str, proxy: str) -> bytes:
    """The answer proxy IDENT sends to NODE's ask (NONCE) for session SID, routed from cluster ORIGIN."""
    payload = _b64(json.dumps({"sid": sid, "node": node, "nonce": nonce, "origin": origin, "proxy": proxy,
                               "time": round(time.time(), 3)}, separators=(",", ":")).encode())
    signature = pki.sign_blob(ident.read("ssh_key"), DOMAIN, payload.encode())
    cert = ident.read("ssh_key-cert.pub").split()[1]
    return SESSION_HEADER_PREFIX + f"{payload} {_b64(base64.b64decode(signature))} {cert}\r\n".encode()


class HeaderVerifier:
    """A node's check of session answers against its cluster cache (see the module doc)."""

    def __init__(self, cache, node_name: str):
        self.cache = cache
        self.node = node_name
        self._seen: collections.OrderedDict = collections.OrderedDict()

    def verify(self, line: bytes, nonce: str, now: Optional[float] = None) -> SessionOrigin:
        now = time.time() if now is None else now
        if len(line) > MAX_SESSION_HEADER or not line.startswith(SESSION_HEADER_PREFIX):
            raise HeaderRefused("the session answer is malformed")
        try:
            payload, signature, cert_b64 = line[len(SESSION_HEADER_PREFIX):].decode("ascii").strip().split(" ")
            cert = pki.parse_ssh_cert(f"{pki.CERT_KEY_TYPE} {cert_b64}")
            signature_b64 = base64.b64encode(_unb64(signature)).decode()
            fields = json.loads(_unb64(payload))
        except (ValueError, UnicodeDecodeError, BadParameter):
            raise HeaderRefused("the session answer is malformed or its certificate does not parse") from None
        ca = self.cache.host_ca(cert.signing_ca_line)
        if ca is None or ca.get("cluster_name") != self.cache.cluster_name:
            raise HeaderRefused("the session answer's certificate is not signed by this cluster's host CA")
        if cert.member_kind != "proxy":
            raise HeaderRefused("the session answer is not signed by a proxy of this cluster")
        if not cert.valid_after <= now < cert.valid_before:
            raise HeaderRefused("the certificate of the proxy that signed the session answer is expired")
        if pki.ssh_fingerprint(cert.public_line) in self.cache.revoked_keys("proxy"):
            raise HeaderRefused(f"the session answer is signed by the revoked proxy {cert.member_name}")
        if not pki.verify_blob(cert.public_line, DOMAIN, payload.encode(), signature_b64):
            raise HeaderRefused("the session answer's signature does not verify")
        if not isinstance(fields, dict):
            raise HeaderRefused("the session answer is malformed")
        if fields.get("nonce") != nonce:
            raise HeaderRefused("the session answer is for another connection (a replay)")
        if fields.get("node") != self.node:
            raise HeaderRefused(f"the session answer is for node {str(fields.get('node'))[:80]!r}, not this node")
        sid = fields.get("sid")
        if not is_session_id(sid) or len(sid) != 36:
            raise HeaderRefused("the session answer names no valid session id")
        if sid in self._seen:
            raise HeaderRefused(f"session id {sid} was used before on this node")
        self._seen[sid] = now
        while len(self._seen) > REMEMBERED:
            self._seen.popitem(last=False)
        origin = fields.get("origin") if isinstance(fields.get("origin"), str) else ""
        return SessionOrigin(sid, origin[:253], cert.member_name)

    def unrouted(self) -> SessionOrigin:
        """The origin of a connection that came without an answer: an id this node chooses."""
        return SessionOrigin(new_session_id())


class _Answerer:
    """Proxy side of one node connection: holds the client's bytes until the node's first line is seen, answers
    an ask with the signed header, and strips the ask from what the client sees."""

    def __init__(self, answer_for: Callable[[str], bytes]):
        self.answer_for = answer_for
        self.decided = False
        self.first = bytearray()
        self.held: list = []
        self.eof_held = False
        self.timer = None

    def start(self, send, send_eof, deliver) -> None:
        """SEND/SEND_EOF write to the node, DELIVER passes the node's bytes on to the client."""
        self.send, self.send_eof, self.deliver = send, send_eof, deliver
        self.timer = asyncio.get_running_loop().call_later(FIRST_LINE_WAIT, self._decide, False, "")

    def client_bytes(self, data) -> bool:
        """True when DATA may go to the node now (else it is held)."""
        if self.decided:
            return True
        self.held.append(bytes(data))
        return False

    def client_eof(self) -> bool:
        if self.decided:
            return True
        self.eof_held = True
        return False

    def node_bytes(self, data) -> None:
        if self.decided:
            self.deliver(data)
            return
        self.first += data
        if not SESSION_ASK_PREFIX.startswith(bytes(self.first[:len(SESSION_ASK_PREFIX)])):
            self._decide(False, "")
            return
        end = self.first.find(b"\n")
        if end < 0:
            if len(self.first) > MAX_SESSION_HEADER:
                self._decide(False, "")
            return
        nonce = parse_ask(bytes(self.first[:end]))
        if nonce:
            del self.first[:end + 1]
        self._decide(bool(nonce), nonce)

    def _decide(self, asked: bool, nonce: str) -> None:
        if self.decided:
            return
        self.decided = True
        if self.timer is not None:
            self.timer.cancel()
        if asked:
            try:
                self.send(self.answer_for(nonce))
            except Exception:  # noqa: BLE001 - no answer: the node treats the session as unrouted
                log.exception("cannot answer a node's session ask")
        for data in self.held:
            self.send(data)
        self.held.clear()
        if self.eof_held:
            self.send_eof()
        rest, self.first = bytes(self.first), bytearray()
        if rest:
            self.deliver(rest)


def node_forwarder(answer_for: Callable[[str], bytes]):
    """An asyncssh SSHForwarder for the node side of a forwarded channel, answering the node's ask."""
    from asyncssh.forward import SSHForwarder

    class NodeForwarder(SSHForwarder):
        def __init__(self):
            super().__init__()
            self._answerer = _Answerer(answer_for)

        def connection_made(self, transport):
            super().connection_made(transport)
            self._answerer.start(super().write, super().write_eof, super().data_received)

        def write(self, data):
            if self._answerer.client_bytes(data):
                super().write(data)

        def write_eof(self):
            if self._answerer.client_eof():
                super().write_eof()

        def data_received(self, data, datatype=None):
            self._answerer.node_bytes(data)

    return NodeForwarder


async def forward_to_node(host: str, port: int, answer_for: Callable[[str], bytes]):
    """Like asyncssh's ``forward_connection`` (what a ``connection_requested`` returns to pipe a channel to
    HOST:PORT), answering the node's session ask with ANSWER_FOR(nonce)."""
    import asyncssh
    from asyncssh.forward import SSHForwarder
    try:
        _unused, peer = await asyncio.get_running_loop().create_connection(node_forwarder(answer_for), host, port)
    except OSError as exc:
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from None
    return SSHForwarder(peer)


class _AnsweringProtocol(asyncio.Protocol):
    """Wraps a protocol that reads a node connection, answering the node's ask first."""

    def __init__(self, inner, answerer: _Answerer):
        self.inner = inner
        self.answerer = answerer

    def connection_made(self, transport):
        self.answerer.start(transport.write, transport.write_eof, self.inner.data_received)
        self.inner.connection_made(transport)

    def data_received(self, data):
        self.answerer.node_bytes(data)

    def eof_received(self):
        return self.inner.eof_received()

    def connection_lost(self, exc):
        if self.answerer.timer is not None:
            self.answerer.timer.cancel()
        self.inner.connection_lost(exc)

    def pause_writing(self):
        self.inner.pause_writing()

    def resume_writing(self):
        self.inner.resume_writing()


class _HeldTransport:
    """The node transport as its user writes to it: bytes are held until the node's first line is answered."""

    def __init__(self, transport, answerer: _Answerer):
        self._transport = transport
        self._answerer = answerer

    def write(self, data):
        if self._answerer.client_bytes(data):
            self._transport.write(data)

    def write_eof(self):
        if self._answerer.client_eof():
            self._transport.write_eof()

    def __getattr__(self, name):
        return getattr(self._transport, name)


async def connect_to_node(protocol_factory, host: str, port: int, answer_for: Callable[[str], bytes]):
    """A TCP connection to a node for PROTOCOL_FACTORY's protocol, answering the node's session ask:
    (transport to write to, protocol)."""
    answerer = _Answerer(answer_for)
    inner = protocol_factory()
    transport, _unused = await asyncio.get_running_loop().create_connection(
        lambda: _AnsweringProtocol(inner, answerer), host, port)
    return _HeldTransport(transport, answerer), inner
