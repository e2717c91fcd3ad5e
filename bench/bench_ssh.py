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
the temporary directory removed at exit, on an error, Ctrl-C or SIGTERM/SIGHUP too; what a
run killed with SIGKILL leaves (processes, found by its cgroups; the temporary directory,
tagged with its pid) is removed by the next run. The machinery it shares with
bench_trust.py (processes, cleanup, the OpenSSH baseline, the account) is in
loopback_harness.py.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loopback_harness as lh  # noqa: E402
from loopback_harness import AGENT_SRC, CIPHER, PASSWORD, median, r3  # noqa: E402

TAG = "gatehouse-bench-ssh"   # temporary directory /tmp/TAG-PID-*, cgroups TAG-PID
LOGIN = "ghbench"          # a login of its own: tests and demos on the same machine manage "visitor"
NODE = "node1"
PROXY = "bench-proxy"      # nodename of the auth + proxy process when the node runs apart
TOPOLOGY_SPLIT = "auth+proxy and node in separate processes"
TOPOLOGY_SINGLE = "auth, proxy and node in one process"
SETUP_TARGET = 1.0        # gate / openssh setup time, lower is better
THROUGHPUT_TARGET = 0.8   # gate / openssh MB/s, higher is better


def log(msg: str) -> None:
    print(f"bench_ssh: {msg}", file=sys.stderr, flush=True)


class Bench(lh.BenchRun):
    run_timeout = 120

    def __init__(self, single_process: bool = False) -> None:
        super().__init__(TAG, log, lh.UnixLogin(LOGIN, log))
        self.single_process = single_process
        # Gatehouse daemon processes by role, for CPU accounting: {"auth+proxy": pid, "node": pid}
        # or {"auth+proxy+node": pid}.
        self.daemons: dict[str, int] = {}

    def daemon_logs(self, lines: int = 30) -> str:
        """The last lines of every Gatehouse daemon's log."""
        return "".join(f"--- {n}.log\n{tail}" for n in self.procs
                       if n.startswith("gatehouse") and (tail := self.log_tail(n, lines)))

    # ------------------------------------------------------------------ setup
    def setup_openssh(self, port_direct: int, port_jump: int) -> None:
        base = super().setup_openssh([("sshd_direct", port_direct, ""), ("sshd_jump", port_jump, "")])
        key = self.client_key
        self.ssh_direct = base + ["-i", key, "-p", str(port_direct), f"{LOGIN}@127.0.0.1"]
        self.ssh_jump = base + ["-i", key, "-J", f"{LOGIN}@127.0.0.1:{port_jump}", "-p", str(port_direct),
                                f"{LOGIN}@127.0.0.1"]

    def setup_gatehouse(self) -> None:
        pa, pw, ps, pt, pn = lh.free_ports(5)
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
                raise RuntimeError(f"node {NODE} never registered:\n{self.daemon_logs()}")
            time.sleep(0.2)
        self.gate_ssh = [self.python, "-m", "gatehouse.cli.gate", "ssh", "-p", str(pn), f"{LOGIN}@{NODE}"]

    def start_daemon(self, role: str, name: str, cfg: str, web_port: int | None = None) -> None:
        """`gatehouse start -c CFG`; with web_port, wait until the proxy answers /webapi/ping."""
        daemon = self.start_gatehouse(name, cfg)
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
        for name, proc in self.procs.items():
            if name.startswith("gatehouse") and proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def gatemod(self, args: list[str], stdin: str | None = None) -> str:
        try:
            return super().gatemod(args, stdin)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.daemon_logs()}") from None

    # ------------------------------------------------------------------ measurements
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
        cpu0 = lh.children_cpu()
        wall = run()
        cpu = lh.children_cpu() - cpu0
        return wall, cpu, ({role: proc_cpu(pid) - srv0[role] for role, pid in daemons.items()} if daemons else None)


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process and of the children it has reaped."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def ca_pin(status: str) -> str:
    """The active TLS CA fingerprint from `gatectl status` (the node's `ca_pin`)."""
    for line in status.splitlines():
        if line.startswith("tls CA ") and not line.endswith("(inactive)"):
            return line.split()[-1]
    raise RuntimeError(f"no TLS CA fingerprint in gatectl status:\n{status}")


