"""gatehouse.resources: parsing, validation, normalisation and rendering of resources."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from conftest import raised_message
from gatehouse import resources as r

EMPTY_CONDITIONS = {"logins": [], "node_labels": {}, "cluster_labels": {}, "kubernetes_groups": [],
                    "kubernetes_users": [], "db_users": [], "db_names": []}
DEFAULT_OPTIONS = {"max_session_ttl": 43200, "permit_pty": True, "permit_port_forwarding": True,
                   "permit_agent_forwarding": True, "permit_x11_forwarding": False, "client_idle_timeout": 0,
                   "record_session": True, "recording_failure": "fail_open", "audit": "none"}


def role(name="dev", **spec):
    return {"kind": "role", "metadata": {"name": name}, "spec": spec}


def user(name="alice", **spec):
    return {"kind": "user", "metadata": {"name": name}, "spec": spec}


def tc(name="root", **spec):
    return {"kind": "trusted_cluster", "metadata": {"name": name}, "spec": spec}


def token(name="tok1", **spec):
    return {"kind": "token", "metadata": {"name": name}, "spec": spec}


# --------------------------------------------------------------------------- valid minimal → full form
VALID = [
    pytest.param(
        role(allow={"logins": ["ubuntu"]}),
        {"kind": "role", "version": "v5", "metadata": {"name": "dev", "description": "", "labels": {}},
         "spec": {"options": DEFAULT_OPTIONS,
                  "allow": {**EMPTY_CONDITIONS, "logins": ["ubuntu"]},
                  "deny": EMPTY_CONDITIONS}},
        id="role-minimal"),
    pytest.param(
        {"kind": "role", "version": "v3",
         "metadata": {"name": "local-admin", "description": "admins", "labels": {"team": "ops", "n": 1}},
         "spec": {"options": {"max_session_ttl": "30h0m0s", "permit_pty": "false", "client_idle_timeout": "15m",
                              "permit_x11_forwarding": True},
                  "allow": {"logins": "root", "node_labels": {"*": "*", "env": ["dev", "^stag.*$"]},
                            "cluster_labels": {"env": "demo"}, "kubernetes_groups": ["system:masters"],
                            "db_users": ["{{internal.db_users}}"]},
                  "deny": {"node_labels": {"environment": "production"}, "logins": None}}},
        {"kind": "role", "version": "v3",
         "metadata": {"name": "local-admin", "description": "admins", "labels": {"team": "ops", "n": "1"}},
         "spec": {"options": {"max_session_ttl": 108000, "permit_pty": False, "permit_port_forwarding": True,
                              "permit_agent_forwarding": True, "permit_x11_forwarding": True,
                              "client_idle_timeout": 900, "record_session": True, "recording_failure": "fail_open",
                              "audit": "none"},
                  "allow": {**EMPTY_CONDITIONS, "logins": ["root"],
                            "node_labels": {"*": ["*"], "env": ["dev", "^stag.*$"]},
                            "cluster_labels": {"env": ["demo"]}, "kubernetes_groups": ["system:masters"],
                            "db_users": ["{{internal.db_users}}"]},
                  "deny": {**EMPTY_CONDITIONS, "node_labels": {"environment": ["production"]}}}},
        id="role-full"),
    pytest.param(
        {"kind": "role", "metadata": {"name": "tmpl"},
         "spec": {"allow": {"logins": ["{{internal.logins}}", "{{email.local(external.email)}}",
                                       "dev-{{external.team}}"],
                            "node_labels": {"{{external.key}}": "{{external.value}}"}}}},
        {"kind": "role", "version": "v5", "metadata": {"name": "tmpl", "description": "", "labels": {}},
         "spec": {"options": DEFAULT_OPTIONS,
                  "allow": {**EMPTY_CONDITIONS,
                            "logins": ["{{internal.logins}}", "{{email.local(external.email)}}",
                                       "dev-{{external.team}}"],
                            "node_labels": {"{{external.key}}": ["{{external.value}}"]}},
                  "deny": EMPTY_CONDITIONS}},
        id="role-templates"),
    pytest.param(
        {"kind": "role", "metadata": {"name": "nothing"}},
        {"kind": "role", "version": "v5", "metadata": {"name": "nothing", "description": "", "labels": {}},
         "spec": {"options": DEFAULT_OPTIONS, "allow": EMPTY_CONDITIONS, "deny": EMPTY_CONDITIONS}},
        id="role-no-spec"),
    pytest.param(
        user(roles=["access"]),
        {"kind": "user", "version": "v2", "metadata": {"name": "alice"},
         "spec": {"roles": ["access"], "traits": {}}},
        id="user-minimal"),
    pytest.param(
        user("alice@example.com", roles="access", traits={"logins": "visitor", "kubernetes_groups": ["a", "b"],
                                                          "empty": None}),
        {"kind": "user", "version": "v2", "metadata": {"name": "alice@example.com"},
         "spec": {"roles": ["access"], "traits": {"logins": ["visitor"], "kubernetes_groups": ["a", "b"],
                                                  "empty": []}}},
        id="user-traits"),
    pytest.param(
        token(roles=["trusted_cluster"]),
        {"kind": "token", "version": "v2", "metadata": {"name": "tok1"},
         "spec": {"roles": ["trusted_cluster"], "labels": {}}},
        id="token-minimal"),
    pytest.param(
        {"kind": "token", "metadata": {"name": "tok2", "expires": "2030-01-02T03:04:05.123456789Z"},
         "spec": {"roles": ["node", "proxy"], "labels": {"env": "demo"}, "token": "0123456789abcdef"}},
        {"kind": "token", "version": "v2", "metadata": {"name": "tok2", "expires": "2030-01-02T03:04:05.123456789Z"},
         "spec": {"roles": ["node", "proxy"], "labels": {"env": "demo"}, "token": "0123456789abcdef"}},
        id="token-full"),
    pytest.param(
        tc(web_proxy_addr="root.example.com:3080", token="secret"),
        {"kind": "trusted_cluster", "version": "v2", "metadata": {"name": "root"},
         "spec": {"enabled": True, "token": "secret", "tunnel_addr": "root.example.com:3080",
                  "web_proxy_addr": "root.example.com:3080", "role_map": [], "heartbeat_mode": "default",
                  "forward_audit": False}},
        id="trusted_cluster-minimal"),
    pytest.param(
        {"kind": "trusted_cluster", "version": "v1", "metadata": {"name": "main"},
         "spec": {"enabled": False, "tunnel_addr": "main.example.com:3024", "web_proxy_addr": "[::1]:3080",
                  "role_map": [{"remote": "admin", "local": "local-admin"},
                               {"remote": "^remote-(.*)$", "local": ["local-$1"]}],
                  "heartbeat_mode": "low_bandwidth"}},
        {"kind": "trusted_cluster", "version": "v1", "metadata": {"name": "main"},
         "spec": {"enabled": False, "token": "", "tunnel_addr": "main.example.com:3024",
                  "web_proxy_addr": "[::1]:3080",
                  "role_map": [{"remote": "admin", "local": ["local-admin"]},
                               {"remote": "^remote-(.*)$", "local": ["local-$1"]}],
                  "heartbeat_mode": "low_bandwidth", "forward_audit": False}},
        id="trusted_cluster-full"),
    pytest.param(
        {"kind": "remote_cluster", "metadata": {"name": "leaf", "labels": {"env": "demo"}}},
        {"kind": "remote_cluster", "version": "v3", "metadata": {"name": "leaf", "labels": {"env": "demo"}},
         "status": {"connection": "offline", "last_heartbeat": ""}},
        id="remote_cluster-labels"),
    pytest.param(
        {"kind": "remote_cluster", "version": "v3",
         "metadata": {"id": 1651262381521336026, "name": "leafcluster.example.com", "labels": {"env": "demo"}},
         "status": {"connection": "online", "last_heartbeat": "2022-04-29T19:55:35.053054594Z"}},
        {"kind": "remote_cluster", "version": "v3",
         "metadata": {"name": "leafcluster.example.com", "labels": {"env": "demo"}},
         "status": {"connection": "online", "last_heartbeat": "2022-04-29T19:55:35.053054594Z"}},
        id="remote_cluster-from-get-output"),
]


@pytest.mark.parametrize("given,expected", VALID)
def test_valid_resources_normalise_to_full_form(given, expected):
    before = copy.deepcopy(given)
    out = r.validate(given)
    assert out == expected
    assert given == before  # the input is never modified
    assert r.validate(out) == out  # normalise(normalise(x)) == normalise(x)
    assert r.validate(json.loads(json.dumps(out))) == out


def test_yaml_datetime_objects_become_rfc3339_text():
    import datetime as dt
    res = {"kind": "token", "metadata": {"name": "t", "expires": dt.datetime(2030, 1, 2, 3, 4, 5,
                                                                             tzinfo=dt.timezone.utc)},
           "spec": {"roles": ["node"]}}
    assert r.validate(res)["metadata"]["expires"] == "2030-01-02T03:04:05Z"


# --------------------------------------------------------------------------- errors, exact messages
ERRORS = [
    # generic
    pytest.param("not a mapping", {},
                 'resource: a resource must be a mapping with kind, metadata and spec, not the string "not a mapping"',
                 id="not-mapping"),
    pytest.param({"metadata": {"name": "x"}}, {"where": "resource 2 in trusted.yaml"},
                 'resource 2 in trusted.yaml: missing "kind"; add kind: role, user, token or trusted_cluster',
                 id="missing-kind"),
    pytest.param({"kind": "rolez", "metadata": {"name": "x"}}, {},
                 'unknown kind "rolez"; expected one of: role, user, token, trusted_cluster, remote_cluster, '
                 'oidc, node, cert_authority, proxy',
                 id="unknown-kind"),
    pytest.param({"kind": "rolez"}, {"where": "resource 1 in a.yaml"},
                 'resource 1 in a.yaml: unknown kind "rolez"; expected one of: role, user, token, trusted_cluster, '
                 'remote_cluster, oidc, node, cert_authority, proxy',
                 id="unknown-kind-where"),
    pytest.param({"kind": "role"}, {},
                 'role: missing "metadata.name"; give the role a name, e.g. metadata: {name: NAME}',
                 id="missing-name"),
    pytest.param({"kind": "role", "metadata": "dev"}, {},
                 'role: metadata must be a mapping, not the string "dev"; write metadata: {name: NAME}',
                 id="metadata-not-mapping"),
    pytest.param(role("bad name"), {},
                 'role "bad name": metadata.name "bad name" is not valid; use 1-253 letters, digits, \'.\', \'-\' '
                 'or \'_\', starting with a letter or digit',
                 id="bad-name"),
    pytest.param(role("a" * 254), {},
                 f'role "{"a" * 254}": metadata.name is 254 characters long; use 1-253 letters, digits, \'.\', '
                 f'\'-\' or \'_\', starting with a letter or digit',
                 id="long-name"),
    pytest.param(user("-alice", roles=["a"]), {},
                 'user "-alice": metadata.name "-alice" is not valid; use 1-253 letters, digits, \'.\', \'-\', '
                 '\'_\' or \'@\', starting with a letter or digit',
                 id="bad-user-name"),
    pytest.param({**role(), "version": "v9"}, {},
                 'role "dev": version "v9" is not supported for role; use one of v1, v2, v3, v4, v5, v6, v7',
                 id="bad-version"),
    pytest.param({**user(roles=["a"]), "version": "v3"}, {},
                 'user "alice": version "v3" is not supported for user; use v2',
                 id="bad-user-version"),
    pytest.param({**role(), "spce": {}}, {},
                 'role "dev": unknown field "spce"; did you mean "spec"?',
                 id="unknown-top-field"),
    pytest.param({**role(), "status": {}}, {"where": "resource 3 in r.yaml"},
                 'role "dev" (resource 3 in r.yaml): unknown field "status"; the fields allowed at the top level are: '
                 'kind, version, metadata, spec',
                 id="status-on-role"),
    pytest.param({"kind": "role", "metadata": {"name": "dev", "owner": "x"}}, {},
                 'role "dev": unknown field "metadata.owner"; the fields allowed in metadata are: name, '
                 'description, labels',
                 id="unknown-metadata-field"),
    # role
    pytest.param(role(allow={"login": ["a"]}), {},
                 'role "dev": unknown field "spec.allow.login"; did you mean "logins"?',
                 id="role-login-typo"),
    pytest.param(role(options={"forward_agent": True}), {},
                 'role "dev": unknown field "spec.options.forward_agent"; did you mean "permit_agent_forwarding"?',
                 id="role-teleport-option-name"),
    pytest.param(role(allow={"rules": []}), {},
                 'role "dev": field "spec.allow.rules" is not supported by Gatehouse roles; remove it',
                 id="role-rules"),
    pytest.param(role(alow={}), {},
                 'role "dev": unknown field "spec.alow"; did you mean "allow"?',
                 id="role-spec-typo"),
    pytest.param(role(allow={"zzz": 1}), {},
                 'role "dev": unknown field "spec.allow.zzz"; the fields allowed in spec.allow are: logins, '
                 'node_labels, cluster_labels, kubernetes_groups, kubernetes_users, db_users, db_names',
                 id="role-unknown-no-close-match"),
    pytest.param(role(allow=["logins"]), {},
                 'role "dev": spec.allow must be a mapping, not a list',
                 id="role-allow-list"),
    pytest.param(role(allow={"logins": {"a": 1}}), {},
                 'role "dev": spec.allow.logins must be a list of strings, not a mapping',
                 id="role-logins-mapping"),
    pytest.param(role(allow={"logins": ["ok", True]}), {},
                 'role "dev": spec.allow.logins[1] must be a string, not the boolean true; quote it in YAML',
                 id="role-logins-bool"),
    pytest.param(role(allow={"logins": [" "]}), {},
                 'role "dev": spec.allow.logins[0] is an empty string; remove it',
                 id="role-logins-empty"),
    pytest.param(role(allow={"logins": ["ubuntu", "bad login"]}), {},
                 'role "dev": spec.allow.logins[1] "bad login" is not a valid Unix login; use letters, digits, "_", '
                 '"." and "-", starting with a letter or "_", at most 32 characters',
                 id="role-bad-login"),
    pytest.param(role(deny={"logins": ["-root"]}), {},
                 'role "dev": spec.deny.logins[0] "-root" is not a valid Unix login; use letters, digits, "_", '
                 '"." and "-", starting with a letter or "_", at most 32 characters',
                 id="role-bad-deny-login"),
    pytest.param(role(options={"max_session_ttl": "5x"}), {},
                 'role "dev": spec.options.max_session_ttl "5x" is not a valid duration; write it like 1h30m, '
                 '15m or 90s',
                 id="role-ttl-invalid"),
    pytest.param(role(options={"max_session_ttl": "0s"}), {},
                 'role "dev": spec.options.max_session_ttl must be positive, not 0s; e.g. 15m or 12h',
                 id="role-ttl-zero"),
    pytest.param(role(options={"max_session_ttl": "7d"}), {},
                 'role "dev": spec.options.max_session_ttl "7d" uses days, which is not a unit here; write 168h '
                 'instead',
                 id="role-ttl-days"),
    pytest.param(role(options={"client_idle_timeout": "-5m"}), {},
                 'role "dev": spec.options.client_idle_timeout must not be negative; use 0 to turn the idle '
                 'timeout off, or e.g. 15m',
                 id="role-idle-negative"),
    pytest.param(role(options={"permit_pty": "maybe"}), {},
                 'role "dev": spec.options.permit_pty must be true or false, not the string "maybe"',
                 id="role-bool"),
    pytest.param(role(allow={"logins": ["{{internal.logins"]}), {},
                 'role "dev": in spec.allow.logins[0], role template "{{internal.logins" has "{{" without a '
                 'matching "}}"; close the expression with "}}"',
                 id="role-template-unclosed"),
    pytest.param(role(deny={"kubernetes_groups": ["ok", "{{internal.nope}}"]}), {},
                 'role "dev": in spec.deny.kubernetes_groups[1], role template "{{internal.nope}}" refers to '
                 'unknown internal trait "nope"; use one of [aws_role_arns, azure_identities, db_names, db_roles, '
                 'db_users, gcp_service_accounts, host_user_gid, host_user_uid, kubernetes_groups, '
                 'kubernetes_users, logins, windows_logins] or read it as external.nope',
                 id="role-template-unknown-internal"),
    pytest.param(role(allow={"node_labels": {"env": ["{{foo.bar}}"]}}), {},
                 'role "dev": in spec.allow.node_labels.env[0], role template "{{foo.bar}}" uses unknown '
                 'namespace "foo"; use internal or external',
                 id="role-label-template"),
    pytest.param(role(allow={"node_labels": {"env": "^(prod$"}}), {},
                 'role "dev": in spec.allow.node_labels.env, label pattern "^(prod$" is not a valid RE2 regular '
                 'expression (missing ): ^(prod$); fix the expression or drop the leading ^ and trailing $ to '
                 'match it as text',
                 id="role-label-regex"),
    pytest.param(role(allow={"cluster_labels": ["env"]}), {},
                 'role "dev": in spec.allow.cluster_labels, a label selector must be a mapping of label name to '
                 'values, got list; write it as {env: [prod]}',
                 id="role-selector-list"),
    pytest.param(role(allow={"node_labels": {"env": 5}}), {},
                 'role "dev": in spec.allow.node_labels.env, label selector values for "env" must be a string or '
                 'a list of strings, got int; write them as [a, b]',
                 id="role-selector-number"),
    pytest.param({"kind": "role", "metadata": {"name": "dev", "labels": {"env": ["a"]}}}, {},
                 'role "dev": metadata.labels.env must be a string, not a list; quote it in YAML',
                 id="role-metadata-labels"),
    # user
    pytest.param(user(roles=["access"], password="hunter2"), {},
                 'user "alice": spec.password is not accepted in resource files; set the password with '
                 '\'gatectl users passwd alice\'',
                 id="user-password"),
    pytest.param({**user(roles=["access"]), "password": "x"}, {},
                 'user "alice": password is not accepted in resource files; set the password with '
                 '\'gatectl users passwd alice\'',
                 id="user-password-top"),
    pytest.param(user(), {},
                 'user "alice": spec.roles is missing; give the user at least one role, e.g. spec: {roles: [access]}',
                 id="user-no-roles"),
    pytest.param(user(roles=[]), {},
                 'user "alice": spec.roles is empty; give the user at least one role, e.g. spec: {roles: [access]}',
                 id="user-empty-roles"),
    pytest.param(user(roles=["bad role"]), {},
                 'user "alice": spec.roles[0] "bad role" is not valid; use 1-253 letters, digits, \'.\', \'-\' '
                 'or \'_\', starting with a letter or digit',
                 id="user-bad-role"),
    pytest.param(user(roles=["a"], traits=["logins"]), {},
                 'user "alice": spec.traits must be a mapping of trait names to lists, e.g. {logins: [ubuntu]}, '
                 'not a list',
                 id="user-traits-list"),
    pytest.param(user(roles=["a"], traits={"logins": [{"x": 1}]}), {},
                 'user "alice": spec.traits.logins[0] must be a string, not a mapping; quote it in YAML',
                 id="user-trait-value"),
    pytest.param(user(roles=["a"], traits={"bad name": ["x"]}), {},
                 'user "alice": spec.traits has an invalid trait name \'bad name\'; use a name without spaces, '
                 'quotes or braces, e.g. logins',
                 id="user-trait-name"),
    pytest.param(user(roles=["a"], traits={"logins": ["ok", "x" * 33]}), {},
                 f'user "alice": spec.traits.logins[1] "{"x" * 33}" is not a valid Unix login; use letters, digits, '
                 f'"_", "." and "-", starting with a letter or "_", at most 32 characters',
                 id="user-bad-login-trait"),
    pytest.param({"kind": "rc", "metadata": {"name": "leaf"}, "spec": {"{x}": 1}}, {},
                 'remote_cluster "leaf": unknown field "spec"; a remote_cluster has no spec and only its '
                 'metadata.labels can be changed, e.g. \'gatectl update rc/leaf --set-labels=env=demo\'',
                 id="rc-spec-braces"),
    pytest.param(user(role=["a"]), {},
                 'user "alice": unknown field "spec.role"; did you mean "roles"?',
                 id="user-role-typo"),
    # token
    pytest.param(token(), {},
                 'token "tok1": spec.roles is missing; say what the token is for, e.g. roles: [trusted_cluster] '
                 '(one or more of trusted_cluster, node, proxy)',
                 id="token-no-roles"),
    pytest.param(token(roles=["node", "admin"]), {},
                 'token "tok1": spec.roles[1] "admin" is not a token type; use trusted_cluster, node, proxy',
                 id="token-bad-role"),
    pytest.param(token(type="node"), {},
                 'token "tok1": unknown field "spec.type"; list token types under spec.roles, e.g. '
                 'roles: [trusted_cluster]',
                 id="token-type"),
    pytest.param(token(roles=["node"], token="short"), {},
                 'token "tok1": spec.token must be at least 16 characters long; use a longer secret or leave '
                 'spec.token out to get a random one',
                 id="token-short"),
    pytest.param({"kind": "token", "metadata": {"name": "t", "expires": "tomorrow"}, "spec": {"roles": ["node"]}},
                 {},
                 'token "t": metadata.expires "tomorrow" is not an RFC 3339 time; write it like 2024-05-01T12:00:00Z',
                 id="token-expires"),
    pytest.param({"kind": "token", "metadata": {"name": "t", "expires": "2024-13-01T00:00:00Z"},
                  "spec": {"roles": ["node"]}}, {},
                 'token "t": metadata.expires "2024-13-01T00:00:00Z" is not an RFC 3339 time; write it like '
                 '2024-05-01T12:00:00Z',
                 id="token-expires-month"),
    pytest.param(token(roles=["node"], labels={"a b": "x"}), {},
                 'token "tok1": spec.labels has an invalid label name "a b"; use letters, digits and . - _ / : '
                 'characters',
                 id="token-label-key"),
    # trusted_cluster
    pytest.param(tc(token="x"), {},
                 'trusted_cluster "root": spec.web_proxy_addr is missing; set it to the root cluster\'s proxy web '
                 'address, e.g. web_proxy_addr: root.example.com:3080',
                 id="tc-no-web-proxy"),
    pytest.param(tc(web_proxy_addr="root.example.com"), {},
                 'trusted_cluster "root": spec.web_proxy_addr "root.example.com" has no port; use host:port, '
                 'e.g. root.example.com:3080',
                 id="tc-no-port"),
    pytest.param(tc(web_proxy_addr="https://root.example.com:3080"), {},
                 'trusted_cluster "root": spec.web_proxy_addr "https://root.example.com:3080" must be host:port '
                 'without a scheme or path, e.g. root.example.com:3080',
                 id="tc-url"),
    pytest.param(tc(web_proxy_addr="root:3080", tunnel_addr="root:99999"), {},
                 'trusted_cluster "root": spec.tunnel_addr "root:99999" has an invalid port; use a port from 1 to '
                 '65535, e.g. root.example.com:3080',
                 id="tc-bad-port"),
    pytest.param(tc(web_proxy_addr="root:3080", heartbeat_mode="sometimes"), {},
                 'trusted_cluster "root": spec.heartbeat_mode "sometimes" is not a heartbeat mode; use default or '
                 'low_bandwidth (low_bandwidth for metered links: offline shown within 90 s instead of 15 s)',
                 id="tc-heartbeat-mode"),
    pytest.param(tc(web_proxy_addr="root:3080", enabled="yes please"), {},
                 'trusted_cluster "root": spec.enabled must be true or false, not the string "yes please"',
                 id="tc-enabled"),
    pytest.param(tc(web_proxy_addr="root:3080", role_map=[{"remote": "access"}]), {},
                 'trusted_cluster "root": spec.role_map entry 1 (remote "access") has no "local" roles; list at '
                 'least one local role, e.g. local: [visitor]',
                 id="tc-role-map-local"),
    pytest.param(tc(web_proxy_addr="root:3080", role_map={"remote": "a", "local": ["b"]}), {},
                 'trusted_cluster "root": spec.role_map must be a list of {remote, local} entries, got dict; write '
                 'it as a YAML list ("- remote: ROLE")',
                 id="tc-role-map-mapping"),
    pytest.param(tc(web_proxy_addr="root:3080", rolemap=[]), {},
                 'trusted_cluster "root": unknown field "spec.rolemap"; did you mean "role_map"?',
                 id="tc-rolemap-typo"),
    # remote_cluster
    pytest.param({"kind": "remote_cluster", "metadata": {"name": "leaf"}, "spec": {}}, {},
                 'remote_cluster "leaf": unknown field "spec"; a remote_cluster has no spec and only its '
                 'metadata.labels can be changed, e.g. \'gatectl update rc/leaf --set-labels=env=demo\'',
                 id="rc-spec"),
    pytest.param({"kind": "remote_cluster", "metadata": {"name": "leaf"}, "status": {"connection": "up"}}, {},
                 'remote_cluster "leaf": status.connection "up" is not valid; use online or offline',
                 id="rc-connection"),
    pytest.param({"kind": "rc", "metadata": {"name": "leaf", "labels": {"env": None}}}, {},
                 'remote_cluster "leaf": metadata.labels.env must be a string, not empty; quote it in YAML',
                 id="rc-label-null"),
    # read-only kinds
    pytest.param({"kind": "node", "metadata": {"name": "web1"}, "spec": {"addr": "10.0.0.1:3022"}}, {},
                 'node "web1": nodes register themselves; start gatehouse with ssh_service enabled and a node join '
                 'token on that host instead of creating the node from a file',
                 id="node-create"),
    pytest.param({"kind": "cert_authority", "metadata": {"name": "root/host"}}, {},
                 'cert_authority "root/host": certificate authorities are created by the auth service and '
                 'exchanged when clusters establish trust; create a trusted_cluster resource instead of a '
                 'cert_authority',
                 id="ca-create"),
]


@pytest.mark.parametrize("given,kwargs,message", ERRORS)
def test_invalid_resources_name_resource_field_and_fix(given, kwargs, message):
    before = copy.deepcopy(given)
    assert raised_message(r.validate, given, **kwargs) == message
    assert given == before


def test_helper_error_classes_are_kept():
    from gatehouse.labels import InvalidPattern
    from gatehouse.rolemap import InvalidRoleMap
    with pytest.raises(InvalidRoleMap):
        r.validate(tc(web_proxy_addr="root:3080", role_map=[{"remote": "a"}]))
    with pytest.raises(InvalidPattern):
        r.validate(role(allow={"node_labels": {"env": "^(x$"}}))


# --------------------------------------------------------------------------- parse_documents
TRUSTED_YAML = """\
# the leaf's trust in the root
kind: trusted_cluster
version: v2
metadata:
  name: rootcluster.example.com
