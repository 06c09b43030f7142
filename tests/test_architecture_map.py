"""ARCHITECTURE.md's module map names exactly the modules on disk (scripts/module_map.py regenerates it)."""

from __future__ import annotations

import re
from pathlib import Path

from scripts.module_map import ROOT, modules

BEGIN, END = "<!-- MODULE MAP (scripts/module_map.py) -->", "<!-- /MODULE MAP -->"


def _mapped() -> set[str]:
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    assert BEGIN in text and END in text, "ARCHITECTURE.md lost its module map markers"
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    return set(re.findall(r"^\| `([^`]+\.py)` \|", block, flags=re.M))


def test_the_module_map_matches_the_code() -> None:
    on_disk = {p.as_posix() for p in modules()}
    mapped = _mapped()
    assert on_disk - mapped == set(), "modules missing from ARCHITECTURE.md: run scripts/module_map.py"
    assert mapped - on_disk == set(), "ARCHITECTURE.md maps modules that no longer exist"


def test_the_map_is_not_empty() -> None:
    assert len(_mapped()) > 50 and Path(ROOT / "scripts" / "module_map.py").is_file()
