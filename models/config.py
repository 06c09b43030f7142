"""The training config: one TOML file says everything a release is built from.

Example (``models/releases/shapes-1.0.0/train.toml``)::

    name = "shapes"
    version = "1.0.0"
    labels = ["circle-80", "square-80"]

    [data]
    train_seed = 1000
    train_frames_per_type = 900

    [input]
    width = 128
    height = 88
    color_order = "GRAY"
    roi = { x = 0.0, y = 0.05, width = 1.0, height = 0.9 }

    [train]
    epochs = 10

    [gates]
    min_accuracy = 0.99
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge_agent.manifest import (
    DriftThresholds,
    InputSpec,
    ProbationGates,
    ResizeSpec,
    RoiSpec,
)
from lineside_common.cli import CommandError
from models.metrics import ReleaseGate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """Which simulator frames the model learns and is validated on (disjoint seeds)."""

    train_seed: int = 1000
    train_frames_per_type: Annotated[int, Field(ge=1, le=100_000)] = 900
    val_seed: int = 2000
    val_frames_per_type: Annotated[int, Field(ge=1, le=100_000)] = 200
    workers: Annotated[int, Field(ge=1, le=64)] = 2
    # Outlier exposure (Hendrycks et al. 2019): package types the model must NOT claim, trained towards a
    # uniform prediction, so that a type it has never seen gets low confidence (the drift signal).
    # Never list a type the model is later evaluated on as "unknown": that would be cheating.
    outlier_types: list[str] = Field(default_factory=list)
    outlier_frames_per_type: Annotated[int, Field(ge=0, le=100_000)] = 300
    # Labelled image folders (DIR/LABEL/*.jpg: `fleet samples export --labelled`, or any folder-per-label
    # set) trained on beside the renders. Their frames have no true dimensions: the dimension loss skips them.
    datasets: list[str] = Field(default_factory=list)
    # With datasets: the share of the training frames that are renders (balanced over the labels), e.g.
    # 0.5 = as many renders as field frames. None: train_frames_per_type renders per label, as without datasets.
    render_share: Annotated[float, Field(ge=0, lt=1)] | None = None

    @model_validator(mode="after")
    def _disjoint(self) -> DataConfig:
        if self.train_seed == self.val_seed:
            raise ValueError("train_seed and val_seed must differ (validation frames must be unseen)")
        return self


class InputConfig(_Strict):
    """The model's input: ROI (fractions of the frame), resize, colour order, normalisation."""

    width: Annotated[int, Field(gt=0, le=1024)] = 128
    height: Annotated[int, Field(gt=0, le=1024)] = 88
    color_order: Literal["GRAY", "RGB", "BGR"] = "GRAY"
    interpolation: Literal["area", "linear", "nearest", "cubic"] = "area"
    roi: RoiSpec | None = None
    mean: list[float] | None = None  # per channel, after scaling to [0, 1]; default 0.5
    std: list[float] | None = None  # default 0.25

    def spec(self) -> InputSpec:
        """The manifest's input spec: exactly the preprocessing the agent will run."""
        channels = 1 if self.color_order == "GRAY" else 3
        return InputSpec(
            name="image",
            shape=[1, channels, self.height, self.width],
            dtype="float32",
            layout="NCHW",
            color_order=self.color_order,
            resize=ResizeSpec(width=self.width, height=self.height, interpolation=self.interpolation),
            roi=self.roi,
            scale=1.0 / 255.0,
            mean=self.mean or [0.5] * channels,
            std=self.std or [0.25] * channels,
        )


class TrainParams(_Strict):
    """Optimiser and reproducibility."""

    epochs: Annotated[int, Field(ge=1, le=1000)] = 10
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 64
    lr: Annotated[float, Field(gt=0, le=1)] = 3e-3
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 1e-4
    dims_loss_weight: Annotated[float, Field(ge=0)] = 1.0
    outlier_loss_weight: Annotated[float, Field(ge=0)] = 0.5
    # With a near-perfect validation split the NLL-optimal temperature is tiny: it would push EVERY
    # prediction to ~1.0, new package types included, and erase the drift signal. 1.0 = never sharpen.
    min_temperature: Annotated[float, Field(ge=0.05, le=20.0)] = 1.0
    width: Annotated[int, Field(ge=4, le=256)] = Field(default=16, description="channels of the first conv")
    seed: int = 0
    threads: Annotated[int, Field(ge=1, le=256)] = 2
    flips: bool = Field(default=True, description="random h/v flips (labels and dims are flip-invariant)")
    # Fine-tuning: start from a checkpoint (.pt written by a pipeline) or a bundle directory trained by
    # this network (weights read from its ONNX initializers). New labels grow the head; old rows keep theirs.
    init_from: str | None = None


class GatesConfig(_Strict):
    """Release thresholds checked after training (and by ``evaluate --gate``)."""

    min_accuracy: Annotated[float, Field(ge=0, le=1)] | None = 0.99
    max_dimension_mae_mm: Annotated[float, Field(ge=0)] | None = 3.0
    max_ece: Annotated[float, Field(ge=0, le=1)] | None = 0.03

    def gate(self) -> ReleaseGate:
        return ReleaseGate(self.min_accuracy, self.max_dimension_mae_mm, self.max_ece)


class TrainConfig(_Strict):
    """A whole training run: what to learn, from which frames, how, and what it must reach."""

    name: str
    version: str
    description: str = ""
    labels: list[str]
    data: DataConfig = Field(default_factory=DataConfig)
    input: InputConfig = Field(default_factory=InputConfig)
    train: TrainParams = Field(default_factory=TrainParams)
    gates: GatesConfig = Field(default_factory=GatesConfig)
    probation: ProbationGates = Field(default_factory=ProbationGates)
    drift: DriftThresholds = Field(default_factory=DriftThresholds)
    min_agent_version: str = "0.1.0"
    device_classes: list[str] = Field(default_factory=lambda: ["*"])

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str]) -> list[str]:
        from sim.packages import PackageType

        if len(v) < 2 or len(set(v)) != len(v):
            raise ValueError("labels: at least 2, all different")
        for label in v:
            if PackageType.parse(label).label != label:
                raise ValueError(f"label {label!r} is not in canonical SHAPE-SIZE form")
        return v

    @model_validator(mode="after")
    def _outliers(self) -> TrainConfig:
        from sim.packages import PackageType

        for t in self.data.outlier_types:
            PackageType.parse(t)
        clash = set(self.data.outlier_types) & set(self.labels)
        if clash:
            raise ValueError(f"data.outlier_types must not contain labels: {sorted(clash)}")
        return self

    def digest(self) -> str:
        """SHA-256 of the canonical JSON of the non-default settings (stable when new fields are added)."""
        return hashlib.sha256(
            json.dumps(self.model_dump(mode="json", exclude_defaults=True), sort_keys=True).encode()
        ).hexdigest()


def load_config(path: Path | str) -> TrainConfig:
    """Read and validate a TOML training config; CommandError naming the first bad field."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError as exc:
        raise CommandError(f"config {p} not found") from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CommandError(f"config {p}: {exc}") from exc
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "(root)"
        raise CommandError(f"config {p}: field {field}: {err['msg']}") from exc
