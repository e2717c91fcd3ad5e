"""A highly available root on loopback, for the HA tests and bench/bench_ha.py.

:class:`HARoot` runs the root the way docs/operations.md ("A highly available root")
describes, every part a real process on 127.0.0.1:

* PostgreSQL (a :class:`integration.pgserver.PgServer` the caller starts; with an empty
  ``conn_string`` the auth servers use their embedded SQLite file instead, for comparisons),
* ``auth_count`` auth servers (``gatehouse start`` with only ``auth_service``), all with
  the same ``storage`` section, each listing the others in ``gatehouse.auth_servers``,
* ``proxy_count`` proxies (only ``proxy_service``), joined with one proxy token, listing
  every auth server, serving one web certificate, and advertising the load balancer,
* haproxy in TCP mode in front of the proxies (web, SSH and tunnel ports, health checks,
  failed connections redispatched to the other proxy),
* a root node ``rootnode`` (only ``ssh_service``) listing every auth server.

``gatectl(i, ...)`` runs gatectl with auth server *i*'s admin identity (whose address
list names the other auth servers too); ``gate(home, ...)`` and ``login(home, user)``
run ``gate`` against the load balancer. ``trust_leaf`` makes a leaf cluster trust the root;
:class:`RoleWriters` writes roles through each auth server at once (failover tests and
bench/bench_ha.py count what was acknowledged).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from conftest import Daemon, base_env, free_port, run_module, wait_until, write_yaml

ROOT = "root.test"
PASSWORD = "correct horse battery"

HAPROXY = """global
  maxconn 4000
