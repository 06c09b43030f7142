"""A line (Mosquitto, ``fleet serve``, real agents) whose releases carry agreement gates small enough
for a test, plus the confidently wrong and the label-adding variants of a release."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select

from fleet_server.db import Database, EventRow, TelemetryRow
from tests.fault_support import REPO, LineRig

NEW_TYPES = ("hexagon-90", "oval-60")


class ShadowLine(LineRig):
    """LineRig with agreement gates of 20 frames and every frame shadowed (quick verdicts)."""

    def bundle(self, version: str, *, variant: str = "good") -> Path:
        from edge_agent.manifest import AgreementGates, ProbationGates
        from models.faulty import make_rotated_labels
        from models.synthetic import make_bundle

        out = self.tmp / "bundles" / f"shapes-{version}"
        if out.exists():
            return out
        if variant == "rotated":
            return make_rotated_labels(self.bundle("1.0.0"), out, version=version)
        gates = ProbationGates(window_s=1.5, min_frames=10, max_latency_p99_ms=1000.0)
        labels = ("circle-80", "square-80", "triangle-100")
        extra = NEW_TYPES if variant == "new_types" else ()
        make_bundle(
            out,
            name="shapes",
            version=version,
            probation=gates,
            agreement=AgreementGates(min_agreement=0.9, min_frames=20),
            labels=labels + extra,
            new_labels_silent=bool(extra),
        )
        return out

    def release_variant(self, version: str, variant: str) -> None:
        self.bundle(version, variant=variant)
        self.release(version)

    def config(self, device: str) -> Path:
        path = super().config(device)
        with path.open("a") as f:
            f.write("[shadow]\nevery_n = 1\nmax_cpu_share = 1.0\n")
        return path

    def edge_agent_cli(self, device: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``edge-agent ARGS --config`` this device's config, as an operator at the robot would."""
        script = Path(sys.executable).parent / "edge-agent"
        cmd = [str(script)] if script.exists() else [sys.executable, "-m", "edge_agent.cli"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        return subprocess.run(
            [*cmd, *args, "--config", str(self.config(device))],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            env=env,
        )

    # -- what the server stored
    def _db(self) -> Database:
        return Database(f"sqlite:///{self.server.data_dir / 'fleet.db'}")

    def events(self, device: str, kind: str) -> list[dict[str, Any]]:
        db = self._db()
        try:
            with db.session() as s:
                rows = s.execute(
                    select(EventRow.payload)
                    .where(EventRow.device_id == device, EventRow.kind == kind)
                    .order_by(EventRow.seq)
                ).all()
        finally:
            db.dispose()
        return [dict(r[0]) for r in rows]

    def shadow_blocks(self, device: str) -> list[dict[str, Any]]:
        db = self._db()
        try:
            with db.session() as s:
                rows = s.execute(
                    select(TelemetryRow.payload)
                    .where(TelemetryRow.device_id == device)
                    .order_by(TelemetryRow.seq)
                ).all()
        finally:
            db.dispose()
        return [dict(r[0]["shadow"]) for r in rows if r[0].get("shadow")]
