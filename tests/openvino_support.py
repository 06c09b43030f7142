"""A second Python environment with ``onnxruntime-openvino`` instead of ``onnxruntime``, for real.

The builds install the same ``onnxruntime`` module and conflict, so the OpenVINO one gets its own
virtual environment: the agent package is installed into it with its dependencies, then
``onnxruntime`` is swapped for ``onnxruntime-openvino`` -- the swap README.md documents. The
environment is cached outside the repository (``$LINESIDE_OPENVINO_VENV``, default
``~/.cache/lineside/openvino-venv``) under a key of the dependency list, so a clean machine (CI)
builds it from nothing (~40 s here) and a later run reuses it. It is built under a temporary name
and renamed into place, under a file lock, so an interrupted build never leaves half an
environment behind.

Tests run the agent there with ``PYTHONPATH`` at this checkout, so the code under test is the
working tree's; the installed copy proves the package and its dependencies install.
Without network or index access the build fails: a skip locally, a failure under ``CI=true``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OPENVINO_BUILD = "onnxruntime-openvino"
BUILD_TIMEOUT_S = 600


def venv_dir() -> Path:
    """Where the OpenVINO environment lives (outside the repository)."""
    env = os.environ.get("LINESIDE_OPENVINO_VENV")
    return Path(env) if env else Path.home() / ".cache" / "lineside" / "openvino-venv"


def _key() -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    blob = json.dumps({"deps": deps, "build": OPENVINO_BUILD, "python": sys.version_info[:2]})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _run(args: list[str], log: Path) -> None:
    with log.open("ab") as out:
        proc = subprocess.run(
            args, stdout=out, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S, check=False
        )
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"{' '.join(args[:4])} ... exited {proc.returncode}:\n{tail}")


def _package_copy(dest: Path) -> Path:
    """The package's sources in a scratch dir, so building the wheel writes nothing into the checkout."""
    src = dest / "src"
    src.mkdir()
    shutil.copy2(REPO / "pyproject.toml", src / "pyproject.toml")
    shutil.copy2(REPO / "README.md", src / "README.md")
    # Released bundles and caches are not needed to prove the package installs.
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "releases")
    for pkg in ("edge_agent", "fleet_server", "models", "sim"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=ignore)
    return src


def build(target: Path) -> dict[str, object]:
    """Make the environment at ``target`` from nothing; returns what it did and how long it took."""
    t0 = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        venv = work / "venv"
        log = work / "build.log"
        _run([sys.executable, "-m", "venv", str(venv)], log)
        py = str(venv / "bin" / "python")
        # The agent with its declared dependencies (onnxruntime among them), as a robot installs it ...
        _run([py, "-m", "pip", "install", "-q", str(_package_copy(work))], log)
        # ... then the swap: remove the CPU build, install the OpenVINO one.
        _run([py, "-m", "pip", "uninstall", "-y", "-q", "onnxruntime"], log)
        _run([py, "-m", "pip", "install", "-q", OPENVINO_BUILD], log)
        seconds = round(time.monotonic() - t0, 1)
        info = {"key": _key(), "build_s": seconds, "python": sys.version.split()[0]}
        (venv / "lineside-openvino.json").write_text(json.dumps(info))
        if target.exists():
            shutil.rmtree(target)
        # A venv's python finds its pyvenv.cfg next to itself, so the renamed one still works
        # (``python -m ...``; the console scripts' shebangs name the build path and are not used).
        os.replace(venv, target)
        return info
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ensure_openvino_env() -> Path:
    """The environment's python: reused when its key matches, else (re)built under a lock."""
    target = venv_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / ".openvino-venv.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = target / "lineside-openvino.json"
        try:
            current = json.loads(marker.read_text()).get("key")
        except (OSError, ValueError):
            current = None
        if current != _key():
            build(target)
    return target / "bin" / "python"


def openvino_python() -> Path:
    """For a session fixture: the python, or a skip (a failure under CI=true) when it cannot be built."""
    try:
        return ensure_openvino_env()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"could not build the {OPENVINO_BUILD} environment: {exc}")
        pytest.skip(f"could not build the {OPENVINO_BUILD} environment: {exc}")
