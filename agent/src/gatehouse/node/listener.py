"""The node's TCP listener: asks a routing proxy for the session id, then hands the socket to asyncssh.

asyncssh's ``create_server`` takes a ``tunnel`` object whose ``create_server(factory,
host, port)`` opens the listener; :class:`HeaderListener` is one that listens on TCP
itself and puts :class:`HeaderProtocol` in front of each connection's SSH protocol. The
protocol sends the ask line (member/session_header.py) at once and reads the peer's
first bytes: ``SSH-`` (a client that came without a proxy, or an older proxy, which
passes the ask to the client, who skips it) goes to SSH at once; a session answer is
checked and consumed before the rest goes to SSH. An answer that does not hold closes
the connection and is audited: it is either a forgery or a proxy misconfigured badly
enough that its sessions must not start under a wrong id.
"""

from __future__ import annotations

import asyncio
import logging

from ..member.session_header import HeaderRefused, new_ask
from ..wire import MAX_SESSION_HEADER, SESSION_HEADER_PREFIX

log = logging.getLogger("gatehouse.node")

#: A client that sends nothing for this long gets the SSH protocol anyway (some clients wait for the
#: server's version line first; RFC 4253 lets both sides send theirs at once).
FIRST_BYTES_WAIT = 1.0
#: How long a session answer may take to arrive complete.
HEADER_TIMEOUT = 10.0


class HeaderListener:
    """A duck-typed asyncssh tunnel: ``create_server`` listens on TCP with HeaderProtocol."""

    def __init__(self, node, sock=None):
        self.node = node
        self.sock = sock  # a listening socket (listeners.listen: possibly handed over by a predecessor)

    async def create_server(self, session_factory, listen_host, listen_port):
        loop = asyncio.get_running_loop()
        if self.sock is not None:
            return await loop.create_server(lambda: HeaderProtocol(self.node, session_factory), sock=self.sock)
        return await loop.create_server(lambda: HeaderProtocol(self.node, session_factory), listen_host or None,
                                        listen_port, reuse_address=True)


class HeaderProtocol(asyncio.Protocol):
    def __init__(self, node, session_factory):
        self.node = node
        self.factory = session_factory
        self.transport = None
        self.inner = None
        self.buf = bytearray()
        self.key = None
        self._timer = None
        self.nonce = ""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.key = (transport.get_extra_info("peername"), transport.get_extra_info("sockname"))
        self.nonce, ask = new_ask()
        transport.write(ask)
        self._timer = asyncio.get_running_loop().call_later(FIRST_BYTES_WAIT, self._quiet)

    def _quiet(self) -> None:
        if self.inner is not None:
            return
        if self.buf:   # a header is arriving slowly: give it the rest of its time, then give up
            self._timer = asyncio.get_running_loop().call_later(HEADER_TIMEOUT - FIRST_BYTES_WAIT, self._late)
            return
        self._start(None, b"")

    def _late(self) -> None:
        if self.inner is None:
            self._refuse("the session answer did not arrive complete in time")

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)
            return
        self.buf += data
        prefix = SESSION_HEADER_PREFIX
        if bytes(self.buf[:len(prefix)]) != prefix[:len(self.buf)]:
            self._start(None, bytes(self.buf))   # not a header: plain SSH from the first byte
            return
        end = self.buf.find(b"\n")
        if end < 0:
            if len(self.buf) > MAX_SESSION_HEADER:
                self._refuse(f"the session answer is longer than {MAX_SESSION_HEADER} bytes")
            return
        line, rest = bytes(self.buf[:end]).rstrip(b"\r"), bytes(self.buf[end + 1:])
        try:
            origin = self.node.headers.verify(line, self.nonce)
        except HeaderRefused as exc:
            self._refuse(str(exc))
            return
        self._start(origin, rest)

    def _refuse(self, reason: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.node.header_refused(self.key[0], reason)
        self.buf.clear()
        self.transport.close()

    def _start(self, origin, data: bytes) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.buf.clear()
        if origin is not None:
            self.node.origins[self.key] = origin
        self.inner = self.factory("", 0)
        self.inner.connection_made(self.transport)
        if data:
            self.inner.data_received(data)

    def eof_received(self):
        if self.inner is not None:
            return self.inner.eof_received()
        return None

    def connection_lost(self, exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.node.origins.pop(self.key, None)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()
