"""The kit's rules for templates, checked when a template is built (no database)."""

from __future__ import annotations

import itertools
import uuid
from typing import Any, Literal, TypedDict

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command
from pydantic import Field
from pydantic_settings import BaseSettings

from durakit.errors import InvalidTemplate
from durakit.graphs import TEMPLATES
from durakit.state.booking import SlotChoice
from durakit.state.cancellation_save import CustomerAnswer, SupervisorAnswer
from durakit.state.escalation import AgentAnswer
from durakit.state.refund import ApprovalAnswer
from durakit.steps import TRANSIENT_RETRY, ask_human, sleep_until, step
from durakit.template_graph import TemplateGraph
from durakit.templates import HumanAnswer, Template, TemplateRequest

# What each shipped template asks, and where it sleeps, written out here rather than read
# from the templates, so that a node losing its declaration fails the test.
ASKS = {
    "refund": {"await_approval": ApprovalAnswer},
    "booking": {"await_choice": SlotChoice},
    "cancellation-save": {"await_supervisor": SupervisorAnswer, "await_customer": CustomerAnswer},
    "escalation": {"await_agent": AgentAnswer},
}
SLEEPS = {"refund": set(), "booking": {"await_reminder"}, "cancellation-save": {"await_follow_up"}, "escalation": set()}


class State(TypedDict, total=False):
    done: bool
    answer: dict


class Request(TemplateRequest):
    ticket_id: str = Field(description="The ticket.")

    def business_key(self) -> str:
        return self.ticket_id


class YesNo(HumanAnswer):
    decision: Literal["yes", "no"]


def act(state: State, runtime: Any) -> dict[str, Any]:
    return {"done": True}


def await_person(state: State, runtime: Any) -> dict[str, Any]:
    answer = ask_human("Go ahead?", ["yes", "no"])
    return {"answer": {"type": type(answer).__name__, **answer.model_dump()}}


def await_morning(state: State, runtime: Any) -> dict[str, Any]:
    sleep_until("morning", None)  # never run here: only added
    return {}


def template(builder: StateGraph, request_model: type[TemplateRequest] = Request) -> Template:
    return Template(
        name="example", description="An example.", request_model=request_model, settings_model=BaseSettings,
        builder=builder, initial_state=dict, summarize=dict,
    )


def wired(builder: StateGraph, *nodes: str) -> StateGraph:
    builder.add_edge(START, nodes[0])
    for before, after in itertools.pairwise(nodes):
        builder.add_edge(before, after)
    builder.add_edge(nodes[-1], END)
    return builder


def test_a_template_built_by_the_kit_is_accepted_and_answers_come_from_its_declarations():
    builder = TemplateGraph(State)
    builder.add_node("act", act)
    builder.add_node("await_person", await_person, asks=YesNo)
    built = template(wired(builder, "act", "await_person"))
    assert built.answers == {"await_person": YesNo}


def test_a_node_added_around_the_kit_is_refused_naming_it():
    builder = TemplateGraph(State)
    builder.add_node("act", act)
    StateGraph.add_node(builder, "sneak", step(act, "sneak"))  # wrapped, but without the kit's retry policy
    with pytest.raises(InvalidTemplate, match=r"^Template 'example': node 'sneak' bypassed") as refused:
        template(wired(builder, "act", "sneak"))
    assert "'act'" not in str(refused.value)


def test_a_plain_state_graph_is_refused_naming_its_nodes():
    builder = StateGraph(State)
    builder.add_node("act", act)
    builder.add_node("act_again", act)
    with pytest.raises(InvalidTemplate, match=r"nodes 'act', 'act_again' bypassed the kit's step wrapper"):
        template(wired(builder, "act", "act_again"))


def test_a_node_that_asks_without_its_answer_model_is_refused_naming_it():
    with pytest.raises(InvalidTemplate, match=r"^Node 'await_person' asks a person, so add it with its answer model"):
        TemplateGraph(State).add_node("await_person", await_person)


def test_a_node_that_sleeps_without_saying_so_is_refused_naming_it():
    with pytest.raises(InvalidTemplate, match=r"^Node 'await_morning' sleeps, so add it with .*sleeps=True"):
        TemplateGraph(State).add_node("await_morning", await_morning)


def test_an_input_field_without_a_description_is_refused_naming_it():
    class Undescribed(Request):
        customer_id: str = Field(min_length=1)

    builder = TemplateGraph(State)
    builder.add_node("act", act)
    with pytest.raises(InvalidTemplate, match=r"no description for input field 'customer_id' of Undescribed;") as refused:
        template(wired(builder, "act"), Undescribed)
    assert "ticket_id" not in str(refused.value)


class Context:
    """The parts of `Services` a step uses when it neither retries nor schedules a timer."""

    thread_id = "example-1"

    def ensure_held(self) -> None:
        pass


def test_ask_human_returns_the_answer_as_the_declared_model():
    builder = TemplateGraph(State)
    builder.add_node("await_person", await_person, asks=YesNo)
    graph = wired(builder, "await_person").compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": str(uuid.uuid4())}}
    paused = graph.invoke({}, config, context=Context())
    assert paused["__interrupt__"][0].value["decisions"] == ["yes", "no"]
    done = graph.invoke(Command(resume={"decision": "yes", "by": "dana"}), config, context=Context())
    assert done["answer"] == {"type": "YesNo", "decision": "yes", "by": "dana", "note": None}


@pytest.mark.parametrize("name", sorted(ASKS))
def test_each_shipped_template_builds_with_every_node_wrapped_and_retried_unless_it_waits(name: str):
    built = TEMPLATES[name]
    assert built.answers == ASKS[name]
    compiled = built.builder.compile()
    nodes = {node: spec for node, spec in compiled.nodes.items() if node != START}
    assert set(nodes) == set(built.builder.nodes) and len(nodes) >= 8
    waiting = set(ASKS[name]) | SLEEPS[name]
    assert waiting <= set(nodes)
    for node, spec in nodes.items():
        assert spec.bound.func.step_of.__name__ == node, node  # the kit's step wrapper, around the node's function
        expected = None if node in waiting else (TRANSIENT_RETRY,)
        assert spec.retry_policy == expected, node


@pytest.mark.parametrize("name", sorted(ASKS))
def test_every_input_field_of_a_shipped_template_is_described(name: str):
    fields = TEMPLATES[name].request_model.model_fields
    assert fields and all(info.description for info in fields.values())
