"""A real OpenID provider for tests, and a browser to sign in at it.

    from oidc import OIDCProvider, browser_login, device_login, LoginError

`OIDCProvider` runs tests/oidc/provider.js (the OpenID-Certified `oidc-provider` npm
package) on 127.0.0.1 (a context manager; see its docstring); `browser_login` and
`device_login` drive the provider's own HTML pages with `requests`. `oidc_provider` is a
module-scoped pytest fixture with the default users and client; import it into a test module
(or a conftest.py) to use it. tests/oidc/README.md has the users, the client and the
provider's configuration.

This is a package (it has an __init__.py) so that any test under agent/tests can
`from oidc import ...` (pytest puts agent/tests on sys.path for conftest.py) and so that the
test modules here get package-qualified names.
"""

from __future__ import annotations

import pytest

from .browser import Form, LoginError, browser_login, device_login, new_session, parse_page
from .provider import FIXTURE_DIR, OIDCProvider, OIDCProviderError, TestUser, default_clients, default_users

__all__ = [
    "FIXTURE_DIR", "Form", "LoginError", "OIDCProvider", "OIDCProviderError", "TestUser", "browser_login",
    "default_clients", "default_users", "device_login", "new_session", "oidc_provider", "parse_page",
]


@pytest.fixture(scope="module")
def oidc_provider():
    """The test OpenID provider with the default users and client, one per test module."""
    with OIDCProvider() as idp:
        yield idp
