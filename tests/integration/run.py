"""Integration tests of the gatehouse.clusters modules against real agents on loopback.

Starts real `gatehouse start` processes from the agent source the collection ships
(agent/src; free ports on 127.0.0.1, data in a temporary directory), so it runs from a
checkout or from the installed collection alike, with a Python that has the agent's
dependencies:

* root    root.test    auth + proxy + node      the cluster most targets manage
* leaf    leaf.test    auth + proxy (insecure)  trusts nobody yet: the trusted_cluster target joins it
* leaf2   leaf2.test   auth + proxy + node (insecure)  joined to the root here, for the remote_cluster targets
* strict  strict.test  auth only                verifies the root's self-signed web certificate (TLS errors)

("insecure" lets a leaf accept the root proxy's self-signed web certificate, as in the
agent's own end-to-end tests.) Then every target in tests/integration/targets/ runs as a
role in its own ansible-playbook process against localhost, with the agents' addresses
and data directories as variables, and `gatectl` as the independent witness of what a
task wrote. Prints `integration: N passed, M failed` and exits non-zero on any failure.

Usage: run.py [--collections DIR] [--targets NAME ...] [--keep] [-v]
DIR holds ansible_collections/gatehouse/clusters (default: the one this copy is installed in,
or for a checkout a temporary symlink to it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(os.path.dirname(HERE))
TARGETS_DIR = os.path.join(HERE, "targets")
PLAYBOOK_TIMEOUT = 300
SYSTEM_PYTHON = "/usr/bin/python3"  # an interpreter the unprivileged user can run (the venv may be under /root)

# The agent source the collection ships (agent/src): the agents run from it, with the
# dependencies of the Python running this script (pip install agent/ or its requirements).
AGENT_SRC = os.path.join(CHECKOUT, "agent", "src")
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = AGENT_SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("GATEHOUSE_CONFIG", None)
    return env


class Daemon:
    """One `gatehouse start -c CFG` process with its output in a log file."""

    def __init__(self, config_path: str, log_path: str):
        self.config_path = config_path
        self.log_path = log_path
        self.proc = None
        self._ready_lines = 0

    def start(self, wait: bool = True) -> "Daemon":
        # Readiness is a new "gatehouse is running" line after this point.
        self._ready_lines = self.log_text().count("gatehouse is running")
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen([sys.executable, "-m", "gatehouse.cli.daemon", "start", "-c", self.config_path],
                                         stdout=logf, stderr=logf, stdin=subprocess.DEVNULL, env=base_env())
        if wait:
            self.wait_ready()
        return self

    def log_text(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_text().count("gatehouse is running") > self._ready_lines:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"gatehouse exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"gatehouse did not become ready in {timeout}s:\n{self.log_text()[-4000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def gatectl(data_dir: str, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "gatehouse.cli.gatectl", "-d", data_dir, *args],
                          input=stdin, capture_output=True, text=True, env=base_env(), timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"gatectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


class Agent(Daemon):
    """One real `gatehouse start -c CFG` process."""

    def __init__(self, tmp: str, name: str, *, proxy: bool = True, insecure: bool = False, node: bool = False):
        self.name = name
        self.dir = os.path.join(tmp, name.split(".")[0])
        os.makedirs(self.dir)
        self.data_dir = os.path.join(self.dir, "data")
        self.auth_addr = f"127.0.0.1:{free_port()}"
        self.web_addr = f"127.0.0.1:{free_port()}"
        self.tunnel_addr = f"127.0.0.1:{free_port()}"
        general = f"nodename: {name.split('.')[0]}, data_dir: {self.data_dir}, heartbeat_interval: 1"
        if insecure:
            general += ", insecure: true"
        cfg = (f"gatehouse: {{{general}}}\n"
               f"auth_service: {{enabled: true, cluster_name: {name}, listen_addr: '{self.auth_addr}'}}\n")
        if proxy:
            cfg += (f"proxy_service: {{enabled: true, web_listen_addr: '{self.web_addr}', "
                    f"listen_addr: '127.0.0.1:{free_port()}', tunnel_listen_addr: '{self.tunnel_addr}', "
                    f"tunnel_heartbeat_interval: 1}}\n")
        self.node_addr = f"127.0.0.1:{free_port()}" if node else ""
        if node:  # a node named like the cluster's first label (root, leaf2), for the inventory plugin
            cfg += (f"ssh_service: {{enabled: true, listen_addr: '{self.node_addr}', "
                    f"labels: {{env: it, site: {name.split('.')[0]}}}}}\n")
        self.config = os.path.join(self.dir, "gatehouse.yaml")
        with open(self.config, "w", encoding="utf-8") as fh:
            fh.write(cfg)
        super().__init__(self.config, os.path.join(self.dir, "gatehouse.log"))

    def vars(self) -> dict:
        return {"name": self.name, "data_dir": self.data_dir, "auth_addr": self.auth_addr,
                "api_url": f"https://{self.auth_addr}", "web_addr": self.web_addr, "tunnel_addr": self.tunnel_addr,
                "admin_dir": os.path.join(self.data_dir, "admin"),
                "proxy_identity_dir": os.path.join(self.data_dir, "identity", "proxy"), "node_addr": self.node_addr,
                "gatectl": [sys.executable, "-m", "gatehouse.cli.gatectl", "-d", self.data_dir]}


class BlackHole:
    """A listening TCP socket that never accepts: a server that does not answer (timeouts)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


