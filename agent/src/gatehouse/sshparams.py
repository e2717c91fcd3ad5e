"""SSH algorithm preferences shared by the node, the proxy and `gate ssh`.

AES-GCM first: hardware-accelerated and the fastest cipher asyncssh offers; no
compression, since SSH payloads here are mostly already-encrypted inner sessions.
"""

ENCRYPTION_ALGS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
                   "aes128-ctr", "aes256-ctr"]
COMPRESSION_ALGS = ["none"]
