# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""How each module decides whether a write is needed (pure functions, no agent)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import re

import pytest

from ansible_collections.gatehouse.clusters.plugins.module_utils.resources import ResourceError
from ansible_collections.gatehouse.clusters.plugins.modules import join_token, remote_cluster_labels, role
from ansible_collections.gatehouse.clusters.plugins.modules import trusted_cluster as tc

NOW = 1714564800  # 2024-05-01T12:00:00Z


def token(roles=("trusted_cluster",), labels=None, expires="2024-05-01T12:30:00.000000Z"):
    return {"kind": "token", "version": "v2", "metadata": {"name": "t", "expires": expires},
            "spec": {"roles": list(roles), "labels": labels or {}}}


@pytest.mark.parametrize("current, types, labels, renew, why", [
    (None, ["node"], {}, 0, "missing"),
    (token(), ["trusted_cluster"], {}, 0, None),
    (token(roles=["node", "proxy"]), ["proxy", "node"], {}, 0, None),
    (token(), ["node"], {}, 0, "type"),
    (token(roles=["node", "proxy"]), ["node"], {}, 0, "type"),
    (token(labels={"env": "prod"}), ["trusted_cluster"], {"env": "prod"}, 0, None),
    (token(labels={"env": "prod"}), ["trusted_cluster"], {"env": "dev"}, 0, "labels"),
    (token(), ["trusted_cluster"], {"env": "prod"}, 0, "labels"),
    (token(expires="2024-05-01T11:59:59Z"), ["trusted_cluster"], {}, 0, "expiring"),
    (token(), ["trusted_cluster"], {}, 1800, "expiring"),
    (token(), ["trusted_cluster"], {}, 1799, None),
    (token(expires=""), ["trusted_cluster"], {}, 300, None),
])
def test_join_token_needs_replacing(current, types, labels, renew, why):
    assert join_token.needs_replacing(current, types, labels, renew, now=NOW) == why


def test_join_token_replaced_when_its_approved_principals_differ():
    current = {"spec": {"roles": ["proxy"], "labels": {}, "principals": ["gate.example.com"]},
               "metadata": {"expires": join_token.rfc3339(NOW + 600)}}
    assert join_token.needs_replacing(current, ["proxy"], {}, now=NOW, principals=["gate.example.com"]) is None
    assert join_token.needs_replacing(current, ["proxy"], {}, now=NOW, principals=["lb.example.com"]) == "principals"
    assert join_token.needs_replacing(current, ["proxy"], {}, now=NOW) == "principals"


def test_join_token_name():
    assert join_token.token_name({"name": "invite", "token": "x" * 20}) == "invite"
    value = "a-caller-supplied-token-value"
    assert join_token.token_name({"name": None, "token": value}) == hashlib.sha256(value.encode()).hexdigest()[:16]


def test_join_token_expiry_text():
    assert join_token.rfc3339(NOW + 0.25) == "2024-05-01T12:00:00.250000Z"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", join_token.rfc3339(NOW))


def params(**kwargs):
    base = {"name": "root", "token": None, "web_proxy_addr": None, "tunnel_addr": None, "role_map": None,
            "enabled": True, "state": "present", "wait": False, "wait_timeout": 60}
    base.update(kwargs)
    return base


CURRENT = {"kind": "trusted_cluster", "version": "v2", "metadata": {"name": "root"},
           "spec": {"enabled": True, "web_proxy_addr": "root:3080", "tunnel_addr": "root:3080",
                    "role_map": [{"remote": "access", "local": ["visitor"]}]},
           "status": {"connection": "online"}}


def test_trusted_cluster_create_spec_defaults():
    spec = tc.desired_spec(params(web_proxy_addr="root:3080", role_map=[{"remote": "a", "local": "b"}]), None)
    assert spec == {"enabled": True, "web_proxy_addr": "root:3080", "tunnel_addr": "root:3080",
                    "role_map": [{"remote": "a", "local": ["b"]}]}
    assert tc.desired_spec(params(web_proxy_addr="root:3080"), None)["role_map"] == []


def test_trusted_cluster_keeps_what_is_not_given():
    spec = tc.desired_spec(params(), CURRENT)
    assert spec == CURRENT["spec"]


def test_trusted_cluster_forward_audit_is_sent_when_given_and_kept_otherwise():
    assert tc.desired_spec(params(forward_audit=True), CURRENT)["forward_audit"] is True
    forwarding = dict(CURRENT, spec=dict(CURRENT["spec"], forward_audit=True))
    assert tc.desired_spec(params(), forwarding)["forward_audit"] is True
    assert tc.desired_spec(params(forward_audit=False), forwarding)["forward_audit"] is False


def test_trusted_cluster_sends_what_is_given():
    spec = tc.desired_spec(params(enabled=False, role_map=[{"remote": "a", "local": "x"}]), CURRENT)
    assert spec["enabled"] is False and spec["role_map"] == [{"remote": "a", "local": ["x"]}]


def test_trusted_cluster_token_is_sent_only_to_create():
    spec = tc.desired_spec(params(token="a-new-token-value-000000"), CURRENT)
    assert "token" not in spec
    assert tc.resource("root", spec, "secret-value-0000000")["spec"]["token"] == "secret-value-0000000"


def test_trusted_cluster_tunnel_follows_the_web_address_unless_set():
    spec = tc.desired_spec(params(web_proxy_addr="new:3080"), CURRENT)
    assert (spec["web_proxy_addr"], spec["tunnel_addr"]) == ("new:3080", "new:3080")
    explicit = dict(CURRENT, spec=dict(CURRENT["spec"], tunnel_addr="tunnel:3024"))
    spec = tc.desired_spec(params(web_proxy_addr="new:3080"), explicit)
    assert spec["tunnel_addr"] == "tunnel:3024"
    spec = tc.desired_spec(params(tunnel_addr="other:3024"), explicit)
    assert spec["tunnel_addr"] == "other:3024"


@pytest.mark.parametrize("current, labels, mode, after", [
    ({"a": "1"}, {"b": "2"}, "merge", {"a": "1", "b": "2"}),
    ({"a": "1"}, {"a": "3"}, "merge", {"a": "3"}),
    ({"a": "1", "b": "2"}, {"b": None}, "merge", {"a": "1"}),
    ({"a": "1"}, {"zzz": None}, "merge", {"a": "1"}),
    ({"a": "1", "b": "2"}, {"c": 3}, "replace", {"c": "3"}),
    ({"a": "1"}, {}, "replace", {}),
])
def test_remote_cluster_labels(current, labels, mode, after):
    assert remote_cluster_labels.wanted_labels(current, labels, mode) == after


def test_remote_cluster_labels_refuses_null_in_replace_mode():
    with pytest.raises(ResourceError, match="labels.b is null"):
        remote_cluster_labels.wanted_labels({}, {"a": "1", "b": None}, "replace")


def test_role_desired_from_module_params():
    p = {"name": "ops", "description": None, "labels": None,
         "allow": {"logins": ["root"], "node_labels": {"env": "prod"}, "cluster_labels": None,
                   "kubernetes_groups": None, "kubernetes_users": None, "db_users": None, "db_names": None},
         "deny": None,
         "options": {"max_session_ttl": "8h", "client_idle_timeout": None, "permit_pty": None,
                     "permit_port_forwarding": None, "permit_agent_forwarding": None, "permit_x11_forwarding": None}}
    desired = role.desired_role(p)
    assert desired["spec"] == {"allow": {"logins": ["root"], "node_labels": {"env": "prod"}},
                               "options": {"max_session_ttl": "8h"}}
