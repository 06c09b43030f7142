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


Series = Mapping[str, Sequence[tuple[float, float]]]


def confidence_chart(
    series: Series,
    markers: Sequence[Marker],
    out_path: Path,
    *,
    title: str = "Model confidence on the line",
    low_rate_series: Series | None = None,
    label_rows: int = 4,
) -> Path:
    """Write a PNG: one line per device (mean confidence per telemetry window) and the markers.

    With ``low_rate_series`` a second panel shows each window's share of low-confidence frames,
    the signal the drift alert watches. Marker labels are staggered over ``label_rows`` rows
    (a story that marks every step, close together, gives each its own row).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if low_rate_series else 1
    fig, axes = plt.subplots(panels, 1, figsize=(11, 4.2 * panels + 1), dpi=110, sharex=True, squeeze=False)
    top = axes[0][0]
    colours: dict[str, str] = {}
    for device, points in sorted(series.items()):
        if points:
            xs, ys = zip(*points, strict=True)
            (line,) = top.plot(xs, ys, marker=".", linewidth=1.6, markersize=5, label=device)
            colours[device] = line.get_color()
    top.set_ylabel("mean confidence per window")
    top.set_ylim(0.0, 1.05)
    top.set_title(title)
    top.legend(loc="lower left", fontsize=8)
    if low_rate_series:
        low = axes[1][0]
        for device, points in sorted(low_rate_series.items()):
            if points:
                xs, ys = zip(*points, strict=True)
                low.plot(
                    xs, ys, marker=".", linewidth=1.4, markersize=4, color=colours.get(device), label=device
                )
        low.set_ylabel("share of low-confidence frames")
        low.set_ylim(0.0, 1.05)
    ordered = sorted(markers, key=lambda m: m.t_s)
    for row in axes:
        ax = row[0]
        ax.grid(alpha=0.3)
        for m in ordered:
            ax.axvline(m.t_s, color=m.colour, linestyle="--", linewidth=1)
    for i, m in enumerate(ordered):
        top.annotate(
            m.label,
            xy=(m.t_s, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -12 - 12 * (i % max(1, label_rows))),
            textcoords="offset points",
            fontsize=8,
            color=m.colour,
        )
    axes[-1][0].set_xlabel("time since start of demo (s)")
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path
