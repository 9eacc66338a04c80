"""Output: JSON and NDJSON for programs, plain lines for pipes, rich tables and
trees for a person at a terminal. rich is imported only when it is used."""

from __future__ import annotations

import json
import sys
from typing import Iterable, Mapping

_CONTROL = {i: f"\\x{i:02x}" for i in range(32)} | {ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"}
STATUS_STYLE = {"pending": "yellow", "running": "cyan", "completed": "green",
                "failed": "bold red", "cancelled": "magenta"}


def plain(text: object) -> str:
    """Text safe for one line of plain output: control characters escaped."""
    return "" if text is None else str(text).translate(_CONTROL)


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

    table = Table(box=None, header_style="bold")
    for col in ("id", "status", "name", "type", "parent", "updated"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["id"], status_text(r["status"]), plain(r["name"]), r["type"] or "",
                      r["parent_id"] or "", r["updated_at"])
    console().print(table)


def job(j: Mapping) -> None:
    """`jobctl show`: `field: value` lines (a panel of the same on a terminal)."""
    fields = ["id", "name", "status", "type", "parent_id", "root_id", "created_at", "started_at",
              "completed_at", "updated_at", "last_heartbeat"]
    lines = [(f, j[f]) for f in fields]
    lines.append(("metadata", json.dumps(j["metadata"], ensure_ascii=False) if j["metadata"] else None))
    lines.append(("progress", j["progress"]["progress_text"] if j["progress"] else None))
    if not is_terminal():
        for k, v in lines:
            write_line(f"{k}: {plain(v) if v is not None else '-'}")
        return
    from rich.table import Table

    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in lines:
        table.add_row(k, status_text(v) if k == "status" else plain(v) if v is not None else "-")
    console().print(table)


def tree(rows: list[Mapping]) -> None:
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
    old = e["old_status"] or "new"
    text = f"{e['id']} {e['at']} {e['job_id']} {old} → {e['new_status']}"
    return text + (f": {plain(e['message'])}" if e["message"] else "")


def event_json(e: Mapping) -> dict:
    """The JSON form of an event (what `events --json` and `watch --json` share)."""
    return {k: e[k] for k in ("id", "job_id", "parent_id", "kind", "old_status", "new_status", "at",
                              "message", "level")}
