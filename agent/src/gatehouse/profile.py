"""The user's login profile under ~/.gate (or $GATE_HOME).

  ~/.gate/current                         name of the active profile (the proxy host)
  ~/.gate/profiles/<proxy>/profile.json   proxy addresses, user, cluster (and the selected one), insecure flag
                                          (with the SHA-256 of the proxy certificate pinned at an --insecure login)
  ~/.gate/profiles/<proxy>/key            Ed25519 private key (0600)
  ~/.gate/profiles/<proxy>/key-cert.pub   OpenSSH user certificate
  ~/.gate/profiles/<proxy>/tls.key|tls.crt|tls-ca.crt   X.509 client identity
  ~/.gate/profiles/<proxy>/known_hosts    @cert-authority lines for proxy and nodes
All private material is written 0600 in 0700 directories.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from . import pki
from .config import split_hostport
from .errors import AccessDenied, BadParameter, GatehouseError, TLSProblem
from .wire import NODE_PORT, PROXY_SSH_PORT, WEB_PORT


def gate_home() -> str:
    return os.environ.get("GATE_HOME") or os.path.join(os.path.expanduser("~"), ".gate")


@dataclass
class Profile:
    dir: str
    data: dict

    # -- files ------------------------------------------------------------
    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    @property
    def key_path(self) -> str:
        return self.path("key")

    @property
    def cert_path(self) -> str:
        return self.path("key-cert.pub")

    @property
    def known_hosts_path(self) -> str:
        return self.path("known_hosts")

    # -- fields -----------------------------------------------------------
    @property
    def user(self) -> str:
        return self.data["user"]

    @property
    def cluster(self) -> str:
        return self.data["cluster_name"]

    @property
    def selected_cluster(self) -> str:
        """The cluster `gate ls` and `gate ssh` use by default: a leaf picked with `gate login LEAF`, else the root."""
        return self.data.get("selected_cluster") or self.cluster

    def select_cluster(self, name: str) -> None:
        self.data["selected_cluster"] = name
        pki.write_secret(self.path("profile.json"), json.dumps(self.data, indent=2) + "\n")

    @property
    def web_addr(self) -> str:
        return self.data["web_proxy_addr"]

    @property
    def ssh_addr(self) -> tuple[str, int]:
        return split_hostport(self.data["ssh_proxy_addr"], PROXY_SSH_PORT)

    @property
    def insecure(self) -> bool:
        return bool(self.data.get("insecure"))

    def cert_info(self) -> pki.SSHCertInfo:
        with open(self.cert_path, encoding="utf-8") as fh:
            return pki.parse_ssh_cert(fh.read())

    def require_valid(self) -> pki.SSHCertInfo:
        import time
        info = self.cert_info()
        if info.valid_before < time.time():
            raise AccessDenied(f"your certificate for cluster \"{self.cluster}\" expired at "
                               f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(info.valid_before))}; "
                               f"run 'gate login --proxy={self.web_addr}' to get a new one")
        return info

    def api(self):
        """The proxy's web API with this login's client certificate. After `gate login --insecure` the
        proxy must present the certificate pinned at login (its SHA-256), never just any one."""
        from .client import APIClient
        pin = str(self.data.get("web_cert_sha256") or "")
        if self.insecure and not pin:
            raise TLSProblem(f"this login (made with --insecure by an older gate) has no pinned proxy certificate, "
                             f"so the proxy cannot be checked; run 'gate login --proxy={self.web_addr} --insecure' "
                             f"again")
        return APIClient(f"https://{self.web_addr}", cert_file=self.path("tls.crt"), key_file=self.path("tls.key"),
                         insecure=self.insecure, pin_sha256=pin if self.insecure else "")


def save_profile(proxy_web_addr: str, login_result: dict, private_key: str, tls_key: str, insecure: bool,
                 web_cert_sha256: str = "") -> Profile:
    host, _unused = split_hostport(proxy_web_addr, WEB_PORT)
    directory = os.path.join(gate_home(), "profiles", host)
    ssh_addr = login_result["proxy"]["ssh"]["public_addr"]
    data = {"web_proxy_addr": proxy_web_addr, "ssh_proxy_addr": ssh_addr, "user": login_result["user"]["name"],
            "cluster_name": login_result["cluster_name"], "insecure": insecure,
            "logins": login_result["user"]["logins"], "roles": login_result["user"]["roles"],
            "connector": login_result["user"].get("connector", "")}
    if insecure:
        data["web_cert_sha256"] = web_cert_sha256  # the proxy certificate accepted unverified at login
    profile = Profile(directory, data)
    pki.write_secret(profile.key_path, private_key)
    pki.write_secret(profile.cert_path, login_result["ssh_cert"])
    pki.write_secret(profile.path("tls.key"), tls_key)
    pki.write_secret(profile.path("tls.crt"), login_result["tls_cert"])
    pki.write_secret(profile.path("tls-ca.crt"), login_result["tls_ca"])
    pki.write_secret(profile.known_hosts_path, known_hosts(login_result, split_hostport(ssh_addr, PROXY_SSH_PORT)[0]))
    pki.write_secret(profile.path("profile.json"), json.dumps(data, indent=2) + "\n")
    pki.write_secret(os.path.join(gate_home(), "current"), host + "\n")
    return profile


def known_hosts(login_result: dict, proxy_host: str) -> str:
    """@cert-authority lines: each cluster's host CA vouches for its own nodes (and the proxy)."""
    lines = []
    for ca in login_result["host_cas"]:
        cluster = ca["cluster_name"]
        patterns = [f"*.{cluster}", f"[*.{cluster}]:*"]
        if cluster == login_result["cluster_name"]:
            patterns += [proxy_host, f"[{proxy_host}]:*"]
        key = " ".join(ca["public"].split()[:2])
        lines.append(f"@cert-authority {','.join(patterns)} {key} {cluster}")
    return "\n".join(lines) + "\n"


