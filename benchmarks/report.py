"""The results as a rich table on the terminal and as ``BENCHMARKS.md``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.common import Section
from lineside_common.atomic import atomic_write_bytes


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def print_sections(sections: list[Section], console: Console) -> None:
    """One rich table per benchmark, then its acceptance checks."""
    for s in sections:
        table = Table(title=f"{s.title}  ({s.seconds:.0f} s)", title_justify="left")
        for c in s.columns:
            table.add_column(c)
        for row in s.rows:
            table.add_row(*[str(x) for x in row])
        console.print(table)
        if s.error:
            console.print(f"[red]{s.key} failed: {s.error}[/]")
        for check in s.checks:
            colour = {True: "green", False: "red", None: "yellow"}[check.ok]
            console.print(f"  [{colour}]{_mark(check.ok)}[/] {check.name}: {check.detail}")


def markdown(sections: list[Section], machine: dict[str, str], command: str, *, quick: bool) -> str:
    """BENCHMARKS.md: date, the exact command, the machine, every table, notes and checks."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# Lineside benchmarks",
        "",
        f"Measured {now}{' in QUICK (smoke) mode: not figures to quote' if quick else ''}. "
        "Every benchmark measures its peers in the same run on the same machine; read the ratios, "
        "not the absolute numbers, when the machine is shared.",
        "",
        "Reproduce:",
        "",
        "```",
        command,
        "```",
        "",
        "(`make bench` runs `python -m benchmarks`; `--only NAME,...` picks benchmarks: "
        + ", ".join(f"`{s.key}`" for s in sections)
        + "; `--quick` is the smoke mode the test suite runs.)",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in machine.items()],
        "",
        "## Acceptance",
        "",
        "| check | result | figure |",
        "|---|---|---|",
    ]
    for s in sections:
        for c in s.checks:
            out.append(f"| {c.name} | {_mark(c.ok)} | {c.detail} |")
        if s.error:
            out.append(f"| {s.key} ran | FAIL | {s.error} |")
    for i, s in enumerate(sections, 1):
        out += [
            "",
            f"## {i}. {s.title}",
            "",
            f"`{command.split(' --only')[0]} --only {s.key}` — {s.seconds:.0f} s",
            "",
        ]
        if s.error:
            out += [f"**Failed:** {s.error}", ""]
        if s.rows:
            out.append("| " + " | ".join(s.columns) + " |")
            out.append("|" + "---|" * len(s.columns))
            for row in s.rows:
                out.append("| " + " | ".join(str(x).replace("|", "/") for x in row) + " |")
            out.append("")
        for n in s.notes:
            out += [f"- {n}"]
    return "\n".join(out) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` the way the agent writes its state: temp file, fsync, rename."""
    atomic_write_bytes(path.resolve(), text.encode("utf-8"))
