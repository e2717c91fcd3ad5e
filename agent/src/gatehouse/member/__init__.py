"""What every cluster member (node, proxy, tunnel agent) shares: its copy of auth's state.

* ``cache``    — the long-polled snapshot of the cluster, with typed accessors;
* ``checkers`` — access checkers built once per identity and snapshot revision;
* ``routing``  — registered-node lookup and which leaf clusters a user may reach;
* ``context``  — the typed context a member service is built with;
* ``join``     — how a member gets its identity (issued in-process, or joined by token).

Services (``node/``, ``proxy/``, ``tunnel/``) import from here and never from each other.
"""
