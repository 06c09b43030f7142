"""The end-to-end demo: one machine, every part real, the product's whole story.

An MQTT broker (the fleet server's embedded one, or the Mosquitto given with
``--broker``), ``fleet serve`` with SQLite, TUF keys made for the demo, and
three ``edge-agent`` processes, each replaying its own recorded conveyor stream
at camera rate with its own state directory and provisioned ``root.json``:

1. every robot runs ``shapes-1.0.0`` (side-loaded from a signed USB export);
2. new packages reach two of the three robots: confidence drops, drift alerts fire;
3. ``shapes-2.0.0`` is released and rolled out canary-first; confidence recovers;
4. a faulty ``2.0.1`` (valid signatures, unconfident model) is rolled out: the
   canary's probation fails, it rolls back on its own, the rollout halts, the
   other robots never receive it;
5. a confidently wrong ``2.0.2`` (valid signatures, as confident as 2.0.0, its labels mixed
   up) is rolled out with a shadow phase: every robot runs it beside 2.0.0 without acting on
   it, the agreement verdict fails, the rollout halts with the confusion counts, and no robot
   ever serves it;
6. a summary from the server's and the agents' own records, and a chart.

Every check reads the fleet server's API or the agents' own stores, never this
narration. Any step that does not happen as it should ends the demo with a
non-zero exit, after every process it started has been stopped.

Size: one story told step by step, each step a short method; the building (keys, server,
robots, agent configs) is in ``sim/rig.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console

from lineside_common.errors import LinesideError
from sim.chart import Marker, confidence_chart
from sim.procs import Child, ProcessGroup, free_port
from sim.recording import write_recording
from sim.rig import agent_config_toml, edge_agent_run_argv, fleet_serve_argv, server_healthy, wait_until
from sim.scenario import Phase, Scenario

REPO_ROOT = Path(__file__).resolve().parent.parent
RELEASES = REPO_ROOT / "models" / "releases"
BASELINE_TYPES = ["circle-80", "circle-120", "square-80", "square-120", "triangle-100", "triangle-140"]
NEW_TYPES = ["hexagon-100", "circle-100"]
T = TypeVar("T")


class DemoFailed(LinesideError):
    """A step of the story did not happen as it should."""


@dataclass(frozen=True)
class DemoTiming:
    """How long each part of the story is given (seconds)."""

    fps: float
    window_s: float
    shift_at_s: float  # recording time at which new packages start arriving
    stream_s: float  # length of each recorded stream (replayed in a loop past its end)
    soak_s: float
    step_timeout_s: float

    @classmethod
    def normal(cls) -> DemoTiming:
        return cls(fps=5.0, window_s=4.0, shift_at_s=30.0, stream_s=240.0, soak_s=5.0, step_timeout_s=120.0)

    @classmethod
    def fast(cls) -> DemoTiming:
        return cls(fps=5.0, window_s=3.0, shift_at_s=20.0, stream_s=200.0, soak_s=2.0, step_timeout_s=90.0)


@dataclass
class Robot:
    device_id: str
    sees_new_packages: bool
    seed: int
    home: Path
    child: Child | None = None

    @property
    def config(self) -> Path:
        return self.home / "agent.toml"

    @property
    def stream(self) -> Path:
        return self.home / "stream"


@dataclass
class DemoResult:
    """What the demo saw, from the records."""

    ok: bool
    out_dir: Path
    chart: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def _bin(name: str) -> str:
    """The console script next to this interpreter (the venv's), else from PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise DemoFailed(f"{name} is not installed (pip install -e '.[demo]')")
    return found


def _scenario(sees_new: bool, timing: DemoTiming) -> Scenario:
    base = dict.fromkeys(BASELINE_TYPES, 1.0)
    shifted = {**base, **dict.fromkeys(NEW_TYPES, 3.0)}  # half the packages are new ones
    if not sees_new:
        return Scenario(name="baseline", phases=[Phase(duration_s=timing.stream_s, mix=base)])
    return Scenario(
        name="new-packages",
        phases=[
            Phase(duration_s=timing.shift_at_s, mix=base),
            Phase(duration_s=timing.stream_s - timing.shift_at_s, mix=shifted),
        ],
    )


def _record(args: tuple[Path, int, bool, DemoTiming]) -> str:
    """Record one robot's stream, or reuse the one an earlier run left if it is the same recording.

    A recording is written whole or not at all (temp dir + rename), so a complete ``meta.json``
    means a complete recording; it is reused only when it was made with the same frames, rate,
    seed and scenario (an earlier ``--fast`` run's streams switch packages at another time).
    """
    out, seed, sees_new, timing = args
    frames = int(timing.stream_s * timing.fps)
    scenario = _scenario(sees_new, timing)
    if _same_recording(out, frames=frames, fps=timing.fps, seed=seed, scenario=scenario):
        return f"{out.name}: reused"
    write_recording(out, frames=frames, seed=seed, scenario=scenario, fps=timing.fps, overwrite=True)
    return f"{out.name}: recorded"


def _same_recording(out: Path, *, frames: int, fps: float, seed: int, scenario: Scenario) -> bool:
    try:
        meta = json.loads((out / "meta.json").read_text())
    except (OSError, ValueError):
        return False  # none, or not ours: record it again
    return bool(
        isinstance(meta, dict)
        and meta.get("frame_count") == frames
        and meta.get("fps") == fps
        and meta.get("seed") == seed
        and meta.get("scenario") == scenario.model_dump(mode="json")
    )


def prepare_wrong_bundle(out_dir: Path) -> Path:
    """Step 5's confidently wrong ``shapes-2.0.2``: 2.0.0 with its manifest's labels rotated."""
    from models.faulty import make_rotated_labels

    wrong = out_dir / "bundles" / "shapes-2.0.2"
    return make_rotated_labels(RELEASES / "shapes-2.0.0", wrong, version="2.0.2", force=True)


def prepare_faulty_bundle(out_dir: Path) -> Path:
    """Step 4's faulty ``shapes-2.0.1`` under ``out_dir/bundles``, made afresh on every run.

    An earlier run (finished or interrupted) may have left one: it is demo output, so it is
    replaced, never an error (a second ``make demo`` in the same checkout must work).
    """
    from models.faulty import make_unconfident

    faulty = out_dir / "bundles" / "shapes-2.0.1"
    return make_unconfident(RELEASES / "shapes-2.0.0", faulty, version="2.0.1", force=True)


class Demo:
    """Runs the story; ``run()`` returns a DemoResult or raises DemoFailed."""

    def __init__(
        self,
        out_dir: Path,
        *,
        fast: bool = False,
        broker_url: str | None = None,
        console: Console | None = None,
    ) -> None:
        self.out = out_dir.resolve()
        self.fast = fast
        self.timing = DemoTiming.fast() if fast else DemoTiming.normal()
        self.broker_url = broker_url
        self.console = console or Console(highlight=False)
        self.t0 = time.monotonic()
        self.wall0 = datetime.now().astimezone()
        self.http_port = free_port()
        self.mqtt_port = free_port()
        self.server_url = f"http://127.0.0.1:{self.http_port}"
        self.keys = self.out / "keys"
        self.robots = [
            Robot("robot-1", True, 101, self.out / "robot-1"),
            Robot("robot-2", True, 202, self.out / "robot-2"),
            Robot("robot-3", False, 303, self.out / "robot-3"),
        ]
        self.markers: list[Marker] = []
        self.shadow_summary: dict[str, Any] = {}
        self.token = ""
        self.procs = ProcessGroup(self.out / "logs")

    # -- narration ---------------------------------------------------------------------------------

    def _t(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str, style: str = "") -> None:
        self.console.print(f"[dim]{self._t():6.1f}s[/dim]  {text}", style=style)

    def step(self, n: int, title: str) -> None:
        self.console.rule(f"[bold]{n}. {title}")

    def ok(self, text: str) -> None:
        self.say(f"[green]✓[/green] {text}")

    def mark(self, label: str, colour: str) -> None:
        self.markers.append(Marker(self._t(), label, colour))

    # -- running things ----------------------------------------------------------------------------

    def cli(self, *argv: str, json_out: bool = False) -> Any:
        """Run one of our CLIs exactly as an operator would; DemoFailed with its error line if it fails."""
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            err = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise DemoFailed(
                f"`{' '.join(Path(a).name if i == 0 else a for i, a in enumerate(argv))}` failed: {err}"
            )
        return json.loads(proc.stdout) if json_out else proc.stdout

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout_s: float | None = None) -> T:
        """Poll ``probe`` until it returns something truthy, with a deadline and a spinner."""

        def checked() -> T | None:
            self._check_children()
            return probe()

        with self.console.status(f"waiting: {what}"):
            try:
                value: T = wait_until(
                    checked, timeout_s or self.timing.step_timeout_s, interval=0.5, what=what
                )
            except TimeoutError:
                raise DemoFailed(f"timed out waiting for {what}") from None
        return value

    def _check_children(self) -> None:
        for child in self.procs.children:
            if not child.alive():
                raise DemoFailed(
                    f"{child.name} exited with code {child.popen.returncode}; last lines of {child.log_path}:\n"
                    + child.log_tail(8)
                )

    def api(self) -> Any:
        from fleet_server.client import FleetClient

        return FleetClient(self.server_url, self.token)

    # -- the story ---------------------------------------------------------------------------------

    def run(self) -> DemoResult:
        self.out.mkdir(parents=True, exist_ok=True)
        with self.procs:
            self._setup()
            self._step1_healthy()
            self._step2_drift()
            self._step3_rollout_good()
            self._step4_rollout_faulty()
            self._step5_rollout_wrong()
            result = self._summary()
        self.say(f"every process the demo started has stopped; files are in {self.out}")
        return result

    def _setup(self) -> None:
        self.step(0, "Set-up: recordings, signing keys, fleet server, three robots")
        for bundle in ("shapes-1.0.0", "shapes-2.0.0"):
            if not (RELEASES / bundle / "manifest.json").exists():
                raise DemoFailed(f"released bundle {RELEASES / bundle} is missing")
        for robot in self.robots:
            robot.home.mkdir(parents=True, exist_ok=True)
        jobs = [(r.stream, r.seed, r.sees_new_packages, self.timing) for r in self.robots]
        with (
            self.console.status("recording three conveyor streams with the simulator"),
            ProcessPoolExecutor(max_workers=2) as pool,
        ):
            results = list(pool.map(_record, jobs))
        self.ok(
            f"conveyor streams ({self.timing.stream_s:.0f} s at {self.timing.fps:g} fps each): "
            + ", ".join(results)
        )

        if self.keys.exists():
            shutil.rmtree(self.keys)
        self.cli(_bin("fleet"), "keys", "init", "--out", str(self.keys))
        self.ok(f"TUF keys created in {self.keys} (root.json is each robot's trust anchor)")

        server_dir = self.out / "server"
        if server_dir.exists():
            shutil.rmtree(server_dir)
        # Ports picked now, right before they are bound: picked at start-up they sat unused for the
        # minutes the recordings take, and another program on the machine could take them first.
        self.http_port = free_port()
        self.mqtt_port = free_port()
        self.server_url = f"http://127.0.0.1:{self.http_port}"
        argv = fleet_serve_argv(
            data_dir=server_dir,
            port=self.http_port,
            online_keys=self.keys,
            broker_url=self.broker_url,
            embedded_broker_port=None if self.broker_url else self.mqtt_port,
            fleet=[_bin("fleet")],
        )
        if self.broker_url:
            mqtt_url = self.broker_url
            protocol = "5"
        else:
            protocol = "3.1.1"  # amqtt speaks MQTT 3.1.1 only
            mqtt_url = f"mqtt://127.0.0.1:{self.mqtt_port}"
        self.procs.start("fleet-server", argv)
        token_file = server_dir / "admin.token"
        self.wait_for(
            "the fleet server to start",
            lambda: token_file.exists() and server_healthy(self.server_url, require_mqtt=False),
            60,
        )
        self.token = token_file.read_text().strip()
        self.ok(f"fleet server at {self.server_url}, MQTT broker at {mqtt_url}")

        release = self.cli(
            _bin("fleet"), "release", str(RELEASES / "shapes-1.0.0"), "--keys", str(self.keys),
            "--server", self.server_url, "--token", self.token, "--json", json_out=True,
        )  # fmt: skip
        self.ok(f"released shapes@1.0.0 (targets signed offline): {len(release.get('files', [])) or 3} files")
        usb = self.out / "usb-shapes-1.0.0"
        if usb.exists():
            shutil.rmtree(usb)
        self.cli(
            _bin("fleet"), "export", "shapes@1.0.0", "--out", str(usb), "--server", self.server_url,
            "--token", self.token,
        )  # fmt: skip

        for robot in self.robots:
            state = robot.home / "state"
            if state.exists():
                shutil.rmtree(state)
            shutil.copy(self.keys / "root.json", robot.home / "root.json")
            # The robot's own HTTP token: the server serves model files only to a token holder.
            http_token = robot.home / "http-token"
            self.cli(
                _bin("fleet"), "devices", "token", robot.device_id, "--out", str(http_token),
                "--server", self.server_url, "--token", self.token,
            )  # fmt: skip
            robot.config.write_text(
                agent_config_toml(
                    device_id=robot.device_id,
                    device_class="generic",
                    state_dir=state,
                    source={"uri": robot.stream, "loop": True, "realtime": True},
                    broker={"url": mqtt_url, "protocol": protocol},
                    telemetry={"window_s": self.timing.window_s},
                    # At 5 fps the robots can afford to shadow every frame (verdicts come sooner).
                    shadow={"every_n": 1},
                    updates={
                        "root_json": robot.home / "root.json",
                        "repository_url": self.server_url,
                        "token_file": http_token,
                    },
                )
                + self.agent_config_extra(robot)
            )
            self.cli(_bin("edge-agent"), "install", str(usb), "--config", str(robot.config))
        self.ok("each robot provisioned with root.json and side-loaded shapes@1.0.0 from a signed USB export")
        for robot in self.robots:
            robot.child = self.procs.start(
                robot.device_id, edge_agent_run_argv(robot.config, edge_agent=[_bin("edge-agent")])
            )
        self.t_agents = self._t()
        self.say(
            f"started {len(self.robots)} edge-agent processes, each replaying its own stream in real time"
        )

    def agent_config_extra(self, robot: Robot) -> str:
        """More agent.toml sections for ``robot`` (a hook for stories built on this one)."""
        return ""

    def _device(self, device_id: str, recent: int = 20) -> dict[str, Any] | None:
        from fleet_server.client import ApiError

        try:
            with self.api() as c:
                d: dict[str, Any] = c.device(device_id, recent=recent)
                return d
        except ApiError:
            return None

    @staticmethod
    def _active(d: dict[str, Any] | None) -> str | None:
        if not d:
            return None
        model = (d.get("state") or {}).get("active_model") or {}
        return f"{model.get('name')}@{model.get('version')}" if model else None

    def _step1_healthy(self) -> None:
        self.step(1, "All robots run shapes-1.0.0; telemetry flows")

        def all_reporting() -> list[dict[str, Any]] | None:
            devs = [self._device(r.device_id) for r in self.robots]
            if all(
                d and d.get("online") and self._active(d) == "shapes@1.0.0" and d["recent_telemetry"]
                for d in devs
            ):
                return [d for d in devs if d]
            return None

        devs = self.wait_for("every robot online on shapes@1.0.0 with telemetry", all_reporting)
        for d in devs:
            tel = d["recent_telemetry"][0]
            self.ok(
                f"{d['device_id']}: online, shapes@1.0.0 on {d.get('execution_provider') or 'CPU'}, "
                f"{tel['fps']:.1f} fps, confidence p50 {tel['confidence_p50']:.2f}"
            )
        listing = self.cli(
            _bin("fleet"), "devices", "list", "--server", self.server_url, "--token", self.token
        )
        self.console.print(listing.rstrip())

    def _drift_alerts(self) -> dict[str, dict[str, Any]]:
        with self.api() as c:
            alerts = c.alerts()
        return {a["device_id"]: a for a in alerts if a.get("kind") == "drift" and a.get("device_id")}

    def _step2_drift(self) -> None:
        self.step(2, "New packages reach robot-1 and robot-2: confidence drops, drift alerts fire")
        shift_in = self.t_agents + self.timing.shift_at_s - self._t()
        if shift_in > 0:
            with self.console.status(f"the line switches to new packages in {shift_in:.0f} s"):
                time.sleep(shift_in)  # the recording's own clock decides; nothing to poll before then
        self.mark("new packages arrive", "tab:orange")
        self.say(
            "hexagon-100 and circle-100 now arrive on robot-1's and robot-2's conveyors (robot-3: unchanged)"
        )
        seeing = {r.device_id for r in self.robots if r.sees_new_packages}

        def alerts_for_all() -> dict[str, dict[str, Any]] | None:
            got = self._drift_alerts()
            return got if seeing <= set(got) else None

        alerts = self.wait_for("drift alerts from robot-1 and robot-2", alerts_for_all)
        self.mark("drift alerts", "tab:red")
        for device_id in sorted(seeing):
            self.ok(f"{device_id}: drift alert — {alerts[device_id].get('message', '')}")
        quiet = [r.device_id for r in self.robots if not r.sees_new_packages]
        if set(quiet) & set(alerts):
            raise DemoFailed(f"a drift alert fired on {quiet}, which saw no new packages")
        self.ok(f"no drift alert on {', '.join(quiet)} (its packages did not change)")

    def _release(self, bundle: Path) -> None:
        self.cli(
            _bin("fleet"), "release", str(bundle), "--keys", str(self.keys),
            "--server", self.server_url, "--token", self.token, "--json", json_out=True,
        )  # fmt: skip

    def _rollout(self, ref: str) -> dict[str, Any]:
        started: dict[str, Any] = self.cli(
            _bin("fleet"), "rollout", "start", ref, "--devices", ",".join(r.device_id for r in self.robots),
            "--stages", "1,100%", "--soak", f"{self.timing.soak_s:g}s",
            "--server", self.server_url, "--token", self.token, "--json", json_out=True,
        )  # fmt: skip
        return started

    def _follow(self, rollout_id: str, done: set[str]) -> dict[str, Any]:
        seen: dict[str, str] = {}

        def probe() -> dict[str, Any] | None:
            with self.api() as c:
                r: dict[str, Any] = c.rollout(rollout_id)
            for device_id, progress in sorted(r.get("devices", {}).items()):
                status = progress.get("status", "")
                if seen.get(device_id) != status:
                    seen[device_id] = status
                    self.say(f"  {device_id}: {status}")
            return r if r.get("state") in done else None

        return self.wait_for(f"rollout {rollout_id} to finish", probe, self.timing.step_timeout_s * 2)

    def _step3_rollout_good(self) -> None:
        self.step(3, "shapes-2.0.0 (knows the new packages) is released and rolled out canary-first")
        self._release(RELEASES / "shapes-2.0.0")
        self.ok("released shapes@2.0.0, signed with the demo's targets key")
        self.mark("rollout shapes-2.0.0", "tab:green")
        rollout = self._rollout("shapes@2.0.0")
        self.say(
            f"rollout {rollout['id']}: stage 1 = robot-1 (canary), stage 2 = the rest; soak {self.timing.soak_s:g} s"
        )
        final = self._follow(rollout["id"], {"succeeded", "halted", "aborted"})
        if final["state"] != "succeeded":
            raise DemoFailed(f"the shapes@2.0.0 rollout ended {final['state']}: {final.get('reason')}")
        self.ok("rollout succeeded on every robot")

        def recovered() -> list[dict[str, Any]] | None:
            devs = [self._device(r.device_id, recent=3) for r in self.robots]
            good = []
            for d in devs:
                if not d or self._active(d) != "shapes@2.0.0":
                    return None
                fresh = [t for t in d["recent_telemetry"] if t.get("model") == "shapes@2.0.0"]
                if not fresh or fresh[0]["confidence_p50"] < 0.9:
                    return None
                good.append(d)
            return good

        for d in self.wait_for("confidence to recover on shapes@2.0.0", recovered):
            self.ok(
                f"{d['device_id']}: shapes@2.0.0, confidence p50 {d['recent_telemetry'][0]['confidence_p50']:.2f}"
            )
        for robot in self.robots:
            swaps = [e for e in self._events(robot.device_id) if e["kind"] == "update.installed"]
            dropped = [int((e.get("data") or {}).get("dropped", 0)) for e in swaps]
            if any(dropped):
                raise DemoFailed(f"{robot.device_id} dropped {sum(dropped)} frames during a hot swap")
        self.ok("every robot hot-swapped between two frames: 0 frames dropped")

    def _events(self, device_id: str) -> list[dict[str, Any]]:
        with self.api() as c:
            events: list[dict[str, Any]] = c.device_events(device_id, limit=500)
        return events

    def _step4_rollout_faulty(self) -> None:
        self.step(4, "A faulty shapes-2.0.1 (valid signatures, unconfident model) is rolled out")
        faulty = prepare_faulty_bundle(self.out)
        self._release(faulty)
        self.ok("released shapes@2.0.1 — it verifies, but it is unconfident on every package")
        self.mark("rollout shapes-2.0.1", "tab:purple")
        rollout = self._rollout("shapes@2.0.1")
        final = self._follow(rollout["id"], {"succeeded", "halted", "aborted"})
        if final["state"] != "halted":
            raise DemoFailed(f"the faulty rollout ended {final['state']} instead of halting")
        self.mark("2.0.1 rolled back", "tab:red")
        self.ok(f"rollout halted: {final.get('reason')}")
        canary, *others = self.robots
        rollbacks = [e for e in self._events(canary.device_id) if e["kind"] == "rollback"]
        if not rollbacks:
            raise DemoFailed(f"{canary.device_id} reported no rollback event")
        self.ok(f"{canary.device_id} rolled itself back: {rollbacks[0].get('message', '')}")
        back = self.wait_for(
            f"{canary.device_id} to serve shapes@2.0.0 again",
            lambda: self._active(self._device(canary.device_id)) == "shapes@2.0.0",
        )
        assert back
        for robot in others:
            got = [
                e
                for e in self._events(robot.device_id)
                if (e.get("model") or {}).get("version") == "2.0.1"
                or "2.0.1" in json.dumps(e.get("data") or {})
            ]
            if got:
                raise DemoFailed(f"{robot.device_id} received the faulty release ({got[0]['kind']})")
            if self._active(self._device(robot.device_id)) != "shapes@2.0.0":
                raise DemoFailed(f"{robot.device_id} is not on shapes@2.0.0")
        self.ok(
            f"{', '.join(r.device_id for r in others)} never received shapes@2.0.1 and still run shapes@2.0.0"
        )

    def _step5_rollout_wrong(self) -> None:
        self.step(5, "A confidently wrong shapes-2.0.2 (labels mixed up) is rolled out with a shadow phase")
        wrong = prepare_wrong_bundle(self.out)
        self._release(wrong)
        self.ok(
            "released shapes@2.0.2 — it verifies and is exactly as confident as 2.0.0, but its labels are rotated"
        )
        self.mark("shadow shapes-2.0.2", "tab:brown")
        started: dict[str, Any] = self.cli(
            _bin("fleet"), "rollout", "start", "shapes@2.0.2",
            "--devices", ",".join(r.device_id for r in self.robots),
            "--shadow", "all", "--shadow-soak", f"{self.timing.soak_s:g}s", "--shadow-min-frames", "30",
            "--stages", "1,100%", "--soak", f"{self.timing.soak_s:g}s",
            "--server", self.server_url, "--token", self.token, "--json", json_out=True,
        )  # fmt: skip
        self.say(f"rollout {started['id']}: shadow phase on every robot first, then 1, 100%")
        final = self._follow(started["id"], {"succeeded", "halted", "aborted", "paused"})
        if final["state"] != "halted":
            raise DemoFailed(f"the shapes@2.0.2 rollout ended {final['state']} instead of halting in shadow")
        shadow = final.get("shadow") or {}
        verdicts = [v for v in final.get("verdicts", []) if v.get("gate") == "shadow"]
        if shadow.get("state") != "failed" or not any(v["verdict"] == "fail" for v in verdicts):
            raise DemoFailed(
                f"the 2.0.2 rollout halted, but not on its shadow verdict: {final.get('reason')}"
            )
        self.mark("2.0.2 halted in shadow", "tab:red")
        agreement = next(v for v in verdicts if v["metric"] == "agreement")
        ev = agreement.get("evidence") or {}
        self.ok(
            f"rollout halted in shadow: agreement {ev.get('agree', ev.get('successes'))}/{ev.get('n')} frames "
            f"(upper bound {ev.get('upper', 0):.2f} < {ev.get('minimum')}; {agreement['test']})"
        )
        confusion = (shadow.get("evidence") or {}).get("confusion") or {}
        top = sorted(
            ((n, b, c) for b, row in confusion.items() for c, n in row.items() if b != c), reverse=True
        )[:3]
        for n, b, c in top:
            self.say(f"  2.0.0 said {b}, 2.0.2 said {c}: {n} frames")
        for robot in self.robots:
            served = [
                e
                for e in self._events(robot.device_id)
                if e["kind"] in ("update.installed", "probation.started")
                and (e.get("model") or {}).get("version") == "2.0.2"
            ]
            if served:
                raise DemoFailed(f"{robot.device_id} served shapes@2.0.2 ({served[0]['kind']})")
            store = self.cli(
                _bin("edge-agent"), "models", "--config", str(robot.config), "--json", json_out=True
            )
            if "2.0.2" in json.dumps(store):
                raise DemoFailed(f"{robot.device_id}'s model store holds shapes@2.0.2")
        self.ok(
            "no robot ever served shapes@2.0.2: each ran it in shadow only, and still serves shapes@2.0.0"
        )
        self.shadow_summary = {
            "rollout": final["id"],
            "verdicts": verdicts,
            "confusion": confusion,
        }

    def _summary(self) -> DemoResult:
        self.step(6, "Summary")
        from rich.table import Table

        table = Table("robot", "models it ran (when)", "frames", "dropped", "alerts", "rollbacks (reason)")
        series: dict[str, list[tuple[float, float]]] = {}
        low_rate: dict[str, list[tuple[float, float]]] = {}
        summary: dict[str, Any] = {}
        with self.api() as c:
            alerts = c.alerts()
        for robot in self.robots:
            d = self._device(robot.device_id, recent=1000) or {}
            tel = sorted(d.get("recent_telemetry", []), key=lambda t: t["seq"])
            events = sorted(self._events(robot.device_id), key=lambda e: e["seq"])
            models_ran = [
                ("back to " if e["kind"] == "rollback" else "")
                + (e.get("model") or {}).get("version", "?")
                + f" at {self._rel(e['at']):.0f}s"
                for e in events
                if e["kind"] in ("agent.started", "update.installed", "rollback")
                and not (e.get("data") or {}).get("already_active")
            ]
            rollbacks = [e.get("message", "") for e in events if e["kind"] == "rollback"]
            frames = sum(int(t.get("frames", 0)) for t in tel)
            dropped = sum(int(t.get("dropped", 0)) for t in tel)
            dev_alerts = [a for a in alerts if a.get("device_id") == robot.device_id]
            # The mean shows drift better than the median (half the packages unknown barely moves
            # the median); the low-confidence share below it is what the drift alert watches.
            scored = [t for t in tel if t.get("frames")]
            series[robot.device_id] = [
                (self._rel(t["window_start"]), float(t["confidence_mean"])) for t in scored
            ]
            low_rate[robot.device_id] = [
                (self._rel(t["window_start"]), t["low_confidence"] / t["frames"]) for t in scored
            ]
            agent_view = self.cli(
                _bin("edge-agent"), "models", "--config", str(robot.config), "--json", json_out=True
            )
            table.add_row(
                robot.device_id,
                ", ".join(models_ran),
                str(frames),
                str(dropped),
                str(len(dev_alerts)),
                "; ".join(rollbacks) or "-",
            )
            summary[robot.device_id] = {
                "frames": frames,
                "dropped": dropped,
                "alerts": len(dev_alerts),
                "rollbacks": rollbacks,
                "agent_store": agent_view,
            }
            if dropped:
                raise DemoFailed(f"{robot.device_id} dropped {dropped} frames")
        self.console.print(table)
        chart = confidence_chart(series, self.markers, self.out / "confidence.png", low_rate_series=low_rate)
        summary["shadow_2.0.2"] = self.shadow_summary
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        self.ok(f"chart: {chart}")
        self.ok(f"summary: {self.out / 'summary.json'}; logs: {self.out / 'logs'}")
        return DemoResult(ok=True, out_dir=self.out, chart=chart, summary=summary)

    def _rel(self, iso: str) -> float:
        """Seconds since the demo started, for a timestamp from the records."""
        at = datetime.fromisoformat(str(iso).replace("Z", "+00:00"))
        if at.tzinfo is None:
            at = at.astimezone()
        return (at - self.wall0).total_seconds()
