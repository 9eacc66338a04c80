"""`jobctl report`: how a job went, as Markdown (a GitHub step summary, a
Buildkite annotation, a merge-request comment), JUnit XML, GitHub workflow
commands or JSON.

What a report is about: the job's *units*, the jobs below it that have no
children of their own (for a parent of plain children: its children; a job
without children is its own single unit). A pipeline's stages are parents
whose status is derived; its shards are the units that pass, fail, log and
take time.

Streaming. Every format reads the tree once, depth-first, through
`Jobctl.tree()` (one read snapshot) and keeps only what it prints:

- markdown and github: counts by status, the MAX_LISTED (markdown) or
  ANNOTATIONS (github) failed or cancelled units that lead with the cause
  (failed before cancelled, the first to end first: _cause_first), kept to a
  bounded list as the walk goes, and the SLOWEST slowest in a heap; for a
  fail-fast job, the child that failed it; the text is built in memory, a
  bounded size.
- junit: every unit is a <testcase>. Counts go in the opening tags, so each
  parent's cases are spooled (in memory up to SPOOL_BYTES, then a temporary
  file) until the walk leaves that parent's subtree, failed and cancelled ones
  in a spool of their own with only their place (_cause_first) in memory, and
  the suites are spooled to a temporary file until the totals of <testsuites>
  are known (the suite of a fail-fast trigger in a file of its own, written
  first). Open spools: one per level of the tree.
- json: one object whose `children` list is spooled the same way (failed and
  cancelled first), with `stopped_by` for a fail-fast job.
- Every format leads with the cause: a fail-fast job's trigger, then failed
  units before cancelled ones, the first to end first (_cause_first).

A unit's own events (its failure message, log tail, last log line) are read
only for the units shown: the listed failures, every failed or cancelled
testcase, every JSON child. They are read in chunks, not one query per unit:
the walk's rows are held back EVENT_CHUNK at a time and the events of the
shown units among them read in one indexed query (_Tree.walk_units), so a
report of 100,000 children is a few hundred round trips, not 100,000, and
holds one chunk's rows and events at a time. The reads happen inside the
tree's read snapshot, so they must not open a read transaction of their own
(see _unit_events).

Text is data: names, messages and log lines are escaped for each format
(Markdown code spans and fenced blocks, HTML in <summary>, XML text and
attributes with the characters XML 1.0 cannot hold written as \\xNN, GitHub's
workflow-command escapes), never trusted to be plain.
"""

from __future__ import annotations

import heapq
import json
import os
import re
import sys
from collections import deque
from contextlib import closing, contextmanager

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterator, Mapping
    from typing import TextIO

    from jobctl.api import Jobctl

from jobctl.console import info, plain
from jobctl.model import (
    CANCELLED,
    COMPLETED,
    FAILED,
    LOG,
    PENDING,
    RUNNING,
    STATUS,
    STATUSES,
    UsageError,
    duration_text,
    job_seconds,
    now,
    policy_text,
    where_text,
)
from jobctl.progress import log_text, progress_dict, progress_text

FORMATS = ("markdown", "junit", "github", "json")

TAIL_LINES = 20  # log lines shown per failed or cancelled unit
MAX_LISTED = 50  # failed and cancelled units in the markdown table; "and N more" after
SLOWEST = 5
ANNOTATIONS = 10  # ::error (or ::warning) lines: GitHub shows 10 of each type per step and drops the rest
ANNOTATIONS_PER_JOB = 50  # ... and 50 in all per job: a report never writes more, its notice included
MD_CHARS = 200  # longest message or log line in markdown, in characters
XML_CHARS = 4000  # ... in junit
SUMMARY_BYTES = 900_000  # markdown stops adding log tails here: GitHub refuses a step summary over 1 MiB
SPOOL_BYTES = 1 << 20  # a suite's cases stay in memory up to this, then go to a temporary file
# Rows held back, and units whose events are read in one query: a round trip per
# chunk instead of per unit, one chunk's rows and events in memory. At most 998,
# the oldest SQLite's limit of variables in a statement.
EVENT_CHUNK = 500

BAD = frozenset({FAILED, CANCELLED})
ICON = {COMPLETED: "✅", FAILED: "❌", CANCELLED: "🚫", RUNNING: "⏳", PENDING: "⏳"}


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"unknown report format {fmt!r} (valid: {', '.join(FORMATS)})")
    return fmt


