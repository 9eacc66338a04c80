"""Output: JSON and NDJSON for programs, plain lines for pipes, rich tables and
trees for a person at a terminal. rich is imported only when it is used."""

from __future__ import annotations

import sys

from jobctl.console import plain
from jobctl.model import duration_text, job_seconds, policy_text, where_text
from jobctl.progress import after_text, counts_of, event_text, finished, held_text

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~5 ms per start)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from jobctl.watch import Failures, Update


def _dumps(obj: object) -> str:
    """One JSON value on one line. json is imported here, not at the top: it costs
    a few ms at the start of every `status get --json` or `events` call."""
    import json

    return json.dumps(obj, ensure_ascii=False)


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
    sys.stdout.write(_dumps(obj) + "\n")
    sys.stdout.flush()


def write_ndjson(items: Iterable[object]) -> None:
    for item in items:
        sys.stdout.write(_dumps(item) + "\n")
    sys.stdout.flush()


def status_text(status: str):
    from rich.text import Text

    return Text(status, style=STATUS_STYLE.get(status, ""))


def fit(widths: list[int], width: int, name: int, drop: list[int], min_name: int = 12) -> tuple[list[int], int]:
    """Which columns of a table (their content `widths`, 2 cells between) fit in
    `width` cells, and how wide the name column `name` may be. The name gives
    up first (down to `min_name` cells, cut with an ellipsis), then the columns
    of `drop`, in order. The others (ids, statuses, counts) are never cut: the
    caller lets the counts wrap onto a second line if even that is too wide."""
    shown = list(range(len(widths)))

    def room() -> int:  # what the shown columns leave for the name
        return width - sum(widths[i] + 2 for i in shown if i != name)

    floor = min(widths[name], min_name)
    for col in drop:
        if room() >= floor:
            break
        shown.remove(col)
    return shown, max(floor, min(widths[name], room()))


def table_fitted(
    columns: list[str],
    chunk: list[list],
    widths: list[int],
    width: int,
    drop: list[str],
    header: bool = True,
    styles: list[str] | None = None,
):
    """A rich table of `chunk` (rows of cells, each `widths[i]` wide at most) fitted
    to `width` cells (see fit): `name` cut with an ellipsis, `progress` wrapped, not cut."""
    from rich.table import Table

    shown, name_width = fit(widths, width, columns.index("name"), [columns.index(c) for c in drop])
    table = Table(box=None, header_style="bold", show_header=header, pad_edge=False)
    for i in shown:
        if columns[i] == "name":
            table.add_column("name", width=name_width, no_wrap=True, overflow="ellipsis")
        elif columns[i] == "progress":
            table.add_column("progress", min_width=min(widths[i], 12))
        else:
            table.add_column(columns[i], min_width=widths[i], no_wrap=True)
    for n, row in enumerate(chunk):
        table.add_row(*(row[i] for i in shown), style=styles[n] if styles else None)
    return table


def jobs(rows: Iterable[Mapping], *, overview: bool = False) -> None:
    """`jobctl list`, streamed: a table on a terminal (printed a chunk of rows at a
    time, so the first screen comes at once and memory stays flat), and in a pipe
    `id<TAB>status<TAB>name` lines, with the progress text as a fourth field in
    the overview (empty for a job without children)."""
    if not is_terminal():
        out = sys.stdout
        for r in rows:
            line = f"{r['id']}\t{r['status']}\t{plain(r['name'])}"
            if overview:
                line += "\t" + (r["progress"]["progress_text"] if r["progress"] else "")
            out.write(line + "\n")
        out.flush()
        return
    from itertools import islice

    from rich.text import Text

    if overview:
        columns = ["id", "name", "status", "progress", "started", "duration"]
        drop = ["started", "duration"]  # after the name: the counts are what the overview is for

        def cells(r: Mapping) -> list:
            progress = r["progress"]["progress_text"] if r["progress"] else ""
            return [
                Text(plain(r["id"])),
                Text(plain(r["name"])),
                status_text(r["status"]),
                Text(progress),
                Text(local_time(r["started_at"])),
                Text(job_duration(r)),
            ]
    else:
        columns = ["id", "status", "name", "type", "parent", "updated"]
        drop = ["updated", "type", "parent"]

        def cells(r: Mapping) -> list:
            return [
                Text(plain(r["id"])),
                status_text(r["status"]),
                *(Text(plain(v)) for v in (r["name"], r["type"] or "", r["parent_id"] or "", r["updated_at"])),
            ]

    out = console()
    widths = [len(c) for c in columns]
    rows = iter(rows)
    first = True
    while chunk := [cells(r) for r in islice(rows, 200)]:
        widths = [max(w, *(c[i].cell_len for c in chunk)) for i, w in enumerate(widths)]
        out.print(table_fitted(columns, chunk, widths, out.width, drop, first))
        first = False
    if first:  # no rows: the header alone says what was listed
        out.print(table_fitted(columns, [], widths, out.width, drop, True))


