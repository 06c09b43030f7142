"""TelemetryWindow: pure aggregation of decisions into one window's stats."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from edge_agent.messages import ModelRef
from edge_agent.telemetry import TelemetryWindow

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LABELS = ["circle", "square", "triangle"]


def _window(**kw: object) -> TelemetryWindow:
    w = TelemetryWindow(LABELS, low_confidence=0.7, **kw)  # type: ignore[arg-type]
    w.reset(T0, 100.0)
    return w


def test_empty_window_has_zero_stats() -> None:
    s = _window().close(105.0, T0)
    assert (s.frames, s.fps, s.confidence_p50, s.low_confidence, s.class_histogram) == (0, 0.0, 0.0, 0, {})
    assert s.window_s == pytest.approx(5.0)
    assert s.dimensions is None


def test_stats_match_numpy_on_random_decisions() -> None:
    rng = np.random.default_rng(1)
    n = 3000  # beyond the initial capacity: the buffers grow
    labels = rng.integers(0, 3, n)
    conf = rng.uniform(0.3, 1.0, n)
    lat = rng.uniform(0.001, 0.004, n)
    dims = rng.normal(80, 2, (n, 2))
    w = _window(capacity=64, model=ModelRef(name="m", version="1.0.0"))
    for i in range(n):
        w.add(int(labels[i]), float(conf[i]), float(lat[i]), True, (float(dims[i, 0]), float(dims[i, 1])))
    w.add_error()
    w.add_dropped(7)
    s = w.close(110.0, T0)
    assert s.frames == n and s.errors == 1 and s.dropped == 7 and s.nonfinite == 0
    assert s.fps == pytest.approx(n / 10.0)
    assert s.class_histogram == {LABELS[k]: int((labels == k).sum()) for k in range(3)}
    assert s.confidence_mean == pytest.approx(conf.mean())
    assert s.confidence_p50 == pytest.approx(np.percentile(conf, 50))
    assert s.confidence_p05 == pytest.approx(np.percentile(conf, 5))
    assert s.low_confidence == int((conf < 0.7).sum())
    assert s.low_confidence_rate == pytest.approx((conf < 0.7).mean())
    assert s.latency_ms_p99 == pytest.approx(np.percentile(lat * 1000, 99))
    assert s.dimensions is not None
    assert s.dimensions.width_mm_mean == pytest.approx(dims[:, 0].mean())
    assert s.dimensions.height_mm_std == pytest.approx(dims[:, 1].std())
    t = s.to_telemetry("dev-1", 42, spool_dropped=3)
    assert t.seq == 42 and t.spool_dropped == 3 and t.model is not None and t.model.name == "m"


def test_nonfinite_frames_are_counted_but_not_scored() -> None:
    w = _window()
    w.add(0, 0.9, 0.001, True, None)
    w.add(1, 0.0, 0.001, False, None)
    s = w.close(101.0, T0)
    assert s.frames == 2 and s.nonfinite == 1 and s.scored == 1
    assert s.class_histogram == {"circle": 1}
    assert s.confidence_p50 == pytest.approx(0.9)


def test_close_starts_a_fresh_window() -> None:
    w = _window()
    w.add(2, 0.5, 0.001, True, None)
    w.add_dropped(2)
    w.close(101.0, T0)
    s = w.close(103.0, T0)
    assert (s.frames, s.dropped, s.errors) == (0, 0, 0)
    assert s.window_s == pytest.approx(2.0)
