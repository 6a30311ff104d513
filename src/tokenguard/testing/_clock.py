"""A clock that moves only when told to, so tests about expiry never sleep."""

from __future__ import annotations

import math
import time


class ManualClock:
    """Seconds since the epoch, frozen until ``advance`` or ``set`` moves them.

    Pass it as ``clock=`` to a ``DevIdP`` and to a ``TokenGuard``: both then agree on the time,
    and ``clock.advance(301)`` expires a five-minute token at once. It starts at the real time, so
    the tokens it dates are realistic for code that checks them against the wall clock; pass
    ``now`` to start at a fixed time instead.

    ``clock()`` and ``clock.now`` both read the time; assigning ``clock.now`` is ``clock.set``.
    """

    def __init__(self, now: float | None = None) -> None:
        self._now = time.time() if now is None else _finite(now)

    def __call__(self) -> float:
        return self._now

    @property
    def now(self) -> float:
        """The current time, in seconds since the epoch."""
        return self._now

    @now.setter
    def now(self, now: float) -> None:
        self.set(now)

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (never backwards) and return the new time."""
        if _finite(seconds) < 0:
            raise ValueError("a clock only moves forward: seconds must be >= 0")
        self._now += seconds
        return self._now

    def set(self, now: float) -> None:
        """Jump to ``now`` (seconds since the epoch), forwards or backwards."""
        self._now = _finite(now)

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now!r})"


def _finite(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"expected a finite number of seconds, got {value!r}")
    return float(value)
