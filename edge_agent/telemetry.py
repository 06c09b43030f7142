"""Per-window aggregation of decisions: pure, allocation-free on the per-frame path.

The inference thread calls :meth:`TelemetryWindow.add` for every frame (a few
index writes into preallocated numpy arrays) and :meth:`TelemetryWindow.close`
once per window, which computes the summary (:class:`WindowStats`) and starts
the next window reusing the same buffers. No clocks inside: callers pass times.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from edge_agent.messages import DimensionSummary, ModelRef, Telemetry


@dataclass(frozen=True, slots=True)
class WindowStats:
    """The summary of one closed window (what Telemetry carries, before it gets a ``seq``)."""

    window_start: datetime
    window_s: float
    frames: int
    dropped: int
    errors: int
    nonfinite: int
    fps: float
    latency_ms_p50: float
    latency_ms_p99: float
    confidence_mean: float
    confidence_p05: float
    confidence_p50: float
    low_confidence: int
    scored: int  # frames with a finite confidence (the denominator of the low-confidence rate)
    class_histogram: dict[str, int] = field(default_factory=dict)
    dimensions: DimensionSummary | None = None
    model: ModelRef | None = None

    @property
    def low_confidence_rate(self) -> float:
        return self.low_confidence / self.scored if self.scored else 0.0

    def to_telemetry(self, device_id: str, seq: int, *, spool_dropped: int = 0) -> Telemetry:
        """The Telemetry message for this window."""
        return Telemetry(
            device_id=device_id,
            seq=seq,
            window_start=self.window_start,
            window_s=self.window_s,
            frames=self.frames,
            dropped=self.dropped,
            errors=self.errors,
            nonfinite=self.nonfinite,
            fps=self.fps,
            latency_ms_p50=self.latency_ms_p50,
            latency_ms_p99=self.latency_ms_p99,
            confidence_mean=self.confidence_mean,
            confidence_p05=self.confidence_p05,
            confidence_p50=self.confidence_p50,
            low_confidence=self.low_confidence,
            class_histogram=self.class_histogram,
            dimensions=self.dimensions,
            model=self.model,
            spool_dropped=spool_dropped,
        )


class TelemetryWindow:
    """Aggregates decisions over one window; reused window after window.

    Not thread-safe by design: one thread (the inference loop) owns it.
    """

    def __init__(
        self,
        labels: list[str],
        *,
        low_confidence: float,
        model: ModelRef | None = None,
        capacity: int = 1024,
    ) -> None:
        self.labels = list(labels)
        self.low_confidence = float(low_confidence)
        self.model = model
        cap = max(16, capacity)
        self._latency = np.zeros(cap, dtype=np.float64)
        self._conf = np.zeros(cap, dtype=np.float64)
        self._label = np.zeros(cap, dtype=np.int64)
        self._dims = np.zeros((cap, 2), dtype=np.float64)
        self._has_dims = np.zeros(cap, dtype=bool)
        self._finite = np.zeros(cap, dtype=bool)
        self._n = 0
        self.errors = 0
        self.dropped = 0
        self.start_wall: datetime | None = None
        self.start_mono = 0.0

    def __len__(self) -> int:
        return self._n

    def reset(self, start_wall: datetime, start_mono: float) -> None:
        """Start a new, empty window at these times."""
        self._n = 0
        self.errors = 0
        self.dropped = 0
        self.start_wall = start_wall
        self.start_mono = start_mono

    def _grow(self) -> None:
        cap = self._latency.shape[0] * 2
        self._latency = np.resize(self._latency, cap)
        self._conf = np.resize(self._conf, cap)
        self._label = np.resize(self._label, cap)
        self._dims = np.resize(self._dims, (cap, 2))
        self._has_dims = np.resize(self._has_dims, cap)
        self._finite = np.resize(self._finite, cap)

    def add(
        self,
        label_index: int,
        confidence: float,
        latency_s: float,
        finite: bool,
        dimensions_mm: tuple[float, float] | None,
    ) -> None:
        """Record one decision (the hot path: index writes only)."""
        i = self._n
        if i == self._latency.shape[0]:
            self._grow()
        self._latency[i] = latency_s
        self._conf[i] = confidence
        self._label[i] = label_index
        self._finite[i] = finite
        if dimensions_mm is None:
            self._has_dims[i] = False
        else:
            self._has_dims[i] = True
            self._dims[i, 0] = dimensions_mm[0]
            self._dims[i, 1] = dimensions_mm[1]
        self._n = i + 1

    def add_error(self) -> None:
        """A frame the model could not process."""
        self.errors += 1

    def add_dropped(self, n: int) -> None:
        """Frames the capture queue dropped."""
        self.dropped += n

    def summary(self, end_mono: float) -> WindowStats:
        """The stats of the window so far, ending at ``end_mono`` (monotonic seconds)."""
        n = self._n
        duration = max(end_mono - self.start_mono, 1e-9)
        finite = self._finite[:n]
        conf = self._conf[:n][finite]
        lat_ms = self._latency[:n] * 1000.0
        labels = self._label[:n][finite]
        hist: dict[str, int] = {}
        if labels.size:
            counts = np.bincount(labels, minlength=len(self.labels))
            for idx in np.nonzero(counts)[0]:
                name = self.labels[idx] if idx < len(self.labels) else str(int(idx))
                hist[name] = int(counts[idx])
        dims: DimensionSummary | None = None
        mask = self._has_dims[:n] & finite
        if mask.any():
            d = self._dims[:n][mask]
            dims = DimensionSummary(
                width_mm_mean=float(d[:, 0].mean()),
                height_mm_mean=float(d[:, 1].mean()),
                width_mm_std=float(d[:, 0].std()),
                height_mm_std=float(d[:, 1].std()),
            )
        if conf.size:
            p05, p50 = np.percentile(conf, [5, 50])
            conf_mean, conf_p05, conf_p50 = float(conf.mean()), float(p05), float(p50)
            low = int(np.count_nonzero(conf < self.low_confidence))
        else:
            conf_mean = conf_p05 = conf_p50 = 0.0
            low = 0
        if n:
            l50, l99 = np.percentile(lat_ms, [50, 99])
            lat_p50, lat_p99 = float(l50), float(l99)
        else:
            lat_p50 = lat_p99 = 0.0
        return WindowStats(
            window_start=self.start_wall or datetime.fromtimestamp(0),
            window_s=duration,
            frames=n,
            dropped=self.dropped,
            errors=self.errors,
            nonfinite=int(n - np.count_nonzero(finite)),
            fps=n / duration,
            latency_ms_p50=lat_p50,
            latency_ms_p99=lat_p99,
            confidence_mean=conf_mean,
            confidence_p05=conf_p05,
            confidence_p50=conf_p50,
            low_confidence=low,
            scored=int(conf.size),
            class_histogram=hist,
            dimensions=dims,
            model=self.model,
        )

    def close(self, end_mono: float, next_start_wall: datetime) -> WindowStats:
        """Summarise this window and start the next one at ``end_mono``."""
        stats = self.summary(end_mono)
        self.reset(next_start_wall, end_mono)
        return stats
