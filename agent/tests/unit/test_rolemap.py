"""Trusted-cluster role mapping: patterns, captures, ordering, validation and messages."""

import pytest

from gatehouse.errors import BadParameter, NotFound
from gatehouse.labels import InvalidPattern
from gatehouse.rolemap import (InvalidRoleMap, NoMatch, explain_mapping, map_roles, no_mapping_message,
                               replace_regexp, validate_role_map)


def entry(remote, *local):
    return {"remote": remote, "local": list(local)}


@pytest.mark.parametrize("role_map, remote_roles, expected", [
    # literal
    ([entry("access", "visitor")], ["access"], ["visitor"]),
    ([entry("access", "visitor")], ["access-2"], []),
    ([entry("access", "visitor")], ["xaccess"], []),
    # regex with a capture (the documented example)
    ([entry("^remote-(.*)$", "local-$1")], ["remote-one"], ["local-one"]),
    ([entry("^remote-(.*)$", "local-$1")], ["remote-one", "remote-two"], ["local-one", "local-two"]),
    ([entry("^remote-(.*)$", "local-$1")], ["xremote-one"], []),
    # ${1}, named groups, $0
    ([entry("^remote-(.*)$", "local-${1}")], ["remote-one"], ["local-one"]),
    ([entry("^r-(?P<team>[a-z]+)$", "t-$team", "t-${team}-x")], ["r-db"], ["t-db", "t-db-x"]),
    ([entry("^r-(.*)$", "$0")], ["r-db"], ["r-db"]),
    # literal with * captures
    ([entry("*", "access")], ["anything"], ["access"]),
    ([entry("cluster-*", "clusteradmin")], ["cluster-eu"], ["clusteradmin"]),
    ([entry("cluster-*", "clusteradmin")], ["other"], []),
    ([entry("cluster-*", "admin-$1")], ["cluster-eu"], ["admin-eu"]),
    ([entry("*-*", "$2-$1")], ["dev-eu"], ["eu-dev"]),
    # outside ^...$ everything but * is literal
    ([entry("a.b", "x")], ["axb"], []),
    ([entry("a.b", "x")], ["a.b"], ["x"]),
    ([entry("a?", "x")], ["ab"], []),
    ([entry("^a.b$", "x")], ["axb"], ["x"]),
    # $$ is a literal dollar sign; a $ that starts no reference stays
    ([entry("access", "cost$$")], ["access"], ["cost$"]),
    ([entry("access", "a$-b")], ["access"], ["a$-b"]),
    ([entry("access", "a$")], ["access"], ["a$"]),
    ([entry("access", "a${")], ["access"], ["a${"]),
    # missing or non-participating groups expand to "" and empty results are dropped
    ([entry("^remote-(.*)$", "$2")], ["remote-one"], []),
    ([entry("^remote-(.*)$", "local-$2")], ["remote-one"], ["local-"]),
    ([entry("^remote-(.*)$", "$1")], ["remote-"], []),
    ([entry("^r(-x)?$", "y$1")], ["r"], ["y"]),
    ([entry("^r-(.*)$", "$nope")], ["r-a"], []),
    # the bare form is greedy as in Go: $1x is the group named "1x"
    ([entry("^r-(.*)$", "$1x", "${1}x")], ["r-a"], ["ax"]),
    # a leading zero makes it a name, not a number
    ([entry("^r-(.*)$", "$01")], ["r-a"], []),
    # every entry applies; order is entry-major, then remote role, then template
    ([entry("^(a|b)$", "$1-1", "$1-2"), entry("*", "all")], ["b", "a"], ["b-1", "b-2", "a-1", "a-2", "all"]),
    ([entry("*", "all"), entry("a", "only-a")], ["a", "b"], ["all", "only-a"]),
    # duplicates removed, first occurrence kept
    ([entry("a", "x", "y"), entry("b", "y", "x", "z")], ["a", "b"], ["x", "y", "z"]),
    ([entry("*", "same")], ["a", "b", "c"], ["same"]),
    # no remote roles map to nothing, not even through "*" (a root proxy's role-less tunnel
    # certificate must never become a leaf user; issue 13)
    ([entry("*", "guest")], [], []),
    ([entry("^.*$", "guest")], [], []),
    ([entry("*", "guest")], [""], []),
    ([entry("access", "visitor")], [], []),
    ([entry("^.+$", "x")], [], []),
    # local written as a single string
    ([{"remote": "a", "local": "x"}], ["a"], ["x"]),
    # empty or missing role map maps nothing
    ([], ["a"], []),
    (None, ["a"], []),
])
def test_map_roles(role_map, remote_roles, expected):
    assert map_roles(role_map, remote_roles) == expected


