"""Output: JSON and NDJSON for programs, plain lines for pipes, rich tables and
trees for a person at a terminal. rich is imported only when it is used."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from jobctl.console import plain
from jobctl.progress import change_text, finished

if TYPE_CHECKING:
    from jobctl.watch import Update

STATUS_STYLE = {
    "pending": "yellow",
    "running": "cyan",
    "completed": "green",
    "failed": "bold red",
    "cancelled": "magenta",
}


def is_terminal() -> bool:
    return sys.stdout.isatty()


def console(**kwargs):
    from rich.console import Console

    return Console(**kwargs)


def write_line(line: str) -> None:
    sys.stdout.write(line + "\n")


def write_json(obj: object) -> None:
    """One JSON value on one line (NDJSON when called per item), flushed."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def write_ndjson(items: Iterable[object]) -> None:
    for item in items:
        sys.stdout.write(json.dumps(item, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def status_text(status: str):
    from rich.text import Text

    return Text(status, style=STATUS_STYLE.get(status, ""))


def jobs(rows: Iterable[Mapping]) -> None:
    """`jobctl list`: a table on a terminal, `id<TAB>status<TAB>name` lines in a pipe."""
    if not is_terminal():
        for r in rows:
            write_line(f"{r['id']}\t{r['status']}\t{plain(r['name'])}")
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold")
    for col in ("id", "status", "name", "type", "parent", "updated"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            *(Text(plain(v)) for v in (r["id"],)),
            status_text(r["status"]),
            *(Text(plain(v)) for v in (r["name"], r["type"] or "", r["parent_id"] or "", r["updated_at"])),
        )
    console().print(table)


def job(j: Mapping) -> None:
    """`jobctl show`: `field: value` lines (a panel of the same on a terminal)."""
    fields = [
        "id",
        "name",
        "status",
        "type",
        "parent_id",
        "root_id",
        "created_at",
        "started_at",
        "completed_at",
        "updated_at",
        "last_heartbeat",
    ]
    lines = [(f, j[f]) for f in fields]
    lines.append(("metadata", json.dumps(j["metadata"], ensure_ascii=False) if j["metadata"] else None))
    lines.append(("progress", j["progress"]["progress_text"] if j["progress"] else None))
    if not is_terminal():
        for k, v in lines:
            write_line(f"{k}: {plain(v) if v is not None else '-'}")
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in lines:
        table.add_row(k, status_text(v) if k == "status" else Text(plain(v) if v is not None else "-"))
    console().print(table)


def tree(rows: Sequence[Mapping]) -> None:
    """`jobctl tree`: every node's status, every parent's progress."""

    def label(r: Mapping) -> str:
        text = f"{r['id']} {r['status']} {plain(r['name'])}"
        return text + (f" ({r['progress']['progress_text']})" if r["progress"] else "")

    if not is_terminal():
        for r in rows:
            write_line("  " * r["depth"] + label(r))
        return
    from rich.markup import escape
    from rich.tree import Tree

    nodes: dict = {}
    root = None
    for r in rows:
        style = STATUS_STYLE.get(r["status"], "")
        text = f"[bold]{escape(r['id'])}[/] [{style}]{r['status']}[/] {escape(plain(r['name']))}"
        if r["progress"]:
            text += f" [dim]({r['progress']['progress_text']})[/]"
        if root is None:
            root = nodes[r["id"]] = Tree(text)
        else:
            nodes[r["id"]] = nodes[r["parent_id"]].add(text)
    console().print(root)


def event_line(e: Mapping) -> str:
    """One event as a plain line: `<id> <at> <job> <old> → <new>[: message]` or a log line."""
    if e["kind"] == "log":
        return f"{e['id']} {e['at']} {e['job_id']} [{e['level']}] {plain(e['message'])}"
    text = f"{e['id']} {e['at']} {e['job_id']} {change_text(e)}"
    return text + (f": {plain(e['message'])}" if e["message"] else "")


def event_json(e: Mapping) -> dict:
    """The JSON form of an event (what `events --json` and `watch --json` share)."""
    return {
        k: e[k] for k in ("id", "job_id", "parent_id", "kind", "old_status", "new_status", "at", "message", "level")
    }


# ------------------------------------------------------------------ watch
def counts_of(progress: Mapping) -> dict[str, int]:
    """The counts in a progress dict (progress.progress_dict's `<status>_children`)."""
    from jobctl.model import STATUSES

    return {s: progress.get(f"{s}_children", 0) for s in STATUSES}


def clock(at: str) -> str:
    """HH:MM:SS, in local time, of an event timestamp."""
    from datetime import datetime

    return datetime.fromisoformat(at).astimezone().strftime("%H:%M:%S")


def clock_now() -> str:
    import time

    return time.strftime("%H:%M:%S")


def duration(seconds: float) -> str:
    """95 -> '1m35s'."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def update_line(e: Mapping, progress: Mapping) -> str:
    """A watch line: `HH:MM:SS <job> <old> → <new> | <progress>` or a log line."""
    if e["kind"] == "log":
        return f"{clock(e['at'])} [{e['level']}] {e['job_id']}: {plain(e['message'])}"
    return f"{clock(e['at'])} {e['job_id']} {change_text(e)} | {progress['progress_text']}"


def summary_line(job: Mapping, progress: Mapping, reason: str) -> str:
    text = f"{job['id']} {progress['status']}"
    if progress["total_children"]:
        text += f" | {progress['progress_text']}"
    return text + (f" ({reason})" if reason else "")


class PlainWatch:
    """Plain lines, flushed per line: for CI logs and pipes."""

    def start(self, job: Mapping, progress: Mapping, cursor: int) -> None:
        line = f"{clock(job['updated_at'])} {plain(job['name'])} ({job['id']}) {progress['status']}"
        if progress["total_children"]:
            line += f" | {progress['progress_text']}"
        self._write(line)

    def update(self, update: Update) -> None:
        self._write(update_line(update.event, update.progress))

    def stale(self, new: Mapping[str, float], all_stale: list, progress: Mapping) -> None:
        for job_id, age in new.items():
            self._write(f"{clock_now()} {job_id} stale: no heartbeat for {duration(age)} | {progress['progress_text']}")

    def end(self, job: Mapping, progress: Mapping, reason: str, code: int | None) -> None:
        self._write(summary_line(job, progress, reason))

    @staticmethod
    def _write(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class JsonWatch:
    """NDJSON: every line has the watched job's progress fields; event lines
    carry the event as `event` (the same object `events --json` prints)."""

    def start(self, job: Mapping, progress: Mapping, cursor: int) -> None:
        write_json({"type": "start", **progress, "name": job["name"], "cursor": cursor})

    def update(self, update: Update) -> None:
        write_json({"type": "event", **update.progress, "event": event_json(update.event)})

    def stale(self, new: Mapping[str, float], all_stale: list, progress: Mapping) -> None:
        write_json(
            {
                "type": "stale",
                **progress,
                "stale_job_ids": list(new),
                "seconds_since_heartbeat": [round(v, 1) for v in new.values()],
                "all_stale": all_stale,
            }
        )

    def end(self, job: Mapping, progress: Mapping, reason: str, code: int | None) -> None:
        line = {"type": "end", **progress, "reason": reason or "finished"}
        write_json(line if code is None else {**line, "exit_code": code})


class LiveWatch:
    """A rich Live view: header with a status badge, a progress bar with rate and
    ETA from the event timestamps, the counts line, and a tail of log lines."""

    TAIL = 12

    def __init__(self, console_=None):
        from collections import deque

        from rich.live import Live

        self.console = console_ or console()
        self.lines: deque = deque(maxlen=self.TAIL)
        self.finished_at: deque = deque(maxlen=200)  # (unix time, finished children)
        self.job: Mapping = {}
        self.progress: Mapping = {}
        self.stale_ids: list = []
        self.final: str | None = None
        self.live = Live(console=self.console, refresh_per_second=8, transient=False, get_renderable=self.render)

    def start(self, job: Mapping, progress: Mapping, cursor: int) -> None:
        self.job, self.progress = job, progress
        self._mark(job["updated_at"])
        self.live.start()

    def update(self, update: Update) -> None:
        from rich.markup import escape

        e, self.progress = update.event, update.progress
        if e["kind"] == "log":
            style = {"warning": "yellow", "error": "red"}.get(e["level"], "dim")
            self.lines.append(
                f"[dim]{clock(e['at'])}[/] [{style}]{e['level']:<9}[/] "
                f"[bold]{escape(e['job_id'])}[/] {escape(plain(e['message']))}"
            )
        else:
            new = e["new_status"]
            self.lines.append(
                f"[dim]{clock(e['at'])}[/] [{STATUS_STYLE.get(new, '')}]{new:<9}[/] "
                f"[bold]{escape(e['job_id'])}[/] {change_text(e)}"
            )
            self._mark(e["at"])

    def stale(self, new: Mapping[str, float], all_stale: list, progress: Mapping) -> None:
        self.stale_ids = all_stale
        for job_id, age in new.items():
            self.lines.append(
                f"[dim]{clock_now()}[/] [bold yellow]{'stale':<9}[/] [bold]{job_id}[/] no heartbeat for {duration(age)}"
            )

    def end(self, job: Mapping, progress: Mapping, reason: str, code: int | None) -> None:
        self.progress = progress
        self.final = reason  # get_renderable draws the last frame with the summary
        self.live.refresh()
        self.live.stop()

    def _mark(self, at: str) -> None:
        from datetime import datetime

        t = datetime.fromisoformat(at).timestamp()
        done = finished(counts_of(self.progress))
        if not self.finished_at or self.finished_at[-1][1] != done:
            self.finished_at.append((t, done))

    def rate(self) -> float | None:
        """Children finished per second, over the recent event timestamps."""
        if len(self.finished_at) < 2:
            return None
        (t0, d0), (t1, d1) = self.finished_at[0], self.finished_at[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 and d1 > d0 else None

    def render(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        p = self.progress
        status = p.get("status", "?")
        header = Text.assemble(
            (plain(self.job.get("name", "")), "bold"),
            "  ",
            (f"({self.job.get('id', '')})", "dim"),
            "  ",
            (f" {status.upper()} ", f"reverse {STATUS_STYLE.get(status, '')}"),
        )
        parts: list = [header]
        total = p.get("total_children", 0)
        if total:
            done = finished(counts_of(p))
            rate = self.rate()
            stats = f" {done}/{total} {100 * done / total:5.1f}%"
            if rate:
                stats += f"  {rate:.1f}/s"
                if done < total:
                    eta = int((total - done) / rate)
                    stats += f"  ETA {eta // 60}:{eta % 60:02d}"
            bar = Table.grid(padding=(0, 1))
            bar.add_row(ProgressBar(total=total, completed=done, width=40), Text(stats))
            parts += [bar, Text(p["progress_text"])]
        if self.stale_ids:
            shown = ", ".join(self.stale_ids[:5]) + (" …" if len(self.stale_ids) > 5 else "")
            parts.append(Text(f"⚠ {len(self.stale_ids)} stale (no heartbeat): {shown}", style="bold yellow"))
        parts.append(
            Text.from_markup("\n".join(self.lines)) if self.lines else Text("waiting for events…", style="dim")
        )
        if self.final is not None:
            parts.append(
                Text(
                    f"{self.job.get('id', '')} {status}" + (f" ({self.final})" if self.final else ""),
                    style=f"bold {STATUS_STYLE.get(status, '')}",
                )
            )
        return Group(*parts)
