"""The access decision: deny wins, one role must allow login and node, cluster visibility, messages."""

import pytest

from gatehouse.access import (DEFAULT_MAX_SESSION_TTL, AccessChecker, Decision, checker_for_remote_user,
                              remote_user_traits)
from gatehouse.errors import BadParameter


def role(name, allow=None, deny=None, options=None):
    spec = {"allow": allow or {}, "deny": deny or {}}
    if options is not None:
        spec["options"] = options
    return {"kind": "role", "version": "v1", "metadata": {"name": name}, "spec": spec}


VISITOR = role("visitor", {"logins": ["visitor"], "node_labels": {"*": "*"}})
DEMO = role("demo", {"logins": ["demo"], "node_labels": {"env": ["demo"]}})
NO_PROD = role("no-prod", deny={"node_labels": {"env": "prod"}})
NO_ROOT = role("no-root", deny={"logins": ["root"]})
DENY_ALL = role("lockdown", deny={"node_labels": {"*": "*"}})
ADMIN = role("admin", {"logins": ["root", "{{internal.logins}}"], "node_labels": {"*": "*"}})


def check(roles, login, labels=None, traits=None, node="node1"):
    return AccessChecker(roles, traits or {}).check_ssh(login, node, labels or {})


# ---------------------------------------------------------------------- check_ssh
@pytest.mark.parametrize("roles, login, labels, allowed, reason, rule, decided_by", [
    ([VISITOR], "visitor", {}, True,
     'access granted: role "visitor" allows login "visitor" on node "node1" '
     "(allow.logins, allow.node_labels '*': '*')", "allow.logins, allow.node_labels", ["visitor"]),
    ([DEMO], "demo", {"env": "demo", "team": "x"}, True,
     'access granted: role "demo" allows login "demo" on node "node1" (allow.logins, allow.node_labels env=demo)',
     "allow.logins, allow.node_labels", ["demo"]),
    # deny wins, evaluated before any allow
    ([VISITOR, NO_PROD], "visitor", {"env": "prod"}, False,
     'access denied: role "no-prod" denies nodes with env=prod (deny.node_labels)', "deny.node_labels", ["no-prod"]),
    ([NO_PROD, VISITOR], "visitor", {"env": "prod"}, False,
     'access denied: role "no-prod" denies nodes with env=prod (deny.node_labels)', "deny.node_labels", ["no-prod"]),
    ([VISITOR, NO_PROD], "visitor", {"env": "dev"}, True,
     'access granted: role "visitor" allows login "visitor" on node "node1" '
     "(allow.logins, allow.node_labels '*': '*')", "allow.logins, allow.node_labels", ["visitor"]),
    ([ADMIN, NO_ROOT], "root", {}, False,
     'access denied: role "no-root" denies login "root" (deny.logins)', "deny.logins", ["no-root"]),
    ([VISITOR, DENY_ALL], "visitor", {}, False,
     "access denied: role \"lockdown\" denies all nodes (deny.node_labels '*': '*')", "deny.node_labels",
     ["lockdown"]),
    # login not allowed by any role
    ([VISITOR], "root", {}, False,
     'access denied: login "root" is not allowed by roles [visitor]; allowed logins are [visitor]', "",
     ["visitor"]),
    ([NO_PROD], "root", {}, False,
     'access denied: login "root" is not allowed by roles [no-prod]; allowed logins are none (check the '
     "user's logins trait)", "", ["no-prod"]),
    ([], "root", {}, False,
     'access denied: login "root" is not allowed because the user has no roles on this cluster; '
     "assign a role that allows it", "", []),
    # login allowed but the node is not selected
    ([DEMO], "demo", {"env": "prod"}, False,
     'access denied: no role allows access to node "node1" with labels env=prod; roles [demo] require env in [demo]',
     "", ["demo"]),
    ([DEMO], "demo", {}, False,
     'access denied: no role allows access to node "node1" with no labels; roles [demo] require env in [demo]',
     "", ["demo"]),
    # empty allow.node_labels selects no node
    ([role("bare", {"logins": ["bare"]})], "bare", {}, False,
     'access denied: no role allows access to node "node1" with no labels; roles [bare] have no allow.node_labels',
     "", ["bare"]),
    # grouping of unmet requirements across roles
    ([DEMO, role("demo2", {"logins": ["demo"], "node_labels": {"env": "demo"}}),
      role("team", {"logins": ["demo"], "node_labels": {"team": ["db", "web"]}})], "demo", {"env": "prod"}, False,
     'access denied: no role allows access to node "node1" with labels env=prod; roles [demo, demo2] require '
     "env in [demo], roles [team] require team in [db, web]", "", ["demo", "demo2", "team"]),
])
def test_check_ssh(roles, login, labels, allowed, reason, rule, decided_by):
    decision = check(roles, login, labels)
    assert (decision.allowed, decision.reason, decision.rule, decision.roles) == (allowed, reason, rule, decided_by)


