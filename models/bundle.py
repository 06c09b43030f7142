"""Model bundles on disk: write one atomically, load one and check it.

A bundle is ``manifest.json`` + ``model.onnx`` + ``selftest.npz`` (see
:mod:`edge_agent.manifest`). ``selftest.npz`` holds ``inputs`` (N, C, H, W)
golden preprocessed inputs and ``out_<output name>`` with what the model gives
on each of them, computed here with ONNX Runtime exactly as the agent runs it.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.manifest import MANIFEST_FILE, MODEL_FILE, SELFTEST_FILE, Manifest, load_manifest
from lineside_common.atomic import replace_dir_durably
from lineside_common.errors import ManifestError, ModelLoadError, SelftestError

SELFTEST_COUNT = 8


def agent_session(model: bytes | str | Path, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session configured as the agent's default: 1 intra-op thread, no spinning."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        raise ModelLoadError(f"ONNX Runtime cannot load the model: {exc}") from exc


def output_names(session: Any) -> list[str]:
    return [o.name for o in session.get_outputs()]


def run_batch(model: bytes | str | Path, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Run a batch-1 model over ``inputs`` (N, ...) one at a time: {output name: (N, ...)}."""
    session = agent_session(model)
    in_name = session.get_inputs()[0].name
    names = output_names(session)
    outs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for x in inputs:
        for name, value in zip(names, session.run(names, {in_name: x[None]}), strict=True):
            outs[name].append(np.asarray(value)[0])
    return {n: np.stack(v) for n, v in outs.items()}


def selftest_arrays(model: bytes | str | Path, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """``{"inputs": ..., "out_<name>": ...}`` for selftest.npz."""
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    return {"inputs": inputs, **{f"out_{k}": v for k, v in run_batch(model, inputs).items()}}


def write_bundle(
    out_dir: Path | str,
    manifest: Manifest,
    model: bytes,
    selftest_inputs: np.ndarray,
    *,
    extra_files: dict[str, bytes] | None = None,
    force: bool = False,
) -> Path:
    """Write a complete bundle to ``out_dir``: built in a temp dir beside it, fsynced, renamed into place.

    The selftest outputs are computed from ``model`` here, so they always match it.
    ``extra_files`` (e.g. ``train.toml``, ``evaluation.json``) travel beside the three
    bundle files. An existing ``out_dir`` is replaced only with ``force``.
    """
    out = Path(out_dir)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists (use --force to replace it)")
    arrays = selftest_arrays(model, selftest_inputs)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy stubs mistype **kwds
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a bundle is meant to be read by others
        (tmp / MODEL_FILE).write_bytes(model)
        (tmp / SELFTEST_FILE).write_bytes(buf.getvalue())
        (tmp / MANIFEST_FILE).write_bytes(manifest.to_json().encode() + b"\n")
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        replace_dir_durably(tmp, out)  # fsyncs every file first; an old bundle is moved aside
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@dataclass(frozen=True)
class Bundle:
    """A loaded, checked bundle."""

    path: Path
    manifest: Manifest
    model: bytes
    selftest: dict[str, np.ndarray]

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE


def load_bundle(bundle_dir: Path | str) -> Bundle:
    """Read a bundle and check its three files agree: manifest valid, selftest arrays present and shaped.

    ManifestError for a missing/invalid file or arrays that do not fit the manifest.
    """
    path = Path(bundle_dir)
    manifest = load_manifest(path)
    try:
        model = (path / MODEL_FILE).read_bytes()
    except OSError as exc:
        raise ManifestError(f"no readable {MODEL_FILE} in {path}") from exc
    try:
        with np.load(path / manifest.selftest.file, allow_pickle=False) as z:
            selftest = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise ManifestError(f"no readable {manifest.selftest.file} in {path}: {exc}") from exc
    if "inputs" not in selftest:
        raise ManifestError(f"{SELFTEST_FILE} has no 'inputs' array")
    if list(selftest["inputs"].shape[1:]) != manifest.input.shape[1:]:
        raise ManifestError(
            f"{SELFTEST_FILE} inputs are {selftest['inputs'].shape[1:]}, manifest input is {manifest.input.shape[1:]}"
        )
    wanted = [manifest.outputs.class_output]
    if manifest.outputs.dimensions_output:
        wanted.append(manifest.outputs.dimensions_output)
    for name in wanted:
        if f"out_{name}" not in selftest:
            raise ManifestError(f"{SELFTEST_FILE} has no out_{name} for the manifest's output {name!r}")
    return Bundle(path=path, manifest=manifest, model=model, selftest=selftest)


def check_selftest(bundle: Bundle) -> float:
    """Run the model on the selftest inputs; the max abs difference, or SelftestError past tolerance.

    NaN where the golden output is NaN counts as reproduced (a NaN model is caught by probation).
    """
    got = run_batch(bundle.model, bundle.selftest["inputs"])
    worst = 0.0
    tol = bundle.manifest.selftest
    for key, expected in bundle.selftest.items():
        if not key.startswith("out_"):
            continue
        name = key[4:]
        if name not in got:
            raise SelftestError(f"model has no output {name!r}")
        actual = got[name]
        if not np.allclose(actual, expected, atol=tol.atol, rtol=tol.rtol, equal_nan=True):
            diff = (
                float(np.nanmax(np.abs(actual - expected)))
                if actual.shape == expected.shape
                else float("inf")
            )
            raise SelftestError(f"selftest output {name!r} differs by {diff:.3g}", max_abs_diff=diff)
        worst = max(worst, float(np.nan_to_num(np.abs(actual - expected)).max(initial=0.0)))
    return worst
