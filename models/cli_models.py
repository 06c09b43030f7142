"""``edge-models train | evaluate | quantize``: the command-line shell over the pipeline."""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lineside_common import cli as clitools
from lineside_common.atomic import atomic_write_json
from lineside_common.cli import CommandError
from lineside_common.errors import LinesideError
from models.metrics import ReleaseGate, check_gate


def register(sub: Any) -> None:
    """Add the train, evaluate and quantize subcommands."""
    p = sub.add_parser(
        "train",
        help="train a classifier from a TOML config and write a bundle",
        description="Render simulator frames, train the CNN (torch, CPU), calibrate, export ONNX, check "
        "ONNX Runtime against torch, check the config's release gates on the validation split, "
        "and write BUNDLE_DIR (manifest.json, model.onnx, selftest.npz, train.toml). Needs the train extra.",
    )
    p.add_argument("--config", required=True, type=Path, help="training config (TOML)")
    p.add_argument("--out", required=True, type=Path, help="bundle directory to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument(
        "--cache-dir", type=Path, default=Path("runs/cache/models"), help="preprocessed-frame cache"
    )
    p.add_argument("--no-cache", action="store_true", help="render everything afresh, cache nothing")
    p.add_argument("--ignore-gates", action="store_true", help="write the bundle even if a gate fails")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_train)

    e = sub.add_parser(
        "evaluate",
        help="evaluate a bundle as the agent runs it; optionally enforce a release gate",
        description="Run frames through the agent's exact path (Preprocessor → ONNX Runtime, 1 thread → "
        "Postprocessor). Frames come from --dataset, --recording or are rendered with --frames/--seed/--types "
        "(use seeds the model was not trained on). Types the model does not know are reported apart "
        "(their confidence is the drift signal). Exits 1 with one line naming the metric when a gate fails.",
    )
    e.add_argument("bundle", type=Path, help="bundle directory")
    e.add_argument("--recording", type=Path, help="a recording directory (edge-sim record)")
    e.add_argument(
        "--dataset",
        type=Path,
        help="a folder-per-label image set (DIR/LABEL/*.jpg, as `fleet samples export` writes); "
        "folders that are not the model's labels are reported as unknown types",
    )
    e.add_argument("--frames", type=int, default=1200, help="frames to render (default 1200)")
    e.add_argument("--seed", type=int, default=9000, help="render seed (default 9000: held out)")
    e.add_argument("--types", help="comma-separated package types (default: the model's labels)")
    e.add_argument(
        "--decode",
        choices=["color", "gray_reduced_2", "gray_reduced_4", "gray_reduced_8"],
        help="JPEG-encode each frame at the camera's quality and decode it this way first: the path the "
        "agent would serve (a manifest may declare a reduced greyscale path in input.validated_decodes "
        "once it is validated here)",
    )
    e.add_argument("--json", action="store_true", help="print the full report as JSON")
    e.add_argument("--out", type=Path, help="also write the JSON report to this file")
    e.add_argument("--gate", type=Path, help="TOML with min_accuracy / max_dimension_mae_mm / max_ece")
    e.add_argument("--min-accuracy", type=float)
    e.add_argument("--max-mae", type=float, dest="max_mae", help="max dimension MAE in mm")
    e.add_argument("--max-ece", type=float)
    e.set_defaults(func=_evaluate)

    q = sub.add_parser(
        "quantize",
        help="static INT8 (QDQ) quantisation of a bundle, calibrated on simulator frames",
        description="Quantise BUNDLE's model to INT8 (static, QDQ, per-channel weights) calibrated on "
        "rendered frames, regenerate selftest.npz from the INT8 model, re-evaluate it against the FP32 "
        "bundle and write --out. The INT8 bundle keeps the version and gets the name suffix '-int8'.",
    )
    q.add_argument("bundle", type=Path)
    q.add_argument("--out", required=True, type=Path)
    q.add_argument("--force", action="store_true", help="replace --out if it exists")
    q.add_argument("--calibration-frames", type=int, default=256)
    q.add_argument("--calibration-seed", type=int, default=7000)
    q.add_argument("--eval-frames", type=int, default=1200)
    q.add_argument("--eval-seed", type=int, default=9000)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_quantize)


