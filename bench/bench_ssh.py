#!/usr/bin/env python3
"""Benchmark: `gate ssh` against stock OpenSSH on loopback, in one invocation.

Stands up, in a temporary directory on free loopback ports:

* a Gatehouse cluster (auth + proxy + node ``node1`` in one ``gatehouse start``
  process), user ``alice`` with login ``ghbench``, logged in with ``gate login``;
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
(user + system) of the client processes and of the Gatehouse daemon is recorded:
on a shared machine it shows what wall time alone hides.

Usage: python3 bench/bench_ssh.py [--runs N] [--mib M] [--throughput-runs K] [--quick] [--from-source]
Prints one JSON document on stdout; progress goes to stderr. Needs root (it starts
sshd and creates the ``ghbench`` account for the run). Everything it started is stopped and
the temporary directory removed at exit, on error too.
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
PASSWORD = "bench-password-123"
SETUP_TARGET = 1.0        # gate / openssh setup time, lower is better
THROUGHPUT_TARGET = 0.8   # gate / openssh MB/s, higher is better
RUN_TIMEOUT_S = 120


def log(msg: str) -> None:
    print(f"bench_ssh: {msg}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, from_source: bool = False) -> None:
        self.tmp = tempfile.mkdtemp(prefix="gatehouse-bench-")
        os.chmod(self.tmp, 0o755)
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.restore_shadow: str | None = None
        self.created_login = False
        self.python = sys.executable or "python3"
        self.agent_src = AGENT_SRC if from_source else self.compiled_copy()
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

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            with open(self.path(f"{name}.log"), encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def cleanup(self) -> None:
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
        if self.restore_shadow is not None:
            subprocess.run(["usermod", "-p", self.restore_shadow, LOGIN], check=False)
            self.restore_shadow = None
        if self.created_login:
            subprocess.run(["userdel", "--remove", LOGIN], check=False, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            self.created_login = False
        shutil.rmtree(self.tmp, ignore_errors=True)

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
        cfg = self.path("gatehouse.yaml")
        with open(cfg, "w", encoding="utf-8") as f:
            f.write(f"""gatehouse: {{nodename: {NODE}, data_dir: {self.path('data')}, log: {{severity: WARN}}}}