def test_one_role_must_allow_both_login_and_node():
    # "a" allows the login on demo nodes only; "b" selects every node but not that login.
    roles = [role("a", {"logins": ["alice"], "node_labels": {"env": "demo"}}),
             role("b", {"logins": ["bob"], "node_labels": {"*": "*"}})]
    decision = check(roles, "alice", {"env": "prod"})
    assert not decision.allowed
    assert decision.reason == ('access denied: no role allows access to node "node1" with labels env=prod; '
                               "roles [a] require env in [demo]")
    assert check(roles, "alice", {"env": "demo"}).allowed


def test_trait_templated_login():
    roles = [role("access", {"logins": ["{{internal.logins}}"], "node_labels": {"*": "*"}})]
    traits = {"logins": ["alice", "deploy"]}
    assert check(roles, "deploy", traits=traits).allowed
    assert AccessChecker(roles, traits).logins() == ["alice", "deploy"]


def test_missing_trait_drops_the_login():
    roles = [role("access", {"logins": ["{{external.unix_user}}", "guest"], "node_labels": {"*": "*"}})]
    checker = AccessChecker(roles, {})
    assert checker.logins() == ["guest"]
    assert checker.check_ssh("guest", "n", {}).allowed
    assert checker.check_ssh("{{external.unix_user}}", "n", {}).allowed is False


def test_invalid_login_from_trait_is_dropped():
    roles = [role("access", {"logins": ["{{internal.logins}}"], "node_labels": {"*": "*"}})]
    checker = AccessChecker(roles, {"logins": ["ok", "root; rm -rf /"]})
    assert checker.logins() == ["ok"]
    assert not checker.check_ssh("root; rm -rf /", "n", {}).allowed


def test_label_key_templated_to_empty_matches_nothing():
    allow = role("t", {"logins": ["u"], "node_labels": {"{{external.missing}}": "*"}})
    decision = check([allow], "u", {"env": "prod"})
    assert not decision.allowed
    assert decision.reason == ('access denied: no role allows access to node "node1" with labels env=prod; '
                               "roles [t] require <missing trait> in [*]")
    # A deny built on a missing trait used to deny nothing (issue 13): it now fails closed.
    deny = role("d", deny={"node_labels": {"{{external.missing}}": "*"}})
    decision = check([VISITOR, deny], "visitor", {"env": "prod"})
    assert not decision.allowed and decision.rule == "deny.node_labels"
    assert decision.reason.startswith('access denied: role "d" denies all nodes because its deny.node_labels cannot '
                                      "be expanded for this user")


def test_label_value_templated_from_traits():
    roles = [role("team", {"logins": ["u"], "node_labels": {"team": "{{external.team}}"}})]
    traits = {"team": ["db", "web"]}
    assert check(roles, "u", {"team": "web"}, traits).allowed
    assert not check(roles, "u", {"team": "ops"}, traits).allowed
    assert not check(roles, "u", {"team": "web"}, {}).allowed  # missing trait: value "" matches nothing


def test_regex_and_glob_node_labels():
    roles = [role("r", {"logins": ["u"], "node_labels": {"env": ["^prod-[0-9]+$", "stage-*"]}})]
    assert check(roles, "u", {"env": "prod-12"}).allowed
    assert check(roles, "u", {"env": "stage-eu"}).allowed
    assert not check(roles, "u", {"env": "prod-x"}).allowed


def test_logins_exclude_denied_logins():
    checker = AccessChecker([ADMIN, NO_ROOT, VISITOR], {"logins": ["alice", "root"]})
    assert checker.logins() == ["alice", "visitor"]


def test_role_with_missing_fields():
    checker = AccessChecker([{"kind": "role", "metadata": {"name": "empty"}}, {"metadata": {"name": "x"},
                                                                                "spec": None}], {})
    assert checker.logins() == []
    assert checker.cert_options()["ttl"] == DEFAULT_MAX_SESSION_TTL
    assert not checker.check_ssh("u", "n", {}).allowed


