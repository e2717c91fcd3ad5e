"""gatehouse.pki, checked against the real tools: ssh-keygen, sshd/ssh, asyncssh, OpenSSL."""

from __future__ import annotations

import asyncio
import base64
import datetime
import getpass
import json
import os
import socket
import ssl
import stat
import subprocess
import time

import asyncssh
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gatehouse import pki, wire
from gatehouse.errors import BadParameter
from gatehouse.sshserver import CertAuthServer

NOW = int(time.time())


# ------------------------------------------------------------------ helpers

@pytest.fixture(scope="module", autouse=True)
def _now():
    """Certificates here live minutes: count from when this module's tests start, not from collection
    (a long suite can run them more than ten minutes after it imported this module)."""
    global NOW
    NOW = int(time.time())


@pytest.fixture(scope="module")
def user_ca():
    return pki.new_ssh_key(comment="test user CA")


@pytest.fixture(scope="module")
def host_ca():
    return pki.new_ssh_key(comment="test host CA")


@pytest.fixture(scope="module")
def alice():
    return pki.new_ssh_key(comment="alice@laptop")


def _user_cert(ca, key, principals=("alice", "root"), valid_after=None, valid_before=None, **kw):
    valid_after = NOW - 60 if valid_after is None else valid_after
    valid_before = NOW + 3600 if valid_before is None else valid_before
    ext = pki.user_cert_extensions(["access", "dev"], {"logins": ["alice", "root"], "team": ["ops"]},
                                   "root.example")
    return pki.sign_ssh_cert(ca.private_openssh, key.public_line, cert_type="user", key_id="alice",
                             principals=list(principals), valid_after=valid_after,
                             valid_before=valid_before, extensions=ext, **kw)


def _keygen_list(tmp_path, cert_line: str) -> str:
    path = tmp_path / "key-cert.pub"
    path.write_text(cert_line + "\n")
    out = subprocess.run(["ssh-keygen", "-L", "-f", str(path)], capture_output=True, text=True,
                         env={**os.environ, "TZ": "UTC"})
    assert out.returncode == 0, out.stderr
    return out.stdout


def _keygen_fingerprint(tmp_path, line: str) -> str:
    path = tmp_path / "fp.pub"
    path.write_text(line + "\n")
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


def _utc(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))


def _option_hex(value: str) -> str:
    # ssh-keygen -L prints unknown extensions as the hex of their data: string(value).
    raw = value.encode()
    return (len(raw).to_bytes(4, "big") + raw).hex()


def _tamper(cert_line: str, offset: int) -> str:
    kind, b64, *rest = cert_line.split()
    blob = bytearray(base64.b64decode(b64))
    blob[offset] ^= 0x01
    return " ".join([kind, base64.b64encode(bytes(blob)).decode(), *rest])


# ------------------------------------------------------------------ keys and fingerprints

def test_new_ssh_key_is_openssh_and_fingerprint_matches_ssh_keygen(tmp_path, alice):
    assert alice.private_openssh.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert alice.public_line.startswith("ssh-ed25519 AAAA") and alice.public_line.endswith(" alice@laptop")
    key_file = tmp_path / "id_ed25519"
    pki.write_secret(str(key_file), alice.private_openssh)
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(key_file)], capture_output=True, text=True,
                             check=True).stdout.split()[:2]
    assert derived == alice.public_line.split()[:2]
    assert pki.ssh_public_from_private(alice.private_openssh) == " ".join(derived)
    assert pki.ssh_fingerprint(alice.public_line) == _keygen_fingerprint(tmp_path, alice.public_line)
    assert pki.new_ssh_key().public_line.count(" ") == 1  # no trailing blank comment


def test_fingerprint_of_a_certificate_is_that_of_its_key(tmp_path, user_ca, alice):
    cert = _user_cert(user_ca, alice)
    expected = pki.ssh_fingerprint(alice.public_line)
    assert pki.ssh_fingerprint(cert) == _keygen_fingerprint(tmp_path, cert) == expected


