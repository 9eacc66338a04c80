"""`jobctl report`: markdown, junit, github and json reports of a job, on both
stores (the `db` fixture), from realistic trees; escaping of hostile text in
every format; where the report goes (--output, $GITHUB_STEP_SUMMARY, stdout)
and that a file that cannot be written is left as it was; and a 100,000-child
report in bounded memory."""

import io
import json
import os
import re
import tempfile
import time
import tracemalloc
import xml.etree.ElementTree as ET

import junitparser
import pytest

from conftest import FULL, ROOT, run, snapshot, tamper
from jobctl import Jobctl, report
from jobctl.model import DatabaseUnusable, NotFound, UsageError
from jobctl.report import FORMATS, report_command, write_report

XSD = ROOT / "fixtures" / "junit-10.xsd"
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")

# Hostile text: markup and command metacharacters of every format, newlines,
# control characters XML 1.0 cannot hold, and a non-character.
EVIL_NAME = "]]> <script>alert(1)</script> | `x` %0A ::a,b *em* @here </details>\n\x01\x1b[31m\ufffe"
EVIL_MESSAGE = "bad: ]]> | %25 %0A ::error::x,y <b>&amp;\r\nline 2\t\x07 ```"
EVIL_LOG = "<script>x</script> </details> ``` | \x0b\x7f ok"


def at(minutes: float) -> str:
    """A fixed timestamp, `minutes` after 2026-01-01 00:00 UTC, in the store's form."""
    seconds = round(minutes * 60, 6)
    return f"2026-01-01T{int(seconds // 3600):02d}:{int(seconds // 60 % 60):02d}:{seconds % 60:09.6f}Z"


def set_times(db: str, job_id: str, start: float | None, end: float | None) -> None:
    tamper(
        db,
        "UPDATE jobs SET started_at = ?, completed_at = ? WHERE id = ?",
        (None if start is None else at(start), None if end is None else at(end), job_id),
    )


def pipeline(jc, db) -> str:
    """A CI pipeline `ci`: build (linux, macos: completed), test (6 shards:
    3 completed, 2 failed with a message and log lines, 1 cancelled while
    running), deploy (push image: cancelled before it ran). Durations are
    fixed: macos 3m, linux 1m30s, shard 2 1m15.5s, shard 4 45s, shard 1 40s,
    shard 3 30s, shard 5 12.25s, shard 6 5s; the pipeline 5m."""
    p = jc.create("CI pipeline", id="ci")
    build, test, deploy = jc.spawn(p, names=["build", "test", "deploy"])
    b = jc.spawn(build, names=["linux", "macos"])
    t = jc.spawn(test, names=[f"shard {i}" for i in range(1, 7)])
    jc.spawn(deploy, names=["push image"])
    jc.set_status(b + t, "running")
    jc.log(b[0], "compiling 120 files")
    jc.set_status(b, "completed", message="built")
    jc.log(t[1], "collected 40 tests")
    jc.log(t[1], "FAILED test_api.py::test_login - AssertionError", level="error")
    jc.set_status([t[1]], "failed", message="2 of 40 tests failed")
    jc.log(t[4], "connection refused: db:5432", level="error")
    jc.set_status([t[4]], "failed")  # no message: the last log line says why
    jc.set_status([t[0], t[2], t[3]], "completed")
    jc.cancel(t[5], message="runner lost")
    jc.cancel(deploy, message="tests failed")
    for job_id, start, end in [
        ("ci", 0, 5),
        ("ci.1.1", 0, 1.5),
        ("ci.1.2", 0, 3),
        ("ci.2.1", 3, 3 + 40 / 60),
        ("ci.2.2", 3, 3 + 75.5 / 60),
        ("ci.2.3", 3, 3.5),
        ("ci.2.4", 3, 3.75),
        ("ci.2.5", 3, 3 + 12.25 / 60),
        ("ci.2.6", 3, 3 + 5 / 60),
    ]:
        set_times(db, job_id, start, end)
    return p


def text(jc, job_id: str, fmt: str) -> str:
    out = io.StringIO()
    write_report(jc, job_id, fmt, out)
    return out.getvalue()


def parse_junit(xml_text: str) -> junitparser.JUnitXml:
    with tempfile.NamedTemporaryFile("w", suffix=".xml", encoding="utf-8", delete=False) as f:
        f.write(xml_text)
    try:
        return junitparser.JUnitXml.fromfile(f.name)
    finally:
        os.unlink(f.name)


def unstamp(text: str) -> str:
    return STAMP.sub("T", text)


def count_event_reads(jc, monkeypatch) -> list[tuple[int, bool]]:
    """Every call of the store's events() from now on, as (how many job ids,
    whether a read transaction was open): the report's round trips for events."""
    store, calls = jc._store, []
    real = store.events

    def events(**kw):
        is_open = store.in_transaction if hasattr(store, "in_transaction") else store.conn.in_transaction
        calls.append((len(kw["job_ids"]), is_open))
        return real(**kw)

    monkeypatch.setattr(store, "events", events)
    return calls