def test_invalid_selector_in_role_names_the_role():
    with pytest.raises(BadParameter) as info:
        AccessChecker([role("broken", {"node_labels": {"env": "^(x$"}})], {})
    assert str(info.value) == ('role "broken" has an invalid allow.node_labels: label pattern "^(x$" is not a '
                               "valid RE2 regular expression (missing ): ^(x$); fix the expression or drop the "
                               "leading ^ and trailing $ to match it as text")


def test_decision_to_dict():
    decision = check([VISITOR], "visitor")
    assert decision.to_dict() == {"allowed": True, "reason": decision.reason, "rule": decision.rule,
                                  "roles": ["visitor"], "logins": ["visitor"]}
    assert isinstance(decision, Decision)


# ---------------------------------------------------------------------- can_see_node
@pytest.mark.parametrize("roles, labels, visible", [
    ([VISITOR], {}, True),
    ([DEMO], {"env": "demo"}, True),
    ([DEMO], {"env": "prod"}, False),
    ([VISITOR, NO_PROD], {"env": "prod"}, False),
    ([NO_ROOT], {}, False),
])
def test_can_see_node(roles, labels, visible):
    assert AccessChecker(roles, {}).can_see_node("n", labels) is visible


# ---------------------------------------------------------------------- check_cluster
DEMO_CLUSTERS = role("demo-cluster-access", {"cluster_labels": {"env": "demo"}})
ALL_CLUSTERS = role("all-clusters", {"cluster_labels": {"*": "*"}})
NO_PROD_CLUSTERS = role("no-prod-clusters", deny={"cluster_labels": {"env": "prod"}})
NO_CLUSTERS = role("no-clusters", deny={"cluster_labels": {"*": "*"}})


@pytest.mark.parametrize("roles, labels, allowed, reason", [
    # no role uses cluster labels: unlabelled visible, labelled hidden
    ([VISITOR], {}, True, 'access granted: cluster "leaf" has no labels and no role denies it'),
    ([VISITOR], {"env": "demo"}, False,
     'access denied: cluster "leaf" has labels env=demo and none of the roles [visitor] sets allow.cluster_labels; '
     "add a role whose cluster_labels match them"),
    # a matching allow.cluster_labels
    ([VISITOR, DEMO_CLUSTERS], {"env": "demo"}, True,
     'access granted: role "demo-cluster-access" allows cluster "leaf" with env=demo (allow.cluster_labels)'),
    ([DEMO_CLUSTERS], {"env": "prod"}, False,
     'access denied: no role allows cluster "leaf" with labels env=prod; '
     "roles [demo-cluster-access] require env in [demo]"),
    ([DEMO_CLUSTERS], {}, True, 'access granted: cluster "leaf" has no labels and no role denies it'),
    ([ALL_CLUSTERS], {"env": "prod"}, True,
     "access granted: role \"all-clusters\" allows cluster \"leaf\" with '*': '*' (allow.cluster_labels)"),
    # deny wins
    ([ALL_CLUSTERS, NO_PROD_CLUSTERS], {"env": "prod"}, False,
     'access denied: role "no-prod-clusters" denies clusters with env=prod (deny.cluster_labels)'),
    ([ALL_CLUSTERS, NO_PROD_CLUSTERS], {"env": "demo"}, True,
     "access granted: role \"all-clusters\" allows cluster \"leaf\" with '*': '*' (allow.cluster_labels)"),
    ([VISITOR, NO_CLUSTERS], {}, False,
     "access denied: role \"no-clusters\" denies all clusters (deny.cluster_labels '*': '*')"),
])
def test_check_cluster(roles, labels, allowed, reason):
    decision = AccessChecker(roles, {}).check_cluster("leaf", labels)
    assert (decision.allowed, decision.reason) == (allowed, reason)


def test_check_cluster_rules():
    checker = AccessChecker([ALL_CLUSTERS, NO_PROD_CLUSTERS], {})
    assert checker.check_cluster("leaf", {"env": "prod"}).rule == "deny.cluster_labels"
    assert checker.check_cluster("leaf", {"env": "qa"}).rule == "allow.cluster_labels"
    assert checker.check_cluster("leaf", {}).rule == ""


# ---------------------------------------------------------------------- options and traits
def test_cert_options_combine_roles():
    roles = [role("a", options={"max_session_ttl": 3600, "permit_pty": False, "permit_port_forwarding": False,
                                "permit_agent_forwarding": False}),
             role("b", options={"max_session_ttl": "2h", "permit_x11_forwarding": True}),
             role("c", {"logins": ["x"]})]
    assert AccessChecker(roles, {}).cert_options() == {
        "ttl": 3600, "permit_pty": True, "permit_port_forwarding": True, "permit_agent_forwarding": True,
        "permit_x11_forwarding": True}