def test_fingerprint_rejects_garbage():
    truncated_cert = "ssh-ed25519-cert-v01@openssh.com " + base64.b64encode(
        b"\0\0\0\x20ssh-ed25519-cert-v01@openssh.com\0\0").decode()
    for line in (truncated_cert, "", "ssh-ed25519", "ssh-ed25519 !!!notbase64", "ssh-rsa " + "AAAAC3NzaC1lZDI1NTE5AAAAIA=="):
        with pytest.raises(BadParameter):
            pki.ssh_fingerprint(line)


# ------------------------------------------------------------------ certificates vs ssh-keygen

def test_user_cert_prints_correctly_in_ssh_keygen(tmp_path, user_ca, alice):
    cert = _user_cert(user_ca, alice, serial=4242, critical_options={"force-command": "/bin/true"})
    assert cert.startswith("ssh-ed25519-cert-v01@openssh.com AAAA") and cert.endswith(" alice")
    out = _keygen_list(tmp_path, cert)
    assert "Type: ssh-ed25519-cert-v01@openssh.com user certificate" in out
    assert f"Signing CA: ED25519 {pki.ssh_fingerprint(user_ca.public_line)} (using ssh-ed25519)" in out
    assert f"Public key: ED25519-CERT {pki.ssh_fingerprint(alice.public_line)}" in out
    assert 'Key ID: "alice"' in out and "Serial: 4242" in out
    assert f"Valid: from {_utc(NOW - 60)} to {_utc(NOW + 3600)}" in out
    principals = out.split("Principals:")[1].split("Critical Options:")[0].split()
    assert principals == ["alice", "root"]
    assert "force-command /bin/true" in out
    extensions = [line.strip() for line in out.split("Extensions:")[1].strip().splitlines()]
    cluster, roles = json.dumps("root.example"), '["access","dev"]'
    traits = '{"logins":["alice","root"],"team":["ops"]}'
    assert extensions == [  # sorted by name, custom values are the JSON strings
        f"gatehouse-cluster@gatehouse UNKNOWN OPTION: {_option_hex(cluster)} (len {len(cluster) + 4})",
        f"gatehouse-roles@gatehouse UNKNOWN OPTION: {_option_hex(roles)} (len {len(roles) + 4})",
        f"gatehouse-traits@gatehouse UNKNOWN OPTION: {_option_hex(traits)} (len {len(traits) + 4})",
        "permit-agent-forwarding", "permit-port-forwarding", "permit-pty",
    ]


def test_host_cert_prints_correctly_in_ssh_keygen(tmp_path, host_ca):
    host = pki.new_ssh_key()
    cert = pki.sign_ssh_cert(host_ca.private_openssh, host.public_line, cert_type="host", key_id="node:n1",
                             principals=["n1", "n1.root.example", "127.0.0.1"],
                             valid_after=NOW - 60, valid_before=NOW + 600)
    out = _keygen_list(tmp_path, cert)
    assert "ssh-ed25519-cert-v01@openssh.com host certificate" in out
    assert out.split("Principals:")[1].split("Critical Options:")[0].split() == ["n1", "n1.root.example",
                                                                                "127.0.0.1"]
    assert "Critical Options: (none)" in out and out.rstrip().endswith("Extensions: (none)")


def test_ssh_keygen_rejects_a_tampered_cert(tmp_path, user_ca, alice):
    bad = _tamper(_user_cert(user_ca, alice), 120)
    path = tmp_path / "bad-cert.pub"
    path.write_text(bad + "\n")
    assert subprocess.run(["ssh-keygen", "-L", "-f", str(path)], capture_output=True).returncode != 0


def test_user_cert_extensions_flags():
    ext = pki.user_cert_extensions(["r"], {}, "c", permit_pty=False, permit_port_forwarding=False,
                                   permit_agent_forwarding=False, permit_x11_forwarding=True, permit_user_rc=True)
    assert ext == {"permit-X11-forwarding": "", "permit-user-rc": "", wire.EXT_ROLES: '["r"]',
                   wire.EXT_TRAITS: "{}", wire.EXT_CLUSTER: '"c"'}
    assert set(pki.user_cert_extensions([], {}, "c")) >= {"permit-pty", "permit-port-forwarding",
                                                           "permit-agent-forwarding"}


