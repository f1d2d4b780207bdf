"""The `durakit` command: a thin skin over `durakit.Runner`.

Exit codes: 0 done as asked (a thread left waiting counts); 2 bad input or usage;
3 unknown thread or template; 4 conflict (not waiting, already answered, busy);
5 database unreachable or schema behind; 1 anything else, a failed thread included.
"""

from __future__ import annotations

import getpass
import logging
import os
import sys
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from durakit.errors import DurakitError, InvalidInput, RunFailed
from durakit.record import Status

app = typer.Typer(
    help="Run customer-support agents as durable LangGraph workflows on PostgreSQL.\n\n"
    "Without DURAKIT_DATABASE_URL, durakit uses an embedded PostgreSQL under DURAKIT_HOME "
    "(~/.durakit). Start with `durakit demo`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
db_app = typer.Typer(help="Manage the database schema (alembic).", no_args_is_help=True)
app.add_typer(db_app, name="db")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of text.")]
ThreadArg = Annotated[str, typer.Argument(metavar="THREAD_ID", help="The thread's id, as `run` printed it.")]
# What `run` and `submit` take: a template and one request.
TemplateArg = Annotated[str, typer.Argument(metavar="TEMPLATE", help="Template name; `durakit templates` lists them.")]
InputOption = Annotated[str | None, typer.Option("--input", help="The request as a JSON object.")]
InputFileOption = Annotated[
    Path | None, typer.Option("--input-file", help="Read the JSON request from this file ('-' for stdin).")
]
NewThreadOption = Annotated[
    str | None,
    typer.Option("--thread-id", help="Id for the new thread. Default: derived from the request's business key, "
                 "so the same request twice reaches the same thread."),
]


def open_runner():  # -> durakit.runner.Runner, imported here so --help stays fast
    from durakit.runner import Runner

    return Runner.open()


def finish(view, as_json: bool) -> None:
    """Print a thread; exit 1 with a sentence if it ended `failed`."""
    from durakit import output

    if as_json:
        output.print_json(view.to_dict())
    else:
        output.show_thread(view)
    if view.status is Status.FAILED:
        then = f"fix the cause and run `durakit resume {view.thread_id}`."
        if view.retry_at:
            then = (f"a worker retries it at {view.retry_at} (automatic retry {view.auto_retries} of "
                    f"{view.retry_limit}), or `durakit resume {view.thread_id}` retries it now.")
        elif view.retries_exhausted:
            then = f"its {view.auto_retries} automatic retries are used up; fix the cause and run `durakit resume {view.thread_id}`."
        raise RunFailed(f"Thread {view.thread_id} failed at {view.error_node or 'start'} ({view.error}); {then}")


@app.command()
def run(
    template: TemplateArg,
    input_json: InputOption = None,
    input_file: InputFileOption = None,
    thread_id: NewThreadOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Start a thread of TEMPLATE for one request and run it until it finishes or waits for a person.

    Example: durakit run refund --input '{"order_id": "ORD-1", "amount": "25.00", "reason": "arrived broken"}'
    """
    raw = read_input(input_json, input_file)
    with open_runner() as runner:
        finish(runner.run(template, raw, thread_id=thread_id), as_json)


@app.command()
def submit(
    template: TemplateArg,
    input_json: InputOption = None,
    input_file: InputFileOption = None,
    thread_id: NewThreadOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Queue a thread of TEMPLATE for the workers and return at once with its id.

    A `durakit worker` runs it; answers to its questions (`durakit approve`) are queued
    for the workers too. The request is checked now: bad input queues nothing.

    Example: durakit submit refund --input '{"order_id": "ORD-1", "amount": "25.00", "reason": "arrived broken"}'
    """
    raw = read_input(input_json, input_file)
    with open_runner() as runner:
        finish(runner.submit(template, raw, thread_id=thread_id), as_json)


@app.command()
def worker(
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, max=256, help="Threads advanced at once by this worker.")
    ] = 4,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", min=1, max=65535, help="Serve Prometheus metrics on this port (/metrics)."),
    ] = None,
    poll_interval: Annotated[
        float, typer.Option("--poll-interval", min=0.05, max=60, help="Seconds between looks for timers falling due "
                            "(queued runs and answers wake the worker at once).")
    ] = 1.0,
    stalled_after: Annotated[
        float, typer.Option("--stalled-after", min=1, max=3600, help="Seconds of silence after which another "
                            "worker's jobs are taken over (workers beat every second).")
    ] = 5.0,
    burst: Annotated[
        bool, typer.Option("--burst", help="Work off the jobs that are ready now (due timers, queued runs, dead "
                           "runs), then exit: for cron, or a machine without a long-running worker.")
    ] = False,
) -> None:
    """Run queued threads, fire due timers and deadlines, and recover threads whose process died, until stopped.

    Start as many workers on as many machines as you like against one database: each
    thread is advanced by one of them at a time, and the jobs of a worker that dies are
    taken over by another. SIGTERM or Ctrl-C stops it cleanly: each run stops at its
    next step boundary and is queued for another worker. One line is printed per job.
    """
    from dataclasses import replace

    from durakit.runner import Runner
    from durakit.settings import KitSettings
    from durakit.worker import Worker, describe

    settings = KitSettings.from_env()
    # Each job in progress holds a connection of each pool at times: size them for it.
    settings = replace(settings, pool_max_size=max(settings.pool_max_size, concurrency + 1))
    with Runner.open(settings) as runner:
        print(f"durakit worker {runner.owner} on {runner.database.display}, concurrency {concurrency}"
              + (f", metrics on :{metrics_port}/metrics" if metrics_port else ""), flush=True)
        Worker(
            runner, concurrency=concurrency, metrics_port=metrics_port, poll_interval=poll_interval,
            stalled_after=stalled_after, burst=burst, on_job=lambda outcome: print(describe(outcome), flush=True),
            on_notice=lambda text: print(text, flush=True),
        ).run()
        print("durakit worker stopped.", flush=True)


