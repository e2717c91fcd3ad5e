"""Fuzz the APIs of a real `gatehouse` process: random bodies and parameters on every route.

Each route of the auth API (mutual TLS, as the admin and as a node) and of the proxy's
web API gets hypothesis-made JSON bodies and query parameters. The property: no answer
is a 500, every error is a JSON object with a one-line message, and the process keeps
serving. The routes are read from the running services, so a new route is fuzzed too.
"""

from __future__ import annotations

import json
import os

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ok

# The test proxy's web certificate is self-signed, and the fuzz does not care whose it is.
pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

EXAMPLES = int(os.environ.get("GATEHOUSE_FUZZ_EXAMPLES", "300")) // 3
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 40, 2 ** 40), st.floats(allow_nan=False),
                    st.text(max_size=30))
json_values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                        st.dictionaries(st.text(max_size=10), c, max_size=4)),
                           max_leaves=20)
# Bodies shaped like the real ones: the field names the handlers read, with any values.
FIELDS = ["resource", "force", "roles", "type", "ttl", "labels", "name", "token", "password", "user",
          "ssh_public_key", "tls_public_key", "role", "principals", "addr", "hostname", "interval", "cluster",
          "connected", "proxies", "tunnel_addr", "web_listen_addr", "login", "node", "from_cluster", "traits",
          "cluster_name", "host_cas", "version", "expected_root", "client_addr", "connector", "redirect_url",
          "request_id", "secret", "params", "events", "batch", "offset", "data", "size", "sha256", "meta", "seq",
          "root"]
bodies = st.one_of(json_values, st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6))
params = st.dictionaries(st.sampled_from(["since", "timeout", "cluster", "dry_run", "with_secrets", "state", "code",
                                          "iss", "error", "user", "event", "session", "until", "limit", "cursor",
                                          "after", "prev", "root", "sid", "offset"]),
                         st.one_of(st.text(max_size=12), st.sampled_from(["-1", "1e309", "nan", "0", "99"])),
                         max_size=3)
names = st.one_of(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-/%", min_size=1, max_size=20),
                  st.sampled_from(["access", "..", "root.test", "node1"]))

# (method, path with {name}) of every route; checked against the services' own route tables below.
AUTH_ROUTES = [
    ("GET", "/v1/ping"), ("GET", "/v1/ca"), ("POST", "/v1/renew"), ("GET", "/v1/status"), ("GET", "/v1/resources/{name}"), ("GET", "/v1/resources/role/{name}"),
    ("PUT", "/v1/resources"), ("DELETE", "/v1/resources/token/{name}"), ("POST", "/v1/tokens"),
    ("GET", "/v1/tokens"), ("DELETE", "/v1/tokens/{name}"), ("PUT", "/v1/users/{name}/password"),
    ("POST", "/v1/login"), ("POST", "/v1/join"), ("POST", "/v1/nodes/heartbeat"), ("GET", "/v1/nodes"),
    ("GET", "/v1/snapshot"), ("GET", "/v1/cas"), ("POST", "/v1/trustedclusters/validate"),
    ("PUT", "/v1/remote_clusters/{name}/labels"), ("POST", "/v1/tunnels/heartbeat"),
    ("POST", "/v1/tunnels/agent_status"), ("POST", "/v1/tunnels/presence"), ("POST", "/v1/tunnels/cert"), ("POST", "/v1/proxies/heartbeat"),
    ("GET", "/v1/clusters"), ("GET", "/v1/hostcas"), ("GET", "/v1/whoami"), ("POST", "/v1/access/check"),
    ("POST", "/v1/sso/oidc/login"), ("POST", "/v1/sso/oidc/callback"), ("POST", "/v1/sso/oidc/certs"),
    ("POST", "/v1/sso/oidc/device"), ("POST", "/v1/sso/oidc/device/poll"),
    ("POST", "/v1/audit/events"), ("GET", "/v1/audit/events"), ("GET", "/v1/audit/streams"),
    ("GET", "/v1/audit/verify"), ("GET", "/v1/audit/export"), ("POST", "/v1/audit/export/ack"),
    ("GET", "/v1/audit/export/recording"), ("POST", "/v1/audit/forwarded/{name}/lease"),
    ("DELETE", "/v1/audit/forwarded/{name}/lease"),
    ("GET", "/v1/audit/forwarded/{name}"), ("POST", "/v1/audit/forwarded/{name}"), ("GET", "/v1/recordings"),
    ("GET", "/v1/recordings/{name}"), ("GET", "/v1/recordings/{name}/upload"), ("POST", "/v1/recordings/{name}/upload"),
    ("POST", "/v1/recordings/{name}/complete"),
]
WEB_ROUTES = [("GET", "/webapi/ping"), ("POST", "/webapi/login"), ("GET", "/webapi/nodes"),
              ("GET", "/webapi/nodes/all"),
              ("GET", "/webapi/clusters"), ("GET", "/webapi/hostcas"), ("POST", "/webapi/trustedclusters/validate"),
              ("GET", "/webapi/mappings"), ("POST", "/webapi/leaves/access_check"), ("POST", "/webapi/oidc/login"),
              ("GET", "/webapi/oidc/callback"), ("POST", "/webapi/oidc/certs"), ("POST", "/webapi/oidc/device"),
              ("POST", "/webapi/oidc/device/poll"), ("GET", "/webapi/recordings"),
              ("GET", "/webapi/recordings/{name}")]


