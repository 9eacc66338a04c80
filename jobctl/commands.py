"""One body per command. Both entries call these: the fast path
(`jobctl.fastpath`, for the calls scripts make in loops) and the Typer app
(`jobctl.cli`, which parses everything else and shows help). Nothing here
imports typer.

Each function takes the database (`db`: --db's value, or None) and the
command's parameters under the Typer command's own names, prints its result,
and returns the exit code. Errors are raised as JobctlError.
"""

from __future__ import annotations

import os
import sys
from contextlib import closing

TYPE_CHECKING = False

if TYPE_CHECKING:
    from jobctl.api import Jobctl

from jobctl import model
from jobctl.console import info, read_lines, read_stdin
from jobctl.model import UsageError


def _open(db: str | None, *, create: bool = False) -> Jobctl:
    """The database, opened for one command. Only the commands that can succeed
    on an empty database (init, create) pass create=True: for the others a
    mistyped path is an error, not a new empty database."""
    from jobctl.api import Jobctl

    return Jobctl(db, create=create)


def _print_lines(items) -> None:
    out = sys.stdout
    for item in items:
        out.write(f"{item}\n")


def _json(obj: object) -> None:
    from jobctl import render

    render.write_json(obj)


# ----------------------------------------------------------------- one-shot
def status_set(
    db: str | None, args: list[str], message: str | None = None, force: bool = False, stdin: bool = False
) -> int:
    *ids, status = args
    if not ids and not stdin and status not in model.STATUSES:  # `status set P.1`: the id, and no status
        raise UsageError(f"status set {status}: the status is missing (valid: {', '.join(model.STATUSES)})")
    model.check_status_word(status)
    other = next((i for i in ids if i in model.STATUSES), None)
    if other is not None:  # `status set X running completed`: not a job called "running"
        raise UsageError(
            f"only one status can be given ({other} and {status} are both status words;"
            " the last argument is the status)"
        )
    if stdin:
        ids += read_stdin().split()
    with _open(db) as jc:
        jc.set_status(ids, status, message=message, force=force)
    return 0


def status_get(db: str | None, job: str, json: bool = False) -> int:
    with _open(db) as jc:
        status = jc.status(job)
    _json({"job_id": job, "status": status}) if json else print(status)
    return 0


def log(db: str | None, job: str, message: str, level: str = "info") -> int:
    with _open(db) as jc:
        jc.log(job, message, level=level)
    return 0


def heartbeat(db: str | None, job: str) -> int:
    with _open(db) as jc:
        jc.heartbeat(job)
    return 0


def claim(db: str | None, parent: str) -> int:
    with _open(db) as jc:
        job_id = jc.claim(parent)
        due = jc.next_retry_at(parent) if job_id is None else None
        counts = jc.counts(parent) if job_id is None else {}
        full = job_id is None and model.at_limit(counts, jc.get(parent))
    if job_id is None:
        if full:
            raise model.NotFound(f"job {parent} runs as many children as its --max-running allows: none claimed")
        if due is not None:
            raise model.NotFound(f"job {parent} has no pending child ready: the next retry is due at {due}")
        if counts.get(model.PENDING):
            raise model.NotFound(f"job {parent} has no pending child ready: they wait on other jobs (--after)")
        raise model.NotFound(f"job {parent} has no pending child")
    print(job_id)
    return 0


def progress(db: str | None, job: str, json: bool = False) -> int:
    with _open(db) as jc:
        p = jc.progress(job)
    _json(p) if json else print(p["progress_text"])
    return 0


def parse_meta(items: list[str]) -> dict:
    meta: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"bad --meta {item!r}: use KEY=VALUE")
        if key.strip() in meta:
            raise UsageError(f"--meta {key.strip()!r} given twice")
        meta[key.strip()] = value
    return meta


def create(
    db: str | None,
    name: str,
    type: str | None = None,
    id: str | None = None,
    parent: str | None = None,
    meta: list[str] | None = None,
    fail_fast: bool = False,
    allow_failures: str | None = None,
    max_attempts: int | None = None,
    open: bool = False,
    max_running: int | None = None,
    after: list[str] | None = None,
    after_any: list[str] | None = None,
) -> int:
    meta_dict = parse_meta(meta or [])
    with _open(db, create=True) as jc:
        print(
            jc.create(
                name,
                type=type,
                parent=parent,
                id=id,
                meta=meta_dict,
                fail_fast=fail_fast,
                allow_failures=allow_failures,
                max_attempts=max_attempts,
                open=open,
                max_running=max_running,
                after=after or (),
                after_any=after_any or (),
            )
        )
    return 0