def local_time(at: str | None) -> str:
    """`2026-11-29 06:40:12` in local time, of a stored timestamp ('' for none)."""
    if not at:
        return ""
    from datetime import datetime

    return datetime.fromisoformat(at).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def job_duration(j: Mapping) -> str:
    """How long the job ran: from its start to its end, or to now while it runs."""
    from jobctl.model import now

    seconds = job_seconds(j, now())
    return "" if seconds is None else duration_text(seconds)


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
        "exit_code",
        "duration",
        "attempt",
        "max_attempts",
        "not_before",
    ]
    lines = [(f, j[f]) for f in fields]
    if j["duration"] is None:  # not a command's run time (a parent, say): from its start to its end, or now
        lines[fields.index("duration")] = ("duration", job_duration(j) or None)
    policy = j["policy"]
    text = policy_text(
        policy["fail_fast"], policy["allow_failures"], None, policy.get("open", False), policy.get("max_running")
    )
    if policy["allow_failures"] and j["progress"]:  # what the allowance comes to, and whether it was needed
        text = f"{text} ({policy['allowed_failures']} allowed{', used' if policy['allowance_used'] else ''})"
    lines.append(("policy", text))
    lines.append(("metadata", _dumps(j["metadata"]) if j["metadata"] else None))
    lines.append(("progress", j["progress"]["progress_text"] if j["progress"] else None))
    lines.append(("ran on", where_text(j["ran_on"]) if j.get("ran_on") else None))
    lines.append(("after", after_text(j["after"]) if j.get("after") else None))
    lines.append(("waiting on", ", ".join(j.get("waiting_on", ())) or None))
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


def tree(rows: Iterable[Mapping]) -> None:
    """`jobctl tree`: every node's status, every parent's progress. The rows come
    depth-first (each child right after its parent); in a pipe each is a line
    indented two spaces per level, streamed."""

    def label(r: Mapping) -> str:
        text = f"{r['id']} {r['status']} {plain(r['name'])}"
        text += f" ({r['progress']['progress_text']})" if r["progress"] else ""
        return text + (f" [{held_text(r['waiting_on'])}]" if r.get("waiting_on") else "")

    if not is_terminal():
        out = sys.stdout
        for r in rows:
            out.write("  " * r["depth"] + label(r) + "\n")
        out.flush()
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
        if r.get("waiting_on"):
            text += f" [dim]{escape(held_text(r['waiting_on']))}[/]"
        if root is None:
            root = nodes[r["id"]] = Tree(text)
        else:
            nodes[r["id"]] = nodes[r["parent_id"]].add(text)
    console().print(root)


def event_line(e: Mapping) -> str:
    """One event as a plain line: `<id> <at> <job> <old> → <new>[: message]` or a log line."""
    return f"{e['id']} {e['at']} {e['job_id']} {plain(event_text(e))}"


def event_json(e: Mapping) -> dict:
    """The JSON form of an event (what `events --json` and `watch --json` share)."""
    return {
        k: e.get(k)
        for k in (
            "id",
            "job_id",
            "parent_id",
            "kind",
            "old_status",
            "new_status",
            "at",
            "message",
            "level",
            "exit_code",
            "duration",
            "attempt",
            "max_attempts",
        )
    }


# ------------------------------------------------------------------ watch
def clock(at: str) -> str:
    """HH:MM:SS, in local time, of an event timestamp."""
    from datetime import datetime

    return datetime.fromisoformat(at).astimezone().strftime("%H:%M:%S")


def clock_now() -> str:
    import time

    return time.strftime("%H:%M:%S")


duration = duration_text  # 95 -> '1m35s' (model.duration_text)


