"""gatehouse.sshtuning: asyncssh's data path, cheaper and byte-for-byte the same on the wire."""

from __future__ import annotations

import asyncio
import hashlib
import os

import asyncssh
import pytest
from asyncssh.crypto import cipher as asyncssh_cipher
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gatehouse import sshtuning
from gatehouse.sshparams import CARRIER_MAX_PKTSIZE, ENCRYPTION_ALGS, SESSION_MAX_PKTSIZE
from gatehouse.sshtuning import RecvBuffer

sshtuning.install()


def test_installed_asyncssh_still_has_the_code_the_replacements_stand_in_for():
    assert sshtuning.internals_as_expected(), (
        f"asyncssh {asyncssh.__version__} changed its receive buffer, SSH_MSG_IGNORE or AES-GCM code; "
        f"review gatehouse/sshtuning.py against it")
    from asyncssh.connection import SSHConnection
    assert SSHConnection.data_received is sshtuning._data_received


def test_no_cbc_cipher_is_ever_offered():
    # Dropping the empty SSH_MSG_IGNORE is only sound because no CBC-mode cipher is negotiated.
    assert not [alg for alg in ENCRYPTION_ALGS if "cbc" in alg]


def test_recv_buffer_answers_like_bytes():
    data = os.urandom(1000)
    buf, ref = RecvBuffer(), b""
    for piece in (data[:10], data[10:700], data[700:]):
        buf += piece
        ref += piece
    assert len(buf) == len(ref) and bool(buf) and bytes(buf) == ref and buf == ref
    for key in (slice(0, 16), slice(16, 40), slice(5, -3), slice(None, 7), slice(-20, None), slice(0, 100, 3)):
        got = buf[key]
        assert got == ref[key] and type(got) is bytes, key
    assert buf[3] == ref[3]
    assert buf.find(ref[500:504]) == ref.find(ref[500:504])
    assert buf.find(b"\n", 0, 50) == ref.find(b"\n", 0, 50)


def test_recv_buffer_consumes_in_place():
    buf = RecvBuffer(b"SSH-2.0-x\r\nrest")
    assert buf[:buf.find(b"\n")] == b"SSH-2.0-x\r"
    same = buf[buf.find(b"\n") + 1:]
    assert same is buf and bytes(buf) == b"rest"
    buf = buf[4:]
    assert not buf and len(buf) == 0
    buf += b"more"
    assert bytes(buf) == b"more"


def test_recv_buffer_keeps_no_view_open():
    buf = RecvBuffer(b"x" * 100)
    packet = buf[:60]
    buf = buf[60:]          # would raise BufferError if a memoryview were still exported
    buf += b"y" * 10
    assert packet == b"x" * 60 and bytes(buf) == b"x" * 40 + b"y" * 10


@pytest.mark.parametrize("size", [16, 32])
def test_gcm_replacement_interoperates_with_plain_aesgcm(size):
    key, iv = os.urandom(size), os.urandom(12)
    header, data = os.urandom(4), os.urandom(70_000)
    ours = asyncssh_cipher.GCMCipher(f"aes{size * 8}-gcm", key, iv)
    packet, mac = ours.encrypt_and_sign(header, data)
    assert packet[:4] == header and len(mac) == 16
    assert AESGCM(key).decrypt(iv, packet[4:] + mac, header) == data
    # the next packet uses the next IV, as RFC 5647 says
    sealed = AESGCM(key).encrypt(iv[:4] + (int.from_bytes(iv[4:], "big") + 1).to_bytes(8, "big"), data, header)
    reader = asyncssh_cipher.GCMCipher(f"aes{size * 8}-gcm", key, iv)
    assert reader.verify_and_decrypt(header, packet[4:], mac) == data
    assert reader.verify_and_decrypt(header, sealed[:-16], sealed[-16:]) == data
    forged = asyncssh_cipher.GCMCipher(f"aes{size * 8}-gcm", key, iv)
    assert forged.verify_and_decrypt(header, packet[4:], bytes(16)) is None


class _Sink(asyncssh.SSHServerSession):
    """Hashes what it receives; answers the digest on EOF."""

    def __init__(self):
        self.digest = hashlib.sha256()
        self.chan = None

    def connection_made(self, chan):
        self.chan = chan

    def shell_requested(self):
        return True

    def data_received(self, data, datatype):
        self.digest.update(data)

    def eof_received(self):
        self.chan.write(self.digest.hexdigest().encode())
        self.chan.exit(0)


@pytest.mark.parametrize("alg", ENCRYPTION_ALGS)
async def test_bulk_data_arrives_intact_in_large_packets(alg):
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")

    class Server(asyncssh.SSHServer):
        def begin_auth(self, username):
            return True

        def session_requested(self):
            return _Sink()

    server = await asyncssh.create_server(
        Server, "127.0.0.1", 0, server_host_keys=[host_key], encoding=None,
        authorized_client_keys=asyncssh.import_authorized_keys(client_key.export_public_key().decode()),
        max_pktsize=CARRIER_MAX_PKTSIZE)
    port = server.sockets[0].getsockname()[1]
    payload = os.urandom(6 * 1024 * 1024 + 12345)
    try:
        async with asyncssh.connect("127.0.0.1", port, username="u", client_keys=[client_key], known_hosts=None,
                                    encryption_algs=[alg], config=None, agent_path=None) as conn:
            seq_before = conn._send_seq
            chan, session = await conn.create_session(asyncssh.SSHClientSession, encoding=None,
                                                      max_pktsize=SESSION_MAX_PKTSIZE)
            answer = []
            session.data_received = lambda data, datatype: answer.append(data)
            for offset in range(0, len(payload), 300_000):
                chan.write(payload[offset:offset + 300_000])
            chan.write_eof()
            await asyncio.wait_for(chan.wait_closed(), 60)
            packets_sent = (conn._send_seq - seq_before) & 0xFFFFFFFF
    finally:
        server.close()
        await server.wait_closed()
    assert b"".join(answer).decode() == hashlib.sha256(payload).hexdigest()
    # one packet per data packet: no empty SSH_MSG_IGNORE ahead of each one
    data_packets = -(-len(payload) // CARRIER_MAX_PKTSIZE)
    assert data_packets <= packets_sent < 1.5 * data_packets
