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


def test_a_process_killed_while_pgserver_wrote_its_pid_file_does_not_lock_everyone_out(tmp_path):
    """pgserver rewrites `.handle_pids.json` in place; a SIGKILL mid-write once left it
    empty, and every later command failed to start the embedded server (the soak hung)."""
    env = {"DURAKIT_HOME": str(tmp_path), "DURAKIT_DATABASE_URL": ""}
    try:
        assert durakit("threads", env=env).returncode == 0
        (tmp_path / "pgdata" / ".handle_pids.json").write_text("")  # as a kill mid-write leaves it
        listed = durakit("threads", "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        assert listed.stderr == ""  # nor a traceback from pgserver's exit hook
        assert len(json.loads((tmp_path / "pgdata" / ".handle_pids.json").read_text())) <= 1  # does not grow
    finally:
        durakit("db", "stop", env=env)
