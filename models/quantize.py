"""Static INT8 quantisation (QDQ) of a bundle, calibrated on simulator frames.

Static QDQ with per-channel weights: dynamic quantisation made this CNN ~7x
slower (it re-quantises activations at run time, and ORT's dynamic conv path is
slow). The INT8 bundle keeps the FP32 bundle's VERSION and gets the NAME suffix
``-int8`` (``shapes@2.0.0`` → ``shapes-int8@2.0.0``): the same release, a
different artefact, and a device chooses one line or the other; a build tag
(``2.0.0+int8``) would compare equal to the FP32 version under semver and the
store could not tell them apart.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.preprocess import Preprocessor
from models.bundle import SELFTEST_COUNT, load_bundle, write_bundle
from models.data import rendered_frames
from models.evaluate import evaluate_bundle, metrics_for_manifest

log = logging.getLogger(__name__)

INT8_SUFFIX = "-int8"


class _FrameReader:
    """onnxruntime CalibrationDataReader over preprocessed frames."""

    def __init__(self, input_name: str, inputs: np.ndarray) -> None:
        self._name = input_name
        self._inputs = inputs
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._inputs):
            return None
        x = self._inputs[self._i : self._i + 1]
        self._i += 1
        return {self._name: x}

    def rewind(self) -> None:
        self._i = 0


def quantize_model(model: bytes, input_name: str, calibration: np.ndarray) -> bytes:
    """Static QDQ INT8 (per-channel weights, MinMax calibration) of an FP32 ONNX model."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_FrameReader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="lineside-quant-") as tmp:
        src, pre, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(model)
        # skip_symbolic_shape: the symbolic pass needs sympy, and our shapes are all static anyway.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(dst),
            Reader(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=["Conv", "MatMul", "Gemm"],
        )
        return dst.read_bytes()


def quantize_bundle(
    bundle_dir: Path | str,
    out_dir: Path | str,
    *,
    force: bool = False,
    calibration_frames: int = 256,
    calibration_seed: int = 7000,
    eval_frames: int = 1200,
    eval_seed: int = 9000,
) -> dict[str, Any]:
    """Quantise a bundle, write the INT8 bundle, and compare both on the same held-out frames."""
    src = load_bundle(bundle_dir)
    m = src.manifest
    if Path(out_dir).exists() and not force:
        raise FileExistsError(f"{out_dir} exists (use --force to replace it)")
    pre = Preprocessor(m.input)
    calib = np.concatenate(
        [pre(f.image) for f in rendered_frames(m.labels, calibration_seed, calibration_frames)]
    )
    int8 = quantize_model(src.model, m.input.name, calib)

    frames = list(rendered_frames(m.labels, eval_seed, eval_frames))
    fp32_report = evaluate_bundle(src, frames)
    # Evaluate the INT8 model through a temporary bundle so the same agent path runs it.
    with tempfile.TemporaryDirectory(prefix="lineside-int8-") as tmp:
        probe = write_bundle(Path(tmp) / "b", m, int8, src.selftest["inputs"][:1])
        int8_report = evaluate_bundle(load_bundle(probe), frames)

    name = m.name if m.name.endswith(INT8_SUFFIX) else m.name + INT8_SUFFIX
    manifest = m.model_copy(
        update={
            "name": name,
            "description": (m.description + " INT8 (static QDQ) quantisation.").strip(),
            "metrics": m.metrics.model_validate(
                {**metrics_for_manifest(int8_report), "split": f"rendered seed {eval_seed}"}
            ),
            "extra": {
                **m.extra,
                "quantized_from": f"{m.ref}",
                "quantization": "static QDQ INT8, per-channel weights, MinMax, "
                f"{calibration_frames} frames seed {calibration_seed}",
            },
        }
    )
    golden = src.selftest["inputs"][:SELFTEST_COUNT]
    write_bundle(out_dir, manifest, int8, golden, force=force)
    lat32, lat8 = fp32_report["latency_ms"]["p50"], int8_report["latency_ms"]["p50"]
    return {
        "out": str(out_dir),
        "fp32_model": m.ref,
        "int8_model": manifest.ref,
        "frames": eval_frames,
        "fp32": {
            "accuracy": fp32_report["accuracy"],
            "dimension_mae_mm": fp32_report.get("dimension_mae_mm"),
            "ece": fp32_report["ece"],
            "latency_p50_ms": lat32,
            "latency_p99_ms": fp32_report["latency_ms"]["p99"],
            "bytes": len(src.model),
        },
        "int8": {
            "accuracy": int8_report["accuracy"],
            "dimension_mae_mm": int8_report.get("dimension_mae_mm"),
            "ece": int8_report["ece"],
            "latency_p50_ms": lat8,
            "latency_p99_ms": int8_report["latency_ms"]["p99"],
            "bytes": len(int8),
        },
        "accuracy_change_points": 100.0 * (int8_report["accuracy"] - fp32_report["accuracy"]),
        "speed_ratio": lat32 / lat8 if lat8 > 0 else float("nan"),
    }
