"""The GPU check's measuring half (run by scripts/gpu-check.sh in a fresh onnxruntime-gpu env).

For each of the CUDA and TensorRT providers: load the model through the agent's own
``ModelRunner`` pinned to that provider (TensorRT with its engine cache on), check the provider
really serves (ONNX Runtime falls back silently otherwise), run the bundle's self-test and time it
(a second TensorRT load shows the engine cache at work), then replay a recording flat out through
the real in-process agent on that runner. Writes one JSON file; never raises for a provider that
cannot serve -- its entry says why.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import onnxruntime as ort

from benchmarks.harness import AgentRun
from edge_agent.config import InferenceConfig
from edge_agent.runtime import ModelRunner, runtime_builds
from edge_agent.selftest import run_selftest

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "models" / "releases" / "shapes-1.0.0"
PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def _load(provider: str, cache: Path) -> tuple[ModelRunner, float]:
    inference = InferenceConfig(providers=[provider], pin_provider=True, trt_engine_cache_dir=cache)
    t0 = time.monotonic()
    runner = ModelRunner.load(BUNDLE, inference=inference)
    return runner, time.monotonic() - t0


def check(provider: str, work: Path, recording: Path, frames: int) -> dict[str, Any]:
    out: dict[str, Any] = {"provider": provider}
    if provider not in ort.get_available_providers():
        out["error"] = "not in this onnxruntime build"
        return out
    cache = work / "trt-cache"
    try:
        runner, load_s = _load(provider, cache)
        out["serving"] = runner.provider
        out["load_s"] = round(load_s, 3)
        t0 = time.perf_counter()
        out["selftest_max_abs_diff"] = run_selftest(runner, BUNDLE, runner.manifest)
        out["selftest_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        out["selftest"] = "passed"
        if provider == "TensorrtExecutionProvider":
            again, load2_s = _load(provider, cache)  # the engine comes from the cache now
            out["load_s_cached_engine"] = round(load2_s, 3)
            out["engine_cache_files"] = sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []
            again.close()
        run = AgentRun(recording, work / f"state-{provider}", BUNDLE, threads=1, fps=None, runner=runner)
        run.start()
        done = run.wait_done(120)
        wall = time.monotonic() - run.started_at
        run.stop()
        out["agent"] = {
            "frames": len(run.decisions),
            "dropped": run.dropped,
            "finished": done,
            "frames_per_s": round(len(run.decisions) / wall, 1),
            "latency_ms_p50": round(sorted(run.decisions.latency_ms)[len(run.decisions) // 2], 3)
            if len(run.decisions)
            else None,
        }
    except Exception as exc:  # report, keep going: the other provider may still work
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["traceback"] = traceback.format_exc()[-2000:]
    return out


def main() -> int:
    dest = Path(sys.argv[1])
    frames = int(sys.argv[2]) if len(sys.argv) > 2 else 1500
    from sim.recording import write_recording
    from sim.scenario import resolve_scenario

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        recording = work / "rec"
        write_recording(recording, frames=frames, seed=3, scenario=resolve_scenario("baseline"), fps=30.0)
        build = runtime_builds()
        result = {
            "onnxruntime": ort.__version__,
            "runtime_build": build.serving,
            "runtime_builds_installed": list(build.installed),
            "available_providers": ort.get_available_providers(),
            "frames": frames,
            "providers": [check(p, work, recording, frames) for p in PROVIDERS],
        }
    dest.write_text(json.dumps(result, indent=2))
    print(json.dumps({p["provider"]: p.get("selftest", p.get("error")) for p in result["providers"]}))
    return 0 if all(p.get("selftest") == "passed" for p in result["providers"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
