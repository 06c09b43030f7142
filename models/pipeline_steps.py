"""The local steps of ``edge-models pipeline``: dataset → train → evaluate → gate → bundle.

Each step reads what earlier steps left in WORKDIR, writes its own artefacts there and returns
a :class:`StepOutcome`; a step that must stop the pipeline raises :class:`PipelineStop` with a
typed reason. The decisions are pure calls (:mod:`models.field_gate`); the rest is file I/O and
training. The runner (:mod:`models.pipeline`) times steps, skips unchanged ones and writes the report.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lineside_common.atomic import atomic_write_bytes
from lineside_common.errors import LinesideError
from models import field_data
from models import field_gate as gate_rules
from models.pipeline_config import PipelineConfig

Progress = Callable[[str, int, dict[str, Any]], None]

CANDIDATE_DIR = "candidate"  # the trained bundle, before the gate
BUNDLE_DIR = "bundle"  # the released bundle: the candidate with lineage and the gate's verdict
CHECKPOINT = "checkpoint.pt"  # beside the bundle, never in it


class PipelineStop(LinesideError):
    """A step that must stop the pipeline; ``reason`` is the typed code the report carries."""

    def __init__(self, message: str, *, reason: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.detail = detail or {}


@dataclass
class StepOutcome:
    status: str = "ok"  # ok | skipped
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def digest_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bundle_digest(bundle: Path) -> str:
    """SHA-256 over the bundle's sorted ``FILE\\tSHA-256`` lines: equal iff every file is equal."""
    lines = sorted(f"{p.name}\t{file_sha256(p)}\n" for p in bundle.iterdir() if p.is_file())
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def unchanged(step_file: Path, inputs: str, *outputs: Path) -> bool:
    """Whether a step already ran on these inputs and its outputs are still there."""
    prev = read_json(step_file)
    return isinstance(prev, dict) and prev.get("inputs_sha256") == inputs and all(p.exists() for p in outputs)


# -- dataset ------------------------------------------------------------------------------------


def dataset_step(config: PipelineConfig, workdir: Path, serving_labels: list[str]) -> StepOutcome:
    """Hash the training sets and the held-out set, refuse overlap, settle the label list."""
    try:
        train_sets = [field_data.scan(d) for d in config.data.datasets]
        heldout = field_data.scan(config.data.heldout)
    except LinesideError as exc:
        raise PipelineStop(str(exc), reason=f"dataset_{getattr(exc, 'reason', 'error')}") from exc
    independence = gate_rules.check_independence(
        (s for t in train_sets for s in t.image_sha256), heldout.image_sha256
    )
    if independence["verdict"] != "pass":
        raise PipelineStop(independence["message"], reason=independence["reason"], detail=independence)
    found = sorted({lab for t in train_sets for lab in t.labels if lab})
    labels = list(config.pipeline.labels or [*serving_labels, *(x for x in found if x not in serving_labels)])
    unknown = [lab for lab in found if lab not in labels]
    if unknown:
        raise PipelineStop(
            f"training labels {unknown} are not in pipeline.labels", reason="dataset_unknown_label"
        )
    info = {
        "datasets": [t.summary() for t in train_sets],
        "heldout": heldout.summary(),
        "labels": labels,
        "new_labels": [lab for lab in labels if lab not in serving_labels],
        "independence": independence,
    }
    write_json(workdir / "dataset" / "dataset.json", info)
    return StepOutcome(detail={"labels": labels, "heldout_sha256": heldout.dataset_sha256})


# -- train --------------------------------------------------------------------------------------