def spawn(
    db: str | None,
    parent: str,
    count: int | None = None,
    name: list[str] | None = None,
    names_from: str | None = None,
    type: str | None = None,
    max_attempts: int | None = None,
    after: list[str] | None = None,
    after_any: list[str] | None = None,
) -> int:
    if sum(x is not None and x != [] for x in (count, name, names_from)) != 1:
        raise UsageError("give exactly one of --count, --name or --names-from")
    names = list(name or []) or None
    if names_from is not None:
        names = read_lines(names_from, "--names-from")
    with _open(db) as jc:
        ids = jc.spawn(
            parent,
            count=count,
            names=names,
            type=type,
            max_attempts=max_attempts,
            after=after or (),
            after_any=after_any or (),
        )
    sys.stdout.write("\n".join(ids) + "\n")
    return 0


def events(db: str | None, job: str | None = None, since: int = 0, limit: int | None = None, json: bool = False) -> int:
    from jobctl import render

    with (
        _open(db) as jc,
        closing(jc.iter_events(job=job, since=since, limit=limit, as_json=json)) as rows,
    ):
        if json:  # the JSON text comes made by the database (render.event_json's shape)
            write = sys.stdout.write
            for e in rows:
                write(e["json"] + "\n")
            sys.stdout.flush()
        else:
            for e in rows:
                render.write_line(render.event_line(e))
    return 0


# The optional extras (pyproject.toml's optional-dependencies): the modules
# jobctl imports from each, with the distributions that may provide them.
EXTRAS: dict[str, dict[str, tuple[str, ...]]] = {
    "postgres": {"psycopg2": ("psycopg2-binary", "psycopg2")},
    "web": {"starlette": ("starlette",), "uvicorn": ("uvicorn",)},
}


def version() -> int:
    """jobctl's version, the Python running it, and each extra's modules with
    their versions, or `missing`: found on disk (find_spec, the installed
    metadata) without importing them."""
    from importlib import metadata
    from importlib.util import find_spec

    from jobctl import DISTRIBUTION, __version__

    def installed(dists: tuple[str, ...]) -> str:
        for dist in dists:
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                pass
        return "(version unknown)"

    print(f"jobctl {__version__}\nPython {sys.version.split()[0]}")
    for extra, modules in EXTRAS.items():
        if all(find_spec(m) is not None for m in modules):
            found = ", ".join(f"{m} {installed(dists)}" for m, dists in modules.items())
        else:
            found = f"missing (pip install '{DISTRIBUTION}[{extra}]')"
        print(f"{extra}: {found}")
    return 0


# ------------------------------------------------------------------- others
def init(db: str | None) -> int:
    with _open(db, create=True) as jc:
        info(f"database ready: {jc.name}")
    return 0


def db_path(db: str | None, json: bool = False) -> int:
    from jobctl.store import display_name, resolve_db_path

    name = display_name(resolve_db_path(db))
    _json({"path": name}) if json else print(name)
    return 0


def show(db: str | None, job: str, json: bool = False) -> int:
    from jobctl import render

    with _open(db) as jc:
        j = jc.get(job)
        j["ran_on"] = jc.ran_on(job)  # where `run` ran it: host, pid, CI job
    render.write_json(j) if json else render.job(j)
    return 0


def list_(
    db: str | None,
    parent: str | None = None,
    all: bool = False,
    status: list[str] | None = None,
    type: str | None = None,
    stale_after: str | None = None,
    json: bool = False,
) -> int:
    from jobctl import render

    if all and parent is not None:
        raise UsageError("give --all or --parent, not both")
    stale = model.parse_duration(stale_after) if stale_after is not None else None
    # The overview: top-level jobs, newest first. --all, --parent and --stale-after
    # (stale jobs are leaves, at any depth) list jobs oldest first, as they were created.
    overview = not all and parent is None and stale is None
    with _open(db) as jc:
        listing = jc.list(
            parent=parent,
            status=status or None,
            type=type,
            stale_after=stale,
            top_level=overview,
            newest_first=overview,
        )
        with closing(listing) as rows:
            render.write_ndjson(rows) if json else render.jobs(rows, overview=overview)
    return 0


def tree(db: str | None, job: str, depth: int | None = None, limit: int | None = None, json: bool = False) -> int:
    from jobctl import render

    with _open(db) as jc, closing(jc.tree(job, depth=depth, limit=limit)) as rows:
        render.write_ndjson(rows) if json else render.tree(rows)
    return 0


