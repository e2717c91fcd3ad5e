"""One exception hierarchy for every user-facing failure.

Each error carries a single sentence that names the problem and the fix, and an
HTTP status so the API can return it unchanged and clients can re-raise it.
"""


def one_line(text: str) -> str:
    """TEXT with control characters (newlines above all) shown as escapes, so a value quoted from
    input can never break a message, a log line or an audit entry into two."""
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
                   for ch in str(text))


class GatehouseError(Exception):
    """Base class: ``str(err)`` is the one-line message shown to the user."""

    status = 500
    code = "internal"

    def __init__(self, message: str):
        message = one_line(message)
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class BadParameter(GatehouseError, ValueError):
    status = 400
    code = "bad_parameter"


class AccessDenied(GatehouseError):
    status = 403
    code = "access_denied"


class NotFound(GatehouseError, LookupError):
    status = 404
    code = "not_found"


class AlreadyExists(GatehouseError):
    status = 409
    code = "already_exists"


class CompareFailed(GatehouseError):
    """A conditional write lost a race: the stored value changed meanwhile."""

    status = 409
    code = "compare_failed"


class LimitExceeded(GatehouseError):
    status = 429
    code = "limit_exceeded"


class ConnectionProblem(GatehouseError):
    status = 502
    code = "connection_problem"


class TLSProblem(ConnectionProblem):
    """The TLS handshake failed: untrusted, self-signed or mismatched certificate."""

    code = "tls_problem"


class TrustError(GatehouseError):
    """The trusted-cluster handshake was refused or could not complete."""

    status = 400
    code = "trust_error"


_BY_CODE = {cls.code: cls for cls in (GatehouseError, BadParameter, AccessDenied, NotFound,
                                      AlreadyExists, CompareFailed, LimitExceeded,
                                      ConnectionProblem, TLSProblem, TrustError)}


def from_dict(payload: dict, status: int = 500) -> GatehouseError:
    """Rebuild the error an API returned so clients raise the same type."""
    err = (payload or {}).get("error") or {}
    cls = _BY_CODE.get(err.get("code"), GatehouseError)
    return cls(err.get("message") or f"the server answered with HTTP status {status}")
