"""`edge-models pipeline` end to end on a tiny configuration: field data → train → gate → release to a
real `fleet serve` → rollout with a shadow stage; a rerun changes nothing; a candidate trained on
mislabelled field data (two labels swapped) is stopped at the field gate with its reason code; a
held-out set that overlaps the training data is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.pg_support import require_module

require_module("torch", "the pipeline trains: it needs the train extra")
require_module("onnxscript", "the dynamo ONNX exporter needs it")

from edge_agent.manifest import load_manifest  # noqa: E402
from fleet_server.labels import dataset_hash  # noqa: E402
from models.cli import main  # noqa: E402
from models.field_data import render_image_folder, scan  # noqa: E402
from models.train import train  # noqa: E402
from tests.fleet_support import FleetServer, make_keys  # noqa: E402

pytestmark = [pytest.mark.train, pytest.mark.timeout(900)]

OLD = ["circle-80", "square-120", "triangle-100"]
NEW = "hexagon-100"
BASE_TOML = """
name = "tiny"
version = "0.1.0"
labels = ["circle-80", "square-120", "triangle-100"]
[data]
train_seed = 1000
train_frames_per_type = 60
val_seed = 2000
val_frames_per_type = 10
workers = 1  # in-process after torch has run: no fork (OpenMP is not fork-safe)
[input]
width = 48
height = 32
roi = { x = 0.0, y = 0.05, width = 1.0, height = 0.9 }
[train]
epochs = 6
batch_size = 32
lr = 0.005
width = 8
threads = 2
[gates]
min_accuracy = 0.0
max_dimension_mae_mm = 1000.0
max_ece = 1.0
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A serving bundle trained on renders, labelled field folders (train: seed 5000, held out: 6000)."""
    from models.config import load_config

    tmp = tmp_path_factory.mktemp("pipeline")
    (tmp / "base.toml").write_text(BASE_TOML)
    cache = tmp / "cache"
    train(load_config(tmp / "base.toml"), tmp / "serving", cache_dir=cache)
    types = [*OLD, NEW]
    render_image_folder(tmp / "field", types, 5000, 12)
    render_image_folder(tmp / "heldout", types, 6000, 10)
    render_image_folder(
        tmp / "swapped", types, 5000, 12, relabel={"circle-80": "square-120", "square-120": "circle-80"}
    )
    return {"tmp": tmp, "cache": cache}


def _pipeline_toml(
    tmp: Path,
    *,
    datasets: str,
    heldout: str,
    version: str,
    release: str = "",
    lr: float = 0.001,
    alpha: float = 0.01,
) -> Path:
    path = tmp / f"pipeline-{version}.toml"
    path.write_text(
        f"""
[pipeline]
version = "{version}"
base_config = "base.toml"
[data]
datasets = ["{datasets}"]
heldout = "{heldout}"
render_share = 0.5
[train]
init_from = "serving"
epochs = 6
lr = {lr}
[gate]
alpha = {alpha}
min_shared_frames = 20
min_discordant = 5
new_label_min_accuracy = 0.2
new_label_min_frames = 8
{release}
"""
    )
    return path


def _run(
    capsys: pytest.CaptureFixture[str], config: Path, workdir: Path, cache: Path
) -> tuple[int, dict[str, Any]]:
    code = main(
        ["pipeline", "--config", str(config), "--workdir", str(workdir), "--cache-dir", str(cache), "--json"]
    )
    out = capsys.readouterr().out
    return code, json.loads(out)


def _steps(report: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {s["name"]: (s["status"], s["reason"]) for s in report["steps"]}


@pytest.mark.integration
def test_pipeline_releases_a_better_model_and_reruns_idempotently(
    world: dict[str, Path],
    mosquitto: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tmp = world["tmp"]
    keys = make_keys(tmp / "k1")
    server = FleetServer(tmp / "k1", mosquitto.url, keys).start()
    try:
        server.cli("devices", "add", "dev-1", "--group", "line-1")
        server.cli("devices", "add", "dev-2", "--group", "line-1")
        monkeypatch.setenv("PIPELINE_TOKEN", server.token)
        release = f"""
