"""jobctl.backoff: the one wait between tries (writes, locks, connections, LISTEN, serve, run)."""

import time

from jobctl.backoff import Backoff


def test_delays_double_up_to_the_cap_each_within_its_jitter():
    backoff = Backoff(0.1, 0.5)
    delays = [backoff.next() for _ in range(6)]
    for delay, base in zip(delays, [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]):
        assert 0.5 * base <= delay <= 1.5 * base


def test_jitter_spreads_processes_that_failed_together():
    assert len({round(Backoff(1.0, 1.0).next(), 9) for _ in range(20)}) > 1


def test_sleep_waits_the_delay_with_the_given_wait():
    waited = []
    assert Backoff(0.2, 1.0).sleep(waited.append) is True
    assert len(waited) == 1 and 0.1 <= waited[0] <= 0.3


def test_sleep_gives_up_at_once_when_the_delay_would_pass_the_deadline():
    waited = []
    backoff = Backoff(10.0, 10.0, timeout=1.0)
    start = time.monotonic()
    assert backoff.sleep(waited.append) is False
    assert waited == [] and time.monotonic() - start < 1.0
    assert 0 < backoff.left() <= 1.0


def test_no_deadline_never_gives_up_and_reset_starts_over():
    backoff = Backoff(0.01, 100.0)
    for _ in range(10):
        assert backoff.sleep(lambda _: None)
    assert backoff.left() == float("inf")
    backoff.reset()
    assert backoff.next() <= 0.015
