"""Hostile members for the identity attack tests: they speak the real protocol with their own keys.

* :func:`hostile_join` — a process holding a join token that asks auth's real `/v1/join`
  for whatever it likes (another member's name, extra principals) and keeps what it got
  as an on-disk identity (:class:`Stolen`) it can call the API with.
* :class:`FakeAuthServer` — a real TLS server with whatever certificate the attacker
  has (another CA's, or a cluster member's own), recording every request it receives:
  what a member that trusted it would have sent.
* :func:`present_tunnel` — dials a root proxy's tunnel port the way a leaf proxy does and
  presents a host certificate: did the root accept it as the leaf's tunnel?
* :func:`ca_private` — the private key of one of a cluster's CAs, read from its backend,
  to forge certificates an older or compromised auth service could have issued.

Only loopback is used; every helper cleans up after itself.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import ssl
import tempfile
import threading
from dataclasses import dataclass

from gatehouse import pki
from gatehouse.client import APIClient
from gatehouse.errors import GatehouseError
from gatehouse.identity import IdentityFiles


# --------------------------------------------------------------------------- joining
@dataclass
class Stolen:
    """What a hostile join got: keys and certificates, written as an identity directory."""
    dir: str
    ssh_cert: str
    tls_cert: str
    answer: dict

    @property
    def ident(self) -> IdentityFiles:
        return IdentityFiles(self.dir)

    @property
    def ssh_info(self) -> pki.SSHCertInfo:
        return pki.parse_ssh_cert(self.ssh_cert)

    def api(self, **kw) -> APIClient:
        """A client that calls auth as this identity (what `gatectl -i DIR` would do)."""
        return APIClient.for_identity(self.ident, **kw)

    def host_keypair(self):
        return self.ident.ssh_host_keypair()


def cluster_ca(auth_addr: str) -> str:
    """The cluster's TLS CA as auth publishes it (public, no certificate needed)."""
    return APIClient(f"https://{auth_addr}", insecure=True).get("/v1/ca")["tls_ca"]


def hostile_join(auth_addr: str, token: str, name: str, *, role: str = "node", principals=(),
                 workdir: str | None = None) -> Stolen:
    """POST /v1/join with fresh keys and any principals; raises the Gatehouse error auth answers with."""
    ca = cluster_ca(auth_addr)
    workdir = workdir or tempfile.mkdtemp(prefix="hostile-join-")
    ca_file = os.path.join(workdir, "ca.crt")
    pki.write_secret(ca_file, ca)
    ssh_key = pki.new_ssh_key(comment=f"{role}:{name}")
    tls_key, tls_pub = pki.new_tls_key()
    client = APIClient(f"https://{auth_addr}", ca_file=ca_file, check_hostname=False)
    answer = client.post("/v1/join", {"token": token, "role": role, "name": name, "principals": list(principals),
                                      "ssh_public_key": ssh_key.public_line, "tls_public_key": tls_pub})
    ident = IdentityFiles(os.path.join(workdir, "identity"))
    ident.save({"identity.key": tls_key, "identity.crt": answer["tls_cert"], "ca.crt": answer["tls_ca"],
                "auth_addr": auth_addr + "\n", "ssh_key": ssh_key.private_openssh,
                "ssh_key-cert.pub": answer["ssh_cert"], "host_ca.pub": answer["host_ca"],
                "user_ca.pub": answer["user_ca"]})
    return Stolen(ident.dir, answer["ssh_cert"], answer["tls_cert"], answer)


def join_error(auth_addr: str, token: str, name: str, **kw) -> str:
    """The join is refused: the one-line message auth gave."""
    try:
        hostile_join(auth_addr, token, name, **kw)
    except GatehouseError as exc:
        assert "\n" not in str(exc)
        return str(exc)
    raise AssertionError(f"auth accepted the join as {name!r}")


