"""Fault-injection helpers: a TCP proxy that cuts downloads, a static TUF server, process probes.

``CuttingProxy`` sits between an agent (or the Updater) and the artifact server on 127.0.0.1 and
forwards bytes both ways; while it has cuts left, a response to a request whose path matches
``cut_path`` is cut after ``cut_after_bytes`` bytes (both sockets closed), which is what a pulled
cable or a dropped Wi-Fi link looks like to the client mid-download.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sim.procs import console_script
from sim.rig import write_agent_config
from tests.mqtt import wait_until


class CuttingProxy:
    """A threaded TCP proxy ``127.0.0.1:port`` → ``upstream``; ``cuts`` responses are cut short."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        cuts: int = 1,
        cut_after_bytes: int = 2048,
        cut_path: str = "/targets/",
    ) -> None:
        self.upstream = upstream
        self.cut_after_bytes = cut_after_bytes
        self.cut_path = cut_path.encode()
        self._cuts_left = cuts
        self._lock = threading.Lock()
        self.cut_requests: list[str] = []  # request lines whose responses were cut
        self.requests: list[str] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="cutting-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CuttingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()

    def __enter__(self) -> CuttingProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            client.close()
            return
        # armed[0]: response bytes still allowed before the cut, or None when not cutting.
        armed: list[int | None] = [None]
        done = threading.Event()

        def close_both() -> None:
            done.set()
            for s in (client, upstream):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

        def client_to_upstream() -> None:
            try:
                while not done.is_set():
                    data = client.recv(65536)
                    if not data:
                        break
                    for line in data.split(b"\r\n"):
                        if line.startswith((b"GET ", b"POST ", b"HEAD ")):
                            text = line.decode(errors="replace")
                            with self._lock:
                                self.requests.append(text)
                                if self.cut_path in line and self._cuts_left > 0:
                                    self._cuts_left -= 1
                                    self.cut_requests.append(text)
                                    armed[0] = self.cut_after_bytes
                    upstream.sendall(data)
            except OSError:
                pass
            finally:
                close_both()

        threading.Thread(target=client_to_upstream, daemon=True).start()
        try:
            while not done.is_set():
                data = upstream.recv(65536)
                if not data:
                    break
                left = armed[0]
                if left is not None:
                    if len(data) >= left:
                        client.sendall(data[:left])
                        break  # the cut: both sockets closed below
                    armed[0] = left - len(data)
                client.sendall(data)
        except OSError:
            pass
        finally:
            close_both()


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    """How many file descriptors a process holds open (Linux /proc)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def tree_size(path: Path) -> int:
    """Total bytes of the regular files under ``path``."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def seq_gaps(seqs: list[int]) -> list[int]:
    """The sequence numbers missing between the lowest and highest of ``seqs``."""
    if not seqs:
        return []
    have = set(seqs)
    return [s for s in range(min(have), max(have) + 1) if s not in have]


# -- agents as processes -------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent


def record(
    out: Path, *, frames: int = 30, seed: int = 1, fps: float = 30.0, scenario: str = "baseline"
) -> Path:
    """A simulator recording (``edge-sim record``): what a replayed 'camera' reads."""
    import subprocess

    subprocess.run(
        [
            *console_script("edge-sim"),
            "record",
            "--out",
            str(out),
            "--frames",
            str(frames),
            "--seed",
            str(seed),
            "--fps",
            str(fps),
            "--scenario",
            scenario,
            "--force",
        ],
        check=True,
        capture_output=True,
        cwd=REPO,
        timeout=120,
    )
    return out


