"""The jobctl command line: the Typer app. It parses and documents every
command; the bodies are in `jobctl.commands`, shared with the fast path.

No SQL and no status rules here. stdout carries data only (ids, statuses,
JSON); messages and errors go to stderr as one line `jobctl: error: ...`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
import typer.core

from jobctl import commands, model
from jobctl.console import check_argv, error
from jobctl.model import JobctlError

EXIT_CODES_HELP = """
Exit codes: 0 ok; 1 the job failed (watch/wait) or verify found a difference;
2 usage (unknown option, unknown status word); 3 job not found;
4 transition not allowed, or a conflicting --id; 5 database unusable
(not a jobctl database, newer schema, read-only, full, or still locked),
or events before the cursor were pruned;
6 the job was cancelled (watch/wait); 124 timeout; 130 interrupted.
"""


class JobctlGroup(typer.core.TyperGroup):
    """Turns every error, ours or the parser's, into one line on stderr and its exit code,
    whether the app runs as the console script or under typer's CliRunner."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # `jobctl list | head -1`: the reader left early; not an error
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        from typer.exceptions import TyperException

        try:
            check_argv(sys.argv[1:] if args is None else list(args))
            rv = super().main(
                args=args,
                prog_name=prog_name or "jobctl",
                complete_var=complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            )
            code = rv if isinstance(rv, int) else 0
        except JobctlError as exc:
            code = error(exc)
        except TyperException as exc:
            text = " ".join(exc.format_message().split())
            sys.stderr.write(f"jobctl: error: {text} (see --help)\n")
            code = getattr(exc, "exit_code", model.EXIT_USAGE)
        if standalone_mode:
            sys.exit(code)
        return code


# typer 0.28 writes a required argument as `{NAME}` in the usage line; every
# argument here is required, so the plain `NAME` (as click and man pages write it).
_typer_metavar = typer.core.TyperArgument.make_metavar
typer.core.TyperArgument.make_metavar = lambda self, ctx, *, usage=False: _typer_metavar(self, ctx)  # type: ignore[method-assign]

