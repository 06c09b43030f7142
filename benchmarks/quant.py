"""4. Quantisation: the INT8 (static QDQ) bundle against its FP32 source.

Speed: ``InferenceSession.run`` on the same preprocessed tensors, FP32 and INT8 interleaved in
blocks (1 thread), and the whole per-frame path (preprocess → run → postprocess, through
``ModelRunner.predict``). Accuracy: both bundles on the same held-out rendered frames (the
simulator's ground truth), through the agent's own ``ModelRunner``; plus how often they agree.
The INT8 bundle is ``models/releases/*int8*`` when one is built, else made here with
``models.quantize.quantize_model`` (calibrated on rendered frames).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.common import RELEASES, Check, Context, Section, fmt, pct
from edge_agent.config import InferenceConfig
from edge_agent.manifest import parse_manifest
from edge_agent.preprocess import Preprocessor
from edge_agent.runtime import ModelRunner


def int8_bundle(ctx: Context, fp32: Path) -> tuple[Path, str]:
    """An INT8 bundle of ``fp32``: a released one if present (full mode), else quantised here."""
    if ctx.bundles().kind == "release":
        for cand in sorted(RELEASES.glob("*int8*")):
            mpath = cand / "manifest.json"
            if mpath.exists() and (cand / "model.onnx").exists():
                src = parse_manifest(mpath.read_bytes()).extra.get("quantized_from", "")
                if src == parse_manifest((fp32 / "manifest.json").read_bytes()).ref:
                    return cand, f"{cand.relative_to(RELEASES.parent.parent)}"
    from models.bundle import load_bundle, write_bundle
    from models.data import rendered_frames
    from models.quantize import quantize_model

    src = load_bundle(fp32)
    m = src.manifest
    pre = Preprocessor(m.input)
    calib = np.concatenate([pre(f.image) for f in rendered_frames(m.labels, 7000, ctx.scale(8, 256))])
    model = quantize_model(src.model, m.input.name, calib)
    out = write_bundle(
        ctx.workdir / f"{fp32.name}-int8",
        m.model_copy(update={"name": m.name + "-int8"}),
        model,
        src.selftest["inputs"][:4],
        force=True,
    )
    return out, f"quantised here from {fp32.name} ({len(calib)} calibration frames)"


def _bare(runner: ModelRunner, xs: list[np.ndarray], reps: int) -> list[float]:
    perf = time.perf_counter
    out = []
    for _ in range(reps):
        for x in xs:
            t = perf()
            runner.run_tensor(x)
            out.append((perf() - t) * 1000)
    return out


def run(ctx: Context) -> Section:
    section = Section(
        "quantisation",
        "Quantisation: INT8 vs FP32 (CPU provider, 1 thread)",
        [
            "bundle",
            "model bytes",
            "run p50 ms",
            "run mean ms",
            "frame p50 ms",
            "accuracy",
            "agrees with FP32",
        ],
    )
    fp32_dir = ctx.bundles().v1
    int8_dir, origin = int8_bundle(ctx, fp32_dir)
    inference = InferenceConfig(intra_op_num_threads=1)
    fp32 = ModelRunner.load(fp32_dir, inference=inference)
    int8 = ModelRunner.load(int8_dir, inference=inference)
    from models.data import rendered_frames

    labels = fp32.manifest.labels
    frames = list(rendered_frames(labels, 9000, ctx.scale(12, 600)))
    xs = [fp32.preprocess(f.image) for f in frames[:64]]
    runs: dict[str, list[float]] = {"fp32": [], "int8": []}
    reps = ctx.scale(2, 20)
    for _ in range(ctx.scale(1, 5)):  # interleaved blocks: a noisy neighbour hits both alike
        runs["fp32"] += _bare(fp32, xs, reps)
        runs["int8"] += _bare(int8, xs, reps)
    per_frame: dict[str, list[float]] = {"fp32": [], "int8": []}
    preds: dict[str, list[int]] = {"fp32": [], "int8": []}
    perf = time.perf_counter
    for f in frames:
        for key, r in (("fp32", fp32), ("int8", int8)):
            t = perf()
            p = r.predict(f.image)
            per_frame[key].append((perf() - t) * 1000)
            preds[key].append(p.label_index)
    truth = [labels.index(f.package) if f.package in labels else -1 for f in frames]
    acc = {k: float(np.mean([p == t for p, t in zip(v, truth, strict=True)])) for k, v in preds.items()}
    agree = float(np.mean([a == b for a, b in zip(preds["fp32"], preds["int8"], strict=True)]))
    size = {
        "fp32": (fp32_dir / "model.onnx").stat().st_size,
        "int8": (int8_dir / "model.onnx").stat().st_size,
    }
    for key in ("fp32", "int8"):
        section.rows.append(
            [
                key.upper(),
                size[key],
                fmt(pct(runs[key], 50), 4),
                fmt(float(np.mean(runs[key])), 4),
                fmt(pct(per_frame[key], 50), 3),
                fmt(acc[key], 4),
                "-" if key == "fp32" else fmt(agree, 4),
            ]
        )
    speed = float(np.mean(runs["fp32"]) / np.mean(runs["int8"]))
    frame_speed = pct(per_frame["fp32"], 50) / pct(per_frame["int8"], 50)
    change = 100 * (acc["int8"] - acc["fp32"])
    section.rows.append(
        [
            "INT8/FP32",
            fmt(size["int8"] / size["fp32"]),
            "-",
            f"{speed:.2f}x faster",
            f"{frame_speed:.2f}x faster",
            f"{change:+.2f} points",
            "-",
        ]
    )
    section.notes += [
        f"INT8 bundle: {origin}. {len(frames)} held-out rendered frames (seed 9000) for accuracy; "
        f"{len(runs['fp32'])} timed runs per model on preprocessed tensors.",
    ]
    if ctx.bundles().kind == "synthetic":
        section.notes.append(
            "Synthetic bundles (the trained shapes releases were not built yet): the model is a few "
            "ONNX nodes, so its accuracy is chance and its speed says little; rerun with "
            "models/releases/shapes-1.0.0 built for real figures."
        )
    section.checks.append(
        Check("INT8 speed ratio and accuracy change reported", True, f"{speed:.2f}x, {change:+.2f} points")
    )
    fp32.close()
    int8.close()
    return section
