"""Crash safety: SIGKILL at every install step and at random moments; after each restart exactly
the old or the new model is active, it verifies, and nothing half-written is ever loaded."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent.store import ModelStore
from edge_agent.updates import FAULT_POINTS
from tests.conftest import REPO
from tests.updates_support import OrtRunner, World

pytestmark = pytest.mark.integration


def _driver(w: World, version: str, fault: str | None = None) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "tests.updates_driver", str(w.state_dir), str(w.keys / "root.json")]
    args += [str(w.repo_dir), version] + ([fault] if fault else [])
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check_after_restart(w: World, allowed: set[str]) -> str:
    """What a restarting agent sees: recovery, then the active bundle must verify and load."""
    store = ModelStore(w.state_dir)
    state, _ = store.recover()
    assert state.active is not None
    assert state.active.version in allowed, (state.active.version, allowed)
    store.verify_bundle(state.active)
    runner = OrtRunner(store.bundle_dir(state.active))
    assert runner.manifest.version == state.active.version
    if state.previous is not None:
        store.verify_bundle(state.previous)
    assert list(store.staging.iterdir()) == []
    assert {p.name for p in store.bundles.iterdir()} == state.referenced()
    return state.active.version


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    w.release("1.0.0")
    p = _driver(w, "1.0.0")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    return w


@pytest.mark.parametrize("fault", FAULT_POINTS)
def test_sigkill_at_each_install_step(world: World, fault: str) -> None:
    world.release("1.1.0")
    p = _driver(world, "1.1.0", fault)
    _, err = p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL, err
    expected_new = fault in ("after_state_write", "during_probation")
    version = _check_after_restart(world, {"1.1.0"} if expected_new else {"1.0.0"})
    state, _ = ModelStore(world.state_dir).recover()
    # Killed after the state write, the new model is on probation over the old; before it, the
    # old model is still the committed one, with nothing to fall back to (the first install).
    assert state.probation is expected_new, (fault, state)
    assert (state.previous.version if state.previous else None) == ("1.0.0" if expected_new else None)
    # The next start finishes the job: the same install succeeds (or the new model is kept).
    p = _driver(world, "1.1.0")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err + out
    assert _check_after_restart(world, {"1.1.0"}) == "1.1.0"
    # Whichever run finished it, 1.1.0 is on probation with 1.0.0 kept to roll back to.
    state, _ = ModelStore(world.state_dir).recover()
    assert state.probation, (version, state)
    assert state.previous is not None and state.previous.version == "1.0.0", (version, state)


def test_sigkill_at_random_moments_over_20_installs(world: World) -> None:
    rng = random.Random(1234)
    versions = [f"1.{i}.0" for i in range(1, 21)]
    for v in versions:
        world.release(v)
    # How long an install takes here, measured, so the kills land inside one.
    p = _driver(world, versions[0])
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    p.communicate(timeout=120)
    install_s = max(time.monotonic() - t0, 0.05)
    active = _check_after_restart(world, {versions[0]})
    killed = 0
    for v in versions[1:]:
        p = _driver(world, v)
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, install_s * 1.2))  # the random moment of the power cut
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=120)
        killed += p.returncode == -signal.SIGKILL
        active = _check_after_restart(world, {active, v})
    assert killed >= 5  # most attempts really were cut short
