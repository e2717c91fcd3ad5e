"""The open-files limit is raised where the agent starts (fdlimit.py), in a child process whose
limits the test sets (so this process's own limit is left alone)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")


def _run(soft: int, hard: int, wanted: int) -> tuple[list, str]:
    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    code = ("import json, logging, resource, sys; logging.basicConfig(stream=sys.stderr, level=logging.INFO); "
            "from gatehouse.fdlimit import raise_open_files; "
            f"print(json.dumps(list(raise_open_files({wanted})))); "
            "print(json.dumps(list(resource.getrlimit(resource.RLIMIT_NOFILE))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=limit,
                       env={**os.environ, "PYTHONPATH": SRC}, timeout=60, check=True)
    returned, now = (json.loads(line) for line in r.stdout.split("\n")[:2])
    assert returned == now
    return now, r.stderr


def test_soft_limit_rises_to_the_hard_limit():
    hard = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 4096)
    now, logged = _run(256, hard, 65536)
    assert now == [hard, hard]
    assert f"open files limit (RLIMIT_NOFILE) raised from 256 to {hard}" in logged
    assert "LimitNOFILE=65536" in logged  # a hard limit this low is named, with the fix


def test_never_above_wanted_and_never_down():
    hard = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 4096)
    assert _run(256, hard, 1000)[0] == [1000, hard]
    now, logged = _run(hard, hard, 512)
    assert now == [hard, hard] and "raised" not in logged