app = typer.Typer(
    cls=JobctlGroup,
    name="jobctl",
    help="A job database for scripts and CI pipelines that fan work out into child jobs.",
    epilog=EXIT_CODES_HELP,
    add_completion=True,
    rich_markup_mode=None,  # plain click help: `NAME`, not `{name}` and `<str>`
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
status_app = typer.Typer(help="Set or get a job's status.", context_settings={"help_option_names": ["-h", "--help"]})
db_app = typer.Typer(help="The database in use.", context_settings={"help_option_names": ["-h", "--help"]})
policy_app = typer.Typer(
    help="A parent's failure policy: fail-fast, allowed failures, attempts.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(status_app, name="status")
app.add_typer(db_app, name="db")
output_app = typer.Typer(
    help="Small named outputs stored with a job.", context_settings={"help_option_names": ["-h", "--help"]}
)
app.add_typer(policy_app, name="policy")
app.add_typer(output_app, name="output")

# ------------------------------------------------------------- completion
# Called by the shell's completion only (`jobctl --install-completion`), never on a
# command's run: what they import costs the hot path nothing.
COMPLETE_LIMIT = 50  # job ids offered at a time


def complete_job(ctx: typer.Context, incomplete: str) -> list[str]:
    """Job ids that start with what is typed, from the database in use (at most COMPLETE_LIMIT)."""
    from jobctl.api import Jobctl

    try:
        with Jobctl(ctx.find_root().params.get("db"), create=False) as jc:
            return jc.ids_starting(incomplete, COMPLETE_LIMIT)
    except Exception:  # no database (yet), or an unusable one: nothing to offer
        return []


def complete_status(incomplete: str) -> list[str]:
    return [s for s in model.STATUSES if s.startswith(incomplete)]


def complete_job_or_status(ctx: typer.Context, incomplete: str) -> list[str]:
    """`status set JOB... STATUS`: ids, and the status words."""
    return complete_status(incomplete) + complete_job(ctx, incomplete)


def complete_format(incomplete: str) -> list[str]:
    from jobctl.report import FORMATS

    return [f for f in FORMATS if f.startswith(incomplete)]


def complete_duration(incomplete: str) -> list[str]:
    """`90` -> 90s, 90m, 90h, 90d; nothing typed -> a few common ones."""
    if incomplete.isdigit():
        return [incomplete + unit for unit in "smhd"]
    return [d for d in ("30s", "90s", "5m", "10m", "1h", "1d") if d.startswith(incomplete)]


JSON = Annotated[bool, typer.Option("--json", help="Print JSON (NDJSON for lists).")]
TIMEOUT = Annotated[
    float | None, typer.Option("--timeout", metavar="SECONDS", help="Give up after this long (exit 124).")
]
STRICT = Annotated[
    bool, typer.Option("--strict", help="A cancelled job, or any cancelled child, counts as a failure (exit 1).")
]
WAIT_FOR_CREATE = Annotated[
    bool,
    typer.Option("--wait-for-create", help="Wait for a job that does not exist yet (bounded by --timeout)."),
]
ALLOW_FAILURES = Annotated[
    str | None,
    typer.Option(
        "--allow-failures",
        metavar="N|P%",
        help="This many failed children (or this share of them, rounded down) still let it complete.",
    ),
]
MAX_ATTEMPTS = Annotated[
    int | None,
    typer.Option(
        "--max-attempts", metavar="N", help="How many times it may start (retry refuses more; default: no cap)."
    ),
]
AFTER = Annotated[
    list[str],
    typer.Option(
        "--after",
        metavar="JOB",
        autocompletion=complete_job,
        help="Wait, pending, until JOB has completed (cancelled if it fails or is cancelled); repeatable.",
    ),
]
AFTER_ANY = Annotated[
    list[str],
    typer.Option(
        "--after-any",
        metavar="JOB",
        autocompletion=complete_job,
        help="Wait, pending, until JOB has ended, whatever its outcome; repeatable.",
    ),
]
POLL_INTERVAL = Annotated[
    float, typer.Option("--poll-interval", metavar="SECONDS", help="Check this often even without a file notification.")
]


def done(code: int) -> None:
    """End a command with the body's exit code."""
    if code:
        raise typer.Exit(code)


def print_version(value: bool) -> None:
    if value:
        raise typer.Exit(commands.version())


@app.callback()
def main_options(
    ctx: typer.Context,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            metavar="PATH|URL",
            help="Database: a SQLite file, or a postgresql:// URL "
            "(default: $JOBCTL_DB, else "
            "$XDG_DATA_HOME/jobctl/jobctl.db, i.e. "
            "~/.local/share/jobctl/jobctl.db).",
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """A job database for scripts and CI pipelines that fan work out into child jobs."""
    ctx.obj = {"db": db}


@app.command()
def init(ctx: typer.Context) -> None:
    """Create (or migrate) the database now instead of on first use."""
    done(commands.init(ctx.obj["db"]))


@db_app.command("path")
def db_path(ctx: typer.Context, json: JSON = False) -> None:
    """Print the database in use (--db, $JOBCTL_DB or the default; a URL's password masked)."""
    done(commands.db_path(ctx.obj["db"], json=json))


@app.command()
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The job's name.")],
    type: Annotated[str | None, typer.Option("--type", metavar="TYPE", help="A type label, e.g. crawl.")] = None,
    id: Annotated[
        str | None,
        typer.Option(
            "--id",
            metavar="ID",
            help="Choose the id; rerunning with the same attributes is then a no-op (exit 4 if they differ).",
        ),
    ] = None,
    parent: Annotated[
        str | None,
        typer.Option("--parent", metavar="JOB", autocompletion=complete_job, help="Make it a child of this job."),
    ] = None,
    meta: Annotated[list[str], typer.Option("--meta", metavar="KEY=VALUE", help="Metadata, repeatable.")] = [],
    fail_fast: Annotated[
        bool,
        typer.Option(
            "--fail-fast", help="Its first failed child (beyond --allow-failures) fails it and cancels the rest."
        ),
    ] = False,
    allow_failures: ALLOW_FAILURES = None,
    max_attempts: MAX_ATTEMPTS = None,
    open: Annotated[
        bool,
        typer.Option(
            "--open",
            help="More children may come: it is not derived final until `jobctl close` (for fan-outs that grow).",
        ),
    ] = False,
    max_running: Annotated[
        int | None, typer.Option("--max-running", metavar="N", help="At most N of its children run at once.")
    ] = None,
    after: AFTER = [],
    after_any: AFTER_ANY = [],
) -> None:
    """Create a pending job and print its id alone: P=$(jobctl create "News Crawler")."""
    done(
        commands.create(
            ctx.obj["db"],
            name,
            type=type,
            id=id,
            parent=parent,
            meta=meta,
            fail_fast=fail_fast,
            allow_failures=allow_failures,
            max_attempts=max_attempts,
            open=open,
            max_running=max_running,
            after=after,
            after_any=after_any,
        )
    )


@app.command()
def spawn(
    ctx: typer.Context,
    parent: Annotated[str, typer.Argument(metavar="PARENT", help="The parent job.")],
    count: Annotated[int | None, typer.Option("--count", metavar="N", help="How many children.")] = None,
    name: Annotated[list[str], typer.Option("--name", metavar="NAME", help="A child's name, repeatable.")] = [],
    names_from: Annotated[
        str | None, typer.Option("--names-from", metavar="FILE|-", help="Child names, one per line.")
    ] = None,
    type: Annotated[str | None, typer.Option("--type", metavar="TYPE", help="The children's type.")] = None,
    max_attempts: Annotated[
        int | None,
        typer.Option(
            "--max-attempts", metavar="N", help="Each child may start N times (default: PARENT's cap, if any)."
        ),
    ] = None,
    after: AFTER = [],
    after_any: AFTER_ANY = [],
) -> None:
    """Create children of PARENT, pending, in one transaction; print their ids, one per line."""
    done(
        commands.spawn(
            ctx.obj["db"],
            parent,
            count=count,
            name=name,
            names_from=names_from,
            type=type,
            max_attempts=max_attempts,
            after=after,
            after_any=after_any,
        )
    )


@policy_app.command("set")
def policy_set(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(metavar="JOB", autocompletion=complete_job, help="The job (usually a parent).")],
    fail_fast: Annotated[
        bool | None,
        typer.Option(
            "--fail-fast/--no-fail-fast",
            help="Its first failed child (beyond --allow-failures) fails it and cancels the rest.",
            show_default=False,
        ),
    ] = None,
    allow_failures: Annotated[
        str | None,
        typer.Option(
            "--allow-failures",
            metavar="N|P%|none",
            help="This many failed children (or this share of them) still let it complete.",
        ),
    ] = None,
    max_attempts: Annotated[
        str | None, typer.Option("--max-attempts", metavar="N|none", help="How many times it may start.")
    ] = None,
    open: Annotated[
        bool | None,
        typer.Option(
            "--open/--closed",
            help="Open: more children may come, it is not derived final until closed (`jobctl close`).",
            show_default=False,
        ),
    ] = None,
    max_running: Annotated[
        str | None,
        typer.Option("--max-running", metavar="N|none", help="At most N of its children run at once."),
    ] = None,
) -> None:
    """Change a job's failure policy (the parts given), as an event; its status follows at once.

    Prints the policy now in force, e.g. `fail-fast, allow-failures 5%`.
    """
    done(
        commands.policy_set(
            ctx.obj["db"],
            job,
            fail_fast=fail_fast,
            allow_failures=allow_failures,
            max_attempts=max_attempts,
            open=open,
            max_running=max_running,
        )
    )


@output_app.command("set")
def output_set(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(metavar="JOB", help="The job.")],
    key: Annotated[str, typer.Argument(metavar="KEY", help="The output's name: letters, digits, _ and -.")],
    value: Annotated[str | None, typer.Argument(metavar="[VALUE]", help="Its value (or --json).")] = None,
    json: Annotated[bool, typer.Option("--json", help="Read the value from stdin, as JSON.")] = False,
) -> None:
    """Store a small named output with JOB (an `output` event); `jobctl outputs PARENT` gathers them."""
    done(commands.output_set(ctx.obj["db"], job, key, value, json=json))


