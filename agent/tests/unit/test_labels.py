"""Label selector matching: patterns, selectors, explanations and input validation."""

import pytest

from gatehouse.errors import BadParameter
from gatehouse.labels import (InvalidPattern, Selector, compile_selector, glob_to_regex, normalize_selector,
                              selector_matches, validate_pattern, value_matches)


@pytest.mark.parametrize("pattern, value, expected", [
    ("*", "prod", True),
    ("*", "", False),                      # an empty value counts as unset
    ("", "prod", False),                   # an empty pattern (missing trait) matches nothing
    ("", "", False),
    ("prod", "prod", True),
    ("prod", "Prod", False),
    ("prod", "production", False),         # exact means whole string
    ("prod*", "production", True),
    ("prod*", "prod", True),
    ("*-east", "us-east", True),
    ("*-east", "us-west", False),
    ("us-?", "us-1", True),
    ("us-?", "us-12", False),
    ("a.b", "a.b", True),
    ("a.b", "axb", False),                 # dots are literal outside ^regex$
    ("a.*", "a.bc", True),
    ("a.*", "axbc", False),                # glob keeps the dot literal
    ("a+b*", "a+bc", True),                # regex metacharacters in globs are literal
    ("^prod-[0-9]+$", "prod-12", True),
    ("^prod-[0-9]+$", "prod-12x", False),
    ("^prod|dev$", "prod", True),          # alternation is still matched in full
    ("^prod|dev$", "prodx", False),
    ("^prod|dev$", "xdev", False),
    ("^(?i)PROD$", "prod", True),          # RE2 flags work
    ("^x", "^x", True),                    # no trailing $: exact text
    ("x$", "x$", True),                    # no leading ^: exact text
    ("^", "^", True),                      # a lone ^ is text, not a regex
    ("^(unclosed$", "(unclosed", False),   # invalid regex fails closed
    ("?", "a", True),
    ("?", "ab", False),
])
def test_value_matches(pattern, value, expected):
    assert value_matches(pattern, value) is expected


def test_glob_translation_escapes_everything_but_wildcards():
    assert glob_to_regex("a.b*c?") == r"a\.b(?s:.*)c(?s:.)"


@pytest.mark.parametrize("selector, labels, ok, detail", [
    ({"*": ["*"]}, {}, True, "'*': '*'"),
    ({"*": ["*"]}, {"env": "prod"}, True, "'*': '*'"),
    ({"env": ["demo"]}, {"env": "demo"}, True, "env=demo"),
    ({"env": ["demo", "prod"]}, {"env": "prod"}, True, "env=prod"),
    ({"env": ["demo"]}, {"env": "prod"}, False, 'label "env" is "prod", role requires one of ["demo"]'),
    ({"env": ["demo"]}, {}, False, 'label "env" is not set, role requires one of ["demo"]'),
    ({"env": ["*"]}, {"team": "x"}, False, 'label "env" is not set, role requires one of ["*"]'),
    ({"env": ["*"]}, {"env": ""}, False, 'label "env" is "", role requires one of ["*"]'),
    ({"env": ["demo"], "team": ["db"]}, {"env": "demo", "team": "db"}, True, "env=demo, team=db"),
    ({"env": ["demo"], "team": ["db"]}, {"env": "demo", "team": "web"}, False,
     'label "team" is "web", role requires one of ["db"]'),
    ({"env": []}, {"env": "demo"}, False, 'label "env" is "demo", role requires one of []'),
    ({}, {"env": "demo"}, False, "the selector is empty, so it matches nothing"),
    ({}, {}, False, "the selector is empty, so it matches nothing"),
    # key patterns: some label whose key matches must have a matching value
    ({"team-*": ["a"]}, {"team-x": "a"}, True, "team-x=a"),
    ({"team-*": ["a"]}, {"team-x": "b", "team-y": "a"}, True, "team-y=a"),
    ({"team-*": ["a"]}, {"team-x": "b"}, False, 'no label with a key matching "team-*" has a value in ["a"]'),
    ({"^t(ea)?m$": ["a"]}, {"tm": "a"}, True, "tm=a"),
    ({"*": ["demo"]}, {"x": "demo"}, True, "x=demo"),
    ({"*": ["demo"]}, {}, False, 'no label with a key matching "*" has a value in ["demo"]'),
    # a key template that expanded to nothing
    ({"": ["demo"]}, {"": "demo"}, False,
     "a label key in the role expanded to nothing (missing trait), so it matches no label"),
    ({"env": [""]}, {"env": "demo"}, False, 'label "env" is "demo", role requires one of [""]'),
])
def test_selector_matches(selector, labels, ok, detail):
    assert selector_matches(selector, labels) == (ok, detail)