# ----------------------------------------------------------------- markdown
PIPELINE_MARKDOWN = """\
## ❌ CI pipeline

| job | status | duration | children |
|---|---|---|---|
| ` ci ` | failed | 5m00s | 0 pending, 0 running, 1 completed, 1 failed, 1 cancelled |

Below it, 9 jobs without children of their own: 0 pending, 0 running, 5 completed, 2 failed, 2 cancelled.

### Failed and cancelled: 4

| # | job | id | status | duration | message |
|--:|---|---|---|---|---|
| 1 | ` test / shard 5 ` | ` ci.2.5 ` | failed | 12.2s | ` connection refused: db:5432 ` |
| 2 | ` test / shard 2 ` | ` ci.2.2 ` | failed | 1m15s | ` 2 of 40 tests failed ` |
| 3 | ` test / shard 6 ` | ` ci.2.6 ` | cancelled | 5.0s | ` runner lost ` |
| 4 | ` deploy / push image ` | ` ci.3.1 ` | cancelled | - | ` tests failed ` |

<details><summary>1. test / shard 5 (ci.2.5): failed</summary>

```text
T [info] created (pending)
T [info] status changed: pending → running
T [error] connection refused: db:5432
T [info] status changed: running → failed
```

</details>

<details><summary>2. test / shard 2 (ci.2.2): failed: 2 of 40 tests failed</summary>

```text
T [info] created (pending)
T [info] status changed: pending → running
T [info] collected 40 tests
T [error] FAILED test_api.py::test_login - AssertionError
T [info] status changed: running → failed: 2 of 40 tests failed
```

</details>

<details><summary>3. test / shard 6 (ci.2.6): cancelled: runner lost</summary>

```text
T [info] created (pending)
T [info] status changed: pending → running
T [info] status changed: running → cancelled: runner lost
```

</details>

<details><summary>4. deploy / push image (ci.3.1): cancelled: tests failed</summary>

```text
T [info] created (pending)
T [info] status changed: pending → cancelled: tests failed
```

</details>

### Slowest

| job | id | status | duration |
|---|---|---|---|
| ` build / macos ` | ` ci.1.2 ` | completed | 3m00s |
| ` build / linux ` | ` ci.1.1 ` | completed | 1m30s |
| ` test / shard 2 ` | ` ci.2.2 ` | failed | 1m15s |
| ` test / shard 4 ` | ` ci.2.4 ` | completed | 45.0s |
| ` test / shard 1 ` | ` ci.2.1 ` | completed | 40.0s |
"""


def test_markdown_of_a_pipeline(jc, db):
    """Name, final status, duration and progress; every failed and cancelled
    shard below the stages with its path, message (else its last log line)
    and log in a collapsible block; the five slowest."""
    p = pipeline(jc, db)
    assert unstamp(text(jc, p, "markdown")) == PIPELINE_MARKDOWN


