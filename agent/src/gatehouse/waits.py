"""Waiting for an asyncio.Event with a timeout, without losing a cancellation.

On Python 3.11, ``asyncio.wait_for(event.wait(), timeout)`` returns normally when the
event is set in the same loop iteration as the waiting task is cancelled: the
cancellation is lost and the task runs on (fixed in 3.12). A stopping service that
cancels its loop right after a last event (a tunnel closing wakes the presence reporter,
say) then waits for that loop forever: a root proxy with leaves took 30 s and a SIGKILL
to stop. ``asyncio.wait`` does not swallow the cancellation.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Whether EVENT is set within TIMEOUT seconds; a cancellation of the caller always propagates."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=max(0.0, timeout))
    finally:
        waiter.cancel()
    return event.is_set()