auth_service: {{enabled: true, cluster_name: bench.test, listen_addr: 127.0.0.1:{pa}}}
proxy_service: {{enabled: true, web_listen_addr: 127.0.0.1:{pw}, listen_addr: 127.0.0.1:{ps}, \
tunnel_listen_addr: 127.0.0.1:{pt}}}
ssh_service: {{enabled: true, listen_addr: 127.0.0.1:{pn}}}
""")
        self.node_port = pn
        daemon = self.start("gatehouse", [self.python, "-m", "gatehouse.cli.daemon", "start", "-c", cfg],
                            env=self.gate_env)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + 60
        while True:
            if daemon.poll() is not None:
                raise RuntimeError(f"gatehouse exited with {daemon.returncode}:\n{self.log_tail('gatehouse')}")
            try:
                urllib.request.urlopen(f"https://127.0.0.1:{pw}/webapi/ping", context=ctx, timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gatehouse web port never answered:\n{self.log_tail('gatehouse')}")
                time.sleep(0.1)
        self.gatemod(["gatehouse.cli.gatectl", "-c", cfg, "users", "add", "alice", "--roles=access",
                      f"--logins={LOGIN}", "--password-stdin"], stdin=PASSWORD + "\n")
        self.gatemod(["gatehouse.cli.gate", "login", f"--proxy=127.0.0.1:{pw}", "--user=alice", "--insecure",
                      "--password-stdin"], stdin=PASSWORD + "\n")
        deadline = time.monotonic() + 30
        while True:   # the node registers with auth asynchronously
            out = self.gatemod(["gatehouse.cli.gate", "ls", "--format=json"])
            if any(n["metadata"]["name"] == NODE for n in json.loads(out)):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {NODE} never registered:\n{self.log_tail('gatehouse')}")
            time.sleep(0.2)
        self.gate_ssh = [self.python, "-m", "gatehouse.cli.gate", "ssh", "-p", str(pn), f"{LOGIN}@{NODE}"]

    def gatemod(self, args: list[str], stdin: str | None = None) -> str:
        res = subprocess.run([self.python, "-m", *args], input=stdin, capture_output=True, text=True,
                             env=self.gate_env, timeout=60)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:3])} failed ({res.returncode}): {res.stderr.strip()}\n"
                               f"{self.log_tail('gatehouse')}")
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

    def measure(self, name: str, run) -> tuple[float, float, float | None]:
        """(wall s, client CPU s, server CPU s) of run().

        Client CPU: this script's children (the client, and `head` in throughput runs).
        Server CPU: the gatehouse daemon (auth, proxy and node in one process, plus the
        session commands it reaped). sshd's per-connection processes do not show up in
        the sshd master's accounting, so OpenSSH's server CPU is not reported (None).
        """
        daemon = next(proc.pid for n, proc in self.procs if n == "gatehouse") if name == "gate" else None
        srv0 = proc_cpu(daemon) if daemon else 0.0
        cpu0 = children_cpu()
        wall = run()
        cpu = children_cpu() - cpu0
        return wall, cpu, (proc_cpu(daemon) - srv0) if daemon else None

    def time_pipe(self, argv: list[str], nbytes: int, env: dict | None = None) -> float:
        t0 = time.perf_counter()
        head = subprocess.Popen(["head", "-c", str(nbytes), "/dev/zero"], stdout=subprocess.PIPE)
        client = subprocess.Popen(argv + ["cat >/dev/null"], stdin=head.stdout, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, env=env)
        head.stdout.close()
        try:
            _, err = client.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            client.kill()
            head.kill()
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

    bench = Bench(from_source=args.from_source)
    started = time.monotonic()
    try:
        bench.ensure_login()
        pd, pj = bench.free_ports(2)
        log("starting sshd baseline and jump host")
        bench.setup_openssh(pd, pj)
        log("starting gatehouse cluster")
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
    except Exception as exc:   # noqa: BLE001 - report and clean up
        log(f"FAILED: {exc}")
        return 1
    finally:
        bench.cleanup()

    gate = gate_params()
    med = {k: statistics.median(v) for k, v in setup.items()}
    med_cpu = {k: statistics.median(v) for k, v in setup_cpu.items()}
    med_srv = statistics.median(setup_srv["gate"])
    mbps = {k: statistics.median(v) for k, v in tput.items()}
    setup_ratio = med["gate"] / med["openssh_direct"]
    tput_ratio = mbps["gate"] / mbps["openssh_direct"]
    r3 = lambda x: round(x, 3)   # noqa: E731
    report = {
        "setup": {"gate_s": r3(med["gate"]), "openssh_direct_s": r3(med["openssh_direct"]),
                  "openssh_proxyjump_s": r3(med["openssh_proxyjump"]), "ratio_vs_direct": r3(setup_ratio),
                  "ratio_vs_proxyjump": r3(med["gate"] / med["openssh_proxyjump"]),
                  "target": f"<={SETUP_TARGET}", "meets_target": setup_ratio <= SETUP_TARGET,
                  "client_cpu_s": {k: r3(v) for k, v in med_cpu.items()},
                  "gate_daemon_cpu_s": r3(med_srv),
                  "samples_s": {k: [r3(x) for x in v] for k, v in setup.items()}},
        "throughput": {"bytes": nbytes, "gate_MBps": round(mbps["gate"], 1),
                       "openssh_direct_MBps": round(mbps["openssh_direct"], 1),
                       "openssh_proxyjump_MBps": round(mbps["openssh_proxyjump"], 1),
                       "ratio_vs_direct": r3(tput_ratio),
                       "ratio_vs_proxyjump": r3(mbps["gate"] / mbps["openssh_proxyjump"]),
                       "target": f">={THROUGHPUT_TARGET}", "meets_target": tput_ratio >= THROUGHPUT_TARGET,
                       "runs": args.throughput_runs, "includes_setup": True,
                       "client_cpu_s": {k: r3(statistics.median(v)) for k, v in tput_cpu.items()},
                       "gate_daemon_cpu_s": r3(statistics.median(tput_srv["gate"])),
                       "samples_MBps": {k: [round(x, 1) for x in v] for k, v in tput.items()}},
        "cipher": {"openssh": neg.get("cipher", CIPHER), "gate": gate["cipher"], "compression": "none"},
        "gate_packet_sizes": {k: v for k, v in gate.items() if k != "cipher"},
        "gate_code": "agent/src" if args.from_source else "byte-compiled copy of agent/src",
        "kex_openssh": neg.get("kex"),
        "runs": args.runs,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "openssh": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip(),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