def test_markdown_lists_the_first_50_failures_and_counts_the_rest(jc):
    p = jc.create("shards")
    kids = jc.spawn(p, count=120)
    jc.set_status(kids[:60], "failed", message="boom")
    jc.set_status(kids[60:65], "cancelled")
    jc.set_status(kids[65:], "completed")
    md = text(jc, p, "markdown")
    rows = [line for line in md.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [row.split(" | ")[2] for row in rows] == [f"` {p}.{i} `" for i in range(1, 51)]
    assert "### Failed and cancelled: 65" in md
    assert "…and 15 more (the first 50 are listed)." in md
    assert md.count("<details>") == md.count("\n</details>\n") == 50


def test_markdown_log_tail_is_the_last_20_lines(jc):
    p = jc.create("one")
    (kid,) = jc.spawn(p, count=1)
    jc.set_status([kid], "running")
    for i in range(1, 31):
        jc.log(kid, f"line {i}")
    jc.set_status([kid], "failed", message="gave up")
    block = unstamp(text(jc, p, "markdown")).split("```text\n")[1].split("\n```")[0]
    assert block.splitlines() == [f"T [info] line {i}" for i in range(12, 31)] + [
        "T [info] status changed: running → failed: gave up"
    ]


def test_the_log_tail_says_changes_as_logs_does(jc):
    """A unit's tail is its `jobctl logs` lines: the attempt of a change, and a policy change as one."""
    p = jc.create("one")
    (kid,) = jc.spawn(p, count=1, max_attempts=3)
    jc.set_policy(kid, max_attempts=2)
    jc.set_status([kid], "running")
    jc.set_status([kid], "failed", message="exit code 1")
    block = unstamp(text(jc, p, "markdown")).split("```text\n")[1].split("\n```")[0]
    assert block.splitlines() == [
        "T [info] created (pending)",
        "T [info] policy set: max-attempts 2",
        "T [info] status changed: pending → running (attempt 1/2)",
        "T [info] status changed: running → failed (attempt 1/2): exit code 1",
    ]
    assert block.splitlines() == [unstamp(f"{line['at'][:19]}Z [info] {line['text']}") for line in jc.logs(kid)]


def test_markdown_of_a_job_without_children_reports_the_job_itself(jc):
    job = jc.create("lint", id="lint")
    jc.set_status([job], "failed", message="3 problems")
    md = text(jc, job, "markdown")
    assert md.startswith("## ❌ lint\n")
    assert "| ` lint ` | failed | - | no children |" in md  # it never ran: pending → failed
    assert "| 1 | ` lint ` | ` lint ` | failed | - | ` 3 problems ` |" in md


def test_markdown_stays_within_the_step_summary_limit(db_path, monkeypatch):
    """Long lines are cut at 200 characters; log tails stop before the text
    passes the budget (GitHub refuses a step summary over 1 MiB)."""
    from jobctl import Jobctl

    with Jobctl(db_path) as jc:
        p = jc.create("wide")
        kids = jc.spawn(p, count=3)
        for kid in kids:
            jc.log(kid, "🦆" * 300)
        jc.set_status(kids, "failed", message="x" * 5000)
        md = text(jc, p, "markdown")
        assert re.search(r"\[info\] 🦆+… \(1\d\d more characters\)\n", md)
        assert f"` {'x' * 200}… (4800 more characters) `" in md
        assert max(len(line) for line in md.splitlines()) < 300
        monkeypatch.setattr(report, "SUMMARY_BYTES", len(md.encode()) - 100)
        cut = text(jc, p, "markdown")
    assert cut.count("<details>") == 2
    assert "(The log tails from 3 on are left out: a step summary holds at most 1 MiB.)" in cut
    assert len(cut.encode()) < len(md.encode())


# -------------------------------------------------------------------- junit
def test_junit_of_a_pipeline(jc, db):
    """One suite per parent with units, one case per unit with its parent path
    as classname and its run time; failures with the message and log tail,
    cancelled as skipped; valid against Jenkins' JUnit schema."""
    p = pipeline(jc, db)
    xml = text(jc, p, "junit")
    ET.fromstring(xml)  # well-formed
    import xmlschema

    xmlschema.XMLSchema(str(XSD)).validate(xml)
    doc = parse_junit(xml)
    assert (doc.name, doc.tests, doc.failures, doc.errors, doc.skipped, doc.time) == ("CI pipeline", 9, 2, 0, 2, 477.75)
    assert [(s.name, s.tests, s.failures, s.errors, s.skipped, s.time) for s in doc] == [
        ("CI pipeline.build", 2, 0, 0, 0, 270.0),
        ("CI pipeline.test", 6, 2, 0, 1, 207.75),
        ("CI pipeline.deploy", 1, 0, 0, 1, 0.0),
    ]
    cases = {c.name: c for s in doc for c in s}
    assert [(c.classname, c.name, c.time) for s in doc for c in s] == [
        ("CI pipeline.build", "linux", 90.0),
        ("CI pipeline.build", "macos", 180.0),
        ("CI pipeline.test", "shard 5", 12.25),  # failed first, the first to fail first
        ("CI pipeline.test", "shard 2", 75.5),
        ("CI pipeline.test", "shard 6", 5.0),  # then cancelled
        ("CI pipeline.test", "shard 1", 40.0),  # then the others, in the walk's order
        ("CI pipeline.test", "shard 3", 30.0),
        ("CI pipeline.test", "shard 4", 45.0),
        ("CI pipeline.deploy", "push image", 0.0),
    ]
    assert {n for n, c in cases.items() if c.is_passed} == {"linux", "macos", "shard 1", "shard 3", "shard 4"}
    (failure,) = cases["shard 2"].result
    assert isinstance(failure, junitparser.Failure)
    assert (failure.message, failure.type) == ("2 of 40 tests failed", "failed")
    tail = (
        "T [info] created (pending)\n"
        "T [info] status changed: pending → running\n"
        "T [info] collected 40 tests\n"
        "T [error] FAILED test_api.py::test_login - AssertionError\n"
        "T [info] status changed: running → failed: 2 of 40 tests failed"
    )
    assert unstamp(failure.text) == tail
    assert unstamp(cases["shard 2"].system_out) == tail
    (failure,) = cases["shard 5"].result  # no message given: its last log line says why
    assert failure.message == "connection refused: db:5432"
    (skipped,) = cases["shard 6"].result
    assert isinstance(skipped, junitparser.Skipped) and skipped.message == "cancelled: runner lost"
    assert unstamp(cases["push image"].system_out) == (
        "T [info] created (pending)\nT [info] status changed: pending → cancelled: tests failed"
    )
    assert cases["linux"].system_out is None


def test_junit_counts_unfinished_children_as_skipped_and_groups_by_parent(jc):
    """Direct leaf children and a stage's shards under one root: a suite each
    (the root's closes last, after its subtree); pending and running units
    are skipped, not passed."""
    p = jc.create("mixed")
    a, stage, b = jc.spawn(p, names=["a", "stage", "b"])
    s1, s2 = jc.spawn(stage, names=["s1", "s2"])
    jc.set_status([a, s1], "running")
    jc.set_status([a], "completed")
    doc = parse_junit(text(jc, p, "junit"))
    assert [(s.name, s.tests, s.failures, s.skipped) for s in doc] == [("mixed.stage", 2, 0, 2), ("mixed", 2, 0, 1)]
    result = {c.name: [(type(r).__name__, r.message) for r in c.result] for s in doc for c in s}
    assert result == {
        "s1": [("Skipped", "not finished: running")],
        "s2": [("Skipped", "not finished: pending")],
        "a": [],
        "b": [("Skipped", "not finished: pending")],
    }
    assert (doc.tests, doc.failures, doc.skipped) == (4, 0, 3)


def test_junit_of_a_job_without_children_is_one_case(jc):
    root = jc.create("lint")
    jc.set_status([root], "failed", message="3 problems")
    doc = parse_junit(text(jc, root, "junit"))
    assert [(s.name, [(c.classname, c.name) for c in s]) for s in doc] == [("lint", [("lint", "lint")])]
    assert doc.failures == 1
    parent = jc.create("nightly")
    (kid,) = jc.spawn(parent, names=["docs"])
    doc = parse_junit(text(jc, kid, "junit"))  # a report can start below a root
    assert [(s.name, [(c.classname, c.name) for c in s]) for s in doc] == [("nightly", [("nightly", "docs")])]


# ------------------------------------------------------------------- github
def test_github_of_a_pipeline(jc, db):
    p = pipeline(jc, db)
    assert text(jc, p, "github").splitlines() == [
        "::error title=test / shard 5 (ci.2.5)::connection refused: db:5432",  # the first to fail first
        "::error title=test / shard 2 (ci.2.2)::2 of 40 tests failed",
        "::warning title=test / shard 6 (ci.2.6)::runner lost",  # cancelled: a warning each
        "::warning title=deploy / push image (ci.3.1)::tests failed",
        "::notice title=jobctl report%3A CI pipeline::CI pipeline (ci) failed, 5m00s"
        " | 0 pending, 0 running, 1 completed, 1 failed, 1 cancelled"
        " | below it, 9 jobs without children: 0 pending, 0 running, 5 completed, 2 failed, 2 cancelled",
    ]


def test_github_annotates_the_first_10_failures(jc):
    p = jc.create("many")
    kids = jc.spawn(p, count=30)
    jc.set_status(kids[:25], "failed", message="boom")
    jc.set_status(kids[25:], "completed")
    lines = text(jc, p, "github").splitlines()
    assert lines[:10] == [f"::error title=child {i} ({p}.{i})::boom" for i in range(1, 11)]
    assert len(lines) == 11
    assert lines[10].endswith(" | 25 failed: the first 10 are annotated")


# --------------------------------------------------------------------- json
def test_json_of_a_pipeline(jc, db):
    p = pipeline(jc, db)
    raw = text(jc, p, "json")
    doc = json.loads(raw)
    assert len(raw.splitlines()) == 11  # the head, a line per child, the end
    assert {k: v for k, v in doc.items() if k != "children"} == {
        "job_id": "ci",
        "status": "failed",
        "total_children": 3,
        "pending_children": 0,
        "running_children": 0,
        "completed_children": 1,
        "failed_children": 1,
        "cancelled_children": 1,
        "progress_text": "0 pending, 0 running, 1 completed, 1 failed, 1 cancelled",
        "name": "CI pipeline",
        "started_at": at(0),
        "completed_at": at(5),
        "duration": 300.0,
        "stopped_by": None,
    }
    kids = {c["id"]: c for c in doc["children"]}
    # failed first (the first to fail first), then cancelled, then the others in the walk's order
    assert list(kids) == ["ci.2.5", "ci.2.2", "ci.2.6", "ci.3.1", "ci.1.1", "ci.1.2", "ci.2.1", "ci.2.3", "ci.2.4"]
    assert kids["ci.2.2"] == {
        "id": "ci.2.2",
        "name": "shard 2",
        "parent_id": "ci.2",
        "path": ["CI pipeline", "test"],
        "status": "failed",
        "attempt": 1,
        "exit_code": None,
        "duration": 75.5,
        "started_at": at(3),
        "completed_at": at(3 + 75.5 / 60),
        "message": "2 of 40 tests failed",
        "last_log": "FAILED test_api.py::test_login - AssertionError",
    }
    assert [(c["status"], c["duration"], c["message"], c["last_log"]) for c in doc["children"]] == [
        ("failed", 12.25, None, "connection refused: db:5432"),
        ("failed", 75.5, "2 of 40 tests failed", "FAILED test_api.py::test_login - AssertionError"),
        ("cancelled", 5.0, "runner lost", None),
        ("cancelled", None, "tests failed", None),
        ("completed", 90.0, "built", "compiling 120 files"),
        ("completed", 180.0, "built", None),
        ("completed", 40.0, None, None),
        ("completed", 30.0, None, None),
        ("completed", 45.0, None, None),
    ]


def test_json_of_a_job_without_children(jc):
    job = jc.create("lint", id="lint")
    doc = json.loads(text(jc, job, "json"))
    assert (doc["total_children"], doc["progress_text"]) == (0, "0 pending, 0 running, 0 completed, 0 failed")
    assert [(c["id"], c["path"], c["status"]) for c in doc["children"]] == [("lint", [], "pending")]


# ------------------------------------------------------ chunked event reads
def test_units_events_are_read_a_chunk_at_a_time(jc, monkeypatch):
    """One query per EVENT_CHUNK rows of the walk, not one per unit, and only
    for the units shown; each inside the walk's read snapshot, the last chunk's
    too (read when the last row has come, before the walk ends)."""
    monkeypatch.setattr(report, "EVENT_CHUNK", 100)
    p = jc.create("shards")
    kids = jc.spawn(p, count=250)
    jc.set_status(kids, "running")
    jc.set_status(kids[:200], "completed")
    jc.set_status(kids[200:240], "failed", message="boom")
    jc.set_status(kids[240:], "cancelled")
    calls = count_event_reads(jc, monkeypatch)
    reads = {}
    for fmt in FORMATS:
        calls.clear()
        text(jc, p, fmt)
        reads[fmt] = list(calls)
    assert reads == {
        "json": [(99, True), (100, True), (51, True)],  # the job and 99 children, 100 children, the last 51
        "junit": [(50, True)],  # the failed and cancelled ones, all in the last chunk of rows
        "markdown": [(50, True)],  # the 50 listed
        "github": [(20, True)],  # the 10 failed and 10 cancelled annotated
    }


def test_a_report_is_the_same_whatever_the_chunk(jc, db, monkeypatch):
    """Every format of the pipeline, byte for byte, whether its units' events
    are read one unit at a time or in chunks of any size (across the stages'
    boundaries); every read inside the walk's snapshot."""
    p = pipeline(jc, db)
    calls = count_event_reads(jc, monkeypatch)
    reports = {}
    for chunk in (1, 2, 3, 5, 500):
        monkeypatch.setattr(report, "EVENT_CHUNK", chunk)
        reports[chunk] = [text(jc, p, fmt) for fmt in FORMATS]
    assert all(r == reports[1] for r in reports.values())
    assert unstamp(reports[500][0]) == PIPELINE_MARKDOWN
    assert calls and all(is_open for _, is_open in calls)


@pytest.mark.parametrize("off_by", [5, -1])
def test_a_kept_count_that_is_off_changes_no_report(jc, db, monkeypatch, off_by):
    """The walk's end is foreseen from the parents' kept child counts; were one
    off, the report would still be the same (only the reads' timing differs)."""
    p = pipeline(jc, db)
    tamper(db, "UPDATE child_counts SET completed = completed + ? WHERE parent_id = ?", (off_by, "ci.2"))
    monkeypatch.setattr(report, "EVENT_CHUNK", 1)  # a read per row: the walk's end does not matter
    one = [text(jc, p, fmt) for fmt in FORMATS]
    monkeypatch.setattr(report, "EVENT_CHUNK", 4)
    assert [text(jc, p, fmt) for fmt in FORMATS] == one


# ------------------------------------------------------------- text is data
def evil_tree(jc) -> str:
    p = jc.create(EVIL_NAME)
    bad, gone = jc.spawn(p, names=[EVIL_NAME, EVIL_NAME + " 2"])
    jc.set_status([bad], "running")
    jc.log(bad, EVIL_LOG, level="error")
    jc.set_status([bad], "failed", message=EVIL_MESSAGE)
    jc.cancel(gone, message=EVIL_MESSAGE)
    return p


def xml_form(s: str) -> str:
    """What XML 1.0 can hold of `s`: the characters it cannot, as \\xNN (\\uNNNN) text."""
    return re.sub(
        "[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]",
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}",
        s,
    )