# ------------------------------------------------------------------ parse

def test_parse_round_trip(user_ca, alice):
    cert = _user_cert(user_ca, alice, serial=7, critical_options={"source-address": "10.0.0.0/8"})
    info = pki.parse_ssh_cert(cert)
    assert (info.cert_type, info.key_id, info.principals, info.serial) == ("user", "alice", ["alice", "root"], 7)
    assert (info.valid_after, info.valid_before) == (NOW - 60, NOW + 3600)
    assert info.public_line == " ".join(alice.public_line.split()[:2])
    assert info.signing_ca_line == " ".join(user_ca.public_line.split()[:2])
    assert info.critical_options == {"source-address": "10.0.0.0/8"}
    assert info.extensions["permit-pty"] == ""
    assert info.roles == ["access", "dev"]
    assert info.traits == {"logins": ["alice", "root"], "team": ["ops"]}
    assert info.cluster == "root.example"


def test_random_serials_differ(user_ca, alice):
    serials = {pki.parse_ssh_cert(_user_cert(user_ca, alice)).serial for _ in range(3)}
    assert len(serials) == 3


def test_parse_reads_a_cert_signed_by_ssh_keygen(tmp_path, user_ca):
    ca_file, key_file = tmp_path / "ca", tmp_path / "k"
    pki.write_secret(str(ca_file), user_ca.private_openssh)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key_file)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-s", str(ca_file), "-I", "bob", "-n", "bob,web", "-z", "99",
                    "-V", "+1h", "-O", "clear", "-O", "permit-pty",
                    "-O", f"extension:{wire.EXT_ROLES}=[\"editor\"]", str(key_file) + ".pub"],
                   check=True, capture_output=True)
    info = pki.parse_ssh_cert((tmp_path / "k-cert.pub").read_text())
    assert (info.key_id, info.principals, info.serial) == ("bob", ["bob", "web"], 99)
    assert info.extensions == {"permit-pty": "", wire.EXT_ROLES: '["editor"]'}
    assert info.roles == ["editor"] and info.traits == {} and info.cluster is None
    assert info.signing_ca_line == " ".join(user_ca.public_line.split()[:2])


@pytest.mark.parametrize("offset", [60, 100, 200, -10])
def test_parse_rejects_tampering(user_ca, alice, offset):
    with pytest.raises(BadParameter, match="signature|malformed"):
        pki.parse_ssh_cert(_tamper(_user_cert(user_ca, alice), offset))


def test_parse_rejects_malformed(user_ca, alice):
    cert = _user_cert(user_ca, alice)
    kind, b64, _ = cert.split()
    truncated = base64.b64encode(base64.b64decode(b64)[:-5]).decode()
    for bad in (f"{kind} {truncated}", alice.public_line, "garbage", f"{kind} AAAA",
                "ssh-rsa-cert-v01@openssh.com " + b64):
        with pytest.raises(BadParameter):
            pki.parse_ssh_cert(bad)


def test_sign_validates_its_input(user_ca, alice):
    sign = lambda **kw: pki.sign_ssh_cert(user_ca.private_openssh, kw.pop("pub", alice.public_line),  # noqa: E731
                                          **{"cert_type": "user", "key_id": "a", "principals": ["a"],
                                             "valid_after": NOW, "valid_before": NOW + 60, **kw})
    rsa_pub = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    for bad in ({"principals": []}, {"principals": [""]}, {"cert_type": "robot"},
                {"valid_before": NOW - 1}, {"pub": rsa_pub}, {"pub": "nonsense"},
                {"extensions": {"x": 1}}, {"serial": -1}, {"serial": 2 ** 64}):
        with pytest.raises(BadParameter):
            sign(**bad)
    with pytest.raises(BadParameter, match="OpenSSH private key"):
        pki.sign_ssh_cert("not a key", alice.public_line, cert_type="user", key_id="a", principals=["a"],
                          valid_after=NOW, valid_before=NOW + 60)


# ------------------------------------------------------------------ asyncssh

