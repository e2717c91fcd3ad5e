"""Reverse tunnels between a leaf cluster and every proxy of its root.

The leaf dials out (`agent.py`, asyncssh `connect_reverse`) and acts as the SSH
*server* on that TCP connection; the root proxy accepts it (`server.py`, asyncssh
`listen_reverse`) and acts as the SSH *client*, so it reaches leaf nodes with ordinary
`direct-tcpip` channels, which the leaf only honours for its registered nodes.

Authentication uses the CAs exchanged in the trust handshake, never the token:
* the leaf presents its proxy's host certificate (leaf host CA) with the principal
  `wire.TUNNEL_PRINCIPAL`, checked by the root against the leaf host CAs it trusts;
* the root proxy presents a user-type certificate from the root user CA whose only
  principal is `wire.TUNNEL_LOGIN` (no roles, so it can never open a session on a node).

Three subsystems run on each tunnel, opened by the root (names in `wire`): heartbeats
(JSON lines both ways every `interval` seconds: the root names itself and every root
proxy so the leaf dials until it holds a tunnel to each; the leaf reports liveness),
node listing (one request: the leaf nodes a root user may see, as decided by the
leaf's role mapping) and access checks (one request: whether a root user may log in
to a leaf node, as the leaf's `gatectl access check` explains it). Request/answer
subsystems take one JSON object and answer one; a leaf-side failure comes back as
`{"error": {"code", "message"}}`.
"""
