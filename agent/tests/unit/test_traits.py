"""Role templates: expansion, functions, errors and the apply_* helpers."""

import pytest

from gatehouse.errors import BadParameter, NotFound
from gatehouse.traits import (TemplateError, TraitMissing, apply_traits_to_labels, apply_traits_to_list,
                              apply_traits_to_logins, interpolate, is_valid_login, validate_template)

TRAITS = {
    "logins": ["root", "ubuntu"],
    "team": ["dev", "ops"],
    "email": ["alice@example.com", "not-an-email", "@example.com", "a@b@c", "bob@example.org"],
    "display": ["Bob Builder <bob@example.com>", '"Carol C." <carol@example.org>', "Dave <dave>",
                "Eve <eve@example.com>, Mallory <m@example.com>", "<>", "   "],
    "env": ["staging"],
    "empty": [],
    "blank": [""],
    "http://schemas.example.com/groups": ["admins"],
}


@pytest.mark.parametrize("expression, expected", [
    ("plain", ["plain"]),
    ("no {braces} here", ["no {braces} here"]),  # single braces are text
    ("{{internal.logins}}", ["root", "ubuntu"]),
    ("{{external.logins}}", ["root", "ubuntu"]),  # the namespace is not part of the lookup
    ("{{external.team}}", ["dev", "ops"]),
    ('{{internal["logins"]}}', ["root", "ubuntu"]),
    ('{{external["http://schemas.example.com/groups"]}}', ["admins"]),
    ("{{external[`team`]}}", ["dev", "ops"]),
    ("{{ external.team }}", ["dev", "ops"]),
    ("  {{external.team}}  ", ["dev", "ops"]),   # whitespace around the value is ignored …
    ("\t{{ external . team }}\n", ["dev", "ops"]),
    ("a- {{external.env}} -b ", ["a- staging -b"]),  # … but not between the template and its text
    ("dev-{{external.team}}-x", ["dev-dev-x", "dev-ops-x"]),
    ("{{external.team}}@corp", ["dev@corp", "ops@corp"]),
    ("{{email.local(external.email)}}", ["alice", "bob"]),  # values that are not local@domain are skipped
    ("u-{{email.local(external.email)}}", ["u-alice", "u-bob"]),
    # a display name around the address is fine; anything but one address is dropped
    ("{{email.local(external.display)}}", ["bob", "carol"]),
    ('{{regexp.replace(external.team, "^d(.*)$", "D$1")}}', ["Dev"]),  # non-matching values are skipped
    ('{{regexp.replace(external.team, "(.*)", "team-$1")}}', ["team-dev", "team-ops"]),
    # the expression is a regular expression searched in the value; every match is replaced
    ('{{regexp.replace(external.team, "o", "0")}}', ["0ps"]),
    ('{{regexp.replace(external.email, "@example\\.(com|org)$", "-$1")}}', ["alice-com", "-com", "bob-org"]),
    ('{{regexp.replace(external.env, "^(\\w+)ing$", "$1")}}', ["stag"]),  # backslash kept for the regex
    ('{{regexp.replace(external.env, `^(\\w+)ing$`, `$1`)}}', ["stag"]),
    ('{{regexp.replace(external.team, "^(.*)$", "say \\"$1\\"")}}', ['say "dev"', 'say "ops"']),
    ('{{regexp.replace(email.local(external.email), "^a(.*)$", "$1")}}', ["lice"]),
    ('{{regexp.replace(external.team, ".+", "same")}}', ["same"]),  # results are de-duplicated
])
def test_interpolate(expression, expected):
    assert interpolate(expression, TRAITS) == expected


