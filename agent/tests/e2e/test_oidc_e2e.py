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
    with open(sso.root.audit_path, encoding="utf-8") as fh:
        assert CLIENT_SECRET not in fh.read(), "the client secret must never reach the audit log"
    assert CLIENT_SECRET not in sso.root.log_text(), "the client secret must never reach a log (DEBUG here)"


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


# ---------------------------------------------------------------- bad input
def test_user_without_a_matching_claim_is_refused(sso):
    ok(sso.create(sso.root, connector_yaml(sso.root, sso.idp.issuer, name="byname",
                                           extra={"username_claim": "preferred_username"})))
    mark = len(sso.root.audit())
    home = sso.home()
    gate = sso.start(home, connector="byname")
    try:
        sso.answer(sso.sign_in(gate.url(), "dave"))   # dave's groups are []
        r = gate.finish()
    finally:
        gate.stop()
    one_error(r, 'no claims_to_roles entry of oidc connector "byname" matches the claims of "dave" (groups: (not '
                 "sent)); add an entry for one of those values or give the user a matching claim at the identity "
                 "provider")
    sso.refused(mark, "no claims_to_roles entry", home)


def test_user_without_the_username_claim_is_refused(sso):
    mark = len(sso.root.audit())
    home, r = sso.login("dave")   # no email claim, and the connector names users by it
    one_error(r, 'the identity provider sent no "email" claim for subject "u-0004-dave", which oidc connector "corp" '
                 "takes the user name from (username_claim)")
    sso.refused(mark, 'no "email" claim', home)


def test_state_mismatch_is_refused(sso):
    mark = len(sso.root.audit())
    home = sso.home()
    gate = sso.start(home)
    try:
        callback = sso.sign_in(gate.url(), "alice")
        request_id, _, secret = parse_qs(urlsplit(callback).query)["state"][0].partition(".")
        resp, page = sso.answer(tamper(callback, state=f"{request_id}.{secret[::-1]}"))
        assert resp.status_code == 403
        assert "the state of the identity provider&#x27;s answer does not match the login in progress" in page
        resp, page = sso.answer(tamper(callback, state="unknownrequest-0000.x"))
        assert resp.status_code == 404 and "this login is unknown or has expired" in page
    finally:
        gate.stop()
    sso.refused(mark, "the state of the identity provider's answer does not match", home)
    sso.refused(mark, "this login is unknown or has expired")


def test_nonce_mismatch_is_refused(sso):
    mark = len(sso.root.audit())
    home = sso.home()
    gate = sso.start(home)
    try:
        # The authorization request altered on its way to the provider: another nonce.
        sso.answer(sso.sign_in(tamper(gate.url(), nonce="a-nonce-of-someone-else"), "alice"))
        r = gate.finish()
    finally:
        gate.stop()
    one_error(r, "the ID token's nonce does not match this login request (a replayed or substituted token)")
    sso.refused(mark, "nonce does not match", home)


def test_replayed_answer_is_refused(sso):
    home = sso.home()
    gate = sso.start(home)
    try:
        callback = sso.sign_in(gate.url(), "alice")
        sso.answer(callback)
        ok(gate.finish())
    finally:
        gate.stop()
    mark = len(sso.root.audit())
    resp, page = sso.answer(callback)   # the same answer, submitted again
    assert resp.status_code == 403 and "this login was already answered by the identity provider" in page
    sso.refused(mark, "a replayed or repeated answer")


def test_wrong_issuer_in_the_answer_is_refused(sso):
    mark = len(sso.root.audit())
    home = sso.home()
    gate = sso.start(home)
    try:
        sso.answer(tamper(sso.sign_in(gate.url(), "alice"), iss="https://evil.example.com"))
        r = gate.finish()
    finally:
        gate.stop()
    one_error(r, 'the answer came from issuer "https://evil.example.com", not from "' + sso.idp.issuer)
    sso.refused(mark, "a mix-up of identity providers", home)


def test_wrong_issuer_at_discovery_is_refused(sso):
    issuer = sso.idp.issuer.replace("127.0.0.1", "localhost")   # the same provider, under a name it does not use
    ok(sso.create(sso.root, connector_yaml(sso.root, issuer, name="wrongissuer")))
    mark = len(sso.root.audit())
    home = sso.home()
    r = sso.start(home, connector="wrongissuer").finish()
    one_error(r, f'names its issuer "{sso.idp.issuer}", not "{issuer}" as oidc connector "wrongissuer" says; set '
                 f"spec.issuer_url to exactly the provider's issuer")
    sso.refused(mark, "names its issuer", home)


