"""A folder of images as a camera: sorted, paced, looped.

For users who have still images rather than a video: every image file in the folder (not
its subfolders, hidden files skipped) in sorted name order, decoded as the camera's frames
are (BGR uint8), delivered at ``fps`` against absolute deadlines (a slow consumer does not
make the schedule drift), from the start again at the end when ``loop`` is on.
The folder is listed again at every pass, so images added or removed between passes count.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from edge_agent.frames import Frame, Pacer
from lineside_common.errors import SourceError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"})
DEFAULT_FPS = 10.0


def folder_images(directory: Path) -> list[Path]:
    """The image files directly in ``directory``, sorted by name; SourceError if there are none."""
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        raise SourceError(f"cannot list {directory}: {exc.strerror or exc}") from exc
    images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    if not images:
        raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {directory}")
    return images


class ImageFolderSource:
    """Plays the images of a folder as frames. ``Frame.index`` counts delivered frames.

    ``realtime=False`` delivers as fast as the consumer reads. An image that does not
    decode raises SourceError naming it. ``clock``/``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        fps: float | None = None,
        realtime: bool = True,
        loop: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if fps is not None and fps <= 0:
            raise SourceError(f"fps must be positive, got {fps}")
        self._dir = Path(directory)
        self._fps = fps or DEFAULT_FPS
        self._realtime, self._loop = realtime, loop
        self._clock = clock
        self._pacer = Pacer(self._fps, clock, sleep)
        self._images = folder_images(self._dir)
        self._pos = 0
        self._delivered = 0

    @property
    def fps(self) -> float | None:
        return self._fps

    @property
    def description(self) -> str:
        return f"image folder {self._dir} ({len(self._images)} images at {self._fps:g} fps)"

    def read(self) -> Frame | None:
        """The next image when it is due; None after the last one unless looping."""
        if self._pos >= len(self._images):
            if not self._loop:
                return None
            self._images = folder_images(self._dir)
            self._pos = 0
        if self._realtime:
            self._pacer.wait(self._delivered)
        path = self._images[self._pos]
        image = _decode(path)
        frame = Frame(index=self._delivered, captured_at=self._clock(), image=image)
        self._pos += 1
        self._delivered += 1
        return frame

    def reopen(self) -> None:
        """List the folder again and start from its first image with a fresh schedule."""
        self._images = folder_images(self._dir)
        self._pos = 0
        self._pacer.restart()
        self._delivered = 0

    def close(self) -> None:
        """Nothing is held open between frames."""


def _decode(path: Path) -> np.ndarray:
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise SourceError(f"{path} does not decode as an image")
    return image
