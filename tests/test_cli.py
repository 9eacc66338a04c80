"""The CLI contract, in-process through CliRunner and through the installed console script."""

import json
import subprocess
import sys

import pytest
import typer.main

from conftest import JOBCTL, ROOT, run, seed_news_crawler, tamper
from jobctl.cli import app

SEED_TEXT = "66 pending, 1 running, 41 completed, 0 failed"
PROGRESS_FIELDS = [
    "job_id",
    "status",
    "total_children",
    "pending_children",
    "running_children",
    "completed_children",
    "failed_children",
    "cancelled_children",
    "progress_text",
]


def all_commands():
    """Every command path, e.g. ['status', 'set'], from the Typer app itself."""

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if not subs:
            yield path
            return
        for name, sub in subs.items():
            yield from walk(sub, path + [name])

    return list(walk(typer.main.get_command(app), []))


def json_lines(result, argv) -> list:
    """The JSON values a command printed, one per line; fails on a non-zero exit, on empty
    output (every read command prints at least one value) and on a line that is not JSON."""
    assert result.exit_code == 0, (argv, result.stderr)
    lines = result.stdout.splitlines()
    assert lines, f"{argv} printed nothing"
    assert result.stdout.endswith("\n") and all(line.strip() for line in lines), (argv, result.stdout)
    values = []
    for line in lines:
        try:
            values.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"{argv} printed a line that is not JSON: {line!r}") from None
    return values


def test_every_read_command_takes_json(cli):
    job = cli("create", "j").stdout.strip()
    reads = [
        ["status", "get", job],
        ["progress", job],
        ["show", job],
        ["list"],
        ["tree", job],
        ["logs", job],
        ["events"],
        ["verify"],
        ["db", "path"],
    ]
    for argv in reads:
        values = json_lines(cli(*argv, "--json"), argv)
        assert all(isinstance(v, dict) for v in values), argv
    assert json.loads(cli("status", "get", job, "--json").stdout) == {"job_id": job, "status": "pending"}


def test_the_json_helper_fails_on_empty_output():
    class Result:
        exit_code, stdout, stderr = 0, "", ""

    with pytest.raises(AssertionError, match="printed nothing"):
        json_lines(Result(), ["list"])
    Result.stdout = "not json\n"
    with pytest.raises(AssertionError, match="not JSON"):
        json_lines(Result(), ["list"])
    Result.stdout = '{"a": 1}\n'
    assert json_lines(Result(), ["list"]) == [{"a": 1}]


def test_every_command_has_help(cli):
    commands = all_commands()
    assert ["status", "set"] in commands and ["verify"] in commands
    for path in commands:
        result = cli(*path, "--help", db=False)
        assert result.exit_code == 0, path
        cmd = typer.main.get_command(app)
        for part in path:
            cmd = cmd.commands[part]
        assert cmd.help and cmd.help.strip(), f"{path} has no help text"


def test_top_level_help_documents_exit_codes(cli):
    out = cli("--help", db=False).stdout
    for fragment in ["3 job not found", "4 transition not allowed", "5 database unusable", "124 timeout"]:
        assert fragment in " ".join(out.split())


def test_seed_scenario_progress_text_and_json(cli, jc):
    parent = seed_news_crawler(jc)
    result = cli("progress", parent)
    assert result.exit_code == 0
    assert result.stdout == SEED_TEXT + "\n"
    data = json.loads(cli("progress", parent, "--json").stdout)
    assert list(data) == PROGRESS_FIELDS
    assert data == {
        "job_id": parent,
        "status": "running",
        "total_children": 108,
        "pending_children": 66,
        "running_children": 1,
        "completed_children": 41,
        "failed_children": 0,
        "cancelled_children": 0,
        "progress_text": SEED_TEXT,
    }


def test_create_prints_id_alone_and_spawn_prints_ids(cli):
    result = cli("create", "News Crawler", "--type", "crawl", "--meta", "owner=ci", "--meta", "x=a=b")
    assert result.exit_code == 0 and result.stderr == ""
    parent = result.stdout.strip()
    assert result.stdout == parent + "\n"
    kids = cli("spawn", parent, "--name", "a", "--name", "b").stdout.split()
    assert kids == [f"{parent}.1", f"{parent}.2"]
    shown = json.loads(cli("show", parent, "--json").stdout)
    assert shown["metadata"] == {"owner": "ci", "x": "a=b"}
    assert shown["type"] == "crawl" and shown["status"] == "running"  # children pending: derived running
    assert shown["progress"]["progress_text"] == "2 pending, 0 running, 0 completed, 0 failed"


