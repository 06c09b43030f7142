"""Bundles without torch: write/load/selftest round trip, faulty builders, evaluation as the agent runs it, gates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.manifest import MODEL_FILE, SELFTEST_FILE, load_manifest
from edge_agent.preprocess import softmax
from lineside_common.errors import ManifestError, SelftestError
from models.bundle import agent_session, check_selftest, load_bundle, run_batch, write_bundle
from models.cli import main
from models.data import LabelledFrame, rendered_frames
from models.evaluate import evaluate_bundle
from models.faulty import make_nan, make_unconfident
from models.synthetic import make_bundle

LABELS = ("circle-80", "square-80", "triangle-100")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "src", labels=LABELS, behaviour="confident")


def test_write_bundle_selftest_round_trip(source: Path, tmp_path: Path) -> None:
    src = load_bundle(source)
    inputs = np.random.default_rng(3).random((8, 3, 32, 32), dtype=np.float32)
    out = write_bundle(tmp_path / "b", src.manifest, src.model, inputs, extra_files={"note.txt": b"hi"})
    b = load_bundle(out)
    assert b.selftest["inputs"].shape == (8, 3, 32, 32)
    # ORT reproduces what was recorded (fresh session, agent settings).
    session = agent_session(out / MODEL_FILE)
    got = session.run(["logits"], {"image": b.selftest["inputs"][5:6]})[0]
    np.testing.assert_allclose(got[0], b.selftest["out_logits"][5], atol=1e-6)
    assert check_selftest(b) < 1e-5
    assert (out / "note.txt").read_bytes() == b"hi"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp dirs left behind"


def test_write_bundle_refuses_existing_without_force(source: Path, tmp_path: Path) -> None:
    src = load_bundle(source)
    inputs = src.selftest["inputs"]
    out = write_bundle(tmp_path / "b", src.manifest, src.model, inputs)
    with pytest.raises(FileExistsError):
        write_bundle(out, src.manifest, src.model, inputs)
    write_bundle(out, src.manifest.model_copy(update={"version": "1.0.1"}), src.model, inputs, force=True)
    assert load_manifest(out).version == "1.0.1"


def test_tampered_selftest_is_detected(source: Path, tmp_path: Path) -> None:
    b = load_bundle(source)
    arrays = dict(b.selftest)
    arrays["out_logits"] = arrays["out_logits"] + 0.5
    np.savez(source / SELFTEST_FILE, **arrays)  # type: ignore[arg-type]
    with pytest.raises(SelftestError):
        check_selftest(load_bundle(source))


def test_load_bundle_checks_files(source: Path) -> None:
    np.savez(source / SELFTEST_FILE, inputs=np.zeros((2, 3, 16, 16), np.float32))
    with pytest.raises(ManifestError, match="inputs"):
        load_bundle(source)
    (source / SELFTEST_FILE).unlink()
    with pytest.raises(ManifestError):
        load_bundle(source)


def test_make_unconfident(source: Path, tmp_path: Path) -> None:
    out = make_unconfident(source, tmp_path / "u", version="1.0.1", temperature=100.0)
    b = load_bundle(out)
    assert b.manifest.version == "1.0.1" and b.manifest.labels == list(LABELS)
    check_selftest(b)  # regenerated: passes
    orig = run_batch(load_bundle(source).model, b.selftest["inputs"])["logits"]
    np.testing.assert_allclose(b.selftest["out_logits"], orig / 100.0, rtol=1e-5, atol=1e-6)
    top = softmax(b.selftest["out_logits"]).max(axis=1)
    assert top.max() < 0.5  # near-uniform over 3 labels
    assert top.max() > 0.3


def test_make_nan(source: Path, tmp_path: Path) -> None:
    out = make_nan(source, tmp_path / "n", version="1.0.2")
    b = load_bundle(out)
    assert np.isnan(b.selftest["out_logits"]).all()
    assert np.isnan(b.selftest["out_dimensions_mm"]).all()
    check_selftest(b)
    frame = np.full((480, 640, 3), 100, np.uint8)
    report = evaluate_bundle(b, [LabelledFrame(frame, "circle-80", (80.0, 80.0), False)])
    assert report["nonfinite_frames"] == 1


def test_evaluate_separates_unknown_types(source: Path) -> None:
    frames = list(rendered_frames(["circle-80", "square-80", "hexagon-100"], seed=5, count=6))
    report = evaluate_bundle(load_bundle(source), frames)
    # The synthetic "confident" model always says label 0 (circle-80).
    assert report["frames"] == 4
    assert report["accuracy"] == pytest.approx(0.5)
    assert report["confusion"]["matrix"][1] == [2, 0, 0]
    assert report["unknown_types"]["hexagon-100"]["frames"] == 2
    assert report["unknown_types"]["hexagon-100"]["predicted_as"] == {"circle-80": 2}
    assert set(report["latency_ms"]) >= {"p50", "p99"}


def test_evaluate_cli_gate_refusal(source: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    args = ["evaluate", str(source), "--frames", "6", "--seed", "11", "--types", ",".join(LABELS)]
    code = main([*args, "--min-accuracy", "0.9"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1] == "error: release gate failed: accuracy = 0.3333, needs >= 0.9000"
    gate = tmp_path / "gate.toml"
    gate.write_text("min_accuracy = 0.3\nmax_ece = 1.0\n")
    out = tmp_path / "eval.json"
    assert main([*args, "--gate", str(gate), "--json", "--out", str(out)]) == 0
    assert '"accuracy": 0.333' in out.read_text()


def test_evaluate_cli_bad_type_is_one_line(source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(source), "--types", "blob-3"]) == 1
    assert capsys.readouterr().err.startswith("error: ")
