"""Every command the README tells an operator to type exists, with every flag it uses.

The demo runs the release flow end to end; this keeps the README's spelling of
it honest as the CLIs change.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOOLS = ("edge-agent", "fleet", "edge-models", "edge-sim")


def _readme_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            words = shlex.split(line, comments=True) if line else []
            while words and words[0] in ("sudo", ".venv/bin/"):
                words = words[1:]
                if words[:1] == ["-u"]:  # sudo -u USER: the command runs as the agent's user
                    words = words[2:]
            if words and words[0].removeprefix(".venv/bin/") in TOOLS:
                words[0] = words[0].removeprefix(".venv/bin/")
                commands.append(words)
    return commands


COMMANDS = _readme_commands()


def test_readme_has_the_release_flow() -> None:
    said = {" ".join(c[:3]) for c in COMMANDS}
    for needed in (
        "fleet keys init",
        "fleet release build/shapes-2.0.0",
        "fleet rollout start",
        "edge-agent install",
        "fleet export",  # a new robot's first model: exported, then installed on the robot
        "fleet devices add",
    ):
        assert any(s.startswith(needed) for s in said), needed


def _help(tool: str, path: list[str]) -> str | None:
    """``TOOL PATH --help`` in-process (the console scripts' own main); None if it is not a command."""
    import importlib

    module = {"edge-agent": "edge_agent", "fleet": "fleet_server", "edge-models": "models", "edge-sim": "sim"}
    main = importlib.import_module(f"{module[tool]}.cli").main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([*path, "--help"])
        except SystemExit as exc:
            code = exc.code
    return out.getvalue() if code == 0 else None


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c[:3]) for c in COMMANDS])
def test_readme_command_exists_with_its_flags(argv: list[str]) -> None:
    # The subcommand path: leading words that are neither flags nor arguments with a path or '@'.
    path: list[str] = []
    for word in argv[1:]:
        if word.startswith("-") or "/" in word or "@" in word or "<" in word or "$" in word:
            break
        if _help(argv[0], [*path, word]) is None:
            break
        path.append(word)
    assert path, f"{argv[0]}: no subcommand found in {argv}"
    helptext = _help(argv[0], path)
    assert helptext is not None
    for flag in (w.split("=")[0] for w in argv if w.startswith("--")):
        assert re.search(rf"{re.escape(flag)}(?![\w-])", helptext), (
            f"`{' '.join([argv[0], *path])}` has no {flag}"
        )
