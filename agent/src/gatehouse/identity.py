"""On-disk identities (X.509 client cert + key + cluster CA, optional SSH host cert).

One directory per identity, files 0600:
  identity.crt  identity.key  ca.crt  auth_addr      -- for the auth API (mutual TLS)
  ssh_key  ssh_key-cert.pub  host_ca.pub  user_ca.pub -- for SSH servers (nodes, proxies)
The auth server writes `data_dir/admin/` for gatectl; joined processes keep
`data_dir/identity/<role>/`.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass

from . import pki
from .errors import BadParameter


@dataclass
class IdentityFiles:
    dir: str

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def exists(self) -> bool:
        return os.path.exists(self.path("identity.crt")) and os.path.exists(self.path("identity.key"))

    def read(self, name: str) -> str:
        try:
            with open(self.path(name), encoding="utf-8") as fh:
                return fh.read()
        except FileNotFoundError:
            raise BadParameter(f"identity file {self.path(name)} is missing; on the auth server start gatehouse "
                               f"first, elsewhere pass --identity or log in again") from None
        except PermissionError:
            raise BadParameter(f"cannot read {self.path(name)}: permission denied; run as the user that owns the "
                               f"gatehouse data directory (usually root)") from None

    @property
    def auth_addr(self) -> str:
        return self.read("auth_addr").strip()

    def save(self, files: dict[str, str]) -> None:
        for name, content in files.items():
            pki.write_secret(self.path(name), content)

    def ssh_key(self):
        """This member's SSH private key for asyncssh (imported here, on demand, to keep CLIs quick)."""
        import asyncssh
        return asyncssh.import_private_key(self.read("ssh_key"))

    def ssh_host_keypair(self) -> tuple:
        """The SSH key with its host certificate, as asyncssh's server_host_keys entries take them."""
        import asyncssh
        return self.ssh_key(), asyncssh.import_certificate(self.read("ssh_key-cert.pub"))

    def client_context(self) -> ssl.SSLContext:
        return client_context(self.path("identity.crt"), self.path("identity.key"), self.read("ca.crt"))


def client_context(cert_file: str | None, key_file: str | None, ca_pem: str | None,
                   insecure: bool = False) -> ssl.SSLContext:
    """TLS client context pinned to the cluster's private CA.

    Host names are not checked: only certificates issued by this cluster's own CA are
    accepted, and members reach each other by addresses the CA cannot know in advance.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    if insecure or not ca_pem:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=ca_pem)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx
