"""The trust handshake's pure checks and error messages (no network)."""

from __future__ import annotations

import ssl

import pytest

from gatehouse import __version__
from gatehouse import rootclient
from gatehouse.auth import handshake
from gatehouse.resources import tunnel_dial_addr
from gatehouse.wire import connection_status
from gatehouse.errors import BadParameter, TLSProblem, TrustError

CA = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAbcdefghijklmnopqrstuvwxyz0123456789ABCDEF leaf host CA"


def request(**change) -> dict:
    body = {"token": "t" * 32, "cluster_name": "leaf.example", "expected_root": "root.example",
            "host_cas": [CA], "version": __version__}
    body.update(change)
    return body


def test_valid_request_returns_leaf_and_ca():
    assert handshake.check_request(request(), "root.example") == ("leaf.example", CA)


@pytest.mark.parametrize("change, message", [
    ({"cluster_name": ""}, "names no leaf cluster"),
    ({"host_cas": []}, "exactly one host certificate authority, got 0"),
    ({"host_cas": [CA, CA]}, "exactly one host certificate authority, got 2"),
    ({"host_cas": None}, "exactly one host certificate authority, got none"),
    ({"host_cas": [""]}, "exactly one host certificate authority"),
    ({"cluster_name": "root.example"}, 'same name as the root ("root.example")'),
    ({"expected_root": "other.example"}, 'named "other.example" but the root cluster is called "root.example"'),
    ({"version": "99.0.0"}, "newer than the root"),
    ({"version": "abc"}, 'version "abc" is not a valid version'),
])
def test_request_errors(change, message):
    with pytest.raises((TrustError, BadParameter)) as info:
        handshake.check_request(request(**change), "root.example")
    assert message in str(info.value)


@pytest.mark.parametrize("root, leaf, ok", [
    ("5.2.0", "5.0.1", True), ("5.0.0", "4.9.9", True), ("5.0.0", "3.9.0", False),
    ("5.0.0", "6.0.0", False), ("v2.1.0", "v1.0.0", True),
])
def test_version_rule(root, leaf, ok):
    if ok:
        handshake.check_version(root, leaf)
    else:
        with pytest.raises(TrustError):
            handshake.check_version(root, leaf)


class _CertError(ssl.SSLCertVerificationError):
    def __init__(self, code, message):
        super().__init__(message)
        self.verify_code = code
        self.verify_message = message


@pytest.mark.parametrize("code, text, cause", [
    (18, "self-signed certificate", "self-signed"),
    (19, "self-signed certificate in certificate chain", "self-signed"),
    (62, "Hostname mismatch, certificate is not valid for 'root.example'", "not valid for root.example"),
    (10, "certificate has expired", "has expired"),
    (20, "unable to get local issuer certificate", "unable to get local issuer certificate"),
])
def test_tls_errors_name_the_cause(code, text, cause):
    err = rootclient.tls_error("root.example:3080", _CertError(code, text))
    assert isinstance(err, TLSProblem)
    assert str(err).startswith("the trusted cluster uses misconfigured HTTP/TLS certificate: ")
    assert cause in str(err) and "--insecure" in str(err)


def test_insecure_context_skips_verification_and_default_verifies():
    assert rootclient.client_ssl_context(False).verify_mode == ssl.CERT_REQUIRED
    ctx = rootclient.client_ssl_context(True)
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname


def test_connection_status_uses_three_missed_heartbeats():
    now = 1000.0
    assert connection_status([], now) == ("offline", 0.0)
    fresh = {"connected": True, "last_heartbeat": now - 14, "interval": 5.0}
    stale = {"connected": True, "last_heartbeat": now - 16, "interval": 5.0}
    closed = {"connected": False, "last_heartbeat": now - 1, "interval": 5.0}
    assert connection_status([fresh], now) == ("online", now - 14)
    assert connection_status([stale], now)[0] == "offline"
    assert connection_status([closed], now) == ("offline", now - 1)
    assert connection_status([stale, fresh, closed], now) == ("online", now - 1)  # newest beat wins


def test_tunnel_dial_addr():
    tc = {"spec": {"tunnel_addr": "root:3080", "web_proxy_addr": "root:3080"}, "discovered_tunnel_addr": "root:3024"}
    assert tunnel_dial_addr(tc) == "root:3024"
    tc["spec"]["tunnel_addr"] = "lb:4024"
    assert tunnel_dial_addr(tc) == "lb:4024"
    assert tunnel_dial_addr({"spec": {"tunnel_addr": "", "web_proxy_addr": "r:3080"}}) == "r:3080"
