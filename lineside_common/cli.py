"""What every Lineside command line shares: one red line for expected errors, exit codes, --json."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from lineside_common.errors import LinesideError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int | None]


class CommandError(LinesideError):
    """An expected failure a command reports as one line (and an exit code).

    ``reason`` is the typed code a script reads from the ``--json`` failure document.
    """

    def __init__(self, message: str, *, exit_code: int = EXIT_ERROR, reason: str = "error") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.reason = reason


# Whether this process already wrote its --json document (a failure then adds none of its own).
_json_written = False


def build_parser(prog: str, description: str, modules: Sequence[str]) -> argparse.ArgumentParser:
    """A parser whose subcommands come from ``modules``, each with ``register(subparsers)``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def print_json(obj: Any) -> None:
    """Machine-readable output for --json."""
    global _json_written
    _json_written = True
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def error_line(message: str) -> None:
    """One clear line on stderr (red on a terminal)."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\x1b[31merror:\x1b[0m {message}\n")
    else:
        sys.stderr.write(f"error: {message}\n")


def _fail(args: argparse.Namespace, message: str, reason: str, code: int) -> int:
    """One line on stderr; with --json, also a JSON document on stdout unless one was written."""
    error_line(message)
    if getattr(args, "json", False) and not _json_written:
        print_json({"ok": False, "error": message, "reason": reason})
    return code


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse, dispatch to the subcommand's ``func``, turn expected errors into one line and exit code.

    With ``--json`` every failure also prints ``{"ok": false, "error": ..., "reason": ...}``
    (unless the command already printed its own document). A file-system error the command did
    not expect (a mistyped path, a permission) is one line too, never a traceback.
    """
    global _json_written
    _json_written = False
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func: Handler = args.func
    try:
        code = func(args)
    except CommandError as exc:
        return _fail(args, str(exc), exc.reason, exc.exit_code)
    except LinesideError as exc:
        return _fail(args, str(exc), exc.reason, EXIT_ERROR)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(args, f"{exc.strerror or exc}{where}", "os_error", EXIT_ERROR)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", "interrupted", 130)
    return EXIT_OK if code is None else code