def test_selector_accepts_yaml_string_values():
    assert selector_matches({"env": "demo"}, {"env": "demo"}) == (True, "env=demo")


@pytest.mark.parametrize("selector, labels, requirement", [
    ({"env": ["demo", "qa"]}, {"env": "prod"}, "env in [demo, qa]"),
    ({"env": ["demo"], "team": ["db"]}, {"env": "demo"}, "team in [db]"),
    ({"": ["x"]}, {}, "<missing trait> in [x]"),
    ({"env": [""]}, {}, "env in [<missing trait>]"),
    ({}, {}, ""),
])
def test_requirement_short_form(selector, labels, requirement):
    assert Selector(selector).requirement(labels) == requirement


def test_empty_selector_is_falsy_and_others_truthy():
    assert not compile_selector({})
    assert not compile_selector(None)
    assert compile_selector({"*": "*"})


@pytest.mark.parametrize("raw, expected", [
    (None, {}),
    ({}, {}),
    ({"env": "prod"}, {"env": ["prod"]}),
    ({"env": ["prod", "dev", "prod"]}, {"env": ["prod", "dev"]}),
    ({"*": "*"}, {"*": ["*"]}),
    ({"env": []}, {"env": []}),
    ({"{{external.k}}": "{{external.v}}"}, {"{{external.k}}": ["{{external.v}}"]}),
    ({"env": "^{{external.env}}($"}, {"env": ["^{{external.env}}($"]}),  # checked after expansion
])
def test_normalize_selector(raw, expected):
    assert normalize_selector(raw) == expected


@pytest.mark.parametrize("raw, message", [
    (["env"], "a label selector must be a mapping of label name to values, got list; write it as {env: [prod]}"),
    ("env=prod", "a label selector must be a mapping of label name to values, got str; write it as {env: [prod]}"),
    ({1: "x"}, "label selector key 1 must be a string, got int; quote it in YAML"),
    ({"port": 22}, 'label selector values for "port" must be a string or a list of strings, got int; '
                   "write them as [a, b]"),
    ({"port": [22]}, 'label selector value 22 for "port" must be a string, got int; quote it in YAML ("22")'),
    ({"on": [True]}, 'label selector value True for "on" must be a string, got bool; quote it in YAML ("True")'),
    ({"env": {"a": "b"}}, 'label selector values for "env" must be a string or a list of strings, got dict; '
                          "write them as [a, b]"),
    ({"env": "^prod-(x$"}, 'label pattern "^prod-(x$" is not a valid RE2 regular expression (missing ): '
                           "^prod-(x$); fix the expression or drop the leading ^ and trailing $ to match "
                           "it as text"),
    ({"^(k$": "x"}, 'label pattern "^(k$" is not a valid RE2 regular expression (missing ): ^(k$); '
                    "fix the expression or drop the leading ^ and trailing $ to match it as text"),
])
def test_normalize_selector_errors(raw, message):
    with pytest.raises(BadParameter) as info:
        normalize_selector(raw)
    assert str(info.value) == message


def test_validate_pattern():
    validate_pattern("^ok-[a-z]+$")
    validate_pattern("plain(")  # not a regex: any text is fine
    with pytest.raises(InvalidPattern) as info:
        validate_pattern("^a{2,1}$")
    assert str(info.value).startswith('label pattern "^a{2,1}$" is not a valid RE2 regular expression (')
    assert info.value.reason
    with pytest.raises(BadParameter) as info:
        validate_pattern(5)
    assert str(info.value) == "label pattern 5 must be a string, got int; quote it in YAML"


def test_re2_rejects_backreferences():
    # RE2 has no backreferences (linear time guarantee); Python's re would accept this.
    with pytest.raises(InvalidPattern):
        validate_pattern(r"^(a)\1$")