def join(root: Agent, leaf: Agent) -> None:
    """Establish trust leaf → root with gatectl, as an operator would, and wait for the tunnel."""
    token = json.loads(gatectl(root.data_dir, "tokens", "add", "--type=trusted_cluster", "--ttl=15m",
                               "--labels=joined=by-harness", "--format", "json"))["token"]
    tc = {"kind": "trusted_cluster", "version": "v2", "metadata": {"name": root.name},
          "spec": {"enabled": True, "token": token, "web_proxy_addr": root.web_addr,
                   "role_map": [{"remote": "access", "local": ["access"]}]}}
    gatectl(leaf.data_dir, "create", "-", stdin=json.dumps(tc))
    deadline = time.monotonic() + 30
    while True:
        rcs = json.loads(gatectl(root.data_dir, "get", f"rc/{leaf.name}", "--format", "json"))
        if rcs and rcs[0]["status"]["connection"] == "online":
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{leaf.name} never came online at the root:\n{leaf.log_text()[-3000:]}")
        time.sleep(0.2)


def unprivileged_user() -> str:
    """A local user without access to the agents' data (for the permission-denied test), or ''."""
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("su") \
            or not os.access(SYSTEM_PYTHON, os.X_OK):
        return ""
    name = "gatehouse-it"
    probe = subprocess.run(["id", "-u", name], capture_output=True, check=False)
    if probe.returncode != 0:
        made = subprocess.run(["useradd", "--system", "--shell", "/bin/sh", "--no-create-home", name],
                              capture_output=True, check=False)
        if made.returncode != 0:
            return ""
    return name


def installed_collections_dir() -> str:
    """The collections directory this copy is installed in (…/ansible_collections/gatehouse/clusters), or ''."""
    parts = os.path.normpath(CHECKOUT).split(os.sep)
    if parts[-3:-2] == ["ansible_collections"] and parts[-2:] == ["gatehouse", "clusters"]:
        return os.sep.join(parts[:-3]) or os.sep
    return ""


def make_collections_dir(tmp: str) -> str:
    path = os.path.join(tmp, "collections")
    os.makedirs(os.path.join(path, "ansible_collections", "gatehouse"))
    os.symlink(CHECKOUT, os.path.join(path, "ansible_collections", "gatehouse", "clusters"))
    return path


PLAYBOOK = """---
- name: Integration target {target}
  hosts: localhost
  gather_facts: false
  vars_files:
    - {vars_file}
  environment:
    PYTHONPATH: "{{{{ agent_src }}}}"
  module_defaults:
    group/gatehouse.clusters.api:
      data_dir: "{{{{ root.data_dir }}}}"
  roles:
    - {target}
"""


