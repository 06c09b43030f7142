"""`edge-sim demo --retrain --fast` end to end, judged from the records it leaves, not its narration.

Slow (it trains a model on this machine's CPUs): `pytest -m slow tests/test_demo_retrain_run.py`.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pg_support import require_module

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_module("torch", "the retraining demo needs the train extra")
    require_module("matplotlib", "the demo extra draws the chart")
    out = tmp_path_factory.mktemp("retrain")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "edge-sim"), "demo", "--retrain", "--fast", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=2300,
        check=False,
    )
    assert proc.returncode == 0, f"demo failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
    return out


def _events(out: Path, device: str, kind: str) -> list[dict]:
    db = sqlite3.connect(out / "server" / "fleet.db")
    rows = db.execute(
        "SELECT payload FROM events WHERE device_id = ? AND kind = ? ORDER BY seq", (device, kind)
    ).fetchall()
    return [json.loads(r[0]) for r in rows]


def test_every_robot_installed_the_retrained_model_and_only_after_its_release(run: Path) -> None:
    for device in ("robot-1", "robot-2", "robot-3"):
        installed = [
            e
            for e in _events(run, device, "update.installed")
            if (e.get("model") or {}).get("version") == "1.1.0"
        ]
        assert installed, device
        assert not _events(run, device, "rollback"), device


def test_the_rollout_passed_its_shadow_stage_and_succeeded(run: Path) -> None:
    db = sqlite3.connect(run / "server" / "fleet.db")
    rows = db.execute("SELECT state, doc FROM rollouts WHERE version = '1.1.0'").fetchall()
    assert len(rows) == 1
    state, doc = rows[0]
    assert state == "succeeded"
    assert (json.loads(doc).get("shadow") or {}).get("state") == "passed"


def test_held_out_images_never_trained_the_model(run: Path) -> None:
    def digests(folder: Path) -> set[str]:
        return {hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.jpg")}

    train, heldout = digests(run / "field" / "train"), digests(run / "field" / "heldout")
    assert train and heldout
    assert not train & heldout


def test_the_report_has_every_step_in_order_and_the_loop_time(run: Path) -> None:
    report = json.loads((run / "retrain-report.json").read_text())
    loop = report["loop"]
    assert loop["missing"] == []
    times = [s["at_s"] for s in loop["steps"]]
    assert times == sorted(times)
    assert loop["alert_to_served_s"] > 0
    assert report["pipeline"]["field_gate"]["verdict"] == "pass"
    assert (run / "retrain.png").stat().st_size > 0