def test_create_with_id_is_idempotent_and_conflicts_exit_4(cli):
    assert cli("create", "build", "--id", "build-42").stdout == "build-42\n"
    n_events = len(cli("events", "--json").stdout.splitlines())
    again = cli("create", "build", "--id", "build-42")
    assert again.exit_code == 0 and again.stdout == "build-42\n"
    assert len(cli("events", "--json").stdout.splitlines()) == n_events  # no event
    other = cli("create", "deploy", "--id", "build-42")
    assert other.exit_code == 4
    assert "build-42" in other.stderr and other.stderr.count("\n") == 1


def test_spawn_names_from_file_and_stdin(cli, tmp_path):
    parent = cli("create", "p").stdout.strip()
    names = tmp_path / "names.txt"
    names.write_text("https://a.example/\n\nhttps://b.example/\n")
    ids = cli("spawn", parent, "--names-from", names).stdout.split()
    assert len(ids) == 2
    ids += cli("spawn", parent, "--names-from", "-", input="c\nd\n").stdout.split()
    assert ids == [f"{parent}.{i}" for i in range(1, 5)]
    listed = cli("list", "--parent", parent).stdout.splitlines()
    assert [line.split("\t")[2] for line in listed] == ["https://a.example/", "https://b.example/", "c", "d"]


def test_status_set_many_ids_all_or_nothing(cli):
    parent = cli("create", "p").stdout.strip()
    kids = cli("spawn", parent, "--count", "3").stdout.split()
    before = cli("events", "--json").stdout
    bad = cli("status", "set", kids[0], "nope", kids[1], "running")
    assert bad.exit_code == 3 and "nope" in bad.stderr
    assert cli("events", "--json").stdout == before
    assert [cli("status", "get", k).stdout.strip() for k in kids] == ["pending"] * 3
    ok = cli("status", "set", *kids, "running", "-m", "go")
    assert ok.exit_code == 0 and ok.stdout == ""
    assert [cli("status", "get", k).stdout.strip() for k in kids] == ["running"] * 3


def test_status_set_stdin(cli):
    parent = cli("create", "p").stdout.strip()
    kids = cli("spawn", parent, "--count", "5").stdout
    assert cli("status", "set", "--stdin", "completed", input=kids).exit_code == 0
    assert cli("progress", parent).stdout == "0 pending, 0 running, 5 completed, 0 failed\n"
    assert cli("status", "get", parent).stdout == "completed\n"


def test_same_status_is_a_noop_without_event(cli):
    job = cli("create", "j").stdout.strip()
    cli("status", "set", job, "running")
    before = cli("events").stdout
    again = cli("status", "set", job, "running")
    assert again.exit_code == 0
    assert cli("events").stdout == before


@pytest.mark.parametrize(
    "old,new", [("running", "pending"), ("completed", "running"), ("failed", "pending"), ("cancelled", "completed")]
)
def test_forbidden_transition_exit_4_unless_forced(cli, old, new):
    job = cli("create", "j").stdout.strip()
    if old != "running":
        cli("status", "set", job, "running")
    cli("status", "set", job, old)
    result = cli("status", "set", job, new)
    assert result.exit_code == 4 and f"{old} → {new}" in result.stderr
    assert cli("status", "get", job).stdout.strip() == old
    assert cli("status", "set", job, new, "--force").exit_code == 0
    assert cli("status", "get", job).stdout.strip() == new


def test_unknown_status_word_lists_valid_ones(cli):
    job = cli("create", "j").stdout.strip()
    for word in ["RUNNING", "done", "Pending"]:
        result = cli("status", "set", job, word)
        assert result.exit_code == 2
        assert "pending, running, completed, failed, cancelled" in result.stderr
        assert result.stderr.count("\n") == 1


