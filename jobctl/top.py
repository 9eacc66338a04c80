"""`jobctl top`: a live table of the top-level jobs on a terminal.

It reads the jobs once (the active top-level jobs, and those finished in the
last --recent), then follows the events table with the store's wake-ups, as
`watch` does: each event of a top-level job, or of a direct child of one, is
folded into that row in O(1). No frame re-queries the jobs. Keys: q quits, the
arrows move the selection, Enter opens `watch` on the selected job (Ctrl-C, or
the job's end, comes back to the table).
"""

from __future__ import annotations

import os
import select
import sys
import time
from dataclasses import dataclass, field

from jobctl import model
from jobctl.api import Jobctl
from jobctl.feed import EventFeed, JobFold
from jobctl.model import CREATE, STATUS, TERMINAL
from jobctl.progress import counts_of, empty_counts, finished, percent_done

PAGE = 5000
MAX_ROWS = 200  # the newest rows shown; older finished ones drop off


@dataclass
class Overview:
    """The top-level jobs worth showing, kept up to date by folding the one
    event feed (every event after the cursor) into their rows."""

    jc: Jobctl
    recent: float  # seconds: finished jobs stay this long
    rows: dict[str, JobFold] = field(default_factory=dict)  # in insertion order: oldest first
    poll_interval: float = 1.0  # the longest between looks at the events without a wake-up
    feed: EventFeed | None = None

    def load(self) -> None:
        cutoff = model.ago(self.recent)
        with self.jc.snapshot():
            self.feed = self.jc.feed(self.jc.last_event_id(), page=PAGE, poll_interval=self.poll_interval)
            for job in self.jc.list(top_level=True, newest_first=True):
                if job["status"] in TERMINAL and (job["completed_at"] or job["updated_at"]) < cutoff:
                    continue
                counts = counts_of(job["progress"]) if job["progress"] else empty_counts()
                self.rows[job["id"]] = JobFold(job, counts)
                if len(self.rows) >= MAX_ROWS:
                    break
        self.rows = dict(reversed(list(self.rows.items())))

    @property
    def cursor(self) -> int:
        return self.feed.cursor if self.feed is not None else 0

    def read(self) -> bool:
        """Fold the events since the cursor; True when something shown changed."""
        assert self.feed is not None, "load() first"
        changed = False
        for e in self.feed:
            changed |= self.apply(e)
        return changed

    def apply(self, e: dict) -> bool:
        if e["kind"] not in (CREATE, STATUS):
            return False
        if e["parent_id"] is None:  # a top-level job itself
            row = self.rows.get(e["job_id"])
            if row is None and (e["kind"] == CREATE or e["new_status"] not in TERMINAL):
                # new, or back from an end (retry) after it had left the table
                job = self.jc.find(e["job_id"])
                if job is None:
                    return False
                row = self.rows[e["job_id"]] = JobFold(job, self.jc.counts(job["id"]))
                self._evict()
                return True
            if row is None:
                return False
            row.apply(e)
            return True
        row = self.rows.get(e["parent_id"])
        if row is None:
            return False
        row.apply(e)
        return True

    def _evict(self) -> None:
        """Past MAX_ROWS, the oldest rows that ended go first, then the oldest."""
        while len(self.rows) > MAX_ROWS:
            ended = next((k for k, r in self.rows.items() if r.job["status"] in TERMINAL), None)
            del self.rows[ended if ended is not None else next(iter(self.rows))]

    def expire(self) -> bool:
        cutoff = model.ago(self.recent)
        old = [
            k
            for k, r in self.rows.items()
            if r.job["status"] in TERMINAL and (r.job["completed_at"] or r.job["updated_at"]) < cutoff
        ]
        for k in old:
            del self.rows[k]
        return bool(old)

    def shown(self) -> list[JobFold]:
        return list(reversed(self.rows.values()))  # newest first


