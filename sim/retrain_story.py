"""The retraining demo's decisions, with no files, sockets or clocks: ``sim.demo_retrain`` is the shell.

- :data:`STEPS` — the story, in order, from new packages to field accuracy recovered;
  :class:`LoopTimeline` holds when each step happened (seconds since the demo started, the
  caller's clock) and reports the whole loop: the time from the first drift alert to the last
  robot serving the new model, against the goal.
- :func:`training_labels` — what the simulated plant's labeller says about the samples it is
  shown: the recording's label of the frame each sample's decision was about, for every sample
  the line checker did *not* check (those are held out: their labels come from the truth channel,
  an independent source, and must never grade their own training data).
- :func:`heldout_labels` — the held-out set: samples whose decision got a ``truth.joined``.
- :func:`collection_done` — whether enough of each label is in hand to train and to gate.
- :func:`base_config` / :func:`pipeline_config` — the ``train.toml`` and ``PIPELINE.toml`` the
  demo hands to ``edge-models pipeline``; :func:`read_pipeline_report` checks its JSON report and
  :func:`pipeline_marks` places its steps on the story's timeline.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sim.checker import chosen

GOAL_S = 600.0  # the brief's goal: first drift alert → last robot serving the new model, < 10 min


@dataclass(frozen=True, slots=True)
class Step:
    """One step of the story: a key, the chart's label and its colour."""

    key: str
    label: str
    colour: str


STEPS: tuple[Step, ...] = (
    Step("packages", "new packages arrive", "tab:orange"),
    Step("drift", "first drift alert", "tab:red"),
    Step("sampled", "samples in hand", "tab:olive"),
    Step("labelled", "samples labelled", "tab:cyan"),
    Step("trained", "model trained", "tab:blue"),
    Step("gated", "field gate passed", "tab:purple"),
    Step("released", "released", "tab:pink"),
    Step("shadow", "shadow verdict passed", "tab:brown"),
    Step("served", "last robot serves it", "tab:green"),
    Step("recovered", "confidence + field accuracy recovered", "tab:gray"),
)
_INDEX = {s.key: i for i, s in enumerate(STEPS)}


class StoryOrderError(ValueError):
    """A step recorded out of the story's order, twice, or one the story does not have."""


@dataclass
class LoopTimeline:
    """When each step of the story happened; steps are recorded in order, each once."""

    at_s: dict[str, float] = field(default_factory=dict)

    def record(self, key: str, t_s: float) -> None:
        if key not in _INDEX:
            raise StoryOrderError(f"unknown step {key!r}")
        if key in self.at_s:
            raise StoryOrderError(f"step {key!r} recorded twice")
        later = [k for k in self.at_s if _INDEX[k] > _INDEX[key]]
        if later:
            raise StoryOrderError(f"step {key!r} recorded after {later[0]!r}, which follows it")
        earlier = [self.at_s[k] for k in self.at_s if _INDEX[k] < _INDEX[key]]
        if earlier and t_s < max(earlier):
            raise StoryOrderError(f"step {key!r} at {t_s:.1f} s is before an earlier step")
        self.at_s[key] = t_s

    @property
    def alert_to_served_s(self) -> float | None:
        """First drift alert → last robot serving the new model, or None until both happened."""
        if "drift" not in self.at_s or "served" not in self.at_s:
            return None
        return self.at_s["served"] - self.at_s["drift"]

    def within_goal(self, goal_s: float = GOAL_S) -> bool | None:
        loop = self.alert_to_served_s
        return None if loop is None else loop < goal_s

    def rows(self) -> list[dict[str, Any]]:
        """One row per recorded step: its time, the time since the step before, since the first alert."""
        out: list[dict[str, Any]] = []
        previous: float | None = None
        alert = self.at_s.get("drift")
        for step in STEPS:
            if step.key not in self.at_s:
                continue
            t = self.at_s[step.key]
            out.append(
                {
                    "step": step.key,
                    "label": step.label,
                    "at_s": round(t, 1),
                    "took_s": None if previous is None else round(t - previous, 1),
                    "since_alert_s": None if alert is None or t < alert else round(t - alert, 1),
                }
            )
            previous = t
        return out

    def report(self, goal_s: float = GOAL_S) -> dict[str, Any]:
        loop = self.alert_to_served_s
        return {
            "steps": self.rows(),
            "alert_to_served_s": None if loop is None else round(loop, 1),
            "goal_s": goal_s,
            "within_goal": self.within_goal(goal_s),
            "missing": [s.key for s in STEPS if s.key not in self.at_s],
        }


def frame_label(frame_id: int, labels: Sequence[str]) -> str | None:
    """The recording's label for a replayed frame (the robots loop their streams)."""
    if not labels or frame_id < 0:
        return None
    return labels[frame_id % len(labels)]


