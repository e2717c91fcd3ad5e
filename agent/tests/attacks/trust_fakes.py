"""Hostile members for the trust attack tests: a leaf, a root and an SSH host that speak the
real protocols (HTTPS handshake, reverse tunnel, SSH host certificates) with their own keys.

They run on one background event loop (`LoopThread`), so the tests stay synchronous like
the e2e tests and drive real gatehouse processes with `gatectl`/`gate` meanwhile.

* `FakeLeaf`  — its own host CA and name; POSTs the trust handshake to a root proxy, and
  can open a real reverse tunnel to it (SSH server end, host certificate with the tunnel
  principal signed by its own host CA) sending whatever heartbeats the test says.
* `FakeRoot`  — an HTTPS server (self-signed) that answers a leaf's handshake with crafted
  CAs and addresses, plus a reverse-tunnel listener that authenticates with a tunnel
  certificate from its own user CA and announces whatever proxies the test says.
* `HostileSSHHost` — an SSH server presenting a host certificate from any CA for any names,
  recording whether a client ever got as far as authenticating.
* `tunnel_identity`, `present_user_certificate`, `backend_edit` — small helpers: a root
  proxy's real tunnel certificate, a certificate presented to an SSH server, and a direct
  write into a cluster's backend (what a bug or an older version could have stored).
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import tempfile
import threading
import time
import warnings

import asyncssh
import requests

from gatehouse import __version__, pki
from gatehouse.wire import (HEARTBEAT_SUBSYSTEM, PING_PATH, TUNNEL_LOGIN, TUNNEL_PRINCIPAL, VALIDATE_PATH)

DAY = 24 * 3600


class LoopThread:
    """An asyncio loop on a daemon thread; `run(coro)` waits for its result."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="fakes-loop")
        self.thread.start()

    def run(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _keypair(private_openssh: str, cert_line: str):
    return asyncssh.import_private_key(private_openssh), asyncssh.import_certificate(cert_line)


def _cert(ca: pki.SSHKeyPair, key: pki.SSHKeyPair, cert_type: str, key_id: str, principals: list[str],
          extensions: dict | None = None) -> str:
    now = int(time.time())
    return pki.sign_ssh_cert(ca.private_openssh, key.public_line, cert_type=cert_type, key_id=key_id,
                             principals=principals, valid_after=now - 60, valid_before=now + DAY,
                             extensions=extensions)


def post_json(url: str, body, timeout: float = 15.0) -> tuple[int, dict]:
    """POST BODY (JSON) to URL without verifying TLS: (status, JSON answer or {})."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = requests.post(url, json=body, verify=False, timeout=timeout)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, {}


def error_message(answer: dict) -> str:
    return (answer.get("error") or {}).get("message", "")


# ------------------------------------------------------------------------------------ FakeLeaf
class FakeLeaf:
    """A hostile leaf: its own name and host CA, the real handshake, a real reverse tunnel."""

    def __init__(self, name: str):
        self.name = name
        self.host_ca = pki.new_ssh_key(comment=f"{name} host CA")
        self.proxy_key = pki.new_ssh_key(comment=f"{name} proxy")

    def handshake(self, root_web_addr: str, token: str, *, name: str | None = None,
                  host_cas: list | None = None, expected_root: str = "") -> tuple[int, dict]:
        """POST the trust handshake to the root proxy as this leaf (or as NAME, with HOST_CAS)."""
        body = {"token": token, "cluster_name": name or self.name, "version": __version__,
                "host_cas": host_cas if host_cas is not None else [self.host_ca.public_line]}
        if expected_root:
            body["expected_root"] = expected_root
        return post_json(f"https://{root_web_addr}{VALIDATE_PATH}", body)

    def open_tunnel(self, loop: LoopThread, root_tunnel_addr: str, *, interval=1.0,
                    proxy: str = "fakeproxy", wait: float = 30.0) -> "FakeLeafTunnel":
        """Dial the root's tunnel listener as this leaf's proxy; heartbeats carry INTERVAL as given.
        Until WAIT seconds after joining, the root proxy may not know this leaf's CA yet (its cache
        follows auth within a second or so): redial then, as a real leaf does."""
        deadline = time.monotonic() + wait
        while True:
            tunnel = FakeLeafTunnel(self, interval, proxy)
            try:
                loop.run(tunnel.connect(root_tunnel_addr))
                return tunnel
            except asyncssh.HostKeyNotVerifiable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)


class FakeLeafTunnel:
    """The SSH-server end of one reverse tunnel from a FakeLeaf."""

    def __init__(self, leaf: FakeLeaf, interval, proxy: str):
        self.leaf = leaf
        self.interval = interval
        self.proxy = proxy
        self.conn = None
        self.hellos: list[dict] = []       # what the root sent on the heartbeat subsystem
        self.root_login = ""               # the user name the root authenticated as
        self.closed = threading.Event()

    async def connect(self, addr: str) -> None:
        host, port = addr.rsplit(":", 1)
        keypair = _keypair(self.leaf.proxy_key.private_openssh,
                           _cert(self.leaf.host_ca, self.leaf.proxy_key, "host", f"proxy:{self.proxy}",
                                 [TUNNEL_PRINCIPAL]))
        tunnel = self

        class _Server(asyncssh.SSHServer):
            def begin_auth(self, username):
                tunnel.root_login = username
                return True

            def public_key_auth_supported(self):
                return True

            def validate_public_key(self, username, key):
                return False

            def validate_ca_key(self, username, key):
                return True  # a hostile leaf takes any root

        self.conn = await asyncssh.connect_reverse(host, int(port), server_factory=_Server,
                                                   process_factory=self._serve, server_host_keys=[keypair],
                                                   config=None, encoding=None, login_timeout=15)
        asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        await self.conn.wait_closed()
        self.closed.set()

    async def _serve(self, process) -> None:
        if process.subsystem != HEARTBEAT_SUBSYSTEM:
            process.exit(0)
            return

        async def beat():
            while True:
                line = {"cluster": self.leaf.name, "proxy": self.proxy, "interval": self.interval}
                process.stdout.write(json.dumps(line).encode() + b"\n")
                await asyncio.sleep(1.0)

        sender = asyncio.create_task(beat())
        try:
            while True:
                raw = await process.stdin.readline()
                if not raw:
                    return
                self.hellos.append(json.loads(raw))
        except (asyncssh.Error, OSError, ValueError):
            return
        finally:
            sender.cancel()

    def close(self, loop: LoopThread) -> None:
        if self.conn is not None:
            loop.loop.call_soon_threadsafe(self.conn.close)


# ------------------------------------------------------------------------------------ FakeRoot
class FakeRoot:
    """A hostile root: answers the handshake with `answer(request)` and, on its tunnel listener,
    announces `hello()` (both replaceable by the test)."""

    def __init__(self, loop: LoopThread, name: str = "evil-root.site.test"):
        self.loop = loop
        self.name = name
        self.host_ca = pki.new_ssh_key(comment=f"{name} host CA")
        self.user_ca = pki.new_ssh_key(comment=f"{name} user CA")
        self.proxy_key = pki.new_ssh_key(comment=f"{name} proxy")
        self.handshakes: list[dict] = []
        self.requests: list[str] = []       # every HTTP request that reached the web server (its path)
        self.dials = 0                      # TCP connections the leaf made to the tunnel listener
        self.tunnels_closed = 0
        self.answer = lambda request: self.honest_answer()
        self.hello = lambda: {"cluster": self.name, "proxy": "p1", "proxies": ["p1"], "interval": 1.0}
        self.web_port = self.tunnel_port = 0
        self._runner = None
        self._acceptor = None

    @property
    def web_addr(self) -> str:
        return f"127.0.0.1:{self.web_port}"

    @property
    def tunnel_addr(self) -> str:
        return f"127.0.0.1:{self.tunnel_port}"

    def honest_answer(self) -> dict:
        """What a real root answers (its own two CAs, its tunnel address)."""
        return {"cluster_name": self.name, "version": __version__, "host_ca": self.host_ca.public_line,
                "user_ca": self.user_ca.public_line, "tunnel_addr": self.tunnel_addr}

    def start(self) -> "FakeRoot":
        self.loop.run(self._start())
        return self

    def stop(self) -> None:
        self.loop.run(self._stop())

    async def _start(self) -> None:
        from aiohttp import web

        @web.middleware
        async def count(request, handler):
            self.requests.append(request.path)
            return await handler(request)

        app = web.Application(client_max_size=4 * 1024 * 1024, middlewares=[count])
        app.router.add_post(VALIDATE_PATH, self._validate)
        app.router.add_get(PING_PATH, self._ping)
        key_pem, cert_pem = pki.self_signed_web_cert(["localhost"], ["127.0.0.1"])
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as tmp:
            cert_path, key_path = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
            pki.write_secret(cert_path, cert_pem)
            pki.write_secret(key_path, key_pem)
            ctx.load_cert_chain(cert_path, key_path)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        self.web_port = site._server.sockets[0].getsockname()[1]  # pylint: disable=protected-access
        keypair = _keypair(self.proxy_key.private_openssh,
                           _cert(self.user_ca, self.proxy_key, "user", "proxy:p1", [TUNNEL_LOGIN],
                                 {"permit-port-forwarding": ""}))
        root = self

        class _Client(asyncssh.SSHClient):
            def connection_made(self, conn):
                root.dials += 1

        self._acceptor = await asyncssh.listen_reverse(
            "127.0.0.1", 0, client_factory=_Client, acceptor=self._accepted, username=TUNNEL_LOGIN,
            known_hosts=None, client_keys=[keypair], config=None, encoding=None, login_timeout=15)
        self.tunnel_port = self._acceptor.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _validate(self, request):
        from aiohttp import web
        body = await request.json()
        self.handshakes.append(body)
        answer = self.answer(body)
        if isinstance(answer, (bytes, str)):
            return web.Response(body=answer if isinstance(answer, bytes) else answer.encode(),
                                content_type="application/json")
        return web.json_response(answer)

    async def _ping(self, request):
        from aiohttp import web
        return web.json_response({"cluster_name": self.name,
                                  "proxy": {"ssh": {"ssh_tunnel_public_addr": self.tunnel_addr}}})

    def _accepted(self, conn) -> None:
        asyncio.get_running_loop().create_task(self._heartbeats(conn))

    async def _heartbeats(self, conn) -> None:
        try:
            writer, reader, _ = await conn.open_session(subsystem=HEARTBEAT_SUBSYSTEM, encoding=None)

            async def send():
                while True:
                    writer.write(json.dumps(self.hello()).encode() + b"\n")
                    await asyncio.sleep(1.0)

            sender = asyncio.create_task(send())
            try:
                while await reader.readline():
                    pass
            finally:
                sender.cancel()
        except (asyncssh.Error, OSError):
            pass
        finally:
            self.tunnels_closed += 1
            conn.close()


# ------------------------------------------------------------------------------------ SSH hosts
class HostileSSHHost:
    """An SSH server whose host certificate is signed by CA for PRINCIPALS (another cluster's CA,
    say); `auth_attempts` counts clients that accepted its host key and began to authenticate."""

    def __init__(self, loop: LoopThread, ca: pki.SSHKeyPair, principals: list[str]):
        self.loop = loop
        self.key = pki.new_ssh_key(comment="hostile host")
        self.keypair_lines = (self.key.private_openssh, _cert(ca, self.key, "host", "node:hostile", principals))
        self.auth_attempts = 0
        self.port = 0
        self._server = None

    def start(self) -> "HostileSSHHost":
        self.loop.run(self._start())
        return self

    async def _start(self) -> None:
        host = self

        class _Server(asyncssh.SSHServer):
            def begin_auth(self, username):
                host.auth_attempts += 1
                return True

            def public_key_auth_supported(self):
                return True

            def validate_public_key(self, username, key):
                return True  # would take any user: the client must never get this far

            def validate_ca_key(self, username, key):
                return True

        self._server = await asyncssh.create_server(_Server, "127.0.0.1", 0,
                                                    server_host_keys=[_keypair(*self.keypair_lines)], config=None)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._server is not None:
            self.loop.loop.call_soon_threadsafe(self._server.close)


def tunnel_identity(data_dir: str) -> tuple[str, str]:
    """(private key, tunnel certificate) of the root proxy whose identity is under DATA_DIR: the real
    certificate its auth issues for the tunnels (`/v1/tunnels/cert`), as a compromised proxy holds it."""
    from gatehouse.client import APIClient
    from gatehouse.identity import IdentityFiles
    ident = IdentityFiles(os.path.join(data_dir, "identity", "proxy"))
    private = ident.read("ssh_key")
    public = pki.ssh_public_from_private(private)
    cert = APIClient.for_identity(ident).post("/v1/tunnels/cert", {"ssh_public_key": public})["ssh_cert"]
    return private, cert


def present_user_certificate(loop: LoopThread, host: str, port: int, username: str, private: str,
                             cert: str) -> tuple[bool, list[str]]:
    """Log in to an SSH server with a certificate: (authenticated, auth banners it sent)."""
    banners: list[str] = []

    class _Client(asyncssh.SSHClient):
        def auth_banner_received(self, msg, lang):
            banners.append(msg.strip())

    async def attempt() -> bool:
        try:
            conn = await asyncssh.connect(host, port, username=username, client_keys=[_keypair(private, cert)],
                                          known_hosts=None, config=None, agent_path=None,
                                          client_factory=_Client, login_timeout=15)
        except asyncssh.PermissionDenied:
            return False
        conn.close()
        return True

    return loop.run(attempt()), banners


def backend_keys(data_dir: str, prefix: str) -> list[str]:
    """The keys under PREFIX in the backend of the auth service under DATA_DIR (read directly)."""
    found: list[str] = []

    async def read(backend):
        found.extend(i.key for i in await backend.get_range(prefix))

    backend_edit(data_dir, read)
    return sorted(found)


def backend_edit(data_dir: str, edit) -> None:
    """Run ``await edit(backend)`` on the SQLite backend of the auth service under DATA_DIR (which
    may be running: SQLite in WAL mode takes a second writer, and its watchers poll)."""
    from gatehouse.backend import open_backend

    async def run():
        backend = await open_backend({}, data_dir)
        try:
            await edit(backend)
        finally:
            await backend.close()

    asyncio.run(run())