def logs(db: str | None, job: str, children: bool = False, json: bool = False) -> int:
    from jobctl import render

    with _open(db) as jc, closing(jc.iter_logs(job, children=children)) as lines:
        if json:
            render.write_ndjson(lines)
        else:
            for line in lines:
                render.write_line(f"{line['at']} [{line['level']}] {render.plain(line['text'])}")
    return 0


def cancel(db: str | None, job: str, message: str | None = None) -> int:
    with _open(db) as jc:
        _print_lines(jc.cancel(job, message=message))
    return 0


def retry(db: str | None, job: str, failed_children: bool = False) -> int:
    with _open(db) as jc:
        ids = jc.retry(job, failed_children=failed_children)
    if ids.skipped:
        n = len(ids.skipped)
        info(f"skipped {n} job{'s' if n != 1 else ''} that used all their attempts (--max-attempts)")
    elif not ids:
        info("nothing to retry")
    _print_lines(ids)
    return 0


def policy_set(
    db: str | None,
    job: str,
    fail_fast: bool | None = None,
    allow_failures: str | None = None,
    max_attempts: str | None = None,
    open: bool | None = None,
    max_running: str | None = None,
) -> int:
    """`policy set JOB`: change the parts of the policy given; print the policy."""
    given: dict = {"fail_fast": fail_fast, "open": open}
    for option, value, key in (
        ("--max-attempts", max_attempts, "max_attempts"),
        ("--max-running", max_running, "max_running"),
    ):
        if value is not None:
            given[key] = _count_or_none(option, value)
    if allow_failures is not None:
        given["allow_failures"] = allow_failures
    with _open(db) as jc:
        policy = jc.set_policy(job, **given)
    _print_policy(policy)
    return 0


def _count_or_none(option: str, value: str) -> int | None:
    word = value.strip().lower()
    if word in ("none", "unlimited"):
        return None
    if word.isascii() and word.isdigit():
        return int(word)
    raise UsageError(f"{option} takes a number or `none`, not {value!r}")


def _print_policy(policy: dict) -> None:
    text = model.policy_text(
        policy["fail_fast"], policy["allow_failures"], policy["max_attempts"], policy["open"], policy["max_running"]
    )
    print(text or "none")


def close(db: str | None, job: str) -> int:
    """`close JOB`: an open parent expects no more children; print its status, now derived."""
    with _open(db) as jc:
        jc.close_parent(job)
        print(jc.status(job))
    return 0


def reap(db: str | None, stale_after: str, to: str = "failed", parent: str | None = None) -> int:
    seconds = model.parse_duration(stale_after)
    with _open(db) as jc:
        _print_lines(jc.reap(seconds, to=to, parent=parent))
    return 0


def prune(
    db: str | None, older_than: str, status: list[str] | None = None, dry_run: bool = False, json: bool = False
) -> int:
    """`prune --older-than D`: remove old finished trees; print each root id as it goes
    (--json: one object at the end), the totals on stderr."""
    seconds = model.parse_duration(older_than)
    statuses = model.check_prune_statuses(status or ())
    roots: list[str] = []

    def on_tree(root: str, jobs: int, events: int) -> None:
        if json:
            roots.append(root)
        else:
            print(root, flush=True)

    with _open(db) as jc:
        done = jc.prune(seconds, statuses=statuses, dry_run=dry_run, on_tree=on_tree)
    if json:
        _json({"dry_run": dry_run, **done, "roots": roots})
    else:
        verb = "would remove" if dry_run else "removed"
        info(
            f"prune: {verb} {done['trees']:,} tree(s): {done['jobs']:,} job(s), {done['events']:,} event(s)"
            + (" (--dry-run: nothing changed)" if dry_run else "")
        )
    return 0


def _check_awaitable(job: str, wait_for_create: bool) -> None:
    """--wait-for-create waits for an id that can be created: not "" or another bad id."""
    if wait_for_create:
        from jobctl.model import check_id

        check_id(job)


