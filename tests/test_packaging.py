"""jobctl as a package: its distribution name on every install line, its
metadata and single version, the changelog, `--version`, shell completion and
the GitHub Action (action.yml and the script it runs, run here as GitHub would).
The built sdist and wheel are tested by .ci/smoke.sh in CI (a fresh virtualenv
outside the checkout)."""

import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from conftest import JOBCTL, ROOT, run
from jobctl import DISTRIBUTION, Jobctl, __version__

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
ACTION = ROOT / "action.yml"
ACTION_SCRIPT = ROOT / "action" / "run.sh"


# ------------------------------------------------------------ install lines
def documents() -> list[Path]:
    """Where install lines are written for people: the README, the changelog,
    docs/, the action, and jobctl's own sources (its error messages)."""
    return [
        ROOT / "README.md",
        ROOT / "CHANGELOG.md",
        ACTION,
        ACTION_SCRIPT,
        *sorted((ROOT / "docs").rglob("*.md")),
        *sorted((ROOT / "jobctl").rglob("*.py")),
    ]


# `pip install` and its words up to the end of the command or the sentence
INSTALL = re.compile(r"pip3? install\b(.*?)(?=[`#|;&()]|\.\s|\.?$)", re.M)
NAME = re.compile(r"\{DISTRIBUTION\}|[A-Za-z0-9][A-Za-z0-9._-]*")
OLD_EXTRA = re.compile(r"(?<![\w-])jobctl\[")  # `jobctl[postgres]`: the index's jobctl, which has no extras


def foreign_installs(text: str) -> list[str]:
    """What `pip install` lines in `text` would install other than this
    distribution (or a local path, or `{DISTRIBUTION}` in an f-string), and
    any `jobctl[extra]` written anywhere."""
    bad = [m.group(0) for m in OLD_EXTRA.finditer(text)]
    for line in INSTALL.finditer(text):
        for word in line.group(1).split():
            word = word.strip("'\"")
            if not word or word.startswith("-") or word.startswith((".", "/")):
                continue  # an option, or a path (`pip install .`)
            name = NAME.match(word)
            if name is None or name.group(0) not in (DISTRIBUTION, "{DISTRIBUTION}"):
                bad.append(f"pip install {word}")
    return bad


def test_the_scan_finds_a_foreign_distribution():
    assert foreign_installs("run: pip install 'jobctl[postgres]'") == ["jobctl[", "pip install jobctl[postgres]"]
    assert foreign_installs("pip install jobctl") == ["pip install jobctl"]
    assert foreign_installs('pip install --quiet "$spec"') == ["pip install $spec"]
    assert foreign_installs("`pip install requests` and `pip install -e .`") == ["pip install requests"]
    assert foreign_installs(f"pip install '{DISTRIBUTION}[postgres,web]'  # and `pip install .`") == []
    assert foreign_installs(f"Needs it: pip install '{DISTRIBUTION}[web]'. Ctrl-C stops it.") == []
    assert foreign_installs("Needs it: pip install jobctl. Then run it.") == ["pip install jobctl"]
    assert foreign_installs("f\"missing (pip install '{DISTRIBUTION}[{extra}]')\"") == []


def test_every_install_line_names_this_distribution():
    assert DISTRIBUTION != "jobctl"  # the index's `jobctl` is an unrelated project
    found = {str(p.relative_to(ROOT)): foreign_installs(p.read_text()) for p in documents()}
    assert {p: bad for p, bad in found.items() if bad} == {}
    lines = sum(len(INSTALL.findall(p.read_text())) for p in documents())
    assert lines >= 10  # the scan reads the README's recipes, not nothing


def test_the_repository_owner_is_one_throughout():
    """The GitHub owner (a placeholder until the repository is published) is the
    same in the project URLs, the README's `uses:` and the changelog's links."""
    texts = [(ROOT / f).read_text() for f in ("pyproject.toml", "README.md", "CHANGELOG.md", "action.yml")]
    owners = {o for t in texts for o in re.findall(r"(?:github\.com/|uses: )([\w.-]+)/jobctl\b", t)}
    assert len(owners) == 1, owners
    assert PROJECT["urls"]["Source"] == f"https://github.com/{owners.pop()}/jobctl"


