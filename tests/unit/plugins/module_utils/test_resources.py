# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Building requests and reading options on the module side (module_utils/resources.py).

Normalisation and comparison are the agent's (dry run); its tests are in agent/tests/unit."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.gatehouse.clusters.plugins.module_utils import resources as r


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


def test_role_request_sends_only_what_was_given():
    role = r.role_request("ops", description="Operators", labels={"team": "it"},
                          allow={"logins": ["root"], "node_labels": {"env": "prod"}, "cluster_labels": None},
                          deny=None, options={"max_session_ttl": "8h", "permit_pty": False, "permit_x11_forwarding": None})
    assert role == {"kind": "role", "metadata": {"name": "ops", "description": "Operators", "labels": {"team": "it"}},
                    "spec": {"options": {"max_session_ttl": "8h", "permit_pty": False},
                             "allow": {"logins": ["root"], "node_labels": {"env": "prod"}}}}
    assert r.role_request("bare") == {"kind": "role", "metadata": {"name": "bare"}, "spec": {}}


def test_user_request():
    user = r.user_request("alice", ["access"], traits={"groups": "ops"}, logins=["alice", "ubuntu"])
    assert user == {"kind": "user", "metadata": {"name": "alice"},
                    "spec": {"roles": ["access"], "traits": {"groups": "ops", "logins": ["alice", "ubuntu"]}}}
    with pytest.raises(r.ResourceError, match="either with logins or with traits.logins, not both"):
        r.user_request("bob", ["access"], traits={"logins": ["a"]}, logins=["b"])
    with pytest.raises(r.ResourceError, match="traits must be a mapping"):
        r.user_request("bob", ["access"], traits=["logins"])


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


def test_diff_never_carries_secrets():
    tc = {"kind": "trusted_cluster", "metadata": {"name": "root"}, "spec": {"enabled": True, "token": "s3cret"}}
    d = r.diff(None, tc, "trusted_cluster/root")
    assert d == {"before": {}, "after": {"kind": "trusted_cluster", "metadata": {"name": "root"},
                                         "spec": {"enabled": True}},
                 "before_header": "trusted_cluster/root", "after_header": "trusted_cluster/root"}
    assert tc["spec"]["token"] == "s3cret"  # the caller's copy is untouched
    assert r.diff(tc, None, "x")["after"] == {}


def test_oidc_request():
    params = {"name": "corp", "state": "present", "issuer_url": "https://idp.example.com", "client_id": "gh",
              "client_secret": "s3cret-0123456789", "redirect_url": "https://r:3080/webapi/oidc/callback",
              "scope": None, "username_claim": None,
              "claims_to_roles": [{"claim": "groups", "value": "dev", "roles": ["access"]}]}
    assert r.oidc_request("corp", params) == {"kind": "oidc", "metadata": {"name": "corp"}, "spec": {
        "issuer_url": "https://idp.example.com", "client_id": "gh", "client_secret": "s3cret-0123456789",
        "redirect_url": "https://r:3080/webapi/oidc/callback",
        "claims_to_roles": [{"claim": "groups", "value": "dev", "roles": ["access"]}]}}
    with pytest.raises(r.ResourceError) as info:
        r.oidc_request("corp", dict(params, claims_to_roles=[{"claim": "groups", "value": "dev", "roles": []}]))
    assert str(info.value) == "claims_to_roles[0].roles is empty; list the roles that claim groups=dev gives"


def test_diff_never_carries_a_client_secret():
    connector = {"kind": "oidc", "spec": {"client_id": "gh", "client_secret": "s3cret"}}
    result = r.diff(connector, connector, "oidc/corp")
    assert "client_secret" not in result["before"]["spec"] and "client_secret" not in result["after"]["spec"]
    assert connector["spec"]["client_secret"] == "s3cret"  # the caller's copy is untouched