def test_cert_options_defaults_and_restrictions():
    assert AccessChecker([role("plain")], {}).cert_options() == {
        "ttl": 43200, "permit_pty": True, "permit_port_forwarding": True, "permit_agent_forwarding": True,
        "permit_x11_forwarding": False}
    strict = role("strict", options={"permit_pty": False, "permit_port_forwarding": False,
                                     "forward_agent": False})
    assert AccessChecker([strict], {}).cert_options() == {
        "ttl": 43200, "permit_pty": False, "permit_port_forwarding": False, "permit_agent_forwarding": False,
        "permit_x11_forwarding": False}


def test_traits_view_is_a_sorted_copy():
    traits = {"team": ["db"], "logins": ["alice"]}
    checker = AccessChecker([VISITOR], traits)
    view = checker.traits_view()
    assert list(view) == ["logins", "team"] and view == traits
    view["team"].append("x")
    assert checker.traits_view()["team"] == ["db"]


# ---------------------------------------------------------------------- remote users
def test_remote_user_traits_take_logins_from_principals():
    traits = remote_user_traits(["ubuntu", "root", "ubuntu"], {"logins": ["ignored"], "team": ["db"],
                                                                "env": "prod", "bad": 3})
    assert traits == {"logins": ["ubuntu", "root"], "team": ["db"], "env": ["prod"]}
    assert remote_user_traits([], None) == {"logins": []}


LEAF_ROLES = {
    "visitor": role("visitor", {"logins": ["{{internal.logins}}"], "node_labels": {"*": "*"}}),
    "local-dev": role("local-dev", {"logins": ["dev"], "node_labels": {"env": "dev"}}),
}
ROLE_MAP = [{"remote": "access", "local": ["visitor", "ghost"]},
            {"remote": "^remote-(.*)$", "local": ["local-$1"]}]


def test_checker_for_remote_user_maps_roles():
    traits = remote_user_traits(["ubuntu"], {})
    checker, mapped, denial = checker_for_remote_user(ROLE_MAP, ["access", "remote-dev"], LEAF_ROLES, traits,
                                                      cluster_name="root")
    assert denial is None and mapped == ["visitor", "local-dev"]
    assert checker.missing_roles == ["ghost"]
    assert checker.check_ssh("ubuntu", "n", {}).allowed
    assert checker.check_ssh("dev", "n", {"env": "dev"}).allowed
    denied = checker.check_ssh("root", "n", {})
    assert denied.reason == ('access denied: login "root" is not allowed by roles [visitor, local-dev]; allowed '
                             "logins are [ubuntu, dev]; mapped roles [ghost] do not exist on this cluster and "
                             "were ignored")


def test_checker_for_remote_user_nothing_mapped():
    checker, mapped, denial = checker_for_remote_user(ROLE_MAP, ["auditor"], LEAF_ROLES, {}, cluster_name="root")
    assert checker is None and mapped == []
    assert (denial.allowed, denial.rule) == (False, "role_map")
    assert denial.reason == ('access denied: no role in the role map of trusted cluster "root" matches the remote '
                             "roles [auditor]; add a role_map entry for one of them")


def test_checker_for_remote_user_only_missing_roles():
    _checker, _mapped, denial = checker_for_remote_user([{"remote": "*", "local": ["ghost"]}], ["access"],
                                                        LEAF_ROLES, {}, cluster_name="root")
    assert denial.reason == ('access denied: the role map of trusted cluster "root" maps remote roles [access] '
                             "to [ghost], none of which exists on this cluster; create those roles or fix the "
                             "role_map")


def test_checker_for_remote_user_invalid_map_denies_instead_of_raising():
    checker, _mapped, denial = checker_for_remote_user([{"remote": "^(x$", "local": ["visitor"]}], ["x"],
                                                       LEAF_ROLES, {})
    assert checker is None
    assert denial.reason == ('access denied: the role map of the trusted cluster is invalid: role_map entry 1 '
                             'remote "^(x$" is not a valid RE2 regular expression (missing ): ^(x$); fix the '
                             "expression or drop the leading ^ and trailing $ to match it as text")


def test_checker_for_remote_user_without_roles_is_denied_even_by_wildcard():
    checker, mapped, denial = checker_for_remote_user([{"remote": "*", "local": ["visitor"]}], [], LEAF_ROLES,
                                                      remote_user_traits(["guest"], {}))
    assert checker is None and mapped == []
    assert denial.reason.startswith("access denied: the user holds no roles at the trusted cluster")
