"""Helpers for the update tests: keys, local TUF repositories, a minimal ONNX runner, a fake agent."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edge_agent.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, parse_manifest
from edge_agent.messages import ModelRef, Telemetry
from edge_agent.store import ModelStore
from edge_agent.updates import Updater, UpdaterSettings
from fleet_server import keys as keymod
from fleet_server.tuf_repo import Repository, release_local
from lineside_common.errors import ModelLoadError
from models.synthetic import make_bundle


class OrtRunner:
    """The Runner protocol on plain ONNX Runtime (CPU), independent of the agent's ModelRunner."""

    def __init__(self, bundle_dir: Path) -> None:
        try:
            data = (bundle_dir / MANIFEST_FILE).read_bytes()
            self.manifest: Manifest = parse_manifest(data)
            self.session = ort.InferenceSession(
                (bundle_dir / MODEL_FILE).read_bytes(), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelLoadError(f"cannot load {bundle_dir}: {exc}") from exc
        self.bundle_dir = bundle_dir
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.closed = False

    def run_tensor(self, x: np.ndarray) -> list[np.ndarray]:
        return list(self.session.run(None, {self.manifest.input.name: x}))

    def model_ref(self) -> ModelRef:
        return ModelRef(name=self.manifest.name, version=self.manifest.version, sha256=self.sha256)

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeHost:
    """Stands in for the Agent: holds the serving runner and records events."""

    runner: Any = None
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    swaps: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def swap_runner(self, runner: Any, *, timeout_s: float = 10.0) -> Any:
        with self.lock:
            old, self.runner = self.runner, runner
            self.swaps += 1
            return old

    def emit_event(self, kind: str, **kw: Any) -> None:
        self.events.append((kind, kw))

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]

    def last(self, kind: str) -> dict[str, Any]:
        for k, kw in reversed(self.events):
            if k == kind:
                return kw
        raise AssertionError(f"no {kind} event in {self.kinds()}")


class World:
    """Keys, a local TUF repository, and a device store with its updater."""

    def __init__(self, tmp: Path, *, device_class: str = "generic", agent_version: str = "0.1.0") -> None:
        self.tmp = tmp
        self.keys = tmp / "keys"
        if not (self.keys / "root.json").exists():
            keymod.init_keys(self.keys)
        self.repo_dir = tmp / "repo"
        self.bundles = tmp / "bundles"
        self.state_dir = tmp / "device"
        self.device_class = device_class
        self.agent_version = agent_version

    def release(self, version: str, **kw: Any) -> Path:
        b = make_bundle(self.bundles / f"{kw.get('name', 'tiny')}-{version}", version=version, **kw)
        release_local(b, self.keys, self.repo_dir)
        return b

    def repository(self) -> Repository:
        return Repository.open(self.repo_dir, self.keys)

    def settings(self, **kw: Any) -> UpdaterSettings:
        base: dict[str, Any] = {
            "device_class": self.device_class,
            "agent_version": self.agent_version,
            "root_json": self.keys / "root.json",
        }
        base.update(kw)
        return UpdaterSettings(**base)

    def updater(
        self, host: FakeHost | None = None, *, now: Callable[[], datetime] | None = None, **kw: Any
    ) -> Updater:
        """The device's updater; ``now`` is its wall clock (a seam for clock tests)."""
        store = ModelStore(self.state_dir)
        extra: dict[str, Any] = {} if now is None else {"now": now}
        return Updater(store, self.settings(**kw), load_runner=OrtRunner, host=host, **extra)

    def store(self) -> ModelStore:
        return ModelStore(self.state_dir)


def window(
    start: datetime,
    *,
    frames: int = 100,
    window_s: float = 5.0,
    confidence_p50: float = 0.99,
    low_confidence: int = 0,
    nonfinite: int = 0,
    errors: int = 0,
    p99: float = 1.0,
    sha: str = "",
    seq: int = 0,
) -> Telemetry:
    return Telemetry(
        device_id="d1",
        seq=seq,
        window_start=start,
        window_s=window_s,
        frames=frames,
        errors=errors,
        nonfinite=nonfinite,
        latency_ms_p99=p99,
        confidence_p50=confidence_p50,
        low_confidence=low_confidence,
        model=ModelRef(name="tiny", version="x", sha256=sha) if sha else None,
    )


def after(t: datetime, s: float) -> datetime:
    return t + timedelta(seconds=s)


def utc(y: int = 2026) -> datetime:
    return datetime(y, 1, 1, tzinfo=UTC)


class _TufHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a TUF repository directory under /tuf/ as the fleet server does (HTTP/1.1 keep-alive)."""

    protocol_version = "HTTP/1.1"

    def translate_path(self, path: str) -> str:
        if not path.startswith("/tuf/"):
            return "/nonexistent"
        return super().translate_path(path[len("/tuf") :])

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def tuf_http_server(repo_dir: Path) -> Iterator[tuple[str, int]]:
    """Serve ``repo_dir`` (``metadata/``, ``targets/``) over HTTP on 127.0.0.1; yields (host, port)."""
    handler = functools.partial(_TufHandler, directory=str(repo_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield "127.0.0.1", int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