@app.command()
def timers(as_json: JsonFlag = False) -> None:
    """List the timers still to fire, soonest first: reminders, follow-ups and answer deadlines."""
    from durakit import output

    with open_runner() as runner:
        scheduled = runner.list_timers()
    output.print_json({"timers": scheduled}) if as_json else output.show_timers(scheduled)


@app.command()
def stats(as_json: JsonFlag = False) -> None:
    """Show task completion rate per template and retry rate per node, the queue and the oldest waiting approval."""
    from durakit import output
    from durakit.stats import figures

    with open_runner() as runner:
        found = figures(runner.pool)
    output.print_json(found) if as_json else output.show_stats(found)


# The most a request may be, from --input or --input-file: real requests are a few KB, and
# reading stops here, so /dev/zero or a huge file costs a megabyte, not the machine's memory.
MAX_INPUT_BYTES = 1_000_000


def read_input(input_json: str | None, input_file: Path | None) -> str:
    if (input_json is None) == (input_file is None):
        raise InvalidInput("Give the request with exactly one of --input JSON or --input-file PATH.")
    if input_json is not None:
        if len(input_json) > MAX_INPUT_BYTES or len(input_json.encode("utf-8", "surrogatepass")) > MAX_INPUT_BYTES:
            raise too_large("--input")
        return input_json
    if str(input_file) == "-":
        if sys.stdin is None:
            raise InvalidInput("--input-file - reads the request from stdin, but stdin is closed.")
        return read_bounded(getattr(sys.stdin, "buffer", sys.stdin), "stdin")  # a text stream in tests
    try:
        with input_file.open("rb") as handle:
            return read_bounded(handle, f"the input file {input_file}")
    except OSError as exc:
        raise InvalidInput(f"Cannot read the input file {input_file} ({exc.__class__.__name__}).") from None