[release]
server = "{server.url}"
keys = "{keys}"
token_env = "PIPELINE_TOKEN"
[rollout]
start = true
group = "line-1"
stages = "1,100%"
shadow = "50%"
shadow_soak_s = 60
"""
        config = _pipeline_toml(tmp, datasets="field", heldout="heldout", version="0.2.0", release=release)
        workdir = tmp / "work-ok"
        code, report = _run(capsys, config, workdir, world["cache"])
        assert code == 0, report
        assert report["ok"] is True and report["reason"] is None
        assert [s["name"] for s in report["steps"]] == [
            "dataset",
            "train",
            "evaluate",
            "gate",
            "bundle",
            "release",
            "rollout",
        ]
        assert all(s["status"] == "ok" for s in report["steps"]), report["steps"]
        assert all(s["seconds"] >= 0 for s in report["steps"])
        assert report["field_gate"]["verdict"] == "pass"
        # The new package type: the serving model cannot name it at all; the candidate learned it.
        acc = report["field_accuracy"]["per_label"][NEW]
        assert acc["serving"] is None and acc["candidate"] >= 0.2
        assert (
            report["field_accuracy"]["all_frames"]["candidate"]
            > report["field_accuracy"]["all_frames"]["serving"]
        )
        rel = report["release"]
        assert (rel["name"], rel["version"]) == ("tiny", "0.2.0") and len(rel["digest"]) == 64
        assert report["rollout_id"]
        assert json.loads((workdir / "pipeline.json").read_text()) == report

        # On the server, with the lineage and the verdict in its manifest.
        import httpx

        m = httpx.get(
            f"{server.url}/api/v1/models/tiny/0.2.0", headers={"Authorization": f"Bearer {server.token}"}
        ).json()
        lineage = m["manifest"]["extra"]["lineage"]
        assert lineage["datasets"][0]["dataset_sha256"] == scan(tmp / "field").dataset_sha256
        assert lineage["heldout"]["dataset_sha256"] == scan(tmp / "heldout").dataset_sha256
        assert lineage["init_from"]["kind"] == "bundle_onnx" and lineage["init_from"]["new_labels"] == [NEW]
        assert m["manifest"]["extra"]["field_gate"]["verdict"] == "pass"
        assert m["manifest"]["labels"] == [*OLD, NEW]
        # The checkpoint stays beside the bundle, never in it.
        assert (workdir / "checkpoint.pt").is_file() and not (workdir / "bundle" / "checkpoint.pt").exists()
        assert "checkpoint.pt" not in m["files"]
        rollout = server.cli_json("rollout", "status", report["rollout_id"])
        assert rollout["ref"] == "tiny@0.2.0"

        # Rerun: nothing trained, released or started again.
        code, again = _run(capsys, config, workdir, world["cache"])
        assert code == 0 and again["ok"]
        steps = _steps(again)
        assert steps["train"] == ("skipped", "unchanged") and steps["evaluate"] == ("skipped", "unchanged")
        assert steps["bundle"] == ("skipped", "unchanged")
        assert steps["release"] == ("skipped", "already_released")
        assert steps["rollout"] == ("skipped", "already_started")
        assert again["rollout_id"] == report["rollout_id"] and again["release"] == rel
        assert len(server.cli_json("rollout", "list")) == 1
    finally:
        server.stop()


def test_mislabelled_field_data_is_stopped_at_the_gate(
    world: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    tmp = world["tmp"]
    config = _pipeline_toml(tmp, datasets="swapped", heldout="heldout", version="0.3.0", lr=0.005, alpha=0.05)
    workdir = tmp / "work-swapped"
    code, report = _run(capsys, config, workdir, world["cache"])
    assert code == 1
    assert report["ok"] is False and report["reason"] == "candidate_worse_on_shared_labels"
    steps = _steps(report)
    assert steps["gate"] == ("failed", "candidate_worse_on_shared_labels")
    assert steps["bundle"][0] == steps["release"][0] == "not_run"
    shared = report["field_gate"]["shared_labels"]
    assert shared["serving_only_correct"] > shared["candidate_only_correct"] and shared["p_worse"] < 0.05
    assert not (workdir / "bundle").exists() and report["release"] is None
    assert json.loads((workdir / "gate" / "field_gate.json").read_text())["verdict"] == "fail"


def test_heldout_overlapping_training_is_refused(
    world: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    tmp = world["tmp"]
    config = _pipeline_toml(tmp, datasets="field", heldout="field", version="0.4.0")
    code, report = _run(capsys, config, tmp / "work-overlap", world["cache"])
    assert code == 1 and report["reason"] == "heldout_overlaps_training"
    assert _steps(report)["dataset"] == ("failed", "heldout_overlaps_training")
    assert _steps(report)["train"][0] == "not_run"


def test_image_folder_hash_is_the_export_hash(world: dict[str, Path]) -> None:
    s = scan(world["tmp"] / "heldout")
    assert s.dataset_sha256 == dataset_hash(zip(s.image_sha256, s.labels, strict=True))
    assert s.label_counts() == {label: 10 for label in [*OLD, NEW]}
    m = load_manifest(world["tmp"] / "serving")
    assert m.labels == OLD


def test_evaluate_works_on_a_labelled_image_folder(
    world: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """`edge-models evaluate --dataset`: the model's labels are scored, a label it does not know is apart."""
    code = main(
        ["evaluate", str(world["tmp"] / "serving"), "--dataset", str(world["tmp"] / "heldout"), "--json"]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["frames"] == 30 and report["unknown_types"][NEW]["frames"] == 10
    assert "dimension_mae_mm" not in report  # field images have no measured dimensions
    assert report["source"] == {"dataset": str(world["tmp"] / "heldout")}
