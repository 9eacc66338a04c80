"""`jobctl top`: the live table in a real pseudo-terminal, updated from the events."""

import os
import pty
import re
import select
import time

import pytest

from conftest import JOBCTL, on_a_terminal, run
from jobctl import Jobctl

pytestmark = pytest.mark.slow

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Screen:
    """`jobctl top` on a pseudo-terminal of 140 x 30: what it drew, as text."""

    def __init__(self, db):
        import fcntl
        import struct
        import termios

        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the terminal's size first, then jobctl
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 140, 0, 0))
            os.execve(
                JOBCTL,
                [JOBCTL, "--db", str(db), "top", "--poll-interval", "0.2"],
                dict(os.environ, TERM="xterm-256color", COLUMNS="140", LINES="30"),
            )
        self.seen = ""

    def wait_for(self, text: str, timeout: float = 20) -> None:
        """Read what it draws until `text` appears (no sleeping: the reads block)."""
        deadline = time.monotonic() + timeout
        while text not in ANSI.sub("", self.seen):
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} never drawn; last: {ANSI.sub('', self.seen)[-500:]!r}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    self.seen += os.read(self.fd, 65536).decode(errors="replace")
                except OSError:  # the child closed the terminal
                    break

    def press(self, keys: bytes) -> None:
        self.seen = ""
        os.write(self.fd, keys)

    def exit_code(self, failed: bool = False) -> int:
        if failed:  # the test failed: end it rather than wait for a `q` it never got
            os.kill(self.pid, 9)
        while True:  # drain, so the child is never blocked writing
            try:
                if not os.read(self.fd, 65536):
                    break
            except OSError:
                break
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)


def test_top_shows_top_level_jobs_live_and_quits_on_q(db):
    with Jobctl(db) as jc:
        crawl = jc.create("News Crawler")
        kids = jc.spawn(crawl, count=108)
        jc.set_status(kids[:41], "completed")
        jc.set_status([kids[41]], "running")
        other = jc.create("nightly backup")
        done = jc.create("old and done")
        jc.set_status([done], "completed")
    screen = Screen(db)
    failed = True
    try:
        screen.wait_for("66 pending, 1 running, 41 completed, 0 failed")
        drawn = ANSI.sub("", screen.seen)
        assert f"{other} nightly backup" in " ".join(drawn.split())  # a row: the job's id, then its name
        assert f"{kids[0]}" not in drawn  # one row per top-level job, not per child
        with Jobctl(db) as jc:  # written by another process: the row follows, from the events
            jc.set_status([kids[42]], "failed")
            new = jc.create("late arrival")
        screen.wait_for("65 pending, 1 running, 41 completed, 1 failed")
        screen.wait_for("late arrival")
        assert f"{new} late arrival" in " ".join(ANSI.sub("", screen.seen).split())  # the new job's own row
        screen.press(b"\x1b[B")  # down, down: the third row (newest first: late arrival, old and done,
        screen.press(b"\x1b[B")  # nightly backup, News Crawler)
        screen.press(b"\r")  # Enter: watch it
        screen.wait_for("waiting for events")  # the live view of `watch`, on "nightly backup"
        drawn = " ".join(ANSI.sub("", screen.seen).split())
        assert f"nightly backup ({other}) PENDING" in drawn  # that job, by its id
        screen.press(b"\x03")  # Ctrl-C ends the watch and comes back to the table
        screen.wait_for("q quit")
        screen.press(b"q")
        failed = False
    finally:
        code = screen.exit_code(failed)
    assert code == 0


def test_top_in_a_pipe_is_refused_with_a_hint(db):
    with Jobctl(db) as jc:
        jc.create("x")
    result = run("top", db=db)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        "jobctl: error: jobctl top is a live table for a terminal: in a pipe use `jobctl list`"
        " (or `jobctl watch JOB` for one job)\n"
    )


