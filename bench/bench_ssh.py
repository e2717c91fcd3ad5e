#!/usr/bin/env python3
"""Benchmark: `gate ssh` against stock OpenSSH on loopback, in one invocation.

Stands up, in a temporary directory on free loopback ports:

* a Gatehouse cluster in the shape it is deployed in: auth + proxy in one
  ``gatehouse start`` process, and the node ``node1`` in a second ``gatehouse start``
  process (``ssh_service`` only) that joins with a node join token and the CA pin, as a
  node on its own host does; ``--single-process`` runs auth, proxy and node in one
  process instead (the shape of ``make demo``). User ``alice`` with login ``ghbench``,
  logged in with ``gate login``;
* an OpenSSH ``sshd`` (the baseline) and a second ``sshd`` used as a jump host for
  the ProxyJump reference, each with its own host key, authorising a fresh
  ed25519 key for ``ghbench``.

Measures, each as the wall time of a fresh client process:

* session setup: ``gate ssh ghbench@node1 true`` vs ``ssh ... ghbench@127.0.0.1 true``
  (direct, and through the jump host for reference); median of ``--runs`` runs;
* throughput: ``--mib`` MiB of zeros piped into ``... 'cat >/dev/null'``; MB/s
  (10^6 bytes/s) end to end, setup included; median of ``--throughput-runs`` runs.

OpenSSH is pinned to ``aes128-gcm@openssh.com`` with compression off, which is what
``gate ssh`` negotiates first (``sshclient.ENCRYPTION_ALGS``); the negotiated cipher
and key exchange are recorded. One unmeasured warm-up run of every client precedes
the measured ones, and the clients run in interleaved order.

Gatehouse runs from a byte-compiled copy of ``agent/src`` in the temporary
directory, as a pip-installed agent would (``PYTHONDONTWRITEBYTECODE`` in the
environment would otherwise make every ``gate`` start compile its modules);
``--from-source`` runs ``agent/src`` itself. Besides wall time, the CPU time
(user + system) of the client processes and of each Gatehouse daemon process is
recorded, and the load average before and after the run: on a shared machine they
show what wall time alone hides.

Usage: python3 bench/bench_ssh.py [--runs N] [--mib M] [--throughput-runs K] [--quick] [--from-source]
                                  [--single-process]
Prints one JSON document on stdout; progress goes to stderr. Needs root (it starts
sshd and creates the ``ghbench`` account for the run). Everything it started is stopped and
the temporary directory removed at exit, on an error, Ctrl-C or SIGTERM/SIGHUP too.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT_SRC = os.path.join(REPO, "agent", "src")
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
CIPHER = "aes128-gcm@openssh.com"
LOGIN = "ghbench"          # a login of its own: tests and demos on the same machine manage "visitor"
NODE = "node1"
PROXY = "bench-proxy"      # nodename of the auth + proxy process when the node runs apart
TOPOLOGY_SPLIT = "auth+proxy and node in separate processes"
TOPOLOGY_SINGLE = "auth, proxy and node in one process"
PASSWORD = "bench-password-123"
SETUP_TARGET = 1.0        # gate / openssh setup time, lower is better
THROUGHPUT_TARGET = 0.8   # gate / openssh MB/s, higher is better
RUN_TIMEOUT_S = 120


def log(msg: str) -> None:
    print(f"bench_ssh: {msg}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, from_source: bool = False, single_process: bool = False) -> None:
        self.tmp = tempfile.mkdtemp(prefix="gatehouse-bench-")
        os.chmod(self.tmp, 0o755)
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.restore_shadow: str | None = None
        self.created_login = False
        self.python = sys.executable or "python3"
        self.from_source = from_source
        self.single_process = single_process
        # Gatehouse daemon processes by role, for CPU accounting: {"auth+proxy": pid, "node": pid}
        # or {"auth+proxy+node": pid}.
        self.daemons: dict[str, int] = {}
        self.gate_env: dict = {}

    def prepare_code(self) -> None:
        """Choose the Gatehouse code to run (called inside the cleanup's try, as it writes to tmp)."""
        self.agent_src = AGENT_SRC if self.from_source else self.compiled_copy()
        self.gate_env = dict(os.environ, PYTHONPATH=self.agent_src + (os.pathsep + os.environ["PYTHONPATH"]
                                                                      if os.environ.get("PYTHONPATH") else ""),
                             GATE_HOME=os.path.join(self.tmp, "gate"))
        self.gate_env.pop("SSH_AUTH_SOCK", None)

    def compiled_copy(self) -> str:
        """agent/src copied into the temp dir with its bytecode, as pip installs it."""
        dest = self.path("agent-src")
        shutil.copytree(AGENT_SRC, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        subprocess.run([self.python, "-m", "compileall", "-q", dest], check=True, stdout=subprocess.DEVNULL)
        return dest

    # ------------------------------------------------------------------ helpers
    def path(self, *parts: str) -> str:
        return os.path.join(self.tmp, *parts)

    def start(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        out = open(self.path(f"{name}.log"), "wb")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=self.tmp, start_new_session=True)
        out.close()
        self.procs.append((name, proc))
        return proc

    def log_tail(self, name: str | None = None, lines: int = 30) -> str:
        """The last lines of one process's log, or of every Gatehouse daemon's log."""
        names = [name] if name else [n for n, _ in self.procs if n.startswith("gatehouse")]
        out = []
        for n in names:
            try:
                with open(self.path(f"{n}.log"), encoding="utf-8", errors="replace") as f:
                    out.append(f"--- {n}.log\n" + "".join(f.readlines()[-lines:]))
            except OSError:
                pass
        return "".join(out)

    def cleanup(self) -> None:
        # A second SIGTERM/SIGHUP/Ctrl-C must not cut the cleanup short: hold them until it is
        # done (a held signal is delivered when the caller unblocks them, after the cleanup).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP, signal.SIGINT})
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)   # the group this script created for it
                except ProcessLookupError:
                    pass
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        self.procs.clear()
        self.stop_leftover_sessions()
        if self.restore_shadow is not None:
            subprocess.run(["usermod", "-p", self.restore_shadow, LOGIN], check=False)
            self.restore_shadow = None
        if self.created_login:
            subprocess.run(["userdel", "--remove", LOGIN], check=False, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            self.created_login = False
        shutil.rmtree(self.tmp, ignore_errors=True)

    def stop_leftover_sessions(self) -> None:
        """Session commands the node started as LOGIN run in process groups of their own, so
        stopping the daemon does not signal them; `true` and `cat` end by themselves once the
        node is gone. Anything still running as LOGIN is stopped here if this run created the
        account (then every such process is one of ours), so that `userdel` can remove it."""
        try:
            uid = pwd.getpwnam(LOGIN).pw_uid
        except KeyError:
            return
        for _ in range(20):
            left = [int(p) for p in os.listdir("/proc") if p.isdigit() and _proc_uid(int(p)) == uid]
            if not left:
                return
            time.sleep(0.1)
        if not self.created_login:
            log(f"processes of {LOGIN} still running after the run: {left}")
            return
        log(f"stopping leftover session processes of {LOGIN}: {left}")
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in left:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
            left = [p for p in left if _proc_uid(p) == uid]
            if not left:
                return

    # ------------------------------------------------------------------ setup
    def ensure_login(self) -> None:
        try:
            pwd.getpwnam(LOGIN)
        except KeyError:
            if os.geteuid() != 0:
                raise SystemExit(f"bench_ssh: Unix user {LOGIN!r} is missing and we are not root to create it")
            log(f"creating Unix user {LOGIN} for the run")
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", "--password", "*", LOGIN],
                           check=True)
            self.created_login = True
        # sshd without PAM refuses accounts whose password field starts with "!" (locked), which is
        # how useradd leaves a new account. "*" forbids password logins just the same but is not
        # "locked"; set it for the run and put the original value back at exit.
        current = ""
        try:
            with open("/etc/shadow", encoding="utf-8") as f:
                for line in f:
                    if line.startswith(LOGIN + ":"):
                        current = line.split(":")[1]
        except OSError:
            pass
        if current.startswith("!"):
            log(f"account {LOGIN} is locked ({current[:1]}...): unlocking with '*' for the run, restored at exit")
            subprocess.run(["usermod", "-p", "*", LOGIN], check=True)
            self.restore_shadow = current

    @staticmethod
    def free_ports(n: int) -> list[int]:
        socks, ports = [], []
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
        for s in socks:
            s.close()
        return ports

    def setup_openssh(self, port_direct: int, port_jump: int) -> None:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)   # sshd's privilege-separation directory
        key = self.path("client_ed25519")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", key], check=True)
        shutil.copy(key + ".pub", self.path("authorized_keys"))
        os.chmod(self.path("authorized_keys"), 0o644)
        for name, port in (("sshd_direct", port_direct), ("sshd_jump", port_jump)):
            host_key = self.path(f"{name}_host_ed25519")
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", host_key], check=True)
            cfg = self.path(f"{name}_config")
            with open(cfg, "w", encoding="utf-8") as f:
                f.write(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {self.path(name + '.pid')}
AuthorizedKeysFile {self.path('authorized_keys')}
StrictModes no
UsePAM no
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowUsers {LOGIN}
AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
PrintLastLog no
UseDNS no
Compression no
LogLevel ERROR
""")
            subprocess.run([SSHD, "-t", "-f", cfg], check=True)
            self.start(name, [SSHD, "-D", "-e", "-f", cfg])
        # One client config for both the direct and the jump connection: -F keeps the machine's
        # /etc/ssh/ssh_config and ~/.ssh/config out of it, and ssh passes -F on to the -J hop.
        with open(self.path("ssh_config"), "w", encoding="utf-8") as f:
            f.write(f"""Host *
  User {LOGIN}
  IdentityFile {key}
  IdentitiesOnly yes
  IdentityAgent none
  BatchMode yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  GlobalKnownHostsFile /dev/null
  LogLevel ERROR
  Ciphers {CIPHER}
  Compression no
  ControlMaster no
  ControlPath none
  ForwardAgent no
  ForwardX11 no
  RequestTTY no
""")
        base = ["ssh", "-F", self.path("ssh_config"), "-c", CIPHER, "-o", "Compression=no"]
        self.ssh_direct = base + ["-i", key, "-p", str(port_direct), f"{LOGIN}@127.0.0.1"]
        self.ssh_jump = base + ["-i", key, "-J", f"{LOGIN}@127.0.0.1:{port_jump}", "-p", str(port_direct),
                                f"{LOGIN}@127.0.0.1"]
        for port in (port_direct, port_jump):
            wait_tcp(port, 10)

    def setup_gatehouse(self) -> None:
        pa, pw, ps, pt, pn = self.free_ports(5)
        log_cfg = "log: {severity: WARN}"
        auth_proxy = f"""auth_service: {{enabled: true, cluster_name: bench.test, listen_addr: 127.0.0.1:{pa}}}
proxy_service: {{enabled: true, web_listen_addr: 127.0.0.1:{pw}, listen_addr: 127.0.0.1:{ps}, \
tunnel_listen_addr: 127.0.0.1:{pt}}}
"""
        node = f"ssh_service: {{enabled: true, listen_addr: 127.0.0.1:{pn}}}\n"
        cfg = self.path("gatehouse.yaml")
        self.node_port = pn
        if self.single_process:
            self.write(cfg, f"gatehouse: {{nodename: {NODE}, data_dir: {self.path('data')}, {log_cfg}}}\n"
                            + auth_proxy + node)
            self.start_daemon("auth+proxy+node", "gatehouse", cfg, pw)
        else:
            # auth + proxy, as on the cluster's gateway host
            self.write(cfg, f"gatehouse: {{nodename: {PROXY}, data_dir: {self.path('data')}, {log_cfg}}}\n"
                            + auth_proxy)
            self.start_daemon("auth+proxy", "gatehouse", cfg, pw)
            # the node, as on a host of its own: joins auth with a node token, checks the CA pin
            token = json.loads(self.gatemod(["gatehouse.cli.gatectl", "-c", cfg, "tokens", "add", "--type=node",
                                             "--ttl=15m", "--format", "json"]))["token"]
            pin = ca_pin(self.gatemod(["gatehouse.cli.gatectl", "-c", cfg, "status"]))
            node_cfg = self.path("gatehouse-node.yaml")
            self.write(node_cfg, f"gatehouse: {{nodename: {NODE}, data_dir: {self.path('data-node')}, {log_cfg}, "
                                 f"auth_servers: ['127.0.0.1:{pa}'], join_token: '{token}', ca_pin: '{pin}'}}\n"
                                 + node)
            self.start_daemon("node", "gatehouse-node", node_cfg)
        self.gatemod(["gatehouse.cli.gatectl", "-c", cfg, "users", "add", "alice", "--roles=access",
                      f"--logins={LOGIN}", "--password-stdin"], stdin=PASSWORD + "\n")
        self.gatemod(["gatehouse.cli.gate", "login", f"--proxy=127.0.0.1:{pw}", "--user=alice", "--insecure",
                      "--password-stdin"], stdin=PASSWORD + "\n")
        deadline = time.monotonic() + 30
        while True:   # the node registers with auth asynchronously
            self.check_daemons()
            out = self.gatemod(["gatehouse.cli.gate", "ls", "--format=json"])
            if any(n["metadata"]["name"] == NODE for n in json.loads(out)):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {NODE} never registered:\n{self.log_tail()}")
            time.sleep(0.2)
        self.gate_ssh = [self.python, "-m", "gatehouse.cli.gate", "ssh", "-p", str(pn), f"{LOGIN}@{NODE}"]

    @staticmethod
    def write(path: str, text: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)

    def start_daemon(self, role: str, name: str, cfg: str, web_port: int | None = None) -> None:
        """`gatehouse start -c CFG`; with web_port, wait until the proxy answers /webapi/ping."""
        daemon = self.start(name, [self.python, "-m", "gatehouse.cli.daemon", "start", "-c", cfg],
                            env=self.gate_env)
        self.daemons[role] = daemon.pid
        if web_port is None:
            return
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + 60
        while True:
            self.check_daemons()
            try:
                urllib.request.urlopen(f"https://127.0.0.1:{web_port}/webapi/ping", context=ctx, timeout=2).read()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gatehouse web port never answered:\n{self.log_tail(name)}")
                time.sleep(0.1)

    def check_daemons(self) -> None:
        for name, proc in self.procs:
            if name.startswith("gatehouse") and proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def gatemod(self, args: list[str], stdin: str | None = None) -> str:
        res = subprocess.run([self.python, "-m", *args], input=stdin, capture_output=True, text=True,
                             env=self.gate_env, timeout=60)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:3])} failed ({res.returncode}): {res.stderr.strip()}\n"
                               f"{self.log_tail()}")
        return res.stdout

    # ------------------------------------------------------------------ measurements
    def time_cmd(self, argv: list[str], env: dict | None = None) -> float:
        t0 = time.perf_counter()
        res = subprocess.run(argv + ["true"], stdin=subprocess.DEVNULL, capture_output=True, env=env,
                             timeout=RUN_TIMEOUT_S)
        dt = time.perf_counter() - t0
        if res.returncode != 0:
            raise RuntimeError(f"{argv[0]} ... true failed ({res.returncode}): {res.stderr.decode(errors='replace')}")
        return dt

    def measure(self, name: str, run) -> tuple[float, float, dict | None]:
        """(wall s, client CPU s, {daemon role: CPU s}) of run().

        Client CPU: this script's children (the client, and `head` in throughput runs).
        Daemon CPU: each Gatehouse daemon process (auth+proxy and node, or all three in
        one), each with the children it reaped (the node's session commands). sshd's
        per-connection processes do not show up in the sshd master's accounting, so
        OpenSSH's server CPU is not reported (None).
        """
        daemons = self.daemons if name == "gate" else {}
        srv0 = {role: proc_cpu(pid) for role, pid in daemons.items()}
        cpu0 = children_cpu()
        wall = run()
        cpu = children_cpu() - cpu0
        return wall, cpu, ({role: proc_cpu(pid) - srv0[role] for role, pid in daemons.items()} if daemons else None)

    def time_pipe(self, argv: list[str], nbytes: int, env: dict | None = None) -> float:
        t0 = time.perf_counter()
        head = subprocess.Popen(["head", "-c", str(nbytes), "/dev/zero"], stdout=subprocess.PIPE)
        client = subprocess.Popen(argv + ["cat >/dev/null"], stdin=head.stdout, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, env=env)
        head.stdout.close()
        try:
            _, err = client.communicate(timeout=RUN_TIMEOUT_S)
        except BaseException:   # a timeout, or SIGTERM/Ctrl-C mid-run: leave no client behind
            for proc in (client, head):
                proc.kill()
                proc.wait()
            raise
        head.wait()
        dt = time.perf_counter() - t0
        if client.returncode != 0:
            raise RuntimeError(f"{argv[0]} ... cat failed ({client.returncode}): {err.decode(errors='replace')}")
        return dt

    def negotiated(self) -> dict:
        res = subprocess.run(self.ssh_direct[:1] + ["-v"] + self.ssh_direct[1:] + ["true"], capture_output=True,
                             text=True, stdin=subprocess.DEVNULL, timeout=30)
        info = {}
        for line in res.stderr.splitlines():
            if "kex: algorithm:" in line:
                info["kex"] = line.split("kex: algorithm:")[1].strip()
            elif "kex: client->server cipher:" in line:
                info["cipher"] = line.split("cipher:")[1].split()[0]
        return info


def children_cpu() -> float:
    """User + system CPU seconds of this script's finished children (clients, and `head`)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process and of the children it has reaped."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _proc_uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def ca_pin(status: str) -> str:
    """The active TLS CA fingerprint from `gatectl status` (the node's `ca_pin`)."""
    for line in status.splitlines():
        if line.startswith("tls CA ") and not line.endswith("(inactive)"):
            return line.split()[-1]
    raise RuntimeError(f"no TLS CA fingerprint in gatectl status:\n{status}")


def wait_tcp(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")
            time.sleep(0.05)


def gate_params() -> dict:
    try:
        sys.path.insert(0, AGENT_SRC)
        from gatehouse import sshparams
        return {"cipher": sshparams.ENCRYPTION_ALGS[0],
                "session_max_pktsize": getattr(sshparams, "SESSION_MAX_PKTSIZE", None),
                "proxy_max_pktsize": getattr(sshparams, "PROXY_MAX_PKTSIZE", None)}
    except Exception:   # noqa: BLE001 - informational only
        return {"cipher": "unknown"}
    finally:
        sys.path.remove(AGENT_SRC)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10, help="session-setup runs per client (default 10)")
    ap.add_argument("--mib", type=int, default=256, help="MiB pushed per throughput run (default 256)")
    ap.add_argument("--throughput-runs", type=int, default=5, help="throughput runs per client (default 5)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 3 runs, 32 MiB, 1 throughput run")
    ap.add_argument("--from-source", action="store_true",
                    help="run gate and the daemon from agent/src as it is, not from a byte-compiled copy")
    ap.add_argument("--single-process", action="store_true",
                    help="run auth, proxy and the node in one gatehouse process (default: the node in a "
                         "process of its own, as on its own host)")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.mib, args.throughput_runs = 3, 32, 1
    if args.runs < 1 or args.mib < 1 or args.throughput_runs < 1:
        ap.error("--runs, --mib and --throughput-runs must be >= 1")
    if os.geteuid() != 0:
        ap.error("run as root: the OpenSSH baseline needs its own sshd")

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    bench = Bench(from_source=args.from_source, single_process=args.single_process)
    started = time.monotonic()
    load_before = os.getloadavg()
    try:
        bench.prepare_code()
        bench.ensure_login()
        pd, pj = bench.free_ports(2)
        log("starting sshd baseline and jump host")
        bench.setup_openssh(pd, pj)
        topology = TOPOLOGY_SINGLE if args.single_process else TOPOLOGY_SPLIT
        log(f"starting gatehouse cluster: {topology}")
        bench.setup_gatehouse()
        clients = {"gate": (bench.gate_ssh, bench.gate_env), "openssh_direct": (bench.ssh_direct, None),
                   "openssh_proxyjump": (bench.ssh_jump, None)}
        for argv, env in clients.values():   # warm-up, unmeasured
            bench.time_cmd(argv, env)
        log(f"session setup: {args.runs} runs per client")
        setup = {name: [] for name in clients}
        setup_cpu = {name: [] for name in clients}
        setup_srv = {name: [] for name in clients}
        for _ in range(args.runs):
            for name, (argv, env) in clients.items():
                wall, cpu, srv = bench.measure(name, lambda: bench.time_cmd(argv, env))
                setup[name].append(wall)
                setup_cpu[name].append(cpu)
                setup_srv[name].append(srv)
        nbytes = args.mib * 1024 * 1024
        log(f"throughput: {args.mib} MiB x {args.throughput_runs} runs per client")
        tput = {name: [] for name in clients}
        tput_cpu = {name: [] for name in clients}
        tput_srv = {name: [] for name in clients}
        for _ in range(args.throughput_runs):
            for name, (argv, env) in clients.items():
                wall, cpu, srv = bench.measure(name, lambda: bench.time_pipe(argv, nbytes, env))
                tput[name].append(nbytes / wall / 1e6)
                tput_cpu[name].append(cpu)
                tput_srv[name].append(srv)
        neg = bench.negotiated()
        load_after = os.getloadavg()
    except Exception as exc:   # noqa: BLE001 - report and clean up
        log(f"FAILED: {exc}")
        return 1
    finally:
        try:
            bench.cleanup()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGHUP, signal.SIGINT})

    gate = gate_params()
    med = {k: statistics.median(v) for k, v in setup.items()}
    med_cpu = {k: statistics.median(v) for k, v in setup_cpu.items()}

    def daemon_cpu(samples: list[dict]) -> dict:
        """Median CPU seconds per daemon process, and of their sum per run."""
        out = {role: r3(statistics.median(s[role] for s in samples)) for role in samples[0]}
        if len(samples[0]) > 1:
            out["total"] = r3(statistics.median(sum(s.values()) for s in samples))
        return out
    mbps = {k: statistics.median(v) for k, v in tput.items()}
    r3 = lambda x: round(x, 3)   # noqa: E731
    setup_ratio = med["gate"] / med["openssh_direct"]
    tput_ratio = mbps["gate"] / mbps["openssh_direct"]
    report = {
        "topology": topology,
        "setup": {"gate_s": r3(med["gate"]), "openssh_direct_s": r3(med["openssh_direct"]),
                  "openssh_proxyjump_s": r3(med["openssh_proxyjump"]), "ratio_vs_direct": r3(setup_ratio),
                  "ratio_vs_proxyjump": r3(med["gate"] / med["openssh_proxyjump"]),
                  "target": f"<={SETUP_TARGET}", "meets_target": setup_ratio <= SETUP_TARGET,
                  "client_cpu_s": {k: r3(v) for k, v in med_cpu.items()},
                  "gate_daemon_cpu_s": daemon_cpu(setup_srv["gate"]),
                  "samples_s": {k: [r3(x) for x in v] for k, v in setup.items()}},
        "throughput": {"bytes": nbytes, "gate_MBps": round(mbps["gate"], 1),
                       "openssh_direct_MBps": round(mbps["openssh_direct"], 1),
                       "openssh_proxyjump_MBps": round(mbps["openssh_proxyjump"], 1),
                       "ratio_vs_direct": r3(tput_ratio),
                       "ratio_vs_proxyjump": r3(mbps["gate"] / mbps["openssh_proxyjump"]),
                       "target": f">={THROUGHPUT_TARGET}", "meets_target": tput_ratio >= THROUGHPUT_TARGET,
                       "runs": args.throughput_runs, "includes_setup": True,
                       "client_cpu_s": {k: r3(statistics.median(v)) for k, v in tput_cpu.items()},
                       "gate_daemon_cpu_s": daemon_cpu(tput_srv["gate"]),
                       "samples_MBps": {k: [round(x, 1) for x in v] for k, v in tput.items()}},
        "cipher": {"openssh": neg.get("cipher", CIPHER), "gate": gate["cipher"], "compression": "none"},
        "gate_packet_sizes": {k: v for k, v in gate.items() if k != "cipher"},
        "gate_code": "agent/src" if args.from_source else "byte-compiled copy of agent/src",
        "kex_openssh": neg.get("kex"),
        "runs": args.runs,
        "cpus": os.cpu_count(),
        "load_avg": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
        "python": sys.version.split()[0],
        "openssh": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip(),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
