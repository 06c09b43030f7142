"""``python -m benchmarks [--quick] [--only NAME,...] [--out FILE]``: run, print, write BENCHMARKS.md."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from benchmarks import BENCHMARKS
from benchmarks.common import REPO, Context, Section, machine
from benchmarks.report import markdown, print_sections, write_atomic


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run Lineside's benchmarks (each measures its peers in the same run), print a table "
        "per benchmark and write BENCHMARKS.md with the figures, the machine and this command. "
        f"Benchmarks: {', '.join(BENCHMARKS)}.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke mode: tiny inputs, seconds per benchmark, figures not meaningful",
    )
    p.add_argument("--only", help="comma-separated benchmarks to run (default: all)")
    p.add_argument(
        "--out", type=Path, default=None, help="markdown file to write (default BENCHMARKS.md; --quick: none)"
    )
    p.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temporary one)")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the benchmarks do")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    names = list(BENCHMARKS) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        sys.stderr.write(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}\n")
        return 2
    console = Console(width=None if sys.stdout.isatty() else 180)
    out = args.out if args.out is not None else (None if args.quick else REPO / "BENCHMARKS.md")
    command = "python -m benchmarks" + "".join(
        f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:])
    )
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="lineside-bench-") as tmp:
        ctx = Context(quick=args.quick, workdir=args.workdir or Path(tmp))
        sections: list[Section] = []
        for name in names:
            console.print(f"[bold]running {name}[/] ...")
            t0 = time.monotonic()
            try:
                section = BENCHMARKS[name](ctx)
            except Exception as exc:
                logging.getLogger("benchmarks").exception("%s failed", name)
                section = Section(
                    name,
                    name,
                    [],
                    error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                )
            section.seconds = time.monotonic() - t0
            sections.append(section)
            print_sections([section], console)
    if out is not None:
        info = machine()
        # Other work on the machine moves absolute figures: say how busy it was.
        info["load average (1/5/15 min) before / after"] = (
            f"{' '.join(f'{x:.1f}' for x in load_before)} / {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
        )
        write_atomic(out, markdown(sections, info, command, quick=args.quick))
        console.print(f"wrote {out}")
    failed = [s.key for s in sections if s.error]
    if failed:
        sys.stderr.write(f"benchmarks failed to run: {', '.join(failed)}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