def agent_toml(
    path: Path,
    *,
    device: str,
    state: Path,
    source: Path,
    broker: str,
    bundle: Path | None = None,
    window_s: float = 0.5,
    updates: dict[str, Any] | None = None,
    source_extra: dict[str, Any] | None = None,
) -> Path:
    """An agent config file for tests: looping replay at camera rate, quick reconnects."""
    return write_agent_config(
        path,
        device_id=device,
        state_dir=state,
        bundle=bundle,
        source={
            "uri": source,
            "loop": True,
            "reconnect_initial_s": 0.2,
            "reconnect_max_s": 1.0,
            **(source_extra or {}),
        },
        broker={"url": broker, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
        telemetry={"window_s": window_s, "flush_timeout_s": 5.0},
        updates=updates or None,
    )


# -- a device clock that is wrong ------------------------------------------------------------------


class DeviceClock:
    """The device's wall clock, off by an adjustable ``skew``, as a device with a dead RTC battery
    or a bad NTP server would have. It is handed to the agent through our own seam,
    ``Updater(now=...)`` → ``TrustedRepository(now=...)``, which is the clock both the clock floor
    and ngclient's expiry checks use (libfaketime is not available, and python-tuf's modules are
    not patched).
    """

    def __init__(self) -> None:
        self.skew = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.skew

    @contextmanager
    def skewed(self, skew: timedelta) -> Iterator[None]:
        """Run the body with the clock off by ``skew``; the right time again after it."""
        self.skew = skew
        try:
            yield
        finally:
            self.skew = timedelta(0)


# -- a line: Mosquitto, `fleet serve`, real agents ----------------------------------------------------


class LineRig:
    """A broker, ``fleet serve`` and N real ``edge-agent run`` processes replaying a camera.

    Releases are synthetic ``shapes`` bundles with a short probation, signed with the offline key
    and uploaded with the ``fleet`` CLI; rollouts and rollbacks go through the HTTP API. Used by
    the fault tests and the soak.
    """

    def __init__(
        self, tmp: Path, broker: Any, agent_factory: Any, *, devices: int = 3, fps: float = 30.0
    ) -> None:
        from tests.fleet_support import FleetServer, make_keys

        self.tmp = tmp
        self.broker = broker
        self.keys = make_keys(tmp)
        self.server = FleetServer(tmp, broker.url, self.keys)
        self.device_ids = [f"line-{i + 1}" for i in range(devices)]
        self.agent_factory = agent_factory
        self.agents: dict[str, Any] = {}
        self.fps = fps
        self.camera = record(tmp / "camera", frames=60, fps=fps)
        self.first_bundle = self.bundle("1.0.0")

    def bundle(self, version: str) -> Path:
        from edge_agent.manifest import ProbationGates
        from models.synthetic import make_bundle

        out = self.tmp / "bundles" / f"shapes-{version}"
        if not out.exists():
            gates = ProbationGates(window_s=1.5, min_frames=10, max_latency_p99_ms=1000.0)
            make_bundle(out, name="shapes", version=version, probation=gates)
        return out

    def release(self, version: str) -> None:
        self.server.cli(
            "release", str(self.bundle(version)), "--keys", str(self.keys), "--server", self.server.url,
            "--token", self.server.token,
        )  # fmt: skip

    def state_dir(self, device: str) -> Path:
        return self.tmp / "agents" / device

    def start(self) -> LineRig:
        """Server up, 1.0.0 released and side-loaded (verified, from the server's own repository
        directory, as `edge-agent install` does) into every device's store, then the agents."""
        self.server.start()
        self.release("1.0.0")
        for d in self.device_ids:
            self.side_load(d, "1.0.0")
            self.start_agent(d)
        return self

    def side_load(self, device: str, version: str) -> None:
        from edge_agent.config import load_config
        from edge_agent.updates import daemon_updater

        out = daemon_updater(load_config(self.config(device))).install_from_dir(
            self.server.data_dir / "repo", name="shapes", version=version
        )
        assert out.ok, out

    def token_file(self, device: str) -> Path:
        return self.tmp / "tokens" / f"{device}.http-token"

    def start_agent(self, device: str) -> Any:
        # The device's own HTTP token: the server serves model files only to a token holder.
        if not self.token_file(device).exists():
            self.server.cli("devices", "token", device, "--out", str(self.token_file(device)))
        self.agents[device] = self.agent_factory(self.config(device))
        return self.agents[device]

    def config(self, device: str) -> Path:
        return agent_toml(
            self.tmp / f"{device}.toml",
            device=device,
            state=self.state_dir(device),
            source=self.camera,
            broker=self.broker.url,
            bundle=self.first_bundle,
            window_s=0.5,
            updates={
                "root_json": self.keys / "root.json",
                "repository_url": self.server.url,
                "token_file": self.token_file(device),
                "fetch_backoff_s": 0.2,
                "fetch_backoff_max_s": 1.0,
            },
        )

    def stop(self) -> None:
        for a in self.agents.values():
            a.stop()
        self.server.stop()

    # -- the API
    def api(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        r = httpx.request(
            method,
            f"{self.server.url}/api/v1{path}",
            headers={"Authorization": f"Bearer {self.server.token}"},
            timeout=10,
            **kw,
        )
        r.raise_for_status()
        return r.json()

    def wait_for_baseline(self, windows: int = 3, timeout: float = 30.0) -> None:
        """Wait until the server holds ``windows`` telemetry windows from every device.

        A rollout's statistical quality gate compares the new version against the devices' windows
        from before it; with fewer than its minimum the gate is rightly inconclusive (it waits, then
        pauses for a person), which is not what a test of something else wants.
        """
        wait_until(
            lambda: all(
                len(self.api("GET", f"/devices/{d}").get("recent_telemetry", [])) >= windows
                for d in self.device_ids
            ),
            timeout,
            what=f"{windows} telemetry windows per device before the rollout (the gate's baseline)",
        )

    def devices(self) -> dict[str, dict[str, Any]]:
        return {d["device_id"]: d for d in self.api("GET", "/devices")}

    def rollout(self, version: str, *, soak: str = "1s") -> str:
        body = {
            "model": f"shapes@{version}",
            "devices": self.device_ids,
            "stages": "1,100%",
            "soak": soak,
            "min_gate_frames": 10,
            "resend_after_s": 5.0,
        }
        rid: str = self.api("POST", "/rollouts", json=body)["id"]
        return rid

    def rollout_state(self, rid: str) -> dict[str, Any]:
        out: dict[str, Any] = self.api("GET", f"/rollouts/{rid}")
        return out

    def active(self) -> dict[str, str | None]:
        return {d: (v.get("active_model") or None) for d, v in self.devices().items()}

    def rollback_all(self) -> None:
        self.api("POST", "/rollback", json={"devices": self.device_ids, "reason": "soak rollback"})

    def seqs(self) -> dict[str, dict[str, list[int]]]:
        """Every telemetry and event seq the server stored, per device."""
        from sqlalchemy import select

        from fleet_server.db import Database, EventRow, TelemetryRow

        db = Database(f"sqlite:///{self.server.data_dir / 'fleet.db'}")
        out: dict[str, dict[str, list[int]]] = {}
        try:
            with db.session() as s:
                for name, row in (("telemetry", TelemetryRow), ("events", EventRow)):
                    for dev, seq in s.execute(select(row.device_id, row.seq)).all():
                        out.setdefault(dev, {"telemetry": [], "events": []})[name].append(int(seq))
        finally:
            db.dispose()
        return out

    def status(self, device: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.state_dir(device) / "status.json").read_text())
            return data
        except (OSError, ValueError):
            return {}

    def assert_nothing_lost(self) -> None:
        """Every telemetry window and event each agent produced is stored once at the server.

        The agents stop gracefully (their spools drain to the broker); ``seq.{channel}`` in an
        agent's spool is the next seq it would use, so the server must hold exactly 0..next-1.
        """
        for d, agent in self.agents.items():
            assert agent.stop() == 0, agent.log()[-3000:]
            spool = self.state_dir(d) / "spool"
            assert sorted(p.name for p in spool.glob("*.json")) == [], f"{d}: spool not drained"
        produced = {
            d: {
                ch: int((self.state_dir(d) / "spool" / f"seq.{ch}").read_text())
                for ch in ("telemetry", "events")
            }
            for d in self.device_ids
        }

        def stored_all() -> bool:
            seqs = self.seqs()
            return all(
                sorted(seqs.get(d, {}).get(ch, [])) == list(range(n))
                for d in produced
                for ch, n in produced[d].items()
            )

        try:
            wait_until(stored_all, 30, what="every produced seq stored at the server")
        except TimeoutError:
            seqs = self.seqs()
            for d in produced:
                for ch, n in produced[d].items():
                    got = seqs.get(d, {}).get(ch, [])
                    if sorted(got) != list(range(n)):
                        missing = sorted(set(range(n)) - set(got))
                        raise AssertionError(
                            f"{d} {ch}: produced {n}, stored {len(got)}, missing {missing[:20]}"
                        ) from None
            raise


def persistent_broker(factory: Any) -> Any:
    """A Mosquitto that keeps sessions and queued QoS 1 messages across a restart.

    (Started as root, the test broker stays root — tests/mqtt.py — so it can write its persistence
    file under pytest's 0700 temp dirs.)
    """
    return factory(persistence=True)
