"""Turn any ONNX image classifier into a Lineside bundle: ``edge-models package MODEL.onnx``.

The user declares how the model wants its input (:class:`PackageSpec`, from command-line
options or a small TOML file); this module checks the declaration against the model, runs
the model on a folder of sample images exactly as the agent will (Preprocessor → ONNX Runtime
with the agent's settings → Postprocessor), and writes a bundle with:

- the manifest (schema 2 only when letterbox or a per-channel scale is used),
- a confidence baseline from the samples' top-1 confidences (what drift is measured against),
- ``selftest.npz`` from the first samples (what the device must reproduce before serving),
- probation and drift defaults derived from that baseline, so a healthy model passes probation
  and a model that sees something new is flagged,
- accuracy in ``metrics`` when the samples are in a folder-per-label layout whose folders are
  labels.

Pure checks (:func:`check_input`, :func:`check_class_output`, :func:`derived_gates`) are
separate from the shell (:func:`package_model`) that loads files and runs the model.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.manifest import (
    DriftThresholds,
    InputSpec,
    Manifest,
    Metrics,
    OutputSpec,
    ProbationGates,
    ResizeSpec,
    RoiSpec,
)
from edge_agent.preprocess import Postprocessor, Preprocessor
from lineside_common.errors import LocalError, ModelLoadError
from models.bundle import SELFTEST_COUNT, agent_session, output_names, write_bundle
from models.dataset import DatasetError, dataset_frames
from models.metrics import accuracy, confidence_baseline

_ORT_DTYPES = {"tensor(float)": "float32"}
MIN_SAMPLES = 8


class PackagingError(LocalError):
    """The model does not match its declaration, or the samples cannot be used.

    ``reason``: ``config`` (a bad declaration), ``model_load``, ``input_mismatch``,
    ``output_mismatch``, ``samples`` (too few, unreadable) or ``exists`` (``--out`` is there).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class PackageSpec(BaseModel):
    """What a user declares about a foreign model (the TOML file's keys; CLI options override)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    labels: list[str]
    description: str = ""
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    color_order: Literal["RGB", "BGR", "GRAY"] = "RGB"
    resize: Literal["stretch", "letterbox"] = "stretch"
    pad_value: int = Field(default=0, ge=0, le=255)
    interpolation: Literal["area", "linear", "nearest", "cubic"] = "linear"
    size: tuple[int, int] | None = Field(default=None, description="width, height; default: the model's")
    roi: tuple[float, float, float, float] | None = Field(default=None, description="x, y, width, height")
    scale: float | list[float] = 1.0 / 255.0
    mean: list[float] | None = None
    std: list[float] | None = None
    output_kind: Literal["logits", "probabilities"] = "logits"
    class_output: str | None = Field(default=None, description="default: the model's first output")
    dimensions_output: str | None = None
    device_classes: list[str] = Field(default_factory=lambda: ["*"])
    min_agent_version: str = "0.1.0"
    probation_s: float = Field(default=30.0, gt=0, le=86400, description="probation window")
    probation_min_frames: int = Field(default=50, ge=1)


def load_spec(path: Path | None, overrides: dict[str, Any]) -> PackageSpec:
    """A :class:`PackageSpec` from a TOML file (optional) with ``overrides`` (not None) on top."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise PackagingError(f"package config {path}: {exc}", reason="config") from exc
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return PackageSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        if err["type"] == "missing":
            option = "--" + str(err["loc"][0]).replace("_", "-")
            raise PackagingError(
                f"no {where}: pass {option} or set {where} in --config", reason="config"
            ) from exc
        raise PackagingError(f"package declaration {where}: {err['msg']}", reason="config") from exc


def _dims(layout: str, shape: Sequence[Any]) -> tuple[Any, Any, Any]:
    """(channels, height, width) of a 4-D shape in ``layout``."""
    return (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])