@app.command("outputs")
def outputs(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(metavar="PARENT", help="The parent whose children's outputs to gather.")],
    json: Annotated[bool, typer.Option("--json", help="One JSON object: {child name: {key: value}}.")] = False,
) -> None:
    """The outputs of PARENT's children, by child name: `name<TAB>key<TAB>value` lines, or --json."""
    done(commands.outputs(ctx.obj["db"], job, json=json))


@app.command("close")
def close_(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(metavar="JOB", help="The open parent.")],
) -> None:
    """Close an open parent (create --open): no more children; its status is derived from theirs at once.

    Prints its status. The same as `policy set JOB --closed`.
    """
    done(commands.close(ctx.obj["db"], job))


@status_app.command("set")
def status_set(
    ctx: typer.Context,
    args: Annotated[
        list[str],
        typer.Argument(
            metavar="JOB... STATUS", autocompletion=complete_job_or_status, help="Job ids, then the new status."
        ),
    ],
    message: Annotated[
        str | None, typer.Option("--message", "-m", metavar="TEXT", help="Why; shown in the log.")
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Allow any transition, even out of a final status, and on a job with children."),
    ] = False,
    stdin: Annotated[bool, typer.Option("--stdin", help="Also read job ids from stdin.")] = False,
) -> None:
    """Set the status of one or more jobs, all or nothing, in one transaction.

    Statuses: pending, running, completed, failed, cancelled. Setting the
    status a job already has is a no-op (exit 0, no event).
    """
    done(commands.status_set(ctx.obj["db"], args, message=message, force=force, stdin=stdin))


