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

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

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

    def refused(self, mark: int, fragment: str, home: str | None = None) -> dict:
        """Since MARK the root audited a failed SSO login saying FRAGMENT and issued no certificate
        (and gate, when it ran with HOME, saved none)."""
        failures = [e for e in self.audit_since(self.root, mark, "user.login")
                    if not e["success"] and e.get("method") == "oidc"]
        assert any(fragment in e["error"] for e in failures), failures
        assert not self.audit_since(self.root, mark, "cert.create"), "no certificate may be issued"
        if home:
            assert not os.path.exists(os.path.join(home, "profiles")), "gate saved no login"
        return next(e for e in failures if fragment in e["error"])

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


def one_error(r: subprocess.CompletedProcess, fragment: str) -> str:
    """gate failed with one ERROR line that says FRAGMENT."""
    assert r.returncode != 0, f"expected a failure, got:\n{r.stdout}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), r.stderr
    assert fragment in lines[0], lines[0]
    return lines[0]


def tamper(url: str, **changes) -> str:
    """URL with query parameters changed (or removed, for None): what an attacker in the middle does."""
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


# ---------------------------------------------------------------- across the trust
def test_root_sso_user_reaches_leaf_node_through_external_traits(sso):
    root_mark, leaf_mark = len(sso.root.audit()), len(sso.leaf.audit())
    home, r = sso.login("alice")
    ok(r)
    out = sso.root.run_gate("ssh", f"--cluster={LEAF}", "alice@leafnode", "id -un", gate_home=home)
    assert ok(out) == "alice\n"
    sessions = [e for e in sso.audit_since(sso.leaf, leaf_mark, "session.start") if e["user"] == "alice@example.com"]
    assert sessions, "the leaf audits the SSO user's session"
    entry = sessions[-1]
    assert entry["connector"] == f"oidc/{CONNECTOR}" and entry["user_cluster"] == ROOT
    assert entry["roles"] == ["idp-visitor"]  # the leaf's role map, from the root roles sso-dev, sso-admins
    assert entry["traits"] == {"email": ["alice@example.com"], "groups": ["admins", "dev"],
                               "logins_from_idp": ["alice", "ops"]}
    root_login = [e for e in sso.audit_since(sso.root, root_mark, "user.login") if e["success"]][-1]
    assert root_login["connector"] == CONNECTOR and root_login["roles"] == ["sso-dev", "sso-admins"]


def test_display_name_email_gives_the_local_part_at_the_leaf(sso):
    home, r = sso.login("bob")
    ok(r)
    status = json.loads(ok(sso.root.run_gate("status", "--format", "json", gate_home=home)))["active"]
    assert status["username"] == "bob@example.com"   # the address of "Bob Builder <bob@example.com>"
    assert status["roles"] == ["sso-dev"] and status["logins"] == ["bob"]
    assert ok(sso.root.run_gate("ssh", f"--cluster={LEAF}", "bob@leafnode", "id -un", gate_home=home)) == "bob\n"


def test_string_claim_maps_and_leaf_denies_with_the_trait_in_the_reason(sso):
    leaf_mark = len(sso.leaf.audit())
    home, r = sso.login("carol")
    ok(r)
    status = json.loads(ok(sso.root.run_gate("status", "-f", "json", gate_home=home)))["active"]
    assert status["roles"] == ["sso-dev"]                      # "contractors" (a string) matched contract*
    assert status["traits"]["groups"] == ["contractors"] and status["logins"] == ["carol"]
    r = sso.root.run_gate("ssh", f"--cluster={LEAF}", "carol@leafnode", "true", gate_home=home)
    assert r.returncode != 0 and "contractors" in r.stderr, r.stderr   # env=dev is not in [contractors]
    denied = [e for e in sso.audit_since(sso.leaf, leaf_mark, "access.denied") if e["user"].startswith("carol")]
    assert denied and denied[-1]["traits"]["groups"] == ["contractors"]
    assert denied[-1]["connector"] == f"oidc/{CONNECTOR}" and denied[-1]["mapped_roles"] == ["idp-visitor"]


def test_login_selects_a_leaf_for_later_commands(sso):
    home = sso.home()
    gate = sso.start(home, LEAF)
    sso.answer(sso.sign_in(gate.url(), "alice"))
    out = ok(gate.finish())
    assert f"Cluster:      {LEAF}" in out and f"Root cluster: {ROOT}" in out
    clusters = json.loads(ok(sso.root.run_gate("clusters", "--format", "json", gate_home=home)))
    assert {c["cluster_name"]: (c["cluster_type"], c["selected"]) for c in clusters} == {
        ROOT: ("root", False), LEAF: ("leaf", True)}
    assert "leafnode" in ok(sso.root.run_gate("ls", gate_home=home))
    assert ok(sso.root.run_gate("ssh", "alice@leafnode", "id -un", gate_home=home)) == "alice\n"
    ok(sso.root.run_gate("login", ROOT, gate_home=home))   # back to the root with the same login
    assert "rootnode" in ok(sso.root.run_gate("ls", gate_home=home))
    r = sso.root.run_gate("login", "nosuch.test", gate_home=home)
    one_error(r, 'cluster "nosuch.test" is not one you can reach from "root.test"')


