"""Run the test OpenID provider (tests/oidc/provider.js, the `oidc-provider` npm package) as
a real process on 127.0.0.1 for a test, and talk to its admin endpoint."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .browser import browser_login, device_login, new_session

REPO = Path(__file__).resolve().parents[3]
FIXTURE_DIR = REPO / "tests" / "oidc"
# Node.js loads oidc-provider in about a second on a quiet machine; on two cores shared with
# other test processes (and npm or pip installs) it has taken over 30 s. A readiness wait,
# not a measurement: the provider's own start time is in start_seconds.
START_TIMEOUT = 120.0


@dataclass(frozen=True)
class TestUser:
    username: str
    password: str
    claims: dict

    __test__ = False  # not a pytest test class

    @property
    def sub(self) -> str:
        return self.claims["sub"]


def default_users() -> list[dict]:
    return json.loads((FIXTURE_DIR / "users.json").read_text())


def default_clients() -> list[dict]:
    return json.loads((FIXTURE_DIR / "clients.json").read_text())


class OIDCProviderError(RuntimeError):
    pass


class OIDCProvider:
    """The test OpenID provider as a context manager:

        with OIDCProvider() as idp:
            idp.issuer, idp.client_id, idp.client_secret, idp.users["alice"].password
            url = idp.browser_login(authorization_url, "alice", "alice-password")

    Arguments change the provider: `users` / `clients` (lists of dicts, default
    tests/oidc/users.json and clients.json), `issuer_path` (an issuer like
    http://127.0.0.1:PORT/realms/x), `userinfo_claims_only` (scope claims only at userinfo,
    not in the ID token), `device_flow`, `id_token_ttl` (seconds), `clock_offset` (seconds the
    provider's clock runs ahead, negative for behind), `jwks` (a private JWKS dict to sign
    with; default a fresh RSA key), `port` (default: any free one).
    """

    def __init__(self, *, users: list[dict] | None = None, clients: list[dict] | None = None,
                 issuer_path: str = "", userinfo_claims_only: bool = False, device_flow: bool = True,
                 id_token_ttl: int | None = None, clock_offset: int = 0, jwks: dict | None = None,
                 port: int = 0, debug: bool = False, start_timeout: float = START_TIMEOUT):
        self._users = users if users is not None else default_users()
        self._clients = clients if clients is not None else default_clients()
        self.issuer_path = issuer_path.rstrip("/")
        self.userinfo_claims_only = userinfo_claims_only
        self.device_flow = device_flow
        self.id_token_ttl = id_token_ttl
        self.clock_offset = clock_offset
        self.jwks = jwks
        self.port = port
        self.debug = debug
        self.start_timeout = start_timeout
        self.admin_token = secrets.token_urlsafe(24)
        self.users = {u["username"]: TestUser(u["username"], u["password"], u["claims"]) for u in self._users}
        self.tmpdir: str | None = None
        self.proc: subprocess.Popen | None = None
        self.base_url = ""
        self.start_seconds = 0.0  # how long the last start took, READY included

    def user(self, name: str) -> TestUser:
        """The test user whose username (or email claim) is NAME."""
        if name in self.users:
            return self.users[name]
        for user in self.users.values():
            if user.claims.get("email") == name:
                return user
        raise KeyError(name)

    @staticmethod
    def generate_signing_key(kid: str, size: int = 2048) -> dict:
        """A new private RSA JWK (RS256, use sig) for `jwks={"keys": [...]}` or `rotate_keys`."""
        from joserfc.jwk import RSAKey  # joserfc: in agent's test extra

        key = RSAKey.generate_key(size, parameters={"kid": kid, "alg": "RS256", "use": "sig"}, private=True)
        return key.as_dict(private=True)

    # ------------------------------------------------------------------ the client
    @property
    def client(self) -> dict:
        return self._clients[0]

    @property
    def client_id(self) -> str:
        return self.client["client_id"]

    @property
    def client_secret(self) -> str:
        return self.client["client_secret"]

    @property
    def clients(self) -> list[dict]:
        return list(self._clients)

    @property
    def issuer(self) -> str:
        return self.base_url + self.issuer_path

    @property
    def discovery_url(self) -> str:
        return self.issuer + "/.well-known/openid-configuration"

    def redirect_uri(self, port: int, host: str = "127.0.0.1", path: str = "/callback") -> str:
        """A loopback redirect URI on PORT: the client registers http://127.0.0.1/callback and the
        provider accepts any port there (RFC 8252 section 7.3)."""
        return f"http://{host}:{port}{path}"

    # ------------------------------------------------------------------ process
    def start(self) -> "OIDCProvider":
        node = shutil.which("node")
        if node is None:
            raise OIDCProviderError("node is not installed; run scripts/install-deps.sh")
        if self.tmpdir is None:
            self.tmpdir = tempfile.mkdtemp(prefix="gh-oidc-")
        users_file = os.path.join(self.tmpdir, "users.json")
        clients_file = os.path.join(self.tmpdir, "clients.json")
        with open(users_file, "w", encoding="utf-8") as fh:
            json.dump(self._users, fh)
        with open(clients_file, "w", encoding="utf-8") as fh:
            json.dump(self._clients, fh)
        cmd = [node, str(FIXTURE_DIR / "provider.js"), "--port", str(self.port),
               "--users", users_file, "--clients", clients_file]
        if self.issuer_path:
            cmd += ["--issuer-path", self.issuer_path]
        if self.userinfo_claims_only:
            cmd.append("--userinfo-claims-only")
        if not self.device_flow:
            cmd.append("--disable-device-flow")
        if self.id_token_ttl is not None:
            cmd += ["--id-token-ttl", str(self.id_token_ttl)]
        if self.clock_offset:
            cmd += ["--clock-offset", str(self.clock_offset)]
        if self.jwks is not None:
            jwks_file = os.path.join(self.tmpdir, "jwks.json")
            with open(jwks_file, "w", encoding="utf-8") as fh:
                json.dump(self.jwks, fh)
            os.chmod(jwks_file, 0o600)
            cmd += ["--jwks", jwks_file]
        if self.debug:
            cmd.append("--debug")
        env = {k: v for k, v in os.environ.items() if not k.startswith("OIDC_") or k == "OIDC_NODE_MODULES"}
        env["OIDC_ADMIN_TOKEN"] = self.admin_token
        self.log_path = os.path.join(self.tmpdir, "provider.log")
        start_at = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.tmpdir, env=env, start_new_session=True)
        deadline = t0 + self.start_timeout
        while True:
            for line in self._log_bytes(start_at).decode("utf-8", "replace").splitlines():
                if line.startswith("READY "):
                    self.base_url = line.split()[1]
                    self.port = int(self.base_url.rsplit(":", 1)[1])
                    self.start_seconds = time.monotonic() - t0
                    return self
            if self.proc.poll() is not None:
                raise OIDCProviderError(f"the provider exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise OIDCProviderError(f"the provider was not READY in {self.start_timeout}s:\n{self.log()}")
            time.sleep(0.02)

    def stop(self):
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)

    def restart(self, **changes) -> "OIDCProvider":
        """Stop and start again on the same port (so the same issuer), with CHANGES to the
        constructor's arguments (e.g. jwks=another key set). The provider's sessions, codes and
        tokens are in memory: they do not survive a restart."""
        self.stop()
        for key, value in changes.items():
            if not hasattr(self, key) or key in ("users", "clients"):
                raise TypeError(f"restart() cannot change {key!r}")
            setattr(self, key, value)
        return self.start()

    def close(self):
        self.stop()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def __enter__(self) -> "OIDCProvider":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc):
        self.close()

    def _log_bytes(self, offset: int = 0) -> bytes:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                return fh.read()
        except (AttributeError, FileNotFoundError):
            return b""

    def log(self) -> str:
        """What the provider printed so far (its stdout and stderr)."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except (AttributeError, FileNotFoundError):
            return ""

    # ------------------------------------------------------------------ provider calls
    def metadata(self) -> dict:
        """The discovery document, fetched."""
        resp = new_session().get(self.discovery_url, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def _admin(self, method: str, what: str, body: dict | None = None) -> dict:
        resp = new_session().request(method, f"{self.base_url}/__admin/{what}", json=body, timeout=30,
                                headers={"Authorization": f"Bearer {self.admin_token}"})
        resp.raise_for_status()
        return resp.json()

    def admin_state(self) -> dict:
        """{"issuer", "kids" (published), "signing_kid", "clock_offset"}."""
        return self._admin("GET", "state")

    def rotate_keys(self, *, retire_previous: bool = False, jwks: dict | None = None) -> dict:
        """Sign with a new key from now on (a fresh RSA key, or the first key of JWKS, a private
        JWKS). The previous keys stay published unless RETIRE_PREVIOUS. Sessions and tokens
        survive. Returns {"kids", "signing_kid"}."""
        body: dict = {"retire_previous": retire_previous}
        if jwks is not None:
            body["jwks"] = jwks
        return self._admin("POST", "rotate-keys", body)

    def set_clock_offset(self, seconds: float) -> None:
        """Make the provider's clock run SECONDS ahead (negative: behind) from now on."""
        self._admin("POST", "clock", {"offset": seconds})
        self.clock_offset = seconds

    def browser_login(self, authorization_url: str, username: str, password: str | None = None, **kw) -> str:
        """`browser.browser_login`; the password defaults to the test user's."""
        if password is None:
            password = self.user(username).password
        return browser_login(authorization_url, username, password, **kw)

    def device_login(self, verification: str, username: str, password: str | None = None, **kw) -> str:
        """`browser.device_login`; a bare user code is typed at the provider's device page."""
        if password is None:
            password = self.user(username).password
        if not verification.startswith(("http://", "https://")):
            kw.setdefault("verification_uri", self.issuer + "/device")
        return device_login(verification, username, password, **kw)
