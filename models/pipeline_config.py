"""PIPELINE.toml: one file says how a field-data release is trained, gated, released and rolled out.

See models/README.md ("The retraining pipeline") for a full example. Relative paths are read
relative to the PIPELINE.toml's folder. Validated once, here; nothing later reads the environment
(the CLI reads ``[release] token_env`` and hands the token in).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lineside_common.cli import CommandError
from models.field_gate import FieldGatePolicy


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PipelineSection(_Strict):
    name: str | None = None  # default: base_config's name
    version: str
    base_config: str  # a train.toml: architecture, input, render seeds, gates, probation, drift
    labels: list[str] | None = None  # default: the serving model's labels, then new dataset labels (sorted)
    serving: str | None = None  # the serving bundle to beat; default: train.init_from when it is a bundle


class PipelineData(_Strict):
    datasets: Annotated[list[str], Field(min_length=1)]  # labelled image folders to train on
    heldout: str  # labelled field frames, labels independent of the training labels
    render_share: Annotated[float, Field(ge=0, lt=1)] | None = 0.3


class PipelineGate(_Strict):
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05
    min_shared_frames: Annotated[int, Field(ge=0)] = 30
    min_discordant: Annotated[int, Field(ge=0)] = 10
    new_label_min_accuracy: Annotated[float, Field(ge=0, le=1)] = 0.9
    new_label_min_frames: Annotated[int, Field(ge=0)] = 20

    def policy(self) -> FieldGatePolicy:
        return FieldGatePolicy(**self.model_dump())


class PipelineRelease(_Strict):
    server: str  # fleet server URL
    keys: str  # keys directory from `fleet keys init` (targets key: signs offline, here)
    token_env: str = "LINESIDE_TOKEN"  # environment variable holding an admin API token


class PipelineRollout(_Strict):
    start: bool = False
    group: str | None = None
    devices: list[str] | None = None
    stages: str | None = None  # as `fleet rollout start --stages`, e.g. "1,25%,100%"
    soak: str | None = None  # e.g. "60s"
    shadow: str | None = None  # e.g. "25%", "2" or "all"
    shadow_soak_s: Annotated[float, Field(gt=0)] | None = None
    shadow_min_agreement: Annotated[float, Field(ge=0, le=1)] | None = None
    shadow_min_frames: Annotated[int, Field(ge=1)] | None = None
    no_baseline: str | None = None  # "inconclusive" | "pass"

    @model_validator(mode="after")
    def _who(self) -> PipelineRollout:
        if self.start and (self.group is None) == (self.devices is None):
            raise ValueError("rollout.start needs exactly one of group or devices")
        return self

    def options(self) -> dict[str, Any]:
        """Keyword options for FleetClient.start_rollout (as `fleet rollout start` sends them)."""
        return {
            "group": self.group,
            "devices": self.devices,
            "stages": self.stages,
            "soak": self.soak,
            "shadow": self.shadow,
            "shadow_soak": f"{self.shadow_soak_s:g}s" if self.shadow_soak_s is not None else None,
            "shadow_min_agreement": self.shadow_min_agreement,
            "shadow_min_frames": self.shadow_min_frames,
            "no_baseline": self.no_baseline,
        }


class PipelineConfig(_Strict):
    """The whole PIPELINE.toml; ``train`` holds overrides of base_config's ``[train]`` table."""

    pipeline: PipelineSection
    data: PipelineData
    train: dict[str, Any] = Field(default_factory=dict)
    gate: PipelineGate = Field(default_factory=PipelineGate)
    release: PipelineRelease | None = None
    rollout: PipelineRollout = Field(default_factory=PipelineRollout)


def _resolve(base: Path, path: str) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p))


def load_pipeline_config(path: Path | str) -> PipelineConfig:
    """Read and validate PIPELINE.toml, with relative paths made absolute; CommandError naming the field."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError as exc:
        raise CommandError(f"pipeline config {p} not found", reason="config") from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CommandError(f"pipeline config {p}: {exc}", reason="config") from exc
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "(root)"
        raise CommandError(f"pipeline config {p}: field {field}: {err['msg']}", reason="config") from exc
    base = p.resolve().parent
    pipe = config.pipeline.model_copy(
        update={
            "base_config": _resolve(base, config.pipeline.base_config),
            "serving": _resolve(base, config.pipeline.serving) if config.pipeline.serving else None,
        }
    )
    data = config.data.model_copy(
        update={
            "datasets": [_resolve(base, d) for d in config.data.datasets],
            "heldout": _resolve(base, config.data.heldout),
        }
    )
    train = dict(config.train)
    if isinstance(train.get("init_from"), str):
        train["init_from"] = _resolve(base, train["init_from"])
    release = config.release
    if release is not None:
        release = release.model_copy(update={"keys": _resolve(base, release.keys)})
    serving = pipe.serving
    if serving is None:
        init = train.get("init_from")
        if not (isinstance(init, str) and Path(init).is_dir()):
            raise CommandError(
                f"pipeline config {p}: give pipeline.serving (the serving bundle), or train.init_from as a "
                "bundle directory",
                reason="config",
            )
        pipe = pipe.model_copy(update={"serving": init})
    return config.model_copy(update={"pipeline": pipe, "data": data, "train": train, "release": release})
