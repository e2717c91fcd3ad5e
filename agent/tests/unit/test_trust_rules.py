"""Pure rules behind the trust defences of issue 13: leaf names, CA keys, dial addresses,
heartbeat intervals, token binding and root announcements (the attacks themselves run
against real processes in agent/tests/attacks/test_attacks_trust.py)."""

from __future__ import annotations

import pytest

from gatehouse import pki
from gatehouse.auth import handshake
from gatehouse.auth.tokens import check_leaf_name_binding, check_token_admits_leaf
from gatehouse.errors import AccessDenied, BadParameter, TrustError
from gatehouse.resources import is_name_suffix, validate, validate_dial_addr, validate_leaf_name
from gatehouse.wire import heartbeat_interval, is_live

KEY = pki.new_ssh_key(comment="some cluster host CA")


# -------------------------------------------------------------------- leaf names
@pytest.mark.parametrize("name", ["leaf.example.com", "site-1.clients.example", "a_b.c", "x.y"])
def test_valid_leaf_names(name):
    assert validate_leaf_name(name) == name


@pytest.mark.parametrize("name, fragment", [
    ("com", "is a single label"),
    ("leaf", "is a single label"),
    ("a..b", "is not a DNS-style name"),
    ("a.-b", "is not a DNS-style name"),
    ("a.b-", "is not a DNS-style name"),
    ("x" * 64 + ".com", "is not a DNS-style name"),
    ("10.0.0.1", "ends in a number"),
    ("host.42", "ends in a number"),
    ("-a.b", "is not valid"),
    ("a b.c", "is not valid"),
])
def test_invalid_leaf_names(name, fragment):
    with pytest.raises(BadParameter) as info:
        validate_leaf_name(name)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_name_suffix_is_label_wise_and_case_blind():
    assert is_name_suffix("example.com", "root.example.com")
    assert is_name_suffix("Example.COM", "root.example.com.")
    assert is_name_suffix("leaf.test", "leaf.test")
    assert not is_name_suffix("ample.com", "root.example.com")
    assert not is_name_suffix("", "root.example.com")


@pytest.mark.parametrize("leaf, hosts, others, fragment", [
    ("example.com", [], [], 'overlaps the root cluster\'s name "root.example.com"'),
    ("a.root.example.com", [], [], "overlaps the root cluster's name"),
    ("gate.test", ["proxy.gate.test"], [], 'is a suffix of the root proxy address "proxy.gate.test"'),
    ("x.leaf.test", [], ["leaf.test"], "overlaps the name of another cluster the root knows"),
    ("leaf.test", [], ["x.leaf.test"], "overlaps the name of another cluster the root knows"),
    ("com", [], [], "is a single label"),
])
def test_leaf_name_conflicts(leaf, hosts, others, fragment):
    with pytest.raises(TrustError) as info:
        handshake.check_leaf_name(leaf, "root.example.com", hosts, others)
    assert fragment in str(info.value)


def test_leaf_name_without_conflicts():
    handshake.check_leaf_name("leaf.example.org", "root.example.com", ["127.0.0.1", "proxy.example.com"],
                              ["other.example.org", "leaf.example.org"])


# -------------------------------------------------------------------- token binding
def test_leaf_name_binding():
    assert check_leaf_name_binding(["trusted_cluster"], "") == ""
    assert check_leaf_name_binding(["trusted_cluster"], "leaf.example") == "leaf.example"
    with pytest.raises(BadParameter, match="applies to trusted_cluster tokens only"):
        check_leaf_name_binding(["trusted_cluster", "node"], "leaf.example")
    with pytest.raises(BadParameter, match='--leaf-name "com" is a single label'):
        check_leaf_name_binding(["trusted_cluster"], "com")
    check_token_admits_leaf({"name": "t"}, "any.example")
    check_token_admits_leaf({"leaf_name": "leaf.example"}, "LEAF.example")
    with pytest.raises(AccessDenied, match='admits only the leaf cluster "leaf.example", not "other.example"'):
        check_token_admits_leaf({"leaf_name": "leaf.example"}, "other.example")


def test_token_resource_takes_a_leaf_name_for_trusted_cluster_tokens_only():
    res = {"kind": "token", "metadata": {"name": "t1"},
           "spec": {"roles": ["trusted_cluster"], "token": "s" * 20, "leaf_name": "leaf.example"}}
    assert validate(res)["spec"]["leaf_name"] == "leaf.example"
    with pytest.raises(BadParameter, match="spec.leaf_name applies to trusted_cluster tokens only"):
        validate({**res, "spec": {**res["spec"], "roles": ["node"]}})
    with pytest.raises(BadParameter, match="is a single label"):
        validate({**res, "spec": {**res["spec"], "leaf_name": "com"}})


# -------------------------------------------------------------------- CA keys
def test_ca_public_key_is_canonical():
    bare = " ".join(KEY.public_line.split()[:2])
    assert pki.ca_public_key(KEY.public_line) == bare
    assert pki.ca_public_key(f"  {bare}  a comment with spaces ") == bare


@pytest.mark.parametrize("line, fragment", [
    (None, "it is NoneType, not a public key line"),
    (["ssh-ed25519 AAAA"], "it is list"),
    ("", "is not in the form"),
    ("ssh-ed25519 AAAA", "does not contain valid base64 key data"),
    ("ssh-rsa " + KEY.public_line.split()[1], "says 'ssh-rsa' but its data is 'ssh-ed25519'"),
    (KEY.public_line + "\n" + KEY.public_line, "not one line of printable text"),
    ("A" * 5000, "more than 1024"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAAQE=", "is 1 bytes long, not 32"),
])
def test_ca_public_key_refuses_what_is_not_one_key(line, fragment):
    with pytest.raises(BadParameter) as info:
        pki.ca_public_key(line)
    assert fragment in str(info.value)


# -------------------------------------------------------------------- addresses and intervals
@pytest.mark.parametrize("addr", ["127.0.0.1:3024", "[::1]:3024", "root.example.com:3024", "lb:1"])
def test_dial_addresses(addr):
    assert validate_dial_addr(addr, "tunnel_addr") == addr


@pytest.mark.parametrize("addr", [None, 3024, "", "host", "host:0", "host:65536", "::1:3024", "[1.2.3.4]:3",
                                  "a b:1", "a..b:1", "-a:1", "h:1\n", "x" * 300 + ":1", "h:+1"])
def test_bad_dial_addresses(addr):
    with pytest.raises(BadParameter, match="^tunnel_addr "):
        validate_dial_addr(addr, "tunnel_addr")


@pytest.mark.parametrize("value, expected", [
    (3, 3.0), ("2.5", 2.5), (0.5, 0.5), (300, 300.0),
    (0.4, None), (301, None), (1e12, None), (float("nan"), None), (float("inf"), None), ("soon", None),
    (None, None), (True, None), ([3], None), ("1e999", None),
])
def test_heartbeat_interval_bounds(value, expected):
    assert heartbeat_interval(value) == expected


def test_liveness_counts_an_out_of_range_interval_as_the_maximum():
    assert is_live(0.0, 1e12, now=900.0)
    assert not is_live(0.0, 1e12, now=901.0)
