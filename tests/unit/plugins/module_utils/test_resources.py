# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Normalisation and comparison of resources (module_utils/resources.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy

import pytest

from ansible_collections.gatehouse.clusters.plugins.module_utils import resources as r

# The default "access" role exactly as the agent stores and returns it (GET /v1/resources/role/access).
AGENT_ACCESS_ROLE = {
    "kind": "role", "version": "v5",
    "metadata": {"name": "access", "description": "SSH access with the user's own logins", "labels": {}},
    "spec": {
        "allow": {"cluster_labels": {"*": ["*"]}, "db_names": [], "db_users": [], "kubernetes_groups": [],
                  "kubernetes_users": [], "logins": ["{{internal.logins}}"], "node_labels": {"*": ["*"]}},
        "deny": {"cluster_labels": {}, "db_names": [], "db_users": [], "kubernetes_groups": [],
                 "kubernetes_users": [], "logins": [], "node_labels": {}},
        "options": {"client_idle_timeout": 0, "max_session_ttl": 43200, "permit_agent_forwarding": True,
                    "permit_port_forwarding": True, "permit_pty": True, "permit_x11_forwarding": False},
    },
}


@pytest.mark.parametrize("value, seconds", [
    ("1h30m", 5400), ("15m", 900), ("90s", 90), ("2h", 7200), ("30h0m0s", 108000), ("1.5h", 5400),
    (3600, 3600), ("3600", 3600), (" 10m ", 600), ("-5m", -300), (60.0, 60), ("0", 0),
])
def test_parse_duration(value, seconds):
    assert r.parse_duration(value, "ttl") == seconds


@pytest.mark.parametrize("value, message", [
    ("soon", 'ttl "soon" is not a valid duration; write it like 1h30m, 15m or 90s'),
    ("5d", 'ttl "5d" is not a valid duration; write it like 1h30m, 15m or 90s'),
    ("", 'ttl "" is not a valid duration; write it like 1h30m, 15m or 90s'),
    ("0.5s", 'ttl "0.5s" is not a whole number of seconds'),
    (1.5, "ttl must be a whole number of seconds, not 1.5"),
    (True, "ttl must be a duration like 1h30m, 15m or 90s, not True"),
    (None, "ttl must be a duration like 1h30m, 15m or 90s, not None"),
])
def test_parse_duration_errors(value, message):
    with pytest.raises(r.ResourceError) as err:
        r.parse_duration(value, "ttl")
    assert str(err.value) == message


def test_parse_ttl_must_be_positive():
    with pytest.raises(r.ResourceError, match="ttl must be positive"):
        r.parse_ttl("0s", "ttl")
    assert r.parse_ttl("1s", "ttl") == 1


@pytest.mark.parametrize("text, epoch", [
    ("2024-05-01T12:00:00Z", 1714564800),
    ("2024-05-01T12:00:00.500000Z", 1714564800.5),
    ("2024-05-01T14:00:00+02:00", 1714564800),
    ("2024-05-01T10:30:00-01:30", 1714564800),
])
def test_parse_time(text, epoch):
    assert r.parse_time(text) == pytest.approx(epoch)


@pytest.mark.parametrize("text", ["", None, "yesterday", "2024-05-01 12:00:00"])
def test_parse_time_unknown(text):
    assert r.parse_time(text) is None
    assert r.seconds_until(text) is None


def test_seconds_until():
    assert r.seconds_until("2024-05-01T12:00:00Z", now=1714564800 - 90) == pytest.approx(90)
    assert r.seconds_until("2024-05-01T12:00:00Z", now=1714564800 + 5) == pytest.approx(-5)


def test_string_list():
    assert r.string_list(None, "x") == []
    assert r.string_list("root", "x") == ["root"]
    assert r.string_list([" root ", 1000], "x") == ["root", "1000"]
    for bad, message in (([""], "x[0] is an empty string; remove it"),
                         ([None], "x[0] must be a string, not None"),
                         ([True], "x[0] must be a string, not True"),
                         ({"a": 1}, "x must be a list of strings")):
        with pytest.raises(r.ResourceError) as err:
            r.string_list(bad, "x")
        assert str(err.value).startswith(message)


def test_static_labels():
    assert r.static_labels(None, "labels") == {}
    assert r.static_labels({"env": "prod", "rack": 12}, "labels") == {"env": "prod", "rack": "12"}
    with pytest.raises(r.ResourceError, match="labels.on must be a string"):
        r.static_labels({"on": True}, "labels")
    with pytest.raises(r.ResourceError, match="must be a mapping"):
        r.static_labels(["env=prod"], "labels")


def test_selector():
    assert r.selector(None, "s") == {}
    assert r.selector({"env": "prod"}, "s") == {"env": ["prod"]}
    assert r.selector({"env": ["dev", "prod", "dev"], "rack": 7}, "s") == {"env": ["dev", "prod"], "rack": ["7"]}
    with pytest.raises(r.ResourceError, match=r"s.env\[0\] must be a string"):
        r.selector({"env": [None]}, "s")
    with pytest.raises(r.ResourceError, match="must be a mapping"):
        r.selector("env=prod", "s")


def test_role_defaults_match_the_agents_normalised_form():
    role = r.role_resource("access", description="SSH access with the user's own logins",
                           allow={"logins": ["{{internal.logins}}"], "node_labels": {"*": "*"},
                                  "cluster_labels": {"*": "*"}})
    assert role == AGENT_ACCESS_ROLE


