# -*- coding: utf-8 -*-
# Copyright (c) Gatehouse maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one client every gatehouse.clusters module uses to reach the auth API.

The auth API speaks JSON over HTTPS with mutual TLS: the caller presents an X.509
client certificate issued by the cluster's private CA, and the server's certificate
must chain to that same CA. On an auth host the agent writes a local admin identity
to ``<data_dir>/admin/`` (``identity.crt``, ``identity.key``, ``ca.crt``, ``auth_addr``)
and the modules use it by default, as ``gatectl`` does. From a controller,
``api_url`` plus ``client_cert``/``client_key``/``ca_cert`` point elsewhere.

Errors come back as ``{"error": {"code", "message"}}`` with an HTTP status; the
message is raised unchanged in :class:`GatehouseAPIError`. Transport failures are
turned into one sentence that names the cause (agent not running, TLS, timeout).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import json
import os
import socket
import ssl
from urllib.error import HTTPError, URLError
from urllib.parse import quote

from ansible.module_utils.common.text.converters import to_native, to_text
from ansible.module_utils.urls import Request, make_context
from ansible_collections.gatehouse.clusters.plugins.module_utils.resources import ResourceError, diff, without_secrets

DEFAULT_DATA_DIR = "/var/lib/gatehouse"
DEFAULT_TIMEOUT = 30


def api_argument_spec():
    """Connection options shared by every module (documented in the api doc fragment)."""
    return dict(
        data_dir=dict(type="path", default=DEFAULT_DATA_DIR),
        api_url=dict(type="str"),
        client_cert=dict(type="path"),
        client_key=dict(type="path", no_log=False),
        ca_cert=dict(type="path"),
        timeout=dict(type="int", default=DEFAULT_TIMEOUT),
    )


class GatehouseAPIError(Exception):
    """A failure talking to the auth API; ``str(err)`` is the sentence to show."""

    def __init__(self, message, status=None, code=None):
        super(GatehouseAPIError, self).__init__(message)
        self.message = message
        self.status = status
        self.code = code


class Connection:
    """Where the API is and which identity files to use, resolved from module params."""

    def __init__(self, data_dir=DEFAULT_DATA_DIR, api_url=None, client_cert=None, client_key=None,
                 ca_cert=None, timeout=DEFAULT_TIMEOUT):
        self.data_dir = data_dir or DEFAULT_DATA_DIR
        self.identity_dir = os.path.join(self.data_dir, "admin")
        self.client_cert = client_cert or os.path.join(self.identity_dir, "identity.crt")
        self.client_key = client_key or os.path.join(self.identity_dir, "identity.key")
        self.ca_cert = ca_cert or os.path.join(self.identity_dir, "ca.crt")
        self.timeout = timeout if timeout and timeout > 0 else DEFAULT_TIMEOUT
        self._api_url = api_url

    @classmethod
    def from_params(cls, params):
        return cls(data_dir=params.get("data_dir"), api_url=params.get("api_url"),
                   client_cert=params.get("client_cert"), client_key=params.get("client_key"),
                   ca_cert=params.get("ca_cert"), timeout=params.get("timeout"))

    @property
    def base_url(self):
        """``https://host:port`` from ``api_url``, else from ``<data_dir>/admin/auth_addr``."""
        if self._api_url:
            return normalize_api_url(self._api_url)
        # One address per line, this host's auth server first (the others are its peers in an HA
        # root, for gatectl's failover): the modules manage the auth server they run next to.
        lines = self._read(os.path.join(self.identity_dir, "auth_addr")).split()
        addr = lines[0] if lines else ""
        if not addr:
            raise GatehouseAPIError("%s is empty; restart the gatehouse auth service so it writes its address "
                                    "again, or set api_url" % os.path.join(self.identity_dir, "auth_addr"))
        return normalize_api_url(addr)

    def check_files(self):
        for path in (self.client_cert, self.client_key, self.ca_cert):
            self._read(path)

    def _read(self, path):
        try:
            with open(path, "rb") as fh:
                return to_text(fh.read(), errors="surrogate_or_strict")
        except (IOError, OSError) as exc:
            raise GatehouseAPIError(self._file_problem(path, exc))

    def _file_problem(self, path, exc):
        if exc.errno == errno.ENOENT:
            if os.path.dirname(path) == self.identity_dir:
                return ("the Gatehouse admin identity file %s does not exist; run this task on the auth server "
                        "(the agent writes %s when its auth service starts) or set data_dir to its data "
                        "directory, or set api_url, client_cert, client_key and ca_cert"
                        % (path, self.identity_dir))
            return "the file %s does not exist; check the path" % path
        if exc.errno in (errno.EACCES, errno.EPERM):
            return ("cannot read %s: permission denied; run the task as root (become: true) or as the user "
                    "that owns the Gatehouse data directory" % path)
        return "cannot read %s: %s" % (path, to_native(exc.strerror or exc))


