"""Testing templates without PostgreSQL: `run_template` runs a thread of a template on
LangGraph's InMemorySaver, with `InMemorySandbox` as every outside system and in-memory
stand-ins for the ledger, timers and event log.

    from durakit.testing import InMemorySandbox, run_template

    sandbox = InMemorySandbox()
    sandbox.add_order("ORD-7", customer_id="c-7", customer_email="ada@example.com", amount_cents=30000)
    run = run_template("refund", {"order_id": "ORD-7", "amount": "250.00", "reason": "broken"},
                       answers={"await_approval": {"decision": "approve", "by": "dana"}}, sandbox=sandbox)
    assert run.status == "completed" and run.result["outcome"] == "refunded"
    assert len(sandbox.refunds) == 1

Importing this module opens nothing and needs no database; DURAKIT_DATABASE_URL is never read.
"""

from durakit.testing.memory import Effect, InMemoryEvents, InMemoryLedger, InMemoryTimers, Timer
from durakit.testing.run import TemplateRun, run_template
from durakit.testing.sandbox import InMemorySandbox, Received

__all__ = [
    "Effect", "InMemoryEvents", "InMemoryLedger", "InMemorySandbox", "InMemoryTimers", "Received", "TemplateRun",
    "Timer", "run_template",
]
