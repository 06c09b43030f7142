"""Every ``edge-agent`` command fails the same way: one clear line on stderr, a non-zero exit, no
traceback, and with ``--json`` one valid JSON document on stdout carrying a typed ``reason``.

Run through the real console script (a user types these), one case per failure an operator
meets: empty or mistyped paths, a file where a directory belongs, a missing store or config.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edge_agent.store import ModelStore
from edge_agent.updates import store_dir
from tests.conftest import edge_agent_command

pytestmark = pytest.mark.integration


def _run(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*edge_agent_command(), *args], cwd=tmp, capture_output=True, text=True, timeout=60, check=False
    )


def _one_line_failure(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, str]:
    store = tmp_path / "state"
    ModelStore(store_dir(store))  # an empty store: no model yet
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("not a release\n")
    (tmp_path / "bad.toml").write_text("[broker\nurl = 1\n")
    return {"S": str(store), "T": str(tmp_path)}


CASES = [
    # (args with S = the state dir, T = tmp), expected reason
    (["install", "", "--state-dir", "S"], "usage"),
    (["install", "T/nope", "--state-dir", "S"], "not_found"),
    (["install", "T/afile", "--state-dir", "S"], "not_found"),
    (["install", "T/empty", "--state-dir", "S"], "no_release"),
    (["install", "T/empty"], "usage"),
    (["install", "T/empty", "--state-dir", "S", "--model", "tiny"], "usage"),
    (["verify", "T/nope", "--state-dir", "S"], "not_found"),
    (["models", "--state-dir", "T/typo"], "no_store"),
    (["rollback", "--state-dir", "T/typo"], "no_store"),
    (["rollback", "--state-dir", "S"], "no_previous"),
    (["models", "--config", "T/missing.toml"], "config"),
    (["install", "T/empty", "--config", "T/bad.toml"], "config"),
]


@pytest.mark.parametrize(("argv", "reason"), CASES, ids=[" ".join(c[0][:2]) + f"-{c[1]}" for c in CASES])
def test_every_failure_is_one_line_and_json(dirs: dict[str, str], argv: list[str], reason: str) -> None:
    args = [a.replace("T/", dirs["T"] + "/") if a != "S" else dirs["S"] for a in argv]
    proc = _run(Path(dirs["T"]), *args, "--json")
    _one_line_failure(proc)
    doc = json.loads(proc.stdout)
    assert doc["reason"] == reason, doc
    plain = _run(Path(dirs["T"]), *args)
    _one_line_failure(plain)
    assert plain.stdout == ""


def test_a_mistyped_state_dir_is_not_created(dirs: dict[str, str]) -> None:
    typo = Path(dirs["T"]) / "typo"
    _one_line_failure(_run(Path(dirs["T"]), "models", "--state-dir", str(typo)))
    assert not typo.exists()


def test_run_and_status_fail_in_one_line(dirs: dict[str, str]) -> None:
    _one_line_failure(_run(Path(dirs["T"]), "run", "--config", dirs["T"] + "/missing.toml"))
    _one_line_failure(_run(Path(dirs["T"]), "run", "--config", dirs["T"] + "/bad.toml"))
    fresh = Path(dirs["T"]) / "fresh.toml"  # a new robot: [updates] but no model side-loaded yet
    fresh.write_text(
        f'device_id = "r"\nstate_dir = "{dirs["T"]}/fresh"\n[source]\nuri = "x"\n[broker]\noffline = true\n'
        f'[updates]\nroot_json = "{dirs["T"]}/root.json"\n'
    )
    _one_line_failure(_run(Path(dirs["T"]), "run", "--config", str(fresh)))
    status = _run(Path(dirs["T"]), "status", "--state-dir", dirs["T"] + "/typo", "--json")
    _one_line_failure(status)
    assert json.loads(status.stdout)["running"] is False
