"""asyncssh's bulk-data path made cheaper, without changing a byte on the wire.

Every Gatehouse hop (proxy, reverse tunnel, node, `gate ssh`) moves the data of the
session it carries through asyncssh, in Python. Measured with bench/bench_ssh.py and
bench/bench_trust.py, three things in asyncssh cost more than the encryption itself;
`install()` replaces them for the whole process:

* **Receive buffer.** asyncssh keeps unparsed input in an immutable ``bytes``: every
  read appends with ``+=`` and every parsed packet drops its bytes with
  ``buf = buf[n:]``, each copying everything still buffered. A 256 KiB read holding
  eight 32 KiB packets was copied about four times before decryption, and a packet
  larger than one read was rebuilt once per read, which made packets larger than
  32 KiB a loss. `RecvBuffer` answers the same operations from a ``bytearray`` that
  drops consumed bytes in place, so each byte is copied once, when its packet is
  sliced out.
* **An empty SSH_MSG_IGNORE before every packet.** asyncssh sends one ahead of each
  packet once encryption is on, the countermeasure RFC 4251 (9.3.1) describes for
  CBC-mode ciphers; it doubles the packets, encryptions and socket writes. Gatehouse
  never negotiates a CBC cipher (``sshparams.ENCRYPTION_ALGS``: AES-GCM, ChaCha20-
  Poly1305, AES-CTR with MACs), so these are dropped. OpenSSH does not send them
  either.
* **A new AES-GCM context per packet.** asyncssh builds ``AESGCM(key)`` for every
  packet; the context is now kept with the key.

`keep_heap()` is the fourth: glibc's allocator, left alone, maps and unmaps (or grows
and trims) memory around every 128 KiB buffer, and the kernel zeroes the pages again
on each fault.

These reach into asyncssh's internals (``SSHConnection._inpbuf``, ``send_packet``,
``GCMCipher``). `install()` leaves asyncssh alone if the names it replaces are missing,
and the test suite checks that the installed asyncssh's source still does what the
replacements assume (`internals_as_expected`), so an asyncssh release that changed
them fails CI instead of a running proxy.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("gatehouse.sshtuning")

_installed = False
_originals: dict = {}   # (class, name) -> what install() replaced


class RecvBuffer:
    """The unparsed input of one SSH connection, read through asyncssh's own slicing.

    ``buf[n:]`` consumes ``n`` bytes and returns the same object (asyncssh only ever
    writes ``self._inpbuf = self._inpbuf[n:]``); every other slice returns a ``bytes``
    copy of just that part.
    """

    __slots__ = ("_data",)

    def __init__(self, initial: bytes = b"") -> None:
        self._data = bytearray(initial)

    def __len__(self) -> int:
        return len(self._data)

    def __bool__(self) -> bool:
        return bool(self._data)

    def __iadd__(self, data: bytes) -> "RecvBuffer":
        self._data += data
        return self

    def __getitem__(self, key):
        if isinstance(key, slice):
            if key.stop is None and key.step is None and (key.start or 0) >= 0:
                del self._data[:key.start or 0]  # O(1): CPython moves the start of a bytearray
                return self
            with memoryview(self._data) as view:  # released at once, so the buffer can shrink again
                return bytes(view[key])
        return self._data[key]

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        return self._data.find(sub, start, len(self._data) if end is None else end)

    def __bytes__(self) -> bytes:
        return bytes(self._data)

    def __eq__(self, other) -> bool:
        return bytes(self._data) == bytes(other)

    __hash__ = None  # mutable


def _data_received(self, data: bytes, datatype=None) -> None:
    """``SSHConnection.data_received``, appending to a `RecvBuffer`."""
    buf = self._inpbuf
    if not isinstance(buf, RecvBuffer):  # a new connection, or one asyncssh reset to b''
        self._inpbuf = buf = RecvBuffer(buf)
    buf += data
    self._recv_data()


def _skip_empty_ignore(send_packet):
    from asyncssh.constants import MSG_IGNORE
    from asyncssh.packet import String
    empty = String(b"")

    def wrapper(self, pkttype, *args, handler=None):
        if pkttype == MSG_IGNORE and args == (empty,):
            return  # the CBC countermeasure; see the module docstring
        send_packet(self, pkttype, *args, handler=handler)

    return wrapper


def _gcm_methods(tag_size: int):
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    def _aead(self):
        aead = getattr(self, "_gh_aead", None)
        if aead is None:
            aead = self._gh_aead = AESGCM(self._key)
        return aead

    def encrypt_and_sign(self, header: bytes, data: bytes):
        sealed = _aead(self).encrypt(self._iv, data, header)
        self._update_iv()
        with memoryview(sealed) as view:
            return header + view[:-tag_size], sealed[-tag_size:]

    def verify_and_decrypt(self, header: bytes, data: bytes, mac: bytes):
        try:
            plain = _aead(self).decrypt(self._iv, data + mac, header)
        except InvalidTag:
            plain = None
        self._update_iv()
        return plain

    return encrypt_and_sign, verify_and_decrypt


def internals_as_expected() -> bool:
    """Whether this asyncssh's source still has the code the replacements stand in for
    (the test suite asserts it, so a new asyncssh that changed them fails CI)."""
    import inspect

    from asyncssh.connection import SSHConnection
    from asyncssh.crypto import cipher

    def source(owner, name):
        return inspect.getsource(_originals.get((owner, name)) or getattr(owner, name))

    return ("self._inpbuf = self._inpbuf[" in source(SSHConnection, "_recv_packet")
            and "self._inpbuf = self._inpbuf[" in source(SSHConnection, "_recv_pkthdr")
            and "self._inpbuf += data" in source(SSHConnection, "data_received")
            and "self.send_packet(MSG_IGNORE, String(b''))" in source(SSHConnection, "send_packet")
            and "AESGCM(self._key)" in source(cipher.GCMCipher, "encrypt_and_sign")
            and "AESGCM(self._key)" in source(cipher.GCMCipher, "verify_and_decrypt"))


def _present() -> bool:
    """A cheap check at start-up (no source reading): the names the replacements use exist."""
    from asyncssh.connection import SSHConnection
    from asyncssh.crypto import cipher
    gcm = getattr(cipher, "GCMCipher", None)
    return (all(hasattr(SSHConnection, name) for name in ("data_received", "_recv_data", "send_packet"))
            and gcm is not None and hasattr(gcm, "_update_iv") and getattr(cipher, "_GCM_MAC_SIZE", 0) == 16)


def install() -> None:
    """Apply the replacements above to asyncssh in this process (once; idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    import asyncssh
    if not _present():
        log.debug("asyncssh %s differs from what gatehouse.sshtuning expects; left as it is",
                  asyncssh.__version__)
        return
    from asyncssh.connection import SSHConnection
    from asyncssh.crypto import cipher
    encrypt_and_sign, verify_and_decrypt = _gcm_methods(cipher._GCM_MAC_SIZE)
    for owner, name, replacement in (
            (SSHConnection, "data_received", _data_received),
            (SSHConnection, "send_packet", _skip_empty_ignore(SSHConnection.send_packet)),
            (cipher.GCMCipher, "encrypt_and_sign", encrypt_and_sign),
            (cipher.GCMCipher, "verify_and_decrypt", verify_and_decrypt)):
        _originals[(owner, name)] = getattr(owner, name)
        setattr(owner, name, replacement)


def keep_heap(mmap_threshold: int, trim_threshold: int) -> None:
    """Serve buffers up to ``mmap_threshold`` from the heap and keep up to ``trim_threshold``
    of freed heap instead of returning it to the kernel (glibc only; elsewhere nothing).

    The same as the MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ environment
    variables. Without it, each SSH packet of bulk data maps or grows the heap for its
    buffers and gives the memory back right after: measured, 0.3 to 1 s of system CPU
    per GiB in each process on the data path.
    """
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return
    except (ValueError, OSError):
        return
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, mmap_threshold)
    mallopt(m_trim_threshold, trim_threshold)