@status_app.command("get")
def status_get(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(metavar="JOB", autocompletion=complete_job, help="The job id.")],
    json: JSON = False,
) -> None:
    """Print the job's status word."""
    done(commands.status_get(ctx.obj["db"], job, json=json))


@app.command()
def progress(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(metavar="JOB", autocompletion=complete_job, help="The job id.")],
    json: JSON = False,
) -> None:
    """Print the counts of the job's children: 66 pending, 1 running, 41 completed, 0 failed."""
    done(commands.progress(ctx.obj["db"], job, json=json))


@app.command()
def show(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(metavar="JOB", autocompletion=complete_job, help="The job id.")],
    json: JSON = False,
) -> None:
    """Show a job: its fields, metadata and progress."""
    done(commands.show(ctx.obj["db"], job, json=json))


@app.command("list")
def list_(
    ctx: typer.Context,
    parent: Annotated[
        str | None,
        typer.Option("--parent", metavar="JOB", autocompletion=complete_job, help="Only children of this job."),
    ] = None,
    all: Annotated[bool, typer.Option("--all", help="Every job, parents and children, oldest first.")] = False,
    status: Annotated[
        list[str],
        typer.Option(
            "--status", metavar="STATUS", autocompletion=complete_status, help="Only jobs with this status; repeatable."
        ),
    ] = [],
    type: Annotated[str | None, typer.Option("--type", metavar="TYPE", help="Only jobs of this type.")] = None,
    stale_after: Annotated[
        str | None,
        typer.Option(
            "--stale-after",
            metavar="DURATION",
            autocompletion=complete_duration,
            help="Only running jobs (at any depth) whose last heartbeat (or start) is older than this: 90s, 5m, 1h.",
        ),
    ] = None,
    json: JSON = False,
) -> None:
    """List the top-level jobs, newest first, with their progress (--all: every job).

    A table on a terminal; in a pipe id<TAB>status<TAB>name<TAB>progress lines
    (id<TAB>status<TAB>name with --all, --parent or --stale-after).
    """
    done(
        commands.list_(
            ctx.obj["db"], parent=parent, all=all, status=status, type=type, stale_after=stale_after, json=json
        )
    )


@app.command()
def tree(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(metavar="JOB", autocompletion=complete_job, help="The root of the tree.")],
    depth: Annotated[
        int | None, typer.Option("--depth", metavar="N", help="Only N levels below JOB (0: JOB alone).")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", metavar="N", help="At most N rows.")] = None,
    json: JSON = False,
) -> None:
    """Show the job and its descendants, depth-first: every node's status, every parent's progress."""
    done(commands.tree(ctx.obj["db"], job, depth=depth, limit=limit, json=json))


