"""The demo's picture: confidence over time per device, with the release moments marked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Marker:
    """A vertical line on the chart: a release, a rollout, a rollback."""

    t_s: float
    label: str
    colour: str = "tab:gray"


def confidence_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    markers: Sequence[Marker],
    out_path: Path,
    *,
    title: str = "Model confidence on the line",
    low_confidence: float | None = None,
) -> Path:
    """Write a PNG: one line per device (mean confidence per telemetry window) and the markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110)
    for device, points in sorted(series.items()):
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker=".", linewidth=1.6, markersize=5, label=device)
    if low_confidence is not None:
        ax.axhline(
            low_confidence, color="tab:red", linestyle=":", linewidth=1, label="low-confidence threshold"
        )
    for i, m in enumerate(sorted(markers, key=lambda m: m.t_s)):
        ax.axvline(m.t_s, color=m.colour, linestyle="--", linewidth=1)
        ax.annotate(
            m.label,
            xy=(m.t_s, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -12 - 12 * (i % 3)),
            textcoords="offset points",
            fontsize=8,
            color=m.colour,
        )
    ax.set_xlabel("time since start of demo (s)")
    ax.set_ylabel("mean confidence per telemetry window")
    ax.set_ylim(0.0, 1.05)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path
