"""The console script's entry point, with a fast path for the calls scripts make
thousands of times: `status set`, `log` and `heartbeat`.

Importing typer and building its command tree costs about 65 ms per process,
twice what the write itself costs. So plainly well-formed argv for those three
commands is parsed here and handed straight to the same API call the Typer
command makes; anything else (help, an option this parser does not know, a
missing argument) goes to the Typer app, which gives the same answer more
slowly. tests/test_fastpath.py runs argv both ways and compares the results.
"""

from __future__ import annotations

import sys


def _options(args: list[str], flags: set[str], valued: dict[str, str]):
    """Split args into positionals and options, click-style; None if anything is unusual."""
    positional: list[str] = []
    opts: dict = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            positional += args[i + 1:]
            break
        if a in flags:
            opts[a] = True
        elif a in valued:
            if i + 1 >= len(args):
                return None
            opts[valued[a]] = args[i + 1]
            i += 1
        elif a.startswith("-") and a != "-":
            return None
        else:
            positional.append(a)
        i += 1
    return positional, opts


def parse(argv: list[str]):
    """(command, db, arguments) for a fast-path call, or None to use the Typer app."""
    args, db = list(argv), None
    if args[:1] == ["--db"] and len(args) >= 2:
        db, args = args[1], args[2:]
    if args[:2] == ["status", "set"]:
        split = _options(args[2:], {"--force", "--stdin"}, {"--message": "message", "-m": "message"})
        if split is None or not split[0]:
            return None
        positional, opts = split
        return "status set", db, (positional[:-1], positional[-1], opts.get("message"),
                                  "--force" in opts, "--stdin" in opts)
    if args[:1] == ["log"]:
        split = _options(args[1:], set(), {"--level": "level"})
        if split is None or len(split[0]) != 2:
            return None
        (job, message), opts = split
        return "log", db, (job, message, opts.get("level", "info"))
    if args[:1] == ["heartbeat"]:
        split = _options(args[1:], set(), {})
        if split is None or len(split[0]) != 1 or split[1]:
            return None
        return "heartbeat", db, (split[0][0],)
    return None


def run_fast(command: str, db: str | None, a: tuple) -> None:
    from jobctl import model
    from jobctl.api import Jobctl

    if command == "status set":
        ids, status, message, force, stdin = a
        model.check_status_word(status)
        if stdin:
            ids = ids + read_stdin().split()
        Jobctl(db).set_status(ids, status, message=message, force=force)
    elif command == "log":
        job, message, level = a
        Jobctl(db).log(job, message, level=level)
    else:
        Jobctl(db).heartbeat(a[0])


def error(exc) -> int:
    """The one-line error every jobctl failure prints (control characters escaped,
    so an odd id cannot break the line); returns its exit code."""
    from jobctl.render import plain

    sys.stderr.write(f"jobctl: error: {plain(exc)}\n")
    return exc.exit_code


def check_argv(argv: list[str]) -> None:
    """Arguments that are not valid UTF-8 (Python hands them over as lone
    surrogates) cannot be stored as text: a usage error, not a traceback."""
    from jobctl.model import UsageError

    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(f"argument {arg.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8") from None


def read_stdin() -> str:
    from jobctl.model import UsageError

    try:
        return sys.stdin.read()
    except UnicodeDecodeError as exc:
        raise UsageError(f"standard input is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def main(argv: list[str] | None = None) -> int:
    """The `jobctl` console script."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        fast = parse(argv)
        if fast is not None:
            from jobctl.model import JobctlError

            try:
                check_argv(argv)
                run_fast(*fast)
                return 0
            except JobctlError as exc:
                return error(exc)
        from jobctl.cli import app

        return app(args=argv, prog_name="jobctl", standalone_mode=False)
    except BrokenPipeError:  # `jobctl list | head`: the reader left; not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
