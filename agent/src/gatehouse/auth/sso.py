"""Single sign-on logins at the root's auth service: OIDC requests, the provider's answer, certificates once.

The browser flow (authorization code + PKCE, the model of the system in the seeds)::

    gate ──POST /webapi/oidc/login──▶ proxy ──▶ auth.begin()        stores sso_requests/<id>
      {connector, gate's loopback redirect, its SSH and TLS public keys}      answers the provider's URL
    browser ──▶ provider ──▶ browser ──GET /webapi/oidc/callback?code&state──▶ proxy ──▶ auth.callback()
      exchanges the code (client secret + PKCE verifier), validates the ID token, maps claims to
      roles and traits, issues the same certificates as a password login, keeps them with the
      request under a new one-time secret, and answers gate's loopback URL with that secret
    proxy ──302──▶ browser ──▶ gate's loopback listener ──POST /webapi/oidc/certs──▶ auth.collect()

A request is random (its id and a state secret travel as ``state``), expires after
REQUEST_TTL seconds and is used once: the callback claims it with a conditional write, so a
replayed answer is refused, and the certificates are handed out once. Only digests of the
state, the nonce and the one-time secret are stored, compared in constant time; the PKCE
verifier is stored as is (the provider needs it) and never leaves auth. Certificates never
appear in a URL, and the one-time secret goes only to a loopback address
(``check_client_redirect``). The device flow (``device_begin`` / ``device_poll``) keeps the
device code in the request and hands gate a poll secret instead.

An SSO user is stored as a user record (roles from ``claims_to_roles``, traits from the
claims) that expires with their certificate, next to ``sso_users/<name>`` saying which
connector and subject it came from; a local user of the same name is never overwritten.
Every login and every refusal is audited as ``user.login`` with ``method: oidc``, the
connector, the roles and the traits; never a secret.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from urllib.parse import urlencode

from .. import pki
from ..backend.base import Op
from ..claims import NoRoles, claims_to_traits, map_claims, no_roles_message, username
from ..errors import AccessDenied, BadParameter, CompareFailed, GatehouseError, NotFound, from_dict
from ..wire import SSO_SECRET_PARAM, is_loopback_redirect
from . import keys
from .authz import Identity, require_kind
from .oidc import OAuthRefusal, OIDCProvider, ProviderError, digest, same_secret

log = logging.getLogger("gatehouse.auth.sso")

REQUEST_TTL = 600          # seconds a browser login may take
MAX_DEVICE_TTL = 1800      # seconds a device login may take, whatever the provider says
DEFAULT_INTERVAL = 5       # seconds between device polls when the provider names none (RFC 8628)
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
_VIA_PROXY = "single sign-on logins go through the proxy: use 'gate login --proxy=HOST:3080 --auth=NAME'"
_UNKNOWN = ("this login is unknown or has expired (the answer came too late, or its state was altered); "
            "run 'gate login' again")


def check_client_redirect(url) -> str:
    """gate's loopback listener (wire.is_loopback_redirect); BadParameter for anything else."""
    if not is_loopback_redirect(url):
        raise BadParameter(f'the client redirect URL "{str(url or "")[:200]}" is not a loopback address; certificates '
                           f"go only back to gate on the user's own machine (http://127.0.0.1:PORT/... or "
                           f"http://[::1]:PORT/...), so log in with 'gate login --auth=NAME'")
    return url