def training_labels(
    samples: Iterable[Mapping[str, Any]],
    frames: Mapping[tuple[str, str], int],
    labels_by_device: Mapping[str, Sequence[str]],
    truth_share: float,
) -> list[dict[str, Any]]:
    """Import rows (``{"id", "label"}``) for the unlabelled samples the plant's labeller can label.

    ``frames`` maps (device, decision id) to the frame number the decision was about (read from
    the decisions topic). A sample whose decision the line checker checks (``chosen`` under
    ``truth_share``) is left unlabelled: it is held out, judged by the truth channel only.
    """
    rows = []
    for s in samples:
        if s.get("true_label"):
            continue
        device, decision = str(s.get("device_id")), str(s.get("sample_id"))
        if chosen(decision, truth_share):
            continue
        frame = frames.get((device, decision))
        label = None if frame is None else frame_label(frame, labels_by_device.get(device, ()))
        if label is not None:
            rows.append({"id": s["id"], "label": label})
    return rows


def heldout_labels(
    samples: Iterable[Mapping[str, Any]], joined: Iterable[Mapping[str, Any]]
) -> dict[int, str]:
    """Sample pk → true label, for every sample whose decision the truth channel judged.

    ``joined`` are the fleet's stored ``truth.joined`` outcomes (``device_id``, ``decision_id``,
    ``label``). A sample's id is its decision's id, so truth for the decision labels the sample.
    """
    truth = {
        (str(j.get("device_id")), str(j.get("decision_id"))): str(j["label"])
        for j in joined
        if j.get("kind", "truth.joined") == "truth.joined" and j.get("label")
    }
    out = {}
    for s in samples:
        label = truth.get((str(s.get("device_id")), str(s.get("sample_id"))))
        if label is not None:
            out[int(s["id"])] = label
    return out


@dataclass(frozen=True)
class Need:
    """How many samples of each label the loop waits for before it trains."""

    new_train: int = 30  # per new type, labelled by the plant's labeller
    old_train: int = 6  # per type the serving model knows
    # The pipeline's field gate's defaults: new_label_min_frames per new type, min_shared_frames
    # over the types both models know (models/pipeline_config.py, PipelineGate).
    new_heldout: int = 20  # per new type, labelled by the truth channel
    shared_heldout: int = 30  # over the serving model's types, labelled by the truth channel


def collection_done(
    trained: Mapping[str, int], heldout: Mapping[str, int], old: Sequence[str], new: Sequence[str], need: Need
) -> list[str]:
    """What is still missing (empty: enough to train and to gate), e.g. ``["hexagon-100: 12/30 train"]``."""
    missing = []
    for label in new:
        if trained.get(label, 0) < need.new_train:
            missing.append(f"{label}: {trained.get(label, 0)}/{need.new_train} train")
        if heldout.get(label, 0) < need.new_heldout:
            missing.append(f"{label}: {heldout.get(label, 0)}/{need.new_heldout} held out")
    for label in old:
        if trained.get(label, 0) < need.old_train:
            missing.append(f"{label}: {trained.get(label, 0)}/{need.old_train} train")
    shared = sum(heldout.get(label, 0) for label in old)
    if shared < need.shared_heldout:
        missing.append(f"known types: {shared}/{need.shared_heldout} held out")
    return missing


def count(labels: Iterable[str]) -> dict[str, int]:
    return dict(Counter(labels))


def base_config(*, fast: bool) -> str:
    """The pipeline's ``base_config``: shapes-2.0.0's recipe, smaller, for a 2-core machine.

    The pipeline sets name, version, labels and the field datasets itself, and fine-tunes from
    the serving bundle (``[train] init_from`` in PIPELINE.toml); renders fill ``render_share`` of
    the training frames, so every label has frames even where the field sent few.
    """
    epochs = 12 if fast else 16
    return f"""# Written by `edge-sim demo --retrain`: the base of the field retrain (edge-models pipeline).
name = "shapes"
version = "0.0.0"  # the pipeline's
description = "Package shape/size classifier retrained on field samples after drift (adds the new types)."
labels = ["circle-80", "circle-120"]  # the pipeline's: the serving model's, then the new ones

[data]
train_seed = 1200
train_frames_per_type = 600
val_seed = 2200
val_frames_per_type = 60
workers = 2
outlier_types = ["rectangle-80", "rectangle-120", "square-100", "triangle-120", "circle-60", "circle-150"]
outlier_frames_per_type = 40

[input]
roi = {{ x = 0.0, y = 0.05, width = 1.0, height = 0.9 }}
width = 128
height = 88
color_order = "GRAY"
interpolation = "area"
mean = [0.5]
std = [0.25]

[train]
epochs = {epochs}
batch_size = 64
lr = 0.002
weight_decay = 0.0001
width = 16
seed = 0
threads = 2
flips = true
min_temperature = 1.0
outlier_loss_weight = 0.5

# On the rendered validation split. A few epochs from shapes-1.0.0 leave the model less sure
# of itself than a full run (ECE 0.066 on the first try): the gate that decides is the
# pipeline's field gate on the held-out truth, then probation and the rollout's gates.
[gates]
min_accuracy = 0.95
max_dimension_mae_mm = 5.0
max_ece = 0.1

[probation]
window_s = 30.0
min_frames = 50
max_error_rate = 0.01
max_nonfinite = 0
max_latency_p99_ms = 50.0
min_confidence_p50 = 0.8
max_low_confidence_rate = 0.1

[drift]
low_confidence = 0.7
max_p50_drop = 0.1
max_low_confidence_rate = 0.1
sustain_windows = 2
"""