@pytest.mark.parametrize("expression, message", [
    ("{{external.missing}}", 'trait "missing" is not set for this user; add it to the user\'s traits or remove '
                             '"{{external.missing}}" from the role'),
    ("x-{{internal.db_users}}", 'trait "db_users" is not set for this user; add it to the user\'s traits or '
                                'remove "x-{{internal.db_users}}" from the role'),
    ("{{external.empty}}", 'trait "empty" has no values for this user; give it a value or remove '
                           '"{{external.empty}}" from the role'),
    ("{{external.blank}}", 'trait "blank" has no values for this user; give it a value or remove '
                           '"{{external.blank}}" from the role'),
    ('{{regexp.replace(external.team, "^z(.*)$", "$1")}}',
     'role template "{{regexp.replace(external.team, "^z(.*)$", "$1")}}" expands to no value because no value '
     'of trait "team" is accepted by its function; check the user\'s "team" trait'),
    ('{{email.local(external.team)}}',
     'role template "{{email.local(external.team)}}" expands to no value because no value of trait "team" is '
     'accepted by its function; check the user\'s "team" trait'),
])
def test_interpolate_missing_traits(expression, message):
    with pytest.raises(LookupError) as info:
        interpolate(expression, TRAITS)
    assert isinstance(info.value, TraitMissing) and isinstance(info.value, NotFound)
    assert str(info.value) == message


SYNTAX = ('write {{internal.NAME}}, {{external.NAME}}, {{email.local(VAR)}} or '
          '{{regexp.replace(VAR, "RE", "REPL")}}')