def test_hostile_text_in_junit(jc, db):
    p = evil_tree(jc)
    xml = text(jc, p, "junit")
    ET.fromstring(xml)
    import xmlschema

    xmlschema.XMLSchema(str(XSD)).validate(xml)
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]", xml)
    assert "]]>" not in xml and "<script>" not in xml and "</details>" not in xml
    doc = parse_junit(xml)
    assert doc.name == xml_form(EVIL_NAME)
    (suite,) = doc
    assert suite.name == xml_form(EVIL_NAME)
    bad, gone = suite
    assert (bad.name, bad.classname) == (xml_form(EVIL_NAME), xml_form(EVIL_NAME))
    (failure,) = bad.result
    assert failure.message == xml_form(EVIL_MESSAGE)  # newlines, CR and tab survive in the attribute
    assert unstamp(failure.text).splitlines() == [
        "T [info] created (pending)",
        "T [info] status changed: pending → running",
        r"T [error] <script>x</script> </details> ``` | \x0b\x7f ok",
        r"T [info] status changed: running → failed: bad: ]]> | %25 %0A ::error::x,y <b>&amp;\r\nline 2\t\x07 ```",
    ]
    (skipped,) = gone.result
    assert skipped.message == "cancelled: " + xml_form(EVIL_MESSAGE)