# ------------------------------------------------------------------ the walk
class _Tree:
    """The job and a depth-first walk of its tree, each row with the names of
    its ancestors (from the root of the whole tree) and whether it is a unit."""

    def __init__(self, jc: Jobctl, job_id: str):
        self.jc = jc
        self.job_id = job_id
        job = jc.get(job_id)  # NotFound before anything is written
        self.above: list[str] = []
        parent = job["parent_id"]
        while parent is not None:  # a report may start below a root
            p = jc.get(parent)
            self.above.insert(0, p["name"])
            parent = p["parent_id"]

    def walk(self) -> Generator[tuple[dict, list[str], bool], None, None]:
        """(row, ancestors' names, is a unit) for the job and every descendant,
        depth-first; the first row is the job itself (depth 0)."""
        with closing(self.jc.tree(self.job_id)) as rows:
            names: list[str] = []  # the names of the rows above the current one, by depth
            for row in rows:
                depth = row["depth"]
                del names[depth:]
                yield row, self.above + names, row["progress"] is None
                names.append(row["name"])

    def walk_units(
        self, wanted: Callable[[dict, bool], bool], *, tail_lines: int = TAIL_LINES
    ) -> Iterator[tuple[dict, list[str], bool, _Unit | None]]:
        """walk(), each row with its _Unit where `wanted(row, is_unit)` (asked
        once per row, in walk order), else None.

        The rows are held back EVENT_CHUNK at a time, and the events of the
        wanted ones among them read in one query. The last chunk is read when
        the last row has come, while the walk's snapshot is still open: that
        is when every child that the parents' counts announce has come. (Were
        the counts ever short, a chunk is only read sooner; were they over, the
        last chunk is read after the walk, outside its snapshot.)"""
        held: list[tuple[dict, list[str], bool, bool]] = []
        owed = 1  # the rows still to come that are known of: the job, then each parent's children
        with closing(self.walk()) as rows:
            for row, path, is_unit in rows:
                owed += (row["progress"]["total_children"] if row["progress"] else 0) - 1
                held.append((row, path, is_unit, wanted(row, is_unit)))
                if len(held) >= EVENT_CHUNK or owed <= 0:
                    yield from self._with_units(held, tail_lines)
                    held = []
        yield from self._with_units(held, tail_lines)

    def walk_then(self, last: Callable[[], None]) -> Iterator[tuple[dict, list[str], bool]]:
        """walk(), calling last() once the last row known of has been taken (as
        walk_units reads its last chunk), while the walk's snapshot is open."""
        owed, called = 1, False
        with closing(self.walk()) as rows:
            for row, path, is_unit in rows:
                owed += (row["progress"]["total_children"] if row["progress"] else 0) - 1
                yield row, path, is_unit
                if owed <= 0 and not called:
                    called = True
                    last()
        if not called:
            last()

    def _with_units(
        self, held: list[tuple[dict, list[str], bool, bool]], tail_lines: int
    ) -> Iterator[tuple[dict, list[str], bool, _Unit | None]]:
        events = _unit_events(self.jc, [row["id"] for row, _, _, want in held if want])
        for row, path, is_unit, want in held:
            yield row, path, is_unit, _unit(row, events[row["id"]], tail_lines=tail_lines) if want else None

    def shown(self, row: Mapping, path: list[str]) -> str:
        """A unit's name for people: its path below the job (`stage / shard 3`)."""
        return " / ".join([*path[len(self.above) + 1 :], row["name"]]) if row["depth"] else row["name"]


class _Unit:
    """What a report shows of one unit, beyond its row: from its own events."""

    __slots__ = ("message", "tail", "last_log")

    def __init__(self, message: str | None, tail: list[str], last_log: str | None):
        self.message = message  # the message of the change into its current status
        self.tail = tail  # its last TAIL_LINES log lines, as `jobctl logs` prints them
        self.last_log = last_log  # its last log line's text (kind log)

    def reason(self, status: str) -> str:
        """Why it is failed or cancelled: the change's message, else its last log line."""
        return self.message or self.last_log or status


_NONCHARACTERS = {0xFFFE: "\\ufffe", 0xFFFF: "\\uffff"}  # (plain escapes DEL and C1 already)


def _plain(text: str) -> str:
    """console.plain (control and invisible characters escaped: one line), and
    the non-characters U+FFFE and U+FFFF as well (not allowed in XML)."""
    return plain(text).translate(_NONCHARACTERS)


