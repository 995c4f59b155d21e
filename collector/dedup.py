"""Recognising Mixer retries: the same call, answered again without republishing.

Mixer retries a report with the same ``dedup_id`` and the same instances. A
call whose events were made safe is remembered for a window, by a digest of
its exact bytes (dedup id and instances: dedup ids alone are per-Mixer
counters that two Mixer replicas can reuse); a retry inside the window is
answered OK at once. A retry that arrives while the original is still in
flight waits for the original's outcome instead of publishing twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable


class RecentCalls:
    """A bounded, time-windowed memory of acknowledged calls, plus the calls in flight."""

    def __init__(self, window_s: float, max_calls: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.max_calls = max_calls
        self._clock = clock
        self._done: OrderedDict[bytes, float] = OrderedDict()
        self._in_flight: dict[bytes, asyncio.Future[bool]] = {}

    def __len__(self) -> int:
        return len(self._done)

    def _expire(self, now: float) -> None:
        while self._done:
            _key, expires = next(iter(self._done.items()))
            if expires > now and len(self._done) <= self.max_calls:
                break
            self._done.popitem(last=False)

    async def claim(self, key: bytes) -> bool:
        """True when this call must be published; False when it is a retry of an acknowledged call.

        A caller that gets True must call :meth:`finish` with the outcome.
        """
        if self.window_s <= 0:
            return True
        while True:
            now = self._clock()
            self._expire(now)
            if key in self._done:
                return False
            pending = self._in_flight.get(key)
            if pending is None:
                self._in_flight[key] = asyncio.get_running_loop().create_future()
                return True
            if await asyncio.shield(pending):
                return False
            # the original failed: loop and claim it ourselves

    def finish(self, key: bytes, acknowledged: bool) -> None:
        """Record the outcome of a claimed call and wake any retries waiting on it."""
        if self.window_s <= 0:
            return
        pending = self._in_flight.pop(key, None)
        if acknowledged:
            self._done[key] = self._clock() + self.window_s
            self._done.move_to_end(key)
        if pending is not None and not pending.done():
            pending.set_result(acknowledged)