def watch(
    db: str | None,
    job: str,
    exit_status: bool = False,
    timeout: float | None = None,
    json: bool = False,
    since: int | None = None,
    from_start: bool = False,
    poll_interval: float = 1.0,
    stale_after: str | None = None,
    strict: bool = False,
    wait_for_create: bool = False,
    report: str | None = None,
    report_output: str | None = None,
    verbose: bool = False,
) -> int:
    from jobctl import render
    from jobctl import watch as watching

    if since is not None and from_start:
        raise UsageError("give --since or --from-start, not both")
    if strict and not exit_status:
        raise UsageError("--strict goes with --exit-status")
    if report is not None:
        from jobctl.report import check_format

        check_format(report)
        to_summary = report == "markdown" and report_output is None and os.environ.get("GITHUB_STEP_SUMMARY")
        if json and report_output in (None, "-") and not to_summary:
            raise UsageError("--report with --json needs --report-output FILE: stdout is the NDJSON")
    elif report_output is not None:
        raise UsageError("--report-output goes with --report")
    stale = model.parse_duration(stale_after) if stale_after is not None else None
    _check_awaitable(job, wait_for_create)
    with _open(db, create=wait_for_create) as jc:
        sink: watching.Sink = (
            render.JsonWatch() if json else render.LiveWatch() if render.is_terminal() else render.PlainWatch(verbose)
        )
        code = watching.run_watch(
            jc,
            job,
            sink,
            since=0 if from_start else since,
            timeout=timeout,
            poll_interval=poll_interval,
            exit_status=exit_status,
            strict=strict,
            stale_after=stale,
            wait_for_create=wait_for_create,
        )
        if report is None or jc.find(job) is None:  # (a job never created has nothing to report)
            return code
    return _report_after(db, job, report, report_output, code)


def _report_after(db: str | None, job: str, format: str, output: str | None, code: int) -> int:
    """`watch --report`: the report, written when the watch has ended (however it
    ended); a report that cannot be written is one error line, and the watch's
    own exit status stays unless it was 0."""
    from jobctl.console import error
    from jobctl.model import JobctlError
    from jobctl.report import report_command

    try:
        report_command(db, job, format, output, os.environ)
    except JobctlError as exc:
        failed = error(exc)
        return code or failed
    return code


def wait(
    db: str | None,
    jobs: list[str],
    timeout: float | None = None,
    poll_interval: float = 1.0,
    json: bool = False,
    strict: bool = False,
    wait_for_create: bool = False,
) -> int:
    from jobctl import render
    from jobctl import watch as watching

    sink: watching.Sink = render.JsonWatch() if json else render.PlainWatch()
    for job in jobs:
        _check_awaitable(job, wait_for_create)
    with _open(db, create=wait_for_create) as jc:
        return watching.run_wait(
            jc,
            jobs,
            lambda job, progress, reason, failures: sink.end(job, progress, reason, None, failures),
            timeout=timeout,
            poll_interval=poll_interval,
            strict=strict,
            wait_for_create=wait_for_create,
        )


def demo(
    db: str | None,
    children: int = 108,
    workers: int = 4,
    fail_rate: float = 0.05,
    speed: float = 1.0,
    seed: int | None = None,
) -> int:
    from jobctl import demo as demo_module

    return demo_module.run(children=children, workers=workers, fail_rate=fail_rate, speed=speed, db=db, seed=seed)


def verify(db: str | None, json: bool = False) -> int:
    with _open(db) as jc:
        problems = jc.verify()
    if json:
        _json({"ok": not problems, "problems": problems})
    else:
        _print_lines(problems)
        info("verify: ok" if not problems else f"verify: {len(problems)} difference(s)")
    return 1 if problems else 0