def test_asyncssh_imports_and_validates(user_ca, alice):
    cert = asyncssh.import_certificate(_user_cert(user_ca, alice))
    cert.validate(asyncssh.public_key.CERT_TYPE_USER, "alice")
    cert.validate(asyncssh.public_key.CERT_TYPE_USER, "root")
    assert cert.options["permit-pty"] is True and "permit-X11-forwarding" not in cert.options
    with pytest.raises(ValueError, match="principal"):
        cert.validate(asyncssh.public_key.CERT_TYPE_USER, "mallory")
    with pytest.raises(ValueError, match="type"):
        cert.validate(asyncssh.public_key.CERT_TYPE_HOST, "alice")
    expired = asyncssh.import_certificate(_user_cert(user_ca, alice, valid_after=NOW - 100, valid_before=NOW - 10))
    with pytest.raises(ValueError, match="expired"):
        expired.validate(asyncssh.public_key.CERT_TYPE_USER, "alice")
    future = asyncssh.import_certificate(_user_cert(user_ca, alice, valid_after=NOW + 600, valid_before=NOW + 900))
    with pytest.raises(ValueError, match="not yet valid"):
        future.validate(asyncssh.public_key.CERT_TYPE_USER, "alice")
    with pytest.raises(asyncssh.KeyImportError):
        asyncssh.import_certificate(_tamper(_user_cert(user_ca, alice), 100))


def _same_key(key: asyncssh.SSHKey, line: str) -> bool:
    return key.export_public_key("openssh").decode().split()[:2] == line.split()[:2]


class _CertAuthServer(CertAuthServer):
    """The node's and proxy's certificate check (sshserver.CertAuthServer) for one user CA."""

    server_kind = "this test server"

    def __init__(self, ca_line: str):
        super().__init__(lambda line: {"cluster_name": "root.example"} if _same_key(asyncssh.import_public_key(line),
                                                                                    ca_line) else None,
                         "root.example")

    def auth_ok(self, user) -> None:
        pass


async def _report_cert_options(process):
    conn = process.get_extra_info("connection")
    extensions = conn.get_owner().user.cert.extensions  # as the node reads them (pki.parse_ssh_cert)
    process.stdout.write(json.dumps({
        "user": process.get_extra_info("username"),
        "roles": extensions.get(wire.EXT_ROLES),
        "traits": extensions.get(wire.EXT_TRAITS),
        "cluster": extensions.get(wire.EXT_CLUSTER),
        "pty": conn.check_certificate_permission("pty"),
        "x11": conn.check_certificate_permission("X11-forwarding"),
        "command": process.command,
    }) + "\n")
    process.exit(0)


async def _server(ca_line, host_keys, **kw):
    server = await asyncssh.create_server(lambda: _CertAuthServer(ca_line), "127.0.0.1", 0,
                                          server_host_keys=host_keys, process_factory=_report_cert_options, **kw)
    return server, server.sockets[0].getsockname()[1]


def _client_key(pair, cert_line):
    return [(asyncssh.import_private_key(pair.private_openssh), asyncssh.import_certificate(cert_line))]


async def test_asyncssh_end_to_end_user_cert(user_ca, alice):
    server, port = await _server(user_ca.public_line, [asyncssh.generate_private_key("ssh-ed25519")])
    try:
        async with asyncssh.connect("127.0.0.1", port, username="root", known_hosts=None, agent_path=None,
                                    config=[], client_keys=_client_key(alice, _user_cert(user_ca, alice))) as conn:
            result = await conn.run("id -un", check=True)
        seen = json.loads(result.stdout)
        assert seen == {"user": "root", "roles": '["access","dev"]',
                        "traits": '{"logins":["alice","root"],"team":["ops"]}', "cluster": '"root.example"',
                        "pty": True, "x11": False, "command": "id -un"}

        # A principal not in the cert, and a cert from another CA, are both refused.
        for username, cert in (("mallory", _user_cert(user_ca, alice)),
                               ("alice", _user_cert(pki.new_ssh_key(), alice))):
            with pytest.raises(asyncssh.PermissionDenied):
                await asyncssh.connect("127.0.0.1", port, username=username, known_hosts=None, agent_path=None,
                                       config=[], client_keys=_client_key(alice, cert))
    finally:
        server.close()
        await server.wait_closed()


