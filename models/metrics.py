"""Evaluation maths: pure functions over arrays, no files, no models.

Everything ``edge-models evaluate`` reports and every release gate is computed
here, so the numbers can be checked on synthetic cases with known answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.manifest import ConfidenceBaseline

ECE_BINS = 15
HISTOGRAM_BINS = 20


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of equal entries; 0.0 for empty input."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.size == 0:
        return 0.0
    return float(np.mean(y_true == y_pred))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts: row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def precision_recall(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class precision and recall from a confusion matrix (0 where undefined)."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    actual = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    return precision, recall


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the frame-weighted mean |accuracy - confidence| over equal-width confidence bins.

    Bins are (lo, hi] as in Guo et al. 2017, with confidence 0 falling in the first bin.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    n = conf.size
    if n == 0:
        return 0.0
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            ece += mask.sum() / n * abs(ok[mask].mean() - conf[mask].mean())
    return float(ece)


def percentiles(values: np.ndarray, qs: Sequence[float] = (5, 50, 95)) -> dict[str, float]:
    """``{"p05": ..., "p50": ..., "p95": ...}`` (linear interpolation); zeros for empty input."""
    v = np.asarray(values, dtype=np.float64)
    return {f"p{int(q):02d}": float(np.percentile(v, q)) if v.size else 0.0 for q in qs}


def histogram(values: np.ndarray, bins: int = HISTOGRAM_BINS) -> list[float]:
    """Fraction of values per equal-width bin over [0, 1] (1.0 falls in the last bin)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return [0.0] * bins
    counts, _ = np.histogram(np.clip(v, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    return [float(c) / v.size for c in counts]


def confidence_baseline(confidence: np.ndarray, low_confidence: float) -> ConfidenceBaseline:
    """The manifest's drift reference from a validation set's top-1 confidences."""
    c = np.asarray(confidence, dtype=np.float64)
    p = percentiles(c)
    return ConfidenceBaseline(
        mean=float(np.clip(c.mean(), 0, 1)) if c.size else 0.0,
        p05=float(np.clip(p["p05"], 0, 1)),
        p50=float(np.clip(p["p50"], 0, 1)),
        p95=float(np.clip(p["p95"], 0, 1)),
        low_confidence_rate=float(np.mean(c < low_confidence)) if c.size else 0.0,
        histogram=[round(h, 6) for h in histogram(c)],
    )


def dimension_mae_mm(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean absolute error over both dimensions (mm); 0.0 for empty input."""
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if p.size == 0:
        return 0.0
    return float(np.mean(np.abs(p - t)))


@dataclass(frozen=True)
class ReleaseGate:
    """Thresholds a model must meet to be released. ``None`` means "not checked"."""

    min_accuracy: float | None = None
    max_dimension_mae_mm: float | None = None
    max_ece: float | None = None


@dataclass(frozen=True)
class GateFailure:
    """One metric on the wrong side of its threshold."""

    metric: str
    value: float
    threshold: float
    relation: str  # ">=" or "<=": what the value needed to be

    def message(self) -> str:
        return f"release gate failed: {self.metric} = {self.value:.4f}, needs {self.relation} {self.threshold:.4f}"


def check_gate(metrics: dict[str, Any], gate: ReleaseGate) -> list[GateFailure]:
    """Every failing threshold, in a fixed order (accuracy, MAE, ECE); empty when the gate passes.

    A missing or NaN metric fails its threshold: a gate never passes by accident.
    """
    failures: list[GateFailure] = []
    checks = (
        ("accuracy", gate.min_accuracy, ">="),
        ("dimension_mae_mm", gate.max_dimension_mae_mm, "<="),
        ("ece", gate.max_ece, "<="),
    )
    for name, threshold, relation in checks:
        if threshold is None:
            continue
        raw = metrics.get(name)
        value = float("nan") if raw is None else float(raw)
        ok = value >= threshold if relation == ">=" else value <= threshold
        if not ok:  # NaN compares False: fails
            failures.append(GateFailure(name, value, threshold, relation))
    return failures


def classification_report(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    confidence: np.ndarray,
    labels: Sequence[str],
    *,
    dims_pred: np.ndarray | None = None,
    dims_true: np.ndarray | None = None,
    low_confidence: float = 0.7,
) -> dict[str, Any]:
    """Everything about frames of KNOWN classes: accuracy, per-class P/R, confusion, MAE, ECE, confidence."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    conf = np.asarray(confidence, dtype=np.float64)
    cm = confusion_matrix(y_true, y_pred, len(labels))
    precision, recall = precision_recall(cm)
    report: dict[str, Any] = {
        "frames": int(y_true.size),
        "accuracy": accuracy(y_true, y_pred),
        "ece": expected_calibration_error(conf, y_true == y_pred),
        "per_class": {
            label: {"precision": float(precision[i]), "recall": float(recall[i]), "support": int(cm[i].sum())}
            for i, label in enumerate(labels)
        },
        "confusion": {"labels": list(labels), "matrix": cm.tolist()},
        "confidence": confidence_summary(conf, low_confidence),
    }
    if dims_pred is not None and dims_true is not None:
        report["dimension_mae_mm"] = dimension_mae_mm(dims_pred, dims_true)
    return report


def confidence_summary(confidence: np.ndarray, low_confidence: float) -> dict[str, Any]:
    """Mean, percentiles, low-confidence rate and histogram of top-1 confidences."""
    c = np.asarray(confidence, dtype=np.float64)
    return {
        "mean": float(c.mean()) if c.size else 0.0,
        **percentiles(c),
        "low_confidence_rate": float(np.mean(c < low_confidence)) if c.size else 0.0,
        "histogram": histogram(c),
    }
