"""For every template, every node and every fault point: SIGKILL a real `durakit`
process there, resume the thread from a new process, and check in the sandbox that each
side effect happened exactly once.

Each node is crashed on a scenario (tests/scenarios.py) whose path runs through it.
"""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime

import pytest

from durakit.graphs import TEMPLATES
from tests.conftest import durakit
from tests.scenarios import SCENARIOS, drive, next_move, thread_id_for

pytestmark = pytest.mark.crash

KILLED = -signal.SIGKILL


# Nodes whose work goes through the ledger, so they have an `after_effect` point.
EFFECT_NODES = {
    "refund": {"check_eligibility", "request_approval", "escalate_approval", "issue_refund", "sync_crm",
               "notify_customer", "write_audit"},
    "booking": {"hold_slot", "propose_alternatives", "take_deposit", "release_hold", "notify_payment_failed",
                "notify_no_slot", "send_confirmation", "send_reminder"},
    "cancellation-save": {"compute_offer", "request_supervisor_approval", "present_offer", "apply_retention",
                          "cancel_subscription", "log_outcome", "send_confirmation", "check_follow_up"},
    "escalation": {"summarize", "create_ticket", "assign_queue", "remind_queue", "notify_customer"},
}

# `after_writes` (the node's output saved, the next checkpoint not) on a few nodes of each
# template: a thread left there looks finished to `get_state().next` (the chaos soak found it).
AFTER_WRITES_NODES = {
    "refund": {"await_approval", "issue_refund", "write_audit"},
    "booking": {"take_deposit", "await_reminder"},
    "cancellation-save": {"await_customer", "apply_retention", "await_follow_up"},
    "escalation": {"mark_accepted"},
}


def has_point(template: str, node: str, point: str) -> bool:
    if point == "after_effect":
        return node in EFFECT_NODES[template]
    if point == "after_writes":
        return node in AFTER_WRITES_NODES[template]
    return True


CASES = [
    (scenario, node, point)
    for scenario in SCENARIOS
    for node in scenario.nodes
    for point in ("before", "after_effect", "after", "after_writes")
    if has_point(scenario.template, node, point)
]

# README's test command crashes every point once in each template, at the node that moves
# money or the account (and at a node reached from a timer, in a worker); the rest of the
# matrix is the slow tier (`pytest -m slow`), which .ci/run also runs.
EVERY_POINT_ONCE = {
    ("refund", "issue_refund", point) for point in ("before", "after_effect", "after", "after_writes")
} | {
    ("booking", "take_deposit", point) for point in ("before", "after_effect", "after", "after_writes")
} | {
    ("cancellation-save", "apply_retention", point) for point in ("before", "after_effect", "after", "after_writes")
} | {
    ("escalation", "create_ticket", "before"), ("escalation", "create_ticket", "after_effect"),
    ("escalation", "create_ticket", "after"), ("escalation", "mark_accepted", "after_writes"),
    ("booking", "send_reminder", "after_effect"), ("refund", "escalate_approval", "after_effect"),
}


def crash_case(scenario, node: str, point: str):
    slow = () if (scenario.template, node, point) in EVERY_POINT_ONCE else (pytest.mark.slow,)
    return pytest.param(scenario, node, point, id=f"{scenario.template}-{node}:{point}", marks=slow)


def test_every_node_of_every_template_is_crashed():
    for name, template in TEMPLATES.items():
        crashed = {node for scenario in SCENARIOS if scenario.template == name for node in scenario.nodes}
        assert crashed == set(template.builder.nodes), name


def test_the_fast_tier_crashes_every_point_of_every_template():
    cases = {(scenario.template, node, point) for scenario, node, point in CASES}
    assert EVERY_POINT_ONCE <= cases
    assert {(template, point) for template, _, point in EVERY_POINT_ONCE} == {
        (template, point) for template in TEMPLATES for point in ("before", "after_effect", "after", "after_writes")}


@pytest.mark.parametrize(("scenario", "node", "point"), [crash_case(*case) for case in CASES])
def test_killed_anywhere_the_thread_completes_with_each_effect_once(runner, conn, scenario, node, point):
    request, ids = scenario.setup(runner)
    fault = {"DURAKIT_FAULT": f"{node}:{point}"}
    answers = list(scenario.answers)

    # The fault fires in the process that starts the thread, in one that answers it, or in
    # a worker that fires its timer (`durakit worker --burst` works off what is due, then exits).
    child = durakit("run", scenario.template, "--input", json.dumps(request), "--json", env=fault)
    thread_id = thread_id_for(scenario.template, request)
    while child.returncode != KILLED:
        assert child.returncode == 0, child.stderr
        view = runner.status(thread_id)
        assert view.status == "waiting", f"{node}:{point} never fired"
        kind, value = next_move(view.interrupt, answers)
        if kind == "timer":
            runner.move_timer(thread_id, value, datetime.now(UTC))
            child = durakit("worker", "--burst", env=fault)
        else:
            child = durakit("approve", thread_id, "--decision", value, "--by", "tester", "--json", env=fault)

    # This test process is the new one: it resumes the thread and answers what is left.
    assert runner.wait_until_released(thread_id)
    view = drive(runner, runner.resume(thread_id), answers)
    assert view.status == "completed", view
    assert view.result["outcome"] == scenario.outcome
    assert scenario.effects(conn, ids) == scenario.expected