@app.command()
def log(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(metavar="JOB", autocompletion=complete_job, help="The job id.")],
    message: Annotated[str, typer.Argument(metavar="MESSAGE", help="The log line.")],
    level: Annotated[str, typer.Option("--level", metavar="LEVEL", help="info, warning or error.")] = "info",
) -> None:
    """Append a line to the job's log (watchers see it live)."""
    done(commands.log(ctx.obj["db"], job, message, level=level))


@app.command()
def logs(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(metavar="JOB", autocompletion=complete_job, help="The job id.")],
    children: Annotated[
        bool, typer.Option("--children", help="Include the children's changes, each with the progress after it.")
    ] = False,
    json: JSON = False,
) -> None:
    """Show the job's log: its status changes and log lines, oldest first."""
    done(commands.logs(ctx.obj["db"], job, children=children, json=json))


@app.command()
def events(
    ctx: typer.Context,
    job: Annotated[
        str | None,
        typer.Option("--job", metavar="JOB", autocompletion=complete_job, help="Only this job and its descendants."),
    ] = None,
    since: Annotated[int, typer.Option("--since", metavar="EVENT_ID", help="Only events after this id.")] = 0,
    limit: Annotated[int | None, typer.Option("--limit", metavar="N", help="At most this many.")] = None,
    json: JSON = False,
) -> None:
    """Print events in event-id order (the id is the cursor for --since)."""
    done(commands.events(ctx.obj["db"], job=job, since=since, limit=limit, json=json))


@app.command()
def cancel(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(metavar="JOB", autocompletion=complete_job, help="The job id.")],
    message: Annotated[str | None, typer.Option("--message", "-m", metavar="TEXT", help="Why.")] = None,
) -> None:
    """Cancel the job and every unfinished descendant; print the ids cancelled."""
    done(commands.cancel(ctx.obj["db"], job, message=message))


@app.command()
def retry(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(metavar="JOB", autocompletion=complete_job, help="The job id.")],
    failed_children: Annotated[
        bool, typer.Option("--failed-children", help="Retry only failed jobs below JOB.")
    ] = False,
) -> None:
    """Put a failed or cancelled job back to pending; print the ids retried.

    For a job with children, its failed or cancelled jobs below it are retried.
    """
    done(commands.retry(ctx.obj["db"], job, failed_children=failed_children))


@app.command()
def claim(ctx: typer.Context, parent: Annotated[str, typer.Argument(metavar="PARENT", help="The parent job.")]) -> None:
    """Take the oldest pending child of PARENT, set it running and print its id (exit 3 if none)."""
    done(commands.claim(ctx.obj["db"], parent))


@app.command()
def heartbeat(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(metavar="JOB", autocompletion=complete_job, help="The job id.")],
) -> None:
    """Record that the job's worker is alive (no event: not a status change)."""
    done(commands.heartbeat(ctx.obj["db"], job))


@app.command()
def reap(
    ctx: typer.Context,
    stale_after: Annotated[
        str,
        typer.Option(
            "--stale-after",
            metavar="DURATION",
            autocompletion=complete_duration,
            help="Heartbeat age that counts as dead: 90s, 5m, 1h.",
        ),
    ],
    to: Annotated[
        str, typer.Option("--to", metavar="STATUS", autocompletion=complete_status, help="failed or pending.")
    ] = "failed",
    parent: Annotated[
        str | None,
        typer.Option("--parent", metavar="JOB", autocompletion=complete_job, help="Only children of this job."),
    ] = None,
) -> None:
    """Move running jobs whose worker stopped beating to failed (or pending); print their ids."""
    done(commands.reap(ctx.obj["db"], stale_after, to=to, parent=parent))


