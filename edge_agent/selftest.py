"""Self-test: a new model must reproduce its ``selftest.npz`` on this device before it serves.

``selftest.npz`` holds ``inputs`` (N, *input.shape[1:]) and one ``out_<output name>`` per output
(N, ...). Every input runs through the model on this device's execution provider; any output
outside ``atol``/``rtol`` (the manifest's ``selftest`` section, per provider where it says so)
rejects the model. NaN where the
golden output has NaN counts as reproduced: the bundle is what its producer released, and a model
that emits NaN is caught by probation's non-finite gate, with evidence, instead.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Protocol

import numpy as np

from edge_agent.manifest import Manifest
from lineside_common.errors import SelftestError

log = logging.getLogger(__name__)
MAX_SELFTEST_CASES = 64


class TensorRunner(Protocol):
    output_names: list[str]

    def run_tensor(self, x: np.ndarray) -> list[np.ndarray]: ...


def run_selftest(runner: TensorRunner, bundle_dir: Path, manifest: Manifest) -> float:
    """Run the golden inputs; return the largest absolute difference seen. SelftestError if off."""
    path = Path(bundle_dir) / manifest.selftest.file
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise SelftestError(f"cannot read {path.name}: {exc}") from exc
    inputs = arrays.get("inputs")
    if inputs is None or inputs.ndim != len(manifest.input.shape) or len(inputs) == 0:
        raise SelftestError(f"{path.name} has no usable 'inputs' array")
    expected = {name[4:]: arr for name, arr in arrays.items() if name.startswith("out_")}
    checked = [n for n in runner.output_names if n in expected]
    if not checked:
        raise SelftestError(f"{path.name} has no golden output for any of {runner.output_names}")
    # A runner without a ``provider`` attribute (a plain CPU session) is judged as CPU.
    atol, rtol = manifest.selftest.tolerance_for(getattr(runner, "provider", "CPUExecutionProvider"))
    worst = 0.0
    for i, x in enumerate(inputs[:MAX_SELFTEST_CASES]):
        try:
            outs = runner.run_tensor(np.ascontiguousarray(x[None]).astype(manifest.input.dtype, copy=False))
        except Exception as exc:
            raise SelftestError(f"the model failed on self-test input {i}: {exc}") from exc
        by_name = dict(zip(runner.output_names, outs, strict=False))
        for name in checked:
            got = np.asarray(by_name[name], dtype=np.float64).reshape(-1)
            want = np.asarray(expected[name][i], dtype=np.float64).reshape(-1)
            if got.shape != want.shape:
                raise SelftestError(f"output {name} has shape {got.shape}, self-test expects {want.shape}")
            both_nan = np.isnan(got) & np.isnan(want)
            diff = np.where(both_nan, 0.0, np.abs(got - want))
            diff = np.where(np.isnan(diff), np.inf, diff)
            bad = diff > atol + rtol * np.abs(np.nan_to_num(want))
            worst = max(worst, float(diff.max(initial=0.0)))
            if bad.any():
                raise SelftestError(
                    f"output {name} differs from self-test case {i} by {float(diff.max()):.3g} "
                    f"(atol {atol}, rtol {rtol})",
                    max_abs_diff=float(diff.max()),
                )
    log.info("self-test passed: %d cases, max |diff| %.3g", min(len(inputs), MAX_SELFTEST_CASES), worst)
    return worst
