"""Password hashing with scrypt (memory-hard, in the standard library).

Hashes are self-describing (`scrypt$n$r$p$salt$hash`) so parameters can be raised
later without breaking stored passwords. Comparison is constant-time, and a check
against a missing user still burns one full hash so timing does not reveal which
user names exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

_N, _R, _P, _LEN = 2 ** 15, 8, 1, 32
_MAXMEM = 64 * 1024 * 1024
_DUMMY = None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM, dklen=_LEN)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    """True when `password` matches `stored`; `stored=None` costs the same time and is False."""
    global _DUMMY
    if stored is None:
        _DUMMY = _DUMMY or hash_password("dummy-password-for-timing")
        verify_password(password, _DUMMY)
        return False
    try:
        _, n, r, p, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                                p=int(p), maxmem=_MAXMEM, dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)
