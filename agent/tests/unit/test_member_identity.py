"""Pure rules behind member identities: certificate kinds, approved principals, pins, renewal times."""

from __future__ import annotations

import json
import time

import pytest

from gatehouse import pki
from gatehouse.auth.members import member_principals
from gatehouse.auth.tokens import validate_principals
from gatehouse.errors import BadParameter
from gatehouse.identity import PeerKindError, check_peer_kind
from gatehouse.member.join import normal_pin
from gatehouse.member.renew import MIN_DELAY, renew_delay

CA = pki.new_ssh_key()
KEY = pki.new_ssh_key()


def host_cert(key_id: str, kind: str | None = None, cert_type: str = "host") -> pki.SSHCertInfo:
    now = int(time.time())
    ext = {"gatehouse-kind@gatehouse": json.dumps(kind)} if kind is not None else {}
    return pki.parse_ssh_cert(pki.sign_ssh_cert(CA.private_openssh, KEY.public_line, cert_type=cert_type,
                                                key_id=key_id, principals=["x"], valid_after=now - 60,
                                                valid_before=now + 60, extensions=ext))


@pytest.mark.parametrize("key_id, kind, cert_type, expected", [
    ("proxy:p1", "proxy", "host", "proxy"),
    ("proxy:p1", None, "host", "proxy"),        # issued by an older auth: the key id alone
    ("node:n1", "node", "host", "node"),
    ("proxy:p1", "node", "host", ""),           # key id and extension disagree
    ("node:n1", "proxy", "host", ""),
    ("proxy:", "proxy", "host", ""),
    ("p1", None, "host", ""),
    ("admin:a", None, "host", ""),
    ("proxy:p1", "proxy", "user", ""),
])
def test_member_kind_of_host_certificates(key_id, kind, cert_type, expected):
    info = host_cert(key_id, kind, cert_type)
    assert info.member_kind == expected
    assert info.member_name == (key_id.partition(":")[2] if expected else "")


def test_member_principals_are_auth_s_choice():
    assert member_principals("node", "web1", "c.test", "10.0.0.7", ["web1.example.com", "gatehouse-tunnel"]) == \
        ["web1", "web1.c.test", "10.0.0.7", "web1.example.com"]
    assert member_principals("node", "web1", "c.test", "not-an-ip") == ["web1", "web1.c.test"]


def test_approved_principals():
    assert validate_principals("b.example.com, 10.0.0.1,,a.example.com") == ["10.0.0.1", "a.example.com",
                                                                              "b.example.com"]
    for bad in ("gatehouse-tunnel", "*.example.com", "x.gatehouse.invalid", "-gatehouse-nologin-", "a b"):
        with pytest.raises(BadParameter, match="cannot be approved as a member principal"):
            validate_principals([bad])
    with pytest.raises(BadParameter, match="at most 32 principals"):
        validate_principals([f"h{i}.example.com" for i in range(33)])


def test_peer_kind_check():
    cert = {"subject": ((("organizationName", "c.test"),), (("organizationalUnitName", "node"),),
                        (("commonName", "n1"),))}
    check_peer_kind({**cert, "subject": cert["subject"][:1] + ((("organizationalUnitName", "auth"),),)}, "auth")
    with pytest.raises(PeerKindError) as info:
        check_peer_kind(cert, "auth")
    assert str(info.value).startswith('the server is node "n1" of cluster "c.test", not the auth service it must be')


def test_pins_compare_as_people_write_them():
    assert normal_pin("SHA256:AB:cd") == normal_pin("sha256:abcd") == normal_pin(" abcd ")


def test_renewal_at_half_of_what_is_left():
    assert renew_delay(1000.0, now=0.0) == 500.0
    assert renew_delay(1.0, now=0.0) == MIN_DELAY