def unescape_gh(value: str, prop: bool) -> str:
    """What GitHub's runner makes of an escaped value (its order of replacements)."""
    for token, escaped in [("\r", "%0D"), ("\n", "%0A")] + ([(":", "%3A"), (",", "%2C")] if prop else []):
        value = value.replace(escaped, token)
    return value.replace("%25", "%")


def test_hostile_text_in_github_commands(jc, db):
    p = evil_tree(jc)
    lines = text(jc, p, "github").split("\n")
    assert lines[-1] == "" and len(lines) == 4  # an error, a warning and the notice, no line of anyone else's
    m = re.fullmatch(r"::error title=([^:,]*)::(.*)", lines[0])
    assert m, lines[0]
    title, message = (unescape_gh(m.group(1), True), unescape_gh(m.group(2), False))
    controls = lambda s: re.sub("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", lambda c: f"\\x{ord(c.group()):02x}", s)
    assert title == controls(f"{EVIL_NAME} ({p}.1)")
    assert message == controls(EVIL_MESSAGE)
    assert "%250A" in lines[0] and "\r" not in lines[0]
    assert re.fullmatch(r"::warning title=[^:,]*::.*", lines[1])
    assert re.fullmatch(r"::notice title=[^:,]*::.*", lines[2])
    assert unescape_gh(lines[2].split("::")[1].removeprefix("notice title="), True) == controls(
        f"jobctl report: {EVIL_NAME}"
    )


def test_hostile_text_in_markdown(jc, db):
    p = evil_tree(jc)
    md = text(jc, p, "markdown")
    lines = md.splitlines()
    heading = lines[0].removeprefix("## ❌ ")
    assert not re.search(r"[!-/:-@\[-`{-~]", re.sub(r"\\.", "", heading))  # every punctuation escaped
    assert not re.search("[\x00-\x1f\x7f-\x9f\ufffe\uffff]", md.replace("\n", ""))
    rows = [line for line in lines if line.startswith("|")]
    cells = lambda line: len(re.findall(r"(?<!\\)\|", line))
    for i, row in enumerate(lines):  # no name or message adds a cell to its table
        if row.startswith("|") and lines[i - 1].startswith("|"):
            assert cells(row) == cells(lines[i - 1]), row
    bad = next(row for row in rows if row.startswith("| 1 |"))
    assert bad.split(" | ")[1:3] == [
        r"`` ]]> <script>alert(1)</script> \| `x` %0A ::a,b *em* @here </details>\n\x01\x1b[31m\ufffe ``",
        f"` {p}.1 `",
    ]
    assert lines.count("</details>") == md.count("<details>") == 2
    summaries = [line for line in lines if line.startswith("<details>")]
    assert summaries[0] == (
        "<details><summary>1. ]]&gt; &lt;script&gt;alert(1)&lt;/script&gt; | `x` %0A ::a,b *em* @here"
        r" &lt;/details&gt;\n\x01\x1b[31m\ufffe" + f" ({p}.1): failed: bad: ]]&gt; | %25 %0A ::error::x,y"
        r" &lt;b&gt;&amp;amp;\r\nline 2\t\x07 ```</summary>"
    )
    block = md.split("\n````text\n")[1].split("\n````\n")[0]  # a fence longer than the ``` inside
    assert unstamp(block).splitlines()[2] == r"T [error] <script>x</script> </details> ``` | \x0b\x7f ok"


def test_hostile_text_in_json(jc, db):
    p = evil_tree(jc)
    doc = json.loads(text(jc, p, "json"))
    assert doc["name"] == EVIL_NAME
    bad, gone = doc["children"]
    assert (bad["name"], bad["message"], bad["last_log"], bad["path"]) == (
        EVIL_NAME,
        EVIL_MESSAGE,
        EVIL_LOG,
        [EVIL_NAME],
    )
    assert (gone["name"], gone["message"]) == (EVIL_NAME + " 2", EVIL_MESSAGE)