def test_the_overview_keeps_up_with_50_parents_written_at_once(db, tmp_path):
    """50 parents of 1,000 children each, written by 5 processes at once: the
    overview folds the events (no per-frame queries) and ends with every row's
    progress equal to a fresh count."""
    import subprocess
    import sys

    from jobctl.top import Overview

    with Jobctl(db) as jc:
        parents = [jc.create(f"crawl {i}") for i in range(50)]
        overview = Overview(jc, recent=600)
        overview.load()
        assert len(overview.rows) == 50
        writer = (
            "import sys\nfrom jobctl import Jobctl\n"
            "with Jobctl(sys.argv[1]) as jc:\n"
            "    for p in sys.argv[2:]:\n"
            "        kids = jc.spawn(p, count=1000)\n"
            "        jc.set_status(kids[:600], 'running')\n"
            "        jc.set_status(kids[:500], 'completed')\n"
            "        jc.set_status(kids[500:520], 'failed')\n"
        )
        procs = [subprocess.Popen([sys.executable, "-c", writer, db, *parents[i::5]]) for i in range(5)]
        waker = jc.waker(0.2)
        folded = 0
        while any(p.poll() is None for p in procs) or folded != overview.cursor:
            folded = overview.cursor
            waker.wait(0.2)
            overview.read()  # what top does on each wake-up
        waker.close()
        assert [p.returncode for p in procs] == [0] * 5
        overview.read()
        for p in parents:
            assert overview.rows[p].progress() == jc.progress(p)
            assert overview.rows[p].progress()["progress_text"] == "400 pending, 80 running, 500 completed, 20 failed"


def test_a_job_retried_after_it_left_the_table_comes_back(db):
    from conftest import tamper
    from jobctl.top import Overview

    with Jobctl(db) as jc:
        job = jc.create("last week's run")
        jc.set_status([job], "failed")
        tamper(
            db,
            "UPDATE jobs SET completed_at = '2000-01-01T00:00:00.000000Z',"
            " updated_at = '2000-01-01T00:00:00.000000Z' WHERE id = ?",
            (job,),
        )
        overview = Overview(jc, recent=600)
        overview.load()
        assert job not in overview.rows  # ended long ago: not shown
        jc.retry(job)
        assert overview.read() and overview.rows[job].job["status"] == "pending"


COUNTS = re.compile(r"(\d+) pending, (\d+) running, (\d+)\s+completed, (\d+) failed")
LONG_NAME = "A fairly long name for the nightly crawler of the news site, with its region"


def long_named_parent(db):
    with Jobctl(db) as jc:
        parent = jc.create(LONG_NAME)
        kids = jc.spawn(parent, count=120)
        jc.set_status(kids[:5], "running")
        jc.set_status(kids[:3], "failed")
    return parent


@pytest.mark.parametrize("columns", [60, 80, 120])
def test_list_fits_the_terminal_and_never_cuts_the_counts(db_path, columns):
    """The name gives up first, then the times; the counts are never cut (at 60
    columns they wrap onto a second line rather than lose a digit)."""
    parent = long_named_parent(db_path)
    out = on_a_terminal(["list"], db_path, columns)
    lines = out.rstrip("\n").split("\n")
    assert all(len(line) <= columns for line in lines), out
    assert COUNTS.findall(" ".join(lines)) == [("115", "2", "0", "3")], out
    assert parent in out and "running" in out
    if columns >= 120:
        assert "started" in lines[0] and "duration" in lines[0]
    assert (LONG_NAME in out) == (columns > 150) and "…" in out  # the name, cut, with an ellipsis


@pytest.mark.parametrize("columns", [60, 80, 120])
def test_top_fits_the_terminal_and_never_cuts_the_counts(db_path, columns):
    import io

    from rich.console import Console

    from jobctl.top import Overview, render

    long_named_parent(db_path)
    with Jobctl(db_path) as jc:
        overview = Overview(jc, recent=600)
        overview.load()
        out = io.StringIO()
        Console(file=out, width=columns, color_system=None).print(render(overview, 0, columns))
    lines = out.getvalue().rstrip("\n").split("\n")
    assert all(len(line) <= columns for line in lines), out.getvalue()
    assert COUNTS.findall(" ".join(lines)) == [("115", "2", "0", "3")], out.getvalue()
