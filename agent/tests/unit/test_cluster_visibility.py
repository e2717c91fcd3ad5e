"""Which leaf clusters a root user sees and routes to: root roles' cluster_labels against leaf labels.

`AccessChecker.check_cluster` decides it for `gate clusters`, `gatectl get rc` as a user,
the proxy's routing (a hidden cluster is "not found") and `gatectl access check` on the
root. The table covers every pattern kind (exact, `*`, glob, `^regex$`), every key
must match, any listed value, deny wins, and the rule that with no role using cluster
labels unlabelled clusters stay visible. The last tests run the same table through
the auth service's cluster listing, on a real SQLite backend, with leaves registered
by the real trust handshake code.
"""

from __future__ import annotations

import pytest

from gatehouse.access import AccessChecker


def role(name: str, allow: dict | None = None, deny: dict | None = None) -> dict:
    spec = {"allow": {"logins": ["visitor"], "node_labels": {"*": "*"}}, "deny": {}}
    if allow is not None:
        spec["allow"]["cluster_labels"] = allow
    if deny is not None:
        spec["deny"]["cluster_labels"] = deny
    return {"kind": "role", "version": "v5", "metadata": {"name": name}, "spec": spec}


PLAIN = role("plain")                                   # uses no cluster labels at all
DEMO = role("demo", {"env": "demo"})
ANY_ENV = role("any-env", {"env": "*"})
ALL = role("all", {"*": "*"})
DEMO_ANYKEY = role("demo-any-key", {"*": "demo"})
PROD_GLOB = role("prod-glob", {"env": "prod-*"})
EU_ONE_CHAR = role("eu-one", {"region": "eu-?"})
STAGE_RE = role("stage-re", {"env": "^(demo|staging)$"})
TEAM_KEY_RE = role("team-key-re", {"^team-.*$": "ops"})
CARET_TEXT = role("caret-text", {"env": "^demo"})       # no trailing $: plain text, not a regex
DEMO_AND_OPS = role("demo-and-ops", {"env": "demo", "team": "ops"})
DEMO_OR_QA = role("demo-or-qa", {"env": ["demo", "qa"]})
NO_PROD = role("no-prod", deny={"env": "prod"})
NO_PROD_GLOB = role("no-prod-glob", deny={"env": "prod*"})
NO_SECRET_RE = role("no-secret-re", deny={"tier": "^(secret|top-secret)$"})
NO_CLUSTERS = role("no-clusters", deny={"*": "*"})
ALL_BUT_PROD = role("all-but-prod", {"*": "*"}, {"env": "prod"})  # allow and deny in one role
FROM_TRAIT = role("from-trait", {"env": "{{external.envs}}"})