class SSOLogins:
    def __init__(self, svc):
        self.svc = svc
        self.backend = svc.backend
        self.audit = svc.audit
        self._providers: dict[str, tuple[tuple, OIDCProvider]] = {}

    # ------------------------------------------------------------------ connectors
    async def connector(self, name: str) -> dict:
        if not isinstance(name, str) or not name:
            raise BadParameter("name the oidc connector to log in with, e.g. gate login --auth=corp")
        try:
            return (await self.backend.get(keys.oidc_connector(name))).value
        except (NotFound, BadParameter):
            raise NotFound(f'oidc connector "{name[:100]}" not found on this cluster; check the name given to '
                           f"--auth ('gatectl get oidc' lists them)") from None

    def provider(self, connector: dict) -> OIDCProvider:
        """The connector's provider client, with its caches; a changed connector gets a new one."""
        name, spec = connector["metadata"]["name"], connector["spec"]
        version = (spec["issuer_url"], spec["client_id"], digest(spec["client_secret"]))
        cached = self._providers.get(name)
        if cached is None or cached[0] != version:
            cached = self._providers[name] = (version, OIDCProvider(connector))
        return cached[1]

    # ------------------------------------------------------------------ browser flow
    async def begin(self, ident: Identity, connector_name: str, client_redirect: str, ssh_public: str,
                    tls_public: str, ttl: int, client_addr: str) -> dict:
        """Store a login request; answer the provider's authorization URL for the browser."""
        require_kind(ident, ("proxy",), _VIA_PROXY)
        try:
            await self.svc.login_addr_limiter.check(client_addr, "login")
            check_client_redirect(client_redirect)
            pki.ssh_fingerprint(ssh_public)  # a malformed key fails now, not after the browser round trip
            connector = await self.connector(connector_name)
            provider = self.provider(connector)
            request_id, state, nonce, verifier = (secrets.token_urlsafe(n) for n in (16, 32, 32, 48))
            url = await provider.authorization_url(redirect_uri=connector["spec"]["redirect_url"],
                                                   scope=connector["spec"]["scope"], state=f"{request_id}.{state}",
                                                   nonce=nonce, code_verifier=verifier)
            await self.backend.create(keys.sso_request(request_id), {
                "type": "code", "connector": connector_name, "status": "pending", "state": digest(state),
                "nonce": digest(nonce), "verifier": verifier, "client_redirect": client_redirect,
                "ssh_public_key": ssh_public, "tls_public_key": tls_public, "ttl": int(ttl or 0),
                "client_addr": client_addr}, expires=time.time() + REQUEST_TTL)
        except GatehouseError as exc:
            self._refused(exc, connector_name, client_addr, "browser")
            raise
        log.info("sso: login %s started with oidc connector %s from %s", request_id, connector_name, client_addr)
        return {"auth_url": url, "request_id": request_id, "expires_in": REQUEST_TTL}

    async def callback(self, ident: Identity, params: dict, client_addr: str) -> dict:
        """The provider's answer (via the browser and the proxy): claim the request once, finish the
        login, keep the outcome for gate; answer gate's loopback URL with a one-time secret."""
        require_kind(ident, ("proxy",), _VIA_PROXY)
        request_id, _unused, state = str(params.get("state") or "").partition(".")
        record: dict = {}
        try:
            item, record = await self._request(request_id, "code")
            if not same_secret(state, record.get("state")):
                raise AccessDenied("the state of the identity provider's answer does not match the login in progress "
                                   "(a forged or altered answer); run 'gate login' again")
            if record["status"] != "pending":
                raise AccessDenied("this login was already answered by the identity provider (a replayed or repeated "
                                   "answer); run 'gate login' again")
            try:
                item = await self.backend.compare_and_swap(item.key, item.revision, {**record, "status": "answered"},
                                                           expires=item.expires)
            except (CompareFailed, NotFound):
                raise AccessDenied("this login was already answered by the identity provider (a replayed or repeated "
                                   "answer); run 'gate login' again") from None
        except GatehouseError as exc:
            self._refused(exc, record.get("connector", ""), client_addr, "browser")
            raise
        one_time = secrets.token_urlsafe(32)
        try:
            outcome = {"status": "done", "result": await self._finish_code(record, params, client_addr)}
        except GatehouseError as exc:
            self._refused(exc, record["connector"], client_addr, "browser")
            outcome = {"status": "failed", "error": exc.to_dict()["error"]}
        await self.backend.put(item.key, {**_without_secrets(record), **outcome, "secret": digest(one_time)},
                               expires=item.expires)
        return {"redirect": f"{record['client_redirect']}?{urlencode({SSO_SECRET_PARAM: one_time})}"}

    async def _finish_code(self, record: dict, params: dict, client_addr: str) -> dict:
        connector = await self.connector(record["connector"])
        provider = self.provider(connector)
        if params.get("error"):
            detail = str(params.get("error_description") or "")[:200]
            raise ProviderError(f"the identity provider refused the login ({str(params['error'])[:80]}"
                                f"{': ' + detail if detail else ''}); sign in again and approve the request, or ask "
                                f"the provider's administrator")
        issuer = params.get("iss")
        if issuer is not None and issuer != provider.issuer:
            raise ProviderError(f'the answer came from issuer "{str(issuer)[:200]}", not from "{provider.issuer}" of '
                                f'oidc connector "{provider.name}" (a mix-up of identity providers); run '
                                f"'gate login' again")
        if not params.get("code"):
            raise ProviderError("the identity provider's answer holds no authorization code; run 'gate login' again")
        tokens = await provider.exchange_code(str(params["code"]), redirect_uri=connector["spec"]["redirect_url"],
                                              code_verifier=record["verifier"])
        claims = await provider.validate_id_token(tokens["id_token"], nonce_digest=record["nonce"],
                                                  access_token=str(tokens.get("access_token") or ""))
        return await self._log_in(connector, provider, claims, tokens, record, client_addr, "browser")

    async def collect(self, ident: Identity, request_id: str, secret: str) -> dict:
        """gate trades the one-time secret for its certificates (or the reason the login failed), once."""
        require_kind(ident, ("proxy",), _VIA_PROXY)
        record: dict = {}
        try:
            item, record = await self._request(request_id, "code")
            if record["status"] in ("pending", "answered"):
                raise BadParameter("the identity provider has not answered this login yet; finish signing in in the "
                                   "browser")
            if record["status"] == "collected":
                raise AccessDenied("the certificates of this login were already handed out; run 'gate login' again")
            if not same_secret(secret, record.get("secret")):
                raise AccessDenied("the one-time secret does not match this login; run 'gate login' again")
            await self._close(item, record)
        except GatehouseError as exc:
            self._refused(exc, record.get("connector", ""), "", "browser")
            raise
        if record["status"] == "failed":
            raise from_dict({"error": record["error"]})  # audited when the answer came
        return record["result"]

    # ------------------------------------------------------------------ device flow
    async def device_begin(self, ident: Identity, connector_name: str, ssh_public: str, tls_public: str, ttl: int,
                           client_addr: str) -> dict:
        """Start a device authorization: the user code and the URL for gate to show, a poll secret for gate."""
        require_kind(ident, ("proxy",), _VIA_PROXY)
        try:
            await self.svc.login_addr_limiter.check(client_addr, "login")
            pki.ssh_fingerprint(ssh_public)
            connector = await self.connector(connector_name)
            answer = await self.provider(connector).device_authorization(connector["spec"]["scope"])
            expires_in = _bounded(answer.get("expires_in"), 600, 30, MAX_DEVICE_TTL)
            interval = _bounded(answer.get("interval"), DEFAULT_INTERVAL, 1, 60)
            request_id, poll = secrets.token_urlsafe(16), secrets.token_urlsafe(32)
            await self.backend.create(keys.sso_request(request_id), {
                "type": "device", "connector": connector_name, "status": "pending", "poll": digest(poll),
                "device_code": answer["device_code"], "interval": interval, "next_poll": 0.0,
                "ssh_public_key": ssh_public, "tls_public_key": tls_public, "ttl": int(ttl or 0),
                "client_addr": client_addr}, expires=time.time() + expires_in)
        except GatehouseError as exc:
            self._refused(exc, connector_name, client_addr, "device")
            raise
        out = {"request_id": request_id, "secret": poll, "user_code": answer["user_code"],
               "verification_uri": answer["verification_uri"], "interval": interval, "expires_in": expires_in}
        if isinstance(answer.get("verification_uri_complete"), str):
            out["verification_uri_complete"] = answer["verification_uri_complete"]
        return out

    async def device_poll(self, ident: Identity, request_id: str, secret: str) -> dict:
        """{"status": "pending", "interval"} until the user approved; then the certificates, once."""
        require_kind(ident, ("proxy",), _VIA_PROXY)
        record: dict = {}
        try:
            item, record = await self._request(request_id, "device")
            if not same_secret(secret, record["poll"]):
                raise AccessDenied("the poll secret does not match this device login; run 'gate login --device' again")
            if record["status"] != "pending":
                raise AccessDenied("this device login is already finished; run 'gate login --device' again")
        except GatehouseError as exc:
            self._refused(exc, record.get("connector", ""), "", "device")
            raise
        pending = {"status": "pending", "interval": record["interval"]}
        now = time.time()
        if now < record["next_poll"]:
            return pending
        try:  # one poll of the provider per interval, however often (and from however many proxies) gate asks
            item = await self.backend.compare_and_swap(item.key, item.revision,
                                                       {**record, "next_poll": now + record["interval"]},
                                                       expires=item.expires)
        except (CompareFailed, NotFound):
            return pending
        try:
            connector = await self.connector(record["connector"])
            provider = self.provider(connector)
            try:
                tokens = await provider.poll_device(record["device_code"])
            except OAuthRefusal as exc:
                if exc.error == "authorization_pending":
                    return pending
                if exc.error == "slow_down":
                    record = {**record, "interval": record["interval"] + 5}
                    await self.backend.put(item.key, {**record, "next_poll": now + record["interval"]},
                                           expires=item.expires)
                    return {"status": "pending", "interval": record["interval"]}
                raise _device_refusal(exc) from None
            claims = await provider.validate_id_token(tokens["id_token"], nonce_digest=None,
                                                      access_token=str(tokens.get("access_token") or ""))
            certs = await self._log_in(connector, provider, claims, tokens, record, record["client_addr"], "device")
        except GatehouseError as exc:
            self._refused(exc, record["connector"], record["client_addr"], "device")
            try:
                await self._close(item, record)
            except GatehouseError:
                pass  # already closed by a concurrent poll: the refusal above is what gate must see
            raise
        await self._close(item, record)
        return {"status": "done", **certs}

    # ------------------------------------------------------------------ shared
    async def _request(self, request_id: str, kind: str):
        """(item, record) of a login request of KIND; NotFound when it is unknown or expired."""
        if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
            raise NotFound(_UNKNOWN)
        try:
            item = await self.backend.get(keys.sso_request(request_id))
        except NotFound:
            raise NotFound(_UNKNOWN) from None
        if item.value.get("type") != kind:
            raise NotFound(_UNKNOWN)
        return item, item.value

    async def _close(self, item, record: dict) -> None:
        """Mark a request used up (kept until it expires, so a replay is recognised): only its kind, connector
        and the state's digest stay."""
        try:
            await self.backend.compare_and_swap(item.key, item.revision,
                                                {"type": record["type"], "connector": record["connector"],
                                                 "state": record.get("state"), "status": "collected"},
                                                expires=item.expires)
        except (CompareFailed, NotFound):
            raise AccessDenied("this login was already completed; run 'gate login' again") from None

    async def _log_in(self, connector: dict, provider: OIDCProvider, id_claims: dict, tokens: dict, record: dict,
                      client_addr: str, flow: str) -> dict:
        """Claims → user name, traits and roles; the SSO user record; the certificates."""
        from .service import user_cert_ttl

        name, spec = connector["metadata"]["name"], connector["spec"]
        claims = {**await provider.userinfo(str(tokens.get("access_token") or ""), id_claims["sub"]), **id_claims}
        traits = claims_to_traits(claims)
        user_name = username(claims, spec["username_claim"], name)
        roles = map_claims(spec["claims_to_roles"], traits)
        if not roles:
            raise NoRoles(no_roles_message(name, user_name, spec["claims_to_roles"], traits))
        existing = await self.svc.roles_by_name()
        missing = [r for r in roles if r not in existing]
        if missing:
            raise AccessDenied(f'oidc connector "{name}" gives "{user_name}" the role "{missing[0]}", which does not '
                               f"exist on this cluster; create the role or fix claims_to_roles")
        if await self.backend.exists(keys.user(user_name)) and not await self.backend.exists(keys.sso_user(user_name)):
            raise AccessDenied(f'a local user named "{user_name}" already exists, so oidc connector "{name}" cannot log '
                               f"in a user of that name; rename or remove the local user, or set username_claim to "
                               f"another claim")
        user = {"kind": "user", "version": "v2", "metadata": {"name": user_name},
                "spec": {"roles": roles, "traits": traits}}
        checker = await self.svc.checker_for_user(user)
        ttl = user_cert_ttl(record["ttl"], checker.cert_options()["ttl"])
        expires = time.time() + ttl + 60  # the record lives as long as the certificate
        await self.backend.atomic([
            Op("put", keys.user(user_name), user, expires=expires),
            Op("put", keys.sso_user(user_name), {"connector": f"oidc/{name}", "subject": claims["sub"],
                                                 "issuer": provider.issuer}, expires=expires)])
        certs = await self.svc.issue_user_certs(user, record["ssh_public_key"], record["tls_public_key"], ttl,
                                                connector=f"oidc/{name}")
        self.audit.emit("user.login", user=user_name, addr=client_addr, method="oidc", connector=name, flow=flow,
                        subject=claims["sub"], roles=roles, traits=traits)
        log.info("sso: %s logged in with oidc connector %s (roles %s)", user_name, name, ", ".join(roles))
        return certs

    def _refused(self, exc: GatehouseError, connector: str, client_addr: str, flow: str) -> None:
        self.audit.emit("user.login", success=False, method="oidc", connector=connector or None, flow=flow,
                        addr=client_addr or None, error=str(exc))
        log.info("sso: login with oidc connector %s refused: %s", connector or "?", exc)


def _without_secrets(record: dict) -> dict:
    """A code-flow request once answered: no nonce or PKCE verifier any more (the state's digest stays, so a
    replayed answer is recognised as one)."""
    return {k: v for k, v in record.items() if k not in ("nonce", "verifier")}


def _device_refusal(exc: OAuthRefusal) -> GatehouseError:
    if exc.error == "access_denied":
        return AccessDenied("the login was denied at the identity provider; run 'gate login --device' again and "
                            "approve it")
    if exc.error == "expired_token":
        return AccessDenied("the device code expired before the login was approved; run 'gate login --device' again "
                            "and approve it sooner")
    return exc


def _bounded(value, default: int, low: int, high: int) -> int:
    try:
        number = int(value) if value is not None else default
    except (TypeError, ValueError):
        number = default
    return min(max(number, low), high)