@pytest.mark.parametrize("expression, message", [
    ("{{external.team", 'role template "{{external.team" has "{{" without a matching "}}"; '
                        'close the expression with "}}"'),
    ("x}}{{external.team}}", 'role template "x}}{{external.team}}" has "}}" without a matching "{{"; '
                             'remove it or open the expression with "{{"'),
    # a "}}" alone is a malformed template, not literal text
    ("no}}braces", 'role template "no}}braces" has "}}" without a matching "{{"; '
                   'remove it or open the expression with "{{"'),
    ("{{external.a}}}", 'role template "{{external.a}}}" has a "{" or "}" outside its {{...}} expression; '
                        "remove it or write the expression as {{...}}"),
    ("x{ {{external.a}}", 'role template "x{ {{external.a}}" has a "{" or "}" outside its {{...}} expression; '
                          "remove it or write the expression as {{...}}"),
    ("{{external.a}}-{{external.b}}", 'role template "{{external.a}}-{{external.b}}" contains more than one '
                                      "{{...}} expression; use one expression per value and list several "
                                      "values instead"),
    ("{{external.a}}}}", 'role template "{{external.a}}}}" contains more than one {{...}} expression; '
                         "use one expression per value and list several values instead"),
    ("{{ {{external.a}}", 'role template "{{ {{external.a}}" contains more than one {{...}} expression; '
                          "use one expression per value and list several values instead"),
    ("{{  }}", 'role template "{{  }}" has an empty {{}} expression; write a variable such as '
               "{{internal.logins}} or {{external.NAME}}"),
    ("{{internal.nope}}", 'role template "{{internal.nope}}" refers to unknown internal trait "nope"; use one of '
                          "[aws_role_arns, azure_identities, db_names, db_roles, db_users, gcp_service_accounts, "
                          "host_user_gid, host_user_uid, kubernetes_groups, kubernetes_users, logins, "
                          "windows_logins] or read it as external.nope"),
    ('{{internal["team"]}}', 'role template "{{internal["team"]}}" refers to unknown internal trait "team"; use '
                             "one of [aws_role_arns, azure_identities, db_names, db_roles, db_users, "
                             "gcp_service_accounts, host_user_gid, host_user_uid, kubernetes_groups, "
                             "kubernetes_users, logins, windows_logins] or read it as external.team"),
    ("{{foo.bar}}", 'role template "{{foo.bar}}" uses unknown namespace "foo"; use internal or external'),
    ('{{external[""]}}', 'role template "{{external[""]}}" reads a trait with an empty name; name the trait'),
    ("{{email.remote(external.x)}}", 'role template "{{email.remote(external.x)}}" calls unknown function '
                                     '"email.remote"; use email.local or regexp.replace'),
    ("{{email.local(external.a, external.b)}}", 'role template "{{email.local(external.a, external.b)}}" calls '
                                                "email.local with 2 arguments; it takes one variable, e.g. "
                                                "email.local(external.email)"),
    ('{{email.local("a@b")}}', 'role template "{{email.local("a@b")}}" passes a string to email.local; '
                               "pass a variable such as external.email"),
    ('{{regexp.replace(external.x, "a")}}', 'role template "{{regexp.replace(external.x, "a")}}" calls '
                                            "regexp.replace with 2 arguments; it takes a variable, a pattern "
                                            'and a replacement: regexp.replace(VAR, "RE", "REPL")'),
    ('{{regexp.replace("x", "a", "b")}}', 'role template "{{regexp.replace("x", "a", "b")}}" passes arguments '
                                          "of the wrong kind to regexp.replace; write regexp.replace("
                                          'external.NAME, "RE", "REPL") with a variable first and quoted '
                                          "strings after it"),
    ('{{regexp.replace(external.x, "^(a$", "b")}}',
     'role template "{{regexp.replace(external.x, "^(a$", "b")}}" has a regexp.replace pattern "^(a$" that is '
     "not a valid RE2 regular expression (missing ): ^(a$); fix the pattern"),
    # the pattern is always a regular expression, anchored or not
    ('{{regexp.replace(external.x, "*", "b")}}',
     'role template "{{regexp.replace(external.x, "*", "b")}}" has a regexp.replace pattern "*" that is '
     "not a valid RE2 regular expression (no argument for repetition operator: *); fix the pattern"),
    ('{{regexp.replace(external.x, "(", "b")}}',
     'role template "{{regexp.replace(external.x, "(", "b")}}" has a regexp.replace pattern "(" that is '
     "not a valid RE2 regular expression (missing ): (); fix the pattern"),
    ("{{external.x y}}", f'role template "{{{{external.x y}}}}" is not a valid expression (unexpected "y"); {SYNTAX}'),
    ("{{external.x.y}}", f'role template "{{{{external.x.y}}}}" is not a valid expression (unexpected "."); {SYNTAX}'),
    ("{{external}}", f'role template "{{{{external}}}}" is not a valid expression (unexpected end of '
                     f"expression); {SYNTAX}"),
    ("{{external.x!}}", f'role template "{{{{external.x!}}}}" is not a valid expression (unexpected "!"); {SYNTAX}'),
    ('{{external["x}}', f'role template "{{{{external["x}}}}" is not a valid expression (unexpected """); {SYNTAX}'),
    ("{{external.x(}}", f'role template "{{{{external.x(}}}}" calls unknown function "external.x"; '
                        "use email.local or regexp.replace"),
])
def test_interpolate_malformed(expression, message):
    with pytest.raises(ValueError) as info:
        interpolate(expression, TRAITS)
    assert isinstance(info.value, TemplateError) and isinstance(info.value, BadParameter)
    assert str(info.value) == message


def test_validate_template():
    validate_template("plain")
    validate_template("{{external.anything}}")  # a missing trait is not a malformed template
    with pytest.raises(TemplateError):
        validate_template("{{internal.nope}}")
    with pytest.raises(TemplateError) as info:
        validate_template(7)
    assert str(info.value) == "role value 7 must be a string, got int; quote it in YAML"


def test_referenced_traits():
    from gatehouse.traits import referenced_traits
    spec = {"allow": {"logins": ["{{internal.logins}}", "root", "{{email.local(external.email)}}"],
                      "node_labels": {"env": ["{{external.groups}}"], "{{external.key}}": ["*"]}},
            "deny": {"logins": ["{{internal.nope}}", "}}bad"]}}
    assert referenced_traits(spec) == ["email", "groups", "key", "logins"]
    assert referenced_traits(["plain", 3, None]) == []


