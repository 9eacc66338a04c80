"""The console script's entry point, with a fast path for the calls scripts
make in loops: `status set`, `status get`, `log`, `heartbeat`, `claim`,
`progress`, `create`, `spawn`, `events`, `run` and `--version`.

Importing typer and building its command tree costs about 65 ms per process,
more than the write itself. So plainly well-formed argv for those commands is
parsed here, by the table FAST, and handed to the same body in
`jobctl.commands` that the Typer command calls; anything else (help, an
option this parser does not know, a value it cannot convert, a missing
argument) goes to the Typer app, which gives the same answer more slowly.
tests/test_fastpath.py checks that FAST accepts exactly the Typer commands'
options, that both paths give the same results, and that typer stays unloaded.
"""

from __future__ import annotations

import sys

# command words -> (body in jobctl.commands, positional parameters ("*name":
# one or more), flags {option: parameter}, valued options {option: (parameter,
# type)}; a type of list means the option repeats).
FAST: dict = {
    ("status", "set"): (
        "status_set",
        ["*args"],
        {"--force": "force", "--stdin": "stdin"},
        {"--message": ("message", str), "-m": ("message", str)},
    ),
    ("status", "get"): ("status_get", ["job"], {"--json": "json"}, {}),
    ("log",): ("log", ["job", "message"], {}, {"--level": ("level", str)}),
    ("heartbeat",): ("heartbeat", ["job"], {}, {}),
    ("claim",): ("claim", ["parent"], {}, {}),
    ("progress",): ("progress", ["job"], {"--json": "json"}, {}),
    ("create",): (
        "create",
        ["name"],
        {"--fail-fast": "fail_fast", "--open": "open"},
        {
            "--type": ("type", str),
            "--id": ("id", str),
            "--parent": ("parent", str),
            "--meta": ("meta", list),
            "--allow-failures": ("allow_failures", str),
            "--max-attempts": ("max_attempts", int),
            "--max-running": ("max_running", int),
            "--after": ("after", list),
            "--after-any": ("after_any", list),
        },
    ),
    ("spawn",): (
        "spawn",
        ["parent"],
        {},
        {
            "--count": ("count", int),
            "--name": ("name", list),
            "--names-from": ("names_from", str),
            "--type": ("type", str),
            "--max-attempts": ("max_attempts", int),
            "--after": ("after", list),
            "--after-any": ("after_any", list),
        },
    ),
    ("run",): (
        "run",
        ["*args"],
        {
            "--each": "each",
            "--keep-order": "keep_order",
            "--json": "json",
            "--wait-for-more": "wait_for_more",
            "--quiet": "quiet",
            "-q": "quiet",
        },
        {
            "--parent": ("parent", str),
            "--name": ("name", str),
            "--id": ("id", str),
            "--claim": ("claim", str),
            "--jobs": ("jobs", int),
            "--heartbeat": ("heartbeat", float),
            "--timeout": ("timeout", str),
            "--kill-after": ("kill_after", str),
            "--log-lines": ("log_lines", int),
            "--output": ("output", str),
            "--retries": ("retries", int),
            "--retry-delay": ("retry_delay", str),
            "--on-term": ("on_term", str),
            "--output-file": ("output_file", str),
            "--after": ("after", list),
            "--after-any": ("after_any", list),
        },
    ),
    ("events",): (
        "events",
        [],
        {"--json": "json"},
        {"--job": ("job", str), "--since": ("since", int), "--limit": ("limit", int)},
    ),
}


def _bind(args: list[str], positional: list[str], flags: dict, valued: dict) -> dict | None:
    """Click-style parsing of `args` into {parameter: value}; None if anything is unusual."""
    words: list[str] = []
    params: dict = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            words += args[i + 1 :]
            break
        if a in flags:
            params[flags[a]] = True
        elif a in valued:
            if i + 1 >= len(args):
                return None
            name, kind = valued[a]
            value = args[i + 1]
            if kind is list:
                params.setdefault(name, []).append(value)
            elif kind is int:
                if not value.lstrip("-").isdigit() or not value.isascii():
                    return None
                params[name] = int(value)
            elif kind is float:
                try:
                    params[name] = float(value)
                except ValueError:
                    return None
            elif name in params:
                return None  # given twice: let click decide
            else:
                params[name] = value
            i += 1
        elif a.startswith("-") and a != "-":
            return None
        else:
            words.append(a)
        i += 1
    if positional[:1] and positional[0].startswith("*"):
        if not words:
            return None
        params[positional[0][1:]] = words
    elif len(words) != len(positional):
        return None
    else:
        params.update(zip(positional, words))
    return params


def parse(argv: list[str]) -> tuple[str, str | None, dict] | None:
    """(body name, db, parameters) for a fast-path call, or None to use the Typer app."""
    args, db = list(argv), None
    if args[:1] == ["--db"] and len(args) >= 2:
        db, args = args[1], args[2:]
    if args == ["--version"]:
        return "version", None, {}
    for words, (body, positional, flags, valued) in FAST.items():
        if tuple(args[: len(words)]) == words:
            params = _bind(args[len(words) :], positional, flags, valued)
            return None if params is None else (body, db, params)
    return None


def main(argv: list[str] | None = None) -> int:
    """The `jobctl` console script (and `python -m jobctl`)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        fast = parse(argv)
        if fast is None:
            from jobctl.cli import app

            return app(args=argv, prog_name="jobctl", standalone_mode=False)
        from jobctl import commands
        from jobctl.console import check_argv, error
        from jobctl.model import JobctlError

        body, db, params = fast
        try:
            check_argv(argv)
            if body == "version":
                return commands.version()
            return getattr(commands, body)(db, **params)
        except JobctlError as exc:
            return error(exc)
    except BrokenPipeError:  # `jobctl list | head`: the reader left; not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
