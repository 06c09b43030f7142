"""``edge-models package MODEL.onnx --out BUNDLE``: the command-line door for foreign models."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lineside_common import cli as clitools
from lineside_common.cli import CommandError

_EPILOG = """\
Declare the model's preprocessing with options or a TOML file (--config) holding the same
keys (name, version, labels, layout, color_order, resize, pad_value, interpolation, size,
roi, scale, mean, std, output_kind, class_output, dimensions_output, device_classes,
probation_s, probation_min_frames);
options override the file. Lists are comma-separated on the command line.

  edge-models package colours.onnx --out bundles/colours-1.0.0 --name colours \\
      --version 1.0.0 --labels red,green,blue --layout NHWC --color-order RGB \\
      --resize letterbox --pad-value 114 --scale 1/255 --samples samples/

The samples folder (images, or a folder per label named as the labels) gives the
self-test inputs and the confidence baseline; with label folders, accuracy too.
"""


def register(sub: Any) -> None:
    """Add the package subcommand."""
    p = sub.add_parser(
        "package",
        help="turn any ONNX image classifier into a bundle ready for `fleet release`",
        description="Check that MODEL loads in ONNX Runtime and that its input and outputs match the "
        "declared preprocessing and labels, run it on --samples exactly as the agent will, and write "
        "BUNDLE (manifest.json, model.onnx, selftest.npz) with a confidence baseline, a self-test and "
        "probation/drift gates derived from the samples.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", type=Path, help="the ONNX model (one image input)")
    p.add_argument("--out", required=True, type=Path, help="bundle directory to write")
    p.add_argument("--samples", required=True, type=Path, help="folder of sample images (>= 8)")
    p.add_argument("--config", type=Path, help="TOML with the declaration (options override it)")
    p.add_argument("--name", help="model name (lower case, e.g. colours)")
    p.add_argument("--version", help="semantic version, e.g. 1.0.0")
    p.add_argument("--labels", help="comma-separated class names, in the model's output order")
    p.add_argument("--labels-file", type=Path, help="class names, one a line (instead of --labels)")
    p.add_argument("--description")
    p.add_argument("--layout", choices=["NCHW", "NHWC"])
    p.add_argument("--color-order", choices=["RGB", "BGR", "GRAY"])
    p.add_argument("--resize", choices=["stretch", "letterbox"], help="default stretch")
    p.add_argument("--pad-value", type=int, help="letterbox fill, 0-255 (default 0)")
    p.add_argument("--interpolation", choices=["area", "linear", "nearest", "cubic"])
    p.add_argument("--size", help="WIDTH,HEIGHT (only for a model with a dynamic input size)")
    p.add_argument("--roi", help="crop before resizing: X,Y,WIDTH,HEIGHT as fractions of the frame")
    p.add_argument("--scale", help="one factor or one per channel, e.g. 1/255 or 0.0171,0.0175,0.0174")
    p.add_argument("--mean", help="per channel, after scaling, e.g. 0.485,0.456,0.406")
    p.add_argument("--std", help="per channel, e.g. 0.229,0.224,0.225")
    p.add_argument("--output-kind", choices=["logits", "probabilities"], help="default logits")
    p.add_argument("--class-output", help="output name of the class scores (default: the first output)")
    p.add_argument("--dimensions-output", help="output name of an optional (width_mm, height_mm) head")
    p.add_argument("--device-classes", help='comma-separated device classes (default "*": any)')
    p.add_argument(
        "--low-confidence",
        type=float,
        default=0.5,
        help="a frame under this top-1 confidence counts as low-confidence (default 0.5)",
    )
    p.add_argument("--probation-s", type=float, help="probation window in seconds (default 30)")
    p.add_argument("--probation-min-frames", type=int, help="frames probation needs (default 50)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", action="store_true", help="print the result (or the error) as JSON")
    p.set_defaults(func=_package)


def _number(text: str) -> float:
    text = text.strip()
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)


def _numbers(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [_number(t) for t in text.split(",")]
    except (ValueError, ZeroDivisionError) as exc:
        raise CommandError(f"--{what}: {text!r} is not a comma-separated list of numbers") from exc


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    labels: list[str] | None = None
    if args.labels_file is not None:
        try:
            labels = [ln.strip() for ln in args.labels_file.read_text().splitlines() if ln.strip()]
        except OSError as exc:
            raise CommandError(f"--labels-file {args.labels_file}: {exc.strerror}") from exc
    elif args.labels is not None:
        labels = [t.strip() for t in args.labels.split(",")]
    scale = _numbers(args.scale, "scale")
    size = _numbers(args.size, "size")
    return {
        "name": args.name,
        "version": args.version,
        "labels": labels,
        "description": args.description,
        "layout": args.layout,
        "color_order": args.color_order,
        "resize": args.resize,
        "pad_value": args.pad_value,
        "interpolation": args.interpolation,
        "size": [int(v) for v in size] if size is not None else None,
        "roi": _numbers(args.roi, "roi"),
        "scale": (scale[0] if len(scale) == 1 else scale) if scale is not None else None,
        "mean": _numbers(args.mean, "mean"),
        "std": _numbers(args.std, "std"),
        "output_kind": args.output_kind,
        "class_output": args.class_output,
        "dimensions_output": args.dimensions_output,
        "device_classes": args.device_classes.split(",") if args.device_classes else None,
        "probation_s": args.probation_s,
        "probation_min_frames": args.probation_min_frames,
    }


def _package(args: argparse.Namespace) -> int:
    from models.package import PackagingError, load_spec, package_model

    try:
        spec = load_spec(args.config, _overrides(args))
        result = package_model(
            args.model, spec, args.samples, args.out, force=args.force, low_confidence=args.low_confidence
        )
    except PackagingError as exc:
        if args.json:
            clitools.print_json({"ok": False, "reason": exc.reason, "error": str(exc)})
        raise CommandError(str(exc)) from exc
    m = result.manifest
    summary = {
        "ok": True,
        "bundle": str(result.bundle_dir),
        "model": m.ref,
        "schema_version": m.schema_version,
        "samples": result.samples,
        "accuracy": result.accuracy,
        "predictions": result.predictions,
        "confidence_baseline": {"p50": m.confidence_baseline.p50, "p05": m.confidence_baseline.p05},
    }
    if args.json:
        clitools.print_json(summary)
    else:
        acc = "" if result.accuracy is None else f", accuracy {result.accuracy:.4f}"
        print(
            f"{m.ref} → {result.bundle_dir}: {result.samples} samples{acc}, confidence p50 "
            f"{m.confidence_baseline.p50:.3f}; next: fleet release {result.bundle_dir}"
        )
    return 0