def _host_identity(host_ca, principals):
    host = pki.new_ssh_key()
    cert = pki.sign_ssh_cert(host_ca.private_openssh, host.public_line, cert_type="host", key_id="node:n1",
                             principals=principals, valid_after=NOW - 60, valid_before=NOW + 600)
    return host, cert


async def test_asyncssh_client_trusts_host_cert_via_cert_authority(user_ca, host_ca, alice):
    known_hosts = asyncssh.import_known_hosts(f"@cert-authority * {host_ca.public_line}\n")
    user_key = _client_key(alice, _user_cert(user_ca, alice))
    cases = [(["n1", "127.0.0.1"], host_ca, True),
             (["n1", "10.9.9.9"], host_ca, False),                # wrong principal
             (["127.0.0.1"], pki.new_ssh_key(), False)]          # unknown host CA
    for principals, ca, ok in cases:
        host, cert = _host_identity(ca, principals)
        server, port = await _server(user_ca.public_line, [(asyncssh.import_private_key(host.private_openssh),
                                                            asyncssh.import_certificate(cert))])
        try:
            connect = asyncssh.connect("127.0.0.1", port, username="alice", known_hosts=known_hosts,
                                       agent_path=None, config=[], client_keys=user_key)
            if ok:
                async with connect as conn:
                    assert (await conn.run("true", check=True)).exit_status == 0
            else:
                with pytest.raises(asyncssh.HostKeyNotVerifiable):
                    await connect
        finally:
            server.close()
            await server.wait_closed()


# ------------------------------------------------------------------ stock OpenSSH client and server

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ssh_cmd(tmp_path, alice, user_cert, host_ca, port, user):
    pki.write_secret(str(tmp_path / "id"), alice.private_openssh)
    pki.write_public(str(tmp_path / "id-cert.pub"), user_cert + "\n")
    pki.write_public(str(tmp_path / "known_hosts"), f"@cert-authority * {host_ca.public_line}\n")
    return ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}", "-o", "IdentitiesOnly=yes",
            "-i", str(tmp_path / "id"), "-p", str(port), f"{user}@127.0.0.1", "echo", "over-openssh"]


async def test_openssh_client_against_asyncssh_server(tmp_path, user_ca, host_ca, alice):
    host, host_cert = _host_identity(host_ca, ["127.0.0.1"])
    server, port = await _server(user_ca.public_line, [(asyncssh.import_private_key(host.private_openssh),
                                                        asyncssh.import_certificate(host_cert))])
    try:
        proc = await asyncio.create_subprocess_exec(
            *_ssh_cmd(tmp_path, alice, _user_cert(user_ca, alice), host_ca, port, "alice"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode()
        seen = json.loads(out)
        assert seen["user"] == "alice" and seen["roles"] == '["access","dev"]'
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/sbin/sshd"), reason="needs root and sshd")
def test_stock_sshd_accepts_our_user_and_host_certs(tmp_path, user_ca, host_ca, alice):
    login = getpass.getuser()
    host, host_cert = _host_identity(host_ca, ["127.0.0.1"])
    pki.write_secret(str(tmp_path / "host"), host.private_openssh)
    pki.write_public(str(tmp_path / "host-cert.pub"), host_cert + "\n")
    pki.write_public(str(tmp_path / "user_ca.pub"), user_ca.public_line + "\n")
    port = _free_port()
    (tmp_path / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1:{port}\nHostKey {tmp_path}/host\nHostCertificate {tmp_path}/host-cert.pub\n"
        f"TrustedUserCAKeys {tmp_path}/user_ca.pub\nAuthorizedKeysFile none\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin yes\nUsePAM no\nPidFile none\n")
    os.makedirs("/run/sshd", exist_ok=True)
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(tmp_path / "sshd_config")],
                            stderr=subprocess.PIPE, text=True)
    try:
        assert "Server listening" in sshd.stderr.readline()
        cmd = _ssh_cmd(tmp_path, alice, _user_cert(user_ca, alice, principals=[login]), host_ca, port, login)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        assert result.returncode == 0 and result.stdout.strip() == "over-openssh", result.stderr
        # The same key with a cert for another principal is refused by sshd.
        cmd = _ssh_cmd(tmp_path, alice, _user_cert(user_ca, alice, principals=["someone-else"]), host_ca, port,
                       login)
        assert subprocess.run(cmd, capture_output=True, timeout=20).returncode == 255
    finally:
        sshd.terminate()
        sshd.wait(10)