def train_config(config: PipelineConfig, labels: list[str]) -> Any:
    """The TrainConfig: base_config, with the pipeline's name, version, labels, data and [train] overrides."""
    from pydantic import ValidationError

    from models.config import TrainConfig

    base = Path(config.pipeline.base_config)
    try:
        raw = tomllib.loads(base.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PipelineStop(f"base_config {base}: {exc}", reason="config") from exc
    raw["version"] = config.pipeline.version
    raw["name"] = config.pipeline.name or raw.get("name")
    raw["labels"] = labels
    raw["data"] = {
        **raw.get("data", {}),
        "datasets": list(config.data.datasets),
        "render_share": config.data.render_share,
    }
    raw["data"]["outlier_types"] = [t for t in raw["data"].get("outlier_types", []) if t not in labels]
    raw["train"] = {**raw.get("train", {}), **config.train}
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise PipelineStop(f"training config: field {where}: {err['msg']}", reason="config") from exc


def train_step(
    config: PipelineConfig,
    workdir: Path,
    labels: list[str],
    dataset_hashes: list[str],
    *,
    cache_dir: Path | None,
    progress: Progress | None,
) -> StepOutcome:
    """Train the candidate (skipped when its config, data and starting weights are unchanged)."""
    from models.train import train

    tc = train_config(config, labels)
    init = tc.train.init_from
    init_sha = None
    if init:
        p = Path(init)
        init_sha = file_sha256(p if p.is_file() else p / "model.onnx") if p.exists() else None
    inputs = digest_json({"config": tc.model_dump(mode="json"), "datasets": dataset_hashes, "init": init_sha})
    out, ckpt, step_file = workdir / CANDIDATE_DIR, workdir / CHECKPOINT, workdir / "train" / "step.json"
    if unchanged(step_file, inputs, out / "manifest.json", ckpt):
        return StepOutcome("skipped", "unchanged", read_json(step_file).get("detail", {}))
    write_json(workdir / "train" / "train_config.json", tc.model_dump(mode="json"))
    try:
        result = train(tc, out, force=True, cache_dir=cache_dir, progress=progress, checkpoint_out=ckpt)
    except LinesideError as exc:
        raise PipelineStop(f"training: {exc}", reason=f"train_{getattr(exc, 'reason', 'error')}") from exc
    v = result.validation
    detail = {
        "model": result.manifest.ref,
        "validation": {k: v.get(k) for k in ("frames", "accuracy", "dimension_mae_mm", "ece")},
        "weights_sha256": result.weights_sha256,
        "train_seconds": round(result.train_seconds, 2),
        "data_seconds": round(result.data_seconds, 2),
        "field_frames": result.manifest.extra.get("field_frames"),
        "init_from": result.manifest.extra.get("init_from"),
    }
    write_json(step_file, {"inputs_sha256": inputs, "detail": detail})
    return StepOutcome(detail=detail)


# -- evaluate -----------------------------------------------------------------------------------


def evaluate_step(config: PipelineConfig, workdir: Path, *, progress: Progress | None) -> StepOutcome:
    """Both models on the held-out field frames, as the agent runs them; per-frame predictions kept."""
    from models.bundle import load_bundle
    from models.dataset import dataset_frames
    from models.evaluate import evaluate_bundle

    serving_dir, cand_dir = Path(config.pipeline.serving or ""), workdir / CANDIDATE_DIR
    heldout = field_data.scan(config.data.heldout)
    inputs = digest_json(
        [bundle_digest(serving_dir), bundle_digest(cand_dir), heldout.dataset_sha256, heldout.image_sha256]
    )
    out = workdir / "evaluate"
    if unchanged(out / "step.json", inputs, out / "predictions.json"):
        return StepOutcome("skipped", "unchanged", read_json(out / "step.json").get("detail", {}))
    predictions: dict[str, list[str]] = {}
    reports = {}
    for role, path in (("serving", serving_dir), ("candidate", cand_dir)):
        try:
            bundle = load_bundle(path)
        except LinesideError as exc:
            raise PipelineStop(f"{role} bundle {path}: {exc}", reason=f"{role}_bundle") from exc
        said: list[str] = []

        def on_frame(
            _f: Any, label: str, _c: float, said: list[str] = said, task: str = f"evaluate {role}"
        ) -> None:
            said.append(label)
            if progress is not None:
                progress(task, 1, {"total": len(heldout.files)})

        reports[role] = evaluate_bundle(bundle, dataset_frames(config.data.heldout), on_frame=on_frame)
        reports[role]["source"] = {"dataset": config.data.heldout, "dataset_sha256": heldout.dataset_sha256}
        predictions[role] = said
        write_json(out / f"{role}.json", reports[role])
    rows = [
        {"file": str(f.relative_to(heldout.root)), "truth": t, "serving": s, "candidate": c}
        for f, t, s, c in zip(
            heldout.files, heldout.labels, predictions["serving"], predictions["candidate"], strict=True
        )
        if t
    ]
    write_json(out / "predictions.json", rows)
    detail = {role: _accuracy_summary(r) for role, r in reports.items()}
    for role in reports:
        # Over every labelled held-out frame: a label the model does not know counts as a miss.
        detail[role]["all_frames_accuracy"] = sum(r[role] == r["truth"] for r in rows) / max(len(rows), 1)
    write_json(out / "step.json", {"inputs_sha256": inputs, "detail": detail})
    return StepOutcome(detail=detail)


def _accuracy_summary(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": report["model"],
        "frames": report["frames"],
        "accuracy": report["accuracy"],
        "per_label": {lab: pc["recall"] for lab, pc in report["per_class"].items() if pc["support"]},
        "unknown_types": {lab: u["frames"] for lab, u in report["unknown_types"].items()},
    }


# -- gate ---------------------------------------------------------------------------------------


def gate_step(config: PipelineConfig, workdir: Path) -> StepOutcome:
    """The field gate on the paired held-out outcomes (pure; always recomputed)."""
    from edge_agent.manifest import load_manifest

    rows = read_json(workdir / "evaluate" / "predictions.json") or []
    serving = load_manifest(Path(config.pipeline.serving or ""))
    candidate = load_manifest(workdir / CANDIDATE_DIR)
    verdict = gate_rules.judge(
        (gate_rules.PairedOutcome(r["truth"], r["serving"], r["candidate"]) for r in rows),
        serving_labels=serving.labels,
        candidate_labels=candidate.labels,
        policy=config.gate.policy(),
    )
    heldout = read_json(workdir / "dataset" / "dataset.json")["heldout"]
    verdict["heldout_sha256"] = heldout["dataset_sha256"]
    verdict["serving"], verdict["candidate"] = serving.ref, candidate.ref
    write_json(workdir / "gate" / "field_gate.json", verdict)
    if verdict["verdict"] != "pass":
        raise PipelineStop(verdict["message"], reason=verdict["reason"], detail={"field_gate": verdict})
    return StepOutcome(reason=verdict["reason"], detail={"field_gate": verdict})


# -- bundle -------------------------------------------------------------------------------------


def bundle_step(config: PipelineConfig, workdir: Path) -> StepOutcome:
    """The released bundle: the candidate's files, its manifest carrying lineage and the gate's verdict."""
    from models.bundle import load_bundle, write_bundle

    cand = load_bundle(workdir / CANDIDATE_DIR)
    serving_dir = Path(config.pipeline.serving or "")
    data = read_json(workdir / "dataset" / "dataset.json")
    verdict = read_json(workdir / "gate" / "field_gate.json")
    ckpt = workdir / CHECKPOINT
    lineage = {
        "pipeline": config.pipeline.name or cand.manifest.name,
        "datasets": data["datasets"],
        "heldout": data["heldout"],
        "render_share": config.data.render_share,
        "init_from": cand.manifest.extra.get("init_from"),
        "serving": {"ref": load_bundle(serving_dir).manifest.ref, "model_sha256": file_sha256(serving_dir / "model.onnx")},
        "model_sha256": file_sha256(cand.model_path),
        "checkpoint": {"file": CHECKPOINT, "sha256": file_sha256(ckpt), "where": "beside the bundle in the pipeline's workdir; not shipped"},
    }  # fmt: skip
    inputs = digest_json([bundle_digest(workdir / CANDIDATE_DIR), lineage, verdict])
    out = workdir / BUNDLE_DIR
    if unchanged(workdir / "bundle.step.json", inputs, out / "manifest.json"):
        return StepOutcome("skipped", "unchanged", {"digest": bundle_digest(out)})
    extra = {**cand.manifest.extra, "lineage": lineage, "field_gate": verdict}
    manifest = cand.manifest.model_copy(update={"extra": extra})
    write_bundle(out, manifest, cand.model, cand.selftest["inputs"], force=True)
    write_json(workdir / "bundle.step.json", {"inputs_sha256": inputs})
    return StepOutcome(detail={"digest": bundle_digest(out), "ref": manifest.ref})
