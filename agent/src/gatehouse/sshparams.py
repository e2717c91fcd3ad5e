"""SSH algorithm preferences, packet sizes and the asyncssh options every Gatehouse SSH end uses.

AES-GCM first: hardware-accelerated and the fastest cipher asyncssh offers; no
compression, since SSH payloads here are mostly already-encrypted inner sessions.

Packet sizes: asyncssh spends a fixed amount of Python per SSH packet (and sends an
empty SSH_MSG_IGNORE before each one), so bulk data moves faster in fewer, larger
packets than the usual 32 KiB. A receiver advertises the largest data packet it
accepts per channel; these are the values Gatehouse advertises.
"""

ENCRYPTION_ALGS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
                   "aes128-ctr", "aes256-ctr"]
COMPRESSION_ALGS = ["none"]

#: Session channels (node, and `gate ssh`'s end-to-end connection): 128 KiB of data
#: per packet. OpenSSH clients reaching a node stay well inside their own 256 KiB
#: packet limit.
SESSION_MAX_PKTSIZE = 128 * 1024

#: Channels that carry another SSH connection: `gate ssh`'s connection to the proxy, the
#: proxy's channels from users, and both ends of the reverse tunnel. One whole inner
#: session packet (data plus SSH framing, padding and MAC) fits in one packet of the hop
#: carrying it, so a packet is never split on its way from client to node and back.
#: (Larger packets on these hops paid off only once asyncssh's receive buffer stopped
#: copying itself per packet; see gatehouse.sshtuning.)
CARRIER_MAX_PKTSIZE = SESSION_MAX_PKTSIZE + 4 * 1024


def server_options(host_keypair, *, max_pktsize: int, keepalive_interval: float = 30, login_timeout: float = 30,
                   **extra) -> dict:
    """asyncssh options for a Gatehouse SSH server end (node, proxy, the leaf end of a tunnel).

    Certificate authentication only (the servers' own classes decide), no scp, agent or
    X11 forwarding, bytes rather than text on every channel.
    """
    return dict(server_host_keys=[host_keypair], encoding=None, encryption_algs=ENCRYPTION_ALGS,
                compression_algs=COMPRESSION_ALGS, max_pktsize=max_pktsize, allow_scp=False,
                agent_forwarding=False, x11_forwarding=False, keepalive_interval=keepalive_interval,
                login_timeout=login_timeout, **extra)


def client_options(client_keypair, *, max_pktsize: int, known_hosts, **extra) -> dict:
    """asyncssh options for a Gatehouse SSH client end (`gate ssh`, the root end of a tunnel).

    Only the given certificate is offered: no ssh-agent, no ~/.ssh/config.
    """
    return dict(client_keys=[client_keypair], known_hosts=known_hosts, config=None, agent_path=None,
                encryption_algs=ENCRYPTION_ALGS, compression_algs=COMPRESSION_ALGS, max_pktsize=max_pktsize,
                preferred_auth="publickey", **extra)