def run_target(target: str, tmp: str, vars_file: str, collections: str, verbose: bool) -> tuple[bool, float, str]:
    play = os.path.join(tmp, f"play-{target}.yml")
    with open(play, "w", encoding="utf-8") as fh:
        fh.write(PLAYBOOK.format(target=target, vars_file=vars_file))
    bindir = os.path.dirname(sys.executable)
    ansible_playbook = os.path.join(bindir, "ansible-playbook")
    if not os.path.exists(ansible_playbook):
        ansible_playbook = shutil.which("ansible-playbook") or "ansible-playbook"
    config = os.path.join(tmp, "ansible.cfg")
    if not os.path.exists(config):
        with open(config, "w", encoding="utf-8") as fh:
            fh.write("[defaults]\n")
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": collections,
        "ANSIBLE_ROLES_PATH": TARGETS_DIR,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_PIPELINING": "1",
        "ANSIBLE_LOCAL_TEMP": os.path.join(tmp, "ansible-local"),
        "ANSIBLE_REMOTE_TEMP": os.path.join(tmp, "ansible-remote"),
        "ANSIBLE_HOME": os.path.join(tmp, "ansible-home"),
        "ANSIBLE_CONFIG": config,
        "ANSIBLE_DEPRECATION_WARNINGS": "1",
        # Every task runs in diff mode (the targets check diffs); a task with `diff: false` checks that a
        # module returns no diff when none was asked for.
        "ANSIBLE_DIFF_ALWAYS": "1",
    })
    env.pop("PYTHONPATH", None)
    started = time.monotonic()
    inventory = os.path.join(tmp, "inventory.ini")
    with open(inventory, "w", encoding="utf-8") as fh:
        fh.write(f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    cmd = [ansible_playbook, "-i", inventory, play]
    if verbose:
        cmd.append("-v")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp, timeout=PLAYBOOK_TIMEOUT,
                              check=False)
        output, ok = proc.stdout + proc.stderr, proc.returncode == 0
    except subprocess.TimeoutExpired as exc:
        output, ok = f"{exc.stdout or ''}{exc.stderr or ''}\ntimed out after {PLAYBOOK_TIMEOUT}s", False
    return ok, time.monotonic() - started, output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collections", help="directory holding ansible_collections/gatehouse/clusters")
    parser.add_argument("--targets", nargs="*", help="targets to run (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory and agent logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every playbook's output")
    args = parser.parse_args(argv)

    available = sorted(d for d in os.listdir(TARGETS_DIR) if os.path.isdir(os.path.join(TARGETS_DIR, d)))
    targets = args.targets or available
    unknown = [t for t in targets if t not in available]
    if unknown:
        print(f"unknown target(s): {', '.join(unknown)}; available: {', '.join(available)}", file=sys.stderr)
        return 2

    tmp = tempfile.mkdtemp(prefix="gatehouse-it-")
    os.chmod(tmp, 0o755)  # the unprivileged user must reach the playbook files, not the agents' data
    agents = {"root": Agent(tmp, "root.test", node=True), "leaf": Agent(tmp, "leaf.test", insecure=True),
              "leaf2": Agent(tmp, "leaf2.test", insecure=True, node=True),
              "strict": Agent(tmp, "strict.test", proxy=False)}
    hole = BlackHole()
    results: list[tuple[str, bool, float]] = []
    try:
        started = time.monotonic()
        for agent in agents.values():   # all start at once, then each is waited for
            agent.start(wait=False)
        for agent in agents.values():
            agent.wait_ready()
        join(agents["root"], agents["leaf2"])
        print(f"agents up and leaf2 joined in {time.monotonic() - started:.1f}s ({tmp})", flush=True)
        dead_port = free_port()
        variables = {name: agent.vars() for name, agent in agents.items()}
        variables.update({
            "agent_src": AGENT_SRC,
            "gatehouse_python": sys.executable,
            "gatehouse_tmp": tmp,
            "dead_api_url": f"https://127.0.0.1:{dead_port}",
            "blackhole_api_url": f"https://{hole.addr}",
            "unprivileged_user": unprivileged_user(),
            "unprivileged_python": SYSTEM_PYTHON,
        })
        vars_file = os.path.join(tmp, "vars.json")
        with open(vars_file, "w", encoding="utf-8") as fh:
            json.dump(variables, fh, indent=2)
        collections = args.collections or installed_collections_dir() or make_collections_dir(tmp)
        for target in targets:
            ok, seconds, output = run_target(target, tmp, vars_file, collections, args.verbose)
            results.append((target, ok, seconds))
            print(f"{'PASS' if ok else 'FAIL'} {target} ({seconds:.1f}s)", flush=True)
            if not ok or args.verbose:
                print(output, flush=True)
    except Exception as exc:  # noqa: BLE001 - report set-up failures as a failed run
        print(f"integration set-up failed: {exc}", file=sys.stderr)
        for agent in agents.values():
            print(f"--- {agent.name} log (tail)\n{agent.log_text()[-2000:]}", file=sys.stderr)
        results.append(("setup", False, 0.0))
    finally:
        hole.close()
        threads = [threading.Thread(target=a.stop) for a in agents.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    passed = sum(1 for result in results if result[1])
    failed = len(results) - passed
    print(f"integration: {passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
