"""Lineside's benchmarks: the agent against the bare runtime and against what users would pick instead.

``python -m benchmarks [--quick] [--only NAME,...]`` (or ``make bench``) runs them, prints a table
per benchmark and writes ``BENCHMARKS.md``. Each benchmark is ``run(ctx) -> Section`` and
measures its peers in the same run, so the ratios hold on a shared machine.
"""

from __future__ import annotations

from collections.abc import Callable

from benchmarks import fleet, local_output, pipeline, providers, quant, realtime, sampling, startup, swap
from benchmarks.common import Check, Context, Section

__all__ = ["BENCHMARKS", "Check", "Context", "Section"]

BENCHMARKS: dict[str, Callable[[Context], Section]] = {
    "pipeline": pipeline.run,
    "realtime": realtime.run,
    "camerarate": realtime.run_camera_rate,
    "sampling": sampling.run,
    "swap": swap.run,
    "quantisation": quant.run,
    "fleet": fleet.run,
    "startup": startup.run,
    "accelerators": pipeline.run_accelerators,
    "local_output": local_output.run,
    "providers": providers.run,
}
