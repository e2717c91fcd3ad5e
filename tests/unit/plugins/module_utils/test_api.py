# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The API client's connection settings and error messages (module_utils/api.py).

Requests against the real agent are covered by tests/integration; here the pieces
that need no agent: where the identity comes from, URL handling, how the agent's error
bodies and transport failures become one sentence, and a refused connection on a real
closed loopback port.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import json
import shutil
import socket
import ssl
import subprocess
from urllib.error import URLError

import pytest

from ansible_collections.gatehouse.clusters.plugins.module_utils import api


def write(path, text):
    with open(path, "w") as fh:
        fh.write(text)
    return str(path)


@pytest.fixture
def identity(tmp_path):
    """A data dir with admin/identity.crt, identity.key, ca.crt (self-signed, from openssl) and auth_addr."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    admin = tmp_path / "admin"
    admin.mkdir()
    subprocess.check_call(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                           "-nodes", "-keyout", str(admin / "identity.key"), "-out", str(admin / "identity.crt"),
                           "-subj", "/CN=admin/O=unit.test/OU=admin", "-days", "1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.copy(str(admin / "identity.crt"), str(admin / "ca.crt"))
    return tmp_path


def closed_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_argument_spec():
    spec = api.api_argument_spec()
    assert set(spec) == {"data_dir", "api_url", "client_cert", "client_key", "ca_cert", "timeout"}
    assert spec["data_dir"]["default"] == "/var/lib/gatehouse"
    assert spec["client_key"]["no_log"] is False  # a path, not a secret
    assert spec["timeout"] == {"type": "int", "default": 30}


def test_connection_defaults_to_the_local_admin_identity():
    conn = api.Connection.from_params({"data_dir": "/srv/gh"})
    assert conn.identity_dir == "/srv/gh/admin"
    assert (conn.client_cert, conn.client_key, conn.ca_cert) == (
        "/srv/gh/admin/identity.crt", "/srv/gh/admin/identity.key", "/srv/gh/admin/ca.crt")
    assert conn.timeout == 30
    conn = api.Connection.from_params({"data_dir": None, "client_cert": "/c", "client_key": "/k", "ca_cert": "/ca",
                                       "timeout": 5})
    assert conn.identity_dir == "/var/lib/gatehouse/admin"
    assert (conn.client_cert, conn.client_key, conn.ca_cert, conn.timeout) == ("/c", "/k", "/ca", 5)


def test_base_url_from_auth_addr_or_api_url(tmp_path):
    (tmp_path / "admin").mkdir()
    write(tmp_path / "admin" / "auth_addr", "127.0.0.1:3025\n")
    assert api.Connection(data_dir=str(tmp_path)).base_url == "https://127.0.0.1:3025"
    assert api.Connection(data_dir=str(tmp_path), api_url="https://auth.example.com:3025/").base_url == \
        "https://auth.example.com:3025"
    # An auth server of an HA root lists its peers after its own address: the modules use its own.
    write(tmp_path / "admin" / "auth_addr", "127.0.0.1:3025\n198.18.0.12:3025\n")
    assert api.Connection(data_dir=str(tmp_path)).base_url == "https://127.0.0.1:3025"
    write(tmp_path / "admin" / "auth_addr", "\n")
    with pytest.raises(api.GatehouseAPIError, match="auth_addr is empty"):
        api.Connection(data_dir=str(tmp_path)).base_url  # pylint: disable=expression-not-assigned


@pytest.mark.parametrize("value, url", [
    ("auth.example.com:3025", "https://auth.example.com:3025"),
    ("https://10.0.0.1:3025/", "https://10.0.0.1:3025"),
    ("HTTPS://[::1]:3025", "https://[::1]:3025"),
])
def test_normalize_api_url(value, url):
    assert api.normalize_api_url(value) == url


@pytest.mark.parametrize("value, message", [
    ("http://auth:3025", "must use https://"),
    ("https://auth:3025/v1", "without a path"),
    ("https://", "without a path"),
])
def test_normalize_api_url_errors(value, message):
    with pytest.raises(api.GatehouseAPIError, match=message):
        api.normalize_api_url(value)


def test_missing_identity_names_the_fix(tmp_path):
    conn = api.Connection(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(api.GatehouseAPIError) as err:
        conn.check_files()
    assert str(err.value) == (
        "the Gatehouse admin identity file %s/nowhere/admin/identity.crt does not exist; run this task on the auth "
        "server (the agent writes %s/nowhere/admin when its auth service starts) or set data_dir to its data "
        "directory, or set api_url, client_cert, client_key and ca_cert" % (tmp_path, tmp_path))
    with pytest.raises(api.GatehouseAPIError, match="^the file /no/such.crt does not exist; check the path$"):
        api.Connection(client_cert="/no/such.crt").check_files()


def test_unreadable_identity_names_the_fix(tmp_path, monkeypatch):
    path = write(tmp_path / "identity.crt", "x")

    def denied(*args, **kwargs):
        raise IOError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(api, "open", denied, raising=False)
    with pytest.raises(api.GatehouseAPIError) as err:
        api.Connection(client_cert=path).check_files()
    assert str(err.value) == ("cannot read %s: permission denied; run the task as root (become: true) or as the "
                              "user that owns the Gatehouse data directory" % path)


def test_a_directory_is_not_an_identity(tmp_path):
    with pytest.raises(api.GatehouseAPIError, match="^cannot read %s: " % tmp_path):
        api.Connection(client_cert=str(tmp_path)).check_files()


def test_agent_errors_are_passed_on_verbatim():
    body = json.dumps({"error": {"code": "bad_parameter", "message": 'role "x": spec.allow.logins[0] is bad'}})
    err = api._api_error(400, body.encode())
    assert (str(err), err.status, err.code) == ('role "x": spec.allow.logins[0] is bad', 400, "bad_parameter")
    with pytest.raises(api.GatehouseAPIError) as raised:
        api._decode(404, json.dumps({"error": {"code": "not_found", "message": "gone"}}).encode())
    assert (str(raised.value), raised.value.status) == ("gone", 404)


def test_unexpected_bodies():
    assert "without an error message" in str(api._api_error(502, b"<html>bad gateway</html>"))
    with pytest.raises(api.GatehouseAPIError, match="not a JSON object"):
        api._decode(200, b"[]")
    assert api._decode(200, b"") == {}
    assert api._decode(200, b'{"items": []}') == {"items": []}


@pytest.mark.parametrize("exc, message", [
    (URLError(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")),
     "cannot reach the Gatehouse auth API at https://h:1: connection refused; is the agent running?"),
    (URLError(socket.timeout("timed out")),
     "the Gatehouse auth API at https://h:1 did not answer within 7 seconds; check that the agent is healthy or "
     "raise timeout"),
    (socket.gaierror(-2, "Name or service not known"),
     "cannot reach the Gatehouse auth API at https://h:1: the host name does not resolve (Name or service not "
     "known); check api_url or auth_addr"),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
     "the Gatehouse auth API at https://h:1 closed the connection without answering (Connection reset by peer); "
     "it does this when the client certificate /c is not issued by its cluster's CA, so check client_cert and "
     "client_key (or the agent's log)"),
    (URLError(OSError(errno.EHOSTUNREACH, "No route to host")),
     "cannot reach the Gatehouse auth API at https://h:1: No route to host; is the agent running and the address "
     "right?"),
])
def test_transport_errors_name_the_cause(exc, message):
    client = api.GatehouseClient(api.Connection(api_url="https://h:1", client_cert="/c", ca_cert="/ca", timeout=7))
    assert str(client._transport_error(exc)) == message


def test_tls_errors_name_the_cause():
    client = api.GatehouseClient(api.Connection(api_url="https://h:1", client_cert="/c", ca_cert="/ca"))
    verify = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    verify.verify_message = "self-signed certificate in certificate chain"
    err = client._transport_error(URLError(verify))
    assert str(err) == ("TLS handshake with the Gatehouse auth API at https://h:1 failed: the server's certificate "
                        "is not issued by /ca (self-signed certificate in certificate chain); set ca_cert to the CA "
                        "of the cluster that api_url points at")
    assert err.code == "tls_problem"
    alert = ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca")
    alert.reason = "TLSV1_ALERT_UNKNOWN_CA"
    assert str(client._transport_error(alert)) == (
        "TLS handshake with the Gatehouse auth API at https://h:1 failed: the server refused the client certificate "
        "/c (tlsv1 alert unknown ca); use an identity issued by that cluster's CA")


def test_refused_connection_on_a_real_closed_port(identity):
    port = closed_port()
    client = api.GatehouseClient(api.Connection(data_dir=str(identity), api_url="127.0.0.1:%d" % port, timeout=5))
    with pytest.raises(api.GatehouseAPIError) as err:
        client.status()
    assert str(err.value) == ("cannot reach the Gatehouse auth API at https://127.0.0.1:%d: connection refused; "
                              "is the agent running?" % port)


def test_client_pins_the_ca_and_ignores_the_environment(identity, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/bundle.pem")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    client = api.GatehouseClient(api.Connection(data_dir=str(identity), api_url="127.0.0.1:1"))
    request = client._make_request()
    context = request.context
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is False
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "admin"),), (("organizationName", "unit.test"),), (("organizationalUnitName", "admin"),))]
    assert request.use_proxy is False


def test_mismatched_key_is_named(identity, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    subprocess.check_call(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out",
                           str(other / "k.pem")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    conn = api.Connection(data_dir=str(identity), client_key=str(other / "k.pem"), api_url="127.0.0.1:1")
    with pytest.raises(api.GatehouseAPIError, match="cannot load the client certificate .* check that the files "
                                                    "belong together"):
        api.GatehouseClient(conn)._make_request()


def test_not_found_is_none_for_reads(identity, monkeypatch):
    client = api.GatehouseClient(api.Connection(data_dir=str(identity), api_url="127.0.0.1:1"))

    def not_found(method, path, body=None):
        raise api.GatehouseAPIError('role "x" not found', status=404, code="not_found")

    monkeypatch.setattr(client, "call", not_found)
    assert client.get_resource("role", "x") is None
    assert client.delete_resource("role", "x") is False
    assert client.delete_token("x") is False


def test_a_changed_secret_is_marked_without_its_value():
    from ansible_collections.gatehouse.clusters.plugins.module_utils.api import mark_secret_changed, secret_fields
    shown = {"kind": "oidc", "spec": {"client_id": "gh"}}
    request = {"kind": "oidc", "spec": {"client_id": "gh", "client_secret": "new-secret"}}
    assert secret_fields(request, shown) == ["client_secret"]
    result_diff = {"before": {"kind": "oidc", "spec": {"client_id": "gh"}}, "after": dict(shown)}
    mark_secret_changed(result_diff, ["client_secret"])
    assert result_diff["before"]["spec"]["client_secret"] == "(secret)"
    assert result_diff["after"]["spec"]["client_secret"] == "(secret, changed)"
    assert "new-secret" not in repr(result_diff)
