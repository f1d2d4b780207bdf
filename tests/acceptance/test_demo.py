"""`durakit demo` tells every template's story, and can be told again."""

from __future__ import annotations

from tests.conftest import durakit


def test_demo_runs_twice_and_every_crashed_effect_is_applied_once():
    for _ in range(2):
        done = durakit("demo")
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count("killed by SIGKILL: True") == 4
        assert done.stdout.count("after recovery") == 4
        for outcome in ("refunded", "booked", "payment_failed", "saved", "cancelled", "accepted"):
            assert f"-> {outcome}" in done.stdout
        assert "applied 1x" in done.stdout and "applied 2x" not in done.stdout
