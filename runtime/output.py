"""How the CLI shows threads to a person (rich) and to a program (--json)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from durakit.questions import answer_command

if TYPE_CHECKING:
    from durakit.retention import PruneReport
    from durakit.views import RecoveryReport, ThreadPage, ThreadView

# Piped output is not cut to 80 columns: ids and questions stay whole in logs and pagers.
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)


def plain(value: Any) -> str:
    """Text from a request, an answer or an outside system, safe inside rich markup (a
    customer's "[bold]" is shown as typed, and a stray "[/x]" cannot break the output).
    Escape whole pieces of text, after joining: "[/x" and "]" escaped apart make a tag."""
    return escape(str(value))


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def short_time(iso: str | None) -> str:
    """2026-11-23T03:50:44.123Z -> 11-23 03:50:44, for tables; JSON keeps the full time."""
    return iso[5:19].replace("T", " ") if iso else ""


def status_line(view: ThreadView) -> str:
    text = f"[bold]{view.thread_id}[/bold] ({view.template}): {view.status}"
    if view.stale:
        text += " [yellow](its process is gone; `durakit recover` resumes it)[/yellow]"
    return text


def show_thread(view: ThreadView) -> None:
    console.print(status_line(view))
    if view.superseded_by:
        console.print(f"  forked into {view.superseded_by}, which alone goes on", markup=False)
    if view.queued and not view.retry_at:
        console.print("  queued for a worker (`durakit worker` runs it)")
    question = view.question
    if question is not None and not question.for_person:
        console.print(f"  sleeping at {plain(question.node)} until {question.wakes_at} "
                      f"({plain(question.timer)}); a worker wakes it")
    elif question is not None:
        console.print(f"  waiting at {plain(question.node)} for: {plain(question.text)}")
        if question.on_deadline:
            console.print(f"  deadline {question.wakes_at}: then {plain(question.on_deadline)}")
        command = answer_command(view.thread_id, question.name, "|".join(question.decisions))
        console.print(f"  answer with: {plain(command)} --by NAME")
    if view.result:
        console.print("  result: " + plain(", ".join(
            f"{key}={value}" for key, value in view.result.items() if value not in (None, []))))
    if view.error:
        console.print(f"  error at {view.error_node or 'start'}: {plain(view.error)}")
        if view.retry_at:
            console.print(f"  next retry at {view.retry_at} (automatic retry {view.auto_retries} of {view.retry_limit}, "
                          f"by a worker); to retry now: durakit resume {view.thread_id}")
        elif view.retries_exhausted:
            console.print(f"  no automatic retry left ({view.auto_retries} of {view.retry_limit} made); "
                          f"after fixing the cause: durakit resume {view.thread_id}")
        else:
            console.print(f"  after fixing the cause: durakit resume {view.thread_id}")
    if view.effects:
        console.print(effects_table(view.effects))
    for timer in view.timers or []:
        console.print(f"  timer {plain(timer['name'])}: due {timer['due_at']} ({timer['status']})")


def show_answered(answered: dict[str, Any]) -> None:
    """Which question an answer went to: the one named, or the one pending at the time."""
    console.print(f"answered question {plain(answered['question_id'])} ({plain(answered['question'])}) at "
                  f"{plain(answered['node'])}: {plain(answered['decision'])}")


def effects_table(effects: list[dict[str, Any]]) -> Table:
    table = Table(title="side effects", title_justify="left")
    table.add_column("step", no_wrap=True)
    for column in ("system", "status", "durakit calls", "received", "applied"):
        table.add_column(column)
    for effect in effects:
        outside = effect["system"] != "judgement"  # judgement answers are recorded, not sent anywhere
        table.add_row(
            plain(effect["step_key"]), effect["system"],
            effect["status"] + (" (inherited)" if effect.get("inherited_from") else ""), str(effect["calls"]),
            str(effect["received"]) if outside else "-", str(effect["applied"]) if outside else "-",
        )
    return table


def show_history(view: ThreadView) -> None:
    show_thread(view)
    table = Table(title="events", title_justify="left")
    table.add_column("at (UTC)", no_wrap=True)
    for column in ("event", "node", "detail"):
        table.add_column(column)
    for event in view.extra["events"]:
        detail = ", ".join(f"{key}={value}" for key, value in event["detail"].items() if value is not None)
        table.add_row(short_time(event["at"]), event["kind"], event["node"] or "", plain(detail))
    console.print(table)
    for decision in view.extra["decisions"]:
        note = f" ({decision['note']})" if decision["note"] else ""
        roles = f" as {'+'.join(decision['authorized_as'])}" if decision["authorized_as"] else ""
        console.print(
            f"  decision at {decision['node'] or 'a question'}: {decision['decision']} by {decision['decided_by']}{roles} "
            f"at {decision['decided_at']}{note}",
            markup=False,
        )
    checkpoints = view.extra["checkpoints"]
    if not checkpoints:
        console.print("  checkpoints: none (pruned, or the run never reached its first)")
        return
    table = Table(title=f"checkpoints ({len(checkpoints)}; `durakit fork` takes an id)", title_justify="left")
    table.add_column("checkpoint id", no_wrap=True)
    table.add_column("step")
    table.add_column("next")
    for checkpoint in checkpoints:
        table.add_row(checkpoint["checkpoint_id"], str(checkpoint["step"]), ", ".join(checkpoint["next"]))
    console.print(table)


def show_threads(page: ThreadPage, *, empty: str) -> None:
    views = page.threads
    if not views:
        console.print(empty if page.total == 0 else
                      f"No threads from --offset {page.offset:,}: {page.total:,} match in all.", markup=False)
        return
    table = Table()
    # Thread ids are copied into the next command: never shorten them.
    table.add_column("thread", no_wrap=True, min_width=max(len(view.thread_id) for view in views))
    for column in ("template", "status", "attempts"):
        table.add_column(column)
    table.add_column("updated (UTC)", no_wrap=True)
    table.add_column("next wake (UTC)", no_wrap=True)
    table.add_column("waiting for / error", overflow="fold")
    for view in views:
        status = view.status + (" (stale)" if view.stale else "") + (" (queued)" if view.queued and not view.retry_at else "")
        status += " (forked)" if view.superseded_by else ""
        status += f" (retry at {short_time(view.retry_at)})" if view.retry_at else ""
        note = (view.question.text if view.question else None) or view.error or ""
        table.add_row(view.thread_id, view.template, status, str(view.attempts), short_time(view.updated_at),
                      short_time(view.next_wake), plain(note))
    console.print(table)
    console.print(page_line(page), markup=False)


def page_line(page: ThreadPage) -> str:
    """How many of how many a listing shows, and how to see the rest."""
    shown, after = len(page.threads), page.offset + len(page.threads)
    line = f"showing {shown:,} of {page.total:,}" + (f" from --offset {page.offset:,}" if page.offset else "")
    return line + (f"; --offset {after} for more." if after < page.total else ".")


def show_timers(timers: list[dict[str, Any]]) -> None:
    if not timers:
        console.print("No timers are scheduled.")
        return
    table = Table()
    table.add_column("due (UTC)", no_wrap=True)
    table.add_column("thread", no_wrap=True, min_width=max(len(timer["thread_id"]) for timer in timers))
    for column in ("template", "timer", "node"):
        table.add_column(column)
    for timer in timers:
        due = short_time(timer["due_at"]) + (" (overdue)" if timer["overdue"] else "")
        table.add_row(due, timer["thread_id"], timer["template"], plain(timer["name"]), timer["node"] or "")
    console.print(table)


def show_stats(figures: dict[str, Any]) -> None:
    def percent(value: float | None) -> str:
        return "-" if value is None else f"{value * 100:.1f}%"

    table = Table(title="templates", title_justify="left")
    counts = ("threads", "completed", "sleeping", "waiting", "running", "failed", "retrying")
    for column in ("template", *counts, "completion rate"):
        table.add_column(column)
    for row in figures["templates"]:
        table.add_row(row["template"], *(str(row[key]) for key in counts), percent(row["completion_rate"]))
    console.print(table)
    table = Table(title="nodes", title_justify="left")
    for column in ("template", "node", "finished", "retries", "retry rate"):
        table.add_column(column)
    for row in figures["nodes"]:
        table.add_row(row["template"], row["node"], str(row["finished"]), str(row["retries"]), percent(row["retry_rate"]))
    console.print(table)
    queue = figures["queue"]
    console.print(f"queue: {queue['ready']} ready, {queue['scheduled']} scheduled (timers, retries), "
                  f"{queue['running']} running")
    retrying = figures["waiting_for_a_retry"]
    console.print(f"failed, waiting for an automatic retry: {retrying}"
                  + (f", the next at {figures['next_retry_at']}" if retrying else ""))
    oldest = figures["oldest_waiting_approval_seconds"]
    waiting = figures["waiting_for_a_person"]
    console.print(f"waiting for a person: {waiting}" + (f", the oldest for {oldest / 3600:.1f} h" if oldest else ""))


def show_prune(report: PruneReport) -> None:
    would = "would " if report.dry_run else ""
    console.print(
        f"{len(report.threads_trimmed)} completed thread(s) {would}keep only their latest checkpoints, "
        f"{len(report.threads_emptied)} {would}lose all of them: {report.checkpoints_removed} checkpoint(s) "
        f"{'would go' if report.dry_run else 'removed'} ({report.threads_examined} completed thread(s) examined)."
    )
    for thread_id in report.busy:
        console.print(f"skipped {thread_id}: another process holds it", markup=False)
    for thread_id in report.kept_whole:
        console.print(f"kept {thread_id} whole: it uses a MessageLog, whose values are rebuilt from its history",
                      markup=False)


def show_recovery(report: RecoveryReport) -> None:
    if not report.resumed and not report.busy and not report.errors:
        console.print("No thread needed recovering.")
    for view in report.resumed:
        console.print("recovered " + status_line(view))
    for thread_id in report.busy:
        console.print(f"skipped {thread_id}: another process took it first")
    for thread_id, error in report.errors.items():
        console.print(f"could not resume {thread_id}: {plain(error)}")