def test_escapers_directly():
    assert report.xml_text("]]><a>&\r\x00\ufffe") == r"]]&gt;&lt;a&gt;&amp;&#13;\x00\ufffe"
    assert report.xml_attr('"\n\t<') == "&quot;&#10;&#9;&lt;"
    assert report.gh_data("100%\r\n::a,b") == "100%25%0D%0A::a,b"
    assert report.gh_property("100%\r\n::a,b") == "100%25%0D%0A%3A%3Aa%2Cb"
    assert report.gh_data("%0A") == "%250A"
    assert report.md_code("a|b") == r"` a\|b `"
    assert report.md_code("``x``") == "``` ``x`` ```"
    assert report.md_text("*a* [b](c) <d>") == r"\*a\* \[b\]\(c\) \<d\>"
    assert report.md_fenced(["````"]) == "`````text\n````\n`````"


# ---------------------------------------------------- errors, destinations
def test_unknown_format_or_job_writes_nothing(jc):
    p = jc.create("p")
    out = io.StringIO()
    with pytest.raises(UsageError, match=r"unknown report format 'html' \(valid: markdown, junit, github, json\)"):
        write_report(jc, p, "html", out)
    for fmt in FORMATS:
        with pytest.raises(NotFound, match="job nope not found"):
            write_report(jc, "nope", fmt, out)
    assert out.getvalue() == ""


def test_output_file_is_replaced_whole(jc, db, tmp_path):
    p = pipeline(jc, db)
    tmp_path /= "out"
    tmp_path.mkdir()
    target = tmp_path / "report.xml"
    target.write_text("old")
    target.chmod(0o640)
    assert report_command(db, p, "junit", str(target), {"GITHUB_STEP_SUMMARY": str(tmp_path / "s.md")}) == 0
    assert unstamp(target.read_text()) == unstamp(text(jc, p, "junit"))
    assert target.stat().st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp_path)) == ["report.xml"]  # no temporary file left, no summary written


@pytest.mark.parametrize("where", ["missing directory", "under a file", "a directory"])
def test_an_output_that_cannot_be_written_is_a_usage_error(jc, db, tmp_path, where):
    p = jc.create("p")
    tmp_path /= "out"
    tmp_path.mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    path = {
        "missing directory": tmp_path / "nope" / "r.md",
        "under a file": tmp_path / "file" / "r.md",
        "a directory": tmp_path / "dir",
    }[where]
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(UsageError, match=f"cannot write {re.escape(str(path))}: ") as exc:
        report_command(db, p, "markdown", str(path), {})
    assert exc.value.exit_code == 2 and "\n" not in str(exc.value)
    assert sorted(os.listdir(tmp_path)) == before and os.listdir(tmp_path / "dir") == []


def test_a_failure_half_way_leaves_the_old_file(jc, db, tmp_path, monkeypatch):
    import errno

    p = pipeline(jc, db)
    tmp_path /= "out"
    tmp_path.mkdir()
    target = tmp_path / "report.xml"
    target.write_text("old")

    def half(tree, out):
        out.write("<?xml version=")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "junit", half)
    with pytest.raises(UsageError, match=f"cannot write {re.escape(str(target))}: No space left on device"):
        report_command(db, p, "junit", str(target), {})

    def lost(tree, out):
        out.write("<?xml version=")
        raise DatabaseUnusable("lost the connection")

    monkeypatch.setattr(report, "junit", lost)
    with pytest.raises(DatabaseUnusable):
        report_command(db, p, "junit", str(target), {})
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["report.xml"]


def test_markdown_is_appended_to_the_github_step_summary(jc, db, tmp_path, capsys):
    p = pipeline(jc, db)
    summary = tmp_path / "step_summary.md"
    summary.write_text("## Earlier step\n")
    env = {"GITHUB_STEP_SUMMARY": str(summary)}
    assert report_command(db, p, "markdown", None, env) == 0
    assert unstamp(summary.read_text()) == "## Earlier step\n\n" + PIPELINE_MARKDOWN
    out, err = capsys.readouterr()
    assert out == "" and err == f"jobctl: report appended to $GITHUB_STEP_SUMMARY ({summary})\n"
    report_command(db, p, "junit", None, env)  # only markdown goes there
    report_command(db, p, "markdown", str(tmp_path / "r.md"), env)  # --output wins
    assert unstamp(summary.read_text()) == "## Earlier step\n\n" + PIPELINE_MARKDOWN
    assert capsys.readouterr().out.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<testsuites name="CI')
    assert unstamp((tmp_path / "r.md").read_text()) == PIPELINE_MARKDOWN