def run(
    db: str | None,
    args: list[str],
    parent: str | None = None,
    name: str | None = None,
    id: str | None = None,
    each: bool = False,
    claim: str | None = None,
    jobs: int | None = None,
    heartbeat: float = 30.0,
    timeout: str | None = None,
    kill_after: str = "10s",
    log_lines: int = 1000,
    output: str | None = None,
    keep_order: bool = False,
    json: bool = False,
    wait_for_more: bool = False,
    retries: int | None = None,
    retry_delay: str | None = None,
    quiet: bool = False,
    on_term: str = "requeue",
    output_file: str | None = None,
    after: list[str] | None = None,
    after_any: list[str] | None = None,
) -> int:
    """`jobctl run`: JOB -- CMD, --parent P -- CMD, --parent P --each -- CMD {}, --claim P -- CMD."""
    from jobctl import run as running

    if claim is not None and (parent is not None or each):
        raise UsageError("give --claim P, or --parent P (with --each), not both")
    if each and parent is None:
        raise UsageError("--each goes with --parent P")
    if (name is not None or id is not None) and (parent is None or each):
        raise UsageError("--name and --id go with --parent P (one child)")
    if (after or after_any) and parent is None:
        raise UsageError("--after and --after-any go with --parent P (its new child, or each one with --each)")
    for flag, given in (
        ("--jobs", jobs is not None),
        ("--keep-order", keep_order),
        ("--output", output),
        ("--json", json),
    ):
        if given and not (each or claim is not None and flag == "--jobs"):
            raise UsageError(f"{flag} goes with --each" + (" or --claim" if flag == "--jobs" else ""))
    if output_file is not None and (each or claim is not None):
        raise UsageError("--output-file goes with one job (run JOB, or run --parent P), not --each or --claim")
    if output_file is not None:
        running.empty_output_file(output_file)  # (refused before anything is written)
    if wait_for_more and claim is None:
        raise UsageError("--wait-for-more goes with --claim")
    if on_term not in ("requeue", "cancel"):
        raise UsageError(f"--on-term takes requeue or cancel, not {on_term!r}")
    if on_term != "requeue" and claim is None:
        raise UsageError("--on-term goes with --claim")
    if output not in (None, "lines"):
        raise UsageError(f"--output takes `lines`, not {output!r}")
    if not 0 < heartbeat <= model.MAX_SECONDS:
        raise UsageError(f"--heartbeat must be more than 0 seconds, not {heartbeat}")
    if not 1 <= log_lines <= 10_000_000:
        raise UsageError(f"--log-lines must be 1 or more, not {log_lines}")
    if retries is not None and not 0 <= retries <= 1_000_000:
        raise UsageError(f"--retries must be from 0 to 1,000,000, not {retries}")
    options = running.Options(
        heartbeat=heartbeat,
        timeout=model.parse_duration(timeout) if timeout is not None else None,
        kill_after=model.parse_duration(kill_after),
        log_lines=log_lines,
        retries=retries,
        retry_delay=0.0 if retry_delay is None else model.parse_duration(retry_delay, zero=True),
        quiet=quiet,
        output_file=output_file,
    )
    jobs = jobs if jobs is not None else (os.cpu_count() or 1)
    if claim is not None:
        requeue = on_term == "requeue"
        return running.run_claim(db, claim, args, options, jobs=jobs, wait_for_more=wait_for_more, requeue=requeue)
    if each:
        from jobctl import render

        assert parent is not None
        running.check_command(args)
        sink = render.JsonWatch() if json else render.LiveWatch() if render.is_terminal() else render.PlainWatch()
        inputs = [line.rstrip("\r") for line in read_stdin().split("\n")]
        return running.run_each(
            db,
            parent,
            args,
            options,
            jobs=jobs,
            inputs=inputs,
            sink=sink,
            output_lines=output == "lines",
            keep_order=keep_order,
            after=after or (),
            after_any=after_any or (),
        )
    if parent is None:
        if not args:
            raise UsageError("give the job to run: jobctl run JOB -- CMD (or --parent P -- CMD)")
        job, *args = args
        return running.run_one(db, job, None, None, None, args, options)
    return running.run_one(db, None, parent, name, id, args, options, after=after or (), after_any=after_any or ())


def output_set(db: str | None, job: str, key: str, value: str | None = None, json: bool = False) -> int:
    """`output set JOB KEY VALUE` (or `--json`: a JSON value from stdin)."""
    import json as json_

    if json == (value is not None):
        raise UsageError("give the VALUE, or --json and the value as JSON on stdin")
    stored: object = value
    if json:
        try:
            stored = json_.loads(read_stdin())
        except ValueError as exc:
            raise UsageError(f"--json: stdin is not JSON ({exc})") from None
    with _open(db) as jc:
        jc.set_output(job, key, stored)
    return 0


def outputs(db: str | None, job: str, json: bool = False) -> int:
    """`outputs P`: the outputs of P's children, by child name."""
    import json as json_

    with _open(db, create=False) as jc:
        gathered = jc.outputs(job)
    if json:
        print(json_.dumps(gathered, ensure_ascii=False))
        return 0
    from jobctl.console import plain

    for name, values in gathered.items():
        for key, value in values.items():
            text = value if isinstance(value, str) else json_.dumps(value, ensure_ascii=False)
            print(f"{plain(name)}\t{key}\t{plain(text)}")
    return 0


def report(db: str | None, job: str, format: str = "markdown", output: str | None = None) -> int:
    """`jobctl report`: see jobctl.report."""
    from jobctl import report as reporting

    return reporting.report_command(db, job, format, output, os.environ)


def top(db: str | None, recent: str = "10m", poll_interval: float = 1.0) -> int:
    from jobctl import top as topping

    seconds = model.parse_duration(recent)
    model.check_seconds(poll_interval, "--poll-interval", zero=False)
    with _open(db) as jc:
        return topping.run_top(jc, recent=seconds, poll_interval=poll_interval)
