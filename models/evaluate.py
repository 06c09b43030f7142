"""Evaluate a bundle exactly as the agent runs it.

frame → :class:`edge_agent.preprocess.Preprocessor` → ONNX Runtime session
(1 intra-op thread, no spinning) → :class:`edge_agent.preprocess.Postprocessor`.
Frames whose package type the model does not know (a new shape on the line)
are reported apart, as "unknown types": their confidence distribution is the
drift signal the fleet watches for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import cv2
import numpy as np

from edge_agent.decode import decode_jpeg
from edge_agent.preprocess import Postprocessor, Preprocessor
from models.bundle import Bundle, agent_session, output_names
from models.data import LabelledFrame
from models.metrics import classification_report, confidence_summary, percentiles

# The simulated camera's MJPG quality (sim.render.RenderConfig.jpeg_quality's default).
CAMERA_JPEG_QUALITY = 85


def through_decode(image: np.ndarray, decode: str) -> np.ndarray:
    """``image`` as the agent gets it from a camera's JPEG decoded as ``decode`` (edge_agent.decode)."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, CAMERA_JPEG_QUALITY])
    out = decode_jpeg(buf, decode) if ok else None
    if out is None:
        raise ValueError(f"frame does not round-trip through the {decode} decode")
    return out


def evaluate_bundle(
    bundle: Bundle,
    frames: Iterable[LabelledFrame],
    *,
    progress: Callable[[int], None] | None = None,
    decode: str | None = None,
    on_frame: Callable[[LabelledFrame, str, float], None] | None = None,
) -> dict[str, Any]:
    """Run every frame through the agent's path; the full report (see :mod:`models.metrics`).

    ``on_frame(frame, predicted label, confidence)`` is called for each frame (paired comparisons).

    ``decode``: each frame is first JPEG-encoded at the camera's quality and decoded that way
    (``color``, or a reduced greyscale path a manifest may declare in ``input.validated_decodes``),
    so a decode path is validated on the same pixels the agent would serve; None: frames as given.
    """
    manifest = bundle.manifest
    labels = manifest.labels
    index_of = {label: i for i, label in enumerate(labels)}
    session = agent_session(bundle.model)
    names = output_names(session)
    in_name = session.get_inputs()[0].name
    pre = Preprocessor(manifest.input)
    post = Postprocessor(manifest.outputs, names)
    low = manifest.drift.low_confidence

    y_true: list[int] = []
    y_pred: list[int] = []
    conf: list[float] = []
    dims_pred: list[tuple[float, float]] = []
    dims_true: list[tuple[float, float]] = []
    partial: list[bool] = []
    unknown: dict[str, list[tuple[float, str]]] = {}
    latency_ms: list[float] = []
    nonfinite = 0
    for frame in frames:
        x = pre(frame.image if decode is None else through_decode(frame.image, decode))
        t0 = time.perf_counter()
        outs = session.run(names, {in_name: x})
        latency_ms.append((time.perf_counter() - t0) * 1000.0)
        p = post(outs)
        nonfinite += 0 if p.finite else 1
        if on_frame is not None:
            on_frame(frame, labels[p.label_index], p.confidence)
        if frame.package in index_of:
            y_true.append(index_of[frame.package])
            y_pred.append(p.label_index)
            conf.append(p.confidence)
            partial.append(frame.partial)
            dims_true.append(frame.dims_mm)
            dims_pred.append(p.dimensions_mm or (float("nan"), float("nan")))
        else:
            unknown.setdefault(frame.package, []).append((p.confidence, labels[p.label_index]))
        if progress is not None:
            progress(1)

    # An image dataset has no measured dimensions (NaN): no MAE to report then.
    has_dims = manifest.outputs.dimensions_output is not None and not np.isnan(np.array(dims_true)).all()
    report: dict[str, Any] = {
        "model": manifest.ref,
        "labels": labels,
        "decode": decode or "as given",
        **classification_report(
            np.array(y_true, dtype=np.int64),
            np.array(y_pred, dtype=np.int64),
            np.array(conf),
            labels,
            dims_pred=np.array(dims_pred).reshape(-1, 2) if has_dims else None,
            dims_true=np.array(dims_true).reshape(-1, 2) if has_dims else None,
            low_confidence=low,
        ),
        "partial_frames": int(sum(partial)),
        "nonfinite_frames": nonfinite,
        "latency_ms": {
            **percentiles(np.array(latency_ms), (50, 99)),
            "mean": float(np.mean(latency_ms or [0])),
        },
        "unknown_types": {
            package: {
                "frames": len(items),
                "confidence": confidence_summary(np.array([c for c, _ in items]), low),
                "predicted_as": _counts([lab for _, lab in items]),
            }
            for package, items in sorted(unknown.items())
        },
    }
    if partial and any(partial):
        mask = np.array(partial)
        yt, yp = np.array(y_true)[mask], np.array(y_pred)[mask]
        report["partial_accuracy"] = float(np.mean(yt == yp))
    return report


def _counts(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def metrics_for_manifest(report: dict[str, Any]) -> dict[str, Any]:
    """The subset of a report that goes in ``manifest.metrics``."""
    out: dict[str, Any] = {
        "accuracy": round(report["accuracy"], 6),
        "ece": round(min(report["ece"], 1.0), 6),
        "frames": report["frames"],
    }
    if "dimension_mae_mm" in report:
        out["dimension_mae_mm"] = round(report["dimension_mae_mm"], 4)
    return out