def _unit_events(jc: Jobctl, job_ids: list[str]) -> dict[str, list[dict]]:
    """Every event of some jobs (at most EVENT_CHUNK), by job, each job's in id
    order: one indexed query (events by job id), none for no jobs.

    This reads with Jobctl.events_of rather than Jobctl.logs or
    Jobctl.iter_events because it runs inside the read transaction of the
    Jobctl.tree() walk, and those open one of their own (a nested BEGIN is an
    error on SQLite and would end the walk's snapshot on PostgreSQL)."""
    by_job: dict[str, list[dict]] = {job_id: [] for job_id in job_ids}
    if job_ids:
        for e in jc.events_of(job_ids):
            by_job[e["job_id"]].append(e)
    return by_job


def _log_line(e: Mapping) -> str:
    """One event as a line of `jobctl logs JOB` (the job's own view), seconds precision."""
    at = f"{e['at'][:19]}Z"
    level = e.get("level") or "info"
    return f"{at} [{level}] {_plain(log_text(e, True, {}) or '')}"


def _unit(row: Mapping, events: list[dict], *, tail_lines: int = TAIL_LINES) -> _Unit:
    """What a report shows of a unit, from its events (in id order)."""
    message, last_log = None, None
    tail: deque[dict] = deque(maxlen=tail_lines)
    for e in events:
        tail.append(e)
        if e["kind"] == LOG:
            last_log = e["message"]
        elif e["kind"] == STATUS and e["new_status"] == row["status"]:
            message = e["message"]
    return _Unit(message, [_log_line(e) for e in tail], last_log)


def _seconds(row: Mapping) -> float | None:
    """How long a unit ran: from started_at to completed_at (None unless both are set)."""
    return job_seconds(row)


def _human(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    return duration_text(seconds)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"


# ---------------------------------------------------------------- escaping
_PUNCT = str.maketrans({c: "\\" + c for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"})


def md_text(text: str) -> str:
    """Inline Markdown that shows `text` literally: control characters escaped,
    every ASCII punctuation character backslash-escaped (CommonMark renders
    any of them after a backslash as itself)."""
    return _plain(text).translate(_PUNCT)


def md_code(text: str, *, cell: bool = True) -> str:
    """`text` as a Markdown code span: shown literally (no emphasis, links,
    HTML or mentions). The fence is longer than any run of backticks in it,
    padded with a space each side (which CommonMark strips); in a table cell
    a `|` is escaped, which GFM undoes inside code spans too."""
    t = _plain(text)
    fence = "`" * (max((len(m) for m in re.findall("`+", t)), default=0) + 1)
    if cell:
        t = t.replace("|", "\\|")
    return f"{fence} {t} {fence}"


def md_fenced(lines: list[str]) -> str:
    """A fenced code block that no line can close early."""
    body = "\n".join(lines)
    fence = "`" * max(3, max((len(m) for m in re.findall("`+", body)), default=0) + 1)
    return f"{fence}text\n{body}\n{fence}"


def html_text(text: str) -> str:
    """Text inside an HTML block (the <summary> line): control characters and
    the HTML metacharacters escaped; no Markdown is parsed there."""
    return (
        _plain(text)
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#39;")
    )


# XML 1.0 allows tab, newline and carriage return, and nothing else below 0x20;
# nor U+FFFE, U+FFFF or lone surrogates. They are written as \xNN (\uNNNN) text.
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_XML_TEXT = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_XML_ATTR = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\r": "&#13;", "\n": "&#10;", "\t": "&#9;"}
)


def _xml_chars(text: str) -> str:
    def repl(m: re.Match) -> str:
        c = ord(m.group())
        return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"

    return _XML_BAD.sub(repl, text)


def xml_text(text: str) -> str:
    """Character data: `]]>` cannot end anything, since `>` is escaped as well."""
    return _xml_chars(text).translate(_XML_TEXT)


def xml_attr(text: str) -> str:
    """An attribute value in double quotes; newlines and tabs survive as character references."""
    return _xml_chars(text).translate(_XML_ATTR)


_GH_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F] if c not in (0x09, 0x0A, 0x0D)}
_GH_DATA = str.maketrans({**_GH_CONTROL, ord("%"): "%25", ord("\r"): "%0D", ord("\n"): "%0A"})
_GH_PROPERTY = str.maketrans(
    {**_GH_CONTROL, ord("%"): "%25", ord("\r"): "%0D", ord("\n"): "%0A", ord(":"): "%3A", ord(","): "%2C"}
)


def gh_data(text: str) -> str:
    """A workflow command's message: `%`, CR and LF escaped as GitHub's runner
    unescapes them (so no text can start a command line of its own); other
    control characters but tab as \\xNN."""
    return text.translate(_GH_DATA)