def normalize_api_url(value):
    """``host:port`` or ``https://host:port[/]`` → ``https://host:port``; plain http is refused."""
    text = to_text(value).strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "https", text
    if scheme.lower() != "https":
        raise GatehouseAPIError("api_url %s must use https:// (the auth API only speaks TLS), e.g. "
                                "https://auth.example.com:3025" % value)
    rest = rest.rstrip("/")
    if not rest or "/" in rest:
        raise GatehouseAPIError("api_url %s must be https://HOST:PORT without a path, e.g. "
                                "https://auth.example.com:3025" % value)
    return "https://" + rest


class GatehouseClient:
    """JSON requests to the auth API over mutual TLS."""

    def __init__(self, connection):
        self.conn = connection
        self._base_url = None
        self._request = None

    @classmethod
    def from_module(cls, module):
        return cls(Connection.from_params(module.params))

    @property
    def base_url(self):
        if self._base_url is None:
            self._base_url = self.conn.base_url
        return self._base_url

    def _make_request(self):
        if self._request is None:
            self.conn.check_files()
            try:
                context = make_context(cafile=self.conn.ca_cert, validate_certs=True,
                                       client_cert=self.conn.client_cert, client_key=self.conn.client_key)
            except ssl.SSLError as exc:
                raise GatehouseAPIError(
                    "cannot load the client certificate %s with key %s or the CA %s: %s; check that the files "
                    "belong together" % (self.conn.client_cert, self.conn.client_key, self.conn.ca_cert,
                                         _ssl_reason(exc)))
            # The cluster CA is private and pinned (only certificates it issued are accepted);
            # members reach auth by addresses the CA cannot know in advance, so, as gatectl
            # does, the host name is not checked. The chain always is.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_REQUIRED
            self._request = Request(use_proxy=False, timeout=self.conn.timeout, validate_certs=True,
                                    follow_redirects="none", context=context,
                                    headers={"Accept": "application/json"})
        return self._request

    # ------------------------------------------------------------------ raw calls
    def call(self, method, path, body=None):
        request = self._make_request()
        url = self.base_url + path
        data = None
        headers = {}
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        try:
            resp = request.open(method, url, data=data, headers=headers)
            content = resp.read()
            status = resp.getcode()
        except HTTPError as exc:
            try:
                content = exc.read()
            except Exception:  # pylint: disable=broad-except
                content = b""
            raise _api_error(exc.code, content)
        except (URLError, socket.error, ssl.SSLError, socket.timeout) as exc:
            raise self._transport_error(exc)
        except Exception as exc:  # pylint: disable=broad-except
            # http.client raises its own exceptions (RemoteDisconnected, BadStatusLine...).
            raise GatehouseAPIError("the Gatehouse auth API at %s broke off the request (%s); check the agent's "
                                    "log" % (self.base_url, _describe_exc(exc)))
        return _decode(status, content)

    def _transport_error(self, exc):
        reason = exc.reason if isinstance(exc, URLError) else exc
        where = "the Gatehouse auth API at %s" % self.base_url
        if isinstance(reason, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in to_native(reason):
            return GatehouseAPIError(
                "TLS handshake with %s failed: the server's certificate is not issued by %s (%s); set ca_cert to "
                "the CA of the cluster that api_url points at" % (where, self.conn.ca_cert, _ssl_reason(reason)),
                code="tls_problem")
        if isinstance(reason, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, ssl.SSLEOFError)):
            # With TLS 1.3 the agent checks the client certificate after the handshake and
            # drops the connection without an answer when it was not issued by its CA.
            return GatehouseAPIError(
                "%s closed the connection without answering (%s); it does this when the client certificate %s is "
                "not issued by its cluster's CA, so check client_cert and client_key (or the agent's log)"
                % (where, _describe_exc(reason), self.conn.client_cert), code="connection_problem")
        if _is_tls(reason):
            text = to_native(reason)
            if "ALERT" in text.upper():
                return GatehouseAPIError(
                    "TLS handshake with %s failed: the server refused the client certificate %s (%s); use an "
                    "identity issued by that cluster's CA" % (where, self.conn.client_cert, _ssl_reason(reason)),
                    code="tls_problem")
            return GatehouseAPIError("TLS handshake with %s failed (%s); check client_cert, client_key and ca_cert"
                                     % (where, _ssl_reason(reason)), code="tls_problem")
        if isinstance(reason, socket.timeout) or "timed out" in to_native(reason):
            return GatehouseAPIError("%s did not answer within %s seconds; check that the agent is healthy or "
                                     "raise timeout" % (where, self.conn.timeout), code="connection_problem")
        if isinstance(reason, ConnectionRefusedError) or getattr(reason, "errno", None) == errno.ECONNREFUSED:
            return GatehouseAPIError("cannot reach %s: connection refused; is the agent running?" % where,
                                     code="connection_problem")
        if isinstance(reason, socket.gaierror):
            return GatehouseAPIError("cannot reach %s: the host name does not resolve (%s); check api_url or "
                                     "auth_addr" % (where, _describe_exc(reason)), code="connection_problem")
        return GatehouseAPIError("cannot reach %s: %s; is the agent running and the address right?"
                                 % (where, _describe_exc(reason)), code="connection_problem")

    def get(self, path):
        return self.call("GET", path)

    def post(self, path, body=None):
        return self.call("POST", path, body if body is not None else {})

    def put(self, path, body=None):
        return self.call("PUT", path, body if body is not None else {})

    def delete(self, path):
        return self.call("DELETE", path)

    # ------------------------------------------------------------------ resources
    def status(self):
        return self.get("/v1/status")

    def list_resources(self, kind):
        return self.get("/v1/resources/%s" % quote(kind, safe=""))["items"]

    def get_resource(self, kind, name):
        """The named resource, or None when the agent says it does not exist."""
        try:
            items = self.get("/v1/resources/%s/%s" % (quote(kind, safe=""), quote(name, safe="")))["items"]
        except GatehouseAPIError as exc:
            if exc.status == 404:
                return None
            raise
        return items[0] if items else None

    def put_resource(self, resource, force=False):
        """Create (or with force, replace) a resource; returns (stored resource, created)."""
        resp = self.put("/v1/resources", {"resource": resource, "force": bool(force)})
        return resp.get("resource"), bool(resp.get("created"))

    def plan_resource(self, resource, force=False):
        """The agent's dry run of put_resource: {resource (normalised), current, changed, created}.
        The agent validates and checks as for the real write, so a bad resource fails here."""
        return self.put("/v1/resources?dry_run=true", {"resource": resource, "force": bool(force)})

    def delete_resource(self, kind, name):
        """Delete a resource; False when it was already gone."""
        return self._delete_if_present("/v1/resources/%s/%s" % (quote(kind, safe=""), quote(name, safe="")))

    def _delete_if_present(self, path):
        try:
            self.delete(path)
        except GatehouseAPIError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # ------------------------------------------------------------------ tokens and labels
    def add_token(self, types, ttl, labels, name=None, value=None, principals=None):
        body = {"type": ",".join(types), "ttl": ttl, "labels": labels}
        if principals:
            body["principals"] = list(principals)
        if name:
            body["name"] = name
        if value:
            body["token"] = value
        return self.post("/v1/tokens", body)

    def delete_token(self, name):
        """Revoke a join token; False when it was already gone."""
        return self._delete_if_present("/v1/tokens/%s" % quote(name, safe=""))

    def set_remote_cluster_labels(self, name, labels):
        return self.put("/v1/remote_clusters/%s/labels" % quote(name, safe=""), {"labels": labels})["resource"]


