#!/usr/bin/env python3
"""Benchmark: a leaf node's access decision for users arriving from a root cluster.

Setup: 100 leaf roles (literal, glob and ^regex$ node_labels, templated logins,
some deny rules) and a 50-entry role map (literal, ``*`` and ``^regex$``
remotes). Half the users map to all 100 roles, the rest to a few.

Measured path, as node/authorize.py runs it: look up a checker cached per
(cluster, remote roles, traits, principals); on a miss run map_roles and build the
AccessChecker; then check_ssh. Latency is per decision, cache misses included.

Baseline in the same run: a naive implementation with no caching at all that maps
roles, expands templates and compiles every pattern with Python ``re`` on every
decision (``re.purge()`` first, so ``re``'s own cache does not help). The report
gives both and their ratio; the two must agree on every sampled decision.

Usage: python3 bench/bench_access.py [--decisions N] [--seed S]
Prints one JSON object; run time is bounded (< 20 s).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import random
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "agent", "src"))

from gatehouse.access import checker_for_remote_user, remote_user_traits  # noqa: E402

N_ROLES = 100
TARGET_P99_MS = 1.0
NAIVE_TIME_BUDGET_S = 6.0
CLUSTER = "root"
NODES = [
    ("web-1", {"env": "prod", "team": "team-web", "host": "web-12"}),
    ("db-1", {"env": "staging", "team": "team-db", "host": "db-3"}),
    ("ci-1", {"env": "ci", "team": "build", "host": "ci-7"}),
    ("edge-1", {"env": "forbidden-zone", "team": "team-edge", "host": "edge-1"}),
    ("bare-1", {}),
]


# ---------------------------------------------------------------------- fixtures
def make_role(i: int) -> dict:
    """A leaf role; the selector style and login template rotate with i."""
    kind = i % 4
    node_labels = [
        {"env": ["prod", "staging"]},                  # literal
        {"team": ["team-*"]},                          # glob
        {"host": ["^(web|db)-[0-9]+$"]},               # regex
        {"env": ["{{external.env}}"], "team": "*"},    # templated value
    ][kind]
    logins = [f"user{i % 10}", "{{internal.logins}}"] if i % 3 else [f"svc{i % 7}", "{{external.extra}}"]
    spec = {"allow": {"logins": logins, "node_labels": node_labels}, "deny": {}}
    if i % 10 == 9:
        spec["deny"] = {"node_labels": {"env": ["^forbidden-[a-z]+$"]}}
    if i % 25 == 24:
        spec["deny"]["logins"] = ["root"]
    return {"kind": "role", "version": "v1", "metadata": {"name": f"leaf-role-{i}"}, "spec": spec}


def make_role_map() -> list[dict]:
    """50 entries: 10 literal (one maps to all roles), 20 with '*', 20 ^regex$."""
    role_map = [{"remote": "everything", "local": [f"leaf-role-{i}" for i in range(N_ROLES)]}]
    role_map += [{"remote": f"staff-{i}", "local": [f"leaf-role-{(i * 7 + k) % N_ROLES}" for k in range(5)]}
                 for i in range(1, 10)]
    role_map += [{"remote": f"team-{i}-*", "local": ["leaf-role-$1"]} for i in range(20)]
    role_map += [{"remote": f"^grp-{i}-(?P<n>[0-9]+)$", "local": ["leaf-role-${n}", "missing-$n"]}
                 for i in range(20)]
    return role_map


def make_users(rng: random.Random, count: int) -> list[dict]:
    users = []
    for u in range(count):
        remote = ["everything"] if u % 2 == 0 else []
        remote += [f"staff-{rng.randrange(1, 10)}", f"team-{rng.randrange(20)}-{rng.randrange(N_ROLES)}",
                   f"grp-{rng.randrange(20)}-{rng.randrange(N_ROLES)}", "unmapped-role"]
        principals = [f"alice{u}", "ubuntu", "root"]
        traits = {"env": [rng.choice(["prod", "staging", "ci"])], "extra": [f"extra{u % 5}"]}
        users.append({"remote_roles": remote, "principals": principals, "traits": traits})
    return users


def make_workload(rng: random.Random, users: list[dict], count: int) -> list[tuple]:
    logins = ["ubuntu", "root", "user3", "svc2", "extra1", "nobody"]
    return [(rng.choice(users), rng.choice(logins), *rng.choice(NODES)) for _ in range(count)]


# ---------------------------------------------------------------------- measured implementation
class NodeAuthorizer:
    """The node's cache: one checker per (cluster, remote roles, traits, principals)."""

    def __init__(self, role_map: list[dict], local_roles: dict[str, dict]):
        self.role_map = role_map
        self.local_roles = local_roles
        self.cache: dict[tuple, tuple] = {}

    def decide(self, user: dict, login: str, node: str, labels: dict) -> bool:
        key = (CLUSTER, tuple(user["remote_roles"]), json.dumps(user["traits"], sort_keys=True),
               tuple(user["principals"]))
        hit = self.cache.get(key)
        if hit is None:
            traits = remote_user_traits(user["principals"], user["traits"])
            hit = checker_for_remote_user(self.role_map, user["remote_roles"], self.local_roles, traits, CLUSTER)
            self.cache[key] = hit
        checker, _mapped, denial = hit
        return denial.allowed if checker is None else checker.check_ssh(login, node, labels).allowed