@app.command()
def prune(
    ctx: typer.Context,
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar="DURATION",
            autocompletion=complete_duration,
            help="Remove trees whose last change is older than this: 30d, 12h.",
        ),
    ],
    status: Annotated[
        list[str],
        typer.Option(
            "--status",
            metavar="STATUS",
            autocompletion=complete_status,
            help="Only trees whose root is completed, failed or cancelled (default: any of them); repeatable.",
        ),
    ] = [],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would go; change nothing.")] = False,
    json: JSON = False,
) -> None:
    """Remove finished top-level trees (jobs, events, logs, outputs) older than --older-than; print their ids.

    A batch of jobs a transaction, so other writers keep working. A reader that
    resumes from an event id older than what was removed exits 5 saying
    `events before N were pruned`.
    """
    done(commands.prune(ctx.obj["db"], older_than, status=status, dry_run=dry_run, json=json))


@app.command()
def watch(
    ctx: typer.Context,
    job: Annotated[
        str, typer.Argument(metavar="JOB", autocompletion=complete_job, help="The job to watch (usually a parent).")
    ],
    exit_status: Annotated[
        bool, typer.Option("--exit-status", help="Exit 0 if the job completed, 1 if it failed, 6 if it was cancelled.")
    ] = False,
    timeout: TIMEOUT = None,
    json: Annotated[bool, typer.Option("--json", help="NDJSON: one object per line.")] = False,
    since: Annotated[
        int | None, typer.Option("--since", metavar="EVENT_ID", help="First replay the events after this id.")
    ] = None,
    from_start: Annotated[bool, typer.Option("--from-start", help="First replay all the job's events.")] = False,
    poll_interval: POLL_INTERVAL = 1.0,
    stale_after: Annotated[
        str | None,
        typer.Option(
            "--stale-after",
            metavar="DURATION",
            autocompletion=complete_duration,
            help="Mark running children whose last heartbeat (or start) is older than this: 90s, 5m.",
        ),
    ] = None,
    strict: STRICT = False,
    wait_for_create: WAIT_FOR_CREATE = False,
    report: Annotated[
        str | None,
        typer.Option(
            "--report",
            metavar="FORMAT",
            autocompletion=complete_format,
            help="When the watch ends, write `jobctl report --format FORMAT` (markdown: to $GITHUB_STEP_SUMMARY).",
        ),
    ] = None,
    report_output: Annotated[
        str | None, typer.Option("--report-output", metavar="FILE", help="Where --report writes (as report --output).")
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="In plain lines too, say how many earlier events there were.")
    ] = False,
) -> None:
    """Follow a job live until it ends: its progress and every event and log line below it.

    A live view on a terminal, plain lines in a pipe or CI log, NDJSON with
    --json. Exit 0 when the job ends (see --exit-status), 124 on --timeout,
    130 on Ctrl-C, 143 on SIGTERM, 129 on SIGHUP, 3 if the job does not exist.
    """
    done(
        commands.watch(
            ctx.obj["db"],
            job,
            exit_status=exit_status,
            timeout=timeout,
            json=json,
            since=since,
            from_start=from_start,
            poll_interval=poll_interval,
            stale_after=stale_after,
            strict=strict,
            wait_for_create=wait_for_create,
            report=report,
            report_output=report_output,
            verbose=verbose,
        )
    )