def gh_property(text: str) -> str:
    """A workflow command's property value (title=...): also `:` and `,`."""
    return text.translate(_GH_PROPERTY)


# -------------------------------------------------------- markdown, github
class _Listed:
    __slots__ = ("row", "shown", "seconds", "unit")

    def __init__(self, row: dict, shown: str, seconds: float | None, unit: _Unit):
        self.row, self.shown, self.seconds, self.unit = row, shown, seconds, unit


def _cause_first(status: str, completed_at: str | None, n: int, trigger: bool = False) -> tuple:
    """The order every format lists failures in: the child that failed a fail-fast
    job, then failed before cancelled, and among each the first to end first
    (then the walk's order)."""
    return (not trigger, status != FAILED, completed_at or "~", n)


def fail_fast_trigger(events: list[dict]) -> str | None:
    """The child whose failure failed a fail-fast job (its status event's message
    is model.fail_fast_message), from the job's own events; None if it failed otherwise."""
    last = next((e for e in reversed(events) if e["kind"] == STATUS), None)
    message = (last or {}).get("message") or ""
    if last is None or last["new_status"] != FAILED or not message.startswith("fail-fast: "):
        return None
    return message[len("fail-fast: ") :].rsplit(" failed", 1)[0]


class _Summary:
    """One pass over the tree keeping only what a summary shows: the counts, the
    slowest, and the `cap` units with one of `statuses` that lead with the cause
    (_cause_first), whose events are read in one query as the walk ends; for a
    job failed by fail-fast, the child that triggered it."""

    def __init__(self, tree: _Tree, statuses: frozenset[str], cap: int, *, each: bool = False):
        """`each`: the first `cap` of each of `statuses` (github: a cap per annotation type)."""
        self.counts = dict.fromkeys(STATUSES, 0)  # the units' statuses
        self.nested = False  # some unit is not a direct child
        self.listed: list[_Listed] = []  # the `cap` units with one of `statuses` that come first
        self.matching = 0  # how many units have one of `statuses`
        self.by_status = dict.fromkeys(statuses, 0)  # ... of each
        self.trigger: _Listed | None = None  # fail-fast: the child that failed the job
        slowest: list[tuple[float, int, dict, str]] = []  # a min-heap of the SLOWEST longest
        top: dict | None = None
        picked: list[tuple[tuple, dict, str, float | None]] = []  # candidates, trimmed to `cap` now and then
        trigger: list = [None, None]  # its id, then (row, shown) when the walk meets it

        def trim() -> None:  # the first `cap` (of each status, with `each`) in _cause_first order
            picked.sort(key=lambda c: c[0])
            if not each:
                del picked[cap:]
                return
            seen = dict.fromkeys(statuses, 0)
            kept = []
            for c in picked:
                seen[c[1]["status"]] += 1
                if seen[c[1]["status"]] <= cap:
                    kept.append(c)
            picked[:] = kept

        def last() -> None:  # inside the walk's snapshot: the listed units' events, one query
            trim()
            ids = [row["id"] for _, row, _, _ in picked]
            found = trigger[1]
            events = _unit_events(tree.jc, ids + ([found[0]["id"]] if found and found[0]["id"] not in ids else []))
            self.listed = [_Listed(row, shown, sec, _unit(row, events[row["id"]])) for _, row, shown, sec in picked]
            if found is not None:
                row, shown = found
                self.trigger = _Listed(row, shown, _seconds(row), _unit(row, events[row["id"]]))

        for n, (row, path, is_unit) in enumerate(tree.walk_then(last)):
            if top is None:
                top = row
                if row["status"] == FAILED and (row.get("policy") or {}).get("fail_fast"):
                    trigger[0] = fail_fast_trigger(_unit_events(tree.jc, [row["id"]])[row["id"]])
            if trigger[0] is not None and row["id"] == trigger[0]:
                trigger[1] = (row, tree.shown(row, path))
            if not is_unit:
                continue
            status = row["status"]
            self.counts[status] += 1
            self.nested = self.nested or row["depth"] > 1
            seconds = _seconds(row)
            if seconds is not None and (len(slowest) < SLOWEST or seconds > slowest[0][0]):
                item = (seconds, -n, {k: row[k] for k in ("id", "status")}, tree.shown(row, path))
                if len(slowest) < SLOWEST:
                    heapq.heappush(slowest, item)
                else:
                    heapq.heapreplace(slowest, item)
            if status in statuses:
                self.matching += 1
                self.by_status[status] += 1
                first = _cause_first(status, row["completed_at"], n, row["id"] == trigger[0])
                picked.append((first, row, tree.shown(row, path), seconds))
                if len(picked) > 2 * cap * len(statuses):  # (memory stays bounded: only the first can be listed)
                    trim()
        assert top is not None  # tree() yields the job first, or raises NotFound
        self.top = top
        self.slowest = sorted(slowest, reverse=True)


