"""Print ARCHITECTURE.md's module map from the code: each package's modules with their docstring's first line.

    python scripts/module_map.py > /tmp/map.md    # then paste between the MODULE MAP markers

tests/test_architecture_map.py fails when the map in ARCHITECTURE.md and the modules on disk differ.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("lineside_common", "edge_agent", "fleet_server", "models", "sim")


def modules(root: Path = ROOT) -> list[Path]:
    """Every source module of the packages, migrations aside (they are Alembic's, one per schema change)."""
    out = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root)
            if "migrations" in rel.parts or (path.name == "__init__.py" and pkg != "lineside_common"):
                continue
            out.append(rel)
    return out


def summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    first = doc.strip().split("\n\n")[0].replace("\n", " ").strip()
    return first.replace("|", "\\|")


def render(root: Path = ROOT) -> str:
    lines = []
    current = None
    for rel in modules(root):
        pkg = rel.parts[0]
        if pkg != current:
            if current is not None:
                lines.append("")
            lines += [f"### `{pkg}/`", "", "| module | what it is for |", "| --- | --- |"]
            current = pkg
        lines.append(f"| `{rel.as_posix()}` | {summary(root / rel)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
