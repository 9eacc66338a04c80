"""Outputs gathered from children (issue 21): `output set`, `run --output-file`
(key=value lines, as $GITHUB_OUTPUT), `outputs P [--json]`; each change an
`output` event; sizes capped with a clear error. Both stores; `run` as a real
subprocess."""

import json

import pytest

import jobctl
from conftest import run, snapshot
from jobctl import Jobctl
from jobctl.model import MAX_OUTPUT_VALUE


def test_outputs_are_gathered_by_child_name(jc):
    p = jc.create("shards")
    a, b, c = jc.spawn(p, names=["shard-a", "shard-b", "shard-a"])
    jc.set_output(a, "count", "3")
    jc.set_output(b, "report", {"passed": 40, "failed": [1, 2]})
    jc.set_output(a, "count", "4")  # the last value wins
    jc.set_output(c, "count", "5")  # a name two children share: the later one's has its id
    jc.set_output(p, "own", "x")  # the parent's own output is not its children's
    assert jc.outputs(p) == {
        "shard-a": {"count": "4"},
        "shard-b": {"report": {"passed": 40, "failed": [1, 2]}},
        f"shard-a ({c})": {"count": "5"},
    }
    assert [e["message"] for e in jc.events(job=a) if e["kind"] == "output"] == ["count=3", "count=4"]
    assert [e["message"] for e in jc.events(job=b) if e["kind"] == "output"] == ['report:={"passed":40,"failed":[1,2]}']
    assert jc.outputs(a) == {}
    assert jc.verify() == []


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("", "x", "bad output key"),
        ("has space", "x", "bad output key"),
        ("k" * 101, "x", "bad output key"),
        ("big", "x" * (MAX_OUTPUT_VALUE + 1), "a value is at most 65,536 characters"),
    ],
)
def test_bad_outputs_are_refused_and_change_nothing(db, jc, key, value, message):
    p = jc.create("p")
    before = snapshot(db)
    with pytest.raises(jobctl.UsageError) as info:
        jc.set_output(p, key, value)
    assert message in str(info.value) and info.value.exit_code == 2
    assert snapshot(db) == before


def test_cli_output_set_and_outputs(db):
    p = run("create", "shards", db=db, check=True).stdout.strip()
    a = run("spawn", p, "--name", "lint", db=db, check=True).stdout.strip()
    assert run("output", "set", a, "warnings", "7", db=db).returncode == 0
    r = run("output", "set", a, "summary", "--json", db=db, input='{"ok": true}')
    assert r.returncode == 0, r.stderr
    r = run("outputs", p, "--json", db=db)
    assert json.loads(r.stdout) == {"lint": {"warnings": "7", "summary": {"ok": True}}}
    assert run("outputs", p, db=db).stdout == 'lint\twarnings\t7\nlint\tsummary\t{"ok": true}\n'
    before = snapshot(db)
    for args, code in [
        (("output", "set", "nope", "k", "v"), 3),
        (("output", "set", a, "k"), 2),
        (("output", "set", a, "k=", "v"), 2),
        (("outputs", "nope"), 3),
    ]:
        r = run(*args, db=db)
        assert (r.returncode, r.stdout, r.stderr.count("\n")) == (code, "", 1), (args, r.stderr)
    r = run("output", "set", a, "k", "--json", db=db, input="{not json")
    assert r.returncode == 2 and "not JSON" in r.stderr
    assert snapshot(db) == before


def test_run_output_file_stores_what_the_command_wrote(db, tmp_path):
    p = run("create", "shards", db=db, check=True).stdout.strip()
    out = tmp_path / "out.txt"
    out.write_text("stale=1\n")  # emptied before the command runs
    script = 'echo "count=3" >> "$JOBCTL_OUTPUT"; printf "notes<<EOF\\nline 1\\nline 2\\nEOF\\n" >> "$JOBCTL_OUTPUT"'
    r = run("run", "--parent", p, "--name", "shard 1", "--output-file", out, "--", "sh", "-c", script, db=db)
    assert r.returncode == 0, r.stderr
    with Jobctl(db) as jc:
        assert jc.outputs(p) == {"shard 1": {"count": "3", "notes": "line 1\nline 2"}}
        assert jc.verify() == []


@pytest.mark.parametrize(
    "content,message",
    [
        ("no equals sign\n", "--output-file line 1: not key=value"),
        ("bad key=1\n", "bad output key"),
        ("v<<EOF\nnever closed\n", "no closing 'EOF'"),
        ("big=" + "x" * (MAX_OUTPUT_VALUE + 1) + "\n", "at most 65,536 characters"),
    ],
)
def test_a_bad_output_file_fails_the_job_with_a_clear_message(db, tmp_path, content, message):
    p = run("create", "shards", db=db, check=True).stdout.strip()
    (tmp_path / "content").write_text(content)
    out = tmp_path / "out.txt"
    r = run("run", "--parent", p, "--output-file", out, "--", "cp", tmp_path / "content", out, db=db)
    assert r.returncode == 1
    with Jobctl(db) as jc:
        (kid,) = jc.list(parent=p)
        assert kid["status"] == "failed"
        last = [e for e in jc.events(job=kid["id"]) if e["kind"] == "status"][-1]
        assert message in last["message"]
        assert jc.outputs(p) == {}


def test_output_file_goes_with_one_job(db, tmp_path):
    p = run("create", "shards", db=db, check=True).stdout.strip()
    before = snapshot(db)
    r = run("run", "--parent", p, "--each", "--output-file", tmp_path / "o", "--", "true", db=db, input="a\n")
    assert r.returncode == 2 and "--output-file goes with one job" in r.stderr
    r = run("run", "--parent", p, "--output-file", tmp_path / "no" / "such" / "dir", "--", "true", db=db)
    assert r.returncode == 2 and "cannot write --output-file" in r.stderr
    assert snapshot(db) == before


def test_replay_knows_output_events():
    from jobctl import model

    create = {
        "id": 1,
        "kind": "create",
        "job_id": "a",
        "parent_id": None,
        "new_status": "pending",
        "at": "t1",
        "attempt": 1,
        "message": None,
    }
    good = {"id": 2, "kind": "output", "job_id": "a", "message": "count=3"}
    problems = []
    model.replay([create, good], problems)
    assert problems == []
    model.replay([create, {**good, "message": "not an output"}, {**good, "id": 4, "job_id": "b"}], problems)
    assert problems == [
        "event 2: an output of job a that is not key=value",
        "event 4: an output of job b that was never created",
    ]
    assert model.parse_output('r:={"a":[1]}') == ("r", {"a": [1]}) and model.parse_output("k=a=b") == ("k", "a=b")
