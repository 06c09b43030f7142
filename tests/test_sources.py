"""Frame sources: recording replay pacing, capture over cv2, reconnect backoff, spec dispatch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.recording_source import RecordingSource
from edge_agent.sources import CaptureSource, open_source
from lineside_common.errors import SourceError, SourceLostError
from sim.recording import write_recording
from sim.render import RenderConfig
from sim.scenario import scenario_from_types

SMALL = RenderConfig(width=160, height=120, px_per_mm=0.4, rail_px=6, center_jitter_px=4)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("src") / "rec"
    write_recording(
        out, frames=30, seed=3, scenario=scenario_from_types("circle-80,triangle-100"), config=SMALL
    )
    return out


class FakeClock:
    """A monotonic clock that only moves when someone sleeps (or ``advance``s it)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_realtime_replay_paces_against_absolute_deadlines(recording: Path) -> None:
    clock = FakeClock()
    src = RecordingSource(recording, fps=10, clock=clock, sleep=clock.sleep)
    times = []
    for i in range(10):
        frame = src.read()
        assert frame is not None and frame.index == i
        times.append(frame.captured_at - 1000.0)
        clock.now += 0.03 if i != 4 else 0.25  # the consumer's work; one slow frame
    # Frame i is due at i/10 s; the frame after the slow one is late and comes at once,
    # and the schedule catches up instead of drifting.
    assert times[:5] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert times[5:] == pytest.approx([0.65, 0.68, 0.71, 0.8, 0.9])
    src.close()


def test_fast_replay_never_sleeps(recording: Path) -> None:
    clock = FakeClock()
    with RecordingSource(recording, realtime=False, clock=clock, sleep=clock.sleep) as src:
        assert sum(1 for _ in src) == 30
    assert clock.sleeps == []


def test_real_clock_30_frames_at_100_fps_take_at_least_029_s(recording: Path) -> None:
    src = RecordingSource(recording, fps=100)
    start = time.monotonic()
    n = sum(1 for _ in src)
    elapsed = time.monotonic() - start
    assert n == 30
    assert elapsed >= 0.29  # 29 intervals of 10 ms; no upper bound on wall time
    assert src.fps == 100


def test_loop_and_reopen(recording: Path) -> None:
    src = RecordingSource(recording, realtime=False, loop=True)
    assert [src.read().index for _ in range(35)][-6:] == [29, 0, 1, 2, 3, 4]  # type: ignore[union-attr]
    src.reopen()
    assert src.read().index == 0  # type: ignore[union-attr]
    src.seek(29)
    assert src.read().index == 29  # type: ignore[union-attr]
    with pytest.raises(SourceError):
        src.seek(31)
    src.close()


class FakeCapture:
    """Stands in for cv2.VideoCapture: ``frames`` reads succeed, then reads fail."""

    def __init__(self, frames: int, opened: bool = True) -> None:
        self.left = frames
        self.opened = opened
        self.released = False

    def isOpened(self) -> bool:
        return self.opened

    def read(self) -> tuple[bool, Any]:
        if self.left <= 0:
            return False, None
        self.left -= 1
        return True, np.zeros((4, 4, 3), np.uint8)

    def get(self, prop: int) -> float:
        return 25.0

    def release(self) -> None:
        self.released = True


def test_capture_source_live_loss_and_file_end() -> None:
    caps: list[FakeCapture] = []

    def factory(target: str | int) -> FakeCapture:
        caps.append(FakeCapture(2))
        return caps[-1]

    cam = CaptureSource("0", capture_factory=factory)
    assert cam.live and cam.fps == 25.0 and "camera 0" in cam.description
    assert [cam.read().index for _ in range(2)] == [0, 1]  # type: ignore[union-attr]
    with pytest.raises(SourceLostError):
        cam.read()
    cam.reopen()
    assert caps[0].released and len(caps) == 2
    assert cam.read().index == 2  # type: ignore[union-attr]

    video = CaptureSource("clip.mp4", capture_factory=factory)
    assert not video.live
    video.read(), video.read()
    assert video.read() is None

    with pytest.raises(SourceError, match="cannot open stream rtsp://"):
        CaptureSource("rtsp://127.0.0.1:9/x", capture_factory=lambda t: FakeCapture(0, opened=False))


def test_capture_source_reads_a_real_video_file(recording: Path) -> None:
    src = CaptureSource(str(recording / "frames.avi"))
    n = 0
    while (frame := src.read()) is not None:
        assert frame.image.shape == (120, 160, 3)
        n += 1
    assert n == 30
    src.close()


def test_open_source_dispatch(tmp_path: Path, recording: Path) -> None:
    rec = open_source(str(recording), realtime=False)
    assert isinstance(rec, RecordingSource) and rec.read().index == 0  # type: ignore[union-attr]
    rec.close()
    video = open_source(str(recording / "frames.avi"))
    assert isinstance(video, CaptureSource) and not video.live
    video.close()
    with pytest.raises(SourceError, match=r"no such file or directory: /nonexistent/x\.mp4"):
        open_source("/nonexistent/x.mp4")
    with pytest.raises(SourceError, match="no such file or directory: /dev/video987"):
        open_source("/dev/video987")
    # A directory without meta.json is a folder of images: this one holds none.
    with pytest.raises(SourceError, match="no images"):
        open_source(str(tmp_path))


def test_a_video_file_is_paced_at_its_own_rate_and_looped(recording: Path) -> None:
    """The recording's AVI played as a plain video file (cv2), as a user's own clip would be."""
    clock = FakeClock()
    src = CaptureSource(
        str(recording / "frames.avi"), realtime=True, loop=True, clock=clock, sleep=clock.sleep
    )
    fps = src.fps
    assert fps is not None and fps > 0
    frames = [src.read() for _ in range(45)]  # 30 frames in the file: one and a half passes
    assert all(f is not None for f in frames)
    assert [f.index for f in frames if f] == list(range(45))
    first, again = frames[0], frames[30]
    assert first is not None and again is not None and np.array_equal(first.image, again.image)
    # Frame i is due i/fps after the first: the clock moved only by the source's sleeps.
    assert clock.now - 1000.0 == pytest.approx(44 / fps)
    src.close()
    once = open_source(str(recording / "frames.avi"), realtime=False)
    assert sum(1 for _ in iter(once.read, None)) == 30  # no loop: the file ends
    once.close()