def test_a_failed_append_leaves_the_step_summary_as_it_was(tmp_path, monkeypatch):
    import errno

    summary = tmp_path / "step_summary.md"
    summary.write_text("## Earlier step\n")
    real_write = os.write

    def short_then_full(fd, data):  # the disk fills up after the first few bytes
        if len(data) > 10:
            return real_write(fd, bytes(data[:10]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full)
    try:
        with pytest.raises(UsageError, match="No space left on device"):
            report._append(str(summary), "## Report\n" * 10)
    finally:
        monkeypatch.undo()
    assert summary.read_text() == "## Earlier step\n"


def test_report_to_stdout(jc, db, capsys):
    p = pipeline(jc, db)
    for output in (None, "-"):
        assert report_command(db, p, "json", output, {}) == 0
        assert json.loads(capsys.readouterr().out)["job_id"] == "ci"


@pytest.mark.slow
def test_stdout_is_utf8_whatever_the_locale(jc, db):
    """The XML says UTF-8, so stdout is written in UTF-8 even where Python's
    own stdout encoding is ASCII (a process of its own)."""
    import subprocess
    import sys

    p = jc.create("Crawler — ünïcode 🦆")
    code = (
        "import sys; from jobctl.report import report_command;"
        " sys.exit(report_command(sys.argv[1], sys.argv[2], 'junit', None, {}))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, db, p],
        capture_output=True,
        timeout=60,
        env=dict(os.environ, PYTHONIOENCODING="ascii"),
    )
    assert r.returncode == 0, r.stderr
    assert ET.fromstring(r.stdout).get("name") == "Crawler — ünïcode 🦆"


def test_unknown_job_or_database_touches_no_file(tmp_path, jc, db):
    tmp_path /= "out"
    tmp_path.mkdir()
    out = tmp_path / "r.md"
    with pytest.raises(NotFound):
        report_command(db, "nope", "markdown", str(out), {"GITHUB_STEP_SUMMARY": str(tmp_path / "s.md")})
    missing = str(tmp_path / "missing.db")
    with pytest.raises(DatabaseUnusable):
        report_command(missing, "nope", "markdown", str(out), {})
    with pytest.raises(UsageError):
        report_command(missing, "nope", "xml", str(out), {})  # the format is checked first
    assert os.listdir(tmp_path) == []


# -------------------------------------------------------------------- scale
@pytest.mark.slow
def test_a_report_of_100000_children_streams_in_bounded_memory(jc, db, tmp_path, monkeypatch):
    """Every format over a parent of 100,000 children (1,500 failed, 500
    cancelled) finishes, reads the units' events in chunks (json: a query per
    EVENT_CHUNK children, not per child), and allocates at most 5 MB more than the walk of
    the tree it rides on (Jobctl.tree() alone: ~0.6 MB on SQLite, ~10 MB on
    PostgreSQL, which reads 5,000 rows a page). 5 MB is the report's own
    allowance (a suite's cases spool in memory up to 1 MB, the markdown text,
    a unit's events); keeping the children instead would cost far more: their
    rows alone take ~114 MB, even their ids ~7 MB."""
    n = 100_000 if FULL else 20_000  # the size with JOBCTL_FULL=1; the default keeps the suite short
    p = jc.create("huge")
    kids = jc.spawn(p, count=n)
    jc.set_status(kids, "running")
    jc.set_status(kids[: n - 2000], "completed")
    jc.set_status(kids[n - 2000 : n - 500], "failed", message="boom")
    jc.set_status(kids[n - 500 :], "cancelled", message="stop")
    for kid in kids[n - 2000 : n - 1990]:
        jc.log(kid, "oops", level="error")
    figures = {}
    calls = count_event_reads(jc, monkeypatch)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in jc.tree(p):
            pass
        walk = tracemalloc.get_traced_memory()[1] - base
        figures["tree() alone"] = f"peak {walk / 1e6:.1f} MB"
        for fmt in FORMATS:
            path = tmp_path / f"report.{fmt}"
            calls.clear()
            with open(path, "w", encoding="utf-8") as out:
                tracemalloc.reset_peak()
                base = tracemalloc.get_traced_memory()[0]
                t0 = time.perf_counter()
                write_report(jc, p, fmt, out)
                elapsed = time.perf_counter() - t0
                peak = tracemalloc.get_traced_memory()[1] - base
            figures[fmt] = (
                f"{elapsed:.1f} s, peak {peak / 1e6:.1f} MB, {path.stat().st_size / 1e6:.1f} MB written,"
                f" {len(calls)} reads of events"
            )
            assert peak < walk + 5e6, figures  # (its times are figures, printed: not asserted)
            chunks = -(-(n + 1) // report.EVENT_CHUNK)  # the walk's rows (the job and its children), in chunks
            assert len(calls) == chunks if fmt == "json" else len(calls) <= 5, figures
    finally:
        tracemalloc.stop()
    print(figures)
    doc = parse_junit((tmp_path / "report.junit").read_text())
    assert (doc.tests, doc.failures, doc.skipped) == (n, 1500, 500)
    md = (tmp_path / "report.markdown").read_text()
    assert "### Failed and cancelled: 2000" in md and "…and 1950 more (the first 50 are listed)." in md
    lines = (tmp_path / "report.json").read_text().splitlines()
    statuses = [json.loads(line.rstrip(","))["status"] for line in lines[1:-1]]
    assert statuses == ["failed"] * 1500 + ["cancelled"] * 500 + ["completed"] * (n - 2000)


# ----------------------------------------------------------- watch --report
def test_watch_writes_the_report_when_it_ends(db, tmp_path):
    with Jobctl(db) as jc:
        p = jc.create("shards", allow_failures="1")
        kids = jc.spawn(p, count=3)
        jc.set_status(kids, "running")
        jc.set_status([kids[0]], "failed", message="exit code 2")
        jc.set_status(kids[1:], "completed")
    summary = tmp_path / "summary.md"
    result = run("watch", p, "--exit-status", "--report", "markdown", db=db, env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert result.returncode == 0, result.stderr  # completed: one failure allowed
    text = summary.read_text()
    assert text.startswith("## ✅ shards") and "Policy: allow-failures 1; 1 allowed, used." in text
    assert "exit code 2" in text
    out = tmp_path / "report.xml"
    result = run("watch", p, "--json", "--report", "junit", "--report-output", out, db=db)
    assert result.returncode == 0 and json.loads(result.stdout.splitlines()[-1])["type"] == "end"
    suites = list(parse_junit(out.read_text()))
    assert (suites[0].tests, suites[0].failures) == (3, 1)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--report", "pdf"], "unknown report format 'pdf'"),
        (["--report-output", "x.xml"], "--report-output goes with --report"),
        (["--json", "--report", "junit"], "--report with --json needs --report-output FILE"),
    ],
)
def test_watch_refuses_a_bad_report_before_it_starts(db, tmp_path, args, message):
    with Jobctl(db) as jc:
        p = jc.create("p")
    before = snapshot(db)
    result = run("watch", p, *args, db=db, env={"GITHUB_STEP_SUMMARY": ""})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"jobctl: error: {message}" + result.stderr.split(message, 1)[1]
    assert len(result.stderr.splitlines()) == 1
    assert snapshot(db) == before


# ------------------------------------------------- reports lead with the cause (issue 21)
def test_a_fail_fast_report_leads_with_the_failure_that_stopped_it(jc):
    """100 children, fail-fast: the 73rd fails, the other 99 are cancelled. The
    report names it at the top with its log tail, and lists it before the
    cancelled ones (it used to list 50 cancelled ones in id order, and not it)."""
    p = jc.create("shards", fail_fast=True)
    kids = jc.spawn(p, count=100)
    jc.set_status([kids[72]], "running")
    jc.log(kids[72], "AssertionError: expected 3, got 4", level="error")
    jc.set_status([kids[72]], "failed", message="exit code 1")
    md = unstamp(text(jc, p, "markdown"))
    head, _, rest = md.partition("### Failed and cancelled: 100")
    assert f"**Stopped by fail-fast:** ` child 73 ` (` {p}.73 `) failed: ` exit code 1 `" in head
    assert "T [error] AssertionError: expected 3, got 4" in head
    rows = [line for line in rest.splitlines() if re.match(r"\| \d+ \|", line)]
    assert rows[0].startswith(f"| 1 | ` child 73 ` | ` {p}.73 ` | failed |")
    assert all("| cancelled |" in row for row in rows[1:]) and len(rows) == 50
    assert rest.index(f"1. child 73 ({p}.73): failed") < rest.index("2. child 1 ")
    gh = text(jc, p, "github").splitlines()
    assert gh[0].startswith(f"::error title=stopped by fail-fast%3A child 73 ({p}.73)::exit code 1%0A%0A")
    assert "[error] AssertionError: expected 3, got 4" in gh[0]  # with its log tail
    assert [line.split(" title=")[0] for line in gh] == ["::error"] + ["::warning"] * 10 + ["::notice"]
    assert gh[-1].endswith(" | 99 cancelled: the first 10 are annotated")
    doc = parse_junit(text(jc, p, "junit"))
    cases = [c for suite in doc for c in suite]
    assert cases[0].name == "child 73" and isinstance(cases[0].result[0], junitparser.Failure)
    assert "AssertionError: expected 3, got 4" in cases[0].system_out
    report_json = json.loads(text(jc, p, "json"))
    stopped = report_json["stopped_by"]
    assert (stopped["id"], stopped["message"]) == (f"{p}.73", "exit code 1")
    assert any(line.endswith("[error] AssertionError: expected 3, got 4") for line in stopped["tail"])
    assert [c["id"] for c in report_json["children"]][:2] == [f"{p}.73", f"{p}.1"]


def test_junit_puts_the_suite_of_the_fail_fast_trigger_first(jc):
    """A root's own units' suite closes after its stages' (it is written last);
    when one of them failed the root by fail-fast, that suite comes first."""
    p = jc.create("mixed", fail_fast=True)
    a, stage, b = jc.spawn(p, names=["a", "stage", "b"])
    jc.spawn(stage, names=["s1", "s2"])
    jc.set_status([b], "failed", message="b broke")
    doc = parse_junit(text(jc, p, "junit"))
    assert [s.name for s in doc] == ["mixed", "mixed.stage"]
    assert [c.name for c in next(iter(doc))] == ["b", "a"]  # the trigger, then the cancelled one


def test_github_never_writes_more_than_50_annotations(jc, monkeypatch):
    """GitHub keeps 50 annotations per job: with room for 30 of each type (the
    runner's 10 per step, raised here to reach the cap), 30 errors, 19 warnings
    and the notice, which sums up the rest."""
    monkeypatch.setattr(report, "ANNOTATIONS", 30)
    p = jc.create("many")
    kids = jc.spawn(p, count=80)
    jc.set_status(kids[:40], "failed", message="boom")
    jc.set_status(kids[40:], "cancelled", message="stop")
    gh = text(jc, p, "github").splitlines()
    kinds = [line.split(" title=")[0] for line in gh]
    assert kinds == ["::error"] * 30 + ["::warning"] * 19 + ["::notice"]
    assert gh[-1].endswith(" | 40 failed: the first 30 are annotated | 40 cancelled: the first 19 are annotated")


def test_failed_come_first_and_the_first_to_fail_first(jc):
    p = jc.create("shards")
    kids = jc.spawn(p, count=14)
    jc.set_status(kids[:2], "cancelled")
    for i in (9, 3, 11, 5, 6, 7, 8, 12, 13, 10, 4, 2):  # failed one by one, in this order
        jc.set_status([kids[i]], "failed", message=f"failed #{i + 1}")
    order = [p + f".{i + 1}" for i in (9, 3, 11, 5, 6, 7, 8, 12, 13, 10, 4, 2)]
    md = text(jc, p, "markdown")
    listed = [line.split(" | ")[2].strip("` ") for line in md.splitlines() if re.match(r"\| \d+ \|", line)]
    assert listed == order + [f"{p}.1", f"{p}.2"]
    gh = text(jc, p, "github").splitlines()
    assert [line.split("(")[1].split(")")[0] for line in gh[:12]] == order[:10] + [f"{p}.1", f"{p}.2"]
    assert [line.split(" title=")[0] for line in gh] == ["::error"] * 10 + ["::warning"] * 2 + ["::notice"]
    assert gh[12].endswith(" | 12 failed: the first 10 are annotated")  # 10 errors: a step shows no more
    cases = [c.name for suite in parse_junit(text(jc, p, "junit")) for c in suite]
    assert cases[:14] == [f"child {i + 1}" for i in (9, 3, 11, 5, 6, 7, 8, 12, 13, 10, 4, 2, 0, 1)]
    children = [c["id"] for c in json.loads(text(jc, p, "json"))["children"]]
    assert children == order + [f"{p}.1", f"{p}.2"]
