"""Identity-provider claims (claims.py) and the oidc connector resource (resources/schema.py)."""

import copy

import pytest

from conftest import raised_message
from gatehouse import claims
from gatehouse.errors import AccessDenied, BadParameter
from gatehouse.resources import parse_documents, redact, render, validate

CLAIMS = {  # as the test provider sends them for alice, plus the protocol claims of an ID token
    "sub": "u-0001-alice", "iss": "http://127.0.0.1:9000", "aud": "gatehouse", "exp": 1, "iat": 1,
    "nonce": "n", "at_hash": "h", "auth_time": 1, "amr": ["pwd"], "email": "alice@example.com",
    "email_verified": True, "groups": ["admins", "dev"], "logins_from_idp": ["alice", "ops"],
    "address": {"country": "NL"}, "name with space": "x", "empty": [], "blank": "", "mixed": ["a", 1],
}

CONNECTOR = {"kind": "oidc", "metadata": {"name": "corp"}, "spec": {
    "issuer_url": "https://idp.example.com/realms/corp", "client_id": "gatehouse", "client_secret": "s3cret-value",
    "redirect_url": "https://root.example.com:3080/webapi/oidc/callback",
    "claims_to_roles": [{"claim": "groups", "value": "dev", "roles": ["developer"]},
                        {"claim": "groups", "value": "^adm(.*)$", "roles": ["sso-adm$1", "auditor"]},
                        {"claim": "groups", "value": "contract*", "roles": ["visitor"]}]}}


def test_claims_become_traits():
    assert claims.claims_to_traits(CLAIMS) == {
        "sub": ["u-0001-alice"], "amr": ["pwd"], "email": ["alice@example.com"], "groups": ["admins", "dev"],
        "logins_from_idp": ["alice", "ops"]}


def test_a_string_claim_is_one_value():
    assert claims.claims_to_traits({"groups": "contractors"}) == {"groups": ["contractors"]}


@pytest.mark.parametrize("big, fragment", [
    ({"groups": [f"g{i}" for i in range(claims.MAX_VALUES + 1)]}, 'claim "groups" has 513 values, more than the 512'),
    ({"note": "x" * (claims.MAX_VALUE_LENGTH + 1)}, 'claim "note" has a value of 1025 characters'),
    ({f"c{i}": "x" for i in range(claims.MAX_CLAIMS + 1)}, "sent 129 claims, more than the 128"),
    ({f"c{i}": [f"{j}" + "y" * 900 for j in range(100)] for i in range(10)}, "more than the 65536 Gatehouse carries in a certificate"),
])
def test_claims_past_the_limits_refuse_the_login(big, fragment):
    with pytest.raises(claims.ClaimsTooLarge) as info:
        claims.claims_to_traits(big)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, AccessDenied)


def test_claims_to_roles_mapping():
    entries = validate(CONNECTOR)["spec"]["claims_to_roles"]
    assert claims.map_claims(entries, {"groups": ["admins", "dev"]}) == ["developer", "sso-admins", "auditor"]
    assert claims.map_claims(entries, {"groups": ["contractors"]}) == ["visitor"]
    assert claims.map_claims(entries, {"groups": ["devops"]}) == []   # "dev" is matched whole
    assert claims.map_claims(entries, {"groups": ["adm"]}) == ["sso-adm", "auditor"]   # $1 matched ""
    assert claims.map_claims(entries, {"other": ["dev"]}) == []
    entries = claims.validate_claims_to_roles([{"claim": "groups", "value": "^x-(.*)$", "roles": ["$1"]}])
    assert claims.map_claims(entries, {"groups": ["x-", "x-ops"]}) == ["ops"]    # an empty expansion is dropped


def test_no_roles_message_names_the_claims():
    entries = validate(CONNECTOR)["spec"]["claims_to_roles"]
    assert claims.no_roles_message("corp", "dave", entries, {"sub": ["u-4"]}) == (
        'no claims_to_roles entry of oidc connector "corp" matches the claims of "dave" (groups: (not sent)); add an '
        "entry for one of those values or give the user a matching claim at the identity provider")


@pytest.mark.parametrize("claim, value, expected", [
    ("email", "alice@example.com", "alice@example.com"),
    ("email", "Bob Builder <bob@example.com>", "bob@example.com"),
    ("preferred_username", "dave", "dave"),
])
def test_username(claim, value, expected):
    assert claims.username({claim: value, "sub": "s"}, claim, "corp") == expected


