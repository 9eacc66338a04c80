"""Console helpers shared by both entries (the fast path and the Typer app):
the one-line error, the argv check, standard input, and control-character
escaping. A leaf: it imports nothing of jobctl's at import time."""

from __future__ import annotations

import sys

TYPE_CHECKING = False

if TYPE_CHECKING:
    from jobctl.model import JobctlError

# Invisible characters that change how a line reads: bidi controls (a name `rtl\u202egnp.exe` shows as
# `rtlexe.png`), zero-width characters, line separators. The page escapes the same ones (serve/app.js).
_INVISIBLE = [0x061C, 0x180E, *range(0x200B, 0x2010), *range(0x2028, 0x202F), *range(0x2060, 0x2065)]
_INVISIBLE += [*range(0x2066, 0x206A), 0xFEFF]
_CONTROL = (
    {i: f"\\x{i:02x}" for i in [*range(32), *range(0x7F, 0xA0)]}
    | {ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"}
    | {c: f"\\u{c:04x}" for c in _INVISIBLE}
)


def plain(text: object) -> str:
    """Text safe for one line of plain output: control characters (C0, DEL, C1) and
    invisible ones (bidi overrides, zero-width) escaped."""
    return "" if text is None else str(text).translate(_CONTROL)


def error(exc: JobctlError) -> int:
    """The one-line error every jobctl failure prints (control characters escaped,
    so an odd id cannot break the line); returns its exit code."""
    sys.stderr.write(f"jobctl: error: {plain(exc)}\n")
    return exc.exit_code


def info(message: str) -> None:
    """A message for the person, on stderr."""
    sys.stderr.write(f"jobctl: {message}\n")


def check_argv(argv: list[str]) -> None:
    """Arguments that are not valid UTF-8 (Python hands them over as lone
    surrogates) cannot be stored as text: a usage error, not a traceback."""
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            from jobctl.model import UsageError

            raise UsageError(f"argument {arg.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8") from None


def read_stdin() -> str:
    try:
        return sys.stdin.read()
    except UnicodeDecodeError as exc:
        from jobctl.model import UsageError

        raise UsageError(f"standard input is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def read_lines(source: str, option: str) -> list[str]:
    """The non-blank lines of a file, or of stdin for `-` (--names-from)."""
    try:
        if source == "-":
            text = read_stdin()
        else:
            with open(source, encoding="utf-8") as f:
                text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        from jobctl.model import UsageError

        raise UsageError(f"cannot read {option} {source}: {exc}") from None
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]