@app.command()
def wait(
    ctx: typer.Context,
    jobs: Annotated[
        list[str], typer.Argument(metavar="JOB...", autocompletion=complete_job, help="The jobs to wait for.")
    ],
    timeout: TIMEOUT = None,
    poll_interval: POLL_INTERVAL = 1.0,
    json: Annotated[
        bool, typer.Option("--json", help="One JSON object per job (its progress fields and the reason).")
    ] = False,
    strict: STRICT = False,
    wait_for_create: WAIT_FOR_CREATE = False,
) -> None:
    """Wait quietly until every job has ended; print one line per job.

    Exit 0 if all completed, 6 if any was cancelled, 1 if any failed,
    124 on timeout: the worst outcome wins (--strict: cancelled counts as failed).
    """
    done(
        commands.wait(
            ctx.obj["db"],
            jobs,
            timeout=timeout,
            poll_interval=poll_interval,
            json=json,
            strict=strict,
            wait_for_create=wait_for_create,
        )
    )


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def run(
    ctx: typer.Context,
    args: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[JOB] -- CMD [ARGS]...", help="The job to run (without --parent or --claim), then the command."
        ),
    ] = None,
    parent: Annotated[
        str | None,
        typer.Option(
            "--parent",
            metavar="JOB",
            autocompletion=complete_job,
            help="Create a child of JOB and run the command as it.",
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", metavar="NAME", help="The child's name (default: the command).")
    ] = None,
    id: Annotated[str | None, typer.Option("--id", metavar="ID", help="The child's id.")] = None,
    each: Annotated[
        bool, typer.Option("--each", help="One child per line of stdin, {} in the command replaced by the line.")
    ] = False,
    claim: Annotated[
        str | None,
        typer.Option(
            "--claim",
            metavar="JOB",
            autocompletion=complete_job,
            help="Be a worker: claim JOB's pending children, run each.",
        ),
    ] = None,
    jobs: Annotated[
        int | None, typer.Option("--jobs", metavar="N", help="Commands at once (default: the CPUs).")
    ] = None,
    heartbeat: Annotated[float, typer.Option("--heartbeat", metavar="SECONDS", help="Heartbeat this often.")] = 30.0,
    timeout: Annotated[
        str | None,
        typer.Option(
            "--timeout",
            metavar="DURATION",
            autocompletion=complete_duration,
            help="Stop the command after this long (exit 124).",
        ),
    ] = None,
    kill_after: Annotated[
        str,
        typer.Option(
            "--kill-after",
            metavar="DURATION",
            autocompletion=complete_duration,
            help="SIGKILL this long after SIGTERM.",
        ),
    ] = "10s",
    log_lines: Annotated[
        int, typer.Option("--log-lines", metavar="N", help="Output lines kept in the job's log (then the last N).")
    ] = 1000,
    output: Annotated[
        str | None, typer.Option("--output", metavar="lines", help="--each: print each child's output, prefixed.")
    ] = None,
    keep_order: Annotated[bool, typer.Option("--keep-order", help="--each: print output in input order.")] = False,
    json: Annotated[bool, typer.Option("--json", help="--each: the watch NDJSON.")] = False,
    retries: Annotated[
        int | None,
        typer.Option(
            "--retries",
            metavar="N",
            help="Re-run a failed command up to N times (default: as the job's --max-attempts allows).",
        ),
    ] = None,
    retry_delay: Annotated[
        str | None,
        typer.Option(
            "--retry-delay",
            metavar="DURATION",
            autocompletion=complete_duration,
            help="Wait this long before the first re-run, doubling each time: 5s.",
        ),
    ] = None,
    wait_for_more: Annotated[
        bool, typer.Option("--wait-for-more", help="--claim: keep waiting for children until JOB is final.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No stderr line for a job that failed, timed out or was cancelled.")
    ] = False,
    on_term: Annotated[
        str,
        typer.Option(
            "--on-term",
            metavar="ACTION",
            help="--claim: what SIGTERM does to the running children: requeue (back to pending, "
            "the attempt not counted) or cancel.",
        ),
    ] = "requeue",
    output_file: Annotated[
        str | None,
        typer.Option(
            "--output-file",
            metavar="FILE",
            help="Store the key=value lines the command writes to FILE ($JOBCTL_OUTPUT) as the job's outputs.",
        ),
    ] = None,
    after: AFTER = [],
    after_any: AFTER_ANY = [],
) -> None:
    """Run a command as a tracked job: its output stored, heartbeats sent, its outcome recorded.

    jobctl run JOB -- CMD ... runs CMD as the pending job JOB;
    jobctl run --parent P -- CMD ... creates a child of P first;
    jobctl run --parent P --each [--jobs N] -- CMD {} ... one child per stdin line;
    jobctl run --claim P [--jobs N] -- CMD ... a worker for P's pending children.
    Exits with the command's exit code (128+N if killed by signal N; 124 on
    --timeout; 127 command not found; 143 cancelled from elsewhere). With
    --retries (or a job's --max-attempts) a failed command runs again, each
    attempt one more `running` event, until it succeeds or no attempt is left.
    """
    done(
        commands.run(
            ctx.obj["db"],
            list(args or []),
            parent=parent,
            name=name,
            id=id,
            each=each,
            claim=claim,
            jobs=jobs,
            heartbeat=heartbeat,
            timeout=timeout,
            kill_after=kill_after,
            log_lines=log_lines,
            output=output,
            keep_order=keep_order,
            json=json,
            wait_for_more=wait_for_more,
            retries=retries,
            retry_delay=retry_delay,
            quiet=quiet,
            on_term=on_term,
            output_file=output_file,
            after=after,
            after_any=after_any,
        )
    )