def test_log_lines_for_status_changes_and_children(cli):
    parent = cli("create", "p").stdout.strip()
    kids = cli("spawn", parent, "--count", "2").stdout.split()
    cli("status", "set", kids[0], "running")
    cli("status", "set", kids[0], "failed", "--message", "timeout after 30s")
    cli("log", kids[0], "retrying soon", "--level", "warning")
    own = cli("logs", kids[0]).stdout.splitlines()
    assert own[1].endswith("[info] status changed: pending → running")
    assert own[2].endswith("[info] status changed: running → failed: timeout after 30s")
    assert own[3].endswith("[warning] retrying soon")
    view = [json.loads(line)["text"] for line in cli("logs", parent, "--children", "--json").stdout.splitlines()]
    assert f"child {kids[0]} pending → running: 1 pending, 1 running, 0 completed, 0 failed" in view
    assert f"child {kids[0]} running → failed: 1 pending, 0 running, 0 completed, 1 failed" in view
    assert f"child {kids[0]}: retrying soon" in view
    assert not any(
        line.startswith("child")
        for line in (json.loads(x)["text"] for x in cli("logs", parent, "--json").stdout.splitlines())
    )


def test_events_since_limit_and_job(cli):
    a = cli("create", "a").stdout.strip()
    b = cli("create", "b").stdout.strip()
    kids = cli("spawn", a, "--count", "2").stdout.split()
    cli("status", "set", b, "running")
    all_events = [json.loads(x) for x in cli("events", "--json").stdout.splitlines()]
    ids = [e["id"] for e in all_events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    since = [json.loads(x) for x in cli("events", "--since", ids[1], "--json").stdout.splitlines()]
    assert since == all_events[2:]
    assert len(cli("events", "--limit", 2).stdout.splitlines()) == 2
    of_a = {json.loads(x)["job_id"] for x in cli("events", "--job", a, "--json").stdout.splitlines()}
    assert of_a == {a, *kids}
    assert cli("events", "--since", "-1").exit_code == 2
    assert cli("events", "--since", "abc").exit_code == 2


def test_list_filters_and_json(cli):
    parent = cli("create", "p", "--type", "crawl").stdout.strip()
    kids = cli("spawn", parent, "--count", "3", "--type", "page").stdout.split()
    cli("status", "set", kids[1], "running")
    running = cli("list", "--all", "--status", "running", "--json").stdout.splitlines()
    assert {json.loads(x)["id"] for x in running} == {parent, kids[1]}
    assert [json.loads(x)["id"] for x in cli("list", "--all", "--type", "page", "--json").stdout.splitlines()] == kids
    assert cli("list", "--parent", "missing").exit_code == 3
    cli("status", "set", kids[2], "failed")
    cli("status", "set", kids[0], "cancelled")
    several = cli("list", "--all", "--status", "failed", "--status", "cancelled").stdout.splitlines()
    assert [line.split("\t")[0] for line in several] == [kids[0], kids[2]]  # any of them, oldest first
    assert cli("list", "--all", "--status", "failed", "--status", "nope").exit_code == 2
    assert cli("list", "--all", "--parent", parent).exit_code == 2


def test_list_overview_top_level_newest_first_with_progress(cli):
    """The default view: one row per top-level job (not one per child), newest first,
    the progress text as a fourth field in a pipe; --all and --parent as before."""
    first = cli("create", "first crawl").stdout.strip()
    kids = cli("spawn", first, "--count", "108").stdout.split()
    cli("status", "set", *kids[:41], "completed")
    cli("status", "set", kids[41], "running")
    second = cli("create", "second crawl").stdout.strip()
    lonely = cli("create", "no children").stdout.strip()
    lines = cli("list").stdout.splitlines()
    assert lines == [
        f"{lonely}\tpending\tno children\t",
        f"{second}\tpending\tsecond crawl\t",
        f"{first}\trunning\tfirst crawl\t66 pending, 1 running, 41 completed, 0 failed",
    ]
    rows = [json.loads(x) for x in cli("list", "--json").stdout.splitlines()]
    assert [r["id"] for r in rows] == [lonely, second, first]
    assert rows[2]["progress"]["completed_children"] == 41 and rows[0]["progress"] is None
    assert rows[0]["metadata"] == {}
    everything = cli("list", "--all").stdout.splitlines()
    assert len(everything) == 111 and everything[0] == f"{first}\trunning\tfirst crawl"
    assert [x.split("\t")[0] for x in cli("list", "--parent", first).stdout.splitlines()] == kids
    assert cli("list", "--status", "running").stdout.splitlines() == [
        f"{first}\trunning\tfirst crawl\t66 pending, 1 running, 41 completed, 0 failed"
    ]


def test_tree_shows_status_and_progress(cli):
    root = cli("create", "root").stdout.strip()
    mid = cli("create", "mid", "--parent", root).stdout.strip()
    leaf = cli("spawn", mid, "--count", "2").stdout.split()[0]
    cli("status", "set", leaf, "completed")
    lines = cli("tree", root).stdout.splitlines()
    assert lines[0] == f"{root} running root (0 pending, 1 running, 0 completed, 0 failed)"
    assert lines[1] == f"  {mid} running mid (1 pending, 0 running, 1 completed, 0 failed)"
    assert lines[2].startswith(f"    {leaf} completed")
    depths = [json.loads(x)["depth"] for x in cli("tree", root, "--json").stdout.splitlines()]
    assert depths == [0, 1, 2, 2]


def test_tree_in_a_pipe_is_depth_first(cli):
    """A pipeline -> 3 stages -> 4 shards each: every shard right under its own stage."""
    pipe = cli("create", "pipe", "--id", "pipe").stdout.strip()
    stages = cli("spawn", pipe, "--name", "build", "--name", "test", "--name", "deploy").stdout.split()
    shards = {stage: cli("spawn", stage, "--count", "4").stdout.split() for stage in stages}
    lines = cli("tree", pipe).stdout.splitlines()
    want = [pipe] + [x for stage in stages for x in [stage, *shards[stage]]]
    assert [line.split()[0] for line in lines] == want
    assert [len(line) - len(line.lstrip(" ")) for line in lines] == [0] + [2, 4, 4, 4, 4] * 3
    rows = [json.loads(x) for x in cli("tree", pipe, "--json").stdout.splitlines()]
    assert [r["id"] for r in rows] == want and [r["depth"] for r in rows] == [0] + [1, 2, 2, 2, 2] * 3
    assert all(r["metadata"] == {} for r in rows)  # the same shape as show --json
    assert [line.split()[0] for line in cli("tree", pipe, "--depth", "1").stdout.splitlines()] == [pipe, *stages]
    assert len(cli("tree", pipe, "--limit", "3").stdout.splitlines()) == 3
    assert cli("tree", pipe, "--depth", "-1").exit_code == 2
    assert cli("tree", pipe, "--limit", "0").exit_code == 2


def test_cancel_and_retry(cli):
    parent = cli("create", "p").stdout.strip()
    kids = cli("spawn", parent, "--count", "3").stdout.split()
    cli("status", "set", kids[0], "completed")
    cli("status", "set", kids[1], "failed")
    assert cli("status", "get", parent).stdout.strip() == "running"
    assert cli("retry", parent, "--failed-children").stdout.split() == [kids[1]]
    cancelled = cli("cancel", parent).stdout.split()
    assert cancelled == [kids[2], kids[1], parent]  # deepest first, the job itself last
    assert cli("status", "get", parent).stdout.strip() == "cancelled"
    assert cli("progress", parent).stdout == "0 pending, 0 running, 1 completed, 0 failed, 2 cancelled\n"
    assert cli("retry", parent).stdout.split() == [kids[1], kids[2]]
    assert cli("status", "get", parent).stdout.strip() == "running"
    assert cli("retry", kids[0]).exit_code == 4  # completed is not retryable
    assert cli("verify").exit_code == 0


def test_verify_reports_tampering(cli, db):
    job = cli("create", "j").stdout.strip()
    cli("status", "set", job, "running")
    assert cli("verify").exit_code == 0
    tamper(db, "UPDATE jobs SET status = 'completed' WHERE id = ?", (job,))
    result = cli("verify", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert any(job in p and "status" in p for p in report["problems"])


def test_db_path_resolution(cli, tmp_path, monkeypatch):
    explicit = tmp_path / "x.db"
    assert cli("--db", explicit, "db", "path", db=False).stdout == f"{explicit}\n"
    monkeypatch.setenv("JOBCTL_DB", str(tmp_path / "env.db"))
    assert cli("db", "path", db=False).stdout == f"{tmp_path / 'env.db'}\n"
    monkeypatch.delenv("JOBCTL_DB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert cli("db", "path", db=False).stdout == f"{tmp_path / 'xdg' / 'jobctl' / 'jobctl.db'}\n"
    assert cli("init", db=False).exit_code == 0
    assert (tmp_path / "xdg" / "jobctl" / "jobctl.db").exists()


def test_heartbeat_list_stale_and_reap(cli, db):
    parent = cli("create", "p").stdout.strip()
    kids = cli("spawn", parent, "--count", "3").stdout.split()
    cli("status", "set", *kids[:2], "running")
    # age the first child's start by an hour
    tamper(db, "UPDATE jobs SET started_at = '2000-01-01T00:00:00.000000Z' WHERE id = ?", (kids[0],))
    assert cli("list", "--stale-after", "5m").stdout.split("\t")[0] == kids[0]
    assert cli("heartbeat", kids[0]).exit_code == 0
    assert cli("list", "--stale-after", "5m").stdout == ""
    assert cli("reap", "--stale-after", "0.001s").stdout.split() == kids[:2]
    assert cli("progress", parent).stdout == "1 pending, 0 running, 0 completed, 2 failed\n"
    assert "heartbeat lost" in cli("logs", kids[0]).stdout
    assert cli("list", "--stale-after", "soon").exit_code == 2


def test_claim_takes_pending_children_in_order(cli):
    parent = cli("create", "p").stdout.strip()
    kids = cli("spawn", parent, "--count", "2").stdout.split()
    assert cli("claim", parent).stdout.strip() == kids[0]
    assert cli("claim", parent).stdout.strip() == kids[1]
    assert cli("claim", parent).exit_code == 3


@pytest.mark.parametrize(
    "name",
    [
        'it\'s "quoted"',
        "line1\nline2",
        "'); DROP TABLE jobs;--",
        "Nachrichten-Crawler äöü 新闻 🚀",
        "$(rm -rf /) `x` ; | &",
    ],
)
def test_odd_names_are_stored_verbatim(cli, name):
    job = cli("create", name).stdout.strip()
    assert json.loads(cli("show", job, "--json").stdout)["name"] == name
    assert cli("verify").exit_code == 0


# ----------------------------------------------------------- console script
@pytest.mark.slow
def test_console_script_seed_scenario(tmp_path):
    db = tmp_path / "seed.db"
    script = subprocess.run(
        ["bash", str(ROOT / "fixtures" / "news_crawler.sh")],
        capture_output=True,
        text=True,
        env={
            **__import__("os").environ,
            "JOBCTL_DB": str(db),
            "PATH": f"{__import__('pathlib').Path(JOBCTL).parent}:/usr/bin:/bin",
        },
    )
    assert script.returncode == 0, script.stderr
    parent = script.stdout.strip()
    result = run("progress", parent, db=db)
    assert result.returncode == 0 and result.stdout == SEED_TEXT + "\n"
    assert json.loads(run("progress", parent, "--json", db=db).stdout)["total_children"] == 108
    assert run("verify", db=db).returncode == 0


@pytest.mark.slow
def test_console_script_errors_are_one_line(tmp_path):
    db = tmp_path / "e.db"
    run("init", db=db, check=True)
    result = run("status", "get", "missing", db=db)
    assert result.returncode == 3
    assert result.stdout == "" and result.stderr == "jobctl: error: job missing not found\n"
    result = run("create", "x", "--no-such-option", db=db)
    assert result.returncode == 2 and result.stderr.count("\n") == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["status", "get", "x"],
        ["progress", "x"],
        ["show", "x"],
        ["tree", "x"],
        ["events"],
        ["logs", "x"],
        ["verify"],
        ["watch", "x"],
        ["wait", "x"],
    ],
)
def test_read_commands_refuse_a_missing_database_and_create_nothing(tmp_path, argv):
    db = tmp_path / "typo.db"
    result = run(*argv, db=db)
    assert result.returncode == 5, result.stderr
    assert result.stderr == (
        f"jobctl: error: no jobctl database at {db} (create one with `jobctl init` or any write)\n"
    )
    assert list(tmp_path.iterdir()) == []
    assert run("create", "x", db=db).returncode == 0  # a write still creates it


@pytest.mark.slow
def test_python_dash_m_works(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jobctl", "--db", str(tmp_path / "m.db"), "create", "x"], capture_output=True, text=True
    )
    assert result.returncode == 0 and len(result.stdout.split()) == 1


@pytest.mark.slow
def test_a_reader_that_leaves_early_is_not_an_error(tmp_path):
    db = tmp_path / "pipe.db"
    with __import__("jobctl").Jobctl(db) as jc:
        jc.spawn(jc.create("p"), count=20000)
    for cmd in (f"{JOBCTL} list | head -1", f"{JOBCTL} events | head -1", f"{JOBCTL} list --json | head -1"):
        result = subprocess.run(
            ["bash", "-c", f"set -o pipefail; {cmd}"],
            capture_output=True,
            text=True,
            env={**__import__("os").environ, "JOBCTL_DB": str(db)},
        )
        assert result.returncode == 0, (cmd, result.stderr)
        assert len(result.stdout.splitlines()) == 1 and result.stderr == ""


def test_markup_in_names_is_shown_as_text_on_a_terminal(cli, monkeypatch):
    import jobctl.render as render

    job = cli("create", "[/] oops [bold red]hi", "--type", "[x]").stdout.strip()
    monkeypatch.setattr(render, "is_terminal", lambda: True)
    monkeypatch.setattr(
        render, "console", lambda **kw: __import__("rich.console").console.Console(force_terminal=True, width=200, **kw)
    )
    for argv in (["list"], ["show", job], ["tree", job]):
        result = cli(*argv)
        assert result.exit_code == 0, (argv, result.exception)
        assert "[/] oops [bold red]hi" in result.stdout, argv


def test_a_heartbeat_from_an_earlier_attempt_does_not_make_a_new_one_stale(cli, db):
    parent = cli("create", "p").stdout.strip()
    kid = cli("spawn", parent, "--count", "1").stdout.strip()
    cli("status", "set", kid, "running")
    cli("heartbeat", kid)
    cli("status", "set", kid, "failed")
    # that attempt's heartbeat was long ago
    tamper(db, "UPDATE jobs SET last_heartbeat = '2000-01-01T00:00:00.000000Z' WHERE id = ?", (kid,))
    cli("retry", kid)
    cli("status", "set", kid, "running")  # a new attempt, started just now
    assert cli("list", "--stale-after", "5m").stdout == ""
    assert cli("reap", "--stale-after", "5m").stdout == ""
    assert cli("status", "get", kid).stdout == "running\n"


def test_spawn_goes_on_after_a_chosen_id_that_took_a_number(cli):
    assert cli("create", "P", "--id", "P").exit_code == 0
    assert cli("create", "r", "--id", "P.1").exit_code == 0  # a root that looks like P's first child
    first = cli("spawn", "P", "--count", "3")
    assert first.exit_code == 0, first.stderr
    assert first.stdout.split() == ["P.2", "P.3", "P.4"]
    assert cli("spawn", "P", "--count", "2").stdout.split() == ["P.5", "P.6"]
    assert cli("create", "one more", "--parent", "P").stdout.strip() == "P.7"
    assert cli("progress", "P").stdout == "6 pending, 0 running, 0 completed, 0 failed\n"
    assert cli("verify").exit_code == 0


def test_verify_reports_an_event_that_contradicts_the_history(cli, db):
    job = cli("create", "j").stdout.strip()
    cli("status", "set", job, "running")
    # an invented event: it claims the job was completed
    tamper(
        db,
        "INSERT INTO events (id, job_id, root_id, kind, old_status, new_status, at)"
        " VALUES ((SELECT max(id) + 1 FROM events), ?, ?, 'status', 'completed', 'running',"
        " '2030-01-01T00:00:00.000000Z')",
        (job, job),
    )
    report = json.loads(cli("verify", "--json").stdout)
    assert any("completed → running, but it was running" in p for p in report["problems"])


def test_verify_reports_a_parent_left_behind_by_its_children(cli, db):
    """A write that changed children without deriving their parent again (the
    parent's events, the children's and the counts each agree) is found."""
    parent = cli("create", "p").stdout.strip()
    (kid,) = cli("spawn", parent, "--count", "1").stdout.split()
    cli("status", "set", kid, "running")
    assert cli("verify").exit_code == 0
    # the child completes behind jobctl's back, row, event and count alike; P stays running
    tamper(
        db,
        "UPDATE jobs SET status = 'completed', completed_at = started_at, updated_at = started_at WHERE id = ?",
        (kid,),
    )
    tamper(
        db,
        "INSERT INTO events (id, job_id, parent_id, root_id, kind, old_status, new_status, at, attempt)"
        " SELECT (SELECT max(id) + 1 FROM events), id, parent_id, root_id, 'status', 'running', 'completed',"
        " started_at, 1 FROM jobs WHERE id = ?",
        (kid,),
    )
    tamper(db, "UPDATE child_counts SET running = 0, completed = 1 WHERE parent_id = ?", (parent,))
    result = cli("verify", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["problems"] == [
        f"job {parent}: status running, derived from children, but they give completed"
        " (0 pending, 0 running, 1 completed, 0 failed)"
    ]


@pytest.mark.slow
def test_the_readme_tour_works_as_written(tmp_path):
    """Run the README's tour with bash; each `# <progress text>` comment is what the line prints."""
    import os
    import re
    from pathlib import Path

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## A tour\n+```sh\n(.*?)```", readme, re.S)[1]
    script, expected = ["set -euo pipefail"], []
    for line in block.splitlines():
        command, _, comment = line.partition("#")
        if command.strip().startswith("jobctl progress"):
            script.append(f"{command.strip()} >> progress.txt")
            expected.append(comment.strip())
        else:
            script.append(command.rstrip())
    env = {**os.environ, "PATH": f"{Path(JOBCTL).parent}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "progress.txt").read_text().splitlines() == expected
    assert run("verify", db=tmp_path / "jobs.db").returncode == 0


def test_events_are_paged_without_losing_or_repeating_one(jc):
    parent = jc.create("p")
    mid = jc.create("mid", parent=parent)
    other = jc.create("other")
    kids = jc.spawn(mid, count=30)
    jc.set_status(kids[:10], "running")
    jc.log(other, "noise")
    everything = jc.events()
    assert [e["id"] for e in jc.iter_events(page=7)] == [e["id"] for e in everything]
    below_mid = [e for e in everything if e["job_id"] in {mid, *kids}]
    assert list(jc.iter_events(job=mid, page=4)) == below_mid
    assert list(jc.iter_events(job=mid, page=4, limit=9)) == below_mid[:9]
    assert list(jc.iter_events(job=parent, since=below_mid[3]["id"], page=5)) == [
        e for e in everything if e["root_id"] == parent and e["id"] > below_mid[3]["id"]
    ]


def test_nul_in_text_is_refused_on_both_backends(jc, cli, tmp_path):
    """PostgreSQL cannot store NUL in text, so neither backend takes it: one rule, exit 2."""
    from jobctl import UsageError

    parent = jc.create("p")
    for call in (
        lambda: jc.create("a\x00b"),
        lambda: jc.create("a", type="t\x00"),
        lambda: jc.spawn(parent, names=["ok", "x\x00"]),
        lambda: jc.log(parent, "m\x00"),
        lambda: jc.set_status([parent], "running", message="\x00"),
    ):
        with pytest.raises(UsageError, match="NUL"):
            call()
    names = tmp_path / "names.txt"
    names.write_bytes(b"one\ntw\x00o\n")
    result = cli("spawn", parent, "--names-from", names)
    assert result.exit_code == 2 and "NUL" in result.stderr
    assert jc.progress(parent)["total_children"] == 0 and len(jc.events()) == 1


def test_status_set_with_two_status_words_says_so(cli):
    job = cli("create", "x").stdout.strip()
    result = cli("status", "set", job, "running", "completed")
    assert result.exit_code == 2
    assert result.stderr == (
        "jobctl: error: only one status can be given (running and completed are both"
        " status words; the last argument is the status)\n"
    )
    assert cli("status", "get", job).stdout == "pending\n"


def test_dash_h_is_help_everywhere(cli):
    for argv in (["-h"], ["status", "-h"], ["status", "set", "-h"], ["list", "-h"], ["db", "path", "-h"]):
        result = cli(*argv)
        assert result.exit_code == 0 and result.stdout.startswith("Usage: jobctl"), argv
    usage = cli("create", "-h").stdout.splitlines()[0]
    assert usage == "Usage: jobctl create [OPTIONS] NAME"  # not {name}
    assert "<str>" not in cli("create", "-h").stdout


def test_shell_completion_is_on():
    # what the installed script asks (`--show-completion` detects the parent shell,
    # which a detached test run may not have): the script, then completions
    result = run(env={"_JOBCTL_COMPLETE": "source_bash"})
    assert result.returncode == 0 and "complete -o default -F _jobctl_completion jobctl" in result.stdout
    result = run(env={"_JOBCTL_COMPLETE": "complete_bash", "COMP_WORDS": "jobctl pol", "COMP_CWORD": "1"})
    assert (result.returncode, result.stdout.split()) == (0, ["policy"])
    result = run(env={"_JOBCTL_COMPLETE": "complete_bash", "COMP_WORDS": "jobctl watch x --exit", "COMP_CWORD": "3"})
    assert result.stdout.split() == ["--exit-status"]


def test_verify_finds_a_job_without_events_and_events_without_a_job(cli, db):
    job = cli("create", "j").stdout.strip()
    tamper(
        db,
        "INSERT INTO jobs (id, root_id, name, status, created_at, updated_at)"
        " VALUES ('aaa-ghost', 'aaa-ghost', 'ghost', 'pending', '2030-01-01', '2030-01-01')",
    )
    problems = json.loads(cli("verify", "--json").stdout)["problems"]
    assert problems == ["job aaa-ghost: no create event"]
    if not db.startswith("postgresql://"):  # PostgreSQL's foreign key refuses an event of no job
        tamper(
            db,
            "INSERT INTO events (job_id, root_id, kind, new_status, at)"
            " VALUES ('zzz-lost', 'zzz-lost', 'create', 'pending', '2030-01-01')",
        )
        problems = json.loads(cli("verify", "--json").stdout)["problems"]
        assert problems == ["job aaa-ghost: no create event", "job zzz-lost: in the events but not in the jobs table"]
    assert cli("status", "get", job).stdout == "pending\n"


def test_events_of_a_leaf_are_its_own_among_its_siblings(jc):
    """One shard of a big fan-out, its events interleaved with its siblings': following
    it gives its own events, in order, and none of theirs."""
    parent = jc.create("p")
    kids = jc.spawn(parent, count=50)
    jc.set_status(kids[:7], "running")
    jc.set_status([kids[7]], "running")
    jc.log(kids[8], "a sibling's line")
    jc.set_status([kids[7]], "completed", message="done")
    jc.set_status(kids[8:], "running")
    got = [(e["job_id"], e["kind"], e["new_status"]) for e in jc.iter_events(job=kids[7])]
    assert got == [(kids[7], "create", "pending"), (kids[7], "status", "running"), (kids[7], "status", "completed")]
    tree = [e for e in jc.events(job=parent) if e["job_id"] == kids[7]]
    assert list(jc.iter_events(job=kids[7])) == tree  # the same events as the whole tree's read gives for it


ODD_TEXTS = [
    "".join(map(chr, range(1, 32))) + "\x7f",
    'quote " backslash \\ slash /',
    "é ü 中文 🎉 \u2028 \u2029 \ufeff",
    "</script><!--",
    "%s %% ? $1",
    "tab\tnew\nline\r",
]


def test_events_json_made_by_the_database_is_what_python_prints(jc, db):
    """events --json builds each line in SQL (json_object / row_to_json): the same
    text, byte for byte, as compact json.dumps of render.event_json, for odd text
    and numbers, on both stores."""
    from jobctl import render

    p = jc.create(ODD_TEXTS[0], type="t")
    kids = jc.spawn(p, names=ODD_TEXTS)
    for kid, text in zip(kids, ODD_TEXTS):
        jc.log(kid, text, level="warning")
        jc.set_status([kid], "running", message=text)
    for kid, seconds in zip(kids, [0.003, 75.5, 1.0, 123456.789, 0.1, 2.5]):
        jc.finish(kid, "failed", message="exit code 3", exit_code=3, duration=seconds)
    jc.set_policy(p, allow_failures="50%")
    result = run("events", "--json", db=db)
    assert result.returncode == 0, result.stderr

    def dumps(e):
        return json.dumps(render.event_json(e), ensure_ascii=False, separators=(",", ":"))

    want = [dumps(e) for e in jc.events()]
    got = result.stdout.split("\n")[:-1]  # (not splitlines: U+2028 and \x1c are text inside a line)
    assert len(got) == len(want) > 25
    for g, w in zip(got, want):
        assert json.loads(g) == json.loads(w)
        if ":1.0," not in w:  # PostgreSQL prints the float 1.0 as 1 (the same number in JSON)
            assert g == w
    assert run("events", "--json", "--job", kids[2], "--since", "3", "--limit", "2", db=db).stdout.split("\n")[:-1] == [
        dumps(e) for e in jc.events(job=kids[2], since=3, limit=2)
    ]