def test_map_roles_raises_invalid_role_map_as_value_error():
    with pytest.raises(ValueError) as info:
        map_roles([entry("^remote-(.*$", "x")], ["remote-one"])
    assert isinstance(info.value, InvalidRoleMap)


@pytest.mark.parametrize("role_map, message", [
    ({"remote": "a", "local": ["b"]},
     'role_map must be a list of {remote, local} entries, got dict; write it as a YAML list ("- remote: ROLE")'),
    ("a:b", 'role_map must be a list of {remote, local} entries, got str; write it as a YAML list ("- remote: ROLE")'),
    (["access"], 'role_map entry 1 must be a mapping with "remote" and "local", got str; '
                 "write it as {remote: ROLE, local: [ROLE]}"),
    ([{"remote": "a", "locals": ["b"]}], 'role_map entry 1 has unknown key "locals"; use only "remote" and "local"'),
    ([{"local": ["b"]}], 'role_map entry 1 has no "remote" role; set remote to a role name, '
                         'a pattern with "*" or a ^regex$'),
    ([entry("", "b")], 'role_map entry 1 has no "remote" role; set remote to a role name, '
                       'a pattern with "*" or a ^regex$'),
    ([{"remote": ["a"], "local": ["b"]}], 'role_map entry 1 has a "remote" of type list; '
                                          "set it to a single role name, pattern or ^regex$ as a string"),
    ([entry("a", "x"), entry("^remote-(.*$", "b")],
     'role_map entry 2 remote "^remote-(.*$" is not a valid RE2 regular expression (missing ): ^remote-(.*$); '
     "fix the expression or drop the leading ^ and trailing $ to match it as text"),
    ([{"remote": "a"}], 'role_map entry 1 (remote "a") has no "local" roles; '
                        "list at least one local role, e.g. local: [visitor]"),
    ([entry("a")], 'role_map entry 1 (remote "a") has no "local" roles; '
                   "list at least one local role, e.g. local: [visitor]"),
    ([{"remote": "a", "local": ""}], 'role_map entry 1 (remote "a") has no "local" roles; '
                                     "list at least one local role, e.g. local: [visitor]"),
    ([{"remote": "a", "local": {"x": 1}}], 'role_map entry 1 has a "local" of type dict; '
                                           "write it as a list of role names, e.g. local: [visitor]"),
    ([entry("a", "")], "role_map entry 1 (remote \"a\") has a local role '' that is not a role name; "
                       "write each local role as a non-empty string"),
    ([entry("a", 3)], 'role_map entry 1 (remote "a") has a local role 3 that is not a role name; '
                      "write each local role as a non-empty string"),
    ([entry("*", "*")], 'role_map entry 1 (remote "*") maps to the wildcard "*" as a local role, '
                        "which is not allowed; name the local roles explicitly"),
    ([entry("a", "x"), entry("b", "y"), entry("a", "z")],
     'role_map entries 1 and 3 both map remote "a"; merge their local roles into one entry'),
])
def test_validate_role_map_errors(role_map, message):
    with pytest.raises(InvalidRoleMap) as info:
        validate_role_map(role_map)
    assert str(info.value) == message


def test_validate_role_map_checks_local_roles_only_when_known():
    role_map = [entry("access", "visitr")]
    assert validate_role_map(role_map) == role_map
    with pytest.raises(InvalidRoleMap) as info:
        validate_role_map(role_map, existing_local_roles={"visitor"})
    assert str(info.value) == ('role_map entry 1 maps remote "access" to local role "visitr", which does not '
                               "exist on this cluster; create the role first or fix the name")