def read_bounded(stream, source: str) -> str:
    """`stream` as text, reading no more than one byte past MAX_INPUT_BYTES: a longer
    request is refused without reading the rest."""
    try:
        data = stream.read(MAX_INPUT_BYTES + 1)
    except (OSError, ValueError) as exc:  # ValueError: a stream closed under us
        raise InvalidInput(f"Cannot read the request from {source} ({exc.__class__.__name__}).") from None
    if len(data) > MAX_INPUT_BYTES:
        raise too_large(source)
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"The request from {source} is not UTF-8 text.") from None


def too_large(source: str) -> InvalidInput:
    return InvalidInput(f"The request from {source} is larger than {MAX_INPUT_BYTES:,} bytes, the most durakit reads.")


@app.command()
def resume(thread_id: ThreadArg, as_json: JsonFlag = False) -> None:
    """Continue a thread that failed or whose process died, from its last checkpoint.

    Side effects that already happened are not repeated: the ledger returns their recorded results.
    """
    with open_runner() as runner:
        finish(runner.resume(thread_id), as_json)


@app.command()
def approve(
    thread_id: ThreadArg,
    decision: Annotated[str, typer.Option("--decision", help="The answer, one of those the question allows (e.g. approve, reject).")],
    question: Annotated[
        str | None, typer.Option("--question", metavar="QUESTION_ID", help="The question answered, as the approval "
                                 "email or `durakit pending` names it: refused (exit 4) if another question is pending "
                                 "by now. Default: the question pending now.")
    ] = None,
    by: Annotated[str | None, typer.Option("--by", help="Who decides (default: your user name).")] = None,
    note: Annotated[str | None, typer.Option("--note", help="A note kept with the decision.")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="For a thread started with `submit`: run it on in this process instead of "
                           "queueing the run for a worker.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Answer the question a waiting thread asks, and run the thread on from there.

    With --question, the answer is for that question only: once its deadline has passed or
    another question is pending, it is refused and nothing is recorded. Without it, the
    question pending now is answered; the output says which (`answered` in --json).

    A thread started with `durakit submit` is run on by a worker: the answer is recorded,
    the run queued, and this returns at once (unless --wait).

    Example: durakit approve refund-T-1001 --question approval:1 --decision approve --by dana --note "loyal customer"
    """
    from durakit import output

    with open_runner() as runner:
        by = getpass.getuser() if by is None else by  # an explicit empty --by is refused, not replaced
        view = runner.approve(thread_id, decision, by=by, note=note, wait=wait, question=question)
    if not as_json:
        output.show_answered(view.extra["answered"])
    finish(view, as_json)


@app.command()
def status(thread_id: ThreadArg, as_json: JsonFlag = False) -> None:
    """Show where a thread stands, with each side effect and how often the outside system received and applied it."""
    from durakit import output

    with open_runner() as runner:
        view = runner.status(thread_id)
    output.print_json(view.to_dict()) if as_json else output.show_thread(view)


@app.command()
def history(thread_id: ThreadArg, as_json: JsonFlag = False) -> None:
    """Show a thread's event log, decisions and checkpoints."""
    from durakit import output

    with open_runner() as runner:
        view = runner.history(thread_id)
    output.print_json(view.to_dict()) if as_json else output.show_history(view)


# The default page is Runner.PAGE_SIZE (runner is imported only when a command runs).
LimitOption = Annotated[
    int, typer.Option("--limit", metavar="N", help="Show at most N threads (1 to 1000; default 100).")
]
OffsetOption = Annotated[
    int, typer.Option("--offset", metavar="N", help="Skip the first N threads, to see the next page.")
]


@app.command()
def threads(
    status_filter: Annotated[
        str | None, typer.Option("--status", help="Only threads in this status: running, waiting, completed or failed.")
    ] = None,
    template: Annotated[str | None, typer.Option("--template", help="Only threads of this template.")] = None,
    limit: LimitOption = 100,
    offset: OffsetOption = 0,
    as_json: JsonFlag = False,
) -> None:
    """List threads, newest first, a page at a time. `--status failed` is the dead-letter view."""
    with open_runner() as runner:
        page = runner.threads(status=status_filter, template=template, limit=limit, offset=offset)
    show_threads(page, as_json, empty="No threads match.")


@app.command()
def pending(limit: LimitOption = 100, offset: OffsetOption = 0, as_json: JsonFlag = False) -> None:
    """List threads waiting for a person, with the question each one asks, oldest first
    (those nearest their deadlines), a page at a time."""
    with open_runner() as runner:
        page = runner.pending(limit=limit, offset=offset)
    show_threads(page, as_json, empty="Nothing is waiting for a decision.")


def show_threads(page, as_json: bool, *, empty: str) -> None:
    from durakit import output

    if as_json:
        output.print_json(page.to_dict())
    else:
        output.show_threads(page, empty=empty)


@app.command()
def recover(as_json: JsonFlag = False) -> None:
    """Resume every running thread whose process died, including runs that died before their first checkpoint."""
    from durakit import output

    with open_runner() as runner:
        report = runner.recover()
    output.print_json(report.to_dict()) if as_json else output.show_recovery(report)
    failed = [view.thread_id for view in report.resumed if view.status is Status.FAILED] + list(report.errors)
    if failed:
        raise RunFailed(f"{len(failed)} thread(s) could not be completed: {', '.join(failed)}; see `durakit status`.")


@app.command()
def fork(
    thread_id: ThreadArg,
    to: Annotated[str, typer.Option("--to", metavar="NEW_ID", help="The new thread's id.")],
    checkpoint: Annotated[
        str | None,
        typer.Option("--checkpoint", metavar="CHECKPOINT_ID", help="Fork from this checkpoint (default: the latest)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Copy a thread into a new one from one of its checkpoints, to replay it from there.

    `durakit history THREAD_ID` lists the checkpoints and the step each starts; `durakit
    resume NEW_ID` runs the fork on from that step. Without --checkpoint the fork starts
    where the thread stands (a waiting one waits for its own answer). The fork inherits the
    ledger, so nothing the source did is done twice, and the source is superseded: only
    the fork goes on.
    """
    with open_runner() as runner:
        view = runner.fork(thread_id, to, checkpoint_id=checkpoint)
    finish(view, as_json)


AGE_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """`30d`, `12h`, `90m` or `2w` as a timedelta."""
    number, unit = text[:-1], text[-1:].lower()
    if unit not in AGE_UNITS or not (number.isascii() and number.isdigit()) or len(number) > 6 or int(number) == 0:
        raise InvalidInput(f"--older-than takes an age such as 30d, 12h, 90m or 2w, not {text!r}.")
    return timedelta(**{AGE_UNITS[unit]: int(number)})


@app.command()
def prune(
    keep: Annotated[
        int | None, typer.Option("--keep", metavar="N", help="Keep the last N checkpoints of each completed thread.")
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", metavar="AGE", help="Drop every checkpoint of threads completed more than AGE "
                     "ago (30d, 12h, 90m, 2w); their status, ledger, decisions and events stay."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go, and change nothing.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Give back the space completed threads take. Running, waiting and failed threads are never touched."""
    from durakit import output

    age = parse_age(older_than) if older_than is not None else None
    with open_runner() as runner:
        report = runner.prune(keep=keep, older_than=age, dry_run=dry_run)
    output.print_json(asdict(report)) if as_json else output.show_prune(report)


@app.command()
def keygen() -> None:
    """Print a new random key for DURAKIT_ENCRYPTION_KEY (32 bytes, base64)."""
    from durakit.encryption import generate_key

    print(generate_key())


@app.command()
def templates(as_json: JsonFlag = False) -> None:
    """List the templates, with the JSON schema of each one's input."""
    from durakit import output
    from durakit.graphs import TEMPLATES

    if as_json:
        output.print_json({"templates": [
            {"name": t.name, "description": t.description, "input_schema": t.request_model.model_json_schema()}
            for t in TEMPLATES.values()
        ]})
        return
    for t in TEMPLATES.values():
        output.console.print(f"[bold]{t.name}[/bold]: {t.description}")
        for name, info in t.request_model.model_fields.items():
            required = "required" if info.is_required() else "optional"
            output.console.print(f"  {name} ({required}): {info.description or ''}")


@app.command()
def demo() -> None:
    """Tell each template's story (refund, booking, cancellation-save, escalation), with a crash and recovery in each."""
    from durakit.demo import main as run_demo

    run_demo()


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply durakit's migrations (LangGraph's checkpoint tables included) to the database."""
    from durakit import db
    from durakit.settings import KitSettings

    database = db.locate(KitSettings.from_env())
    db.upgrade(database.url)
    print(f"The database at {database.display} is at schema revision {db.current_revision(database.url)} (current).")


@db_app.command("rewrap")
def db_rewrap() -> None:
    """Encrypt what was stored before DURAKIT_ENCRYPTION_KEY was set, and re-encrypt what
    DURAKIT_ENCRYPTION_PREVIOUS_KEYS wrote, with the current key."""
    from durakit import db
    from durakit.encryption import rewrap_database
    from durakit.settings import KitSettings

    changed = rewrap_database(db.locate(KitSettings.from_env()).url)
    print(f"Encrypted {sum(changed.values())} stored value(s) with the current key.")


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL (it keeps running between commands); its data stays."""
    from durakit import db
    from durakit.settings import KitSettings

    settings = KitSettings.from_env()
    if settings.database_url:
        raise InvalidInput("DURAKIT_DATABASE_URL is set: durakit does not manage that server.")
    stopped = db.stop_embedded(settings.home)
    print(f"Stopped the embedded PostgreSQL under {settings.home}." if stopped else "The embedded PostgreSQL was not running.")


MAX_MESSAGE = 1000


def fail(message: str, code: int) -> NoReturn:
    print(f"durakit: {one_printable_line(message)}", file=sys.stderr)
    raise SystemExit(code)


def one_printable_line(message: str) -> str:
    """The message as one line a terminal shows as written: control and invisible format
    characters (which may come from the input it quotes) are escaped, and it is kept short."""
    text = "".join(char if char.isprintable() else char.encode("unicode_escape").decode() for char in message)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def main(argv: list[str] | None = None) -> None:
    if not os.environ.get("DURAKIT_DEBUG"):
        # psycopg-pool logs each failed reconnect attempt while a run waits out a database
        # restart; the run's outcome is what the user needs, in one sentence.
        logging.getLogger("psycopg").addHandler(logging.NullHandler())
        logging.getLogger("psycopg").propagate = False
    try:
        app(args=argv, prog_name="durakit", standalone_mode=False)
    except DurakitError as exc:
        fail(str(exc), exc.exit_code)
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        fail("Interrupted.", 1)
    except typer.TyperException as exc:  # usage errors: unknown option, missing argument
        ctx = getattr(exc, "ctx", None)
        hint = f" See `{ctx.command_path} --help`." if ctx is not None else ""
        fail(f"{exc.format_message().rstrip('.')}.{hint}", getattr(exc, "exit_code", 2))
    except Exception as exc:
        if os.environ.get("DURAKIT_DEBUG"):
            raise
        from durakit.db import one_line

        if is_connection_loss(exc):
            fail(f"Lost the connection to the database ({one_line(exc)}); once it is back, run the command again "
                 "(a thread it left running is finished by `durakit recover`).", 5)
        fail(f"Unexpected error ({type(exc).__name__}: {one_line(exc)}); rerun with DURAKIT_DEBUG=1 for details.", 1)


def is_connection_loss(exc: BaseException) -> bool:
    import psycopg
    from psycopg_pool import PoolTimeout

    return isinstance(exc, (psycopg.OperationalError, PoolTimeout))


if __name__ == "__main__":
    main()