def _q(text: str) -> str:
    return json.dumps(text)  # a JSON string is a TOML basic string


@dataclass(frozen=True)
class PipelinePlan:
    """What the demo asks of ``edge-models pipeline`` (paths absolute)."""

    version: str
    base_config: str
    serving: str  # the serving bundle: the field gate's opponent and the fine-tune's start
    train_dir: str
    heldout_dir: str
    server: str
    keys: str
    devices: Sequence[str]
    soak_s: float
    # Renders are balanced over the labels; the field samples are not (the low-confidence band
    # brings mostly new types): at 0.5–0.75 the fine-tune took some circle-80 for circle-100 or
    # hexagon-100 on held-out frames and the field gate was rightly inconclusive; at 0.9 it is
    # no worse than the serving model on the known types (BENCHMARKS.md, section 15).
    render_share: float = 0.9


def pipeline_config(plan: PipelinePlan) -> str:
    """PIPELINE.toml (models/README.md): train, gate, release, and a rollout with a shadow stage."""
    devices = ", ".join(_q(d) for d in plan.devices)
    return f"""# Written by `edge-sim demo --retrain`.
[pipeline]
version = {_q(plan.version)}
base_config = {_q(plan.base_config)}
serving = {_q(plan.serving)}

[data]
datasets = [{_q(plan.train_dir)}]
heldout = {_q(plan.heldout_dir)}
render_share = {plan.render_share}

[train]
init_from = {_q(plan.serving)}

[release]
server = {_q(plan.server)}
keys = {_q(plan.keys)}
token_env = "LINESIDE_TOKEN"

[rollout]
start = true
devices = [{devices}]
stages = "1,100%"
soak = "{plan.soak_s:g}s"
shadow = "all"
shadow_soak_s = {plan.soak_s:g}
shadow_min_frames = 100
"""


class PipelineReportError(ValueError):
    """``edge-models pipeline --json`` printed something that is not its report."""


@dataclass(frozen=True)
class PipelineReport:
    ok: bool
    reason: str
    steps: list[dict[str, Any]]
    release: dict[str, Any] | None
    rollout_id: str | None
    field_gate: dict[str, Any] | None
    field_accuracy: dict[str, Any] | None = None

    def failed_step(self) -> dict[str, Any] | None:
        return next((s for s in self.steps if s.get("status") == "failed"), None)


def read_pipeline_report(text: str) -> PipelineReport:
    """The pipeline's JSON report, checked for the fields the demo reads."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise PipelineReportError(f"not JSON: {text[:80]!r}") from exc
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("ok"), bool)
        or not isinstance(doc.get("steps"), list)
    ):
        raise PipelineReportError("no ok/steps in the pipeline's report")
    for step in doc["steps"]:
        if not isinstance(step, dict) or not isinstance(step.get("name"), str):
            raise PipelineReportError(f"a step without a name: {step!r}")
        if not isinstance(step.get("seconds", 0), (int, float)):
            raise PipelineReportError(f"step {step['name']}: seconds is not a number")
    release = doc.get("release")
    if doc["ok"] and not (isinstance(release, dict) and release.get("version")):
        raise PipelineReportError("an ok report without a release")
    return PipelineReport(
        ok=doc["ok"],
        reason=str(doc.get("reason") or ("ok" if doc["ok"] else "unknown")),
        steps=doc["steps"],
        release=release if isinstance(release, dict) else None,
        rollout_id=doc.get("rollout_id") if isinstance(doc.get("rollout_id"), str) else None,
        field_gate=doc.get("field_gate") if isinstance(doc.get("field_gate"), dict) else None,
        field_accuracy=doc.get("field_accuracy") if isinstance(doc.get("field_accuracy"), dict) else None,
    )


# The pipeline's steps that end a step of the story.
_PIPELINE_STEP_ENDS = {"train": "trained", "gate": "gated", "release": "released"}


def pipeline_marks(report: PipelineReport, started_s: float) -> dict[str, float]:
    """When the story's steps ended, from the pipeline's per-step seconds (run one after another)."""
    marks, t = {}, started_s
    for step in report.steps:
        if step.get("status") in ("not_run", "failed"):
            break
        t += float(step.get("seconds", 0.0))
        key = _PIPELINE_STEP_ENDS.get(step["name"])
        if key is not None:
            marks[key] = t
    return marks