def render(overview: Overview, selected: int, width: int):
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    from jobctl.render import STATUS_STYLE, job_duration, local_time, plain, table_fitted

    rows = overview.shown()
    columns = ["id", "name", "status", "done", "progress", "started", "duration"]
    cells: list[list] = []
    for row in rows:
        p = row.progress()
        total = p["total_children"]
        done, percent = finished(counts_of(p)), percent_done(counts_of(p))
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=max(total, 1), completed=done if total else 0, width=14),
            Text(f"{percent:3d}%" if percent is not None else "   -"),
        )
        status = row.job["status"]
        cells.append(
            [
                Text(plain(row.job["id"])),
                Text(plain(row.job["name"])),
                Text(status, style=STATUS_STYLE.get(status, "")),
                bar,
                Text(p["progress_text"] if total else "-"),
                Text(local_time(row.job["started_at"])[5:16]),
                Text(job_duration(row.job)),
            ]
        )
    widths = [max(len(c), *(20 if c == "done" else r[i].cell_len for r in cells)) for i, c in enumerate(columns)]
    styles = ["reverse" if i == selected else "" for i in range(len(rows))]
    # the name gives up first, then the times, then the bar: never the counts
    table = table_fitted(columns, cells, widths, width, ["started", "duration", "done"], styles=styles)
    title = Text.assemble(("jobctl top", "bold"), f"  {len(rows)} jobs   ", ("q quit · ↑↓ select · Enter watch", "dim"))
    return Group(title, table if rows else Text("no active or recent top-level jobs", style="dim"))


class Keys:
    """The terminal in cbreak mode: single keys without Enter, no echo."""

    def __init__(self) -> None:
        import termios
        import tty

        self.fd = sys.stdin.fileno()
        self.saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)

    def read(self, timeout: float) -> list[str]:
        """The keys typed so far (several may come in one read): arrows as
        `up`/`down`, Return as `enter`, anything else as itself."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return []
        data = os.read(self.fd, 64).decode(errors="replace")
        keys = []
        while data:
            for seq, name in (("\x1b[A", "up"), ("\x1b[B", "down"), ("\r", "enter"), ("\n", "enter")):
                if data.startswith(seq):
                    keys.append(name)
                    data = data[len(seq) :]
                    break
            else:
                keys.append(data[0])
                data = data[1:]
        return keys

    def restore(self) -> None:
        import termios

        termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


def run_top(jc: Jobctl, *, recent: float, poll_interval: float = 1.0) -> int:
    """The live table until q (exit 0) or Ctrl-C (130)."""
    from rich.live import Live

    from jobctl import render as rendering
    from jobctl import watch as watching

    if not (sys.stdout.isatty() and sys.stdin.isatty()):
        raise model.UsageError(
            "jobctl top is a live table for a terminal: in a pipe use `jobctl list` (or `jobctl watch JOB` for one job)"
        )
    overview = Overview(jc, recent, poll_interval=poll_interval)
    overview.load()
    assert overview.feed is not None
    overview.feed.listen()
    selected = 0
    console = rendering.console()
    keys = Keys()
    try:
        while True:
            with Live(console=console, auto_refresh=False, transient=True) as live:
                live.update(render(overview, selected, console.width), refresh=True)
                last_expire = time.monotonic()
                choice = None
                while choice is None:
                    typed = keys.read(0)
                    if not typed:
                        changed = overview.feed.wait(0.1) and overview.read()
                        if time.monotonic() - last_expire > 1:
                            changed |= overview.expire()
                            last_expire = time.monotonic()
                        if not changed:
                            continue
                    for key in typed:
                        if key == "q":
                            return model.EXIT_OK
                        if key in ("up", "down"):
                            selected += 1 if key == "down" else -1
                        elif key == "enter" and overview.rows:
                            choice = overview.shown()[max(0, min(selected, len(overview.rows) - 1))].job["id"]
                            break
                    selected = max(0, min(len(overview.rows) - 1, selected))
                    live.update(render(overview, selected, console.width), refresh=True)
            keys.restore()
            try:
                watching.run_watch(jc, choice, rendering.LiveWatch(console), poll_interval=poll_interval)
            finally:
                keys = Keys()
            overview.read()
    except KeyboardInterrupt:
        return model.EXIT_INTERRUPTED
    finally:
        keys.restore()
        overview.feed.close()