def test_trait_given_as_a_single_string():
    assert interpolate("{{external.team}}", {"team": "dev"}) == ["dev"]


@pytest.mark.parametrize("values, expected", [
    (["{{internal.logins}}", "admin"], ["root", "ubuntu", "admin"]),
    (["{{external.missing}}", "admin"], ["admin"]),          # missing trait drops the entry
    (["{{external.empty}}"], []),
    (["{{internal.nope}}", "admin"], ["admin"]),             # malformed entries are dropped too
    (["root", "{{internal.logins}}", "root"], ["root", "ubuntu"]),  # de-duplicated, first kept
    (None, []),
    ([5, "x"], ["x"]),
])
def test_apply_traits_to_list(values, expected):
    assert apply_traits_to_list(values, TRAITS) == expected


@pytest.mark.parametrize("login, valid", [
    ("root", True), ("ubuntu", True), ("_svc", True), ("a.b-c_d", True), ("Admin", True), ("host$", True),
    ("a" * 32, True), ("a" * 33, False), ("", False), ("1abc", False), ("-rf", False), ("a b", False),
    ("a@b", False), ("a$b", False), ("a/b", False), ("a\n", False), (".hidden", False),
])
def test_is_valid_login(login, valid):
    assert is_valid_login(login) is valid


def test_apply_traits_to_logins_filters_invalid_logins():
    traits = {"logins": ["root", "bad login", "-gatehouse-nologin-", "x" * 40, "ok.user"]}
    assert apply_traits_to_logins(["{{internal.logins}}", "alice@corp", "visitor"], traits) == [
        "root", "ok.user", "visitor"]


def test_apply_traits_to_logins_email_local():
    assert apply_traits_to_logins(["{{email.local(external.email)}}"], TRAITS) == ["alice", "bob"]


@pytest.mark.parametrize("selector, expected", [
    ({"env": ["{{external.env}}"]}, {"env": ["staging"]}),
    ({"env": ["{{external.team}}"]}, {"env": ["dev", "ops"]}),
    ({"{{external.env}}": ["*"]}, {"staging": ["*"]}),
    ({"team-{{external.env}}": ["x-{{external.env}}"]}, {"team-staging": ["x-staging"]}),
    # cannot be expanded → "" (matches nothing)
    ({"env": ["{{external.missing}}"]}, {"env": [""]}),
    ({"env": ["{{external.missing}}", "prod"]}, {"env": ["", "prod"]}),
    ({"{{external.missing}}": ["prod"]}, {"": ["prod"]}),
    ({"{{external.team}}": ["x"]}, {"": ["x"]}),             # a key must expand to exactly one value
    ({"{{internal.nope}}": ["x"]}, {"": ["x"]}),
    # keys that end up equal are merged
    ({"env": ["a"], "{{external.missing}}": ["b"], "{{external.nothing}}": ["c"]}, {"env": ["a"], "": ["b", "c"]}),
    ({"*": ["*"]}, {"*": ["*"]}),
    ({}, {}),
])
def test_apply_traits_to_labels(selector, expected):
    assert apply_traits_to_labels(selector, TRAITS) == expected


@pytest.mark.parametrize("value, message", [
    ("a}}", 'role template "a}}" has "}}" without a matching "{{"'),
    ('{{regexp.replace(external.groups, "(", "x")}}', 'regexp.replace pattern "(" that is not a valid RE2 regular '
                                                      "expression (missing ): ()"),
])
def test_malformed_templates_are_refused_when_a_role_is_created(value, message):
    from gatehouse.resources import validate
    with pytest.raises(BadParameter) as info:
        validate({"kind": "role", "metadata": {"name": "r"},
                  "spec": {"allow": {"logins": [value], "node_labels": {"env": [value]}}}})
    assert message in str(info.value) and 'role "r"' in str(info.value)