def host_ca_keys(profile: Profile, cluster: str) -> list[str]:
    """The host CA keys (``TYPE BASE64``) the profile trusts for CLUSTER's proxy and nodes.

    Read from the ``@cert-authority`` lines gate writes, by the cluster named at the end of
    each line, never by their host patterns: `gate ssh` to NODE.CLUSTER accepts only
    CLUSTER's host CA, even when another cluster's pattern would match that name.
    """
    try:
        with open(profile.known_hosts_path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return []
    keys = []
    for line in lines:
        parts = line.split()
        if len(parts) == 5 and parts[0] == "@cert-authority" and parts[4] == cluster:
            keys.append(f"{parts[2]} {parts[3]}")
    return keys


def refresh_known_hosts(profile: Profile) -> bool:
    """Rewrite known_hosts from the host CAs the proxy lists for this user now; True if it changed.

    A leaf that joined after `gate login` (or a host CA rotated since) is then trusted
    without logging in again. False when nothing changed or the proxy could not answer.
    """
    try:
        items = profile.api().get("/webapi/hostcas")["items"]
    except GatehouseError:
        return False
    text = known_hosts({"host_cas": items, "cluster_name": profile.cluster}, profile.ssh_addr[0])
    try:
        with open(profile.known_hosts_path, encoding="utf-8") as fh:
            if fh.read() == text:
                return False
    except FileNotFoundError:
        pass
    pki.write_secret(profile.known_hosts_path, text)
    return True


def load_profile(name: str | None = None) -> Profile:
    home = gate_home()
    if not name:
        try:
            with open(os.path.join(home, "current"), encoding="utf-8") as fh:
                name = fh.read().strip()
        except FileNotFoundError:
            raise BadParameter("you are not logged in; run 'gate login --proxy=HOST:3080 --user=NAME'") from None
    directory = os.path.join(home, "profiles", name)
    try:
        with open(os.path.join(directory, "profile.json"), encoding="utf-8") as fh:
            return Profile(directory, json.load(fh))
    except FileNotFoundError:
        raise BadParameter(f"no profile for proxy {name!r}; run 'gate login --proxy={name}:3080'") from None


def remove_profiles() -> list[str]:
    import shutil
    home = gate_home()
    names = sorted(os.listdir(os.path.join(home, "profiles"))) if os.path.isdir(os.path.join(home, "profiles")) else []
    for name in names:
        shutil.rmtree(os.path.join(home, "profiles", name), ignore_errors=True)
    try:
        os.unlink(os.path.join(home, "current"))
    except FileNotFoundError:
        pass
    return names


def ssh_config(profile: Profile, clusters: list[str]) -> str:
    """OpenSSH client config: nodes as NAME.CLUSTER, jumping through the root proxy."""
    host, port = profile.ssh_addr
    proxy_user = (profile.data.get("logins") or [profile.user])[0]
    alias = f"gatehouse-proxy-{profile.cluster}"
    credentials = ["    IdentitiesOnly yes",
                   f"    IdentityFile {profile.key_path}",
                   f"    CertificateFile {profile.cert_path}",
                   f"    UserKnownHostsFile {profile.known_hosts_path}",
                   "    StrictHostKeyChecking yes",
                   ""]
    out = [f"# Generated by 'gate config' for {profile.user} at {profile.web_addr}.",
           f"Host {alias}",
           f"    HostName {host}",
           f"    Port {port}",
           f"    User {proxy_user}",
           f"    HostKeyAlias {host}",
           *credentials]
    for cluster in clusters:
        out += [f"Host *.{cluster}",
                f"    Port {NODE_PORT}",
                f"    ProxyJump {alias}",
                *credentials]
    return "\n".join(out)
