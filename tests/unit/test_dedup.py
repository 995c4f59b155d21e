"""Recognising Mixer retries in the collector."""

from __future__ import annotations

import asyncio

from collector.dedup import RecentCalls


def test_acknowledged_call_is_recognised_within_the_window() -> None:
    now = [0.0]
    recent = RecentCalls(window_s=60, max_calls=10, clock=lambda: now[0])

    async def scenario() -> list[bool]:
        out = [await recent.claim(b"k")]
        recent.finish(b"k", acknowledged=True)
        out.append(await recent.claim(b"k"))
        now[0] = 61.0
        out.append(await recent.claim(b"k"))
        return out

    assert asyncio.run(scenario()) == [True, False, True]


def test_failed_call_is_published_again() -> None:
    recent = RecentCalls(window_s=60, max_calls=10)

    async def scenario() -> list[bool]:
        first = await recent.claim(b"k")
        recent.finish(b"k", acknowledged=False)
        return [first, await recent.claim(b"k")]

    assert asyncio.run(scenario()) == [True, True]


def test_retry_waits_for_the_call_in_flight() -> None:
    recent = RecentCalls(window_s=60, max_calls=10)

    async def scenario(original_ok: bool) -> bool:
        assert await recent.claim(b"k")
        retry = asyncio.create_task(recent.claim(b"k"))
        await asyncio.sleep(0.01)
        assert not retry.done()
        recent.finish(b"k", acknowledged=original_ok)
        return await retry

    assert asyncio.run(scenario(True)) is False  # original made it: the retry is answered without publishing
    recent = RecentCalls(window_s=60, max_calls=10)
    assert asyncio.run(scenario(False)) is True  # original failed: the retry publishes


def test_memory_is_bounded() -> None:
    recent = RecentCalls(window_s=600, max_calls=3)

    async def scenario() -> None:
        for i in range(10):
            key = str(i).encode()
            await recent.claim(key)
            recent.finish(key, acknowledged=True)
        await recent.claim(b"x")

    asyncio.run(scenario())
    assert len(recent) == 3
