"""gate's side of a single sign-on login (`gate login --auth=NAME`): loopback listener, browser, device flow.

Browser flow: gate listens on 127.0.0.1 (a random port, nothing else), asks the root proxy
for a login with its public keys and that loopback redirect, opens the provider's URL in a
browser (or prints it), and waits. The proxy sends the browser back to the listener with a
one-time secret, which gate trades for its certificates in a request of its own, so
certificates never travel in a URL. Device flow (`--device`, for machines without a browser):
gate shows the provider's verification URL and code and polls the proxy until the login is
approved on any other device.

Neither step needs more than the proxy's public web API; the certificates come back in the
same shape as a password login's, so `gate login` saves them the same way.
"""

from __future__ import annotations

import http.server
import os
import sys
import time
import webbrowser
from urllib.parse import parse_qs, urlsplit

from .durations import format_duration
from .errors import AccessDenied, BadParameter, GatehouseError
from .wire import (OIDC_CERTS_PATH, OIDC_DEVICE_PATH, OIDC_DEVICE_POLL_PATH, OIDC_LOGIN_PATH,
                   SSO_CLIENT_CALLBACK_PATH, SSO_SECRET_PARAM)

BROWSER_MODES = ("default", "none")
_PAGE = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>"
         "<body><h1>{title}</h1><p id=\"message\">{message}</p></body></html>\n")


def _say(out, text: str) -> None:
    print(text, file=out, flush=True)


def open_browser(url: str, mode: str) -> bool:
    """Open URL in a graphical browser when there is one (never a text browser in this terminal)."""
    if mode == "none":
        return False
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return False
    if browser.__class__ is webbrowser.GenericBrowser:  # a text browser would take over the terminal
        return False
    return bool(browser.open(url))


class _Listener:
    """The loopback listener the proxy sends the browser back to; it collects the certificates."""

    def __init__(self, api):
        self.api = api
        self.request_id = ""
        self.result: dict | None = None
        self.error: GatehouseError | None = None
        self.server = http.server.HTTPServer(("127.0.0.1", 0), self._handler())
        self.server.timeout = 0.5

    @property
    def redirect_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{SSO_CLIENT_CALLBACK_PATH}"

    def _handler(self):
        listener = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                url = urlsplit(self.path)
                secret = parse_qs(url.query).get(SSO_SECRET_PARAM, [""])[0]
                if url.path != SSO_CLIENT_CALLBACK_PATH or not secret or not listener.request_id:
                    self._page(404, "Not found", "This is gate's login listener; nothing else is here.")
                    return
                try:
                    listener.result = listener.api.post(OIDC_CERTS_PATH, {"request_id": listener.request_id,
                                                                          "secret": secret})
                except GatehouseError as exc:
                    listener.error = exc
                    self._page(403, "Gatehouse login failed", exc.message)
                    return
                self._page(200, "Gatehouse login complete", "You are logged in; you can close this window and "
                                                            "go back to the terminal.")

            def _page(self, status: int, title: str, message: str) -> None:
                import html
                body = _PAGE.format(title=html.escape(title), message=html.escape(message)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # quiet: the terminal is for the user
                pass

        return Handler

    def wait(self, seconds: float) -> dict:
        deadline = time.monotonic() + seconds
        try:
            while self.result is None and self.error is None:
                if time.monotonic() > deadline:
                    raise AccessDenied(f"the login was not completed within {format_duration(int(seconds))}; run "
                                       f"'gate login' again and finish signing in in the browser")
                self.server.handle_request()
        finally:
            self.server.server_close()
        if self.error is not None:
            raise self.error
        return self.result


def browser_login(api, connector: str, ssh_public: str, tls_public: str, ttl: int, browser: str = "default",
                  out=sys.stdout) -> dict:
    """The certificates of an authorization-code login through the browser (see the module docstring)."""
    if browser not in BROWSER_MODES:
        raise BadParameter(f'--browser "{browser}" is not known; use {" or ".join(BROWSER_MODES)}')
    listener = _Listener(api)
    try:
        start = api.post(OIDC_LOGIN_PATH, {"connector": connector, "redirect_url": listener.redirect_url,
                                           "ssh_public_key": ssh_public, "tls_public_key": tls_public, "ttl": ttl})
    except BaseException:
        listener.server.server_close()
        raise
    listener.request_id = start["request_id"]
    opened = open_browser(start["auth_url"], browser)
    lead = "If the browser does not open," if opened else "To log in,"
    _say(out, f"{lead} open this URL in a browser on this machine:\n  {start['auth_url']}")
    if not opened and browser != "none":
        _say(out, "(no browser found here; on a machine without one use: gate login --device)")
    return listener.wait(float(start.get("expires_in") or 600))


def device_login(api, connector: str, ssh_public: str, tls_public: str, ttl: int, out=sys.stdout,
                 sleep=time.sleep) -> dict:
    """The certificates of a device-flow login: show the URL and code, poll until approved."""
    start = api.post(OIDC_DEVICE_PATH, {"connector": connector, "ssh_public_key": ssh_public,
                                        "tls_public_key": tls_public, "ttl": ttl})
    url = start.get("verification_uri_complete") or start["verification_uri"]
    _say(out, f"To log in, open this URL on any device and approve the login:\n  {url}\n"
              f"The page should show the code {start['user_code']}.")
    interval = float(start.get("interval") or 5)
    deadline = time.monotonic() + float(start.get("expires_in") or 600)
    body = {"request_id": start["request_id"], "secret": start["secret"]}
    while True:
        sleep(interval)
        answer = api.post(OIDC_DEVICE_POLL_PATH, body)
        if answer.get("status") != "pending":
            return answer
        interval = float(answer.get("interval") or interval)
        if time.monotonic() > deadline:
            raise AccessDenied(f"the login was not approved within {format_duration(int(start.get('expires_in') or 600))}"
                               f"; run 'gate login --device' again and approve it sooner")