def test_role_options_and_conditions():
    role = r.role_resource("ops", description="  Operators ", labels={"team": "it"},
                           allow={"logins": ["root"], "node_labels": {"env": ["prod"]}},
                           deny={"logins": ["admin"]},
                           options={"max_session_ttl": "8h", "client_idle_timeout": "15m",
                                    "permit_pty": False, "permit_x11_forwarding": None})
    assert role["metadata"] == {"name": "ops", "description": "Operators", "labels": {"team": "it"}}
    assert role["spec"]["options"] == {"max_session_ttl": 28800, "client_idle_timeout": 900, "permit_pty": False,
                                       "permit_port_forwarding": True, "permit_agent_forwarding": True,
                                       "permit_x11_forwarding": False}
    assert role["spec"]["deny"]["logins"] == ["admin"]
    assert role["spec"]["deny"]["node_labels"] == {}
    assert set(role["spec"]["allow"]) == set(r.CONDITION_LISTS + r.CONDITION_SELECTORS)


@pytest.mark.parametrize("kwargs, message", [
    (dict(options={"max_session_ttl": "0s"}), "options.max_session_ttl must be positive"),
    (dict(options={"client_idle_timeout": "-1m"}), "options.client_idle_timeout must not be negative"),
    (dict(options={"record_session": True}), "options.record_session is not a role option"),
    (dict(allow={"login": ["root"]}), "allow.login is not a role condition"),
    (dict(deny={"logins": [""]}), r"deny.logins\[0\] is an empty string"),
])
def test_role_errors(kwargs, message):
    with pytest.raises(r.ResourceError, match=message):
        r.role_resource("bad", **kwargs)


def test_user_resource():
    user = r.user_resource("alice", ["access"], traits={"groups": "ops"}, logins=["alice", "ubuntu"])
    assert user == {"kind": "user", "version": "v2", "metadata": {"name": "alice"},
                    "spec": {"roles": ["access"], "traits": {"groups": ["ops"], "logins": ["alice", "ubuntu"]}}}
    assert r.user_resource("bob", "access")["spec"] == {"roles": ["access"], "traits": {}}
    with pytest.raises(r.ResourceError, match="roles is empty"):
        r.user_resource("bob", [])
    with pytest.raises(r.ResourceError, match="either with logins or with traits.logins, not both"):
        r.user_resource("bob", ["access"], traits={"logins": ["a"]}, logins=["b"])
    with pytest.raises(r.ResourceError, match="traits must be a mapping"):
        r.user_resource("bob", ["access"], traits=["logins"])


def test_role_map():
    assert r.role_map(None) == []
    assert r.role_map([{"remote": "access", "local": "visitor"}]) == [{"remote": "access", "local": ["visitor"]}]
    for bad, message in (("access", "must be a list"),
                         (["access"], r"role_map\[0\] must be a mapping"),
                         ([{"remote": "", "local": ["a"]}], r"role_map\[0\].remote is missing"),
                         ([{"remote": "a", "local": []}], r"role_map\[0\].local is empty"),
                         ([{"remote": "a", "local": ["b"], "locals": ["c"]}], 'unknown key "locals"')):
        with pytest.raises(r.ResourceError, match=message):
            r.role_map(bad)


def test_token_types():
    assert r.token_types(["trusted_cluster"]) == ["trusted_cluster"]
    assert r.token_types(["node,proxy", "node"]) == ["node", "proxy"]
    with pytest.raises(r.ResourceError, match="type nodes is not a token type"):
        r.token_types(["nodes"])
    with pytest.raises(r.ResourceError, match=r"type \(none\) is not a token type"):
        r.token_types([])


def test_canonical_ignores_order_and_duplicates():
    assert r.canonical(["b", "a", "b"]) == ["a", "b"]
    assert r.canonical({"x": [3, 1, 2], "y": {"z": ["q", "p"]}}) == {"x": [1, 2, 3], "y": {"z": ["p", "q"]}}
    first = [{"remote": "a", "local": ["y", "x"]}, {"remote": "b", "local": ["z"]}]
    second = [{"remote": "b", "local": ["z"]}, {"remote": "a", "local": ["x", "y"]}]
    assert r.canonical(first) == r.canonical(second)
    assert r.canonical([{"remote": "a", "local": ["x"]}]) != r.canonical([{"remote": "a", "local": ["y"]}])


def test_same_compares_meaning_not_order_version_or_status():
    stored = copy.deepcopy(AGENT_ACCESS_ROLE)
    stored["version"] = "v7"
    stored["status"] = {"anything": True}
    desired = r.role_resource("access", description="SSH access with the user's own logins",
                              allow={"logins": ["{{internal.logins}}"], "node_labels": {"*": "*"},
                                     "cluster_labels": {"*": ["*", "*"]}})
    assert r.same(desired, stored)
    desired["spec"]["options"]["permit_pty"] = False
    assert not r.same(desired, stored)
    alice = r.user_resource("alice", ["b", "a"], logins=["y", "x"])
    assert r.same(alice, r.user_resource("alice", ["a", "b"], logins=["x", "y"]))
    assert not r.same(alice, r.user_resource("alice", ["a"], logins=["x", "y"]))


def test_diff_never_carries_secrets():
    tc = {"kind": "trusted_cluster", "metadata": {"name": "root"}, "spec": {"enabled": True, "token": "s3cret"}}
    d = r.diff(None, tc, "trusted_cluster/root")
    assert d == {"before": {}, "after": {"kind": "trusted_cluster", "metadata": {"name": "root"},
                                         "spec": {"enabled": True}},
                 "before_header": "trusted_cluster/root", "after_header": "trusted_cluster/root"}
    assert tc["spec"]["token"] == "s3cret"  # the caller's copy is untouched
    assert r.diff(tc, None, "x")["after"] == {}
