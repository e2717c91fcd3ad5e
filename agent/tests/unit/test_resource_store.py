"""Create/replace/remove of every kind through the auth service, and the dry run the modules use.

`auth` is an AuthService in process on real SQLite (conftest.py); no API server runs.
"""

from __future__ import annotations

import copy
import time

import pytest

from gatehouse import resources
from gatehouse.auth.authz import Identity
from gatehouse.clock import now_iso
from gatehouse.errors import AccessDenied, AlreadyExists, BadParameter, NotFound

OPS = {"kind": "role", "metadata": {"name": "ops"},
       "spec": {"allow": {"logins": ["root", "ubuntu"], "node_labels": {"env": ["prod", "dev"]}},
                "options": {"max_session_ttl": "8h"}}}


def admin(auth) -> Identity:
    return Identity("admin", "admin", auth.cluster_name)


async def test_dry_run_of_a_new_role_says_created_and_writes_nothing(auth):
    revision = await auth.backend.revision()
    plan = await auth.resources.put(admin(auth), OPS, dry_run=True)
    assert plan["created"] and plan["changed"] and plan["current"] is None
    assert plan["resource"] == resources.validate(OPS)
    assert plan["resource"]["spec"]["options"]["max_session_ttl"] == 28800  # the agent's normalisation
    assert await auth.backend.revision() == revision
    with pytest.raises(NotFound):
        await auth.resources.get(admin(auth), "role", "ops")


async def test_dry_run_compares_meaning_not_order_or_version(auth):
    await auth.resources.put(admin(auth), OPS)
    reordered = copy.deepcopy(OPS)
    reordered["version"] = "v7"
    reordered["spec"]["allow"]["logins"] = ["ubuntu", "root", "root"]
    reordered["spec"]["allow"]["node_labels"] = {"env": ["dev", "prod"]}
    reordered["spec"]["options"]["max_session_ttl"] = 28800
    plan = await auth.resources.put(admin(auth), reordered, force=True, dry_run=True)
    assert not plan["changed"] and not plan["created"]
    assert plan["current"]["metadata"]["name"] == "ops"
    changed = copy.deepcopy(OPS)
    changed["spec"]["options"]["permit_pty"] = False
    plan = await auth.resources.put(admin(auth), changed, force=True, dry_run=True)
    assert plan["changed"] and plan["current"]["spec"]["options"]["permit_pty"] is True
    assert plan["resource"]["spec"]["options"]["permit_pty"] is False


async def test_dry_run_makes_the_writes_checks(auth):
    user = {"kind": "user", "metadata": {"name": "al"}, "spec": {"roles": ["nosuch"]}}
    with pytest.raises(BadParameter, match="role 'nosuch' does not exist"):
        await auth.resources.put(admin(auth), user, dry_run=True)
    await auth.resources.put(admin(auth), OPS)
    with pytest.raises(AlreadyExists, match="already exists; use 'gatectl create -f'"):
        await auth.resources.put(admin(auth), OPS, dry_run=True)
    with pytest.raises(AccessDenied, match="not allowed to create resources"):
        await auth.resources.put(Identity("n1", "node", auth.cluster_name), OPS, dry_run=True)


async def test_trusted_cluster_dry_run_checks_without_a_handshake(auth):
    tc = {"kind": "trusted_cluster", "metadata": {"name": "root.example"},
          "spec": {"token": "t" * 32, "web_proxy_addr": "127.0.0.1:9",  # nothing listens: never dialled
                   "role_map": [{"remote": "access", "local": "ops"}]}}
    with pytest.raises(BadParameter, match='to local role "ops", which does not exist'):
        await auth.resources.put(admin(auth), tc, dry_run=True)
    await auth.resources.put(admin(auth), OPS)
    plan = await auth.resources.put(admin(auth), tc, dry_run=True)
    assert plan["created"] and "token" not in plan["resource"]["spec"]
    assert plan["resource"]["spec"]["tunnel_addr"] == "127.0.0.1:9"
    with pytest.raises(NotFound):
        await auth.resources.get(admin(auth), "trusted_cluster", "root.example")


async def test_a_token_from_a_file_names_its_secret(auth):
    expires = now_iso(time.time() + 600)
    token = {"kind": "token", "metadata": {"name": "join-web", "expires": expires},
             "spec": {"roles": ["node"], "labels": {"env": "demo"}, "token": "a-secret-of-enough-length"}}
    answer = await auth.resources.put(admin(auth), token)
    assert answer["created"] and "token" not in answer["resource"]["spec"]
    record = await auth.tokens.check("a-secret-of-enough-length", "node")
    assert record["name"] == "join-web" and record["labels"] == {"env": "demo"}
    with pytest.raises(AlreadyExists, match="token \"join-web\" already exists"):
        await auth.resources.put(admin(auth), token)
    no_secret = copy.deepcopy(token)
    del no_secret["spec"]["token"]
    with pytest.raises(BadParameter, match="spec.token is missing; put the secret in the file"):
        await auth.resources.put(admin(auth), no_secret, force=True)
    past = copy.deepcopy(token)
    past["metadata"]["expires"] = "2001-01-01T00:00:00Z"
    with pytest.raises(BadParameter, match="metadata.expires is in the past"):
        await auth.resources.put(admin(auth), past, force=True)


async def test_a_remote_cluster_file_changes_only_its_labels(auth):
    rc = {"kind": "remote_cluster", "metadata": {"name": "leaf.test", "labels": {"env": "prod"}}}
    with pytest.raises(NotFound, match='remote_cluster "leaf.test" not found; a leaf appears here once'):
        await auth.resources.put(admin(auth), rc, force=True)
    from gatehouse import __version__, pki
    secret, _ = await auth.tokens.add(admin(auth), ["trusted_cluster"], 300)
    await auth.trust.validate(Identity("p", "proxy", auth.cluster_name),
                              {"token": secret, "cluster_name": "leaf.test", "version": __version__,
                               "host_cas": [pki.new_ssh_key().public_line]}, "127.0.0.1")
    plan = await auth.resources.put(admin(auth), rc, force=True, dry_run=True)
    assert plan["changed"] and plan["current"]["metadata"]["labels"] == {}
    assert (await auth.resources.put(admin(auth), rc, force=True))["created"] is False
    shown = (await auth.resources.get(admin(auth), "rc", "leaf.test"))[0]
    assert shown["metadata"]["labels"] == {"env": "prod"}
    stored = (await auth.backend.get("remote_clusters/leaf.test")).value
    assert "status" not in stored  # status is computed when read, never stored