defaults
  mode tcp
  timeout connect 2s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
  retries 3
  option redispatch
  default-server check inter 500ms fall 2 rise 1
{sections}"""


def wait_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    def up():
        with socket.socket() as probe:
            probe.settimeout(0.5)
            return probe.connect_ex((host, port)) == 0
    wait_until(up, timeout, f"port {port} to listen")


class Proc:
    """A daemon that is not gatehouse (haproxy): started, killed, its log in a file."""

    def __init__(self, argv: list[str], log_path: str):
        self.argv, self.log_path = argv, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Proc":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class HARoot:
    def __init__(self, tmp: str, conn_string: str, *, auth_count: int = 2, proxy_count: int = 2,
                 node: bool = True, extra_auth: str = "", severity: str = "DEBUG"):
        self.tmp = tmp
        os.makedirs(tmp, exist_ok=True)
        self.conn_string = conn_string
        self.severity = severity
        self.extra_auth = extra_auth
        self.auth_ports = [free_port() for _ in range(auth_count)]
        self.auth_addrs = [f"127.0.0.1:{p}" for p in self.auth_ports]
        self.proxy_ports = [(free_port(), free_port(), free_port()) for _ in range(proxy_count)]  # web, ssh, tunnel
        self.lb_web, self.lb_ssh, self.lb_tunnel = free_port(), free_port(), free_port()
        self.web_addr = f"127.0.0.1:{self.lb_web}"
        self.node_port = free_port() if node else 0
        self.auths = [self._auth_daemon(i) for i in range(auth_count)]
        self.proxies: list[Daemon] = []
        self.node: Daemon | None = None
        self.lb: Proc | None = None

    # ------------------------------------------------------------------ configs
    def data_dir(self, name: str) -> str:
        return os.path.join(self.tmp, name, "data")

    def _general(self, name: str, auth_servers: list[str], extra: str = "") -> str:
        servers = ", ".join(f"'{a}'" for a in auth_servers)
        return (f"gatehouse: {{nodename: {name}, data_dir: '{self.data_dir(name)}', auth_servers: [{servers}], "
                f"log: {{severity: {self.severity}}}{extra}}}\n")

    def _auth_daemon(self, i: int) -> Daemon:
        name = f"auth{i}"
        others = [a for j, a in enumerate(self.auth_addrs) if j != i]
        storage = ", storage: " + json.dumps({"type": "postgresql", "conn_string": self.conn_string}) \
            if self.conn_string else ""
        cfg = (self._general(name, others) +
               f"auth_service: {{enabled: true, cluster_name: {ROOT}, listen_addr: '{self.auth_addrs[i]}', "
               f"login_rate: 600{storage}{self.extra_auth}}}\n")
        return self._daemon(name, cfg)

    def _daemon(self, name: str, cfg: str) -> Daemon:
        os.makedirs(os.path.join(self.tmp, name), exist_ok=True)
        path = write_yaml(os.path.join(self.tmp, name, "gatehouse.yaml"), cfg)
        return Daemon(path, os.path.join(self.tmp, name, "gatehouse.log"))

    def _proxy_daemon(self, i: int, token: str, pin: str) -> Daemon:
        web, ssh, tunnel = self.proxy_ports[i]
        cert, key = (os.path.join(self.tmp, f) for f in ("web.crt", "web.key"))
        cfg = (self._general(f"proxy{i}", self.auth_addrs, f", join_token: '{token}', ca_pin: '{pin}'") +
               f"proxy_service: {{enabled: true, web_listen_addr: '127.0.0.1:{web}', "
               f"listen_addr: '127.0.0.1:{ssh}', tunnel_listen_addr: '127.0.0.1:{tunnel}', "
               f"public_addr: '127.0.0.1:{self.lb_web}', ssh_public_addr: '127.0.0.1:{self.lb_ssh}', "
               f"tunnel_public_addr: '127.0.0.1:{self.lb_tunnel}', https_cert_file: '{cert}', "
               f"https_key_file: '{key}'}}\n")
        return self._daemon(f"proxy{i}", cfg)

    def _haproxy_config(self) -> str:
        out = []
        for name, front, index in (("web", self.lb_web, 0), ("ssh", self.lb_ssh, 1), ("tunnel", self.lb_tunnel, 2)):
            servers = "".join(f"  server p{i} 127.0.0.1:{ports[index]}\n" for i, ports in enumerate(self.proxy_ports))
            out.append(f"frontend {name}\n  bind 127.0.0.1:{front}\n  default_backend {name}_b\n"
                       f"backend {name}_b\n  balance roundrobin\n{servers}")
        return HAPROXY.format(sections="".join(out))

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "HARoot":
        from gatehouse import pki
        key_pem, cert_pem = pki.self_signed_web_cert(["localhost"], ["127.0.0.1"])
        write_yaml(os.path.join(self.tmp, "web.crt"), cert_pem)
        write_yaml(os.path.join(self.tmp, "web.key"), key_pem)
        # The auth servers start at the same time: one creates the CAs, the others use them.
        for auth in self.auths:
            auth.start(wait=False)
        for auth in self.auths:
            auth.wait_ready()
        pin = self.ca_pin()
        token = json.loads(self.ok(0, "tokens", "add", "--type=proxy", "--ttl=1h", "--format", "json"))["token"]
        self.proxies = [self._proxy_daemon(i, token, pin) for i in range(len(self.proxy_ports))]
        for proxy in self.proxies:
            proxy.start()
        self.lb = Proc([haproxy_binary(), "-db", "-f", write_yaml(os.path.join(self.tmp, "haproxy.cfg"),
                                                             self._haproxy_config())],
                       os.path.join(self.tmp, "haproxy.log")).start()
        wait_port(self.lb_web)
        if self.node_port:
            node_token = json.loads(self.ok(0, "tokens", "add", "--type=node", "--ttl=1h", "--format",
                                            "json"))["token"]
            self.node = self._daemon("rootnode", self._general(
                "rootnode", self.auth_addrs, f", join_token: '{node_token}', ca_pin: '{pin}'") +
                f"ssh_service: {{enabled: true, listen_addr: '127.0.0.1:{self.node_port}', "
                f"labels: {{site: root}}}}\n")
            self.node.start()
            wait_until(lambda: self.gatectl(0, "get", "node/rootnode").returncode == 0, 30, "rootnode registered")
        return self

    def stop(self) -> None:
        for daemon in [self.node, *self.proxies, *self.auths]:
            if daemon is not None:
                daemon.stop()
        if self.lb is not None:
            self.lb.stop()

    def start_again(self) -> "HARoot":
        """After stop(): the same daemons, identities, certificates and load balancer, as when the
        root's machines come back (start() would make a new web certificate and new tokens)."""
        for auth in self.auths:
            auth.start(wait=False)
        for auth in self.auths:
            auth.wait_ready()
        for daemon in [*self.proxies, self.node]:
            if daemon is not None:
                daemon.start()
        self.lb.start()
        wait_port(self.lb_web)
        return self

    @staticmethod
    def kill(daemon: Daemon) -> None:
        """kill -9, as a crash or a lost host."""
        daemon.proc.kill()
        daemon.proc.wait(10)

    # ------------------------------------------------------------------ commands
    def gatectl(self, i: int, *args, input=None, auth_server: str = "") -> subprocess.CompletedProcess:
        """gatectl with auth server I's admin identity (AUTH_SERVER overrides the addresses)."""
        extra = [f"--auth-server={auth_server}"] if auth_server else []
        return run_module("gatectl", "-d", self.data_dir(f"auth{i}"), *extra, *args, input=input)

    def ok(self, i: int, *args, input=None, auth_server: str = "") -> str:
        r = self.gatectl(i, *args, input=input, auth_server=auth_server)
        assert r.returncode == 0, f"gatectl {' '.join(map(str, args))}: exit {r.returncode}: {r.stderr}{r.stdout}"
        return r.stdout

    def ca_pin(self) -> str:
        from gatehouse import pki
        with open(os.path.join(self.data_dir("auth0"), "admin", "ca.crt"), encoding="utf-8") as fh:
            return pki.tls_fingerprint(fh.read())

    def add_user(self, name: str, roles: str, logins: str, password: str = PASSWORD, i: int = 0) -> None:
        self.ok(i, "users", "add", name, f"--roles={roles}", f"--logins={logins}", "--password-stdin",
                input=password + "\n")

    def gate(self, home: str, *args, input=None, timeout: float = 60) -> subprocess.CompletedProcess:
        return run_module("gate", *args, input=input, env=base_env(GATE_HOME=home), timeout=timeout)

    def login(self, home: str, user: str, password: str = PASSWORD) -> subprocess.CompletedProcess:
        return self.gate(home, "login", f"--proxy={self.web_addr}", f"--user={user}", "--insecure",
                         "--password-stdin", input=password + "\n")

    def gate_popen(self, home: str, *args, stdin=subprocess.DEVNULL) -> subprocess.Popen:
        """A long-running `gate` (a session), its output read by the caller (its input written, with
        stdin=subprocess.PIPE)."""
        return subprocess.Popen([sys.executable, "-m", "gatehouse.cli.gate", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=stdin, text=True,
                                env=base_env(GATE_HOME=home))

    def admin_api(self, i: int, single: bool = True):
        """The sync API client with auth server I's admin identity; SINGLE: that server only (no failover)."""
        from gatehouse.client import APIClient
        from gatehouse.identity import IdentityFiles
        ident = IdentityFiles(os.path.join(self.data_dir(f"auth{i}"), "admin"))
        return APIClient.for_identity(ident, f"https://{self.auth_addrs[i]}" if single else None)

    def member_api(self, kind: str, i: int):
        """The sync API client with a member's identity (proxy0's or rootnode's) to auth server I only."""
        from gatehouse.client import APIClient
        from gatehouse.identity import IdentityFiles
        name = {"proxy": "proxy0", "node": "rootnode"}[kind]
        ident = IdentityFiles(os.path.join(self.data_dir(name), "identity", kind))
        return APIClient.for_identity(ident, f"https://{self.auth_addrs[i]}")


def trust_leaf(root: HARoot, leaf, path: str, token_server: int = 0) -> None:
    """LEAF (a conftest.Cluster) trusts ROOT through the load balancer, the root's role "access"
    mapped to the leaf's; the one-time token is removed afterwards (nothing left to join again with).
    PATH: where the trusted_cluster resource file is written."""
    token = json.loads(root.ok(token_server, "tokens", "add", "--type=trusted_cluster", "--ttl=15m",
                               "--format", "json"))["token"]
    tc = {"kind": "trusted_cluster", "version": "v2", "metadata": {"name": ROOT},
          "spec": {"enabled": True, "token": token, "web_proxy_addr": root.web_addr,
                   "role_map": [{"remote": "access", "local": ["access"]}]}}
    r = leaf.run_gatectl("create", write_yaml(path, json.dumps(tc)))
    assert r.returncode == 0, f"the leaf could not trust the root: {r.stderr}{r.stdout}"
    root.ok(token_server, "tokens", "rm", token)


class RoleWriters:
    """One thread per auth server in SERVERS, each putting roles ("PREFIX-SERVER-N") through its own
    server only (no client failover), so an acknowledged write names the server that took it. Errors
    (server or database away) are counted and writing goes on, or that thread ends if STOP_ON_ERROR.
    Use as a context manager: the threads stop and are joined on exit."""

    def __init__(self, root: HARoot, servers=(0, 1), prefix: str = "w", stop_on_error: bool = False):
        self.root, self.prefix, self.stop_on_error = root, prefix, stop_on_error
        self.acked: dict[str, float] = {}       # role name -> time.monotonic() of its acknowledgement
        self.failed = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._write, args=(i,), daemon=True) for i in servers]

    @staticmethod
    def role(name: str, n: int = 0) -> dict:
        return {"kind": "role", "version": "v5", "metadata": {"name": name, "description": "x" * (n % 50)},
                "spec": {"allow": {"logins": ["visitor"], "node_labels": {"site": "root"}}}}

    def _write(self, server: int) -> None:
        api = self.root.admin_api(server)
        n = 0
        while not self.stop.is_set():
            name = f"{self.prefix}-{server}-{n}"
            try:
                api.put("/v1/resources", {"resource": self.role(name, n)})
                with self.lock:
                    self.acked[name] = time.monotonic()
            except Exception:   # noqa: BLE001 - the server or its database went away: outcome unknown
                with self.lock:
                    self.failed += 1
                if self.stop_on_error:
                    return
                time.sleep(0.1)
            n += 1

    def acked_by(self, server: int, after: float = 0.0) -> int:
        with self.lock:
            return sum(1 for name, at in self.acked.items() if name.startswith(f"{self.prefix}-{server}-")
                       and at > after)

    def snapshot(self) -> dict[str, float]:
        with self.lock:
            return dict(self.acked)

    def __enter__(self) -> "RoleWriters":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def haproxy_binary() -> str:
    return shutil.which("haproxy") or "/usr/sbin/haproxy"


def haproxy_missing() -> bool:
    return not os.path.exists(haproxy_binary())