@app.command()
def report(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(metavar="JOB", autocompletion=complete_job, help="The job to report on.")],
    format: Annotated[
        str,
        typer.Option(
            "--format", "-f", metavar="FORMAT", autocompletion=complete_format, help="markdown, junit, github or json."
        ),
    ] = "markdown",
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Write to FILE (replaced whole, or left as it was; - for stdout). Default: stdout; "
            "for markdown inside GitHub Actions, appended to $GITHUB_STEP_SUMMARY.",
        ),
    ] = None,
) -> None:
    """Report how the job went: its failed and cancelled children with their logs, and the slowest,
    as Markdown (a CI summary), JUnit XML, GitHub annotations or JSON."""
    done(commands.report(ctx.obj["db"], job, format, output))


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option("--host", metavar="HOST", help="Address to listen on; anything but loopback needs --token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="PORT", help="Port to listen on.")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            metavar="TOKEN",
            help="Require this token on every request: Authorization: Bearer TOKEN, or ?token=TOKEN"
            " (default: $JOBCTL_SERVE_TOKEN).",
        ),
    ] = None,
    show_token: Annotated[
        bool, typer.Option("--show-token", help="Put the token in the URL the start line prints (not by default).")
    ] = False,
) -> None:
    """Serve the database read-only to browsers and programs: a live page, a JSON API, an event stream.

    Needs the web extra: pip install 'jobctl-db[web]'. Ctrl-C stops it (exit 130).
    """
    from jobctl.serve.app import main as serve_main

    done(serve_main(ctx.obj["db"], host, port, token, show_token=show_token))


@app.command()
def top(
    ctx: typer.Context,
    recent: Annotated[
        str,
        typer.Option(
            "--recent",
            metavar="DURATION",
            autocompletion=complete_duration,
            help="Also show jobs that ended this recently.",
        ),
    ] = "10m",
    poll_interval: POLL_INTERVAL = 1.0,
) -> None:
    """A live table of the active top-level jobs (and those ended within --recent), on a terminal.

    Keys: q quits, the arrows select, Enter opens watch on the job (Ctrl-C comes back).
    In a pipe it is refused: use list, or watch for one job.
    """
    done(commands.top(ctx.obj["db"], recent=recent, poll_interval=poll_interval))


@app.command()
def demo(
    ctx: typer.Context,
    children: Annotated[int, typer.Option("--children", metavar="N", help="How many pages to crawl.")] = 108,
    workers: Annotated[int, typer.Option("--workers", metavar="N", help="Worker processes.")] = 4,
    fail_rate: Annotated[float, typer.Option("--fail-rate", metavar="SHARE", help="Share of pages that fail.")] = 0.05,
    speed: Annotated[float, typer.Option("--speed", metavar="FACTOR", help="2 runs twice as fast.")] = 1.0,
    db: Annotated[
        str | None,
        typer.Option("--db", metavar="PATH", help="Keep the demo's database here (default: a temporary file)."),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", metavar="N", help="Random seed, for a repeatable run.")] = None,
) -> None:
    """Watch a "News Crawler" job fan out to worker processes, live.

    Spawns the children, starts real worker subprocesses that claim pending
    children and move them through running to completed or failed, writing
    log lines as they go, and runs `watch` in the foreground until the end.
    """
    done(
        commands.demo(
            db or ctx.obj["db"], children=children, workers=workers, fail_rate=fail_rate, speed=speed, seed=seed
        )
    )


@app.command()
def verify(ctx: typer.Context, json: JSON = False) -> None:
    """Check the database: events replay to the jobs table, counts are right. Exit 1 if not.

    Replays the events from empty and compares every job's status and status
    timestamps, compares the kept child counts with a real count, and runs
    SQLite's integrity check (on PostgreSQL, the server keeps its own).
    """
    done(commands.verify(ctx.obj["db"], json=json))
