"""A folder of images as a camera: sorted, paced against absolute deadlines, looped."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.folder_source import ImageFolderSource
from edge_agent.sources import open_source
from lineside_common.errors import SourceError


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(round(s, 6))
        self.t += s


def _folder(tmp_path: Path, values: list[int]) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    # Written out of order: the source sorts by name.
    for i, v in reversed(list(enumerate(values))):
        assert cv2.imwrite(str(d / f"{i:03d}.png"), np.full((6, 8, 3), v, dtype=np.uint8))
    (d / "notes.txt").write_text("not an image")
    (d / ".hidden.png").write_bytes(b"")
    return d


def test_sorted_paced_and_looped(tmp_path: Path) -> None:
    clock = FakeClock()
    src = ImageFolderSource(_folder(tmp_path, [10, 20, 30]), fps=4, loop=True, clock=clock, sleep=clock.sleep)
    frames = [src.read() for _ in range(7)]
    assert [int(f.image[0, 0, 0]) for f in frames if f] == [10, 20, 30, 10, 20, 30, 10]
    assert [f.index for f in frames if f] == list(range(7))
    assert clock.sleeps == [0.25] * 6  # frame 0 at once, then one every 1/fps
    clock.t += 1.0  # a consumer that fell behind gets the next frames at once
    src.read()
    src.read()
    assert clock.sleeps == [0.25] * 6


def test_ends_without_loop_and_as_fast_as_read_without_realtime(tmp_path: Path) -> None:
    clock = FakeClock()
    src = ImageFolderSource(_folder(tmp_path, [1, 2]), realtime=False, clock=clock, sleep=clock.sleep)
    assert src.read() is not None and src.read() is not None
    assert src.read() is None and clock.sleeps == []


def test_open_source_picks_the_folder_and_refuses_an_empty_one(tmp_path: Path) -> None:
    src = open_source(str(_folder(tmp_path, [5])), fps=25)
    assert isinstance(src, ImageFolderSource) and src.fps == 25
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no images"):
        open_source(str(empty))


def test_an_image_that_does_not_decode_is_named(tmp_path: Path) -> None:
    d = _folder(tmp_path, [5])
    (d / "999.jpg").write_bytes(b"garbage")
    src = ImageFolderSource(d, realtime=False)
    src.read()
    with pytest.raises(SourceError, match=r"999\.jpg"):
        src.read()


def test_the_pacer_delivers_frame_n_at_n_over_fps_and_restarts() -> None:
    from edge_agent.frames import Pacer

    now = [100.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(round(s, 6))
        now[0] += s

    pacer = Pacer(10.0, lambda: now[0], sleep)
    pacer.wait(0)  # the first frame sets the timeline: no wait
    pacer.wait(1)  # due 0.1 s after the first
    now[0] += 0.5  # late: a frame already due is not delayed
    pacer.wait(2)
    pacer.restart()
    pacer.wait(0)
    pacer.wait(1)
    assert slept == [0.1, 0.1]
