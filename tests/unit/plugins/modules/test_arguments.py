# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Argument handling of every module: bad input fails before the agent is asked anything.

The data directory in these tests does not exist, so a module that got past its own
argument checks would fail with the missing-identity message instead.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.gatehouse.clusters.plugins.modules import (
    cluster_info, join_token, oidc_connector, remote_cluster_info, remote_cluster_labels, role, trusted_cluster, user)

MODULES = (cluster_info, join_token, oidc_connector, remote_cluster_info, remote_cluster_labels, role, trusted_cluster,
           user)
OIDC = {"name": "corp", "issuer_url": "https://idp.example.com", "client_id": "gatehouse",
        "client_secret": "s3cret-0123456789", "redirect_url": "https://root.example.com:3080/webapi/oidc/callback",
        "claims_to_roles": [{"claim": "groups", "value": "dev", "roles": ["access"]}]}


@pytest.fixture
def nowhere(tmp_path):
    return str(tmp_path / "no-data-dir")


def missing_identity(result, nowhere):
    return result["msg"].startswith("the Gatehouse admin identity file %s/admin/identity.crt does not exist" % nowhere)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_valid_arguments_reach_the_connection(run_module, nowhere, module):
    args = {
        "cluster_info": {},
        "join_token": {"name": "invite"},
        "oidc_connector": OIDC,
        "remote_cluster_info": {},
        "remote_cluster_labels": {"name": "leaf", "labels": {"env": "prod"}},
        "role": {"name": "ops", "allow": {"logins": ["root"]}},
        "trusted_cluster": {"name": "root", "role_map": [{"remote": "access", "local": ["visitor"]}]},
        "user": {"name": "alice", "roles": ["access"]},
    }[module.__name__.rsplit(".", 1)[-1]]
    result, failed = run_module(module, dict(args, data_dir=nowhere))
    assert failed
    assert missing_identity(result, nowhere), result["msg"]


@pytest.mark.parametrize("module, args, message", [
    (user, {"name": "alice"}, "state is present but all of the following are missing: roles"),
    (user, {"name": "alice", "roles": ["a"], "logins": ["x"], "traits": {"logins": ["y"]}},
     "user alice: set the logins either with logins or with traits.logins, not both"),
    (user, {"name": "alice", "roles": ["a"], "password": "secret"}, "Unsupported parameters"),
    (role, {"name": "ops", "allow": {"login": ["root"]}}, "module: allow.login. Supported parameters include: cluster_labels"),
    (role, {"name": "ops", "options": {"permit_pty": "maybe"}}, "permit_pty"),
    (join_token, {"type": ["node"]}, "one of the following is required: name, token"),
    (join_token, {"name": "t", "type": ["nodes"]}, "value of type must be one or more of: trusted_cluster, node, proxy"),
    (join_token, {"name": "t", "ttl": "soon"},
     'join token t: ttl "soon" is not a valid duration; write it like 1h30m, 15m or 90s'),
    (join_token, {"name": "t", "token": "short"}, "join token t: token must be at least 16 characters long"),
    (join_token, {"name": "t", "ttl": "10m", "renew_before": "15m"},
     "join token t: renew_before (900s) must be shorter than ttl (600s), or every run would replace the token"),
    (join_token, {"name": "t", "labels": {"on": True}}, "join token t: labels.on must be a string"),
    (trusted_cluster, {"name": "root", "role_map": [{"remote": "access"}]},
     "missing required arguments: local found in role_map"),
    (trusted_cluster, {"name": "root", "role_map": [{"remote": "", "local": ["a"]}]},
     "trusted_cluster root: role_map[0].remote is missing"),
    (trusted_cluster, {"name": "root", "wait": "sometimes"}, "wait"),
    (remote_cluster_labels, {"name": "leaf"}, "missing required arguments: labels"),
    (remote_cluster_labels, {"name": "leaf", "labels": {"env": None}, "mode": "replace"},
     "remote cluster leaf: labels.env is null; with mode=replace leave the label out instead"),
    (remote_cluster_labels, {"name": "leaf", "labels": {}, "mode": "overwrite"}, "value of mode must be one of"),
    (cluster_info, {"timeout": "soon"}, "timeout"),
    (oidc_connector, {"name": "corp", "client_id": "gatehouse"},
     "state is present but all of the following are missing: issuer_url, client_secret, redirect_url, claims_to_roles"),
    (oidc_connector, dict(OIDC, claims_to_roles=[{"claim": "groups", "value": "dev"}]),
     "missing required arguments: roles found in claims_to_roles"),
    (oidc_connector, dict(OIDC, claims_to_roles=[{"claim": "groups", "value": "dev", "roles": []}]),
     "oidc corp: claims_to_roles[0].roles is empty; list the roles that claim groups=dev gives"),
])
def test_bad_arguments(run_module, nowhere, module, args, message):
    result, failed = run_module(module, dict(args, data_dir=nowhere))
    assert failed
    assert message in result["msg"]
    assert not missing_identity(result, nowhere)


@pytest.mark.parametrize("module", [join_token, trusted_cluster])
def test_tokens_are_no_log(module):
    assert module.ARGUMENT_SPEC["token"]["no_log"] is True


def test_token_value_is_masked_in_results(run_module, nowhere):
    secret = "a-secret-token-value-0123456789"
    result, failed = run_module(trusted_cluster, {"name": "root", "token": secret, "data_dir": nowhere,
                                                  "role_map": [{"remote": "", "local": ["x"]}]})
    assert failed
    assert secret not in repr(result)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_every_module_documents_what_it_accepts(module):
    for attr in ("DOCUMENTATION", "EXAMPLES", "RETURN"):
        assert getattr(module, attr).strip()
    assert "gatehouse.clusters.api" in module.DOCUMENTATION
