"""``edge-models pipeline``: from labelled field data to a released, gated model — one command, rerunnable.

Steps (each leaves its artefacts in WORKDIR; see models/README.md, "The retraining pipeline"):

    dataset   hash the training sets and the held-out set; refuse overlap     WORKDIR/dataset/
    train     base config + field data + renders, fine-tuned from serving     WORKDIR/candidate/, checkpoint.pt
    evaluate  serving and candidate on the held-out field frames              WORKDIR/evaluate/
    gate      the field gate (models/field_gate.py)                           WORKDIR/gate/field_gate.json
    bundle    the candidate with extra.lineage and extra.field_gate           WORKDIR/bundle/
    release   sign (targets key) and upload through the API                   WORKDIR/release/release.json
    rollout   optionally start a rollout (with a shadow stage)                WORKDIR/rollout/rollout.json

WORKDIR/pipeline.json is the report, rewritten after every step: ``ok``, ``reason``, ``steps``
(``name``, ``status`` ok | skipped | failed | not_run, ``seconds``, ``reason``, ``detail``),
``release``, ``rollout_id``, ``field_gate``, ``field_accuracy``. The run stops at the first step
that fails, with its reason code. Rerunning is idempotent: unchanged steps are skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleet_server.client import FleetClient
from models import pipeline_steps as steps
from models.pipeline_config import PipelineConfig
from models.pipeline_fleet import release_step, rollout_step
from models.pipeline_steps import PipelineStop, Progress, StepOutcome, read_json, write_json

log = logging.getLogger(__name__)

STEP_NAMES = ("dataset", "train", "evaluate", "gate", "bundle", "release", "rollout")
REPORT_FILE = "pipeline.json"

# Called after each step with its entry (the CLI prints a line on stderr).
StepListener = Callable[[dict[str, Any]], None]


class Pipeline:
    """One run over WORKDIR. ``client``: the fleet API (None: release and rollout are skipped)."""

    def __init__(
        self,
        config: PipelineConfig,
        workdir: Path,
        *,
        client: FleetClient | None = None,
        cache_dir: Path | None = None,
        progress: Progress | None = None,
        on_step: StepListener | None = None,
    ) -> None:
        self.config = config
        self.workdir = Path(workdir)
        self.client = client
        self.cache_dir = cache_dir
        self.progress = progress
        self.on_step = on_step
        self.report: dict[str, Any] = {
            "ok": False,
            "reason": None,
            "message": None,
            "workdir": str(self.workdir),
            "candidate": {"name": None, "version": config.pipeline.version},
            "steps": [
                {"name": n, "status": "not_run", "seconds": 0.0, "reason": None, "detail": {}}
                for n in STEP_NAMES
            ],
            "release": None,
            "rollout_id": None,
            "field_gate": None,
            "field_accuracy": None,
        }
        self._labels: list[str] = []
        self._dataset_hashes: list[str] = []

    def _serving_labels(self) -> list[str]:
        from edge_agent.manifest import load_manifest
        from lineside_common.errors import LinesideError

        try:
            return list(load_manifest(Path(self.config.pipeline.serving or "")).labels)
        except LinesideError as exc:
            raise PipelineStop(f"serving bundle: {exc}", reason="serving_bundle") from exc

    def _run_one(self, name: str) -> StepOutcome:
        c, w = self.config, self.workdir
        if name == "dataset":
            out = steps.dataset_step(c, w, self._serving_labels())
            self._labels = out.detail["labels"]
            data = read_json(w / "dataset" / "dataset.json")
            self._dataset_hashes = [d["dataset_sha256"] for d in data["datasets"]]
            return out
        if name == "train":
            out = steps.train_step(
                c, w, self._labels, self._dataset_hashes, cache_dir=self.cache_dir, progress=self.progress
            )
            self.report["candidate"]["name"] = (out.detail.get("model") or "@").split("@")[0] or None
            return out
        if name == "evaluate":
            out = steps.evaluate_step(c, w, progress=self.progress)
            self.report["field_accuracy"] = _field_accuracy(out.detail)
            return out
        if name == "gate":
            try:
                out = steps.gate_step(c, w)
            except PipelineStop as stop:
                self.report["field_gate"] = stop.detail.get("field_gate")
                raise
            self.report["field_gate"] = out.detail["field_gate"]
            return out
        if name == "bundle":
            return steps.bundle_step(c, w)
        if name == "release":
            out = release_step(c, w, self.client)
            self.report["release"] = out.detail.get("release")
            return out
        out = rollout_step(c, w, self.client)
        self.report["rollout_id"] = out.detail.get("rollout_id")
        return out

    def run(self) -> dict[str, Any]:
        """Run every step in order; the report (also WORKDIR/pipeline.json)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for entry in self.report["steps"]:
            t0 = time.perf_counter()
            try:
                out = self._run_one(entry["name"])
            except PipelineStop as stop:
                entry.update(status="failed", reason=stop.reason, seconds=round(time.perf_counter() - t0, 3))
                entry["detail"] = {k: v for k, v in stop.detail.items() if k != "field_gate"}
                self.report.update(reason=stop.reason, message=f"{entry['name']}: {stop}")
                self._finish(entry)
                return self.report
            entry.update(
                status=out.status,
                reason=out.reason,
                seconds=round(time.perf_counter() - t0, 3),
                detail=out.detail,
            )
            if entry["name"] == "gate":
                entry["detail"] = {"verdict": out.detail["field_gate"]["verdict"]}
            self._finish(entry)
        self.report["ok"] = True
        self._write()
        return self.report

    def _finish(self, entry: dict[str, Any]) -> None:
        log.info("step %s: %s (%s) %.1f s", entry["name"], entry["status"], entry["reason"], entry["seconds"])
        self._write()
        if self.on_step is not None:
            self.on_step(entry)

    def _write(self) -> None:
        write_json(self.workdir / REPORT_FILE, self.report)


def _field_accuracy(detail: dict[str, Any]) -> dict[str, Any]:
    """Held-out field accuracy of both models, overall and per label (None: the model does not know it)."""
    serving, candidate = detail.get("serving", {}), detail.get("candidate", {})
    labels = sorted({*serving.get("per_label", {}), *candidate.get("per_label", {})})
    return {
        "serving": serving.get("accuracy"),
        "candidate": candidate.get("accuracy"),
        "frames": candidate.get("frames"),
        "all_frames": {
            "serving": serving.get("all_frames_accuracy"),
            "candidate": candidate.get("all_frames_accuracy"),
        },
        "per_label": {
            lab: {
                "serving": serving.get("per_label", {}).get(lab),
                "candidate": candidate.get("per_label", {}).get(lab),
            }
            for lab in labels
        },
    }