def test_unreachable_provider_is_refused(sso):
    from conftest import free_port
    down = f"http://127.0.0.1:{free_port()}"
    ok(sso.create(sso.root, connector_yaml(sso.root, down, name="down")))
    mark = len(sso.root.audit())
    home = sso.home()
    r = sso.start(home, connector="down").finish()
    one_error(r, 'cannot reach the identity provider of oidc connector "down" at ' + down)
    assert "check spec.issuer_url and that the provider is up" in r.stderr
    sso.refused(mark, "cannot reach the identity provider", home)


def test_provider_gone_before_the_code_exchange(sso):
    mark = len(sso.root.audit())
    home = sso.home()
    gate = sso.start(home)
    try:
        callback = sso.sign_in(gate.url(), "alice")
        sso.idp.stop()
        try:
            sso.answer(callback)
        finally:
            sso.idp.start()   # the same port, so the same issuer
        r = gate.finish()
    finally:
        gate.stop()
    one_error(r, 'cannot reach the identity provider of oidc connector "corp" at ' + sso.idp.issuer)
    sso.refused(mark, "cannot reach the identity provider", home)


def test_expired_id_token_is_refused(sso):
    mark = len(sso.root.audit())
    home = sso.home()
    gate = sso.start(home)
    try:
        callback = sso.sign_in(gate.url(), "alice")
        # The provider's clock falls two hours behind before the root exchanges the code: the ID
        # token it mints then (valid for one hour) expired an hour ago by the root's clock.
        sso.idp.set_clock_offset(-2 * 3600)
        try:
            sso.answer(callback)
        finally:
            sso.idp.set_clock_offset(0)
        r = gate.finish()
    finally:
        gate.stop()
    one_error(r, "the ID token expired at ")
    assert "check the clocks of the identity provider and the auth server" in r.stderr
    sso.refused(mark, "the ID token expired", home)


def test_small_clock_skew_is_accepted(sso):
    sso.idp.set_clock_offset(30)   # tokens issued "in the future" by less than the allowed skew
    try:
        _, r = sso.login("alice")
    finally:
        sso.idp.set_clock_offset(0)
    ok(r)


def test_consent_denied_at_the_provider(sso):
    mark = len(sso.root.audit())
    home = sso.home()
    gate = sso.start(home)
    try:
        sso.answer(sso.sign_in(gate.url(), "alice", approve=False))
        r = gate.finish()
    finally:
        gate.stop()
    one_error(r, "the identity provider refused the login (access_denied")
    sso.refused(mark, "access_denied", home)


def test_wrong_client_secret_is_refused(sso):
    ok(sso.create(sso.root, connector_yaml(sso.root, sso.idp.issuer, name="badsecret",
                                           secret="not-the-secret-0123456789")))
    mark = len(sso.root.audit())
    home = sso.home()
    gate = sso.start(home, connector="badsecret")
    try:
        sso.answer(sso.sign_in(gate.url(), "alice"))
        r = gate.finish()
    finally:
        gate.stop()
    one_error(r, 'refused the client credentials (invalid_client')
    assert "check spec.client_id and spec.client_secret" in r.stderr and "not-the-secret" not in r.stderr
    entry = sso.refused(mark, "invalid_client", home)
    assert "not-the-secret" not in json.dumps(entry)


def test_client_redirect_must_be_loopback(sso):
    from gatehouse import pki
    mark = len(sso.root.audit())
    key = pki.new_ssh_key()
    _, tls_pub = pki.new_tls_key()
    for redirect in ("http://evil.example.com/callback", "https://127.0.0.1:8443/callback",
                     "http://localhost:8000/callback", "http://127.0.0.1:8000/callback?x=1"):
        resp = new_session().post(f"https://{sso.root.web_addr}/webapi/oidc/login", verify=False, timeout=30, json={
            "connector": CONNECTOR, "redirect_url": redirect, "ssh_public_key": key.public_line,
            "tls_public_key": tls_pub})
        assert resp.status_code == 400, resp.text
        message = resp.json()["error"]["message"]
        assert message.startswith(f'the client redirect URL "{redirect}" is not a loopback address;'), message
        assert "\n" not in message
    sso.refused(mark, "is not a loopback address")


