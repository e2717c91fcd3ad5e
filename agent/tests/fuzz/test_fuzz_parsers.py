"""Fuzz every parser that takes input from the network or from files (hypothesis, bounded).

The property is the same everywhere: any input either parses or is refused with a
Gatehouse error whose message is one sentence on one line; nothing else escapes, and
nothing hangs (each example runs under a hard time bound). Examples are derandomised so
CI is repeatable; set GATEHOUSE_FUZZ_EXAMPLES to search longer by hand.
"""

from __future__ import annotations

import json
import os
import signal
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatehouse import claims, config, durations, labels, pki, resources, rolemap, traits, wire
from gatehouse.errors import GatehouseError

EXAMPLES = int(os.environ.get("GATEHOUSE_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PER_EXAMPLE_SECONDS = 5

# JSON-like values: what an API body, a YAML document or a tunnel message can hold.
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 63, 2 ** 63), st.floats(allow_nan=True),
                    st.text(max_size=40))
json_values = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=5), st.dictionaries(st.text(max_size=12), children, max_size=5)), max_leaves=25)
# Text that looks like what the parsers expect, with their special characters made likely.
template_text = st.text(alphabet=string.ascii_letters + string.digits + "{}().\"',_-*$^ <>@\\[]|", max_size=60)


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"a parser ran for more than {PER_EXAMPLE_SECONDS}s on one input")


def refused_or_parsed(func, *args, **kwargs):
    """Run FUNC; a GatehouseError must be one line; any other exception (or a hang) fails the test."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(PER_EXAMPLE_SECONDS)
    try:
        return func(*args, **kwargs)
    except GatehouseError as exc:
        assert str(exc) and "\n" not in str(exc), repr(str(exc))
        return None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def resource_like():
    kinds = st.sampled_from(["role", "user", "token", "trusted_cluster", "remote_cluster", "oidc", "node", "rc", "x"])
    return st.fixed_dictionaries({"kind": kinds}, optional={
        "version": st.one_of(st.sampled_from(["v2", "v3", "v5", "v9"]), scalars),
        "metadata": st.one_of(st.fixed_dictionaries({"name": st.one_of(st.text(max_size=20), scalars)},
                                                    optional={"labels": json_values, "expires": scalars,
                                                              "description": scalars}), json_values),
        "spec": json_values, "status": json_values})


@FUZZ
@given(st.one_of(resource_like(), json_values))
def test_resources_validate(value):
    out = refused_or_parsed(resources.validate, value)
    if out is not None:
        assert resources.validate(out) == out  # normalising twice gives the same result
        json.dumps(out)                          # and it is storable


@FUZZ
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300),
                 resource_like().map(lambda r: json.dumps(r, default=str))))
def test_resource_files(text):
    refused_or_parsed(resources.parse_documents, text, "fuzz.yaml")


@FUZZ
@given(json_values)
def test_config(raw):
    refused_or_parsed(config.parse, raw, "fuzz.yaml")


@FUZZ
@given(st.one_of(scalars, st.text(alphabet="0123456789hms.-+d ", max_size=20)))
def test_durations(value):
    refused_or_parsed(durations.parse_duration, value, "ttl")


@FUZZ
@given(template_text, st.dictionaries(st.sampled_from(["logins", "groups", "email", "x"]),
                                      st.lists(st.text(max_size=20), max_size=3), max_size=3))
def test_trait_templates(expression, user_traits):
    refused_or_parsed(traits.interpolate, expression, user_traits)
    refused_or_parsed(traits.apply_traits_to_labels, {expression: [expression]}, user_traits)


@FUZZ
@given(st.one_of(json_values, st.lists(st.fixed_dictionaries(
    {"remote": st.one_of(template_text, scalars), "local": st.one_of(template_text, st.lists(template_text,
                                                                                          max_size=3), scalars)}),
    max_size=4)), st.lists(st.text(max_size=20), max_size=4))
def test_role_maps(role_map, remote_roles):
    valid = refused_or_parsed(rolemap.validate_role_map, role_map)
    if valid is not None:
        refused_or_parsed(rolemap.map_roles, valid, remote_roles)


@FUZZ
@given(st.one_of(json_values, st.dictionaries(template_text, st.one_of(template_text, st.lists(template_text,
                                                                                              max_size=3)),
                                                max_size=3)))
def test_label_selectors(selector):
    normalised = refused_or_parsed(labels.normalize_selector, selector)
    if normalised is not None:
        refused_or_parsed(lambda: labels.Selector(normalised).match({"env": "prod", "team": "*"}))


@FUZZ
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: "ssh-ed25519-cert-v01@openssh.com "
                                                                       + __import__("base64").b64encode(b).decode())))
def test_ssh_certificates(line):
    refused_or_parsed(pki.parse_ssh_cert, line)


def test_ssh_certificate_with_every_byte_flipped():
    """A real certificate with each byte changed in turn is parsed or refused, never anything else."""
    ca, user = pki.new_ssh_key(), pki.new_ssh_key()
    cert = pki.sign_ssh_cert(ca.private_openssh, user.public_line, cert_type="user", key_id="alice",
                             principals=["alice"], valid_after=0, valid_before=2 ** 40,
                             extensions=pki.user_cert_extensions(["access"], {"logins": ["alice"]}, "c"))
    kind, blob = cert.split()[:2]
    raw = bytearray(__import__("base64").b64decode(blob))
    for i in range(0, len(raw), 3):
        mutated = bytearray(raw)
        mutated[i] ^= 0xFF
        refused_or_parsed(pki.parse_ssh_cert, f"{kind} {__import__('base64').b64encode(bytes(mutated)).decode()}")


@FUZZ
@given(st.text(max_size=80))
def test_proxy_subsystem_names(text):
    parsed = wire.parse_proxy_subsystem(text)
    if parsed is not None:
        host, port, cluster = parsed
        assert 0 <= port <= 99999 and host


@pytest.mark.parametrize("pem", ["", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "x" * 5000])
def test_tls_certificates(pem):
    refused_or_parsed(pki.tls_fingerprint, pem)


@FUZZ
@given(st.one_of(json_values, st.dictionaries(st.sampled_from(["sub", "email", "groups", "aud", "nonce", "a b", "x"]),
                                              st.one_of(template_text, st.lists(template_text, max_size=4), scalars),
                                              max_size=6)),
       st.lists(st.fixed_dictionaries({"claim": st.one_of(st.sampled_from(["groups", "email"]), scalars),
                                       "value": st.one_of(template_text, scalars),
                                       "roles": st.one_of(st.lists(template_text, max_size=3), scalars)}),
                max_size=3))
def test_identity_provider_claims(found, claims_to_roles):
    """What an identity provider sends (ID token claims, userinfo) and what a connector maps them with."""
    traits_ = refused_or_parsed(claims.claims_to_traits, found if isinstance(found, dict) else {"x": found})
    entries = refused_or_parsed(claims.validate_claims_to_roles, claims_to_roles)
    if traits_ is not None and entries is not None:
        refused_or_parsed(claims.map_claims, entries, traits_)
    if isinstance(found, dict):
        refused_or_parsed(claims.username, found, "email", "corp")


@FUZZ
@given(st.one_of(st.text(max_size=80), st.text(alphabet="http:/[]1270.:%@?#", max_size=40), scalars))
def test_client_redirects(url):
    """A client redirect gate sends (auth refuses any that is not loopback)."""
    if wire.is_loopback_redirect(url):
        assert url.startswith(("http://127.0.0.1:", "http://[::1]:"))


# --------------------------------------------------------------------------- the audit trail (issue 18)
@FUZZ
@given(st.dictionaries(st.sampled_from(["cluster", "user", "event", "session", "since", "until", "limit", "cursor",
                                        "x"]),
                       st.one_of(st.text(max_size=40), st.sampled_from(["1h", "-1h", "now", "2026-13-01T00:00:00Z",
                                                                        "1e309", "0", "session.*", "*", "99999"])),
                       max_size=5))
def test_audit_search_parameters(params):
    """`gatectl audit search` flags and the search API's query parameters."""
    from gatehouse import auditquery
    refused_or_parsed(auditquery.parse_query, params)
    refused_or_parsed(auditquery.parse_query, params, flags="--")


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.lists(st.one_of(st.text(max_size=40), json_values), max_size=6).map(
    lambda lines: "\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines).encode())),
       st.integers(1, 50))