# ------------------------------------------------------------------ metadata
def test_the_version_is_said_once():
    assert "version" not in PROJECT and PROJECT["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "jobctl.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    # the installed metadata was made from it
    assert metadata.version(DISTRIBUTION) == __version__


def test_the_metadata_is_complete():
    assert PROJECT["name"] == DISTRIBUTION
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n\nCopyright (c) ")
    assert PROJECT["authors"] == [{"name": "jobctl developers"}]
    assert set(PROJECT["urls"]) >= {"Source", "Issues", "Changelog"}
    assert PROJECT["requires-python"] == ">=3.11" and PROJECT["keywords"]
    assert "Programming Language :: Python :: 3.11" in PROJECT["classifiers"]
    assert not [c for c in PROJECT["classifiers"] if c.startswith("License ::")]  # PEP 639: the expression says it
    # what pip show reads: the installed distribution's METADATA
    meta = metadata.metadata(DISTRIBUTION)
    assert meta["License-Expression"] == "MIT" and meta["Author"] == "jobctl developers"
    assert meta["Requires-Python"] == ">=3.11"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert urls["Changelog"] == PROJECT["urls"]["Changelog"] and urls["Issues"].endswith("/issues")
    assert {"postgres", "web"} <= set(meta.get_all("Provides-Extra"))


def test_the_extras_named_by_version_are_pyprojects():
    from jobctl.commands import EXTRAS

    extras = PROJECT["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        wanted = {re.match(r"[\w.-]+", req).group(0) for req in extras[extra]}
        assert wanted <= {d for dists in modules.values() for d in dists}, extra


def test_the_changelog_has_unreleased_then_this_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    sections = re.findall(r"^## \[([^\]]+)\](.*)$", text, re.M)
    assert sections[0] == ("Unreleased", "")
    assert sections[1][0] == __version__ and re.fullmatch(r" - \d{4}-\d{2}-\d{2}", sections[1][1])
    for name, _ in sections:  # each heading is a link
        assert re.search(rf"^\[{re.escape(name)}\]: https://", text, re.M), name
    unreleased = text.split("\n## [", 2)[1]
    assert re.search(r"^### (Added|Changed|Deprecated|Removed|Fixed|Security)$", unreleased, re.M)


# ----------------------------------------------------------------- --version
def version_lines(env_python_code: str = "") -> list[str]:
    code = f"import sys; {env_python_code} from jobctl.fastpath import main; sys.exit(main(['--version']))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


@pytest.mark.slow
def test_version_says_the_python_and_the_extras():
    result = run("--version")
    assert result.returncode == 0 and result.stderr == ""
    python = sys.version.split()[0]
    assert result.stdout.splitlines() == [
        f"jobctl {__version__}",
        f"Python {python}",
        f"postgres: psycopg2 {metadata.version('psycopg2-binary')}",
        f"web: starlette {metadata.version('starlette')}, uvicorn {metadata.version('uvicorn')}",
    ]
    # an extra whose module cannot be found is missing, with the line that installs it
    assert version_lines("sys.modules['uvicorn'] = None; sys.modules['psycopg2'] = None;")[2:] == [
        f"postgres: missing (pip install '{DISTRIBUTION}[postgres]')",
        f"web: missing (pip install '{DISTRIBUTION}[web]')",
    ]


def imported(*argv: str, db: Path) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "jobctl", *argv],
        capture_output=True,
        text=True,
        env=dict(os.environ, JOBCTL_DB=str(db)),
        check=True,
    )
    return {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.slow
def test_version_imports_no_extra_and_status_set_no_metadata(tmp_path):
    """--version finds the extras on disk without importing them (nor typer or
    rich); `status set` stays clear of importlib.metadata, which --version uses."""
    db = tmp_path / "jobs.db"
    modules = imported("--version", db=db)
    assert "importlib.metadata" in modules  # the probe below can see it
    assert not modules & {"typer", "rich", "psycopg2", "starlette", "uvicorn"}
    job = run("create", "x", db=db).stdout.strip()
    assert "importlib.metadata" not in imported("status", "set", job, "running", db=db)


# ----------------------------------------------------------------- completion
@pytest.mark.slow
def test_install_completion_in_bash_completes_commands(tmp_path):
    """`jobctl --install-completion` run from bash writes a script that bashrc
    sources, and the function it defines completes `jobctl sta` to `status`."""
    env = dict(os.environ, HOME=str(tmp_path), PATH=f"{Path(JOBCTL).parent}{os.pathsep}{os.environ['PATH']}")
    # `; true`: bash stays jobctl's parent (no exec), so that is the shell detected
    result = subprocess.run(
        ["bash", "-c", "jobctl --install-completion; true"], capture_output=True, text=True, env=env, timeout=60
    )
    script = tmp_path / ".bash_completions" / "jobctl.sh"
    assert result.stdout.startswith(f"bash completion installed in {script}"), result.stdout + result.stderr
    assert f"source '{script}'" in (tmp_path / ".bashrc").read_text()
    complete = (
        "source ~/.bash_completions/jobctl.sh; COMP_WORDS=(jobctl sta); COMP_CWORD=1;"
        ' _jobctl_completion jobctl; echo "${COMPREPLY[*]}"'
    )
    result = subprocess.run(["bash", "-c", complete], capture_output=True, text=True, env=env, timeout=60)
    assert result.stdout == "status\n", result.stderr


# --------------------------------------------------------------- the action
def test_action_yml_is_a_composite_action_passing_every_input():
    action = yaml.safe_load(ACTION.read_text())
    assert {"name", "description", "inputs", "runs"} <= set(action)
    inputs = action["inputs"]
    assert {"command", "job", "report", "db", "version", "extras"} <= set(inputs)
    assert inputs["job"]["required"] is True and inputs["command"]["default"] == "watch"
    assert all(spec.get("description") for spec in inputs.values())
    assert action["runs"]["using"] == "composite"
    steps = action["runs"]["steps"]
    assert steps and all(step.get("shell") == "bash" for step in steps if "run" in step)
    (step,) = [s for s in steps if "run" in s]
    assert step["run"] == 'bash "$GITHUB_ACTION_PATH/action/run.sh"' and ACTION_SCRIPT.is_file()
    # every input reaches the script as INPUT_<NAME>, and the script reads each one
    assert step["env"] == {f"INPUT_{n.upper()}": f"${{{{ inputs.{n} }}}}" for n in inputs}
    script = ACTION_SCRIPT.read_text()
    assert all(f"INPUT_{n.upper()}" in script for n in inputs)
    assert action["outputs"]["exit-code"]["value"] == f"${{{{ steps.{step['id']}.outputs.exit-code }}}}"


def run_action(tmp_path: Path, **inputs: str) -> tuple[subprocess.CompletedProcess, str, str]:
    """action/run.sh as the composite step runs it: the inputs as INPUT_*, GitHub's
    files; the jobctl on PATH is this one (install: false: no network here)."""
    summary, output = tmp_path / "summary.md", tmp_path / "output"
    summary.write_text("")
    output.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "INPUT_", "JOBCTL_"))}
    env.update(
        {f"INPUT_{k.upper()}": v for k, v in inputs.items()},
        INPUT_INSTALL="false",
        GITHUB_STEP_SUMMARY=str(summary),
        GITHUB_OUTPUT=str(output),
        RUNNER_TEMP=str(tmp_path),
        PATH=f"{Path(JOBCTL).parent}{os.pathsep}{os.environ['PATH']}",
    )
    result = subprocess.run(
        ["bash", str(ACTION_SCRIPT)], capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL
    )
    return result, summary.read_text(), output.read_text()


