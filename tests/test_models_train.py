"""Training on a TINY config (needs torch): export parity, bundle written, reproducibility, INT8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="training tests need the train extra (torch)")
pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript")

from edge_agent.manifest import BUNDLE_FILES, load_manifest
from models.bundle import check_selftest, load_bundle
from models.config import TrainConfig
from models.train import fit_temperature, train

pytestmark = [pytest.mark.train, pytest.mark.slow]


def _tiny(**train_overrides: object) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "name": "tiny",
            "version": "0.0.1",
            "labels": ["circle-80", "square-120", "triangle-100"],
            "data": {
                "train_frames_per_type": 40,
                "val_frames_per_type": 10,
                "workers": 1,
                "outlier_types": ["rectangle-80"],
                "outlier_frames_per_type": 10,
            },
            "input": {"width": 48, "height": 32, "roi": {"x": 0.0, "y": 0.05, "width": 1.0, "height": 0.9}},
            "train": {"epochs": 1, "batch_size": 32, "width": 4, "threads": 1, **train_overrides},
            "gates": {"min_accuracy": None, "max_dimension_mae_mm": None, "max_ece": None},
        }
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    tmp = tmp_path_factory.mktemp("train")
    cache = tmp / "cache"
    result = train(_tiny(), tmp / "bundle", cache_dir=cache, config_text="# tiny\n")
    assert result.bundle_dir is not None
    return result.bundle_dir, result.weights_sha256, cache


def test_bundle_written_and_valid(trained: tuple[Path, str, Path]) -> None:
    bundle_dir, digest, _ = trained
    for name in (*BUNDLE_FILES, "train.toml"):
        assert (bundle_dir / name).is_file()
    m = load_manifest(bundle_dir)
    assert m.input.shape == [1, 1, 32, 48] and m.input.color_order == "GRAY"
    assert m.outputs.dimensions_output == "dimensions_mm"
    assert m.extra["weights_sha256"] == digest
    assert m.extra["train_frames"] == 120 and m.extra["outlier_frames"] == 10
    assert m.extra["export_max_abs_logit_diff"] <= 1e-3
    assert len(m.confidence_baseline.histogram) == 20
    b = load_bundle(bundle_dir)
    assert b.selftest["inputs"].shape[0] == 8
    assert check_selftest(b) <= 1e-5
    import onnx

    model = onnx.load_from_string(b.model)
    assert all(i.data_location != onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
    assert not list(bundle_dir.glob("*.data"))


def test_same_seed_same_weights(trained: tuple[Path, str, Path]) -> None:
    _, digest, cache = trained
    again = train(_tiny(), None, cache_dir=cache)
    assert again.weights_sha256 == digest
    other = train(_tiny(seed=1), None, cache_dir=cache)
    assert other.weights_sha256 != digest


def test_gate_refuses_to_write(tmp_path: Path, trained: tuple[Path, str, Path]) -> None:
    from lineside_common.cli import CommandError

    # A one-epoch toy is never perfectly calibrated: an ECE gate of 0 must refuse it.
    cfg = _tiny().model_copy(update={"gates": _tiny().gates.model_copy(update={"max_ece": 0.0})})
    with pytest.raises(CommandError, match=r"release gate failed: ece = "):
        train(cfg, tmp_path / "b", cache_dir=trained[2])
    assert not (tmp_path / "b").exists()


def test_quantize_bundle(trained: tuple[Path, str, Path], tmp_path: Path) -> None:
    from models.quantize import quantize_bundle

    out = tmp_path / "int8"
    r = quantize_bundle(trained[0], out, calibration_frames=16, eval_frames=12)
    b = load_bundle(out)
    assert b.manifest.name == "tiny-int8" and b.manifest.version == "0.0.1"
    check_selftest(b)
    assert r["int8"]["bytes"] < r["fp32"]["bytes"]
    assert r["speed_ratio"] > 0


def test_fit_temperature_recovers_known_temperature() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2.0, (4000, 4))
    probs = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    y = np.array([rng.choice(4, p=p) for p in probs])
    # The model is overconfident by 3x: the fitted temperature should undo it.
    t = fit_temperature(true_logits * 3.0, y)
    assert t == pytest.approx(3.0, rel=0.1)


def test_fit_temperature_never_sharpens_below_the_floor() -> None:
    # Perfectly separable logits: NLL keeps falling as T shrinks, so only the floor stops it.
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]] * 10)
    y = np.array([0, 1, 2] * 10)
    assert fit_temperature(logits, y, min_temperature=1.0) == pytest.approx(1.0, rel=1e-3)
    assert fit_temperature(logits, y) < 0.1
