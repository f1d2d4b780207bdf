"""`durakit demo` tells its story, and can be told again."""

from __future__ import annotations

from tests.conftest import durakit


def test_demo_runs_twice_with_every_refund_issued_once():
    for _ in range(2):
        done = durakit("demo")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "child exit: killed by SIGKILL" in done.stdout
        assert done.stdout.count("billing holds 1 refund(s)") == 3
        assert "completed -> refunded" in done.stdout