TABLE = [
    # -- no role uses cluster labels: unlabelled leaves visible, labelled ones hidden
    ("no-cluster-labels/unlabelled", [PLAIN], {}, True),
    ("no-cluster-labels/labelled", [PLAIN], {"env": "demo"}, False),
    ("no-roles/unlabelled", [], {}, True),
    ("no-roles/labelled", [], {"env": "demo"}, False),
    # -- exact
    ("exact/match", [DEMO], {"env": "demo"}, True),
    ("exact/other-value", [DEMO], {"env": "prod"}, False),
    ("exact/key-missing", [DEMO], {"team": "demo"}, False),
    ("exact/case-sensitive", [DEMO], {"env": "Demo"}, False),
    ("exact/extra-labels-ok", [DEMO], {"env": "demo", "team": "x"}, True),
    ("exact/unlabelled-still-visible", [DEMO], {}, True),
    ("exact/empty-value-is-unset", [DEMO], {"env": ""}, False),
    # -- *
    ("star-value/any", [ANY_ENV], {"env": "anything"}, True),
    ("star-value/key-missing", [ANY_ENV], {"team": "x"}, False),
    ("star-value/empty-value", [ANY_ENV], {"env": ""}, False),
    ("star-star/labelled", [ALL], {"env": "prod", "team": "x"}, True),
    ("star-star/unlabelled", [ALL], {}, True),
    ("star-key/some-value-matches", [DEMO_ANYKEY], {"team": "x", "stage": "demo"}, True),
    ("star-key/no-value-matches", [DEMO_ANYKEY], {"team": "x", "env": "prod"}, False),
    # -- glob
    ("glob/star", [PROD_GLOB], {"env": "prod-eu"}, True),
    ("glob/star-needs-the-dash", [PROD_GLOB], {"env": "prod"}, False),
    ("glob/full-match", [PROD_GLOB], {"env": "xprod-eu"}, False),
    ("glob/question-one-char", [EU_ONE_CHAR], {"region": "eu-1"}, True),
    ("glob/question-not-two", [EU_ONE_CHAR], {"region": "eu-12"}, False),
    # -- ^regex$ (RE2, full match)
    ("regex/alternative", [STAGE_RE], {"env": "staging"}, True),
    ("regex/other-alternative", [STAGE_RE], {"env": "demo"}, True),
    ("regex/full-match-only", [STAGE_RE], {"env": "demo2"}, False),
    ("regex/key-pattern", [TEAM_KEY_RE], {"team-a": "ops"}, True),
    ("regex/key-pattern-value-differs", [TEAM_KEY_RE], {"team-a": "dev"}, False),
    ("regex/key-pattern-no-key", [TEAM_KEY_RE], {"team": "ops"}, False),
    ("caret-without-dollar/is-text", [CARET_TEXT], {"env": "^demo"}, True),
    ("caret-without-dollar/not-a-regex", [CARET_TEXT], {"env": "demo"}, False),
    # -- every key must match
    ("every-key/both", [DEMO_AND_OPS], {"env": "demo", "team": "ops"}, True),
    ("every-key/one-missing", [DEMO_AND_OPS], {"env": "demo"}, False),
    ("every-key/one-differs", [DEMO_AND_OPS], {"env": "demo", "team": "dev"}, False),
    # -- any listed value
    ("any-value/first", [DEMO_OR_QA], {"env": "demo"}, True),
    ("any-value/second", [DEMO_OR_QA], {"env": "qa"}, True),
    ("any-value/none", [DEMO_OR_QA], {"env": "prod"}, False),
    # -- several roles: one allowing role is enough
    ("roles/second-allows", [DEMO, PROD_GLOB], {"env": "prod-us"}, True),
    ("roles/plain-does-not-help", [PLAIN, DEMO], {"env": "prod"}, False),
    # -- deny wins
    ("deny/wins-over-star", [ALL, NO_PROD], {"env": "prod"}, False),
    ("deny/wins-in-any-order", [NO_PROD, ALL], {"env": "prod"}, False),
    ("deny/other-values-pass", [ALL, NO_PROD], {"env": "demo"}, True),
    ("deny/wins-over-exact-allow", [role("prod", {"env": "prod"}), NO_PROD], {"env": "prod"}, False),
    ("deny/same-role", [ALL_BUT_PROD], {"env": "prod"}, False),
    ("deny/same-role-other", [ALL_BUT_PROD], {"env": "demo"}, True),
    ("deny/glob", [ALL, NO_PROD_GLOB], {"env": "production"}, False),
    ("deny/regex", [ALL, NO_SECRET_RE], {"tier": "top-secret"}, False),
    ("deny/regex-full-match", [ALL, NO_SECRET_RE], {"tier": "secretive"}, True),
    ("deny/star-star-hides-unlabelled", [PLAIN, NO_CLUSTERS], {}, False),
    ("deny/star-star-hides-labelled", [ALL, NO_CLUSTERS], {"env": "demo"}, False),
    ("deny/unlabelled-unaffected", [PLAIN, NO_PROD], {}, True),
]


@pytest.mark.parametrize("roles, labels, visible", [c[1:] for c in TABLE], ids=[c[0] for c in TABLE])
def test_visibility_table(roles, labels, visible):
    decision = AccessChecker(roles, {}).check_cluster("leaf", labels)
    assert decision.allowed is visible, decision.reason
    assert decision.reason.startswith("access granted: " if visible else "access denied: ")


@pytest.mark.parametrize("traits, labels, visible", [
    ({"envs": ["demo"]}, {"env": "demo"}, True),
    ({"envs": ["qa", "demo"]}, {"env": "demo"}, True),
    ({"envs": ["qa"]}, {"env": "demo"}, False),
    ({}, {"env": "demo"}, False),            # a missing trait matches nothing
    ({"envs": [""]}, {"env": ""}, False),     # nor does an empty one
])
def test_visibility_with_traits(traits, labels, visible):
    assert AccessChecker([FROM_TRAIT], traits).check_cluster("leaf", labels).allowed is visible


