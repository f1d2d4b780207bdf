"""A small crash soak (bench/chaos.py runs the large one): threads of all four
templates driven through the CLI, SIGKILLed at random moments, recovered and answered
until done; none lost, no side effect twice, every event log consistent."""

from __future__ import annotations

import pytest

from bench.chaos import Soak

pytestmark = pytest.mark.crash


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_random_kills_lose_nothing_and_repeat_nothing(test_database):
    soak = Soak(threads=16, kill_rate=0.6, parallel=3, latency_ms=20, seed=5, timeout=540)
    report = soak.run()
    print("\n".join(report.lines()))
    assert report.kills >= 8, report.lines()
    assert report.completed == report.threads
    assert report.ok, report.lines() + report.unexpected_exits