# ---------------------------------------------------------------------- naive baseline
_NAIVE_REF = r"\$(?:\{(\w+)\}|(\w+))"
_NAIVE_LOGIN = r"[A-Za-z_][A-Za-z0-9_.-]*\$?"


def naive_pattern(pattern: str, stars_capture: bool) -> re.Pattern:
    if len(pattern) >= 2 and pattern[0] == "^" and pattern[-1] == "$":
        return re.compile(pattern)
    if stars_capture:
        return re.compile("(?s)" + "(.*)".join(re.escape(p) for p in pattern.split("*")))
    return re.compile(fnmatch.translate(pattern))


def naive_expand(template: str, match: re.Match) -> str:
    def ref(m):
        name = m.group(1) or m.group(2)
        try:
            return match.group(int(name) if name.isdigit() else name) or ""
        except IndexError:  # unknown group number or name
            return ""
    return re.sub(_NAIVE_REF, ref, template.replace("$$", "\0")).replace("\0", "$")



def naive_map(role_map: list[dict], remote_roles: list[str]) -> list[str]:
    out = []
    for entry in role_map:
        compiled = naive_pattern(entry["remote"], stars_capture=True)
        for role in remote_roles or [""]:
            m = compiled.fullmatch(role)
            if m:
                for local in entry["local"]:
                    value = naive_expand(local, m)
                    if value and value not in out:
                        out.append(value)
    return out


def naive_values(values, traits: dict) -> list[str]:
    out = []
    for value in [values] if isinstance(values, str) else values or []:
        m = re.fullmatch(r"(.*)\{\{\s*(?:internal|external)\.(\w+)\s*\}\}(.*)", value)
        if not m:
            out.append(value)
            continue
        out += [m.group(1) + v + m.group(3) for v in traits.get(m.group(2)) or []]
    return out


def naive_value_matches(pattern: str, value: str) -> bool:
    if not pattern or not value:
        return False
    if pattern == "*":
        return True
    if (pattern[0] == "^" and pattern[-1] == "$") or "*" in pattern or "?" in pattern:
        return naive_pattern(pattern, stars_capture=False).fullmatch(value) is not None
    return pattern == value


def naive_selector(selector: dict, traits: dict, labels: dict) -> bool:
    if not selector:
        return False
    for key, values in selector.items():
        keys = naive_values(key, traits)
        key = keys[0] if len(keys) == 1 else ""
        values = naive_values(values, traits) or [""]
        if key == "*" and "*" in values:
            continue
        if not any(naive_value_matches(key, k) and any(naive_value_matches(v, lv) for v in values)
                   for k, lv in labels.items()):
            return False
    return True