def test_recordings_read_back(data, piece):
    """What `gate play` reads (a recording can be truncated or corrupt): it parses or names where it breaks."""
    from gatehouse.asciicast import CastDamaged, CastReader
    reader = CastReader()
    try:
        for i in range(0, len(data), piece):
            reader.feed(data[i:i + piece])
        reader.finish()
    except CastDamaged as exc:
        assert exc.line >= 1 and 0 <= exc.offset <= len(data) and "\n" not in str(exc)


@FUZZ
@given(st.one_of(json_values, st.text(max_size=200)))
def test_forwarded_events(value):
    """An event a leaf forwards (its text) or a member reports (its object)."""
    from gatehouse import auditchain
    try:
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
    except ValueError:   # not finite: no canonical text exists, so it can never be forwarded
        text = repr(value)
    refused_or_parsed(auditchain.record_from_text, "leaf.test", text)
    refused_or_parsed(auditchain.check_entry, value)
    assert isinstance(auditchain.fit(value if isinstance(value, dict) else {"x": value}, "c"), dict)


@FUZZ
@given(st.binary(max_size=200), st.text(alphabet="0123456789abcdef", min_size=32, max_size=32))
def test_session_answers(line, nonce):
    """The first line a node reads from a connection (a proxy's signed session answer, or anything)."""
    from gatehouse.member.session_header import HeaderRefused, HeaderVerifier, parse_ask
    parse_ask(line)

    class NoCluster:   # a verifier with nothing trusted: every answer must be refused, never crash
        cluster_name = "c"

        @staticmethod
        def host_ca(_line):
            return None

        @staticmethod
        def revoked_keys(_kind):
            return []
    for candidate in (line, b"GATEHOUSE-SESSION-1 " + line):
        try:
            HeaderVerifier(NoCluster(), "node1").verify(candidate, nonce)
            raise AssertionError("an answer was accepted without a trusted CA")
        except HeaderRefused as exc:
            assert str(exc) and "\n" not in str(exc)