@contextmanager
def _bar(total: int | None, description: str, json_mode: bool) -> Iterator[Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=None if not json_mode else _stderr_console(),
        transient=False,
        disable=not sys.stderr.isatty(),
    )
    with progress:
        task = progress.add_task(description, total=total, info="")
        yield progress, task


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _train(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise CommandError("training needs the train extra: pip install 'lineside[train]'") from exc
    from models.config import load_config
    from models.train import train

    config = load_config(args.config)
    text = args.config.read_text()
    n_data = (config.data.train_frames_per_type + config.data.val_frames_per_type) * len(config.labels)
    steps = config.train.epochs * -(
        -config.data.train_frames_per_type * len(config.labels) // config.train.batch_size
    )
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description:<8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    ) as bar:
        tasks = {
            "data": bar.add_task("frames", total=n_data, info=""),
            "train": bar.add_task("train", total=steps, info=""),
        }

        def progress(kind: str, advance: int, fields: dict[str, Any]) -> None:
            info = ""
            if fields:
                info = f"epoch {fields['epoch']}  loss {fields['loss']:.4f}  acc {fields['acc']:.4f}"
            bar.update(tasks[kind], advance=advance, info=info)

        result = train(
            config,
            args.out,
            force=args.force,
            cache_dir=None if args.no_cache else args.cache_dir,
            config_text=text,
            enforce_gates=not args.ignore_gates,
            progress=progress,
        )
    v = result.validation
    summary = {
        "bundle": str(result.bundle_dir),
        "model": result.manifest.ref,
        "validation": {k: v.get(k) for k in ("frames", "accuracy", "dimension_mae_mm", "ece")},
        "weights_sha256": result.weights_sha256,
        "export_max_abs_logit_diff": result.parity.max_abs_logit_diff,
        "train_seconds": round(result.train_seconds, 1),
        "data_seconds": round(result.data_seconds, 1),
    }
    if args.json:
        clitools.print_json(summary)
    else:
        print(
            f"{result.manifest.ref} → {result.bundle_dir}: validation accuracy {v['accuracy']:.4f}, "
            f"dimension MAE {v.get('dimension_mae_mm', float('nan')):.2f} mm, ECE {v['ece']:.4f} "
            f"(train {result.train_seconds:.0f} s, data {result.data_seconds:.0f} s)"
        )
    return 0


