"""waits.wait_event: a timed wait for an event that never loses its caller's cancellation."""

from __future__ import annotations

import asyncio

import pytest

from gatehouse.waits import wait_event


async def test_set_timeout_and_already_set():
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, 10) is True
    assert await wait_event(event, 0) is True


async def test_a_cancellation_that_comes_with_the_event_is_not_lost():
    """The service loop of a stopping process: its last event and the cancellation arrive together.
    With asyncio.wait_for(event.wait(), t) on Python 3.11 the loop ran on and stop() waited forever."""
    event = asyncio.Event()
    rounds = 0

    async def service_loop():
        nonlocal rounds
        while True:
            await wait_event(event, 30)
            event.clear()
            rounds += 1

    task = asyncio.create_task(service_loop())
    for _ in range(3):
        await asyncio.sleep(0)
    event.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert task.cancelled()