@pytest.mark.parametrize("roles, labels, rule, reason", [
    ([ALL, NO_PROD], {"env": "prod"}, "deny.cluster_labels",
     'access denied: role "no-prod" denies clusters with env=prod (deny.cluster_labels)'),
    ([DEMO], {"env": "demo"}, "allow.cluster_labels",
     'access granted: role "demo" allows cluster "leaf" with env=demo (allow.cluster_labels)'),
    ([DEMO_AND_OPS], {"env": "demo"}, "",
     'access denied: no role allows cluster "leaf" with labels env=demo; roles [demo-and-ops] require '
     "team in [ops]"),
    ([PLAIN], {"env": "demo"}, "",
     'access denied: cluster "leaf" has labels env=demo and none of the roles [plain] sets allow.cluster_labels; '
     "add a role whose cluster_labels match them"),
])
def test_visibility_names_the_rule(roles, labels, rule, reason):
    decision = AccessChecker(roles, {}).check_cluster("leaf", labels)
    assert (decision.rule, decision.reason) == (rule, reason)


# --------------------------------------------------------------- the same table through the auth service
# (`auth`: an AuthService on real SQLite in a temp dir, from conftest.py)
async def _register_leaf(svc, name: str, labels: dict) -> None:
    """A leaf joins with a token carrying labels (the root's handshake code), then the root relabels it."""
    from gatehouse import __version__, pki
    from gatehouse.auth.authz import Identity
    admin = Identity("admin", "admin", svc.cluster_name)
    token, _ = await svc.tokens.add(admin, ["trusted_cluster"], 300, labels={"joined": "by-token"})
    host_ca = pki.new_ssh_key(comment=f"{name} host CA").public_line
    proxy = Identity("proxy", "proxy", svc.cluster_name)
    await svc.trust.validate(proxy, {"token": token, "cluster_name": name, "host_cas": [host_ca],
                                     "version": __version__}, "127.0.0.1")
    await svc.trust.set_labels(admin, name, labels)


async def test_cluster_listing_follows_the_table(auth):
    from gatehouse.auth.authz import Identity
    admin = Identity("admin", "admin", auth.cluster_name)
    cases = [c for c in TABLE if c[1]]  # a user needs at least one role
    leaves = {}
    for i, (case, _, labels, _) in enumerate(cases):
        leaves[case] = f"leaf{i}.test"
        await _register_leaf(auth, leaves[case], labels)
    roles = {r["metadata"]["name"]: r for _, rs, _, _ in cases for r in rs}
    for r in roles.values():
        await auth.resources.put(admin, r, force=True)
    for i, (case, case_roles, _, visible) in enumerate(cases):
        user = f"u{i}"
        await auth.resources.put(admin, {"kind": "user", "version": "v2", "metadata": {"name": user},
                                        "spec": {"roles": [r["metadata"]["name"] for r in case_roles],
                                                 "traits": {"logins": ["visitor"]}}})
        seen = {c["name"] for c in await auth.list_clusters(Identity(user, "user", auth.cluster_name))}
        assert auth.cluster_name in seen
        assert (leaves[case] in seen) is visible, case
    # The admin sees every leaf whatever its labels.
    everything = {c["name"] for c in await auth.list_clusters(admin)}
    assert set(leaves.values()) <= everything


async def test_token_labels_apply_at_registration(auth):
    from gatehouse.auth.authz import Identity
    admin = Identity("admin", "admin", auth.cluster_name)
    token, _ = await auth.tokens.add(admin, ["trusted_cluster"], 300, labels={"env": "demo"})
    from gatehouse import __version__, pki
    await auth.trust.validate(Identity("proxy", "proxy", auth.cluster_name),
                              {"token": token, "cluster_name": "demo.test", "version": __version__,
                               "host_cas": [pki.new_ssh_key().public_line]}, "127.0.0.1")
    await auth.resources.put(admin, DEMO, force=True)
    await auth.resources.put(admin, PLAIN, force=True)
    for name, user_roles, visible in (("d", ["demo"], True), ("p", ["plain"], False)):
        await auth.resources.put(admin, {"kind": "user", "version": "v2", "metadata": {"name": name},
                                        "spec": {"roles": user_roles, "traits": {}}})
        seen = {c["name"] for c in await auth.list_clusters(Identity(name, "user", auth.cluster_name))}
        assert ("demo.test" in seen) is visible
