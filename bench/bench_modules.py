#!/usr/bin/env python3
"""Benchmark: the gatehouse.clusters modules converging 50 roles, 50 users and 10 tokens.

Against one real agent (auth service on a free 127.0.0.1 port, data in a temporary
directory) it times three ansible-playbook runs on localhost:

* first run      -- creates everything (110 module calls: role x50, user x50, join_token x10)
* second run     -- the same play again; every task must report ok (changed=0)
* ping baseline  -- the same play shape (three looped tasks, 110 items) with ansible.builtin.ping

All three use the same inventory, interpreter and settings (local connection,
pipelining), so Ansible's own per-task cost is in the baseline too and the ratio
second/ping shows what the modules add: one GET per item and no write. Target: the
second run takes at most 2x the ping play. Each playbook is run --repeat times (after
one unmeasured warm-up of the ping play) and the median is reported.

Usage: python3 bench/bench_modules.py [--repeat N] [--roles 50] [--users 50] [--tokens 10]
Prints one JSON object on stdout (progress on stderr); exits non-zero if it could not
measure (a play failed, or the second run changed something).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_RATIO = 2.0


def load_harness():
    """The integration harness (tests/integration/run.py) knows how to start a real agent."""
    path = os.path.join(ROOT, "tests", "integration", "run.py")
    spec = importlib.util.spec_from_file_location("gatehouse_it_harness", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_play(data_dir: str, roles: int, users: int, tokens: int) -> str:
    return f"""---
- name: Ensure roles, users and tokens
  hosts: localhost
  gather_facts: false
  module_defaults:
    group/gatehouse.clusters.api:
      data_dir: {data_dir}
  tasks:
    - name: Roles
      gatehouse.clusters.role:
        name: "bench-role-{{{{ item }}}}"
        description: "Bench role {{{{ item }}}}"
        allow:
          logins: ["u{{{{ item }}}}", ubuntu]
          node_labels:
            env: [dev, prod]
            team: "t{{{{ item }}}}"
        options:
          max_session_ttl: 8h
      loop: "{{{{ range({roles}) | list }}}}"
    - name: Users
      gatehouse.clusters.user:
        name: "bench-user-{{{{ item }}}}"
        roles: ["bench-role-{{{{ item }}}}"]
        logins: ["u{{{{ item }}}}"]
      loop: "{{{{ range({users}) | list }}}}"
    - name: Tokens
      gatehouse.clusters.join_token:
        name: "bench-token-{{{{ item }}}}"
        type: [node]
        ttl: 1h
      loop: "{{{{ range({tokens}) | list }}}}"
      no_log: true
"""


def ping_play(roles: int, users: int, tokens: int) -> str:
    return f"""---
- name: Ping with the same shape
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Ping 1
      ansible.builtin.ping:
      loop: "{{{{ range({roles}) | list }}}}"
    - name: Ping 2
      ansible.builtin.ping:
      loop: "{{{{ range({users}) | list }}}}"
    - name: Ping 3
      ansible.builtin.ping:
      loop: "{{{{ range({tokens}) | list }}}}"
"""


def run_play(path: str, tmp: str, env: dict) -> tuple[float, int, str]:
    bindir = os.path.dirname(sys.executable)
    playbook = os.path.join(bindir, "ansible-playbook")
    if not os.path.exists(playbook):
        playbook = shutil.which("ansible-playbook") or "ansible-playbook"
    started = time.perf_counter()
    proc = subprocess.run([playbook, "-i", os.path.join(tmp, "inventory.ini"), path], capture_output=True, text=True,
                          env=env, cwd=tmp, timeout=600, check=False)
    seconds = time.perf_counter() - started
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{os.path.basename(path)} failed (rc {proc.returncode}):\n{output[-3000:]}")
    match = re.search(r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)", output)
    if not match:
        raise RuntimeError(f"no play recap in the output of {path}:\n{output[-2000:]}")
    return seconds, int(match.group(2)), output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="measured runs of the idempotent and ping plays")
    parser.add_argument("--roles", type=int, default=50)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=10)
    args = parser.parse_args(argv)
    harness = load_harness()

    tmp = tempfile.mkdtemp(prefix="gatehouse-bench-modules-")
    agent = harness.Agent(tmp, "bench.test", proxy=False)
    try:
        agent.start()
        agent.wait_ready()
        collections = harness.make_collections_dir(tmp)
        with open(os.path.join(tmp, "inventory.ini"), "w", encoding="utf-8") as fh:
            fh.write(f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
        with open(os.path.join(tmp, "ansible.cfg"), "w", encoding="utf-8") as fh:
            fh.write("[defaults]\n")
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env.update({"ANSIBLE_COLLECTIONS_PATH": collections, "ANSIBLE_CONFIG": os.path.join(tmp, "ansible.cfg"),
                    "ANSIBLE_PIPELINING": "1", "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0",
                    "ANSIBLE_HOME": os.path.join(tmp, "ansible-home"),
                    "ANSIBLE_LOCAL_TEMP": os.path.join(tmp, "ansible-local")})
        ensure = os.path.join(tmp, "ensure.yml")
        ping = os.path.join(tmp, "ping.yml")
        with open(ensure, "w", encoding="utf-8") as fh:
            fh.write(ensure_play(agent.data_dir, args.roles, args.users, args.tokens))
        with open(ping, "w", encoding="utf-8") as fh:
            fh.write(ping_play(args.roles, args.users, args.tokens))
        items = args.roles + args.users + args.tokens

        log("warm-up: ping play")
        run_play(ping, tmp, env)
        log(f"first run: creating {args.roles} roles, {args.users} users, {args.tokens} tokens")
        first, first_changed, _ = run_play(ensure, tmp, env)
        second_runs, ping_runs = [], []
        for i in range(max(args.repeat, 1)):
            log(f"round {i + 1}/{args.repeat}: idempotent run, ping play")
            seconds, changed, output = run_play(ensure, tmp, env)
            if changed:
                raise RuntimeError(f"the second run changed {changed} task(s); modules are not idempotent:\n"
                                   f"{output[-3000:]}")
            second_runs.append(seconds)
            ping_runs.append(run_play(ping, tmp, env)[0])
        second, ping_s = statistics.median(second_runs), statistics.median(ping_runs)
        result = {
            "benchmark": "gatehouse.clusters modules: ensure roles, users and tokens",
            "items": {"roles": args.roles, "users": args.users, "tokens": args.tokens, "total": items},
            "first_run_s": round(first, 3),
            "first_run_changed_tasks": first_changed,
            "second_run_s": round(second, 3),
            "second_run_s_all": [round(s, 3) for s in second_runs],
            "second_run_changed_tasks": 0,
            "ping_s": round(ping_s, 3),
            "ping_s_all": [round(s, 3) for s in ping_runs],
            "per_item_ms": {"first": round(first / items * 1000, 1), "second": round(second / items * 1000, 1),
                            "ping": round(ping_s / items * 1000, 1)},
            "ratio_second_to_ping": round(second / ping_s, 3),
            "ratio_first_to_ping": round(first / ping_s, 3),
            "target_ratio_second_to_ping": TARGET_RATIO,
            "meets_target": second / ping_s <= TARGET_RATIO,
            "settings": {"connection": "local", "pipelining": True, "python": sys.executable,
                         "repeat": args.repeat},
        }
        print(json.dumps(result, indent=2))
        return 0
    except Exception as exc:  # noqa: BLE001 - one line on stderr, non-zero exit
        log(f"bench_modules: could not measure: {exc}")
        log(agent.log_text()[-2000:])
        return 1
    finally:
        agent.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
