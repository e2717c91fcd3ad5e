"""The test OpenID provider works with a real client, the way Gatehouse's OIDC connector will
use it: discovery, authorization code + PKCE (S256) + state + nonce through a loopback
redirect on any port, the provider's own login and consent forms, ID-token validation
(signature from the JWKS with an algorithm allowlist, issuer, audience, expiry with leeway,
nonce), the device authorization grant, signing-key rotation with a JWKS refetch, and the
refusals (wrong secret, wrong password, missing PKCE, unregistered redirect).

The client side is authlib (OAuth2Session, CodeIDToken) and joserfc (authlib's JOSE layer);
`IDTokenVerifier` below is the reference for the agent's validation code.
"""

from __future__ import annotations

import socket
from urllib.parse import parse_qs, urlsplit

import pytest
from authlib.common.security import generate_token
from authlib.integrations.base_client import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc6749.errors import MismatchingStateException
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import (BadSignatureError, ExpiredTokenError, InvalidClaimError, InvalidKeyIdError,
                            UnsupportedAlgorithmError)
from joserfc.jwk import KeySet

from . import LoginError, OIDCProvider, default_clients, new_session

SCOPE = "openid email profile groups"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# Asymmetric signatures only: never "none", never HS256 (a MAC with the client secret), even
# when the provider's discovery document offers it.
ALGORITHMS = ["RS256", "PS256", "ES256", "EdDSA"]
HS256_CLIENT = {
    "client_id": "gatehouse-hs256",
    "client_secret": "a-secret-long-enough-for-hs256-0123456789",
    "application_type": "native",
    "redirect_uris": ["http://127.0.0.1/callback"],
    "grant_types": ["authorization_code"],
    "response_types": ["code"],
    "id_token_signed_response_alg": "HS256",
}


@pytest.fixture(scope="module")
def idp():
    with OIDCProvider(clients=default_clients() + [HS256_CLIENT]) as provider:
        yield provider


