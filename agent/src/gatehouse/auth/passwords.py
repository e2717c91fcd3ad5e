"""Password hashing with scrypt (memory-hard, in the standard library).

New hashes use N=2^17, r=8, p=1 (128 MiB, the current OWASP recommendation for
scrypt). Hashes are self-describing (`scrypt$n$r$p$salt$hash`), so older ones (N=2^15)
still verify, and `needs_rehash` tells the login path to store a new hash after the
next successful login. Comparison is constant-time, and a check against a missing
user still burns one full hash so timing does not reveal which user names exist.

Each hash takes 128 MiB for a fraction of a second: at most `MAX_CONCURRENT` run at
once, so a burst of logins cannot take the auth server's memory.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import threading

_N, _R, _P, _LEN = 2 ** 17, 8, 1, 32
#: Parameters stored hashes may carry: anything above is refused rather than computed.
_MAX_N, _MAX_R, _MAX_P = 2 ** 18, 8, 2
#: scrypt needs 128 * r * N bytes (plus a little); room for the largest accepted parameters.
_MAXMEM = 128 * _MAX_R * _MAX_N + 16 * 1024 * 1024
MAX_CONCURRENT = 2
_slots = threading.BoundedSemaphore(MAX_CONCURRENT)
_DUMMY = None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    with _slots:
        return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=length)


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = _scrypt(password, salt, _N, _R, _P, _LEN)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes]:
    scheme, n, r, p, salt, digest = stored.split("$")
    n, r, p = int(n), int(r), int(p)
    if scheme != "scrypt" or not (1 < n <= _MAX_N and 0 < r <= _MAX_R and 0 < p <= _MAX_P):
        raise ValueError("unsupported password hash parameters")
    return n, r, p, base64.b64decode(salt), base64.b64decode(digest)


def verify_password(password: str, stored: str | None) -> bool:
    """True when `password` matches `stored`; `stored=None` costs the same time and is False."""
    global _DUMMY
    if stored is None:
        _DUMMY = _DUMMY or hash_password("dummy-password-for-timing")
        verify_password(password, _DUMMY)
        return False
    try:
        n, r, p, salt, expected = _parse(stored)
        actual = _scrypt(password, salt, n, r, p, len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def needs_rehash(stored: str) -> bool:
    """Whether a hash that just verified was made with weaker parameters than new ones."""
    try:
        n, r, p, _salt, digest = _parse(stored)
    except (ValueError, TypeError):
        return True
    return (n, r, p, len(digest)) != (_N, _R, _P, _LEN)