@pytest.fixture
def outcomes(tmp_path):
    """A database with a completed parent and a failed one."""
    db = tmp_path / "jobs.db"
    with Jobctl(db) as jc:
        good, bad = jc.create("nightly good"), jc.create("nightly bad")
        for parent, status, message in ((good, "completed", "fine"), (bad, "failed", "shard 2 broke")):
            (kid,) = jc.spawn(parent, count=1)
            jc.set_status([kid], "running")
            jc.set_status([kid], status, message=message)
    return str(db), good, bad


@pytest.mark.slow
def test_the_action_watches_and_writes_the_step_summary(tmp_path, outcomes):
    db, good, bad = outcomes
    result, summary, output = run_action(tmp_path, job=bad, db=db, report="markdown")
    assert result.returncode == 1, result.stderr  # watch --exit-status: the job failed
    assert f"jobctl action: jobctl watch {bad} --exit-status --report markdown" in result.stderr
    assert "nightly bad" in summary and "shard 2 broke" in summary  # the report, with the failure
    assert output == "exit-code=1\n"
    result, summary, output = run_action(tmp_path, job=good, db=db, report="markdown", args="--strict")
    assert result.returncode == 0 and "nightly good" in summary and output == "exit-code=0\n", result.stderr


@pytest.mark.slow
def test_the_action_runs_other_commands(tmp_path, outcomes):
    db, good, bad = outcomes
    result, summary, _ = run_action(tmp_path, command="report", job=bad, db=db, report="json")
    assert result.returncode == 0 and summary == ""
    assert json.loads(result.stdout)["children"][0]["message"] == "shard 2 broke"
    result, _, output = run_action(tmp_path, command="status get", job=bad, db=db)
    assert (result.returncode, result.stdout, output) == (0, "failed\n", "exit-code=0\n")


@pytest.mark.slow
@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"job": ""}, "jobctl action: the input 'job' is required\n"),
        (
            {"command": "progress", "job": "x", "report": "markdown"},
            "jobctl action: the input 'report' goes with the commands watch and report, not progress\n",
        ),
    ],
)
def test_the_action_refuses_bad_inputs(tmp_path, inputs, message):
    result, summary, output = run_action(tmp_path, db=str(tmp_path / "jobs.db"), **inputs)
    assert (result.returncode, result.stderr, summary, output) == (2, message, "", "")
    assert not (tmp_path / "jobs.db").exists()
