"""Scenarios: which package types pass the camera, and in what mix, over time.

A scenario is a list of phases. Each phase lasts ``duration_s`` and draws
package types with weights ``mix``; with ``mix_end`` the weights move linearly
from ``mix`` to ``mix_end`` over the phase (a new type ramping in). Past the
last phase the last phase's end mix holds. JSON example::

    {"name": "new-packages",
     "phases": [
       {"duration_s": 60, "mix": {"circle-80": 1, "square-80": 1}},
       {"duration_s": 20, "mix": {"circle-80": 1, "square-80": 1},
        "mix_end": {"circle-80": 1, "square-80": 1, "hexagon-100": 1}}]}

The type sequence for a recording is drawn from the seed alone: same seed,
same sequence.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lineside_common.errors import ConfigError
from sim.packages import PackageType, parse_types


class ScenarioError(ConfigError):
    """A scenario file or ``--types`` list is invalid."""


def _check_mix(mix: dict[str, float]) -> dict[str, float]:
    for label, weight in mix.items():
        PackageType.parse(label)  # ValueError names the bad label
        if weight < 0:
            raise ValueError(f"weight of {label} is negative")
    if sum(mix.values()) <= 0:
        raise ValueError("mix weights must not all be zero")
    return mix


class Phase(BaseModel):
    """A stretch of time with one package mix (or a linear ramp between two)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    duration_s: float = Field(gt=0, description="how long the phase lasts, in seconds")
    mix: dict[str, float] = Field(description="package type -> relative weight at the phase's start")
    mix_end: dict[str, float] | None = Field(
        default=None, description="weights at the phase's end; linear ramp in between"
    )

    @field_validator("mix", "mix_end")
    @classmethod
    def _check(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        return None if v is None else _check_mix(v)

    def weights_at(self, fraction: float) -> dict[str, float]:
        """Weights ``fraction`` (0..1) of the way through the phase, normalised to sum 1."""
        end = self.mix_end or self.mix
        f = min(max(fraction, 0.0), 1.0)
        labels = sorted(set(self.mix) | set(end))
        raw = {k: (1 - f) * self.mix.get(k, 0.0) + f * end.get(k, 0.0) for k in labels}
        total = sum(raw.values())
        return {k: v / total for k, v in raw.items() if v > 0}


class Scenario(BaseModel):
    """Phases played one after another."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "custom"
    description: str = ""
    phases: list[Phase] = Field(min_length=1)

    @property
    def duration_s(self) -> float:
        return sum(p.duration_s for p in self.phases)

    @property
    def package_types(self) -> list[str]:
        """Every type that can appear, sorted."""
        labels: set[str] = set()
        for p in self.phases:
            labels |= set(p.mix) | set(p.mix_end or {})
        return sorted(labels)

    def weights_at(self, t_s: float) -> dict[str, float]:
        """Normalised mix at time ``t_s`` from the start."""
        start = 0.0
        for phase in self.phases:
            if t_s < start + phase.duration_s:
                return phase.weights_at((t_s - start) / phase.duration_s)
            start += phase.duration_s
        return self.phases[-1].weights_at(1.0)

    def sequence(
        self, n: int, fps: float, seed: int, *, fit: bool = False
    ) -> list[tuple[float, PackageType]]:
        """``n`` (t_s, package type) pairs, frame i at t = i / fps; deterministic in ``seed``.

        ``fit`` stretches or squeezes the scenario over the ``n`` frames (frame i
        sees the mix at i / n of the scenario's duration); t_s stays i / fps.
        """
        if fps <= 0:
            raise ValueError("fps must be positive")
        rng = np.random.default_rng([seed, 0x5CE])
        u = rng.random(n)
        out: list[tuple[float, PackageType]] = []
        for i in range(n):
            t = i / fps
            weights = self.weights_at(i * self.duration_s / n if fit else t)
            labels = list(weights)
            cum = np.cumsum([weights[k] for k in labels])
            j = min(int(np.searchsorted(cum, u[i] * cum[-1], side="right")), len(labels) - 1)
            out.append((t, PackageType.parse(labels[j])))
        return out


def scenario_from_types(types: str | list[str], duration_s: float = 60.0) -> Scenario:
    """One phase with an equal mix of ``types`` ("circle-80,square-120"); ScenarioError if bad."""
    try:
        labels = parse_types(types) if isinstance(types, str) else [PackageType.parse(t) for t in types]
    except ValueError as exc:
        raise ScenarioError(str(exc), field="types") from exc
    mix = {p.label: 1.0 for p in labels}
    return Scenario(name="types", phases=[Phase(duration_s=duration_s, mix=mix)])


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario JSON file; ScenarioError with one clear line (file, field, problem)."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ScenarioError(f"no such file or directory: {p}") from exc
    except OSError as exc:
        raise ScenarioError(f"cannot read {p}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    try:
        scenario = Scenario.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise ScenarioError(f"{p}: {where}: {msg}", field=where) from exc
    if scenario.name == "custom":
        scenario = scenario.model_copy(update={"name": p.stem})
    return scenario


BUILTIN_DIR = Path(__file__).parent / "scenarios"


def resolve_scenario(spec: str) -> Scenario:
    """A scenario by file path, or by the name of a built-in one (``baseline``, ``new-packages``)."""
    p = Path(spec)
    if not p.exists() and (BUILTIN_DIR / f"{spec}.json").exists():
        p = BUILTIN_DIR / f"{spec}.json"
    return load_scenario(p)
