"""A root for a fleet (issue 16), end to end: a root and two leaves as real processes.

Both leaves have a node named "twin"; leaf-a is labelled env=prod, leaf-b env=staging.
bob (role access) sees both leaves; alice (role prodonly, cluster_labels env=prod) sees
only leaf-a, so leaf-b is hidden from her: never searched, never named. Covers the
API's label filter, search and paging for remote clusters (`gatectl get rc`, `gate
clusters`), `gate ls --all` through the tunnels with an offline leaf reported, and
`gate ssh NODE` without --cluster (one match resolves, several are named), and the
leaf side of presence: heartbeats flow without the leaf writing to its backend per beat.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile

import pytest

from conftest import Cluster, ok, unix_user, wait_until, write_yaml
from test_trust_e2e import tc_yaml

ROOT, LEAF_A, LEAF_B = "root.test", "leaf-a.test", "leaf-b.test"
PASSWORD = "correct horse battery"
ROLE_MAP = [{"remote": "access", "local": ["access"]}, {"remote": "prodonly", "local": ["access"]}]


class Fleet:
    def __init__(self, tmp: str):
        self.tmp = tmp
        self.root = Cluster(os.path.join(tmp, "root"), extra_auth=", login_rate: 600", cluster_name=ROOT,
                            node_name="rootnode", extra_proxy=", presence_interval: 2")
        # The leaves' presence summary every 300 s (the longest allowed, default 30): within a test, a
        # leaf writes its tunnel presence only on a change, so a write per heartbeat would stand out.
        self.leaves = {name: Cluster(os.path.join(tmp, name), cluster_name=name, node_name="twin",
                                     extra_general=", insecure: true", extra_proxy=", presence_interval: 300")
                       for name in (LEAF_A, LEAF_B)}

    def join(self, leaf: str, labels: str) -> None:
        out = ok(self.root.run_gatectl("tokens", "add", "--type=trusted_cluster", "--ttl=15m", f"--labels={labels}",
                                       "--format", "json"))
        path = write_yaml(os.path.join(self.tmp, f"tc-{leaf}.yaml"),
                          tc_yaml(json.loads(out)["token"], self.root.web_addr, role_map=ROLE_MAP))
        ok(self.leaves[leaf].run_gatectl("create", path))

    def rcs(self, *flags) -> list[dict]:
        return json.loads(ok(self.root.run_gatectl("get", "rc", *flags, "--format", "json")))

    def gate(self, user: str, *args):
        return self.root.run_gate(*args, gate_home=os.path.join(self.tmp, f"gate-{user}"))

    def stop(self) -> None:
        for leaf in self.leaves.values():
            leaf.stop()
        self.root.stop()


@pytest.fixture(scope="module")
def fleet():
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (sessions switch to the visitor login)")
    tmp = tempfile.mkdtemp(prefix="gatehouse-fleet-")
    f = Fleet(tmp)
    with unix_user("visitor"):
        try:
            f.root.start()
            for leaf in f.leaves.values():
                leaf.start()
            ok(f.root.run_gatectl("create", write_yaml(os.path.join(tmp, "prodonly.yaml"), json.dumps(
                {"kind": "role", "version": "v5", "metadata": {"name": "prodonly"},
                 "spec": {"allow": {"logins": ["visitor"], "node_labels": {"*": "*"},
                                    "cluster_labels": {"env": "prod"}}}}))))
            f.root.add_user("alice", "prodonly", "visitor", PASSWORD)
            f.root.add_user("bob", "access", "visitor", PASSWORD)
            f.join(LEAF_A, "env=prod,site=north")
            f.join(LEAF_B, "env=staging,site=south")
            wait_until(lambda: [rc["metadata"]["name"] for rc in f.rcs()
                                if rc["status"]["connection"] == "online"] == [LEAF_A, LEAF_B],
                       30, "both leaves online")
            for user in ("alice", "bob"):
                ok(f.root.login(user, PASSWORD, os.path.join(tmp, f"gate-{user}")))
            yield f
        finally:
            f.stop()
            if not os.environ.get("GATEHOUSE_E2E_KEEP"):
                shutil.rmtree(tmp, ignore_errors=True)


def names(items: list[dict]) -> list[str]:
    return [i["metadata"]["name"] for i in items]


def test_gatectl_get_rc_filters_by_label_and_search(fleet):
    assert names(fleet.rcs()) == [LEAF_A, LEAF_B]
    assert names(fleet.rcs("--labels=env=prod")) == [LEAF_A]
    assert names(fleet.rcs("--labels=env=prod,site=south")) == []
    assert names(fleet.rcs("--search=SOUTH")) == [LEAF_B]  # a label's text, any case
    assert names(fleet.rcs("--search=leaf-")) == [LEAF_A, LEAF_B]
    r = fleet.root.run_gatectl("get", "users", "--labels=env=prod")
    assert r.returncode != 0 and "filter remote clusters only" in r.stderr


def test_api_pages_remote_clusters(fleet):
    from gatehouse.client import APIClient
    from gatehouse.errors import BadParameter
    from gatehouse.identity import IdentityFiles
    api = APIClient.for_identity(IdentityFiles(os.path.join(fleet.root.data_dir, "admin")),
                                 [f"https://{fleet.root.auth_addr}"])
    first = api.get("/v1/resources/remote_cluster", params={"limit": "1"})
    assert names(first["items"]) == [LEAF_A] and first["next"] == LEAF_A
    second = api.get("/v1/resources/remote_cluster", params={"limit": "1", "start_after": first["next"]})
    assert names(second["items"]) == [LEAF_B] and second["next"] == ""
    page = api.get("/v1/clusters", params={"limit": "2"})
    assert [c["name"] for c in page["items"]] == [ROOT, LEAF_A] and page["next"] == LEAF_A
    with pytest.raises(BadParameter, match="page size"):
        api.get("/v1/resources/remote_cluster", params={"limit": "100000"})


def test_gate_clusters_filters_and_hides_what_roles_hide(fleet):
    out = ok(fleet.gate("bob", "clusters", "--labels=env=staging"))
    assert LEAF_B in out and LEAF_A not in out and ROOT not in out
    assert [c["cluster_name"] for c in json.loads(ok(fleet.gate("bob", "clusters", "--search=leaf", "-f", "json")))] \
        == [LEAF_A, LEAF_B]
    seen = json.loads(ok(fleet.gate("alice", "clusters", "-f", "json")))
    assert [c["cluster_name"] for c in seen] == [ROOT, LEAF_A]
    assert json.loads(ok(fleet.gate("alice", "clusters", "--search=staging", "-f", "json"))) == []


def test_ls_all_searches_every_visible_leaf(fleet):
    answer = json.loads(ok(fleet.gate("bob", "ls", "--all", "--format", "json")))
    assert [(n["cluster"], n["metadata"]["name"]) for n in answer["items"]] == \
        [(ROOT, "rootnode"), (LEAF_A, "twin"), (LEAF_B, "twin")]
    assert answer["unreachable"] == []
    table = ok(fleet.gate("bob", "ls", "-R", "--search=twin"))
    assert "Cluster" in table and LEAF_A in table and LEAF_B in table and "rootnode" not in table


def test_hidden_leaf_is_never_searched_nor_named(fleet):
    marker = "lists the nodes 'alice' may see"
    before = {name: leaf.log_text().count(marker) for name, leaf in fleet.leaves.items()}
    r = fleet.gate("alice", "ls", "--all", "--format", "json")
    answer = json.loads(ok(r))
    assert [(n["cluster"], n["metadata"]["name"]) for n in answer["items"]] == [(ROOT, "rootnode"), (LEAF_A, "twin")]
    assert LEAF_B not in r.stdout + r.stderr
    assert fleet.leaves[LEAF_A].log_text().count(marker) > before[LEAF_A], "the visible leaf was asked"
    assert fleet.leaves[LEAF_B].log_text().count(marker) == before[LEAF_B], "the hidden leaf was asked"


def test_ssh_without_cluster_resolves_a_unique_name(fleet):
    # For alice "twin" is only in leaf-a (leaf-b is hidden from her), so it resolves there, through the tunnel.
    r = fleet.gate("alice", "ssh", "visitor@twin", "echo found-in-one-cluster")
    assert ok(r) == "found-in-one-cluster\n" and LEAF_B not in r.stderr
    assert [e for e in fleet.leaves[LEAF_A].audit("session.start") if e.get("user") == "alice"]
    # A node of the selected cluster (the root) is found there: no leaf is asked.
    marker = "lists the nodes 'bob' may see"
    before = {name: leaf.log_text().count(marker) for name, leaf in fleet.leaves.items()}
    assert ok(fleet.gate("bob", "ssh", "visitor@rootnode", "echo on-the-root")) == "on-the-root\n"
    assert {name: leaf.log_text().count(marker) for name, leaf in fleet.leaves.items()} == before


def test_ssh_without_cluster_names_the_candidates(fleet):
    r = fleet.gate("bob", "ssh", "visitor@twin", "echo never")
    assert r.returncode != 0 and "never" not in r.stdout
    assert r.stderr.strip() == (f'ERROR: node "twin" exists in 2 clusters you can reach ({LEAF_A}, {LEAF_B}); '
                                f"pick one with --cluster, e.g. gate ssh --cluster={LEAF_A} twin")
    assert ok(fleet.gate("bob", "ssh", f"--cluster={LEAF_B}", "visitor@twin", "echo chosen")) == "chosen\n"


def test_leaf_does_not_write_its_backend_per_heartbeat(fleet):
    """Count the leaf's heartbeats the root saw (each new last_heartbeat is at least one beat) and
    the leaf's backend writes meanwhile: tunnel presence is written on change and every summary
    interval (300 s here), never per beat, so the idle window has beats and no tunnel presence write.
    (The leaf's own members still heartbeat to its auth: nodes/ and proxies/ records, every 5 s.)"""
    leaf = fleet.leaves[LEAF_A]
    start = leaf.backend_revision()
    beats: set[str] = set()

    def heard() -> bool:
        rc = fleet.rcs("--search", LEAF_A)[0]
        assert rc["status"]["connection"] == "online"
        beats.add(rc["status"]["last_heartbeat"])
        return len(beats) >= 5
    wait_until(heard, 120, "five heartbeats of leaf-a seen at the root")
    written = leaf.keys_written_since(start)
    seen = len(beats) - 1  # the first value may predate the window
    assert seen >= 4
    tunnel = [k for k in written if k.startswith(("tunnel", "presence"))]
    assert tunnel == [], f"{len(tunnel)} tunnel presence writes for {seen} heartbeats: {tunnel}"
    members = [k for k in written if not k.startswith(("nodes/", "proxies/"))]
    assert members == [], f"unexpected leaf writes while idle: {written}"


def test_leaf_that_does_not_answer_is_reported_not_waited_for(fleet):
    """leaf-b frozen (SIGSTOP): its tunnel is still up at the root but nothing answers; then leaf-b stopped."""
    leaf_b = fleet.leaves[LEAF_B]
    os.kill(leaf_b.daemon.proc.pid, signal.SIGSTOP)
    try:
        r = fleet.gate("bob", "ls", "--all", "--timeout=1")
    finally:
        os.kill(leaf_b.daemon.proc.pid, signal.SIGCONT)
    assert r.returncode == 0, r.stderr
    assert LEAF_A in r.stdout and "twin" in r.stdout
    assert f"{LEAF_B}: not searched: " in r.stderr
    leaf_b.stop()
    wait_until(lambda: [rc for rc in fleet.rcs("--search", LEAF_B) if rc["status"]["connection"] == "offline"],
               60, "leaf-b offline at the root")
    answer = json.loads(ok(fleet.gate("bob", "ls", "--all", "--format", "json")))
    assert answer["unreachable"] == [{"cluster": LEAF_B, "error": "offline (not searched)"}]
    assert (LEAF_A, "twin") in [(n["cluster"], n["metadata"]["name"]) for n in answer["items"]]