def tls_cert_details(cert_pem: str) -> dict:
    """OU, subject alternative names and extended key usages of an X.509 certificate."""
    from cryptography import x509
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(v) for v in san.get_values_for_type(x509.DNSName)] + \
                [str(v) for v in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    return {"kind": pki.tls_identity(cert_pem)["kind"], "names": sorted(names),
            "server": x509.ExtendedKeyUsageOID.SERVER_AUTH in eku,
            "client": x509.ExtendedKeyUsageOID.CLIENT_AUTH in eku}


# --------------------------------------------------------------------------- CA keys
def ca_private(data_dir: str, cluster: str, ca_type: str) -> dict:
    """The CA record (with its private key) from a cluster's SQLite backend: what a compromised auth holds."""
    from gatehouse.auth import keys
    from gatehouse.backend import open_backend

    async def read():
        backend = await open_backend({}, data_dir)
        try:
            return (await backend.get(keys.ca(cluster, ca_type))).value
        finally:
            await backend.close()
    return asyncio.run(read())


def forge_host_cert(data_dir: str, cluster: str, public_line: str, *, key_id: str, principals: list[str],
                    kind: str | None = None, ttl: int = 3600) -> str:
    """A host certificate signed by CLUSTER's host CA with any key id, principals and kind extension."""
    import time
    ca = ca_private(data_dir, cluster, "host")
    now = int(time.time())
    ext = {"gatehouse-kind@gatehouse": json.dumps(kind)} if kind else {}
    return pki.sign_ssh_cert(ca["private"], public_line, cert_type="host", key_id=key_id, principals=principals,
                             valid_after=now - 60, valid_before=now + ttl, extensions=ext)


def forge_tls_cert(data_dir: str, cluster: str, *, name: str, kind: str, server: bool = True) -> tuple[str, str]:
    """(key PEM, certificate PEM) from CLUSTER's X.509 CA, for any name and kind (OU)."""
    ca = ca_private(data_dir, cluster, "tls")
    key_pem, pub_pem = pki.new_tls_key()
    cert = pki.issue_tls_cert(ca["private"], ca["public"], pub_pem, common_name=name, organization=cluster,
                              unit=kind, dns_names=["localhost"], ip_addresses=["127.0.0.1"], ttl_seconds=3600,
                              server=server, client=True)
    return key_pem, cert


# --------------------------------------------------------------------------- a fake auth server
class FakeAuthServer:
    """A TLS server on loopback with the certificate an attacker has; it records every request.

    It answers `GET /v1/ca` with ``ca_pem`` (its own CA) and everything else with `{}`, so
    a client that trusted it would go on and send what it meant for auth.
    """

    def __init__(self, cert_pem: str, key_pem: str, ca_pem: str = ""):
        self.requests: list[dict] = []
        self.handshakes_failed = 0
        fake = self
        tmp = tempfile.mkdtemp(prefix="fake-auth-")
        cert_file, key_file = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
        pki.write_secret(cert_file, cert_pem)
        pki.write_secret(key_file, key_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_file, key_file)

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode(errors="replace") if length else ""
                fake.requests.append({"method": self.command, "path": self.path, "body": body})
                payload = {"cluster_name": "fake", "tls_ca": ca_pem} if self.path.startswith("/v1/ca") else {}
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):
                sock, addr = self.socket.accept()
                return ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

            def finish_request(self, request, client_address):
                try:
                    request.do_handshake()
                except (ssl.SSLError, OSError):
                    fake.handshakes_failed += 1
                    return
                super().finish_request(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.addr = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeAuthServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def received(self, text: str) -> bool:
        """Whether TEXT appeared in any request path or body."""
        return any(text in r["path"] or text in r["body"] for r in self.requests)


# --------------------------------------------------------------------------- a fake leaf proxy
def present_tunnel(tunnel_addr: str, host_keypair, timeout: float = 15.0) -> str:
    """Dial a root proxy's tunnel listener as a leaf proxy does, presenting HOST_KEYPAIR (key, certificate).

    Returns "accepted" when the root went on to authenticate and open its heartbeat
    session (it took the certificate for its leaf's tunnel), else "refused: REASON".
    """
    import asyncssh

    async def attempt() -> str:
        opened = asyncio.get_running_loop().create_future()

        class LeafSide(asyncssh.SSHServer):
            def begin_auth(self, username):
                return True

            def public_key_auth_supported(self):
                return True

            def validate_public_key(self, username, key):
                return True   # a hostile leaf welcomes the root's certificate

            def validate_ca_key(self, username, key):
                return True

            def session_requested(self):
                if not opened.done():
                    opened.set_result("accepted")
                return False

        host, port = tunnel_addr.rsplit(":", 1)
        try:
            conn = await asyncio.wait_for(asyncssh.connect_reverse(
                host, int(port), server_factory=LeafSide, server_host_keys=[host_keypair], config=None,
                login_timeout=timeout), timeout)
        except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
            return f"refused: {exc or exc.__class__.__name__}"
        try:
            return await asyncio.wait_for(opened, timeout)
        except asyncio.TimeoutError:
            return "refused: the root opened no session"
        finally:
            conn.close()

    return asyncio.run(attempt())
