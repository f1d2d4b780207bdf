"""The graph builder of every template: it applies the kit's rules to each node.

A template says only what is particular to a node:

    graph = TemplateGraph(RefundState)
    graph.add_node("issue_refund", issue_refund)                           # acts, or reads
    graph.add_node("await_approval", await_approval, asks=ApprovalAnswer)  # waits for a person
    graph.add_node("await_reminder", await_reminder, sleeps=True)          # waits for a timer

and the kit adds the rest: every node runs inside `durakit.steps.step` (fault points,
retry events, the lock check), and every node that does not wait gets `TRANSIENT_RETRY`.
A waiting node gets no retry policy: it stops the run on purpose, and is run again
from its first line when answered or woken. `Template` refuses a graph that has a node
added any other way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

from langgraph.graph import StateGraph
from langgraph.types import RetryPolicy

from durakit.errors import InvalidTemplate
from durakit.services import Services
from durakit.steps import TRANSIENT_RETRY, NodeFn, step
from durakit.templates import HumanAnswer


@dataclass(frozen=True)
class NodeRules:
    """How the kit runs one node of a template."""

    asks: type[HumanAnswer] | None = None
    """The answer model of a node that asks a person (`ask_human` validates with it)."""
    sleeps: bool = False
    """The node pauses until a time (`sleep_until`)."""

    @property
    def retry_policy(self) -> RetryPolicy | None:
        waits = self.asks is not None or self.sleeps
        return None if waits else TRANSIENT_RETRY


class TemplateGraph(StateGraph):
    """A LangGraph `StateGraph` whose nodes follow the kit's rules (see the module)."""

    def __init__(self, state_schema: type[Any]) -> None:
        super().__init__(state_schema, context_schema=Services)
        self.node_rules: dict[str, NodeRules] = {}

    def add_node(  # type: ignore[override]  # takes only what a template decides
        self, name: str, fn: NodeFn, *, asks: type[HumanAnswer] | None = None, sleeps: bool = False
    ) -> Self:
        if asks is None and names(fn, "ask_human"):
            raise InvalidTemplate(f"Node {name!r} asks a person, so add it with its answer model: "
                                  f"add_node({name!r}, {fn.__name__}, asks=...).")
        if not sleeps and names(fn, "sleep_until"):
            raise InvalidTemplate(f"Node {name!r} sleeps, so add it with add_node({name!r}, {fn.__name__}, sleeps=True).")
        rules = NodeRules(asks=asks, sleeps=sleeps)
        super().add_node(name, step(fn, name, asks=asks), retry_policy=rules.retry_policy)
        self.node_rules[name] = rules
        return self


def names(fn: NodeFn, name: str) -> bool:
    """Whether `fn`'s own code refers to `name` (a call made through a helper is not seen:
    `ask_human` then refuses at run time)."""
    code = getattr(fn, "__code__", None)
    return code is not None and name in code.co_names
