"""The OpenID provider of one ``kind: oidc`` connector, as the root's auth service talks to it.

Discovery, the authorization URL (code flow with PKCE S256, state and nonce), the code
exchange, the device authorization grant, userinfo, and ID-token validation. The HTTP calls
are made with aiohttp (never blocking the event loop); the OAuth and JOSE work is authlib's
and joserfc's: the authorization URL and the S256 challenge (authlib), the JWKS as a joserfc
KeySet, signatures (joserfc ``jwt.decode`` with ALGORITHMS, a fixed allowlist of asymmetric
algorithms that never comes from the provider's discovery document, so never ``none`` or
HS*), and the claims (authlib's ``CodeIDToken``: issuer, audience, expiry and issue time
with LEEWAY seconds of clock skew, ``azp``, ``at_hash``). The nonce is compared here, in
constant time, against the hash kept with the login request.

Discovery and the JWKS are cached per connector for CACHE_SECONDS. A token signed with a key
id the cached JWKS does not have makes ONE refetch (a provider rotating its keys); a key id
that is still unknown after it is refused. Every failure is a GatehouseError whose message is
one sentence naming the problem and the fix; the client secret is never part of one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from urllib.parse import quote

from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import errors as jose_errors
from joserfc import jwt
from joserfc.jwk import KeySet

from ..clock import now_iso
from ..errors import AccessDenied, BadParameter, ConnectionProblem

log = logging.getLogger("gatehouse.auth.oidc")

#: Signature algorithms an ID token may use: asymmetric only, whatever discovery offers.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519")
LEEWAY = 60                 # seconds of clock skew allowed on exp, iat and nbf
CACHE_SECONDS = 3600        # discovery document and JWKS
HTTP_TIMEOUT = 10.0
MAX_RESPONSE = 1024 * 1024  # bytes read from the provider per answer
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def digest(value: str) -> str:
    """The SHA-256 of a login secret (state, nonce, one-time secret), as kept in storage."""
    return hashlib.sha256(value.encode()).hexdigest()


def same_secret(value, stored_digest: str) -> bool:
    """Constant-time comparison of a presented secret with the digest kept for it."""
    if not isinstance(value, str) or not isinstance(stored_digest, str):
        return False
    return hmac.compare_digest(digest(value).encode(), stored_digest.encode())


class ProviderError(AccessDenied):
    """The identity provider refused, or answered something Gatehouse does not accept."""


class OAuthRefusal(ProviderError):
    """An OAuth error answer (``error`` and ``error_description``) from the token endpoint."""

    def __init__(self, message: str, error: str):
        super().__init__(message)
        self.error = error


class OIDCProvider:
    """The provider behind one connector (issuer, client id and secret); one instance per connector version."""

    def __init__(self, connector: dict):
        self.name = connector["metadata"]["name"]
        spec = connector["spec"]
        self.issuer = spec["issuer_url"]
        self.client_id = spec["client_id"]
        self._client_secret = spec["client_secret"]
        self._metadata: dict | None = None
        self._metadata_at = 0.0
        self._keys: KeySet | None = None
        self._keys_at = 0.0
        self.jwks_fetches = 0

    @property
    def what(self) -> str:
        return f'the identity provider of oidc connector "{self.name}"'

    # ------------------------------------------------------------------ HTTP
    async def _call(self, method: str, url: str, *, data: dict | None = None, auth: bool = False,
                    bearer: str = "") -> tuple[int, object]:
        """(HTTP status, decoded JSON or None) of one request to the provider."""
        import aiohttp

        headers = {"Accept": "application/json"}
        if auth:
            pair = f"{quote(self.client_id, safe='')}:{quote(self._client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT),
                                             trust_env=False) as session:
                async with session.request(method, url, data=data, headers=headers, allow_redirects=False) as resp:
                    body = await resp.content.read(MAX_RESPONSE + 1)
                    status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            reason = str(exc).rsplit(": ", maxsplit=1)[-1].strip() or type(exc).__name__
            raise ConnectionProblem(f"cannot reach {self.what} at {url} ({reason[:160]}); check spec.issuer_url and "
                                    f"that the provider is up and reachable from the auth server") from None
        if len(body) > MAX_RESPONSE:
            raise ProviderError(f"{self.what} answered {url} with more than {MAX_RESPONSE} bytes; check "
                                f"spec.issuer_url")
        try:
            return status, json.loads(body or b"null")
        except ValueError:
            return status, None

    async def _json(self, url: str, what: str, **kw) -> dict:
        status, payload = await self._call("GET", url, **kw)
        if status != 200 or not isinstance(payload, dict):
            shape = "a body that is not a JSON object" if status == 200 else f"HTTP {status}"
            raise ProviderError(f"{self.what} answered {what} at {url} with {shape}; check spec.issuer_url")
        return payload

    # ------------------------------------------------------------------ discovery and keys
    async def metadata(self) -> dict:
        """The discovery document (cached), checked to name exactly the configured issuer."""
        if self._metadata is not None and time.monotonic() - self._metadata_at < CACHE_SECONDS:
            return self._metadata
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        meta = await self._json(url, "the discovery request")
        if meta.get("issuer") != self.issuer:
            raise ProviderError(f'the identity provider at {url} names its issuer "{meta.get("issuer")}", not '
                                f'"{self.issuer}" as oidc connector "{self.name}" says; set spec.issuer_url to '
                                f"exactly the provider's issuer")
        for field in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(meta.get(field), str) or not meta[field].startswith(("https://", "http://")):
                raise ProviderError(f"the discovery document of {self.what} has no {field}; check spec.issuer_url")
        self._metadata, self._metadata_at = meta, time.monotonic()
        return meta

    async def keys(self, refresh: bool = False) -> KeySet:
        """The provider's signing keys (JWKS, cached); REFRESH fetches them again."""
        if self._keys is not None and not refresh and time.monotonic() - self._keys_at < CACHE_SECONDS:
            return self._keys
        uri = (await self.metadata())["jwks_uri"]
        document = await self._json(uri, "the key set (JWKS) request")
        self.jwks_fetches += 1
        try:
            keys = KeySet.import_key_set(document)
        except (jose_errors.JoseError, ValueError, TypeError, KeyError) as exc:
            raise ProviderError(f"the key set (JWKS) of {self.what} at {uri} cannot be read ({exc}); check the "
                                f"provider's configuration") from None
        self._keys, self._keys_at = keys, time.monotonic()
        log.debug("oidc %s: fetched %d signing key(s) from %s", self.name, len(keys.keys), uri)
        return keys

    # ------------------------------------------------------------------ the code flow
    async def authorization_url(self, *, redirect_uri: str, scope: list[str], state: str, nonce: str,
                                code_verifier: str) -> str:
        meta = await self.metadata()
        return prepare_grant_uri(meta["authorization_endpoint"], self.client_id, "code", redirect_uri=redirect_uri,
                                 scope=scope, state=state, nonce=nonce,
                                 code_challenge=create_s256_code_challenge(code_verifier),
                                 code_challenge_method="S256")

    async def exchange_code(self, code: str, *, redirect_uri: str, code_verifier: str) -> dict:
        """Tokens for an authorization code (client secret + PKCE verifier)."""
        return await self._token({"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                                  "code_verifier": code_verifier})

    async def _token(self, form: dict) -> dict:
        meta = await self.metadata()
        status, payload = await self._call("POST", meta["token_endpoint"], data=form, auth=True)
        if isinstance(payload, dict) and payload.get("error"):
            raise self._refusal(payload)
        if status != 200 or not isinstance(payload, dict):
            raise ProviderError(f"the token endpoint of {self.what} answered HTTP {status} without tokens; check "
                                f"the provider's log")
        if not isinstance(payload.get("id_token"), str):
            raise ProviderError(f'{self.what} returned no ID token; make sure spec.scope of oidc connector '
                                f'"{self.name}" includes openid')
        return payload

    def _refusal(self, payload: dict) -> OAuthRefusal:
        error = str(payload.get("error"))[:80]
        detail = str(payload.get("error_description") or "")[:200]
        shown = f"{error}: {detail}" if detail else error
        if error in ("invalid_client", "unauthorized_client"):
            return OAuthRefusal(f"{self.what} refused the client credentials ({shown}); check spec.client_id and "
                                f"spec.client_secret", error)
        if error == "invalid_grant":
            return OAuthRefusal(f"{self.what} refused the authorization code ({shown}); it was already used, has "
                                f"expired or belongs to another login: run 'gate login' again", error)
        return OAuthRefusal(f"{self.what} refused the token request ({shown}); check the connector and the "
                            f"provider's log", error)

    # ------------------------------------------------------------------ the device flow
    async def supports_device_flow(self) -> bool:
        return isinstance((await self.metadata()).get("device_authorization_endpoint"), str)

    async def device_authorization(self, scope: list[str]) -> dict:
        """Start a device authorization (RFC 8628): device_code, user_code, verification_uri[_complete], …"""
        meta = await self.metadata()
        endpoint = meta.get("device_authorization_endpoint")
        if not isinstance(endpoint, str):
            raise BadParameter(f"{self.what} does not offer the device flow (its discovery document has no "
                               f"device_authorization_endpoint); log in with a browser: gate login "
                               f"--auth={self.name}")
        status, payload = await self._call("POST", endpoint, data={"client_id": self.client_id,
                                                                   "scope": " ".join(scope)}, auth=True)
        if isinstance(payload, dict) and payload.get("error"):
            raise self._refusal(payload)
        needed = ("device_code", "user_code", "verification_uri")
        if status != 200 or not isinstance(payload, dict) or not all(isinstance(payload.get(k), str) for k in needed):
            raise ProviderError(f"the device authorization endpoint of {self.what} answered HTTP {status} without "
                                f"a device code; check the provider's log")
        return payload

    async def poll_device(self, device_code: str) -> dict:
        """Tokens once the user approved; OAuthRefusal with .error authorization_pending, slow_down, … before."""
        return await self._token({"grant_type": DEVICE_GRANT, "device_code": device_code,
                                  "client_id": self.client_id})

    # ------------------------------------------------------------------ userinfo
    async def userinfo(self, access_token: str, subject: str) -> dict:
        """The userinfo claims of the token's subject ({} when the provider has no userinfo endpoint)."""
        endpoint = (await self.metadata()).get("userinfo_endpoint")
        if not isinstance(endpoint, str) or not access_token:
            return {}
        info = await self._json(endpoint, "the userinfo request", bearer=access_token)
        if info.get("sub") != subject:
            raise ProviderError(f'the userinfo of {self.what} is about subject "{info.get("sub")}", not the ID '
                                f'token\'s "{subject}"; the login was refused: check the provider')
        return info

    # ------------------------------------------------------------------ ID tokens
    async def validate_id_token(self, id_token: str, *, nonce_digest: str | None, access_token: str = "") -> dict:
        """The claims of a valid ID token; ProviderError naming what is wrong with it otherwise.

        NONCE_DIGEST is the digest of the nonce sent in the authorization request (None for the
        device flow, which has none)."""
        token = self._decode(id_token, await self.keys())
        if token is None:  # a key id we do not know: the provider may have rotated its keys
            token = self._decode(id_token, await self.keys(refresh=True))
            if token is None:
                kid = _header(id_token).get("kid")
                raise ProviderError(f'the ID token is signed with key "{kid}", which {self.what} does not publish '
                                    f"even after fetching its key set again; check that spec.issuer_url names the "
                                    f"provider that issued it")
        claims = dict(token.claims)
        options = {"iss": {"essential": True, "value": self.issuer}, "aud": {"essential": True, "value": self.client_id},
                   "sub": {"essential": True}, "exp": {"essential": True}, "iat": {"essential": True}}
        try:
            CodeIDToken(claims, token.header, options,
                        {"client_id": self.client_id, "access_token": access_token}).validate(leeway=LEEWAY)
        except jose_errors.JoseError as exc:
            raise self._claim_problem(exc, claims) from None
        if nonce_digest is not None and not same_secret(claims.get("nonce"), nonce_digest):
            raise ProviderError("the ID token's nonce does not match this login request (a replayed or substituted "
                                "token); the login was refused: run 'gate login' again")
        return claims

    def _decode(self, id_token: str, keys: KeySet):
        """The decoded token, or None when its key id is not in KEYS."""
        try:
            return jwt.decode(id_token, keys, algorithms=list(ALGORITHMS))
        except jose_errors.InvalidKeyIdError:
            return None
        except jose_errors.UnsupportedAlgorithmError:
            alg = _header(id_token).get("alg")
            raise ProviderError(f'the ID token is signed with "{alg}", which Gatehouse does not accept (only '
                                f"{', '.join(ALGORITHMS[:-2])} or EdDSA); configure {self.what} to sign this "
                                f"client's ID tokens with RS256 or ES256") from None
        except jose_errors.BadSignatureError:
            kid = _header(id_token).get("kid")
            raise ProviderError(f'the signature of the ID token does not verify with key "{kid}" of {self.what}; '
                                f"the token was altered or the provider replaced that key (restart the auth service "
                                f"to fetch its keys again)") from None
        except (jose_errors.JoseError, ValueError, TypeError) as exc:
            raise ProviderError(f"{self.what} returned an ID token that cannot be read ({exc}); check the "
                                f"provider's configuration") from None

    def _claim_problem(self, exc: Exception, claims: dict) -> ProviderError:
        claim = getattr(exc, "claim", "") or str(exc)
        if isinstance(exc, jose_errors.ExpiredTokenError):
            return ProviderError(f"the ID token expired at {_when(claims.get('exp'))}, before the auth server "
                                 f"received it; check the clocks of the identity provider and the auth server")
        if isinstance(exc, jose_errors.MissingClaimError):
            return ProviderError(f'the ID token has no "{claim}" claim; check the configuration of {self.what}')
        if claim == "iss":
            return ProviderError(f'the ID token was issued by "{claims.get("iss")}", not by "{self.issuer}"; set '
                                 f'spec.issuer_url of oidc connector "{self.name}" to the provider that issues it')
        if claim in ("aud", "azp"):
            return ProviderError(f"the ID token is meant for {json.dumps(claims.get(claim))}, not for client "
                                 f'"{self.client_id}" of oidc connector "{self.name}"; check spec.client_id')
        if claim in ("iat", "nbf"):
            return ProviderError(f"the ID token is not valid before {_when(claims.get(claim))}, later than the "
                                 f"auth server's clock allows; check the clocks of the identity provider and the "
                                 f"auth server")
        return ProviderError(f'the ID token has an invalid "{claim}" claim; the login was refused, check the '
                             f"configuration of {self.what}")


def _header(token: str) -> dict:
    """The (unverified) JOSE header of a compact token, for messages only."""
    try:
        part = token.split(".", 1)[0]
        header = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (ValueError, AttributeError):
        return {}
    return header if isinstance(header, dict) else {}


def _when(value) -> str:
    return now_iso(value)[:19] + "Z" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