spec:
  enabled: true
  token: abcd123-insecure-do-not-use-this
  tunnel_addr: rootcluster.example.com:3024
  web_proxy_addr: rootcluster.example.com:3080
  role_map:
  - remote: "access"
    local: ["visitor"]
---
---
# an empty document above and a comment-only one here are skipped
---
kind: role
version: v5
metadata:
  name: visitor
spec:
  allow:
    logins:
    - visitor
    node_labels:
      '*': '*'
"""


def test_multi_document_yaml():
    docs = r.parse_documents(TRUSTED_YAML, "trusted.yaml")
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("trusted_cluster", "rootcluster.example.com"), ("role", "visitor")]
    assert docs[0]["spec"]["token"] == "abcd123-insecure-do-not-use-this"
    assert docs[0]["spec"]["role_map"] == [{"remote": "access", "local": ["visitor"]}]
    assert docs[1]["spec"]["allow"]["node_labels"] == {"*": ["*"]}


def test_json_object_and_list():
    one = {"kind": "user", "metadata": {"name": "bob"}, "spec": {"roles": ["access"]}}
    assert r.parse_documents(json.dumps(one), "bob.json") == [r.validate(one)]
    both = [one, {"kind": "role", "metadata": {"name": "access"}}]
    assert [d["kind"] for d in r.parse_documents(json.dumps(both))] == ["user", "role"]
    assert r.parse_documents(json.dumps(one).encode()) == [r.validate(one)]


PARSE_ERRORS = [
    pytest.param("kind: role\nmetadata:\n  name: dev\nspec:\n  allow:\n    logins: [a, b\n",
                 "invalid YAML in dev.yaml at line 7, column 1: expected ',' or ']', but got '<stream end>' "
                 "(while parsing a flow sequence that starts at line 6, column 13)",
                 id="unclosed-flow"),
    pytest.param("kind: role\nmetadata:\n  name: dev\n    extra: x\n",
                 "invalid YAML in dev.yaml at line 4, column 10: mapping values are not allowed here",
                 id="bad-indent"),
    pytest.param("kind: role\nmetadata:\n\tname: dev\n",
                 "invalid YAML in dev.yaml at line 3, column 1: found character '\\t' that cannot start any token",
                 id="tab"),
    pytest.param("kind: role\nmetadata:\n  name: dev\nspec:\n  allow:\n    logins: [a]\n    logins: [b]\n",
                 'invalid YAML in dev.yaml at line 7, column 5: duplicate key "logins"; give each key once',
                 id="duplicate-key"),
    pytest.param('{"kind": "role", "metadata": {"name": "dev"}',
                 "invalid JSON in dev.yaml at line 1, column 45: Expecting ',' delimiter",
                 id="bad-json"),
    pytest.param("", "dev.yaml contains no resources; write at least one resource with kind, metadata and spec",
                 id="empty"),
    pytest.param("---\n# nothing\n---\n", "dev.yaml contains no resources; write at least one resource with kind, "
                 "metadata and spec", id="only-empty-documents"),
    pytest.param("kind: role\nmetadata: {name: a}\n---\nmetadata: {name: b}\n",
                 'resource 2 in dev.yaml: missing "kind"; add kind: role, user, token or trusted_cluster',
                 id="second-missing-kind"),
    pytest.param("kind: role\nmetadata: {name: a}\n---\nkind: role\nmetadata: {name: a}\n",
                 'resource 2 in dev.yaml: role "a" is already defined by resource 1; keep only one of them',
                 id="duplicate-resource"),
    pytest.param("- just\n- strings\n",
                 'resource 1 in dev.yaml: a resource must be a mapping with kind, metadata and spec, not the '
                 'string "just"', id="list-of-strings"),
    pytest.param("kind: role\nmetadata: {name: dev}\nspec: {allow: {login: [a]}}\n",
                 'role "dev" (resource 1 in dev.yaml): unknown field "spec.allow.login"; did you mean "logins"?',
                 id="unknown-field-with-location"),
    pytest.param("kind: node\nmetadata: {name: web1}\nspec: {addr: '10.0.0.1:3022'}\n",
                 'node "web1" (resource 1 in dev.yaml): nodes register themselves; start gatehouse with '
                 'ssh_service enabled and a node join token on that host instead of creating the node from a file',
                 id="node-from-file"),
]


@pytest.mark.parametrize("text,message", PARSE_ERRORS)
def test_parse_errors(text, message):
    assert raised_message(r.parse_documents, text, "dev.yaml") == message


def test_parse_is_all_or_nothing():
    text = TRUSTED_YAML + "---\nkind: user\nmetadata: {name: x}\nspec: {roles: []}\n"
    assert raised_message(r.parse_documents, text, "t.yaml") == (
        'user "x" (resource 3 in t.yaml): spec.roles is empty; give the user at least one role, e.g. '
        'spec: {roles: [access]}')


def test_yaml_keeps_timestamps_as_text_and_default_source():
    docs = r.parse_documents("kind: token\nmetadata: {name: t, expires: 2030-05-01T12:00:00Z}\nspec: {roles: [node]}")
    assert docs[0]["metadata"]["expires"] == "2030-05-01T12:00:00Z"
    assert raised_message(r.parse_documents, "a: [") .startswith("invalid YAML in <stdin> at line 1")


# --------------------------------------------------------------------------- kinds and references
@pytest.mark.parametrize("alias,kind", [
    ("rc", "remote_cluster"), ("remote_clusters", "remote_cluster"), ("tc", "trusted_cluster"),
    ("trusted_clusters", "trusted_cluster"), ("users", "user"), ("roles", "role"), ("tokens", "token"),
    ("nodes", "node"), ("ca", "cert_authority"), ("cas", "cert_authority"),
    ("cert_authorities", "cert_authority"), ("Role", "role"), ("trusted-cluster", "trusted_cluster"),
    ("user", "user"),
])
def test_kind_aliases(alias, kind):
    assert r.canonical_kind(alias) == kind


def test_every_alias_maps_to_a_kind():
    assert set(r.KIND_ALIASES.values()) <= set(r.KINDS)


def test_alias_in_file_kind_is_canonicalised():
    assert r.validate({"kind": "rc", "metadata": {"name": "leaf"}})["kind"] == "remote_cluster"


@pytest.mark.parametrize("ref,expected", [
    ("user/alice", ("user", "alice")),
    ("users", ("user", None)),
    ("rc/leaf.example.com", ("remote_cluster", "leaf.example.com")),
    ("tc", ("trusted_cluster", None)),
    ("user/alice@example.com", ("user", "alice@example.com")),
    ("ca/root/host", ("cert_authority", "root/host")),
    (" role/access ", ("role", "access")),
])
def test_parse_ref(ref, expected):
    assert r.parse_ref(ref) == expected


@pytest.mark.parametrize("ref,message", [
    ("", "the resource reference is empty; use KIND or KIND/NAME, e.g. user/alice"),
    ("user/", 'resource reference "user/" has no name after "/"; use KIND/NAME, e.g. user/NAME or just user '
              'for all of them'),
    ("/alice", 'resource reference "/alice" has no kind before "/"; use KIND/NAME, e.g. user/alice'),
    ("rolez/x", 'unknown kind "rolez"; expected one of: role, user, token, trusted_cluster, remote_cluster, '
                'oidc, node, cert_authority, proxy'),
    ("role/a@b", 'role name "a@b" is not valid; use 1-253 letters, digits, \'.\', \'-\' or \'_\', starting with '
                 'a letter or digit'),
    ("ca/root/ssh", 'resource reference "ca/root/ssh" names CA type "ssh"; use ca/CLUSTER/TYPE with TYPE one of '
                    'user, host, tls'),
])
def test_parse_ref_errors(ref, message):
    assert raised_message(r.parse_ref, ref) == message


def test_validate_name():
    assert r.validate_name("root.example.com", "auth_service.cluster_name") == "root.example.com"
    assert r.validate_name("alice@example.com", kind="user") == "alice@example.com"
    assert raised_message(r.validate_name, "", "token name") == (
        "token name is empty; use 1-253 letters, digits, '.', '-' or '_', starting with a letter or digit")
    assert raised_message(r.validate_name, "a/b", "auth_service.cluster_name") == (
        'auth_service.cluster_name "a/b" is not valid; use 1-253 letters, digits, \'.\', \'-\' or \'_\', '
        'starting with a letter or digit')
    assert raised_message(r.validate_name, 5, "node name").startswith("node name must be a string, not the number 5")


# --------------------------------------------------------------------------- labels argument
def test_parse_labels_arg():
    assert r.parse_labels_arg("env=demo,team=ops") == {"env": "demo", "team": "ops"}
    assert r.parse_labels_arg(" env = demo , url=a=b ") == {"env": "demo", "url": "a=b"}
    assert r.parse_labels_arg("env=") == {"env": ""}
    assert r.parse_labels_arg("") == {}
    assert r.parse_labels_arg({"env": "demo", "n": 3}) == {"env": "demo", "n": "3"}


@pytest.mark.parametrize("text,message", [
    ("env", 'label "env" has no "="; use key=value pairs separated by commas, e.g. env=demo,team=ops'),
    ("=demo", 'label "=demo" has an empty key; use key=value pairs separated by commas, e.g. env=demo,team=ops'),
    ("env=a,,team=b", 'labels "env=a,,team=b" contain an empty entry; use key=value pairs separated by commas, '
                      'e.g. env=demo,team=ops'),
    ("env=a,env=b", 'label "env" is given twice in "env=a,env=b"; give each key once'),
    ("bad key=x", 'label key "bad key" is not valid; use letters, digits and . - _ / : characters'),
    (["env=a"], "labels must be text like env=demo,team=ops, not a list"),
    ({"env": ["a"]}, "labels.env must be a string, not a list; quote it in YAML"),
])
def test_parse_labels_arg_errors(text, message):
    assert raised_message(r.parse_labels_arg, text) == message


# --------------------------------------------------------------------------- render
def _docs():
    return r.parse_documents(TRUSTED_YAML + "---\n" + yaml.safe_dump(
        {"kind": "token", "metadata": {"name": "join1", "expires": "2030-01-01T00:00:00Z"},
         "spec": {"roles": ["trusted_cluster"], "token": "0123456789abcdef0123"}}), "x.yaml")


def test_render_yaml_hides_secrets_and_orders_keys():
    docs = _docs()
    text = r.render(docs, "yaml")
    assert "abcd123-insecure-do-not-use-this" not in text
    assert "0123456789abcdef0123" not in text
    assert text.count("\n---\n") == 2 and not text.startswith("---")
    loaded = list(yaml.safe_load_all(text))
    assert [list(d) for d in loaded] == [["kind", "version", "metadata", "spec"]] * 3
    assert "token" not in loaded[0]["spec"] and "token" not in loaded[2]["spec"]
    assert loaded[1] == docs[1]
    assert docs[0]["spec"]["token"] == "abcd123-insecure-do-not-use-this"  # input untouched


def test_render_yaml_with_secrets_round_trips():
    docs = _docs()
    text = r.render(docs, "yaml", with_secrets=True)
    assert "abcd123-insecure-do-not-use-this" in text
    assert r.parse_documents(text, "again.yaml") == docs


def test_render_json():
    docs = _docs()
    out = json.loads(r.render(docs, "json"))
    assert isinstance(out, list) and len(out) == 3
    assert "token" not in out[0]["spec"]
    assert json.loads(r.render(docs, "json", with_secrets=True)) == docs
    assert json.loads(r.render([], "json")) == []


def test_render_orders_unnormalised_keys():
    res = {"status": {"connection": "online"}, "metadata": {"labels": {}, "name": "leaf"},
           "version": "v3", "kind": "remote_cluster"}
    loaded = yaml.safe_load(r.render([res]))
    assert list(loaded) == ["kind", "version", "metadata", "status"]
    assert list(loaded["metadata"]) == ["name", "labels"]


def test_render_text_tables():
    docs = _docs() + [r.validate({"kind": "remote_cluster", "metadata": {"name": "leaf", "labels": {"env": "demo"}},
                                  "status": {"connection": "online", "last_heartbeat": "2024-05-01T12:00:00Z"}})]
    text = r.render(docs, "text")
    assert "abcd123-insecure" not in text and "0123456789abcdef0123" not in text
    lines = text.splitlines()
    assert lines[0].split() == ["NAME", "ENABLED", "WEB", "PROXY", "TUNNEL", "ROLE", "MAP"]
    assert "access -> visitor" in text
    assert any(line.split()[:2] == ["visitor", "visitor"] and line.split()[-1] == "12h" for line in lines)
    assert any(line.split() == ["join1", "trusted_cluster", "2030-01-01T00:00:00Z"] for line in lines)
    assert any(line.split() == ["leaf", "online", "2024-05-01T12:00:00Z", "env=demo"] for line in lines)


def test_render_unknown_format():
    assert raised_message(r.render, [], "xml") == 'unknown output format "xml"; use yaml, json or text'


def test_render_single_multiline_string_as_block():
    res = {"kind": "cert_authority", "metadata": {"name": "root/tls"},
           "spec": {"type": "tls", "active_keys": ["-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n"],
                    "private": "SECRET KEY"}}
    text = r.render(res)
    assert "SECRET KEY" not in text
    assert "|" in text and yaml.safe_load(text)["spec"]["active_keys"][0].startswith("-----BEGIN")


# --------------------------------------------------------------------------- idempotence
def test_normalise_is_idempotent_for_every_valid_case():
    for param in VALID:
        once = r.validate(param.values[0])
        assert r.validate(once) == once
        assert r.validate(yaml.safe_load(r.render([once], with_secrets=True))) == once