def loopback_port() -> int:
    """A port as `gate` would get for its loopback listener."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class IDTokenVerifier:
    """ID-token validation as the agent should do it: discovery once (its issuer must be the
    configured one), the JWKS cached and refetched once when a token names an unknown kid,
    signatures checked against an algorithm allowlist, then the claims with some leeway."""

    def __init__(self, issuer: str, client_id: str, *, leeway: int = 60, algorithms=ALGORITHMS):
        self.issuer = issuer
        self.client_id = client_id
        self.leeway = leeway
        self.algorithms = list(algorithms)
        self.http = new_session()
        resp = self.http.get(issuer + "/.well-known/openid-configuration", timeout=10)
        resp.raise_for_status()
        self.metadata = resp.json()
        assert self.metadata["issuer"] == issuer  # OpenID Connect Discovery 1.0, section 4.3
        self._keys: KeySet | None = None
        self.jwks_fetches = 0

    def keys(self, refresh: bool = False) -> KeySet:
        if self._keys is None or refresh:
            resp = self.http.get(self.metadata["jwks_uri"], timeout=10)
            resp.raise_for_status()
            self._keys = KeySet.import_key_set(resp.json())
            self.jwks_fetches += 1
        return self._keys

    def verify(self, id_token: str, *, nonce: str | None = None, access_token: str | None = None) -> dict:
        try:
            token = jwt.decode(id_token, self.keys(), algorithms=self.algorithms)
        except InvalidKeyIdError:  # a key we have not seen: the provider rotated; fetch once
            token = jwt.decode(id_token, self.keys(refresh=True), algorithms=self.algorithms)
        claims = CodeIDToken(
            token.claims, token.header,
            {"iss": {"essential": True, "value": self.issuer},
             "aud": {"essential": True, "value": self.client_id},
             "sub": {"essential": True}, "exp": {"essential": True}, "iat": {"essential": True}},
            {"nonce": nonce, "client_id": self.client_id, "access_token": access_token},
        )
        claims.validate(leeway=self.leeway)
        if nonce is not None:
            assert claims.get("nonce") == nonce  # CodeIDToken checks it; be explicit anyway
        return dict(claims)


def oauth_client(idp: OIDCProvider, port: int | None = None, *, client: dict | None = None,
                 secret: str | None = None) -> OAuth2Session:
    client = client or idp.client
    session = OAuth2Session(client["client_id"], secret if secret is not None else client["client_secret"],
                            scope=SCOPE, redirect_uri=idp.redirect_uri(port or loopback_port()),
                            code_challenge_method="S256")
    session.trust_env = False
    return session


def code_flow(idp: OIDCProvider, username: str, *, client: dict | None = None, port: int | None = None):
    """Authorization code + PKCE + state + nonce through the provider's forms; returns
    (tokens, nonce, the redirect URL)."""
    metadata = idp.metadata()
    oauth = oauth_client(idp, port, client=client)
    verifier, nonce = generate_token(64), generate_token(24)
    url, state = oauth.create_authorization_url(metadata["authorization_endpoint"], code_verifier=verifier,
                                                nonce=nonce)
    redirect = idp.browser_login(url, username)
    tokens = oauth.fetch_token(metadata["token_endpoint"], authorization_response=redirect, state=state,
                               code_verifier=verifier)
    return tokens, nonce, redirect


# ---------------------------------------------------------------------------------------------
def test_discovery(idp):
    metadata = idp.metadata()
    assert metadata["issuer"] == idp.issuer == f"http://127.0.0.1:{idp.port}"
    for endpoint in ("authorization_endpoint", "token_endpoint", "jwks_uri", "userinfo_endpoint",
                     "device_authorization_endpoint", "end_session_endpoint"):
        assert metadata[endpoint].startswith(idp.issuer + "/"), endpoint
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["response_types_supported"] == ["code"]
    assert DEVICE_GRANT in metadata["grant_types_supported"]
    assert metadata["authorization_response_iss_parameter_supported"] is True
    assert {"openid", "email", "profile", "groups"} <= set(metadata["scopes_supported"])
    assert {"groups", "logins_from_idp", "email", "preferred_username"} <= set(metadata["claims_supported"])
    assert "RS256" in metadata["id_token_signing_alg_values_supported"]


def test_code_flow_with_pkce_state_and_nonce(idp):
    metadata = idp.metadata()
    port = loopback_port()
    oauth = oauth_client(idp, port)
    verifier, nonce = generate_token(64), generate_token(24)
    url, state = oauth.create_authorization_url(metadata["authorization_endpoint"], code_verifier=verifier,
                                                nonce=nonce)
    query = parse_qs(urlsplit(url).query)
    assert query["code_challenge"] == [create_s256_code_challenge(verifier)]
    assert query["code_challenge_method"] == ["S256"]
    assert query["nonce"] == [nonce] and query["state"] == [state]

    redirect = idp.browser_login(url, "alice", "alice-password")

    assert redirect.startswith(f"http://127.0.0.1:{port}/callback?")
    params = parse_qs(urlsplit(redirect).query)
    assert params["state"] == [state]
    assert params["iss"] == [idp.issuer]  # RFC 9207: check it against the configured issuer
    assert params["code"][0]
    with pytest.raises(MismatchingStateException):  # a redirect for another request
        oauth.fetch_token(metadata["token_endpoint"], authorization_response=redirect, state="another-state",
                          code_verifier=verifier)

    tokens = oauth.fetch_token(metadata["token_endpoint"], authorization_response=redirect, state=state,
                               code_verifier=verifier)
    assert tokens["token_type"].lower() == "bearer" and tokens["access_token"] and tokens["id_token"]

    verifier_ = IDTokenVerifier(idp.issuer, idp.client_id)
    claims = verifier_.verify(tokens["id_token"], nonce=nonce, access_token=tokens["access_token"])
    assert claims["iss"] == idp.issuer and claims["aud"] == idp.client_id
    assert claims["sub"] == "u-0001-alice"
    assert claims["email"] == "alice@example.com" and claims["email_verified"] is True
    assert claims["name"] == "Alice Example" and claims["preferred_username"] == "alice"
    assert claims["groups"] == ["admins", "dev"]
    assert claims["logins_from_idp"] == ["alice", "ops"]
    assert claims["amr"] == ["pwd"] and isinstance(claims["auth_time"], int)

    userinfo = oauth.get(metadata["userinfo_endpoint"]).json()
    assert userinfo["sub"] == claims["sub"]
    assert userinfo["groups"] == ["admins", "dev"] and userinfo["logins_from_idp"] == ["alice", "ops"]

    with pytest.raises(InvalidClaimError):  # the nonce of another request
        verifier_.verify(tokens["id_token"], nonce="another-nonce")
    with pytest.raises(InvalidClaimError):  # a token for another client
        IDTokenVerifier(idp.issuer, "another-client").verify(tokens["id_token"], nonce=nonce)
    with pytest.raises(OAuthError) as err:  # a code is good once
        oauth.fetch_token(metadata["token_endpoint"], authorization_response=redirect, state=state,
                          code_verifier=verifier)
    assert err.value.error == "invalid_grant"


def test_claims_of_the_other_test_users(idp):
    verifier = IDTokenVerifier(idp.issuer, idp.client_id)
    tokens, nonce, _ = code_flow(idp, "dave")
    dave = verifier.verify(tokens["id_token"], nonce=nonce)
    assert dave["sub"] == "u-0004-dave" and dave["groups"] == [] and "email" not in dave
    tokens, nonce, _ = code_flow(idp, "carol@contractors.example.org")  # the login form takes an email too
    carol = verifier.verify(tokens["id_token"], nonce=nonce)
    assert carol["groups"] == "contractors"  # a single group as a string, as some providers send it


def test_loopback_redirect_on_any_port(idp):
    """RFC 8252 section 7.3: the client registers http://127.0.0.1/callback and the provider
    takes any port there; the host and path must match exactly."""
    ports = {loopback_port() for _ in range(2)} | {65535}
    for port in ports:
        tokens, _, redirect = code_flow(idp, "alice", port=port)
        assert redirect.startswith(f"http://127.0.0.1:{port}/callback?code=")
    metadata = idp.metadata()
    port = loopback_port()
    for bad in (f"http://127.0.0.1:{port}/other", f"http://localhost:{port}/callback",
                f"http://127.0.0.2:{port}/callback"):
        oauth = oauth_client(idp)
        url, _ = oauth.create_authorization_url(metadata["authorization_endpoint"], redirect_uri=bad,
                                                code_verifier=generate_token(64), nonce=generate_token(24))
        with pytest.raises(LoginError) as err:
            idp.browser_login(url, "alice")
        assert err.value.status == 400 and "redirect_uri" in err.value.text, err.value


def test_pkce_is_required(idp):
    metadata = idp.metadata()
    port = loopback_port()
    oauth = oauth_client(idp, port)
    # no code_challenge at all: the provider sends the error back to the client, before any login
    url, state = oauth.create_authorization_url(metadata["authorization_endpoint"], nonce=generate_token(24))
    assert "code_challenge" not in url
    params = parse_qs(urlsplit(idp.browser_login(url, "alice")).query)
    assert params["error"] == ["invalid_request"] and "PKCE" in params["error_description"][0]
    # code_challenge_method=plain is not accepted either
    url, state = oauth.create_authorization_url(metadata["authorization_endpoint"], nonce=generate_token(24),
                                                code_challenge="x" * 43, code_challenge_method="plain")
    params = parse_qs(urlsplit(idp.browser_login(url, "alice")).query)
    assert params["error"] == ["invalid_request"]
    # the right challenge, then the wrong verifier at the token endpoint
    verifier = generate_token(64)
    url, state = oauth.create_authorization_url(metadata["authorization_endpoint"], code_verifier=verifier,
                                                nonce=generate_token(24))
    redirect = idp.browser_login(url, "alice")
    with pytest.raises(OAuthError) as err:
        oauth.fetch_token(metadata["token_endpoint"], authorization_response=redirect, state=state,
                          code_verifier=generate_token(64))
    assert err.value.error == "invalid_grant"


def test_wrong_password_and_denied_consent(idp):
    metadata = idp.metadata()
    oauth = oauth_client(idp)
    url, _ = oauth.create_authorization_url(metadata["authorization_endpoint"], code_verifier=generate_token(64),
                                            nonce=generate_token(24))
    with pytest.raises(LoginError) as err:
        idp.browser_login(url, "alice", "not-alices-password")
    assert "login rejected" in str(err.value) and "Invalid username or password" in err.value.text
    with pytest.raises(LoginError):
        idp.browser_login(url, "mallory", "anything")

    url, state = oauth.create_authorization_url(metadata["authorization_endpoint"],
                                                code_verifier=generate_token(64), nonce=generate_token(24))
    params = parse_qs(urlsplit(idp.browser_login(url, "alice", approve=False)).query)
    assert params["error"] == ["access_denied"] and params["state"] == [state]


def test_wrong_client_secret_is_refused(idp):
    metadata = idp.metadata()
    port = loopback_port()
    oauth = oauth_client(idp, port)
    verifier = generate_token(64)
    url, state = oauth.create_authorization_url(metadata["authorization_endpoint"], code_verifier=verifier,
                                                nonce=generate_token(24))
    redirect = idp.browser_login(url, "alice")
    wrong = oauth_client(idp, port, secret="not-the-secret")
    with pytest.raises(OAuthError) as err:
        wrong.fetch_token(metadata["token_endpoint"], authorization_response=redirect, state=state,
                          code_verifier=verifier)
    assert err.value.error == "invalid_client"
    http = new_session()
    resp = http.post(metadata["device_authorization_endpoint"], data={"scope": SCOPE},
                     auth=(idp.client_id, "not-the-secret"), timeout=10)
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"
    # the refused exchange did not use the code up: the real client still redeems it
    tokens = oauth.fetch_token(metadata["token_endpoint"], authorization_response=redirect, state=state,
                               code_verifier=verifier)
    assert tokens["id_token"]


def device_authorization(idp: OIDCProvider, oauth: OAuth2Session) -> dict:
    """RFC 8628 section 3.1 (authlib has no call for it: a POST with client authentication)."""
    resp = oauth.post(idp.metadata()["device_authorization_endpoint"], data={"scope": SCOPE},
                      auth=(idp.client_id, idp.client_secret), withhold_token=True, timeout=10)
    resp.raise_for_status()
    return resp.json()


def device_token(idp: OIDCProvider, oauth: OAuth2Session, device_code: str) -> dict:
    """One poll of the token endpoint (RFC 8628 section 3.4): the tokens, or {"error": ...}."""
    try:
        return oauth.fetch_token(idp.metadata()["token_endpoint"], grant_type=DEVICE_GRANT, device_code=device_code)
    except OAuthError as err:
        return {"error": err.error}


def test_device_flow_round_trip(idp):
    oauth = oauth_client(idp)
    verifier = IDTokenVerifier(idp.issuer, idp.client_id)

    grant = device_authorization(idp, oauth)
    assert {"device_code", "user_code", "verification_uri", "verification_uri_complete", "expires_in"} <= set(grant)
    assert "interval" not in grant  # optional (RFC 8628 section 3.2): a client polls every 5 s then
    assert grant["verification_uri"] == idp.issuer + "/device"
    assert device_token(idp, oauth, grant["device_code"])["error"] == "authorization_pending"
    text = idp.device_login(grant["verification_uri_complete"], "bob", "bob-password")
    assert "signed in" in text
    tokens = device_token(idp, oauth, grant["device_code"])
    assert tokens["token_type"].lower() == "bearer", tokens
    bob = verifier.verify(tokens["id_token"], access_token=tokens["access_token"])
    assert bob["sub"] == "u-0002-bob" and bob["groups"] == ["dev"] and bob["logins_from_idp"] == ["bob"]
    assert bob["email"] == "Bob Builder <bob@example.com>" and bob["email_verified"] is False
    assert "nonce" not in bob
    assert device_token(idp, oauth, grant["device_code"])["error"] == "invalid_grant"  # used once

    # the user types the code shown by the device at verification_uri
    grant = device_authorization(idp, oauth)
    idp.device_login(grant["user_code"], "carol")
    carol = verifier.verify(device_token(idp, oauth, grant["device_code"])["id_token"])
    assert carol["sub"] == "u-0003-carol" and carol["groups"] == "contractors"

    # a mistyped code, then a user who aborts
    with pytest.raises(LoginError) as err:
        idp.device_login("BCDF-GHJK", "carol")
    assert "user code rejected" in str(err.value)
    grant = device_authorization(idp, oauth)
    idp.device_login(grant["verification_uri_complete"], "alice", approve=False)
    assert device_token(idp, oauth, grant["device_code"])["error"] == "access_denied"


def test_key_rotation_refetches_the_jwks(idp):
    verifier = IDTokenVerifier(idp.issuer, idp.client_id)
    tokens, nonce, _ = code_flow(idp, "alice")
    before = tokens["id_token"]
    verifier.verify(before, nonce=nonce)
    assert verifier.jwks_fetches == 1
    old_kid = jwt.decode(before, verifier.keys(), algorithms=ALGORITHMS).header["kid"]

    # rollover: a new key signs, the old one stays published
    rotated = idp.rotate_keys()
    assert rotated["signing_kid"] != old_kid and old_kid in rotated["kids"]
    tokens, nonce, _ = code_flow(idp, "alice")
    after = tokens["id_token"]
    assert jwt.decode(after, KeySet.import_key_set(new_session().get(verifier.metadata["jwks_uri"]).json()),
                      algorithms=ALGORITHMS).header["kid"] == rotated["signing_kid"]
    with pytest.raises(InvalidKeyIdError):  # the cached key set does not know the new kid
        jwt.decode(after, verifier.keys(), algorithms=ALGORITHMS)
    assert verifier.verify(after, nonce=nonce)["sub"] == "u-0001-alice"
    assert verifier.jwks_fetches == 2
    verifier.verify(before)  # the old key is still published: the older token still verifies
    assert verifier.jwks_fetches == 2

    # retirement: the old keys are gone; a token they signed no longer verifies after a refetch
    retired = idp.rotate_keys(retire_previous=True)
    assert retired["kids"] == [retired["signing_kid"]]
    tokens, nonce, _ = code_flow(idp, "alice")
    verifier.verify(tokens["id_token"], nonce=nonce)
    assert verifier.jwks_fetches == 3
    with pytest.raises(InvalidKeyIdError):
        verifier.verify(after)


def test_restart_with_another_key_set():
    """The other way to rotate: restart the provider (same port, so the same issuer) with
    another JWKS file."""
    first = {"keys": [OIDCProvider.generate_signing_key("first")]}
    second = {"keys": [OIDCProvider.generate_signing_key("second")]}
    with OIDCProvider(jwks=first) as idp:
        verifier = IDTokenVerifier(idp.issuer, idp.client_id)
        tokens, nonce, _ = code_flow(idp, "alice")
        assert verifier.verify(tokens["id_token"], nonce=nonce)["sub"] == "u-0001-alice"
        issuer = idp.issuer
        idp.restart(jwks=second)
        assert idp.issuer == issuer and idp.admin_state()["kids"] == ["second"]
        tokens, nonce, _ = code_flow(idp, "alice")
        assert verifier.verify(tokens["id_token"], nonce=nonce)["sub"] == "u-0001-alice"
        assert verifier.jwks_fetches == 2


def test_algorithm_allowlist_refuses_hs256(idp):
    """The provider offers HS256 ID tokens (MACed with the client secret) in discovery; a client
    registered for them gets one, and the allowlist refuses it before any key lookup."""
    assert "HS256" in idp.metadata()["id_token_signing_alg_values_supported"]
    tokens, nonce, _ = code_flow(idp, "alice", client=HS256_CLIENT)
    verifier = IDTokenVerifier(idp.issuer, HS256_CLIENT["client_id"])
    with pytest.raises(UnsupportedAlgorithmError):
        verifier.verify(tokens["id_token"], nonce=nonce)


def test_expired_and_skewed_id_tokens():
    """The provider's clock runs behind or ahead: an expired ID token is refused, one issued
    "in the future" passes within the leeway and is refused without it."""
    with OIDCProvider(id_token_ttl=60) as idp:
        idp.set_clock_offset(-300)  # issued 5 minutes ago, for 1 minute
        tokens, nonce, _ = code_flow(idp, "alice")
        verifier = IDTokenVerifier(idp.issuer, idp.client_id, leeway=60)
        with pytest.raises(ExpiredTokenError):
            verifier.verify(tokens["id_token"], nonce=nonce)

        idp.set_clock_offset(30)  # the provider's clock is 30 s ahead
        tokens, nonce, _ = code_flow(idp, "alice")
        assert verifier.verify(tokens["id_token"], nonce=nonce)["sub"] == "u-0001-alice"
        strict = IDTokenVerifier(idp.issuer, idp.client_id, leeway=0)
        with pytest.raises(InvalidClaimError):
            strict.verify(tokens["id_token"], nonce=nonce)


def test_issuer_with_a_path_claims_at_userinfo_only_and_no_device_flow():
    """A provider shaped differently: its issuer has a path (as Keycloak realms do), the scope
    claims come only from userinfo (conformIdTokenClaims), and it has no device flow."""
    with OIDCProvider(issuer_path="/realms/gatehouse", userinfo_claims_only=True, device_flow=False) as idp:
        assert idp.issuer == f"http://127.0.0.1:{idp.port}/realms/gatehouse"
        metadata = idp.metadata()
        assert metadata["issuer"] == idp.issuer
        assert metadata["authorization_endpoint"] == idp.issuer + "/auth"
        assert "device_authorization_endpoint" not in metadata
        assert DEVICE_GRANT not in metadata["grant_types_supported"]

        tokens, nonce, redirect = code_flow(idp, "alice")
        assert parse_qs(urlsplit(redirect).query)["iss"] == [idp.issuer]
        claims = IDTokenVerifier(idp.issuer, idp.client_id).verify(tokens["id_token"], nonce=nonce)
        assert claims["iss"] == idp.issuer and claims["sub"] == "u-0001-alice"
        assert "groups" not in claims and "email" not in claims
        userinfo = new_session().get(metadata["userinfo_endpoint"], timeout=10,
                                     headers={"Authorization": f"Bearer {tokens['access_token']}"}).json()
        assert userinfo["sub"] == claims["sub"]
        assert userinfo["groups"] == ["admins", "dev"] and userinfo["email"] == "alice@example.com"


def test_tampered_id_token_is_refused(idp):
    tokens, nonce, _ = code_flow(idp, "alice")
    header, payload, signature = tokens["id_token"].split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    with pytest.raises(BadSignatureError):
        IDTokenVerifier(idp.issuer, idp.client_id).verify(".".join((header, payload, flipped)), nonce=nonce)
