import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jobctl import Jobctl
from jobctl.cli import app

ROOT = Path(__file__).resolve().parent.parent
# The installed console script, next to the interpreter running the tests.
JOBCTL = shutil.which("jobctl", path=str(Path(sys.executable).parent)) or "jobctl"
# Larger sizes for the slow cases: JOBCTL_FULL=1 python3 dev.py test
FULL = os.environ.get("JOBCTL_FULL") == "1"


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "jobs.db"


@pytest.fixture
def jc(db_path):
    with Jobctl(db_path) as j:
        yield j


class Cli:
    """The Typer app in-process, through typer.testing.CliRunner."""

    def __init__(self, db_path):
        self.db_path = db_path
        self.runner = CliRunner()

    def __call__(self, *args, input=None, db=True):
        argv = (["--db", str(self.db_path)] if db else []) + [str(a) for a in args]
        return self.runner.invoke(app, argv, input=input)


@pytest.fixture
def cli(db_path):
    return Cli(db_path)


def run(*args, db=None, input=None, env=None, check=False, timeout=60):
    """The installed `jobctl` console script in a subprocess."""
    full_env = dict(os.environ, **(env or {}))
    if db is not None:
        full_env["JOBCTL_DB"] = str(db)
    return subprocess.run([JOBCTL, *map(str, args)], input=input, capture_output=True, text=True,
                          env=full_env, check=check, timeout=timeout)


def seed_news_crawler(jc: Jobctl) -> str:
    """The seed scenario through the API: 108 children, 41 completed, 1 running."""
    parent = jc.create("News Crawler", type="crawl")
    kids = jc.spawn(parent, count=108, type="page")
    jc.set_status(kids[:41], "running")
    jc.set_status(kids[:41], "completed")
    jc.set_status([kids[41]], "running")
    return parent
