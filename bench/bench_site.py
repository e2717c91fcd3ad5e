#!/usr/bin/env python3
"""Benchmark: playbooks/site.yml on the molecule topology, cold and re-run.

Topology (extensions/molecule/default): root1 (root auth + proxy), leaf1 (leaf auth +
proxy behind a firewall), node1 (leaf node) on network-namespace test hosts with their
own sshd, created and destroyed with the scenario's create.yml / destroy.yml.

Measured (wall time of ansible-playbook, start-up included):
  * cold converge: site.yml on fresh hosts (virtualenvs, services, join, trust). The
    agent wheel and dependency wheels come from the controller cache when it holds this
    source's build (``build_cached`` says which); the first run on a machine builds them.
  * re-run: site.yml again, which must change nothing (checked from PLAY RECAP); the
    median of --reruns runs. Target: <= 30 s.
  * check run: site.yml --check --diff on the converged site, which must report no change
    and no failure; the median of --reruns runs, reported beside the re-run (it also asks
    the auth services what they hold, like the re-run).
Baseline in the same run: a playbook with one ansible.builtin.ping per host on the same
hosts and connection settings, i.e. Ansible's own floor for reaching these hosts. The
report gives the re-run / baseline ratio and the time per executed task.

Needs root (network namespaces) and sshd; uses .venv's ansible-playbook. Do not run it
together with scripts/test-molecule.sh (same hosts; both take /run/lock/gatehouse-molecule.lock).

Usage: python3 bench/bench_site.py [--reruns N] [--keep]
Every measurement is reported as its samples and their spread (min, median, max), with the
load average before and after the run.
Prints one JSON object on stdout (progress on stderr); exits non-zero if it could not
measure (a playbook failed or the re-run changed something).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "extensions" / "molecule" / "default"
TARGET_RERUN_S = 30.0
LOCK = "/run/lock/gatehouse-molecule.lock"
BASELINE_PLAYBOOK = """---
- name: Baseline - reach every host once
  hosts: gatehouse
  gather_facts: false
  tasks:
    - name: Ping
      ansible.builtin.ping:
"""


def log(msg: str) -> None:
    print(f"bench_site: {msg}", file=sys.stderr, flush=True)


def ansible_env(ephemeral: Path) -> dict:
    """The environment scripts/ansible-env.sh and molecule.yml give ansible-playbook."""
    link = REPO / ".ansible" / "collections" / "ansible_collections" / "gatehouse" / "clusters"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to("../../../..")
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": str(REPO / ".ansible" / "collections"),
        "MOLECULE_EPHEMERAL_DIRECTORY": str(ephemeral),
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_FORKS": "10",
        "ANSIBLE_TIMEOUT": "30",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=120s",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "PATH": f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '')}",
    })
    return env


CHILD: list[subprocess.Popen] = []


def run_playbook(playbook: str, env: dict, what: str, logdir: Path, extra: list[str] = ()) -> dict:
    """Run a playbook against the scenario inventory; return wall time and the recap totals."""
    cmd = [str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", str(SCENARIO / "inventory"), *extra, playbook]
    out_file = logdir / f"{what}.log"
    start = time.monotonic()
    with open(out_file, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        CHILD[:] = [proc]
        try:
            rc = proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
            CHILD.clear()
    elapsed = time.monotonic() - start
    stdout = out_file.read_text()
    if rc != 0:
        raise RuntimeError(f"{what} failed (exit {rc}); output in {out_file}:\n{stdout[-3000:]}")
    totals = {"ok": 0, "changed": 0, "skipped": 0}
    for line in stdout.split("PLAY RECAP")[-1].splitlines():
        for key in totals:
            found = re.search(rf"\b{key}=(\d+)", line)
            if found:
                totals[key] += int(found.group(1))
    log(f"{what}: {elapsed:.1f}s, ok={totals['ok']} changed={totals['changed']} skipped={totals['skipped']}")
    return {"s": round(elapsed, 2), **totals}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reruns", type=int, default=3, help="idempotent re-runs to time (median; default 3)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the test hosts up and the playbook logs in place afterwards")
    args = parser.parse_args()
    if os.geteuid() != 0:
        log("needs root (network namespaces)")
        return 2
    if not (REPO / ".venv" / "bin" / "ansible-playbook").exists():
        log("no .venv/bin/ansible-playbook; run scripts/install-deps.sh (or make deps) first")
        return 2

    lock = open(LOCK, "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    ephemeral = Path(tempfile.mkdtemp(prefix="gatehouse-bench-site-"))
    env = ansible_env(ephemeral)
    create, destroy = str(SCENARIO / "create.yml"), str(SCENARIO / "destroy.yml")
    site = str(REPO / "playbooks" / "site.yml")
    baseline_pb = ephemeral / "baseline.yml"
    baseline_pb.write_text(BASELINE_PLAYBOOK)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # A snapshot of the agent source, so edits in the working tree during the run cannot
    # change the build between the runs being compared.
    snapshot = ephemeral / "agent"
    shutil.copytree(REPO / "agent", snapshot, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "tests"))
    pin = ["-e", f"agent_source_dir={snapshot}"]
    result: dict = {}
    started = time.monotonic()
    load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        run_playbook(destroy, env, "destroy-leftovers", ephemeral)
        run_playbook(create, env, "create", ephemeral)
        build_cached = _build_cached(snapshot)
        cold = run_playbook(site, env, "site-cold", ephemeral, pin)
        reruns = [run_playbook(site, env, f"site-rerun-{i + 1}", ephemeral, pin) for i in range(args.reruns)]
        changed = [r["changed"] for r in reruns]
        if any(changed):
            raise RuntimeError(f"site.yml re-runs changed something (changed={changed}); see {ephemeral}")
        checks = [run_playbook(site, env, f"site-check-{i + 1}", ephemeral, pin + ["--check", "--diff"])
                  for i in range(args.reruns)]
        if any(c["changed"] for c in checks):
            raise RuntimeError(f"site.yml --check on the converged site reported changes "
                               f"(changed={[c['changed'] for c in checks]}); see {ephemeral}")
        baselines = [run_playbook(str(baseline_pb), env, f"baseline-{i + 1}", ephemeral) for i in range(3)]
        rerun_s = statistics.median(r["s"] for r in reruns)
        check_s = statistics.median(c["s"] for c in checks)
        baseline_s = statistics.median(b["s"] for b in baselines)
        tasks = reruns[0]["ok"]
        result = {
            "topology": "root1 + leaf1 (firewalled) + node1, netns test hosts over SSH",
            "cold_converge": {"s": cold["s"], "changed": cold["changed"], "tasks_ok": cold["ok"],
                              "build_cached": build_cached},
            "rerun": {**spread([r["s"] for r in reruns]), "changed": 0, "tasks_ok": tasks,
                      "s_per_task": round(rerun_s / max(tasks, 1), 3),
                      "target": f"<={TARGET_RERUN_S:g}s", "meets_target": rerun_s <= TARGET_RERUN_S},
            "check_run": {**spread([c["s"] for c in checks]), "changed": 0, "tasks_ok": checks[0]["ok"],
                          "ratio_vs_rerun": round(check_s / rerun_s, 2)},
            "baseline_ping_playbook": spread([b["s"] for b in baselines]),
            "ratio_rerun_vs_baseline": round(rerun_s / baseline_s, 2),
            "cpus": os.cpu_count(),
            "load_avg_before": load_before,
            "load_avg_after": [round(x, 2) for x in os.getloadavg()],
            "python": sys.version.split()[0],
        }
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        log(str(exc))
        return 1
    finally:
        if not args.keep:
            try:
                run_playbook(destroy, env, "destroy", ephemeral)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                log(f"destroy failed: {exc}")
        lock.close()
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    if args.keep:
        result["logs"] = str(ephemeral)
    else:
        shutil.rmtree(ephemeral, ignore_errors=True)   # kept above when a playbook failed
    print(json.dumps(result, indent=1))
    return 0


def spread(samples: list[float]) -> dict:
    """Median (``s``), min, max and the samples of one measurement."""
    return {"s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples), "samples_s": samples}


def _build_cached(source: Path) -> bool:
    """Whether the controller already holds this agent source's wheels (the agent role's cache)."""
    digest = subprocess.run([sys.executable, str(REPO / "roles" / "agent" / "files" / "build_agent.py"), "--hash",
                             str(source)], capture_output=True, text=True, check=True).stdout.strip()
    return (Path(os.path.expanduser("~/.cache/gatehouse-collection")) / digest / "wheelhouse.tar").is_file()


if __name__ == "__main__":
    sys.exit(main())
