"""A new user's default: no DURAKIT_DATABASE_URL, an embedded PostgreSQL under DURAKIT_HOME
that starts on demand, migrates itself, and keeps its data across `durakit db stop`.
Runs in server-mode sessions too, on a home of its own."""

from __future__ import annotations

import json

from tests.conftest import durakit, unique


def test_embedded_database_starts_on_demand_and_keeps_data_across_stop(tmp_path):
    env = {"DURAKIT_HOME": str(tmp_path), "DURAKIT_DATABASE_URL": ""}
    request = json.dumps({"order_id": unique("ORD"), "amount": "5.00", "reason": "late"})
    try:
        started = durakit("run", "refund", "--input", request, "--json", env=env)
        assert started.returncode == 0, started.stderr
        thread_id = json.loads(started.stdout)["thread_id"]
        assert (tmp_path / "pgdata" / "postmaster.pid").exists()

        stopped = durakit("db", "stop", env=env)
        assert stopped.returncode == 0 and stopped.stdout.startswith("Stopped")
        assert not (tmp_path / "pgdata" / "postmaster.pid").exists()

        again = durakit("status", thread_id, "--json", env=env)  # starts it again
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["status"] == "completed"
    finally:
        durakit("db", "stop", env=env)
