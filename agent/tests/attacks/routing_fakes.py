"""Hostile members for the routing attack tests: they speak the real protocols with real keys.

* ``HostileNode``  a node that joined with a real node token (the project's own join
  code), then sends whatever heartbeats and API requests it likes;
* ``Listener``     a TCP listener that counts connections (an address a hostile member
  tries to make a proxy dial);
* ``FakeLeaf``     a leaf proxy that dials a root's tunnel port with a real leaf proxy's
  identity and answers heartbeats and questions the way it is told to;
* ``FakeRoot``     a root proxy, with a real tunnel certificate from the root's auth,
  that a leaf dials and that sends the leaf whatever heartbeats and requests it likes;
* ``TrustPair``    a root and a leaf cluster (real daemons) with trust established;
* ``user_connection`` an asyncssh connection with a user's `gate` certificate, straight
  to a node or through a proxy, for attacks `gate` cannot express.

Fakes that keep connections run their own event loop in a thread, so the (synchronous)
tests drive real daemons and the fakes side by side.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time

import asyncssh
import yaml

from conftest import Cluster, free_port, ok, wait_until, write_yaml

from gatehouse import pki
from gatehouse.client import APIClient
from gatehouse.config import parse
from gatehouse.identity import IdentityFiles
from gatehouse.member.join import obtain_identity
from gatehouse.wire import ACCESS_SUBSYSTEM, HEARTBEAT_SUBSYSTEM, NODES_SUBSYSTEM, TUNNEL_LOGIN, TUNNEL_PRINCIPAL

PASSWORD = "correct horse battery"


# --------------------------------------------------------------------------- clusters
def configure(cluster: Cluster, **sections: dict) -> Cluster:
    """Add keys to sections of CLUSTER's config before it starts (e.g. ssh_service={"max_sessions": 3})."""
    with open(cluster.config_path, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh)
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    write_yaml(cluster.config_path, yaml.safe_dump(cfg))
    return cluster


def node_token(cluster: Cluster) -> str:
    out = ok(cluster.run_gatectl("tokens", "add", "--type=node", "--ttl=15m", "--format", "json"))
    return json.loads(out)["token"]


def ca_pin(cluster: Cluster) -> str:
    with open(os.path.join(cluster.data_dir, "admin", "ca.crt"), encoding="utf-8") as fh:
        return pki.tls_fingerprint(fh.read())


def member_api(cluster: Cluster, role: str) -> APIClient:
    """The auth API as the cluster's own ROLE identity ("proxy" or "node"): a compromised member."""
    return APIClient.for_identity(IdentityFiles(os.path.join(cluster.data_dir, "identity", role)))


def raw_call(api: APIClient, method: str, path: str, body=None, params=None) -> tuple[int, dict]:
    """(HTTP status, JSON answer) for any body, valid or not (no error is raised)."""
    resp = api.session.request(method, api.base_url + path, params=params, timeout=30,
                               data=body if isinstance(body, (bytes, str)) else None,
                               json=None if isinstance(body, (bytes, str)) else body,
                               headers={"Content-Type": "application/json"})
    try:
        payload = resp.json()
    except ValueError:
        payload = {"raw": resp.text}
    return resp.status_code, payload


class HostileNode:
    """A node with a real identity, joined to CLUSTER with a node token, that lies in its heartbeats."""

    def __init__(self, cluster: Cluster, name: str, principals: list[str] = ()):
        """PRINCIPALS: the names it asks auth to put in its certificates (auth decides what it signs)."""
        self.cluster = cluster
        self.name = name
        data_dir = os.path.join(cluster.tmp, f"hostile-{name}")
        cfg = parse({"gatehouse": {"nodename": name, "data_dir": data_dir, "auth_servers": [cluster.auth_addr],
                                   "join_token": node_token(cluster), "ca_pin": ca_pin(cluster)},
                     "ssh_service": {"enabled": True}}, os.path.join(data_dir, "gatehouse.yaml"))
        self.ident = asyncio.run(obtain_identity(cfg, "node", name, list(principals)))
        self.api = APIClient.for_identity(self.ident)

    def heartbeat(self, addr: str, hostname: str | None = None, labels: dict | None = None,
                  name: str | None = None) -> dict:
        body = {"name": name or self.name, "addr": addr, "labels": labels or {}, "interval": 5}
        if hostname is not None:
            body["hostname"] = hostname
        return self.api.post("/v1/nodes/heartbeat", body)

    def raw(self, method: str, path: str, body=None, params=None) -> tuple[int, dict]:
        return raw_call(self.api, method, path, body, params)


