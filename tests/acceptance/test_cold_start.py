"""A command loads what it needs: looking at a thread loads neither LangGraph nor any
template; answering one loads LangGraph and that thread's template only."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from durakit.graphs import MODULES
from tests.acceptance.test_cli import refund_input
from tests.conftest import CHILD_TIMEOUT_SECONDS, durakit_json

HEAVY = ("langgraph", "langchain_core", "langchain_openai")

# Runs the CLI's entry point in a fresh interpreter, then prints the modules it loaded and
# the durakit lines that first imported one of HEAVY (so a failure names the culprit).
PROBE = f"""
import json, sys, traceback

class FirstHeavyImport:
    where = None

    def find_spec(self, name, path=None, target=None):
        if self.where is None and name.split(".")[0] in {HEAVY!r}:
            self.where = [f"{{f.filename.split('/durakit/')[-1]}}:{{f.lineno}}"
                          for f in traceback.extract_stack() if "/durakit/" in f.filename]
        return None

watch = FirstHeavyImport()
sys.meta_path.insert(0, watch)
from durakit import cli
cli.main(sys.argv[1:])
print("LOADED " + json.dumps({{"modules": sorted(sys.modules), "first_heavy_import": watch.where}}))
"""


def loaded_by(*args: str) -> tuple[set[str], list[str] | None]:
    """The modules a CLI command loaded, and where it first imported LangGraph or LangChain."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=CHILD_TIMEOUT_SECONDS
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1].removeprefix("LOADED "))
    return set(report["modules"]), report["first_heavy_import"]


def heavy(modules: set[str]) -> set[str]:
    """The LangGraph and LangChain packages and the template modules among `modules`."""
    templates = set(MODULES.values())
    return {name if name in templates else name.split(".")[0]
            for name in modules if name in templates or name.split(".")[0] in HEAVY}


@pytest.fixture
def waiting_refund(make_order) -> str:
    code, view, stderr = durakit_json("run", "refund", "--input", refund_input(make_order(30000), "250.00"))
    assert (code, view["status"]) == (0, "waiting"), stderr
    return view["thread_id"]


@pytest.mark.parametrize("command", [["status"], ["history"], ["threads", "--template", "refund"], ["pending"]])
def test_looking_at_threads_loads_no_langgraph_and_no_template(waiting_refund, command):
    thread = [waiting_refund] if command[0] in ("status", "history") else []
    modules, first_heavy_import = loaded_by(*command, *thread, "--json")
    assert heavy(modules) == set(), f"first imported at {first_heavy_import}"


def test_approve_loads_langgraph_and_only_the_threads_template(waiting_refund):
    modules, _ = loaded_by("approve", waiting_refund, "--decision", "approve", "--by", "dana", "--json")
    assert "langgraph.graph" in modules
    assert {name for name in MODULES.values() if name in modules} == {MODULES["refund"]}
    assert "langchain_openai" not in modules  # no model configured