def test_device_flow(sso):
    mark = len(sso.root.audit())
    home = sso.home()
    gate = sso.start(home, "--device", browser=False)
    try:
        url = gate.url()
        assert "user_code=" in url  # verification_uri_complete
        sso.idp.device_login(url, "alice")
        r = gate.finish(90)
    finally:
        gate.stop()
    assert "open this URL on any device" in ok(r)
    status = json.loads(ok(sso.root.run_gate("status", "-f", "json", gate_home=home)))["active"]
    assert status["username"] == "alice@example.com" and status["roles"] == ["sso-dev", "sso-admins"]
    login = [e for e in sso.audit_since(sso.root, mark, "user.login") if e["success"]][-1]
    assert login["flow"] == "device" and login["connector"] == CONNECTOR


def test_device_flow_denied_at_the_provider(sso):
    mark = len(sso.root.audit())
    home = sso.home()
    gate = sso.start(home, "--device", browser=False)
    try:
        sso.idp.device_login(gate.url(), "alice", approve=False)
        r = gate.finish(90)
    finally:
        gate.stop()
    one_error(r, "the login was denied at the identity provider; run 'gate login --device' again and approve it")
    sso.refused(mark, "the login was denied at the identity provider", home)


# ---------------------------------------------------------------- connectors with gatectl
def test_gatectl_get_hides_the_client_secret(sso):
    shown = ok(sso.root.run_gatectl("get", f"oidc/{CONNECTOR}"))
    assert "client_id: gatehouse-root" in shown and CLIENT_SECRET not in shown and "client_secret" not in shown
    assert CLIENT_SECRET not in ok(sso.root.run_gatectl("get", "oidc", "--format", "json"))
    secret = ok(sso.root.run_gatectl("get", f"oidc/{CONNECTOR}", "--with-secrets"))
    assert f"client_secret: {CLIENT_SECRET}" in secret
    # The seed workflow: get with secrets, edit, create -f.
    path = write_yaml(os.path.join(sso.tmp, "oidc.yaml"), secret.replace("- sso-dev", "- sso-dev\n    - sso-dev"))
    assert f'oidc "{CONNECTOR}" has been updated' in ok(sso.root.run_gatectl("create", "-f", path))
    without = write_yaml(os.path.join(sso.tmp, "oidc-nosecret.yaml"), shown)
    r = sso.root.run_gatectl("create", "-f", without)
    assert r.returncode != 0 and "spec.client_secret is missing" in r.stderr and "--with-secrets" in r.stderr


def test_gatectl_create_and_remove_a_connector(sso):
    text = connector_yaml(sso.root, sso.idp.issuer, name="temp")
    assert 'oidc "temp" has been created' in ok(sso.create(sso.root, text))
    r = sso.create(sso.root, connector_yaml(sso.root, sso.idp.issuer, name="bad", claims_to_roles=[
        {"claim": "groups", "value": "dev", "roles": ["nosuchrole"]}]))
    assert r.returncode != 0 and 'oidc connector "bad": role \'nosuchrole\' does not exist' in r.stderr, r.stderr
    assert 'oidc "temp" has been deleted' in ok(sso.root.run_gatectl("rm", "oidc/temp"))
    r = sso.root.run_gatectl("get", "oidc/temp")
    assert r.returncode != 0 and 'oidc "temp" not found' in r.stderr


def test_dry_run_of_a_connector(sso):
    from gatehouse.client import APIClient
    from gatehouse.identity import IdentityFiles
    from gatehouse.resources import parse_documents
    api = APIClient.for_identity(IdentityFiles(os.path.join(sso.root.data_dir, "admin")))
    (res,) = parse_documents(connector_yaml(sso.root, sso.idp.issuer))
    plan = api.put("/v1/resources?dry_run=true", {"resource": res, "force": True})
    assert plan["changed"] is False and plan["secret_changed"] is False
    assert "client_secret" not in plan["resource"]["spec"] and "client_secret" not in plan["current"]["spec"]
    res["spec"]["client_secret"] = "another-secret-0123456789"
    plan = api.put("/v1/resources?dry_run=true", {"resource": res, "force": True})
    assert plan["changed"] is True and plan["secret_changed"] is True
    assert "another-secret" not in json.dumps(plan)
    stored = json.loads(ok(sso.root.run_gatectl("get", f"oidc/{CONNECTOR}", "--with-secrets", "--format", "json")))
    assert stored[0]["spec"]["client_secret"] == CLIENT_SECRET  # a dry run writes nothing


# ---------------------------------------------------------------- the seed guide's commands
def test_seed_guide_commands(sso):
    sso.root.add_user("dana", "sso-dev", "dana", "correct horse battery")
    home = sso.home()
    ok(sso.root.run_gate("login", f"--proxy={sso.root.web_addr}", "--user=dana", "--insecure", "--password-stdin",
                         input="correct horse battery\n", gate_home=home))
    status = json.loads(ok(sso.root.run_gate("status", "-f", "json", gate_home=home)))
    roles = ",".join(status["active"]["roles"])
    ok(sso.root.run_gatectl("users", "update", status["active"]["username"], "--set-roles", f"{roles},sso-admins"))
    user = json.loads(ok(sso.root.run_gatectl("get", "user/dana", "--format", "json")))[0]
    assert user["spec"]["roles"] == ["sso-dev", "sso-admins"] and user["spec"]["traits"]["logins"] == ["dana"]
    r = sso.root.run_gatectl("users", "update", "dana")
    assert r.returncode != 0 and "--set-roles" in r.stderr
    for out in (ok(sso.root.run_gate("version")), ok(sso.root.run_gatectl("version"))):
        assert out.startswith("Gatehouse v1.0.0 python3.")
    status = ok(sso.root.run_gatectl("status"))
    leaf_line = next(line for line in status.splitlines() if line.startswith(f"host CA ({LEAF})"))
    assert f"host CA ({LEAF})  SHA256:" in leaf_line   # the label no longer runs into its value