def _decode(status, content):
    try:
        payload = json.loads(to_text(content or b"{}", errors="surrogate_or_replace"))
    except ValueError:
        payload = None
    if status is not None and status >= 400:
        raise _api_error(status, content)
    if not isinstance(payload, dict):
        raise GatehouseAPIError("the Gatehouse auth API answered HTTP %s with a body that is not a JSON object; "
                                "is api_url a Gatehouse auth server?" % status, status=status)
    return payload


def _api_error(status, content):
    """The agent's own one-sentence message, unchanged, with its status and code."""
    try:
        payload = json.loads(to_text(content or b"{}", errors="surrogate_or_replace"))
    except ValueError:
        payload = None
    err = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return GatehouseAPIError(to_text(err["message"]), status=status, code=err.get("code"))
    return GatehouseAPIError("the Gatehouse auth API answered HTTP %s without an error message; is api_url a "
                             "Gatehouse auth server?" % status, status=status)


def _is_tls(reason):
    return isinstance(reason, ssl.SSLError) or "SSL" in type(reason).__name__ or "CERTIFICATE" in to_native(reason)


def _ssl_reason(exc):
    if isinstance(exc, ssl.SSLError):
        text = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc.strerror
        return to_native(text or exc).lower().replace("_", " ")
    return to_native(exc)