# ------------------------------------------------------------------ files

def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_secret_and_public_modes(tmp_path):
    target = tmp_path / "a" / "b" / "identity.key"
    old_umask = os.umask(0)  # the modes must not depend on the umask
    try:
        pki.write_secret(str(target), "secret\n")
        pki.write_public(str(tmp_path / "a" / "ca.crt"), b"public\n")
    finally:
        os.umask(old_umask)
    assert target.read_text() == "secret\n" and _mode(target) == 0o600
    assert _mode(tmp_path / "a") == 0o700 and _mode(tmp_path / "a" / "b") == 0o700
    assert (tmp_path / "a" / "ca.crt").read_bytes() == b"public\n" and _mode(tmp_path / "a" / "ca.crt") == 0o644


def test_write_secret_replaces_a_loose_file_atomically(tmp_path):
    target = tmp_path / "key"
    target.write_text("old")
    os.chmod(target, 0o666)
    pki.write_secret(str(target), "new")
    assert target.read_text() == "new" and _mode(target) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["key"]  # no temp file left behind


def test_write_secret_cleans_up_on_failure(tmp_path):
    with pytest.raises(TypeError):
        pki.write_secret(str(tmp_path / "key"), 12345)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ X.509

@pytest.fixture(scope="module")
def tls_ca():
    return pki.new_tls_ca("root.example")


def _issue(ca, **kw):
    key_pem, pub_pem = pki.new_tls_key()
    args = {"common_name": "n1", "organization": "root.example", "unit": "node", "ttl_seconds": 3600,
            "server": False, "client": True, **kw}
    return key_pem, pki.issue_tls_cert(ca[0], ca[1], pub_pem, **args)


def test_tls_ca_properties(tls_ca):
    key_pem, cert_pem = tls_ca
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    assert "PRIVATE KEY" in key_pem
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "root.example"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "root.example"
    assert cert.subject == cert.issuer
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 3649 <= days <= 3650


def test_issued_cert_fields(tls_ca):
    _, pem = _issue(tls_ca, server=True, client=True, dns_names=["n1.root.example"], ip_addresses=["127.0.0.1"])
    cert = x509.load_pem_x509_certificate(pem.encode())
    ca = x509.load_pem_x509_certificate(tls_ca[1].encode())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["n1.root.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    now = datetime.datetime.now(datetime.timezone.utc)
    assert 55 <= (now - cert.not_valid_before_utc).total_seconds() <= 70
    identity = pki.tls_identity(pem)
    assert identity["name"] == "n1" and identity["cluster"] == "root.example" and identity["kind"] == "node"
    assert abs(identity["expires"] - (time.time() + 3600)) < 10
    _, client_only = _issue(tls_ca)
    client_cert = x509.load_pem_x509_certificate(client_only.encode())
    assert list(client_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        client_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_issue_rejects_bad_input(tls_ca):
    with pytest.raises(BadParameter):
        _issue(tls_ca, server=False, client=False)
    with pytest.raises(BadParameter):
        _issue(tls_ca, ip_addresses=["not-an-ip"])
    with pytest.raises(BadParameter):
        pki.tls_identity("garbage")


def test_cert_never_outlives_its_ca():
    short_ca = pki.new_tls_ca("short", ttl_days=1)
    _, pem = _issue(short_ca, ttl_seconds=10 * 86400)
    assert pki.tls_identity(pem)["expires"] <= pki.tls_identity(short_ca[1])["expires"]


def test_tls_fingerprint_matches_openssl(tls_ca):
    out = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256"], input=tls_ca[1],
                         capture_output=True, text=True, check=True).stdout
    assert pki.tls_fingerprint(tls_ca[1]) == "sha256:" + out.split("=", 1)[1].strip().replace(":", "").lower()


def _write_pair(tmp_path, name, key_pem, cert_pem):
    pki.write_secret(str(tmp_path / f"{name}.key"), key_pem)
    pki.write_public(str(tmp_path / f"{name}.crt"), cert_pem)
    return str(tmp_path / f"{name}.crt"), str(tmp_path / f"{name}.key")


def _server_ctx(tmp_path, ca_pem, server_pair):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca_pem)
    ctx.load_cert_chain(*_write_pair(tmp_path, "server", *server_pair))
    return ctx