def _took(top: Mapping) -> str:
    """How long the job took, or has run so far."""
    if top["started_at"] and not top["completed_at"]:
        return f"{_human(job_seconds(top, now()))} so far"
    return _human(_seconds(top))


def markdown(tree: _Tree) -> str:
    s = _Summary(tree, BAD, MAX_LISTED)
    top = s.top
    took = _took(top)
    progress = top["progress"]["progress_text"] if top["progress"] else "no children"
    out = [
        f"## {ICON.get(top['status'], '')} {md_text(top['name'])}",
        "",
        "| job | status | duration | children |",
        "|---|---|---|---|",
        f"| {md_code(top['id'])} | {top['status']} | {took} | {progress} |",
        "",
    ]
    if s.nested:
        total = sum(s.counts.values())
        out += [f"Below it, {total} jobs without children of their own: {progress_text(s.counts)}.", ""]
    policy = top.get("policy") or {}
    rule = policy_text(policy.get("fail_fast", False), policy.get("allow_failures"), policy.get("max_attempts"))
    if rule:  # why the status is what it is: the failure policy, and whether the allowance was needed
        used = f"; {policy['allowed_failures']} allowed" if policy.get("allow_failures") else ""
        used += ", used" if policy.get("allowance_used") else ""
        out += [f"Policy: {rule}{used}.", ""]
    if s.trigger is not None:  # a fail-fast stop leads with what stopped it
        t = s.trigger
        because = f": {md_code(_cut(t.unit.message, MD_CHARS), cell=False)}" if t.unit.message else ""
        out += [
            f"**Stopped by fail-fast:** {md_code(_cut(t.shown, MD_CHARS), cell=False)}"
            f" ({md_code(t.row['id'], cell=False)}) {t.row['status']}{because}",
            "",
            md_fenced([_cut(line, MD_CHARS) for line in t.unit.tail]),
            "",
        ]
    bad = [st for st in (FAILED, CANCELLED) if s.counts[st]]
    if not s.matching:
        out += ["No failed or cancelled jobs.", ""]
    else:
        out += [
            f"### {' and '.join(bad).capitalize()}: {s.matching}",
            "",
            "| # | job | id | status | duration | message |",
            "|--:|---|---|---|---|---|",
        ]
        for i, item in enumerate(s.listed, 1):
            why = item.unit.message or item.unit.last_log  # the change's message, else the last log line
            cell = md_code(_cut(why, MD_CHARS)) if why else "-"
            out.append(
                f"| {i} | {md_code(_cut(item.shown, MD_CHARS))} | {md_code(item.row['id'])} | {item.row['status']}"
                f" | {_human(item.seconds)} | {cell} |"
            )
        out.append("")
        if s.matching > len(s.listed):
            out += [f"…and {s.matching - len(s.listed)} more (the first {len(s.listed)} are listed).", ""]
        size = sum(len(line.encode()) + 1 for line in out)
        for i, item in enumerate(s.listed, 1):
            summary = f"{i}. {_cut(item.shown, MD_CHARS)} ({item.row['id']}): {item.row['status']}"
            if item.unit.message:
                summary += f": {_cut(item.unit.message, MD_CHARS)}"
            ran_on = tree.jc.ran_on(item.row["id"])  # (at most MAX_LISTED reads, after the walk)
            if ran_on:
                summary += f" (ran on {_cut(where_text(ran_on), MD_CHARS)})"
            block = [
                f"<details><summary>{html_text(summary)}</summary>",
                "",
                md_fenced([_cut(line, MD_CHARS) for line in item.unit.tail]),
                "",
                "</details>",
                "",
            ]
            grown = sum(len(line.encode()) + 1 for line in block)
            if size + grown > SUMMARY_BYTES:
                out += [f"(The log tails from {i} on are left out: a step summary holds at most 1 MiB.)", ""]
                break
            out += block
            size += grown
    if s.slowest:
        out += ["### Slowest", "", "| job | id | status | duration |", "|---|---|---|---|"]
        for seconds, _, row, shown in s.slowest:
            out.append(
                f"| {md_code(_cut(shown, MD_CHARS))} | {md_code(row['id'])} | {row['status']} | {_human(seconds)} |"
            )
        out.append("")
    return "\n".join(out)