@pytest.fixture(scope="module")
def admin(cluster):
    ident = os.path.join(cluster.data_dir, "admin")
    session = requests.Session()
    session.trust_env = False
    session.cert = (os.path.join(ident, "identity.crt"), os.path.join(ident, "identity.key"))
    session.verify = False
    return session


@pytest.fixture(scope="module")
def anonymous():
    session = requests.Session()
    session.trust_env = False
    session.verify = False
    return session


def check_answer(resp: requests.Response, what: str) -> None:
    assert resp.status_code < 500, f"{what} -> {resp.status_code}: {resp.text[:300]}"
    if resp.status_code >= 400 and resp.headers.get("Content-Type", "").startswith("text/html"):
        # The SSO callback answers browsers with a page: its one-line message is in <p id="message">.
        message = resp.text.split('<p id="message">', 1)[1].split("</p>", 1)[0]
        assert message and "\n" not in message, f"{what}: {message!r}"
    elif resp.status_code >= 400:
        error = resp.json()["error"]
        assert error["message"] and "\n" not in error["message"], f"{what}: {error!r}"


def _shape(path: str) -> str:
    """/v1/resources/{kind}/{name} and /v1/resources/role/{name} have the same shape."""
    return "/".join("{}" if part.startswith("{") or part in ("role", "token") else part for part in path.split("/"))


def _routes(app) -> set:
    return {(r.method, _shape(r.resource.canonical)) for r in app.router.routes() if r.method != "HEAD"}


def test_every_route_is_fuzzed():
    """The lists above cover the services' own route tables, so a route added later is fuzzed too."""
    from types import SimpleNamespace

    from gatehouse.auth.api import AuthAPI
    from gatehouse.proxy.web import ProxyWeb

    assert _routes(AuthAPI(None).app) <= {(m, _shape(p)) for m, p in AUTH_ROUTES}
    web = ProxyWeb(SimpleNamespace(cfg=None, ident=None, client=None, cache=None), None)
    assert _routes(web.app) <= {(m, _shape(p)) for m, p in WEB_ROUTES}


@FUZZ
@given(route=st.sampled_from(AUTH_ROUTES), name=names, body=bodies, query=params)
def test_auth_api_as_admin(cluster, admin, route, name, body, query):
    method, path = route
    url = f"https://{cluster.auth_addr}{path.format(name=requests.utils.quote(name, safe=''))}"
    resp = admin.request(method, url, params=query, data=json.dumps(body), timeout=30,
                         headers={"Content-Type": "application/json"})
    check_answer(resp, f"{method} {path} {body!r}")


@FUZZ
@given(route=st.sampled_from(WEB_ROUTES), body=bodies, query=params)
def test_proxy_web_api_without_a_certificate(cluster, anonymous, route, body, query):
    method, path = route
    resp = anonymous.request(method, f"https://{cluster.web_addr}{path.format(name='x')}", params=query, data=json.dumps(body),
                             timeout=30, headers={"Content-Type": "application/json"})
    check_answer(resp, f"{method} {path} {body!r}")


@FUZZ
@given(route=st.sampled_from(AUTH_ROUTES), raw=st.binary(max_size=200))
def test_auth_api_bodies_that_are_not_json(cluster, admin, route, raw):
    method, path = route
    resp = admin.request(method, f"https://{cluster.auth_addr}{path.format(name='x')}", data=raw, timeout=30,
                         headers={"Content-Type": "application/json"})
    check_answer(resp, f"{method} {path} {raw!r}")


def test_still_serving_after_the_fuzz(cluster):
    assert "root.test" in ok(cluster.run_gatectl("status"))