def check_input(spec: PackageSpec, model_shape: Sequence[Any], model_type: str) -> tuple[int, int, str]:
    """The model input's (width, height, dtype), or PackagingError if it contradicts the declaration.

    ``model_shape`` is ONNX Runtime's: ints, or strings / None for dynamic dimensions.
    """
    if len(model_shape) != 4:
        raise PackagingError(
            f"the model's input has shape {list(model_shape)}, not a 4-D image batch", reason="input_mismatch"
        )
    dtype = _ORT_DTYPES.get(model_type)
    if dtype != "float32":
        # The agent can feed float16/uint8, but the bundle's self-test is written in float32.
        raise PackagingError(
            f"the model's input is {model_type}; packaging supports float32 image inputs",
            reason="input_mismatch",
        )
    channels = 1 if spec.color_order == "GRAY" else 3
    c, h, w = _dims(spec.layout, model_shape)
    if isinstance(c, int) and c != channels:
        other = "NHWC" if spec.layout == "NCHW" else "NCHW"
        hint = f" (is it {other}?)" if isinstance(_dims(other, model_shape)[0], int) else ""
        raise PackagingError(
            f"declared {spec.layout} {spec.color_order} ({channels} channels) but the model's input "
            f"{list(model_shape)} has {c} there{hint}",
            reason="input_mismatch",
        )
    if isinstance(model_shape[0], int) and model_shape[0] != 1:
        raise PackagingError(
            f"the model's batch dimension is fixed at {model_shape[0]}; the agent runs one frame at a time",
            reason="input_mismatch",
        )
    static = isinstance(h, int) and isinstance(w, int)
    if spec.size is not None:
        width, height = spec.size
        if static and (width, height) != (w, h):
            raise PackagingError(
                f"declared size {width}x{height} but the model's input is {w}x{h}", reason="input_mismatch"
            )
    elif static:
        width, height = int(w), int(h)
    else:
        raise PackagingError(
            "the model's input height/width are dynamic: declare --size WIDTH,HEIGHT", reason="input_mismatch"
        )
    return width, height, dtype


def check_class_output(spec: PackageSpec, model_shape: Sequence[Any]) -> None:
    """PackagingError unless the class output can hold one score per label."""
    size = 1
    for d in model_shape[1:]:
        if not isinstance(d, int):
            return  # dynamic: checked on the samples' outputs instead
        size *= d
    if size != len(spec.labels):
        raise PackagingError(
            f"the model's output {spec.class_output!r} has {size} values per frame "
            f"but {len(spec.labels)} labels were declared",
            reason="output_mismatch",
        )


def derived_gates(conf: np.ndarray, low_confidence: float) -> tuple[ProbationGates, DriftThresholds]:
    """Probation and drift defaults from the samples' confidences.

    A model whose typical confidence is modest (many classes, softmax over many logits) would
    fail fixed gates made for our own calibrated classifier, so the floors follow the baseline:
    probation wants at least 80 % of the samples' median confidence and no more than twice
    (plus 10 points) their low-confidence rate; drift uses the same low-confidence threshold.
    """
    p50 = float(np.percentile(conf, 50)) if conf.size else 0.0
    low_rate = float(np.mean(conf < low_confidence)) if conf.size else 0.0
    probation = ProbationGates(
        min_confidence_p50=round(min(0.6, 0.8 * p50), 4),
        max_low_confidence_rate=round(min(1.0, max(0.25, 2 * low_rate + 0.1)), 4),
    )
    drift = DriftThresholds(
        low_confidence=low_confidence,
        max_low_confidence_rate=round(min(1.0, max(0.15, low_rate + 0.15)), 4),
    )
    return probation, drift


@dataclass
class PackageResult:
    """What :func:`package_model` wrote and measured."""

    bundle_dir: Path
    manifest: Manifest
    samples: int
    accuracy: float | None
    predictions: dict[str, int] = field(default_factory=dict)


def _input_spec(spec: PackageSpec, name: str, width: int, height: int, dtype: str) -> InputSpec:
    channels = 1 if spec.color_order == "GRAY" else 3
    shape = [1, channels, height, width] if spec.layout == "NCHW" else [1, height, width, channels]
    roi = None
    if spec.roi is not None:
        x, y, w, h = spec.roi
        roi = RoiSpec(x=x, y=y, width=w, height=h)
    return InputSpec(
        name=name,
        shape=shape,
        dtype=dtype,  # type: ignore[arg-type]  # one of _ORT_DTYPES' values
        layout=spec.layout,
        color_order=spec.color_order,
        resize=ResizeSpec(
            width=width,
            height=height,
            interpolation=spec.interpolation,
            mode=spec.resize,
            pad_value=spec.pad_value if spec.resize == "letterbox" else 0,
        ),
        roi=roi,
        scale=spec.scale,
        mean=spec.mean if spec.mean is not None else [0.0] * channels,
        std=spec.std if spec.std is not None else [1.0] * channels,
    )