def change_why(e: Mapping) -> str:
    """`<old> → <new>[: <message>]`: a status change and why, when it says."""
    return plain(event_text(e))


def change_line(e: Mapping) -> str:
    """`<job> <old> → <new>[: <message>]`: a status change and why, when it says."""
    return f"{e['job_id']} {change_why(e)}"


def update_line(e: Mapping, progress: Mapping) -> str:
    """A watch line: `HH:MM:SS <job> <old> → <new>[: <message>] | <progress>` or a log line."""
    if e["kind"] == "log":
        return f"{clock(e['at'])} [{e['level']}] {e['job_id']}: {plain(e['message'])}"
    return f"{clock(e['at'])} {change_line(e)} | {progress['progress_text']}"


def summary_line(job: Mapping, progress: Mapping, reason: str) -> str:
    text = f"{job['id']} {progress['status']}"
    if progress["total_children"]:
        text += f" | {progress['progress_text']}"
    return text + (f" ({reason})" if reason else "")


def failure_lines(failures: Failures | None) -> list[str]:
    """The failed children under a summary: up to ten, each with its message, then `and N more`."""
    if failures is None:
        return []
    lines = [
        f"  failed: {c['id']} {plain(c['name'])}" + (f": {plain(c['message'])}" if c["message"] else "")
        for c in failures.children
    ]
    if failures.total > len(failures.children):
        lines.append(f"  and {failures.total - len(failures.children)} more")
    return lines


def earlier_line(earlier: int) -> str:
    return f"({earlier} earlier event{'s' if earlier != 1 else ''}; --from-start replays them)"


def start_line(job: Mapping, progress: Mapping) -> str:
    """The watch's first line: now, the job, its state, and when that last changed."""
    line = f"{clock_now()} {plain(job['name'])} ({job['id']}) {progress['status']}"
    if progress["total_children"]:
        line += f" | {progress['progress_text']}"
    return line + f" (last change {clock(job['updated_at'])})"


