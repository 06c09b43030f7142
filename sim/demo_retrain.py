"""``edge-sim demo --retrain``: from the first drift alert to a better model on every robot.

The plain demo's set-up and its first two steps (every robot on ``shapes-1.0.0``; new packages
reach robot-1 and robot-2, drift alerts fire), then the loop a plant would run, every part real:

3. the robots send samples (low-confidence frames and a small random share, to the fleet
   server); the simulated plant labels them as a labelling tool would
   (``fleet samples import``), from the recording's labels of the frames the decisions were
   about — except the decisions the line checker checks: those samples are held out, labelled
   only by the truth channel (``truth.joined``), an independent source;
4. ``edge-models pipeline`` (models/README.md) learns ``shapes-1.1.0`` — the serving labels
   plus the new types — from the labelled field samples and some renders, fine-tuned from
   ``shapes-1.0.0``; its field gate judges it against ``shapes-1.0.0`` on the held-out samples;
   it releases it and starts a rollout (its steps are placed on the timeline from its report);
5. the rollout: a shadow stage on every robot first, then ``1,100%``;
6. confidence and field accuracy (the line checker's truth) recover on the new model.

It reports when each step happened and the time from the first drift alert to the last robot
serving the new model (goal: under ten minutes), marks each step on the chart, and writes
``retrain-report.json``. The decisions are pure, in :mod:`sim.retrain_story`.

Size: one story, each step a short method; its pure decisions are in ``sim/retrain_story.py``
and the plant in ``sim/plant_floor.py``.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from datetime import datetime
from typing import Any

from sim.chart import Marker, confidence_chart
from sim.demo import BASELINE_TYPES, NEW_TYPES, RELEASES, Demo, DemoFailed, DemoResult, Robot, _bin
from sim.plant_floor import PlantFloor
from sim.retrain_story import (
    STEPS,
    LoopTimeline,
    Need,
    PipelinePlan,
    PipelineReportError,
    base_config,
    collection_done,
    count,
    heldout_labels,
    pipeline_config,
    pipeline_marks,
    read_pipeline_report,
    training_labels,
)

NEW_VERSION = "1.1.0"
NEW_REF = f"shapes@{NEW_VERSION}"
TRUTH_SHARE = 0.3  # of decisions the line checker checks (their samples are the held-out set)
PIPELINE_TIMEOUT_S = 1800.0


class RetrainDemo(Demo):
    """The retraining story; ``run()`` returns a DemoResult or raises DemoFailed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeline = LoopTimeline()
        self.need = Need()
        self.report: dict[str, Any] = {}
        self.floor: PlantFloor | None = None

    def agent_config_extra(self, robot: Robot) -> str:
        # Enough samples within a minute or two: the low-confidence band (the manifest's drift
        # threshold) and a small random share, so the types the model knows come back too.
        return (
            "\n[samples]\nrandom_share = 0.05\nper_minute = 60\nper_hour = 3000\nper_day = 10000\n"
            f"seed = {robot.seed}\n"
        )

    def at(self, key: str, t_s: float | None = None) -> None:
        self.timeline.record(key, self._t() if t_s is None else t_s)

    def run(self) -> DemoResult:
        self.out.mkdir(parents=True, exist_ok=True)
        with self.procs:
            self._setup()
            self._start_floor()
            try:
                self._step1_healthy()
                self._step2_drift()
                self._loop_started()
                self._step3_samples()
                rollout_id = self._step4_pipeline()
                self._step6_rollout(rollout_id)
                self._step7_recovered()
                result = self._retrain_summary()
            except DemoFailed as exc:
                # A stopped loop still leaves what it measured: the steps it reached and why it stopped.
                self.report |= {"loop": self.timeline.report(), "stopped": str(exc)}
                (self.out / "retrain-report.json").write_text(json.dumps(self.report, indent=2, default=str))
                raise
            finally:
                if self.floor is not None:
                    self.floor.stop()
        self.say(f"every process the demo started has stopped; files are in {self.out}")
        return result

    # -- the plant ---------------------------------------------------------------------------------

    def _start_floor(self) -> None:
        from sim.recording import load_recording

        labels = {}
        for robot in self.robots:
            with load_recording(robot.stream) as rec:
                labels[robot.device_id] = list(rec.labels)
        host, port = "127.0.0.1", self.mqtt_port
        if self.broker_url:
            hostport = self.broker_url.split("://", 1)[-1]
            host, _, p = hostport.rpartition(":")
            port = int(p)
        self.floor = PlantFloor(host, port, labels, TRUTH_SHARE)
        self.floor.start()
        self.ok(f"the plant's line checker checks {TRUTH_SHARE:.0%} of the robots' decisions (truth channel)")

    def _loop_started(self) -> None:
        packages = next(m.t_s for m in self.markers if m.label == "new packages arrive")
        with self.api() as c:
            alerts = [a for a in c.alerts() if a.get("kind") == "drift"]
        first = min(self._rel(a["created_at"]) for a in alerts)
        self.at("packages", packages)
        self.at("drift", max(first, packages))

    # -- 3. samples and labels ---------------------------------------------------------------------

    def _samples(self) -> list[dict[str, Any]]:
        with self.api() as c:
            got: dict[str, Any] = c.request("GET", "/api/v1/samples", params={"limit": 10000})
        return list(got.get("samples", []))

    def _step3_samples(self) -> None:
        self.step(3, "The robots send samples; the plant labels them (truth-checked ones held out)")
        assert self.floor is not None
        labels_by_device = {d: [lab.package for lab in ls] for d, ls in self.floor.by_device.items()}
        imports = self.out / "labelling"
        if imports.exists():
            shutil.rmtree(imports)
        imports.mkdir(parents=True)
        batches = 0
        state: dict[str, Any] = {}

        def labelled_enough() -> dict[int, str] | None:
            nonlocal batches
            samples = self._samples()
            rows = training_labels(
                samples, self.floor.frames() if self.floor else {}, labels_by_device, TRUTH_SHARE
            )
            if rows:
                batches += 1
                batch = imports / f"batch-{batches:03d}.jsonl"
                batch.write_text("".join(json.dumps(r) + "\n" for r in rows))
                self.cli(
                    _bin("fleet"), "samples", "import", str(batch), "--new-labels",
                    "--server", self.server_url, "--token", self.token, "--json",
                )  # fmt: skip
            new = {r["id"]: r["label"] for r in rows}
            trained = count(str(s.get("true_label") or new.get(s["id"], "")) for s in samples)
            trained.pop("", None)
            with self.api() as c:
                joined = c.request("GET", "/api/v1/truth", params={"limit": 10000})
            heldout = heldout_labels(samples, joined)
            missing = collection_done(trained, count(heldout.values()), BASELINE_TYPES, NEW_TYPES, self.need)
            state.update(samples=len(samples), trained=trained, heldout=heldout, missing=missing)
            return heldout if not missing else None

        heldout = self.wait_for(
            "enough labelled samples of every type", labelled_enough, self.timing.step_timeout_s * 4
        )
        self.at("sampled")
        trained = state["trained"]
        self.ok(
            f"{state['samples']} samples in; {sum(trained.values())} labelled by the plant "
            f"({', '.join(f'{k} {v}' for k, v in sorted(trained.items()))})"
        )
        self.ok(f"{len(heldout)} held out, labelled by the truth channel ({count(heldout.values())})")
        self.train_dir = self.out / "field" / "train"
        self.heldout_dir = self.out / "field" / "heldout"
        shutil.rmtree(self.out / "field", ignore_errors=True)
        self.cli(
            _bin("fleet"), "samples", "export", "--labelled", "--out", str(self.train_dir),
            "--server", self.server_url, "--token", self.token,
        )  # fmt: skip
        with self.api() as c:
            for pk, label in sorted(heldout.items()):
                (self.heldout_dir / label).mkdir(parents=True, exist_ok=True)
                (self.heldout_dir / label / f"{pk}.jpg").write_bytes(
                    c.get_bytes(f"/api/v1/samples/{pk}/image")
                )
        self.at("labelled")
        self.ok(f"training set exported to {self.train_dir}; held-out set in {self.heldout_dir}")
        self.report["samples"] = {
            "received": state["samples"],
            "labelled_for_training": trained,
            "heldout_by_truth": count(heldout.values()),
        }

    # -- 4-6. the pipeline: train, gate, release, roll out ------------------------------------------

    def _step4_pipeline(self) -> str:
        self.step(4, f"edge-models pipeline: {NEW_REF} from the field samples, gated, released, rolled out")
        work = self.out / "retrain"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        (work / "train.toml").write_text(base_config(fast=self.fast))
        config = work / "PIPELINE.toml"
        config.write_text(
            pipeline_config(
                PipelinePlan(
                    version=NEW_VERSION,
                    base_config=str(work / "train.toml"),
                    serving=str(RELEASES / "shapes-1.0.0"),
                    train_dir=str(self.train_dir),
                    heldout_dir=str(self.heldout_dir),
                    server=self.server_url,
                    keys=str(self.keys),
                    devices=[r.device_id for r in self.robots],
                    soak_s=self.timing.soak_s,
                )
            )
        )
        started = self._t()
        # CPU seconds the pipeline used (its process and the workers it waited for): on a shared
        # machine the wall time says as much about the neighbours as about the pipeline.
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        argv = [
            _bin("edge-models"), "pipeline", "--config", str(config), "--workdir", str(work / "run"),
            "--cache-dir", str(self.out / "cache" / "models"), "--json",
        ]  # fmt: skip
        with self.console.status(f"edge-models pipeline: training {NEW_REF} (fine-tuned from shapes@1.0.0)"):
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=PIPELINE_TIMEOUT_S,
                check=False,
                env={**os.environ, "LINESIDE_TOKEN": self.token},
            )
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        self.report["pipeline_run"] = {
            "wall_s": round(self._t() - started, 1),
            "cpu_s": round(cpu_s, 1),
            "load_average_1m_after": round(os.getloadavg()[0], 2),
        }
        (self.out / "logs" / "pipeline.log").write_text(proc.stderr)
        try:
            report = read_pipeline_report(proc.stdout)
        except PipelineReportError as exc:
            err = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise DemoFailed(f"edge-models pipeline failed ({exc}): {err}") from exc
        for step in report.steps:
            why = f" ({step['reason']})" if step.get("reason") else ""
            self.say(
                f"  pipeline {step['name']:<9} {step.get('status')}{why}  {float(step.get('seconds', 0)):.1f} s"
            )
        self.say(
            f"  the pipeline took {self.report['pipeline_run']['wall_s']:.0f} s and {cpu_s:.0f} CPU-seconds "
            f"(machine load {self.report['pipeline_run']['load_average_1m_after']:.1f} on {os.cpu_count()} CPUs)"
        )
        self.report["pipeline"] = {
            "steps": report.steps,
            "field_gate": report.field_gate,
            "field_accuracy": report.field_accuracy,
            "release": report.release,
        }
        if not report.ok:
            failed = report.failed_step() or {}
            raise DemoFailed(
                f"edge-models pipeline stopped at {failed.get('name', '?')}: {report.reason} "
                f"(report in {work / 'run' / 'pipeline.json'})"
            )
        if report.release is None or report.release.get("version") != NEW_VERSION or not report.rollout_id:
            raise DemoFailed(f"the pipeline released {report.release} with rollout {report.rollout_id}")
        for key, t in sorted(pipeline_marks(report, started).items(), key=lambda kv: kv[1]):
            self.at(key, t)
        gate = report.field_gate or {}
        self.ok(f"trained {NEW_REF} on the field samples, fine-tuned from shapes@1.0.0")
        acc = (report.field_accuracy or {}).get("all_frames") or {}
        self.ok(
            f"field gate on the held-out samples: {gate.get('verdict', '?')} ({gate.get('reason', '')}); "
            f"accuracy on all of them {NEW_REF} {_pct(acc.get('candidate'))}, shapes@1.0.0 {_pct(acc.get('serving'))}"
        )
        self.ok(f"released {NEW_REF}; rollout {report.rollout_id} started with a shadow stage on every robot")
        return report.rollout_id

    def _step6_rollout(self, rollout_id: str) -> None:
        self.step(5, f"The rollout of {NEW_REF}: shadow on every robot, then 1, 100%")

        def shadow_passed() -> dict[str, Any] | None:
            with self.api() as c:
                r: dict[str, Any] = c.rollout(rollout_id)
            if r.get("state") in ("halted", "aborted", "paused"):
                raise DemoFailed(f"the {NEW_REF} rollout {r['state']} in shadow: {r.get('reason')}")
            shadow = r.get("shadow") or {}
            return r if shadow.get("state") in ("passed", "overridden") else None

        passed = self.wait_for("the shadow verdict", shadow_passed, self.timing.step_timeout_s * 2)
        self.at("shadow")
        self.ok(f"shadow stage on every robot: {(passed.get('shadow') or {}).get('state')}")
        final = self._follow(rollout_id, {"succeeded", "halted", "aborted", "paused"})
        if final["state"] != "succeeded":
            raise DemoFailed(f"the {NEW_REF} rollout ended {final['state']}: {final.get('reason')}")
        installs = []
        for robot in self.robots:
            with (
                self.api() as c
            ):  # by kind: the truth channel's many events would push it out of the newest N
                events = c.device_events(robot.device_id, limit=500, kind="update.installed")
            got = [self._rel(e["at"]) for e in events if (e.get("model") or {}).get("version") == NEW_VERSION]
            if not got:
                raise DemoFailed(f"{robot.device_id} reported no update.installed for {NEW_REF}")
            installs.append(max(got))
        self.at("served", max(max(installs), self.timeline.at_s["shadow"]))
        self.ok(f"rollout {rollout_id} succeeded: every robot serves {NEW_REF}")
        self.report["rollout"] = {"id": rollout_id, "verdicts": final.get("verdicts", [])}

    # -- 7. recovery -------------------------------------------------------------------------------

    def _field_accuracy(self) -> dict[str, dict[str, Any]]:
        since = datetime.fromtimestamp(self.wall0.timestamp() + self.timeline.at_s["drift"]).astimezone()
        with self.api() as c:
            rows = c.accuracy(since=since.isoformat())
        return {str(r.get("model")): r for r in rows}

    def _step7_recovered(self) -> None:
        self.step(6, "Confidence and field accuracy recover")
        state: dict[str, Any] = {}

        def recovered() -> bool:
            devs = [self._device(r.device_id, recent=3) for r in self.robots]
            conf = {}
            for d in devs:
                fresh = [t for t in (d or {}).get("recent_telemetry", []) if t.get("model") == NEW_REF]
                if not d or not fresh or fresh[0]["confidence_p50"] < 0.9:
                    return False
                conf[d["device_id"]] = fresh[0]["confidence_p50"]
            acc = self._field_accuracy()
            new, old = acc.get(NEW_REF) or {}, acc.get("shapes@1.0.0") or {}
            state.update(confidence=conf, new=new, old=old)
            return bool(
                new.get("n", 0) >= 30
                and new.get("accuracy", 0) >= 0.9
                and (not old.get("n") or new["accuracy"] > old.get("accuracy", 0))
            )

        self.wait_for(
            f"confidence and field accuracy on {NEW_REF}", recovered, self.timing.step_timeout_s * 2
        )
        self.at("recovered")
        for device_id, p50 in sorted(state["confidence"].items()):
            self.ok(f"{device_id}: {NEW_REF}, confidence p50 {p50:.2f}")
        new, old = state["new"], state["old"]
        self.ok(
            f"field accuracy since the first drift alert: {NEW_REF} {new['accuracy']:.1%} of {new['n']} checked, "
            f"shapes@1.0.0 {old.get('accuracy', 0):.1%} of {old.get('n', 0)}"
        )
        self.report["recovery"] = state

    # -- summary -----------------------------------------------------------------------------------

    def _retrain_summary(self) -> DemoResult:
        self.step(7, "The loop, from drift alert to a better model on every robot")
        from rich.table import Table

        loop = self.timeline.report()
        table = Table("step", "at (s)", "took (s)", "since first alert (s)")
        for row in loop["steps"]:
            table.add_row(row["label"], f"{row['at_s']:.1f}", _num(row["took_s"]), _num(row["since_alert_s"]))
        self.console.print(table)
        verdict = "within" if loop["within_goal"] else "OVER"
        self.ok(
            f"first drift alert → last robot on {NEW_REF}: {loop['alert_to_served_s']:.0f} s "
            f"({verdict} the {loop['goal_s'] / 60:.0f}-minute goal)"
        )
        series: dict[str, list[tuple[float, float]]] = {}
        low_rate: dict[str, list[tuple[float, float]]] = {}
        for robot in self.robots:
            d = self._device(robot.device_id, recent=1000) or {}
            tel = [
                t for t in sorted(d.get("recent_telemetry", []), key=lambda t: t["seq"]) if t.get("frames")
            ]
            series[robot.device_id] = [
                (self._rel(t["window_start"]), float(t["confidence_mean"])) for t in tel
            ]
            low_rate[robot.device_id] = [
                (self._rel(t["window_start"]), t["low_confidence"] / t["frames"]) for t in tel
            ]
        markers = [
            Marker(self.timeline.at_s[s.key], s.label, s.colour) for s in STEPS if s.key in self.timeline.at_s
        ]
        chart = confidence_chart(
            series,
            markers,
            self.out / "retrain.png",
            title=f"Drift → field retrain → {NEW_REF} on every robot",
            low_rate_series=low_rate,
            label_rows=len(markers),
        )
        self.report["loop"] = loop
        self.report["machine"] = {
            "cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
        path = self.out / "retrain-report.json"
        path.write_text(json.dumps(self.report, indent=2, default=str))
        self.ok(f"chart: {chart}; report: {path}")
        return DemoResult(ok=True, out_dir=self.out, chart=chart, summary=self.report)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _pct(v: Any) -> str:
    return f"{v:.1%}" if isinstance(v, (int, float)) else "-"
