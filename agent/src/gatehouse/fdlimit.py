"""The open-files limit, raised where the agent starts (issue 16: a root for a fleet).

Every tunnel, user connection and node connection holds a socket, so a root proxy for
thousands of leaves needs far more than the usual soft limit of 1,024 open files. At
start the soft limit goes up to the hard limit (at most WANTED): no privilege is needed
for that. A hard limit below RECOMMENDED is logged once with where to raise it (systemd:
``LimitNOFILE=``, which the collection's unit sets to 65536; docs/operations.md).
"""

from __future__ import annotations

import logging

log = logging.getLogger("gatehouse.limits")

#: The soft limit asked for (the collection's systemd unit gives this as the hard limit too).
WANTED = 65536
#: Below this hard limit a root for a fleet runs out of sockets: say so at start.
RECOMMENDED = 16384


def raise_open_files(wanted: int = WANTED) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE towards WANTED (never above the hard limit, never down).
    Returns (soft, hard) after the change; logs what it did and a hard limit that is too low."""
    try:
        import resource
    except ImportError:  # not a POSIX system: nothing to raise
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("open files limit (RLIMIT_NOFILE) raised from %d to %d", soft, target)
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit (RLIMIT_NOFILE) from %d to %d: %s", soft, target, exc)
    if hard != resource.RLIM_INFINITY and hard < RECOMMENDED:
        log.warning("the open files limit (RLIMIT_NOFILE) is %d; a root proxy for many leaves needs more: set "
                    "LimitNOFILE=%d in the systemd unit (or 'ulimit -n' where gatehouse starts)", hard, WANTED)
    return soft, hard