def naive_decide(role_map: list[dict], local_roles: dict, user: dict, login: str, labels: dict) -> bool:
    re.purge()  # no caching anywhere: every pattern is compiled again for this decision
    traits = dict(user["traits"], logins=user["principals"])
    roles = [local_roles[n] for n in naive_map(role_map, user["remote_roles"]) if n in local_roles]
    for role in roles:
        deny = role["spec"].get("deny") or {}
        if login in naive_values(deny.get("logins"), traits) or naive_selector(deny.get("node_labels"), traits, labels):
            return False
    for role in roles:
        allow = role["spec"]["allow"]
        logins = [lg for lg in naive_values(allow.get("logins"), traits) if re.fullmatch(_NAIVE_LOGIN, lg)]
        if login in logins and naive_selector(allow.get("node_labels"), traits, labels):
            return True
    return False


# ---------------------------------------------------------------------- measurement
def percentile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


def run_fast(authorizer: NodeAuthorizer, workload: list[tuple]):
    """(all latencies, latencies of cache misses, results, total seconds)."""
    latencies, misses, results = [], [], []
    clock = time.perf_counter
    start = clock()
    for user, login, node, labels in workload:
        cached = len(authorizer.cache)
        t0 = clock()
        results.append(authorizer.decide(user, login, node, labels))
        elapsed = (clock() - t0) * 1000.0
        latencies.append(elapsed)
        if len(authorizer.cache) != cached:
            misses.append(elapsed)
    return latencies, misses, results, clock() - start


def run_naive(role_map, local_roles, workload) -> tuple[list[float], list[bool], float]:
    latencies, results = [], []
    clock = time.perf_counter
    start = clock()
    for user, login, _node, labels in workload:
        t0 = clock()
        results.append(naive_decide(role_map, local_roles, user, login, labels))
        latencies.append((clock() - t0) * 1000.0)
        if clock() - start > NAIVE_TIME_BUDGET_S:
            break
    return latencies, results, clock() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    role_map = make_role_map()
    local_roles = {r["metadata"]["name"]: r for r in (make_role(i) for i in range(N_ROLES))}
    users = make_users(rng, 60)
    workload = make_workload(rng, users, args.decisions)

    authorizer = NodeAuthorizer(role_map, local_roles)
    fast_ms, miss_ms, fast_results, fast_total = run_fast(authorizer, workload)
    naive_ms, naive_results, naive_total = run_naive(role_map, local_roles, workload)

    agree = sum(a == b for a, b in zip(fast_results, naive_results))
    fast_sorted, naive_sorted = sorted(fast_ms), sorted(naive_ms)
    fast_dps = len(fast_ms) / fast_total
    naive_dps = len(naive_ms) / naive_total
    p99 = percentile(fast_sorted, 0.99)
    print(json.dumps({
        "decisions": len(fast_ms),
        "roles": N_ROLES,
        "role_map_entries": len(role_map),
        "distinct_users": len(users),
        "checker_cache_misses": len(miss_ms),
        "cache_miss_p50_ms": round(percentile(sorted(miss_ms), 0.50), 3),
        "cache_miss_max_ms": round(max(miss_ms), 3),
        "allowed_fraction": round(sum(fast_results) / len(fast_results), 3),
        "decisions_per_second": round(fast_dps),
        "p50_ms": round(percentile(fast_sorted, 0.50), 4),
        "p99_ms": round(p99, 4),
        "max_ms": round(fast_sorted[-1], 3),
        "target_p99_ms": TARGET_P99_MS,
        "meets_target": p99 <= TARGET_P99_MS,
        "baseline": {
            "description": "no caching, patterns compiled with Python re on every decision",
            "decisions": len(naive_ms),
            "decisions_per_second": round(naive_dps),
            "p50_ms": round(percentile(naive_sorted, 0.50), 4),
            "p99_ms": round(percentile(naive_sorted, 0.99), 4),
        },
        "speedup_decisions_per_second": round(fast_dps / naive_dps, 1),
        "p99_ratio_baseline_over_measured": round(percentile(naive_sorted, 0.99) / p99, 1),
        "baseline_agreement": f"{agree}/{len(naive_results)}",
    }, indent=2))
    if agree != len(naive_results):
        sys.exit("the measured implementation and the baseline disagree on some decisions")


if __name__ == "__main__":
    main()
