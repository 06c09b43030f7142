"""Evaluation maths on synthetic cases with known answers; release gates; training config validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lineside_common.cli import CommandError
from models import metrics as M
from models.config import TrainConfig, load_config


def test_accuracy_and_confusion_known_answer() -> None:
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    assert M.accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    cm = M.confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    precision, recall = M.precision_recall(cm)
    assert precision.tolist() == pytest.approx([0.5, 2 / 3, 1.0])
    assert recall.tolist() == pytest.approx([0.5, 1.0, 0.5])


def test_precision_of_never_predicted_class_is_zero_not_nan() -> None:
    cm = M.confusion_matrix(np.array([0, 1]), np.array([0, 0]), 3)
    precision, recall = M.precision_recall(cm)
    assert precision.tolist() == [0.5, 0.0, 0.0]
    assert recall.tolist() == [1.0, 0.0, 0.0]


def test_ece_perfectly_calibrated_is_zero() -> None:
    # 10 frames at confidence 0.8 of which exactly 8 are right: calibrated.
    conf = np.full(10, 0.8)
    correct = np.array([1] * 8 + [0] * 2, dtype=bool)
    assert M.expected_calibration_error(conf, correct) == pytest.approx(0.0)


def test_ece_known_value_over_two_bins() -> None:
    # Bin (0.6, 0.667]: 4 frames conf 0.65, 1 right -> |0.25 - 0.65| = 0.4, weight 0.5.
    # Bin (0.933, 1]: 4 frames conf 1.0, all right -> 0, weight 0.5.
    conf = np.array([0.65] * 4 + [1.0] * 4)
    correct = np.array([1, 0, 0, 0, 1, 1, 1, 1], dtype=bool)
    assert M.expected_calibration_error(conf, correct, bins=15) == pytest.approx(0.2)


def test_ece_bin_edges_are_right_closed() -> None:
    # 1/15 exactly belongs to bin 0 together with 0.0; both wrong -> ECE = mean confidence.
    conf = np.array([0.0, 1 / 15])
    assert M.expected_calibration_error(conf, np.array([False, False]), bins=15) == pytest.approx(1 / 30)


def test_percentiles_histogram_and_baseline() -> None:
    c = np.linspace(0.0, 1.0, 101)
    p = M.percentiles(c)
    assert p == pytest.approx({"p05": 0.05, "p50": 0.5, "p95": 0.95})
    h = M.histogram(np.array([0.0, 0.04, 0.5, 1.0]))
    assert len(h) == 20 and sum(h) == pytest.approx(1.0)
    assert h[0] == 0.5 and h[10] == 0.25 and h[19] == 0.25
    b = M.confidence_baseline(np.array([0.5, 0.9, 0.95, 0.99]), low_confidence=0.7)
    assert b.low_confidence_rate == 0.25
    assert b.mean == pytest.approx(0.835)
    assert len(b.histogram) == 20


def test_dimension_mae() -> None:
    assert M.dimension_mae_mm(
        np.array([[80.0, 80.0], [100.0, 86.0]]), np.array([[81.0, 79.0], [100.0, 90.0]])
    ) == (pytest.approx(1.5))


def test_classification_report_shape() -> None:
    r = M.classification_report(
        np.array([0, 1, 1]),
        np.array([0, 1, 0]),
        np.array([0.9, 0.8, 0.6]),
        ["a", "b"],
        dims_pred=np.zeros((3, 2)),
        dims_true=np.ones((3, 2)),
    )
    assert r["frames"] == 3
    assert r["accuracy"] == pytest.approx(2 / 3)
    assert r["per_class"]["b"] == {"precision": 1.0, "recall": 0.5, "support": 2}
    assert r["confusion"]["matrix"] == [[1, 0], [1, 1]]
    assert r["dimension_mae_mm"] == 1.0
    assert r["confidence"]["low_confidence_rate"] == pytest.approx(1 / 3)


def test_gate_passes_and_fails_with_values() -> None:
    gate = M.ReleaseGate(min_accuracy=0.99, max_dimension_mae_mm=3.0, max_ece=0.03)
    good = {"accuracy": 0.995, "dimension_mae_mm": 1.0, "ece": 0.01}
    assert M.check_gate(good, gate) == []
    bad = {"accuracy": 0.98, "dimension_mae_mm": 4.0, "ece": 0.01}
    failures = M.check_gate(bad, gate)
    assert [f.metric for f in failures] == ["accuracy", "dimension_mae_mm"]
    msg = failures[0].message()
    assert "accuracy" in msg and "0.9800" in msg and "0.9900" in msg


def test_gate_missing_or_nan_metric_fails() -> None:
    gate = M.ReleaseGate(max_dimension_mae_mm=3.0, max_ece=0.03)
    failures = M.check_gate({"ece": math.nan}, gate)
    assert {f.metric for f in failures} == {"dimension_mae_mm", "ece"}


def test_config_validation(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ok = tmp_path / "ok.toml"
    ok.write_text('name = "x"\nversion = "1.0.0"\nlabels = ["circle-80", "square-80"]\n')
    cfg = load_config(ok)
    spec = cfg.input.spec()
    assert spec.shape == [1, 1, 88, 128] and spec.color_order == "GRAY"
    assert cfg.digest() == TrainConfig.model_validate(cfg.model_dump()).digest()
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nversion = "1.0.0"\nlabels = ["circle-80", "blob-80"]\n')
    with pytest.raises(CommandError, match="labels"):
        load_config(bad)
    same_seed = tmp_path / "seed.toml"
    same_seed.write_text(
        'name = "x"\nversion = "1.0.0"\nlabels = ["circle-80", "square-80"]\n[data]\ntrain_seed = 1\nval_seed = 1\n'
    )
    with pytest.raises(CommandError, match="val_seed"):
        load_config(same_seed)
    clash = tmp_path / "clash.toml"
    clash.write_text(
        'name = "x"\nversion = "1.0.0"\nlabels = ["circle-80", "square-80"]\n[data]\noutlier_types = ["square-80"]\n'
    )
    with pytest.raises(CommandError, match="outlier_types"):
        load_config(clash)


def test_release_configs_parse() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "models" / "releases"
    for name in ("shapes-1.0.0", "shapes-2.0.0"):
        cfg = load_config(root / name / "train.toml")
        assert f"{cfg.name}-{cfg.version}" == name
