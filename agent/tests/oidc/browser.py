"""A tiny form-driven browser for the OpenID provider's own pages.

`browser_login` and `device_login` do with `requests` what a person does in a browser:
follow redirects, read the provider's HTML forms (html.parser, no other dependency), fill in
the user name and password, press the provider's buttons, and stop where the provider sends
the browser back to the client. Nothing here knows the provider's URLs or form field names
beyond "a form with a password field is the login form"; it works on any provider whose
pages work without JavaScript.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit, urlunsplit

import requests

MAX_STEPS = 25
TIMEOUT = 15.0
_NEGATIVE = re.compile(r"abort|deny|cancel|reject|decline", re.I)


class LoginError(Exception):
    """The provider did not lead the browser where it should: wrong password, an error page,
    an unexpected page. `status`, `url` and `text` (the page's visible text) say where."""

    def __init__(self, message: str, *, status: int | None = None, url: str = "", text: str = ""):
        super().__init__(f"{message} (HTTP {status} at {url}): {text[:600]}")
        self.status = status
        self.url = url
        self.text = text


@dataclass
class Form:
    id: str | None
    action: str
    method: str
    fields: list[tuple[str, str, str]] = field(default_factory=list)  # (name, value, input type)
    buttons: list[dict] = field(default_factory=list)  # {name, value, text, id}

    @property
    def has_password(self) -> bool:
        return any(t == "password" for _, _, t in self.fields)

    def field_names(self) -> set[str]:
        return {n for n, _, _ in self.fields}


class _PageParser(HTMLParser):
    """Collect the forms of a page (inputs, buttons, textareas, selects, including those tied
    to a form by a `form="id"` attribute) and its visible text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.forms: list[Form] = []
        self._current: Form | None = None
        self._orphans: list[tuple[str, str, dict]] = []  # (kind, form id, data)
        self._button: dict | None = None
        self._textarea: tuple[Form | None, str | None, str, list] | None = None
        self._select: dict | None = None
        self._skip = 0
        self.text_parts: list[str] = []

    def _target(self, attrs: dict) -> tuple[Form | None, str | None]:
        owner = attrs.get("form")
        if owner:
            return None, owner
        return self._current, None

    def _add(self, kind: str, attrs: dict, data):
        form, owner = self._target(attrs)
        if form is not None:
            (form.fields if kind == "field" else form.buttons).append(data)
        elif owner:
            self._orphans.append((kind, owner, data))

    def handle_starttag(self, tag, attrs_list):
        attrs = {k: (v if v is not None else "") for k, v in attrs_list}
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "form":
            self._current = Form(attrs.get("id"), attrs.get("action", ""), (attrs.get("method") or "get").lower())
            self.forms.append(self._current)
        elif tag == "input":
            kind = (attrs.get("type") or "text").lower()
            name = attrs.get("name")
            if kind in ("submit", "image"):
                self._add("button", attrs, {"name": name, "value": attrs.get("value", ""),
                                            "text": attrs.get("value", ""), "id": attrs.get("id")})
            elif kind in ("checkbox", "radio"):
                if name and "checked" in attrs:
                    self._add("field", attrs, (name, attrs.get("value", "on"), kind))
            elif kind not in ("button", "reset", "file") and name:
                self._add("field", attrs, (name, attrs.get("value", ""), kind))
        elif tag == "button":
            kind = (attrs.get("type") or "submit").lower()
            if kind == "submit":
                self._button = {"name": attrs.get("name"), "value": attrs.get("value", ""), "text": "",
                                "id": attrs.get("id"), "_attrs": attrs}
        elif tag == "textarea" and attrs.get("name"):
            form, owner = self._target(attrs)
            self._textarea = (form, owner, attrs["name"], [])
        elif tag == "select" and attrs.get("name"):
            self._select = {"attrs": attrs, "first": None, "selected": None}
        elif tag == "option" and self._select is not None:
            value = attrs.get("value", "")
            if self._select["first"] is None:
                self._select["first"] = value
            if "selected" in attrs:
                self._select["selected"] = value

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag == "form":
            self._current = None
        elif tag == "button" and self._button is not None:
            button = self._button
            self._button = None
            attrs = button.pop("_attrs")
            button["text"] = button["text"].strip()
            self._add("button", attrs, button)
        elif tag == "textarea" and self._textarea is not None:
            form, owner, name, parts = self._textarea
            self._textarea = None
            data = (name, "".join(parts), "textarea")
            if form is not None:
                form.fields.append(data)
            elif owner:
                self._orphans.append(("field", owner, data))
        elif tag == "select" and self._select is not None:
            sel = self._select
            self._select = None
            value = sel["selected"] if sel["selected"] is not None else sel["first"]
            if value is not None:
                self._add("field", sel["attrs"], (sel["attrs"]["name"], value, "select"))

    def handle_data(self, data):
        if self._button is not None:
            self._button["text"] += data
        if self._textarea is not None:
            self._textarea[3].append(data)
        if not self._skip and data.strip():
            self.text_parts.append(data.strip())

    def close(self):
        super().close()
        by_id = {f.id: f for f in self.forms if f.id}
        for kind, owner, data in self._orphans:
            form = by_id.get(owner)
            if form is not None:
                (form.fields if kind == "field" else form.buttons).append(data)


def parse_page(html: str) -> tuple[list[Form], str]:
    """The forms of an HTML page and its visible text."""
    parser = _PageParser()
    parser.feed(html)
    parser.close()
    return parser.forms, " ".join(parser.text_parts)


def _negative(form: Form, button: dict | None = None) -> bool:
    words = [form.id or "", form.action]
    if button is None:
        words += [" ".join(filter(None, (b.get("name"), b.get("value"), b.get("text")))) for b in form.buttons]
        # a form is negative only if all its buttons are (the device form has both kinds)
        return bool(_NEGATIVE.search(" ".join(words[:2]))) or (
            bool(form.buttons) and all(_NEGATIVE.search(" ".join(filter(None, (b.get("name"), b.get("value"), b.get("text"))))) for b in form.buttons))
    return bool(_NEGATIVE.search(" ".join(filter(None, (button.get("name"), button.get("value"), button.get("text"))))))


def _choose(forms: list[Form], approve: bool) -> tuple[Form, dict | None]:
    """The form (and the button) a person would press: the login form if there is one; else
    the first form with an approving button (or, if not `approve`, the first refusing one, or
    the way on when the page offers nothing to refuse)."""
    for form in forms:
        if form.has_password:
            positive = [b for b in form.buttons if not _negative(form, b)]
            return form, (positive[0] if positive else None)
    candidates = []
    for form in forms:
        if _NEGATIVE.search(f"{form.id or ''} {form.action}"):
            candidates.append((form, None, True))
            continue
        if not form.buttons:
            candidates.append((form, None, False))
        for button in form.buttons:
            candidates.append((form, button, _negative(form, button)))
    for form, button, negative in candidates:
        if negative != approve:
            return form, button
    if not approve and candidates:  # a page with nothing to refuse (e.g. "Continue"): go on
        return candidates[0][0], candidates[0][1]
    raise LookupError("no form to " + ("approve" if approve else "deny") + " with")


def _fill(form: Form, button: dict | None, username: str | None, password: str | None,
          user_code: str | None) -> list[tuple[str, str]]:
    data: list[tuple[str, str]] = []
    user_filled = False
    for name, value, kind in form.fields:
        if kind == "password" and password is not None:
            value = password
        elif form.has_password and kind in ("text", "email") and not user_filled and username is not None:
            value = username
            user_filled = True
        elif name == "user_code" and user_code is not None and not value:
            value = user_code
        data.append((name, value))
    if button is not None and button.get("name"):
        data.append((button["name"], button.get("value", "")))
    return data


def new_session() -> requests.Session:
    """A cookie jar for one "browser"; proxies from the environment are ignored (loopback only)."""
    session = requests.Session()
    session.trust_env = False
    return session


def _strip_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.lower(), parts.path, "", ""))


def _drive(session: requests.Session, url: str, *, username: str | None, password: str | None,
           user_code: str | None = None, approve: bool = True, stop_at: str | None = None,
           timeout: float = TIMEOUT, max_steps: int = MAX_STEPS) -> tuple[str, str]:
    """Walk the provider's pages from URL. Returns ("redirect", URL) when the provider sends
    the browser to STOP_AT (the client's redirect_uri, never fetched), or ("page", TEXT) when
    it shows a page without forms (e.g. the device flow's success page)."""
    method, data = "GET", None
    password_sent = user_code_sent = denied = False
    for _ in range(max_steps):
        resp = session.request(method, url, data=data, allow_redirects=False, timeout=timeout)
        if resp.status_code in (301, 302, 303, 307, 308) and "Location" in resp.headers:
            location = urljoin(url, resp.headers["Location"])
            if stop_at is not None and _strip_query(location) == stop_at:
                return "redirect", location
            if resp.status_code not in (307, 308):
                method, data = "GET", None
            url = location
            continue
        content_type = resp.headers.get("Content-Type", "")
        forms, text = parse_page(resp.text) if "html" in content_type else ([], resp.text)
        if denied and stop_at is None:
            return "page", text  # the page the provider shows after a person pressed abort
        if resp.status_code != 200:
            raise LoginError("the provider answered with an error", status=resp.status_code, url=url, text=text)
        # response_mode=form_post: the page posts the code to the redirect_uri itself.
        for form in forms:
            action = urljoin(url, form.action or url)
            if stop_at is not None and _strip_query(action) == stop_at:
                return "redirect", action + ("&" if "?" in action else "?") + urlencode(
                    [(n, v) for n, v, _ in form.fields])
        if not forms:
            if stop_at is None:
                return "page", text
            raise LoginError("the provider showed a page without a form", status=resp.status_code, url=url, text=text)
        try:
            form, button = _choose(forms, approve)
        except LookupError as exc:
            raise LoginError(str(exc), status=resp.status_code, url=url, text=text) from None
        if form.has_password:
            if password_sent:
                raise LoginError("login rejected", status=resp.status_code, url=url, text=text)
            password_sent = True
        if any(n == "user_code" and t != "hidden" for n, _, t in form.fields):
            # the page where a person types the device's code
            if user_code is None:
                raise LoginError("the provider asks for a user code", status=resp.status_code, url=url, text=text)
            if user_code_sent:
                raise LoginError("user code rejected", status=resp.status_code, url=url, text=text)
            user_code_sent = True
        fields = _fill(form, button, username, password, user_code)
        if stop_at is None and (button is not None and _negative(form, button) or button is None and _negative(form)):
            denied = True
        action = urljoin(url, form.action or url)
        if form.method == "post":
            method, url, data = "POST", action, fields
        else:
            parts = urlsplit(action)
            method, data = "GET", None
            url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(fields), ""))
    raise LoginError(f"gave up after {max_steps} steps", url=url)


def browser_login(authorization_url: str, username: str, password: str, *, approve: bool = True,
                  session: requests.Session | None = None, redirect_uri: str | None = None,
                  timeout: float = TIMEOUT) -> str:
    """Open AUTHORIZATION_URL as a browser would, sign in as USERNAME with PASSWORD on the
    provider's login form, approve (or, with approve=False, deny) its consent page, and
    return the URL the provider redirects to at the client's redirect_uri (with `code`,
    `state` and `iss`, or `error`), without fetching it.

    The redirect_uri is read from the authorization URL unless given (pass it for PAR).
    Raises LoginError on a rejected password, an error page or any unexpected page. A
    `session` keeps cookies (the provider's SSO session) between calls.
    """
    if redirect_uri is None:
        query = parse_qs(urlsplit(authorization_url).query)
        if "redirect_uri" not in query:
            raise ValueError("authorization_url has no redirect_uri; pass redirect_uri=")
        redirect_uri = query["redirect_uri"][0]
    kind, result = _drive(session or new_session(), authorization_url, username=username, password=password,
                          approve=approve, stop_at=_strip_query(redirect_uri), timeout=timeout)
    return result


def device_login(verification: str, username: str, password: str, *, verification_uri: str | None = None,
                 approve: bool = True, session: requests.Session | None = None, timeout: float = TIMEOUT) -> str:
    """Approve (or with approve=False, abort) a device authorization as USERNAME.

    VERIFICATION is either the `verification_uri_complete` of the device authorization
    response, or the `user_code`, in which case `verification_uri` is where the user types it.
    Returns the visible text of the provider's final page ("signed in"); raises LoginError when
    the provider rejects the code or the password.
    """
    if verification.startswith(("http://", "https://")):
        url, user_code = verification, None
    else:
        if verification_uri is None:
            raise ValueError("a bare user_code needs verification_uri=")
        url, user_code = verification_uri, verification
    kind, text = _drive(session or new_session(), url, username=username, password=password,
                        user_code=user_code, approve=approve, stop_at=None, timeout=timeout)
    return text