class PlainWatch:
    """Plain lines, flushed per line: for CI logs and pipes (the earlier-events
    hint only when `verbose`: a log has no person to tell)."""

    def __init__(self, verbose: bool = False):
        self.verbose = verbose

    def start(self, job: Mapping, progress: Mapping, cursor: int, earlier: int = 0) -> None:
        self._write(start_line(job, progress))
        if earlier and self.verbose:
            self._write(earlier_line(earlier))

    def update(self, update: Update) -> None:
        self._write(update_line(update.event, update.progress))

    def stale(self, new: Mapping[str, float], all_stale: list, progress: Mapping) -> None:
        for job_id, age in new.items():
            self._write(f"{clock_now()} {job_id} stale: no heartbeat for {duration(age)} | {progress['progress_text']}")

    def end(
        self, job: Mapping, progress: Mapping, reason: str, code: int | None, failures: Failures | None = None
    ) -> None:
        for line in [summary_line(job, progress, reason), *failure_lines(failures)]:
            self._write(line)

    @staticmethod
    def _write(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class JsonWatch:
    """NDJSON: every line has the watched job's progress fields; event lines
    carry the event as `event` (the same object `events --json` prints)."""

    def start(self, job: Mapping, progress: Mapping, cursor: int, earlier: int = 0) -> None:
        write_json({"type": "start", **progress, "name": job["name"], "cursor": cursor, "earlier_events": earlier})

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

    def end(
        self, job: Mapping, progress: Mapping, reason: str, code: int | None, failures: Failures | None = None
    ) -> None:
        line: dict = {"type": "end", **progress, "reason": reason or "finished"}
        if code is not None:
            line["exit_code"] = code
        if failures is not None:
            line["failures"] = failures.children  # (failed_children is the count, as everywhere)
            line["failures_total"] = failures.total
        write_json(line)


class LiveWatch:
    """A rich Live view: header with a status badge, a progress bar with rate and
    ETA, the counts line, and as many of the latest events and log lines as fit
    the window (the frame never grows past the window's height)."""

    KEEP = 500  # lines kept for the tail; as many as fit are shown

    def __init__(self, console_=None):
        from collections import deque

        from rich.live import Live

        self.console = console_ or console()
        self.lines: deque = deque(maxlen=self.KEEP)
        self.finished_at: deque = deque(maxlen=200)  # (unix time, finished children)
        self.job: Mapping = {}
        self.progress: Mapping = {}
        self.stale_ids: list = []
        self.final: str | None = None
        self.failures: Failures | None = None
        self.live = Live(console=self.console, refresh_per_second=8, transient=False, get_renderable=self.render)

    def start(self, job: Mapping, progress: Mapping, cursor: int, earlier: int = 0) -> None:
        self.job, self.progress = job, progress
        self._mark(job["updated_at"])
        if earlier:
            self.lines.append(f"[dim]{earlier_line(earlier)}[/]")
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
            new = e["new_status"] or e["kind"]  # a policy event has no status
            self.lines.append(
                f"[dim]{clock(e['at'])}[/] [{STATUS_STYLE.get(new, '')}]{new:<9}[/] "
                f"[bold]{escape(e['job_id'])}[/] {escape(change_why(e))}"
            )
            if e["job_id"] in self.stale_ids and new != "running":  # it moved on: no longer stale
                self.stale_ids = [i for i in self.stale_ids if i != e["job_id"]]
            self._mark(e["at"])

    def stale(self, new: Mapping[str, float], all_stale: list, progress: Mapping) -> None:
        self.stale_ids = all_stale
        for job_id, age in new.items():
            self.lines.append(
                f"[dim]{clock_now()}[/] [bold yellow]{'stale':<9}[/] [bold]{job_id}[/] no heartbeat for {duration(age)}"
            )

    def end(
        self, job: Mapping, progress: Mapping, reason: str, code: int | None, failures: Failures | None = None
    ) -> None:
        self.progress, self.failures = progress, failures
        if progress.get("running_children", 0) == 0:
            self.stale_ids = []  # nothing runs any more, so nothing is stale
        self.final = reason  # get_renderable draws the last frame with the summary
        self.live.refresh()
        self.live.stop()

    def _mark(self, at: str) -> None:
        from datetime import datetime

        t = datetime.fromisoformat(at).timestamp()
        done = finished(counts_of(self.progress))
        if not self.finished_at or self.finished_at[-1][1] != done:
            self.finished_at.append((t, done))

    def rate(self, now: float | None = None) -> float | None:
        """Children finished per second, over the recent event timestamps up to now:
        while nothing finishes the rate falls (and the ETA grows) with wall time."""
        import time

        if len(self.finished_at) < 2:
            return None
        (t0, d0), (t1, d1) = self.finished_at[0], self.finished_at[-1]
        end = max(t1, time.time() if now is None else now)
        return (d1 - d0) / (end - t0) if end > t0 and d1 > d0 else None

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
            stats = f" {done}/{total} {100 * done / total:5.1f}%"
            rate = self.rate() if self.final is None else None
            if rate:
                stats += f"  {rate:.1f}/s"
                if done < total:
                    eta = int((total - done) / rate)
                    stats += f"  ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}"
            bar = Table.grid(padding=(0, 1))
            bar.add_row(
                ProgressBar(total=total, completed=done, width=min(40, max(10, self.console.width - 30))),
                Text(stats, no_wrap=True, overflow="ellipsis"),
            )
            parts += [bar, Text(p["progress_text"])]
        if self.stale_ids:
            shown = ", ".join(self.stale_ids[:5]) + (" …" if len(self.stale_ids) > 5 else "")
            parts.append(Text(f"⚠ {len(self.stale_ids)} stale (no heartbeat): {shown}", style="bold yellow"))
        footer: list = []
        if self.final is not None:
            footer.append(
                Text(
                    f"{self.job.get('id', '')} {status}" + (f" ({self.final})" if self.final else ""),
                    style=f"bold {STATUS_STYLE.get(status, '')}",
                )
            )
            footer += [Text(line, style="red") for line in failure_lines(self.failures)]
        # Every line is cut to the width (one row each), and the tail gets what is
        # left of the window's height, so the frame never grows past it (a taller
        # frame scrolls the header away); the last row is the cursor's.
        for part in parts + footer:
            if isinstance(part, Text):
                part.no_wrap, part.overflow = True, "ellipsis"
        room = max(1, self.console.height - len(parts) - len(footer) - 1)
        tail = list(self.lines)[-room:]
        if tail:
            text = Text.from_markup("\n".join(tail))
            text.no_wrap, text.overflow = True, "ellipsis"
            parts.append(text)
        else:
            parts.append(Text("waiting for events…", style="dim"))
        return Group(*parts, *footer)