def node_record(cluster: Cluster, name: str) -> dict | None:
    r = cluster.run_gatectl("get", f"node/{name}", "--format", "json")
    return json.loads(r.stdout)[0] if r.returncode == 0 else None


# --------------------------------------------------------------------------- listeners
class Listener:
    """A TCP listener on HOST:PORT that accepts and counts connections (and closes them)."""

    def __init__(self, host: str, port: int = 0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.host, self.port = self.sock.getsockname()[:2]
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self.sock.close()


# --------------------------------------------------------------------------- SSH as a user
def _profile(profile_dir: str):
    key = asyncssh.read_private_key(os.path.join(profile_dir, "key"))
    cert = asyncssh.read_certificate(os.path.join(profile_dir, "key-cert.pub"))
    return key, cert


async def user_connection(profile_dir: str, host: str, port: int, login: str, *, tunnel=None,
                          known_hosts=None, **kw) -> asyncssh.SSHClientConnection:
    """An SSH connection as the user of a `gate` profile (their key and certificate)."""
    key, cert = _profile(profile_dir)
    return await asyncssh.connect(host, port, username=login, client_keys=[(key, cert)], known_hosts=known_hosts,
                                  agent_path=None, config=None, tunnel=tunnel, preferred_auth="publickey", **kw)


async def via_proxy(profile_dir: str, proxy_port: int, target: str, login: str, **kw):
    """(proxy connection, node connection): TARGET (node.cluster) reached through the proxy's
    direct-tcpip route, as `ssh -J` does, checking the node's host certificate against the
    profile's known_hosts."""
    proxy = await user_connection(profile_dir, "127.0.0.1", proxy_port, login)
    try:
        node = await user_connection(profile_dir, target, 3022, login, tunnel=proxy,
                                     known_hosts=os.path.join(profile_dir, "known_hosts"), **kw)
    except BaseException:
        proxy.close()
        raise
    return proxy, node


# --------------------------------------------------------------------------- trust
def tc_resource(token: str, web: str, role_map: list, root: str, tunnel_addr: str = "") -> str:
    spec = {"enabled": True, "token": token, "web_proxy_addr": web, "role_map": role_map}
    if tunnel_addr:
        spec["tunnel_addr"] = tunnel_addr
    return json.dumps({"kind": "trusted_cluster", "version": "v2", "metadata": {"name": root}, "spec": spec})


class TrustPair:
    """A root and a leaf cluster (one daemon each) and the trust between them."""

    def __init__(self, tmp: str, root: str = "root.test", leaf: str = "leaf.test", *, nodes: bool = True,
                 root_node: str = "rootnode", leaf_node: str = "leafnode"):
        self.tmp = tmp
        self.root = Cluster(os.path.join(tmp, "root"), extra_auth=", login_rate: 600", cluster_name=root,
                            node_name=root_node, ssh=nodes)
        self.leaf = Cluster(os.path.join(tmp, "leaf"), extra_auth=", login_rate: 600", cluster_name=leaf,
                            node_name=leaf_node, ssh=nodes, extra_general=", insecure: true")

    def start(self) -> "TrustPair":
        self.root.start()
        self.leaf.start()
        return self

    def join(self, role_map: list, tunnel_addr: str = "", wait_online: bool = True) -> None:
        out = ok(self.root.run_gatectl("tokens", "add", "--type=trusted_cluster", "--ttl=15m", "--format", "json"))
        token = json.loads(out)["token"]
        path = write_yaml(os.path.join(self.leaf.tmp, "tc.json"),
                          tc_resource(token, self.root.web_addr, role_map, self.root.cluster_name, tunnel_addr))
        ok(self.leaf.run_gatectl("create", path))
        if wait_online:
            self.wait_leaf("online")

    def leaf_status(self) -> str:
        r = self.root.run_gatectl("get", f"rc/{self.leaf.cluster_name}", "--format", "json")
        return json.loads(r.stdout)[0]["status"]["connection"] if r.returncode == 0 else ""

    def wait_leaf(self, status: str, timeout: float = 30) -> None:
        wait_until(lambda: self.leaf_status() == status, timeout, f"leaf {status} at the root")

    def stop(self) -> None:
        self.leaf.stop()
        self.root.stop()


# --------------------------------------------------------------------------- fakes on a loop thread
class _LoopThread:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, awaitable, timeout: float = 30):
        async def wait():
            return await awaitable  # asyncssh's connect/listen return awaitables, not coroutines
        return asyncio.run_coroutine_threadsafe(wait(), self.loop).result(timeout)

    def stop(self) -> None:
        async def cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            self.run(cancel_all(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)


class _AcceptAnyUser(asyncssh.SSHServer):
    """A fake leaf's SSH server end: it lets the root proxy's tunnel certificate in (any CA)."""

    def begin_auth(self, username):
        return True

    def public_key_auth_supported(self):
        return True

    def validate_public_key(self, username, key):
        return False

    def validate_ca_key(self, username, key):
        return username == TUNNEL_LOGIN


class FakeLeaf(_LoopThread):
    """A leaf proxy, with a real leaf proxy's identity (IDENTITY_DIR), that dials a root's tunnel port.

    ``heartbeats`` is the list of lines it sends first on the heartbeat subsystem (then a
    valid heartbeat every second); ``answer`` says how it answers node-list and access
    questions: "endless" streams bytes until the root cuts it off, else it is the text sent.
    """

    def __init__(self, identity_dir: str, root_tunnel_port: int, *, cluster: str, heartbeats=(), answer="endless"):
        super().__init__()
        self.ident = IdentityFiles(identity_dir)
        self.port = root_tunnel_port
        self.cluster = cluster
        self.heartbeats = list(heartbeats)
        self.answer = answer
        self.streamed = 0          # bytes of the endless answer the root accepted before cutting it off
        self.stream_ended = threading.Event()
        self.hellos: list[str] = []
        self.conn = None

    def start(self) -> "FakeLeaf":
        self.conn = self.run(self._dial())
        return self

    async def _dial(self):
        return await asyncssh.connect_reverse(
            "127.0.0.1", self.port, server_factory=_AcceptAnyUser, process_factory=self._serve,
            server_host_keys=[self.ident.ssh_host_keypair()], encoding=None, config=None)

    async def _serve(self, process) -> None:
        try:
            if process.subsystem == HEARTBEAT_SUBSYSTEM:
                await self._heartbeats(process)
            elif process.subsystem in (NODES_SUBSYSTEM, ACCESS_SUBSYSTEM):
                await self._answer(process)
        except (asyncssh.Error, OSError, asyncio.CancelledError):
            pass
        finally:
            process.exit(0)

    async def _heartbeats(self, process) -> None:
        async def read():
            while True:
                line = await process.stdin.readline()
                if not line:
                    return
                self.hellos.append(line.decode(errors="replace"))

        reader = asyncio.ensure_future(read())
        try:
            for line in self.heartbeats:
                process.stdout.write(line if isinstance(line, bytes) else line.encode())
            while True:
                beat = {"cluster": self.cluster, "proxy": "fake-leaf-proxy", "interval": 1}
                process.stdout.write(json.dumps(beat).encode() + b"\n")
                await asyncio.sleep(1)
        finally:
            reader.cancel()

    async def _answer(self, process) -> None:
        if self.answer != "endless":
            process.stdout.write(self.answer.encode())
            return
        chunk = b"[" * 65536  # never valid JSON, never ending
        try:
            while not process.channel.is_closing():
                process.stdout.write(chunk)
                await process.stdout.drain()
                self.streamed += len(chunk)
        finally:
            self.stream_ended.set()

    def stop(self) -> None:
        if self.conn is not None:
            self.loop.call_soon_threadsafe(self.conn.close)
        time.sleep(0.2)
        super().stop()


class FakeRoot(_LoopThread):
    """A root proxy a leaf dials: it holds a real tunnel certificate from the root's auth (asked
    for with the root proxy's identity, as a compromised root proxy can). On every tunnel it
    opens the heartbeat subsystem, sends ``heartbeats`` (lines) first, then a valid hello every
    second; ``ask`` sends the leaf any request."""

    def __init__(self, root: Cluster, heartbeats=()):
        super().__init__()
        self.root = root
        self.heartbeats = list(heartbeats)
        self.port = free_port()
        self.conns: list = []
        self.connected = threading.Event()
        self.received: list[str] = []   # heartbeat lines from the leaf
        self._acceptor = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "FakeRoot":
        ident = IdentityFiles(os.path.join(self.root.data_dir, "identity", "proxy"))
        key = ident.ssh_key()
        cert = member_api(self.root, "proxy").post(
            "/v1/tunnels/cert", {"ssh_public_key": key.export_public_key().decode().strip()})["ssh_cert"]
        keypair = (key, asyncssh.import_certificate(cert))
        self._acceptor = self.run(asyncssh.listen_reverse(
            "127.0.0.1", self.port, acceptor=self._accepted, username=TUNNEL_LOGIN, host_key_alias=TUNNEL_PRINCIPAL,
            known_hosts=None, client_keys=[keypair], config=None, agent_path=None, encoding=None))
        return self

    def _accepted(self, conn) -> None:
        self.conns.append(conn)
        self.connected.set()
        asyncio.ensure_future(self._heartbeats(conn))

    async def _heartbeats(self, conn) -> None:
        try:
            writer, reader, _ = await conn.open_session(subsystem=HEARTBEAT_SUBSYSTEM)

            async def read():
                while True:
                    line = await reader.readline()
                    if not line:
                        return
                    self.received.append(line.decode(errors="replace"))

            task = asyncio.ensure_future(read())
            for line in self.heartbeats:
                writer.write(line if isinstance(line, bytes) else line.encode())
            try:
                while not writer.channel.is_closing():
                    hello = {"cluster": self.root.cluster_name, "proxy": "fake-root-proxy",
                             "proxies": ["fake-root-proxy"], "interval": 1}
                    writer.write(json.dumps(hello).encode() + b"\n")
                    await asyncio.sleep(1)
            finally:
                task.cancel()
        except (asyncssh.Error, OSError):
            pass

    def ask(self, subsystem: str, payload: bytes) -> bytes:
        """Send PAYLOAD as a request on SUBSYSTEM over the newest tunnel; the leaf's answer (bytes)."""
        return self.run(self._ask(subsystem, payload))

    async def _ask(self, subsystem: str, payload: bytes) -> bytes:
        writer, reader, _ = await self.conns[-1].open_session(subsystem=subsystem)
        try:
            writer.write(payload)
            writer.write_eof()
        except (asyncssh.Error, OSError):
            pass
        return await asyncio.wait_for(reader.read(), 20)

    def stop(self) -> None:
        for conn in self.conns:
            self.loop.call_soon_threadsafe(conn.close)
        if self._acceptor is not None:
            self.loop.call_soon_threadsafe(self._acceptor.close)
        time.sleep(0.2)
        super().stop()