def gate_params() -> dict:
    try:
        sys.path.insert(0, AGENT_SRC)
        from gatehouse import sshparams
        return {"cipher": sshparams.ENCRYPTION_ALGS[0],
                "session_max_pktsize": getattr(sshparams, "SESSION_MAX_PKTSIZE", None),
                "carrier_max_pktsize": getattr(sshparams, "CARRIER_MAX_PKTSIZE", None)}
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

    lh.stop_on_signals(log)
    bench = Bench(single_process=args.single_process)
    started = time.monotonic()
    load_before = lh.loadavg()
    try:
        bench.prepare(args.from_source)
        bench.remove_stale_tmpdirs()
        bench.login.ensure()
        pd, pj = lh.free_ports(2)
        log("starting sshd baseline and jump host")
        bench.setup_openssh(pd, pj)
        topology = TOPOLOGY_SINGLE if args.single_process else TOPOLOGY_SPLIT
        log(f"starting gatehouse cluster: {topology}")
        bench.setup_gatehouse()
        clients = {"gate": (bench.gate_ssh, bench.env), "openssh_direct": (bench.ssh_direct, None),
                   "openssh_proxyjump": (bench.ssh_jump, None)}
        for argv, env in clients.values():   # warm-up, unmeasured
            bench.time_cmd(argv, env)
        log(f"session setup: {args.runs} runs per client")
        samples = lh.interleaved(args.runs, clients,
                                 lambda name, argv, env: bench.measure(name, lambda: bench.time_cmd(argv, env)))
        setup, setup_cpu, setup_srv = ({k: [s[i] for s in v] for k, v in samples.items()} for i in range(3))
        nbytes = args.mib * 1024 * 1024
        log(f"throughput: {args.mib} MiB x {args.throughput_runs} runs per client")
        samples = lh.interleaved(args.throughput_runs, clients,
                                 lambda name, argv, env: bench.measure(name, lambda: bench.time_pipe(argv, nbytes,
                                                                                                     env)))
        tput = {k: [nbytes / wall / 1e6 for wall, _, _ in v] for k, v in samples.items()}
        tput_cpu, tput_srv = ({k: [s[i] for s in v] for k, v in samples.items()} for i in (1, 2))
        # the direct connection makes one hop: its key exchange and cipher
        neg = {k: v for hop in bench.negotiated(bench.ssh_direct, 30) for k, v in hop.items()}
        load_after = lh.loadavg()
    except Exception as exc:   # noqa: BLE001 - report and clean up
        log(f"FAILED: {exc}")
        return 1
    finally:
        bench.cleanup()

    gate = gate_params()
    med = {k: median(v) for k, v in setup.items()}
    med_cpu = {k: median(v) for k, v in setup_cpu.items()}

    def daemon_cpu(samples: list[dict]) -> dict:
        """Median CPU seconds per daemon process, and of their sum per run."""
        out = {role: r3(median(s[role] for s in samples)) for role in samples[0]}
        if len(samples[0]) > 1:
            out["total"] = r3(median(sum(s.values()) for s in samples))
        return out
    mbps = {k: median(v) for k, v in tput.items()}
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
                       "client_cpu_s": {k: r3(median(v)) for k, v in tput_cpu.items()},
                       "gate_daemon_cpu_s": daemon_cpu(tput_srv["gate"]),
                       "samples_MBps": {k: [round(x, 1) for x in v] for k, v in tput.items()}},
        "cipher": {"openssh": neg.get("cipher", CIPHER), "gate": gate["cipher"], "compression": "none"},
        "gate_packet_sizes": {k: v for k, v in gate.items() if k != "cipher"},
        "gate_code": "agent/src" if args.from_source else "byte-compiled copy of agent/src",
        "kex_openssh": neg.get("kex"),
        "runs": args.runs,
        "cpus": os.cpu_count(),
        "load_avg": {"before": load_before, "after": load_after},
        "python": sys.version.split()[0],
        "openssh": lh.openssh_version(),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