def _client_ctx(tmp_path, ca_pem, client_pair=None):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    if client_pair:
        ctx.load_cert_chain(*_write_pair(tmp_path, "client", *client_pair))
    return ctx


async def _tls_exchange(server_ctx, client_ctx, server_hostname):
    """One TLS connection over loopback; returns the client identity the server saw."""
    seen = []

    async def handle(reader, writer):
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        seen.append(pki.tls_identity(ssl.DER_cert_to_PEM_cert(der)) if der else None)
        writer.write(b"ok\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                       server_hostname=server_hostname)
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
        finally:
            writer.close()
        return line, seen
    finally:
        server.close()
        await server.wait_closed()


async def test_mutual_tls(tmp_path, tls_ca):
    # asyncio logs the server-side handshake failures provoked below; they are expected.
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: None)
    server_pair = _issue(tls_ca, common_name="auth", unit="auth", server=True, client=False,
                         dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    server_ctx = _server_ctx(tmp_path, tls_ca[1], server_pair)
    client_pair = _issue(tls_ca, common_name="alice", unit="user")

    for hostname in ("127.0.0.1", "localhost"):
        line, seen = await _tls_exchange(server_ctx, _client_ctx(tmp_path, tls_ca[1], client_pair), hostname)
        assert line == b"ok\n"
        assert seen[0]["name"] == "alice" and seen[0]["kind"] == "user" and seen[0]["cluster"] == "root.example"

    # Hostname not in the SAN.
    with pytest.raises(ssl.SSLCertVerificationError):
        await _tls_exchange(server_ctx, _client_ctx(tmp_path, tls_ca[1], client_pair), "auth.elsewhere")

    # A client certificate from another cluster's CA, or none at all, never reaches the handler.
    other_ca = pki.new_tls_ca("evil.example")
    for pair in (_issue(other_ca, common_name="alice", unit="admin"), None):
        try:
            line, seen = await _tls_exchange(server_ctx, _client_ctx(tmp_path, tls_ca[1], pair), "localhost")
        except (ssl.SSLError, ConnectionError):
            continue
        assert line == b"" and seen == []

    # A client-only certificate cannot serve: OpenSSL enforces the extended key usage.
    bad_server_ctx = _server_ctx(tmp_path, tls_ca[1], _issue(tls_ca, server=False, client=True,
                                                             ip_addresses=["127.0.0.1"]))
    with pytest.raises(ssl.SSLCertVerificationError):
        await _tls_exchange(bad_server_ctx, _client_ctx(tmp_path, tls_ca[1], client_pair), "127.0.0.1")


async def test_self_signed_web_cert(tmp_path):
    key_pem, cert_pem = pki.self_signed_web_cert(["proxy.example", "localhost"], ["127.0.0.1"])
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(*_write_pair(tmp_path, "web", key_pem, cert_pem))
    assert pki.tls_identity(cert_pem)["name"] == "proxy.example"
    for hostname in ("127.0.0.1", "localhost", "proxy.example"):
        line, seen = await _tls_exchange(server_ctx, _client_ctx(tmp_path, cert_pem), hostname)
        assert line == b"ok\n" and seen == [None]
    with pytest.raises(ssl.SSLCertVerificationError):
        await _tls_exchange(server_ctx, _client_ctx(tmp_path, cert_pem), "other.example")