def _describe_exc(exc):
    text = to_native(getattr(exc, "strerror", None) or exc)
    return text or type(exc).__name__


def gatehouse_module(argument_spec, **kwargs):
    """An AnsibleModule with the shared connection options added to ``argument_spec``."""
    from ansible.module_utils.basic import AnsibleModule

    spec = api_argument_spec()
    spec.update(argument_spec)
    return AnsibleModule(argument_spec=spec, **kwargs)


def fail_api(module, exc, **result):
    """Fail the task with the API error's sentence (the agent's message unchanged)."""
    extra = dict(result)
    if getattr(exc, "status", None):
        extra["status"] = exc.status
    if getattr(exc, "code", None):
        extra["error_code"] = exc.code
    module.fail_json(msg=to_native(exc), **extra)


def run_module(run, argument_spec, **kwargs):
    """Every module's main(): build the module and its client, run ``run(module, client)``, and turn an
    API error into the task's failure with the agent's sentence."""
    module = gatehouse_module(argument_spec, **kwargs)
    client = GatehouseClient.from_module(module)
    try:
        run(module, client)
    except GatehouseAPIError as exc:
        fail_api(module, exc)


def run_info_module(kind, key):
    """main() of a KIND_info module: every KIND resource, or the one named, in RESULT[KEY] (never a secret)."""
    def run(module, client):
        name = module.params.get("name")
        if name:
            found = client.get_resource(kind, name)
            items = [found] if found is not None else []
        else:
            items = client.list_resources(kind)
        module.exit_json(changed=False, **{key: [without_secrets(item) for item in items]})

    run_module(run, dict(name=dict(type="str")), supports_check_mode=True)


def record_change(module, result, before, after, header, **fields):
    """Mark RESULT changed (with FIELDS); its diff goes in only when the play asked for diffs (--diff)."""
    result.update(changed=True, **fields)
    if module._diff:
        result["diff"] = diff(before, after, header)


def exit_absent(module, client, kind, name, current, result):
    """state=absent: delete KIND/NAME when it exists (unless in check mode), with its diff, and exit."""
    if current is not None:
        record_change(module, result, current, None, "%s/%s" % (kind, name))
        if not module.check_mode:
            client.delete_resource(kind, name)
    module.exit_json(**result)


def ensure_resource(module, client, name_in_result, build, kind=None):
    """The whole run of a module that manages one KIND resource by name (role, user, oidc).

    state=absent deletes it; state=present builds the resource to send with BUILD(params)
    (a ResourceError fails the task before the agent is asked), asks the agent for a dry
    run, and creates or replaces it only when the agent says that changes something,
    keeping the stored resource version. The result holds the resource under NAME_IN_RESULT
    (KIND defaults to it). The agent never shows secret fields; when only a secret changed,
    its dry run says so (``secret_changed``) and the diff marks the field without its value.
    """
    kind = kind or name_in_result
    params = module.params
    name = params["name"]
    result = {"changed": False, name_in_result: {}}
    request = None
    if params["state"] == "present":
        try:
            request = build(params)
        except ResourceError as exc:
            module.fail_json(msg="%s %s: %s" % (kind, name, exc))
    current = client.get_resource(kind, name)
    if params["state"] == "absent":
        exit_absent(module, client, kind, name, current, result)
    if current is not None and current.get("version"):
        request["version"] = current["version"]
    plan = client.plan_resource(request, force=current is not None)
    if current is not None:
        result["secret_changed"] = bool(plan.get("secret_changed"))
    if not plan.get("changed"):
        result[name_in_result] = current
        module.exit_json(**result)
    record_change(module, result, plan.get("current"), plan["resource"], "%s/%s" % (kind, name),
                  **{name_in_result: plan["resource"]})
    if plan.get("secret_changed") and "diff" in result:
        mark_secret_changed(result["diff"], secret_fields(request, plan["resource"]))
    if not module.check_mode:
        result[name_in_result] = client.put_resource(request, force=current is not None)[0]
    module.exit_json(**result)


def secret_fields(request, shown):
    """Spec fields the module sent that the agent's answer leaves out: the secrets."""
    return sorted(k for k in (request.get("spec") or {}) if k not in (shown.get("spec") or {}))


def mark_secret_changed(result_diff, fields):
    """Show in a diff that secret FIELDS changed, without their values."""
    for side, text in (("before", "(secret)"), ("after", "(secret, changed)")):
        spec = result_diff[side].setdefault("spec", {}) if isinstance(result_diff.get(side), dict) else None
        if spec is not None:
            for field in fields:
                spec[field] = text