def _gate_from_args(args: argparse.Namespace) -> ReleaseGate | None:
    values: dict[str, float | None] = {"min_accuracy": None, "max_dimension_mae_mm": None, "max_ece": None}
    if args.gate is not None:
        try:
            raw = tomllib.loads(args.gate.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise CommandError(f"gate file {args.gate}: {exc}") from exc
        raw = raw.get("gates", raw)
        unknown = set(raw) - set(values)
        if unknown:
            raise CommandError(f"gate file {args.gate}: unknown keys {sorted(unknown)}")
        values.update({k: float(v) for k, v in raw.items()})
    for key, arg in (
        ("min_accuracy", "min_accuracy"),
        ("max_dimension_mae_mm", "max_mae"),
        ("max_ece", "max_ece"),
    ):
        if getattr(args, arg) is not None:
            values[key] = getattr(args, arg)
    if all(v is None for v in values.values()):
        return None
    return ReleaseGate(values["min_accuracy"], values["max_dimension_mae_mm"], values["max_ece"])


def _frames(args: argparse.Namespace, labels: list[str]) -> tuple[Any, int | None]:
    from models.data import recorded_frames, rendered_frames

    if args.dataset is not None:
        from models.dataset import dataset_frames, image_files

        return dataset_frames(args.dataset), len(image_files(args.dataset))
    if args.recording is not None:
        return recorded_frames(args.recording), None
    types = [t.strip() for t in args.types.split(",")] if args.types else labels
    try:
        from sim.packages import PackageType

        types = [PackageType.parse(t).label for t in types]
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    if args.frames < 1:
        raise CommandError("--frames must be at least 1")
    return rendered_frames(types, args.seed, args.frames), args.frames


def _evaluate(args: argparse.Namespace) -> int:
    from models.bundle import load_bundle
    from models.evaluate import evaluate_bundle

    gate = _gate_from_args(args)
    bundle = load_bundle(args.bundle)
    frames, total = _frames(args, bundle.manifest.labels)
    with _bar(total, f"evaluate {bundle.manifest.ref}", args.json) as (bar, task):
        report = evaluate_bundle(bundle, frames, progress=lambda k: bar.advance(task, k), decode=args.decode)
    report["source"] = (
        {"dataset": str(args.dataset)}
        if args.dataset
        else {"recording": str(args.recording)}
        if args.recording
        else {
            "seed": args.seed,
            "frames": args.frames,
            "types": args.types or ",".join(bundle.manifest.labels),
        }
    )
    if args.out is not None:
        atomic_write_json(args.out, report, default=str)
    if args.json:
        clitools.print_json(report)
    else:
        _print_report(report)
    if gate is not None:
        failures = check_gate(report, gate)
        if failures:
            raise CommandError(failures[0].message())
    return 0


def _print_report(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    mae = r.get("dimension_mae_mm")
    console.print(
        f"[bold]{r['model']}[/bold]: {r['frames']} frames, accuracy {r['accuracy']:.4f}, "
        f"dimension MAE {'n/a' if mae is None else f'{mae:.2f} mm'}, ECE {r['ece']:.4f}, "
        f"latency p50 {r['latency_ms']['p50']:.3f} ms p99 {r['latency_ms']['p99']:.3f} ms"
    )
    c = r["confidence"]
    console.print(
        f"confidence: mean {c['mean']:.3f} p05 {c['p05']:.3f} p50 {c['p50']:.3f} p95 {c['p95']:.3f}, "
        f"low-confidence rate {c['low_confidence_rate']:.3f}"
    )
    table = Table("class", "precision", "recall", "support")
    for label, pc in r["per_class"].items():
        table.add_row(label, f"{pc['precision']:.4f}", f"{pc['recall']:.4f}", str(pc["support"]))
    console.print(table)
    cm = Table("true \\ predicted", *r["confusion"]["labels"])
    for label, row in zip(r["confusion"]["labels"], r["confusion"]["matrix"], strict=True):
        cm.add_row(label, *(str(v) for v in row))
    console.print(cm)
    for package, u in r["unknown_types"].items():
        uc = u["confidence"]
        console.print(
            f"unknown type {package}: {u['frames']} frames, confidence mean {uc['mean']:.3f} "
            f"p50 {uc['p50']:.3f} p95 {uc['p95']:.3f}, low-confidence rate {uc['low_confidence_rate']:.3f}, "
            f"predicted as {u['predicted_as']}"
        )


def _quantize(args: argparse.Namespace) -> int:
    from models.quantize import quantize_bundle

    try:
        result = quantize_bundle(
            args.bundle,
            args.out,
            force=args.force,
            calibration_frames=args.calibration_frames,
            calibration_seed=args.calibration_seed,
            eval_frames=args.eval_frames,
            eval_seed=args.eval_seed,
        )
    except FileExistsError as exc:
        raise CommandError(str(exc)) from exc
    if args.json:
        clitools.print_json(result)
    else:
        print(
            f"{result['int8_model']} → {result['out']}: accuracy {result['fp32']['accuracy']:.4f} → "
            f"{result['int8']['accuracy']:.4f} ({result['accuracy_change_points']:+.2f} points), "
            f"latency p50 {result['fp32']['latency_p50_ms']:.3f} → {result['int8']['latency_p50_ms']:.3f} ms "
            f"(speed ratio {result['speed_ratio']:.2f}x), size {result['fp32']['bytes']} → {result['int8']['bytes']} bytes"
        )
    return 0


__all__ = ["LinesideError", "register"]
