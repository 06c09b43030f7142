"""What every benchmark shares: the run context (quick or full, work directory, bundles,
recordings), the result shape, process CPU/memory readings from ``/proc``, and the machine.

Each benchmark is a function ``run(ctx) -> Section``: it measures its peers in the same run and
puts ratios beside the raw figures, so a noisy machine moves the numbers but not the comparison.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LABELS = ("circle-80", "circle-120", "square-80", "square-120", "triangle-100", "triangle-140")
REPO = Path(__file__).resolve().parent.parent
RELEASES = REPO / "models" / "releases"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Check:
    """One acceptance criterion: what, whether it held, and the figure behind it."""

    name: str
    ok: bool | None  # None: not measurable in this run (e.g. no GPU)
    detail: str


@dataclass
class Section:
    """One benchmark's result: a table, notes and acceptance checks."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


@dataclass
class Bundles:
    """The FP32 bundles the benchmarks serve: v1 (baseline) and v2 (the swap/rollout target)."""

    v1: Path
    v2: Path
    kind: str  # "release" (models/releases) or "synthetic" (models.synthetic)


class Context:
    """Quick or full, where to put things, and lazily-built shared inputs (cached per run)."""

    def __init__(self, *, quick: bool, workdir: Path) -> None:
        self.quick = quick
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._bundles: Bundles | None = None
        self._recordings: dict[tuple[int, float], Path] = {}

    def scale(self, quick: int, full: int) -> int:
        return quick if self.quick else full

    def bundles(self) -> Bundles:
        """shapes-1.0.0 / shapes-2.0.0 from models/releases when built (full mode), else synthetic ones."""
        if self._bundles is None:
            v1, v2 = RELEASES / "shapes-1.0.0", RELEASES / "shapes-2.0.0"
            if not self.quick and all(
                (b / "model.onnx").exists() and (b / "manifest.json").exists() for b in (v1, v2)
            ):
                self._bundles = Bundles(v1, v2, "release")
            else:
                from models.synthetic import make_bundle

                d = self.workdir / "bundles"
                self._bundles = Bundles(
                    make_bundle(
                        d / "shapes-1.0.0", name="shapes", version="1.0.0", labels=LABELS, size=(64, 64)
                    ),
                    make_bundle(
                        d / "shapes-2.0.0",
                        name="shapes",
                        version="2.0.0",
                        labels=LABELS,
                        size=(64, 64),
                        seed=1,
                    ),
                    "synthetic",
                )
        return self._bundles

    def recording(self, frames: int, fps: float = 30.0) -> Path:
        """A simulator recording (640x480 MJPG, baseline scenario) with ``frames`` frames."""
        key = (frames, fps)
        if key not in self._recordings:
            from sim.recording import write_recording
            from sim.scenario import resolve_scenario

            out = self.workdir / f"rec-{frames}-{fps:g}"
            write_recording(
                out, frames=frames, seed=11, scenario=resolve_scenario("baseline"), fps=fps, overwrite=True
            )
            self._recordings[key] = out
        return self._recordings[key]

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


# --- /proc readings (Linux; no psutil needed) -------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def proc_peak_rss_mb(pid: int) -> float:
    """Peak resident memory of ``pid`` in MiB (VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class CpuMeter:
    """CPU seconds and wall time of a set of pids between ``start()`` and ``stop()``."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._t0 = 0.0
        self._c0: dict[str, float] = {}
        self.wall_s = 0.0
        self.cpu_s: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self._t0 = time.monotonic()
        self._c0 = {k: proc_cpu_s(p) for k, p in self.pids.items()}
        return self

    def stop(self) -> CpuMeter:
        self.wall_s = time.monotonic() - self._t0
        self.cpu_s = {k: proc_cpu_s(p) - self._c0[k] for k, p in self.pids.items()}
        return self

    def percent(self, key: str) -> float:
        """CPU use of ``key`` as % of one core."""
        return 100.0 * self.cpu_s[key] / self.wall_s if self.wall_s > 0 else float("nan")


# --- numbers --------------------------------------------------------------------------------


def pct(values: list[float] | np.ndarray, q: float) -> float:
    """The ``q``-th percentile, NaN for no values."""
    a = np.asarray(values, dtype=np.float64)
    return float(np.percentile(a, q)) if a.size else float("nan")


def fmt(v: Any, digits: int = 2) -> str:
    """Numbers for tables: fixed digits, thousands separators for big ones, '-' for None/NaN."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:
            return "-"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    return str(v)


# --- the machine ----------------------------------------------------------------------------


def machine() -> dict[str, str]:
    """CPU model, cores, RAM, OS, Python and the library versions the figures depend on."""
    import cv2
    import onnxruntime as ort

    cpu = platform.processor() or "unknown"
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("unknown", "x86_64", ""):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    have = set(line.split(":", 1)[1].split())
                    flags = " ".join(x for x in ("avx2", "avx512f", "avx512_vnni", "amx_int8") if x in have)
    except OSError:
        pass
    mem_gib = "?"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gib = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_flags": flags or "-",
        "cores": str(len(os.sched_getaffinity(0))),
        "ram": mem_gib,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime": f"{ort.__version__} ({', '.join(ort.get_available_providers())})",
        "opencv": cv2.__version__,
        "numpy": np.__version__,
    }


def rollout_checks(r: dict[str, Any], n: int, *, rollout: str, ingest: str) -> list[Check]:
    """The two checks of a fleet-scale run ``r`` over ``n`` devices: the rollout reached every
    device, and ingest kept up (>= 90 % of the offered rate, backlog at the end under a second's worth)."""
    keeps_up = r["telemetry_rate"] >= 0.9 * r["offered_rate"] and r["backlog_end"] < r["offered_rate"]
    return [
        Check(
            rollout,
            r["rollout_state"] == "succeeded" and r["passed"] == n,
            f"{r['passed']}/{n} in {r['rollout_s']:.1f} s",
        ),
        Check(
            ingest,
            keeps_up,
            f"{r['telemetry_rate']:.0f} of {r['offered_rate']:.0f} msg/s, backlog max {int(r['backlog_max'])}",
        ),
    ]