def test_key_rotation_refetches_the_key_set_once(sso):
    sso.login("alice")   # the root has the provider's current keys
    fetched = sso.root.log_text().count(f"oidc {CONNECTOR}: fetched")
    rotated = sso.idp.rotate_keys(retire_previous=True)
    _, r = sso.login("alice")
    ok(r)
    assert sso.root.log_text().count(f"oidc {CONNECTOR}: fetched") == fetched + 1
    assert rotated["signing_kid"] in rotated["kids"]


def test_bad_signature_is_refused(sso):
    sso.login("alice")   # the root has the provider's current keys
    kid = sso.idp.admin_state()["signing_kid"]
    # The provider comes back signing with another key under the same key id: the root's copy of
    # that key does not verify the new signatures (no refetch: the key id is not unknown).
    sso.idp.restart(jwks={"keys": [OIDCProvider.generate_signing_key(kid)]})
    mark = len(sso.root.audit())
    try:
        home, r = sso.login("alice")
    finally:
        sso.idp.restart(jwks={"keys": [OIDCProvider.generate_signing_key(f"fresh-{time.monotonic_ns()}")]})
    one_error(r, f'the signature of the ID token does not verify with key "{kid}" of the identity provider')
    sso.refused(mark, "the signature of the ID token does not verify", home)
    _, r = sso.login("alice")   # a new key id: one refetch, and logins work again
    ok(r)


# ---------------------------------------------------------------- ID tokens no conforming provider sends in a login
def _real_id_token(idp: OIDCProvider, client: dict, redirect_uri: str, username: str = "alice") -> str:
    """A real ID token from the provider for CLIENT: the code flow with authlib, the provider's own pages."""
    from authlib.common.security import generate_token
    from authlib.integrations.requests_client import OAuth2Session
    meta = idp.metadata()
    oauth = OAuth2Session(client["client_id"], client["client_secret"], scope="openid email groups",
                          redirect_uri=redirect_uri, code_challenge_method="S256")
    oauth.trust_env = False
    verifier = generate_token(64)
    url, state = oauth.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier,
                                                nonce=generate_token(24))
    answer = idp.browser_login(url, username)
    return oauth.fetch_token(meta["token_endpoint"], authorization_response=answer, state=state,
                             code_verifier=verifier)["id_token"]


def _validator(sso, client_id: str = "gatehouse-root"):
    from gatehouse.auth.oidc import OIDCProvider as Validator
    from gatehouse.resources import parse_documents
    (connector,) = parse_documents(connector_yaml(sso.root, sso.idp.issuer, client_id=client_id))
    return Validator(connector)


def test_id_token_for_another_client_is_refused(sso):
    """Wrong audience: a real token the provider issued to another client, shown to the root's validator."""
    from gatehouse.auth.oidc import ProviderError
    other = client_for(sso.root, "gatehouse-other", "other-client-secret-0123456789")
    token = _real_id_token(sso.idp, other, other["redirect_uris"][0])
    validator = _validator(sso)
    with pytest.raises(ProviderError) as info:
        asyncio.run(validator.validate_id_token(token, nonce_digest=None))
    assert str(info.value) == ('the ID token is meant for "gatehouse-other", not for client "gatehouse-root" of '
                               'oidc connector "corp"; check spec.client_id')
    assert asyncio.run(_validator(sso, "gatehouse-other").validate_id_token(token, nonce_digest=None))["sub"]


def test_id_token_with_an_unknown_key_is_refused_after_one_refetch(sso):
    """Unknown kid: a real token signed by another provider's key; the validator fetches the JWKS once more."""
    from gatehouse.auth.oidc import ProviderError
    with OIDCProvider() as elsewhere:
        token = _real_id_token(elsewhere, elsewhere.client, elsewhere.redirect_uri(free_loopback_port()))
        kid = elsewhere.admin_state()["signing_kid"]
    validator = _validator(sso)
    with pytest.raises(ProviderError) as info:
        asyncio.run(validator.validate_id_token(token, nonce_digest=None))
    assert str(info.value) == (f'the ID token is signed with key "{kid}", which the identity provider of oidc '
                               f'connector "corp" does not publish even after fetching its key set again; check '
                               f"that spec.issuer_url names the provider that issued it")
    assert validator.jwks_fetches == 2   # the cached set, then exactly one refetch


def free_loopback_port() -> int:
    from conftest import free_port
    return free_port()
