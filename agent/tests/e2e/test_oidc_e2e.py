"""Single sign-on end to end: a root and a leaf as real processes, the real OpenID provider
(tests/oidc, oidc-provider), `gate login --auth` in the background as a user starts it, and the
provider's own login pages driven like a browser (agent/tests/oidc: browser_login, device_login).

The connector maps the provider's groups to root roles; the root certificate carries the claims
as traits; the leaf's role uses {{external.groups}}, {{external.logins_from_idp}} and
{{email.local(external.email)}} for a root SSO user reaching its node through the tunnel; both
audit logs say which connector, roles and traits decided. Then every bad input of issue 17 with
the provider really doing what it does (tampered answers, replays, a shifted clock, rotated and
replaced keys, a wrong issuer, an unreachable provider), each ending in one sentence, a failed
login in the audit log and no certificate. Tests that need a token no conforming provider sends
in a login (one for another client, one signed with an unpublished key) validate real tokens
from the provider with the auth service's own validator (test_id_token_*).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest

from conftest import Cluster, base_env, ok, unix_user, wait_until, write_yaml
from oidc import OIDCProvider, default_users, new_session

ROOT, LEAF = "root.test", "leaf.test"
CONNECTOR = "corp"
CLIENT_SECRET = "root-client-secret-for-tests-0123456789"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def client_for(cluster: Cluster, client_id: str = "gatehouse-root", secret: str = CLIENT_SECRET) -> dict:
    """The root proxy registered at the provider: its callback is the redirect URI (exact match)."""
    return {"client_id": client_id, "client_secret": secret, "application_type": "web",
            "redirect_uris": [f"https://127.0.0.1:{cluster.web_port}/webapi/oidc/callback"],
            "grant_types": ["authorization_code", "refresh_token", DEVICE_GRANT], "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic", "id_token_signed_response_alg": "RS256"}


def connector_yaml(cluster: Cluster, issuer: str, *, name: str = CONNECTOR, client_id: str = "gatehouse-root",
                   secret: str = CLIENT_SECRET, claims_to_roles=None, extra: dict | None = None) -> str:
    claims_to_roles = claims_to_roles if claims_to_roles is not None else [
        {"claim": "groups", "value": "dev", "roles": ["sso-dev"]},
        {"claim": "groups", "value": "^adm(.*)$", "roles": ["sso-adm$1"]},
        {"claim": "groups", "value": "contract*", "roles": ["sso-dev"]}]
    return json.dumps({"kind": "oidc", "version": "v3", "metadata": {"name": name}, "spec": {
        "issuer_url": issuer, "client_id": client_id, "client_secret": secret,
        "redirect_url": f"https://127.0.0.1:{cluster.web_port}/webapi/oidc/callback",
        "scope": ["openid", "email", "profile", "groups"], "claims_to_roles": claims_to_roles, **(extra or {})}})


def role(name: str, allow: dict) -> str:
    return json.dumps({"kind": "role", "version": "v5", "metadata": {"name": name}, "spec": {"allow": allow}})


IDP_LOGINS = ["{{external.logins_from_idp}}", "{{email.local(external.email)}}"]


class GateLogin:
    """`gate login --auth=…` running in the background; its output read as it comes."""

    def __init__(self, cluster: Cluster, home: str, *args: str, browser: bool = True):
        flags = ["--browser=none"] if browser else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gatehouse.cli.gate", "login", f"--proxy={cluster.web_addr}", "--insecure",
             *flags, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=base_env(GATE_HOME=home))
        self.lines: queue.Queue = queue.Queue()
        self.stdout: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.stdout.append(line)
            self.lines.put(line)

    def url(self, timeout: float = 30.0) -> str:
        """The first URL gate prints (the provider's authorization or verification URL)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    raise AssertionError(f"gate exited {self.proc.returncode}: {self.proc.stderr.read()}")
                continue
            if line.strip().startswith("http"):
                return line.strip()
        raise AssertionError("gate printed no URL")

    def finish(self, timeout: float = 60.0) -> subprocess.CompletedProcess:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, "".join(self.stdout),
                                           self.proc.stderr.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class SSO:
    def __init__(self, tmp: str):
        self.tmp = tmp
        self.root = Cluster(os.path.join(tmp, "root"), extra_auth=", login_rate: 600", cluster_name=ROOT,
                            node_name="rootnode")
        self.leaf = Cluster(os.path.join(tmp, "leaf"), extra_auth=", login_rate: 600", cluster_name=LEAF,
                            node_name="leafnode", extra_general=", insecure: true")
        self.idp = OIDCProvider(clients=[client_for(self.root), client_for(self.root, "gatehouse-other",
                                                                           "other-client-secret-0123456789")])
        self.homes = 0

    def home(self) -> str:
        self.homes += 1
        return os.path.join(self.tmp, f"gate-{self.homes}")

    def create(self, cluster: Cluster, text: str, *flags) -> subprocess.CompletedProcess:
        path = write_yaml(os.path.join(cluster.tmp, f"res-{time.monotonic_ns()}.yaml"), text)
        return cluster.run_gatectl("create", *flags, path)

    # -- one login, the way a user does it --------------------------------------
    def start(self, home: str, *args: str, connector: str = CONNECTOR, browser: bool = True) -> GateLogin:
        return GateLogin(self.root, home, f"--auth={connector}", *args, browser=browser)

    def sign_in(self, auth_url: str, username: str, **kw) -> str:
        """The provider's pages, filled in like a person does: the URL it sends the browser back to."""
        return self.idp.browser_login(auth_url, username, **kw)

    def answer(self, callback_url: str, session=None):
        """The browser brings the provider's answer to the root proxy: (response, proxy page or loopback page)."""
        session = session or new_session()
        resp = session.get(callback_url, verify=False, allow_redirects=False, timeout=30)
        if resp.status_code != 302:
            return resp, resp.text
        followed = session.get(resp.headers["Location"], timeout=30)
        return resp, followed.text

    def login(self, username: str, *args: str, home: str | None = None) -> tuple[str, subprocess.CompletedProcess]:
        home = home or self.home()
        gate = self.start(home, *args)
        try:
            self.answer(self.sign_in(gate.url(), username))
            return home, gate.finish()
        finally:
            gate.stop()

    def audit_since(self, cluster: Cluster, mark: int, event: str | None = None) -> list[dict]:
        return [e for e in cluster.audit()[mark:] if event is None or e.get("event") == event]

    def stop(self):
        self.idp.close()
        self.leaf.stop()
        self.root.stop()


@pytest.fixture(scope="module")
def sso():
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (sessions switch to the users' logins)")
    tmp = tempfile.mkdtemp(prefix="gatehouse-sso-")
    s = SSO(tmp)
    with unix_user("visitor"), unix_user("alice"), unix_user("bob"), unix_user("ops"):
        try:
            s.idp.start()
            s.root.start()
            s.leaf.start()
            r = s.root
            for name in ("sso-dev", "sso-admins"):
                ok(s.create(r, role(name, {"logins": IDP_LOGINS, "node_labels": {"*": "*"},
                                           "cluster_labels": {"*": "*"}})))
            ok(s.create(r, connector_yaml(r, s.idp.issuer)))
            # The leaf: its own role for root SSO users, built on the claims the root certificate carries.
            ok(s.create(s.leaf, role("idp-visitor", {"logins": IDP_LOGINS, "node_labels": {"env": "{{external.groups}}"}})))
            token = json.loads(ok(r.run_gatectl("tokens", "add", "--type=trusted_cluster", "--ttl=15m",
                                                "--format", "json")))["token"]
            ok(s.create(s.leaf, json.dumps({"kind": "trusted_cluster", "version": "v2", "metadata": {"name": ROOT},
                                            "spec": {"enabled": True, "token": token, "web_proxy_addr": r.web_addr,
                                                     "role_map": [{"remote": "sso-*", "local": ["idp-visitor"]}]}})))
            wait_until(lambda: "online" in r.run_gatectl("get", "rc", "--format", "json").stdout, 30,
                       "the leaf online at the root")
            yield s
        finally:
            s.stop()
            if not os.environ.get("GATEHOUSE_E2E_KEEP"):
                shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- the login
def test_browser_login_gives_roles_from_claims_and_claims_as_traits(sso):
    mark = len(sso.root.audit())
    home, r = sso.login("alice")
    out = ok(r)
    assert "open this URL in a browser on this machine" in out
    status = json.loads(ok(sso.root.run_gate("status", "-f", "json", gate_home=home)))["active"]
    assert status["username"] == "alice@example.com"
    assert status["roles"] == ["sso-dev", "sso-admins"]
    assert status["traits"]["groups"] == ["admins", "dev"]
    assert status["traits"]["logins_from_idp"] == ["alice", "ops"]
    assert status["traits"]["email"] == ["alice@example.com"]
    assert "email_verified" not in status["traits"] and "nonce" not in status["traits"]
    assert status["logins"] == ["alice", "ops"]
    assert status["connector"] == f"oidc/{CONNECTOR}" and status["cluster"] == ROOT
    logins = [e for e in sso.audit_since(sso.root, mark, "user.login") if e["success"]]
    assert logins and logins[-1]["connector"] == CONNECTOR and logins[-1]["roles"] == ["sso-dev", "sso-admins"]
    assert logins[-1]["traits"]["groups"] == ["admins", "dev"] and logins[-1]["method"] == "oidc"
    assert CLIENT_SECRET not in open(sso.root.audit_path).read()