def test_validate_role_map_skips_existence_check_for_expansions():
    role_map = [entry("^remote-(.*)$", "local-$1", "visitor")]
    assert validate_role_map(role_map, existing_local_roles={"visitor"}) == role_map


def test_validate_role_map_normalises():
    assert validate_role_map([{"remote": "a", "local": "x"}, {"remote": "b", "local": ["y", "y", "z"]}]) == [
        {"remote": "a", "local": ["x"]}, {"remote": "b", "local": ["y", "z"]}]
    assert validate_role_map(None) == []
    assert validate_role_map(({"remote": "a", "local": ["x"]},)) == [{"remote": "a", "local": ["x"]}]


@pytest.mark.parametrize("expression, replacement, value, expected", [
    ("^remote-(.*)$", "local-$1", "remote-one", "local-one"),
    ("remote-*", "local-$1", "remote-one", "local-one"),
    ("*@*", "$1", "alice@example.com", "alice"),
    ("^(?P<user>[^@]+)@(.*)$", "${user} at $2", "bob@x.org", "bob at x.org"),
    ("exact", "replaced", "exact", "replaced"),
    ("^x(.*)$", "$$$1", "xy", "$y"),
    ("^x(.*)$", "$5", "xy", ""),
])
def test_replace_regexp(expression, replacement, value, expected):
    assert replace_regexp(expression, replacement, value) == expected


def test_replace_regexp_no_match_is_lookup_error():
    with pytest.raises(LookupError) as info:
        replace_regexp("^remote-(.*)$", "$1", "local-one")
    assert isinstance(info.value, NoMatch) and isinstance(info.value, NotFound)
    assert str(info.value) == ('"local-one" does not match the pattern "^remote-(.*)$"; '
                               "check the value or widen the pattern")


def test_replace_regexp_needs_a_full_match():
    with pytest.raises(NoMatch):
        replace_regexp("remote", "x", "remote-one")


def test_replace_regexp_bad_expression_is_value_error():
    with pytest.raises(ValueError) as info:
        replace_regexp("^(oops$", "$1", "x")
    assert isinstance(info.value, InvalidPattern)
    assert str(info.value) == ('pattern "^(oops$" is not a valid RE2 regular expression (missing ): ^(oops$); '
                               "fix the expression")


def test_replace_regexp_rejects_non_strings():
    with pytest.raises(BadParameter) as info:
        replace_regexp("a", None, "a")
    assert str(info.value) == "the replacement given to replace_regexp must be a string, got NoneType; pass text"


def test_explain_mapping_lists_each_matching_pair():
    role_map = [entry("^remote-(.*)$", "local-$1", "$2"), entry("*", "all"), entry("none", "x")]
    assert explain_mapping(role_map, ["remote-a", "dev"]) == [
        ({"remote": "^remote-(.*)$", "local": ["local-$1", "$2"]}, "remote-a", ["local-a"]),
        ({"remote": "*", "local": ["all"]}, "remote-a", ["all"]),
        ({"remote": "*", "local": ["all"]}, "dev", ["all"]),
    ]


def test_explain_mapping_shows_matches_that_produce_nothing():
    assert explain_mapping([entry("^r-(.*)$", "$2")], ["r-a"]) == [({"remote": "^r-(.*)$", "local": ["$2"]}, "r-a", [])]


def test_explain_mapping_with_no_remote_roles_maps_nothing():
    assert explain_mapping([entry("*", "guest")], []) == []


@pytest.mark.parametrize("cluster, roles, message", [
    ("root", ["access", "dev"], 'access denied: no role in the role map of trusted cluster "root" matches the '
                                "remote roles [access, dev]; add a role_map entry for one of them"),
    ("", ["access"], "access denied: no role in the role map of the trusted cluster matches the remote roles "
                     "[access]; add a role_map entry for one of them"),
    ("root", [], 'access denied: the user holds no roles at trusted cluster "root", and a user without roles maps '
                 "to no local role; give the user a role at the root cluster"),
])
def test_no_mapping_message(cluster, roles, message):
    assert no_mapping_message(cluster, roles) == message
