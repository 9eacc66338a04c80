"""Waiting between tries: the one backoff of jobctl.

Every loop that tries something again after a passing failure waits through a
`Backoff`: a write transaction the store could not serialise (write.transaction),
SQLite's BEGIN while another writer holds the lock, a PostgreSQL connection the
server refused, a LISTEN connection that was lost, the web page's event reader
after a database hiccup, and `run` recording an outcome the database refused.
Each says its own first delay, its cap and its deadline; the rule is here once.
"""

from __future__ import annotations

import random
import time


class Backoff:
    """Delays that start at `first` seconds and double up to `most`, each scaled by a
    random factor from 0.5 to 1.5 (so processes that failed together do not try
    again together), within `timeout` seconds from now (None: no deadline)."""

    __slots__ = ("first", "delay", "most", "deadline")

    def __init__(self, first: float, most: float, timeout: float | None = None):
        self.first = self.delay = first
        self.most = most
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def next(self) -> float:
        """The next delay, jittered; the one after it is twice as long (up to `most`)."""
        delay = self.delay * random.uniform(0.5, 1.5)
        self.delay = min(self.delay * 2, self.most)
        return delay

    def left(self) -> float:
        """Seconds to the deadline (0 once passed; inf without one)."""
        return float("inf") if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def sleep(self, wait=time.sleep) -> bool:
        """Wait the next delay (with `wait`, e.g. an Event's wait) and return True; or,
        when that would pass the deadline, return False at once: give up now."""
        delay = self.next()
        if delay > self.left():
            return False
        wait(delay)
        return True

    def reset(self) -> None:
        """After a success: the next failure waits `first` again."""
        self.delay = self.first