@pytest.mark.parametrize("found, claim, fragment", [
    ({"sub": "u-4"}, "email", 'the identity provider sent no "email" claim for subject "u-4"'),
    ({"sub": "u-4", "email": "not an address"}, "email", 'the "email" claim "not an address" of subject "u-4" is not'),
    ({"sub": "u-4", "name": "Dave Example"}, "name", 'is not valid; use 1-253 letters'),
])
def test_username_refusals(found, claim, fragment):
    with pytest.raises(AccessDenied) as info:
        claims.username(found, claim, "corp")
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_connector_is_normalised():
    res = validate(CONNECTOR)
    assert res["version"] == "v3"
    assert res["spec"]["scope"] == ["openid", "email", "profile"]
    assert res["spec"]["username_claim"] == "email"
    assert res["spec"]["claims_to_roles"][1] == {"claim": "groups", "value": "^adm(.*)$",
                                                 "roles": ["sso-adm$1", "auditor"]}
    assert validate(res) == res  # normalising twice changes nothing
    other = copy.deepcopy(CONNECTOR)
    other["spec"]["scope"] = "groups email"
    assert validate(other)["spec"]["scope"] == ["openid", "groups", "email"]


def test_client_secret_is_hidden_unless_asked_for():
    res = validate(CONNECTOR)
    assert "client_secret" not in redact(res)["spec"]
    assert "s3cret-value" not in render([res], "yaml") and "s3cret-value" not in render([res], "json")
    assert "s3cret-value" in render([res], "yaml", with_secrets=True)
    assert "corp" in render([res], "text") and "s3cret-value" not in render([res], "text")


@pytest.mark.parametrize("field, value, fragment", [
    ("issuer_url", "http://idp.example.com", 'spec.issuer_url "http://idp.example.com" must use https://'),
    ("issuer_url", "idp.example.com", 'must use https://'),
    ("issuer_url", "https://idp.example.com/?x=1", "must be a plain URL with a host and no query"),
    ("redirect_url", "https://root.example.com/callback", "must be the root proxy's callback, ending in "
                                                          "/webapi/oidc/callback"),
    ("redirect_url", "http://127.0.0.1:3080/webapi/oidc/callback", "must use https://"),
    ("client_id", "", "spec.client_id is empty"),
    ("client_secret", None, "spec.client_secret is missing"),
    ("claims_to_roles", None, "spec.claims_to_roles must list at least one {claim, value, roles} entry"),
    ("claims_to_roles", [{"claim": "groups", "value": "^(x$", "roles": ["a"]}],
     'spec.claims_to_roles entry 1 (claim "groups") value "^(x$" is not a valid RE2 regular expression'),
    ("claims_to_roles", [{"name": "groups", "value": "x", "roles": ["a"]}],
     'spec.claims_to_roles entry 1 has unknown key "name" (the claim is named by "claim")'),
    ("claims_to_roles", [{"claim": "groups", "value": "x", "roles": []}],
     'spec.claims_to_roles entry 1 (claim "groups") needs "roles"'),
    ("claims_to_roles", [{"claim": "groups", "value": "x", "roles": ["bad role"]}],
     'role "bad role" is not valid'),
    ("scope", {"a": 1}, "spec.scope must be a list of strings"),
    ("redirect_urls", ["x"], 'unknown field "spec.redirect_urls"; give the root proxy\'s callback as redirect_url'),
])
def test_connector_errors(field, value, fragment):
    res = copy.deepcopy(CONNECTOR)
    res["spec"][field] = value
    message = raised_message(validate, res)
    assert message.startswith('oidc "corp": ') and fragment in message, message


def test_connector_from_yaml():
    text = """
kind: oidc
version: v3
metadata:
  name: corp
spec:
  issuer_url: http://127.0.0.1:9000
  client_id: gatehouse
  client_secret: gatehouse-test-secret
  redirect_url: https://127.0.0.1:3080/webapi/oidc/callback
  scope: [openid, email, profile, groups]
  claims_to_roles:
    - {claim: groups, value: admins, roles: [access]}
"""
    (res,) = parse_documents(text, "oidc.yaml")
    assert res["spec"]["issuer_url"] == "http://127.0.0.1:9000"  # plain http only on loopback
    with pytest.raises(BadParameter):
        parse_documents(text.replace("client_secret: gatehouse-test-secret\n", ""), "oidc.yaml")


@pytest.mark.parametrize("url, ok", [
    ("http://127.0.0.1:51234/callback", True), ("http://[::1]:51234/callback", True),
    ("http://127.0.0.1/callback", False), ("https://127.0.0.1:51234/callback", False),
    ("http://localhost:51234/callback", False), ("http://127.0.0.2:51234/callback", False),
    ("http://evil.example.com:51234/callback", False), ("http://user@127.0.0.1:51234/callback", False),
    ("http://127.0.0.1:51234/callback?x=1", False), ("http://127.0.0.1:51234/callback#f", False),
    ("http://127.0.0.1:51234/call\nback", False), ("http://127.0.0.1:99999/callback", False), (None, False),
])
def test_client_redirects_must_be_loopback(url, ok):
    from gatehouse.wire import is_loopback_redirect
    assert is_loopback_redirect(url) is ok
