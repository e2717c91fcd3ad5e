"""The open-files limit, raised where the agent starts (issue 16: a root for a fleet).

Every tunnel, user connection and node connection holds a socket, so a root proxy for
thousands of leaves needs far more than the usual soft limit of 1,024 open files. At
start the soft limit goes up to the hard limit (at most WANTED): no privilege is needed
for that. A hard limit below RECOMMENDED is logged once with where to raise it (systemd:
``LimitNOFILE=``, which the collection's unit sets to 65536; docs/operations.md). When
the limit is reached anyway, listeners cannot accept: that is logged once with the
limit's name (AcceptRefusalLog), not once per connection or per retry.
"""

from __future__ import annotations

import errno
import logging
import time

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


#: asyncio's context message when accept() fails for lack of descriptors or memory (it retries each second).
ACCEPT_OUT_OF_RESOURCES = "socket.accept() out of system resource"
#: An episode of refusals ends after this long without one; the next refusal is logged again.
QUIET_AFTER = 60.0
_LIMIT_NAMES = {errno.EMFILE: "the open files limit of this process (RLIMIT_NOFILE, {soft})",
                errno.ENFILE: "the system's open files limit (fs.file-max)",
                errno.ENOBUFS: "the kernel's socket buffer memory", errno.ENOMEM: "the memory available for sockets"}


class AcceptRefusalLog:
    """An event-loop exception handler: a listener that cannot accept because a limit is reached is
    logged once with the limit's name (again only after QUIET_AFTER seconds without a refusal), instead of
    asyncio's traceback on every retry. Anything else goes to the handler that was there before."""

    def __init__(self, loop, clock=time.monotonic):
        self.previous = loop.get_exception_handler()
        self.clock = clock
        self.last = None
        self.refusals = 0

    def __call__(self, loop, context) -> None:
        exc = context.get("exception")
        if context.get("message") != ACCEPT_OUT_OF_RESOURCES or not isinstance(exc, OSError):
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        now = self.clock()
        if self.last is None or now - self.last > QUIET_AFTER:
            self.refusals = 0
            log.warning("new connections wait: %s is reached, so the listener cannot accept them (%s); they are "
                        "accepted again once connections close. Raise the limit (LimitNOFILE in the systemd unit, "
                        "docs/operations.md \"File descriptors\"); this is logged once until it has not happened "
                        "for %ds", _limit_name(exc.errno), exc.strerror or exc, QUIET_AFTER)
        self.last = now
        self.refusals += 1


def _limit_name(number) -> str:
    soft = "?"
    try:
        import resource
        soft = str(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    except (ImportError, ValueError, OSError):
        pass
    return _LIMIT_NAMES.get(number, "a system limit").format(soft=soft)


def log_accept_refusals_once(loop) -> AcceptRefusalLog:
    """Install AcceptRefusalLog on LOOP (the agent's event loop, at start)."""
    handler = AcceptRefusalLog(loop)
    loop.set_exception_handler(handler)
    return handler