def package_model(
    model_path: Path,
    spec: PackageSpec,
    samples_dir: Path,
    out_dir: Path,
    *,
    force: bool = False,
    low_confidence: float = 0.5,
) -> PackageResult:
    """Check ``model_path`` against ``spec``, measure it on ``samples_dir`` and write ``out_dir``."""
    if out_dir.exists() and not force:
        raise PackagingError(f"{out_dir} exists (use --force to replace it)", reason="exists")
    try:
        model = model_path.read_bytes()
    except OSError as exc:
        raise PackagingError(f"cannot read {model_path}: {exc.strerror}", reason="model_load") from exc
    try:
        session = agent_session(model)
    except ModelLoadError as exc:
        raise PackagingError(str(exc), reason="model_load") from exc
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise PackagingError(
            f"the model has {len(inputs)} inputs; the agent feeds exactly one image", reason="input_mismatch"
        )
    width, height, dtype = check_input(spec, inputs[0].shape, inputs[0].type)
    names = output_names(session)
    outputs_by_name = {o.name: o for o in session.get_outputs()}
    class_output = spec.class_output or names[0]
    spec = spec.model_copy(update={"class_output": class_output})
    for wanted in (class_output, spec.dimensions_output):
        if wanted is not None and wanted not in outputs_by_name:
            raise PackagingError(
                f"the model has no output {wanted!r} (it has {names})", reason="output_mismatch"
            )
    check_class_output(spec, outputs_by_name[class_output].shape)

    try:
        input_spec = _input_spec(spec, inputs[0].name, width, height, dtype)
        outputs = OutputSpec(
            class_output=class_output, class_kind=spec.output_kind, dimensions_output=spec.dimensions_output
        )
    except ValidationError as exc:
        raise PackagingError(f"package declaration: {exc.errors()[0]['msg']}", reason="config") from exc

    pre = Preprocessor(input_spec)
    post = Postprocessor(outputs, names)
    x_all: list[np.ndarray] = []
    conf: list[float] = []
    y_true: list[int] = []
    y_pred: list[int] = []
    predictions: dict[str, int] = {}
    index_of = {label: i for i, label in enumerate(spec.labels)}
    try:
        frames = list(dataset_frames(samples_dir))
    except DatasetError as exc:
        raise PackagingError(f"samples: {exc}", reason="samples") from exc
    for frame in frames:
        x = pre(frame.image)
        outs = session.run(names, {input_spec.name: x})
        scores = np.asarray(outs[names.index(class_output)], dtype=np.float32).reshape(-1)
        if scores.size != len(spec.labels):
            raise PackagingError(
                f"the model's output {class_output!r} gave {scores.size} values for one frame "
                f"but {len(spec.labels)} labels were declared",
                reason="output_mismatch",
            )
        if spec.dimensions_output is not None:
            dims = np.asarray(outs[names.index(spec.dimensions_output)]).reshape(-1)
            if dims.size != 2:
                raise PackagingError(
                    f"the dimensions output {spec.dimensions_output!r} gave {dims.size} values, not 2",
                    reason="output_mismatch",
                )
        if spec.output_kind == "probabilities" and not (
            np.all(scores >= -1e-4) and np.all(scores <= 1 + 1e-4) and abs(float(scores.sum()) - 1) < 1e-2
        ):
            raise PackagingError(
                f"declared probabilities but {class_output!r} does not sum to 1 over [0, 1] "
                f"(sum {float(scores.sum()):.3g}): declare --output-kind logits",
                reason="output_mismatch",
            )
        p = post(outs)
        x_all.append(x[0])
        conf.append(p.confidence)
        label = spec.labels[p.label_index]
        predictions[label] = predictions.get(label, 0) + 1
        if frame.package in index_of:
            y_true.append(index_of[frame.package])
            y_pred.append(p.label_index)
    if len(x_all) < MIN_SAMPLES:
        raise PackagingError(
            f"{len(x_all)} sample images under {samples_dir}; at least {MIN_SAMPLES} are needed "
            "for the self-test and the confidence baseline",
            reason="samples",
        )
    c = np.array(conf)
    probation, drift = derived_gates(c, low_confidence)
    probation = probation.model_copy(
        update={"window_s": spec.probation_s, "min_frames": spec.probation_min_frames}
    )
    acc = accuracy(np.array(y_true), np.array(y_pred)) if y_true else None
    schema: Literal[1, 2] = 2 if input_spec.schema2_fields() else 1
    try:
        manifest = Manifest(
            schema_version=schema,
            name=spec.name,
            version=spec.version,
            created=datetime.now(UTC).replace(microsecond=0),
            description=spec.description or f"ONNX classifier packaged from {model_path.name}",
            labels=list(spec.labels),
            input=input_spec,
            outputs=outputs,
            metrics=Metrics(accuracy=acc, frames=len(y_true) or None),
            confidence_baseline=confidence_baseline(c, drift.low_confidence),
            probation=probation,
            drift=drift,
            min_agent_version=spec.min_agent_version,
            device_classes=list(spec.device_classes),
            extra={"packaged_from": model_path.name, "sample_images": len(x_all)},
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        raise PackagingError(f"manifest {where}: {err['msg']}", reason="config") from exc
    golden = np.stack(x_all[:: max(1, len(x_all) // SELFTEST_COUNT)][:SELFTEST_COUNT])
    try:
        bundle_dir = write_bundle(out_dir, manifest, model, golden, force=force)
    except FileExistsError as exc:
        raise PackagingError(str(exc), reason="exists") from exc
    return PackageResult(bundle_dir, manifest, len(x_all), acc, predictions)