def github(tree: _Tree) -> str:
    """Workflow commands: an ::error per failed unit and a ::warning per cancelled
    one, the first ANNOTATIONS of each (cause first: a fail-fast job's trigger
    leads, with its log tail), never more than ANNOTATIONS_PER_JOB lines in all;
    one ::notice with the job's progress sums up the rest."""
    s = _Summary(tree, BAD, ANNOTATIONS, each=True)
    top = s.top
    room = ANNOTATIONS_PER_JOB - 1  # (the notice)
    lines = []
    shown = dict.fromkeys(BAD, 0)
    for item in s.listed:
        if not room:
            break
        status = item.row["status"]
        title = f"{item.shown} ({item.row['id']})"
        message = item.unit.reason(status)
        if s.trigger is not None and item.row["id"] == s.trigger.row["id"]:
            title = f"stopped by fail-fast: {title}"
            message = "\n".join([message, "", *item.unit.tail])
        kind = "error" if status == FAILED else "warning"
        lines.append(f"::{kind} title={gh_property(title)}::{gh_data(message)}")
        shown[status] += 1
        room -= 1
    took = _took(top)
    text = f"{top['name']} ({top['id']}) {top['status']}, {took}"
    if top["progress"]:
        text += f" | {top['progress']['progress_text']}"
    if s.nested:
        text += f" | below it, {sum(s.counts.values())} jobs without children: {progress_text(s.counts)}"
    for status in (FAILED, CANCELLED):
        if s.by_status[status] > shown[status]:
            text += f" | {s.by_status[status]} {status}: the first {shown[status]} are annotated"
    title = f"jobctl report: {top['name']}"
    lines.append(f"::notice title={gh_property(title)}::{gh_data(text)}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------- junit, json
class _CauseFirstSpool:
    """Pieces of text written out failed and cancelled units first, in _cause_first
    order, then the others in the order they came: spooled (in memory up to
    SPOOL_BYTES, then a temporary file), with only a (key, offset, length) kept
    in memory for each failed or cancelled one."""

    def __init__(self):
        import tempfile

        self.bad = tempfile.SpooledTemporaryFile(SPOOL_BYTES, mode="w+b")
        self.rest = tempfile.SpooledTemporaryFile(SPOOL_BYTES, mode="w+", encoding="utf-8", newline="")
        self.index: list[tuple[tuple, int, int]] = []

    def add(self, text: str, key: tuple | None) -> None:
        """`text`, in the place of `key` (_cause_first), or after them all (None)."""
        if key is None:
            self.rest.write(text)
            return
        data = text.encode("utf-8", "surrogatepass")
        self.index.append((key, self.bad.tell(), len(data)))
        self.bad.write(data)

    def pieces(self) -> Iterator[str]:
        self.index.sort()
        for _, offset, size in self.index:
            self.bad.seek(offset)
            yield self.bad.read(size).decode("utf-8", "surrogatepass")
        self.rest.seek(0)
        while chunk := self.rest.read(1 << 16):
            yield chunk

    def close(self) -> None:
        self.bad.close()
        self.rest.close()


def _lead_key(row: Mapping, n: int, trigger: str | None) -> tuple | None:
    """Where a unit goes in a junit suite or json's children: failed and cancelled
    ones cause first (_cause_first), the others after them (None)."""
    if row["status"] not in BAD:
        return None
    return _cause_first(row["status"], row["completed_at"], n, row["id"] == trigger)


def _trigger_of(tree: _Tree, top: Mapping) -> str | None:
    """The child that failed a fail-fast job (None if it did not fail so); inside the walk."""
    if top["status"] != FAILED or not (top.get("policy") or {}).get("fail_fast"):
        return None
    return fail_fast_trigger(_unit_events(tree.jc, [top["id"]])[top["id"]])


# -------------------------------------------------------------------- junit
class _Suite:
    """The testcases of one parent's units, spooled until its subtree is over:
    failed and cancelled ones first, the first to fail first."""

    def __init__(self, depth: int, job_id: str, path: list[str]):
        self.depth, self.job_id, self.name = depth, job_id, ".".join(path)
        self.tests = self.failures = self.skipped = 0
        self.time = 0.0
        self.cases = _CauseFirstSpool()
        self.has_trigger = False

    def write(self, out: TextIO) -> None:
        out.write(
            f'  <testsuite name="{xml_attr(self.name)}" tests="{self.tests}" failures="{self.failures}"'
            f' errors="0" skipped="{self.skipped}" time="{self.time:.3f}">\n'
            f'    <properties><property name="jobctl.job" value="{xml_attr(self.job_id)}"/></properties>\n'
        )
        for piece in self.cases.pieces():
            out.write(piece)
        self.cases.close()
        out.write("  </testsuite>\n")


def _testcase(row: Mapping, unit: _Unit | None, classname: str, seconds: float | None) -> str:
    """A unit's <testcase>; `unit` is there for a failed or cancelled one."""
    head = f'    <testcase name="{xml_attr(row["name"])}" classname="{xml_attr(classname)}" time="{seconds or 0:.3f}"'
    status = row["status"]
    if status == COMPLETED:
        return head + "/>\n"
    if status in (PENDING, RUNNING):
        return f'{head}>\n      <skipped message="not finished: {status}"/>\n    </testcase>\n'
    assert unit is not None
    tail = xml_text("\n".join(_cut(line, XML_CHARS) for line in unit.tail))
    reason = xml_attr(_cut(unit.reason(status), XML_CHARS))
    if status == FAILED:
        result = f'      <failure message="{reason}" type="failed">{tail}</failure>\n'
    else:
        result = f'      <skipped message="cancelled: {reason}"/>\n'
    return f"{head}>\n{result}      <system-out>{tail}</system-out>\n    </testcase>\n"


def junit(tree: _Tree, out: TextIO) -> None:
    """A suite per parent with units, a case per unit: in each suite the failed
    and cancelled cases first (_cause_first); the suite of the child that failed
    a fail-fast job comes first, that child its first case."""
    import shutil
    import tempfile

    tests = failures = skipped = 0
    total = 0.0
    name = None
    trigger: str | None = None
    with (
        tempfile.TemporaryFile("w+", encoding="utf-8", newline="") as body,
        tempfile.TemporaryFile("w+", encoding="utf-8", newline="") as first,
    ):
        suites: list[_Suite] = []  # the open ones, one per level at most, deepest last

        def close(suite: _Suite) -> None:
            nonlocal tests, failures, skipped, total
            suite.write(first if suite.has_trigger else body)
            tests, failures, skipped = tests + suite.tests, failures + suite.failures, skipped + suite.skipped
            total += suite.time

        try:
            walk = tree.walk_units(lambda row, is_unit: is_unit and row["status"] in BAD)
            for n, (row, path, is_unit, unit) in enumerate(walk):
                depth = row["depth"]
                if name is None:
                    name = row["name"]
                    trigger = _trigger_of(tree, row)
                while suites and suites[-1].depth >= depth:
                    close(suites.pop())
                if not is_unit:
                    continue
                if not suites or suites[-1].depth != depth - 1:  # the first unit of its parent
                    # (the job itself as its only unit: a suite named after where it sits)
                    suites.append(_Suite(depth - 1, row["parent_id"] or row["id"], path or [row["name"]]))
                suite = suites[-1]
                seconds = _seconds(row)
                suite.cases.add(_testcase(row, unit, suite.name, seconds), _lead_key(row, n, trigger))
                suite.has_trigger = suite.has_trigger or row["id"] == trigger
                suite.tests += 1
                suite.failures += row["status"] == FAILED
                suite.skipped += row["status"] != FAILED and row["status"] != COMPLETED
                suite.time += seconds or 0.0
            while suites:
                close(suites.pop())
        finally:
            for suite in suites:
                suite.cases.close()
        # No `skipped` here: the common JUnit schema (Jenkins' junit-10.xsd) has
        # none on <testsuites>; every <testsuite> carries its own.
        out.write(
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<testsuites name="{xml_attr(name or "")}" tests="{tests}" failures="{failures}" errors="0"'
            f' time="{total:.3f}">\n'
        )
        for spool in (first, body):
            spool.seek(0)
            shutil.copyfileobj(spool, out)
    out.write("</testsuites>\n")


# --------------------------------------------------------------------- json
def json_report(tree: _Tree, out: TextIO) -> None:
    """One object: the job's progress fields, its name, times and duration,
    `stopped_by` (the child that failed a fail-fast job: its id, message and
    log tail; else null), and `children`: its units, one per line, failed and
    cancelled ones first (_cause_first), each with its status, attempt, exit
    code, duration, the message of its last status change and its last log line."""
    dump = json.dumps
    children = _CauseFirstSpool()
    trigger: str | None = None
    try:
        walk = tree.walk_units(lambda row, is_unit: is_unit, tail_lines=0)
        for n, (row, path, _, unit) in enumerate(walk):
            if row["depth"] == 0:
                trigger = _trigger_of(tree, row)
                progress = row["progress"] or progress_dict(row["id"], row["status"], {})
                stopped_by = None
                if trigger is not None:
                    cause = _unit({"status": FAILED}, _unit_events(tree.jc, [trigger])[trigger])
                    stopped_by = {"id": trigger, "message": cause.reason(FAILED), "tail": cause.tail}
                head = {
                    **progress,
                    "name": row["name"],
                    "started_at": row["started_at"],
                    "completed_at": row["completed_at"],
                    "duration": _seconds(row),
                    "stopped_by": stopped_by,
                }
                out.write(dump(head, ensure_ascii=False)[:-1] + ', "children": [')
            if unit is None:  # not a unit
                continue
            seconds = row.get("duration")
            child = {
                "id": row["id"],
                "name": row["name"],
                "parent_id": row["parent_id"],
                "path": path,
                "status": row["status"],
                "attempt": row.get("attempt"),
                "exit_code": row.get("exit_code"),
                "duration": _seconds(row) if seconds is None else seconds,
                "started_at": row["started_at"],
                "completed_at": row["completed_at"],
                "message": unit.message,
                "last_log": unit.last_log,
            }
            children.add(",\n" + dump(child, ensure_ascii=False), _lead_key(row, n, trigger))
        for i, piece in enumerate(children.pieces()):
            out.write(piece[1:] if i == 0 else piece)  # (no comma before the first)
    finally:
        children.close()
    out.write("\n]}\n")


# ------------------------------------------------------------------ entries
def write_report(jc: Jobctl, job_id: str, fmt: str, out: TextIO) -> None:
    """Write the report of `job_id` in format `fmt` (one of FORMATS) to `out`.
    UsageError for an unknown format and NotFound for an unknown job, both
    before anything is written."""
    check_format(fmt)
    tree = _Tree(jc, job_id)
    if fmt == "markdown":
        out.write(markdown(tree))
    elif fmt == "github":
        out.write(github(tree))
    elif fmt == "junit":
        junit(tree, out)
    else:
        json_report(tree, out)


def report_command(db: str | None, job: str, format: str, output: str | None, environ: Mapping[str, str]) -> int:
    """`jobctl report`: to --output FILE (replaced whole, or left as it was;
    `-` is stdout), else for markdown inside GitHub Actions appended to
    $GITHUB_STEP_SUMMARY (all of it or nothing), else to stdout. `environ` is
    the environment to look in (os.environ from the command line)."""
    check_format(format)
    from jobctl.api import Jobctl

    with Jobctl(db, create=False) as jc:
        jc.status(job)  # an unknown job is refused before any file is touched
        summary = environ.get("GITHUB_STEP_SUMMARY")
        if output is not None and output != "-":
            with _replacing(output) as f:
                write_report(jc, job, format, f)
        elif output is None and format == "markdown" and summary:
            import io

            buf = io.StringIO()
            write_report(jc, job, format, buf)
            _append(summary, buf.getvalue())
            info(f"report appended to $GITHUB_STEP_SUMMARY ({summary})")
        else:
            _to_stdout(lambda f: write_report(jc, job, format, f))
    return 0


def _to_stdout(write) -> None:
    """UTF-8 whatever the locale (the XML says so), through stdout's own buffer."""
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # a text-only stream (tests)
        write(sys.stdout)
        return
    import io

    out = io.TextIOWrapper(buffer, encoding="utf-8", newline="")
    try:
        write(out)
        out.flush()
    finally:
        out.detach()


def _cannot_write(path: str, exc: OSError) -> UsageError:
    return UsageError(f"cannot write {path}: {exc.strerror or exc}")


@contextmanager
def _replacing(path: str) -> Iterator[TextIO]:
    """A file that replaces `path` whole when the block ends without an error:
    written next to it under a temporary name, then renamed over it. On any
    error the temporary file is removed and `path` is as it was."""
    import stat
    import tempfile

    directory = os.path.dirname(os.path.abspath(path))
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        with open(fd, "w", encoding="utf-8", newline="") as f:
            yield f
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise _cannot_write(path, exc) from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _append(path: str, text: str) -> None:
    """Append `text` to `path` whole, or leave the file as it was (cut back on a failed write)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        start = os.fstat(fd).st_size
        data = (("\n" if start else "") + text).encode("utf-8")  # a blank line after earlier steps' text
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            raise _cannot_write(path, exc) from None
    finally:
        os.close(fd)
