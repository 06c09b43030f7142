"""5. Execution providers: ONNX Runtime's OpenVINO provider against its CPU provider, OpenVINO's own
runtime and ``cv2.dnn``, FP32 and INT8 on each, on the same preprocessed frames in one run.

Every peer runs the same tensors (held-out rendered frames through the manifest's preprocessing),
one thread each, in interleaved blocks so the shared machine's background falls on all of them
alike. Reported per peer: median and p99 ms per inference, CPU ms per inference, the ratio to the
CPU provider at the same precision, and how often its label agrees with the CPU provider's FP32
label. A peer that is not installed here says so.

The OpenVINO provider exists only in the ``onnxruntime-openvino`` build, which conflicts with
``onnxruntime``: run this benchmark with the OpenVINO environment's python (the one the tests build,
plus ``pip install openvino onnx`` for OpenVINO's runtime and for quantising)::

    PYTHONPATH=. ~/.cache/lineside/openvino-venv/bin/python -m benchmarks --only providers --out FILE
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from benchmarks.common import Check, Context, Section, fmt, pct
from edge_agent.config import InferenceConfig
from edge_agent.manifest import parse_manifest
from edge_agent.preprocess import Preprocessor
from edge_agent.runtime import CPU, ModelRunner

OV_EP = "OpenVINOExecutionProvider"
Infer = Callable[[np.ndarray], np.ndarray]  # input tensor -> class scores


def _ort_peer(bundle: Path, provider: str) -> Infer | str:
    if provider not in ort.get_available_providers():
        return f"not available in this onnxruntime build ({ort.__version__}): use onnxruntime-openvino"
    runner = ModelRunner.load(bundle, inference=InferenceConfig(providers=[provider]))
    k = runner.output_names.index(runner.manifest.outputs.class_output)
    return lambda x: runner.run_tensor(x)[k]


def _openvino_peer(bundle: Path) -> Infer | str:
    try:
        import openvino as ov  # type: ignore[import-not-found,unused-ignore]  # optional peer
    except ImportError:
        return "not installed (pip install openvino to add this peer)"
    manifest = parse_manifest((bundle / "manifest.json").read_bytes())
    compiled = ov.Core().compile_model(
        str(bundle / "model.onnx"), "CPU", {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1}
    )
    req = compiled.create_infer_request()
    out = compiled.output(manifest.outputs.class_output)
    return lambda x: np.asarray(req.infer({0: x})[out])


def _cv2_peer(bundle: Path) -> Infer | str:
    manifest = parse_manifest((bundle / "manifest.json").read_bytes())
    engine = getattr(cv2.dnn, "ENGINE_CLASSIC", None)  # OpenCV 5's new engine rejects QDQ models
    path = str(bundle / "model.onnx")
    try:
        net = (
            cv2.dnn.readNetFromONNX(path, engine=engine)
            if engine is not None
            else cv2.dnn.readNetFromONNX(path)
        )
    except cv2.error as exc:
        return f"cannot load: {str(exc).splitlines()[-1][:80]}"
    names = list(net.getUnconnectedOutLayersNames())
    k = names.index(manifest.outputs.class_output) if manifest.outputs.class_output in names else 0

    def infer(x: np.ndarray) -> np.ndarray:
        net.setInput(x)
        return np.asarray(net.forward(names)[k])

    return infer


def _time(peers: dict[str, Infer], xs: list[np.ndarray], rounds: int) -> dict[str, tuple[list[float], float]]:
    """Per peer: every call's ms and the CPU seconds of all its calls; blocks interleaved by round."""
    perf = time.perf_counter
    out: dict[str, tuple[list[float], float]] = {n: ([], 0.0) for n in peers}
    for infer in peers.values():  # warm-up
        for x in xs[:3]:
            infer(x)
    for _ in range(rounds):
        for name, infer in peers.items():
            lat, cpu = out[name]
            c0 = time.process_time()
            for x in xs:
                t = perf()
                infer(x)
                lat.append((perf() - t) * 1000)
            out[name] = (lat, cpu + time.process_time() - c0)
    return out


def run(ctx: Context) -> Section:
    from benchmarks.quant import int8_bundle
    from models.data import rendered_frames

    section = Section(
        "providers",
        "Execution providers and runtimes (1 thread, same tensors)",
        [
            "peer",
            "precision",
            "calls",
            "median ms",
            "p99 ms",
            "CPU ms/call",
            "vs CPU provider",
            "agrees with CPU FP32",
        ],
    )
    fp32 = ctx.bundles().v1
    try:
        int8, int8_origin = int8_bundle(ctx, fp32)
    except ImportError as exc:  # quantising needs onnx
        int8, int8_origin = None, f"not made ({exc.name} not installed)"
    manifest = parse_manifest((fp32 / "manifest.json").read_bytes())
    pre = Preprocessor(manifest.input)
    xs = [pre(f.image) for f in rendered_frames(manifest.labels, 9100, ctx.scale(8, 200))]
    rounds = ctx.scale(2, 10)
    reference: list[int] | None = None
    gains: dict[str, float] = {}
    for precision, bundle in (("FP32", fp32), ("INT8", int8)):
        if bundle is None:
            section.rows.append(["(all)", precision, "-", int8_origin, "-", "-", "-", "-"])
            continue
        made: dict[str, Infer | str] = {
            "ORT CPU provider": _ort_peer(bundle, CPU),
            "ORT OpenVINO provider": _ort_peer(bundle, OV_EP),
            "OpenVINO runtime": _openvino_peer(bundle),
            "cv2.dnn": _cv2_peer(bundle),
        }
        peers = {n: p for n, p in made.items() if not isinstance(p, str)}
        timings = _time(peers, xs, rounds)
        labels = {n: [int(np.argmax(p(x))) for x in xs] for n, p in peers.items()}
        if reference is None:
            reference = labels["ORT CPU provider"]
        cpu_median = pct(timings["ORT CPU provider"][0], 50)
        for name, p in made.items():
            if isinstance(p, str):
                section.rows.append([name, precision, "-", p, "-", "-", "-", "-"])
                continue
            lat, cpu = timings[name]
            median = pct(lat, 50)
            agree = float(np.mean(np.array(labels[name]) == np.array(reference)))
            section.rows.append(
                [
                    name,
                    precision,
                    len(lat),
                    fmt(median, 3),
                    fmt(pct(lat, 99), 3),
                    fmt(cpu * 1000 / len(lat), 3),
                    fmt(median / cpu_median, 2),
                    f"{agree:.1%}",
                ]
            )
            gains[f"{name} {precision}"] = median
    measured = [n for n in gains if n.startswith("ORT OpenVINO provider")]
    section.checks.append(
        Check(
            "OpenVINO provider measured beside the CPU provider, FP32 and INT8",
            bool(measured) or None,
            ", ".join(f"{n}: {gains[n]:.3f} ms" for n in sorted(gains)) if gains else "nothing measured",
        )
    )
    section.notes.append(
        f"{len(xs)} held-out rendered frames x {rounds} interleaved rounds per peer; INT8: {int8_origin}. "
        f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())}). "
        "'vs CPU provider': median ms over the CPU provider's at the same precision (below 1: faster)."
    )
    return section
