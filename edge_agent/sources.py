"""Frame sources: where the agent's frames come from.

A camera (device index), a video file, an RTSP/HTTP stream and a simulator
recording all implement the same small interface, so a replayed recording
*is* a camera as far as the agent is concerned.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2

from edge_agent.frames import Frame, FrameSource
from lineside_common.errors import SourceError, SourceLostError

log = logging.getLogger(__name__)


# --- Implementations -------------------------------------------------------------------------

_STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")


def _is_device(spec: str) -> bool:
    return spec.isdigit() or spec.startswith("/dev/video")


class CaptureSource:
    """A camera, video file or network stream through ``cv2.VideoCapture``.

    ``spec`` is a device index ("0"), a device path ("/dev/video0"), a video
    file, or an ``rtsp://`` / ``http(s)://`` URL. A live source (device or
    stream) that stops delivering raises SourceLostError; a file returns None
    at its end. ``reopen()`` tries to open it again (SourceError if it cannot).

    A video file can be played like a camera: ``realtime`` paces it at its own frame rate
    (or ``fps``) against absolute deadlines, ``loop`` starts it over at its end. Both are
    off by default and ignored for live sources, which the driver paces.
    ``capture_factory``, ``clock`` and ``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        spec: str,
        *,
        capture_factory: Callable[[str | int], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        realtime: bool = False,
        loop: bool = False,
        fps: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._spec = spec
        self._live = _is_device(spec) or spec.startswith(_STREAM_SCHEMES)
        self._factory = capture_factory or _default_capture
        self._clock = clock
        self._sleep = sleep
        self._realtime = realtime and not self._live
        self._loop = loop and not self._live
        self._fps_override = fps
        self._t0: float | None = None
        self._cap: Any = None
        self._index = 0
        self._open()

    def _open(self) -> None:
        target: str | int = int(self._spec) if self._spec.isdigit() else self._spec
        try:
            cap = self._factory(target)
            opened = bool(cap.isOpened())
        except cv2.error as exc:
            raise SourceError(f"cannot open {self.description}: {exc}") from exc
        if not opened:
            raise SourceError(f"cannot open {self.description}")
        self._cap = cap

    @property
    def live(self) -> bool:
        """True for devices and streams: a failure means the source was lost, not that it ended."""
        return self._live

    @property
    def fps(self) -> float | None:
        if self._fps_override is not None:
            return self._fps_override
        if self._cap is None:
            return None
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        return fps if fps > 0 else None

    def _pace(self) -> None:
        fps = self.fps
        if not self._realtime or fps is None:
            return
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        due = self._t0 + self._index / fps
        if due > now:
            self._sleep(due - now)

    @property
    def description(self) -> str:
        kind = "camera" if _is_device(self._spec) else "stream" if self._live else "video file"
        return f"{kind} {self._spec}"

    def read(self) -> Frame | None:
        """The next frame (blocks in the driver); None at a file's end; SourceLostError for live sources."""
        if self._cap is None:
            raise SourceLostError(f"{self.description} is closed")
        self._pace()
        ok, image = self._grab()
        if (not ok or image is None) and self._loop:
            # Open the file again rather than seek: not every container seeks back exactly.
            self.close()
            self._open()
            ok, image = self._grab()
        if not ok or image is None:
            if self._live:
                raise SourceLostError(f"{self.description} stopped delivering frames")
            return None
        frame = Frame(index=self._index, captured_at=self._clock(), image=image)
        self._index += 1
        return frame

    def _grab(self) -> tuple[bool, Any]:
        try:
            ok, image = self._cap.read()
        except cv2.error as exc:
            log.warning("read from %s failed: %s", self.description, exc)
            return False, None
        return bool(ok), image

    def reopen(self) -> None:
        """Close and open again; the frame index continues (it counts delivered frames)."""
        self.close()
        self._open()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _default_capture(target: str | int) -> Any:
    return cv2.VideoCapture(target)


def open_source(
    spec: str, *, realtime: bool = True, loop: bool = False, fps: float | None = None
) -> FrameSource:
    """Open a frame source by its spec.

    A directory holding ``meta.json`` is a simulator recording; any other directory
    a folder of images (sorted by name, ``fps`` or 10 per second); a digit or
    ``/dev/video*`` a camera; ``rtsp://``/``http(s)://`` a stream; an existing
    file a video file. ``realtime``, ``loop`` and ``fps`` (overriding the recorded
    rate) apply to recordings, image folders and video files. A live source is returned bare:
    the agent's capture thread (edge_agent/capture.py) reconnects it and reports the outage.
    SourceError ("no such file or directory: ...") for a missing path.
    """
    spec = spec.strip()
    if not spec:
        raise SourceError("empty frame source")
    if _is_device(spec) or spec.startswith(_STREAM_SCHEMES):
        if spec.startswith("/dev/video") and not os.path.exists(spec):
            raise SourceError(f"no such file or directory: {spec}")
        return CaptureSource(spec)
    path = Path(spec)
    if not path.exists():
        raise SourceError(f"no such file or directory: {spec}")
    if path.is_dir():
        from edge_agent.recording_source import META_FILE, RecordingSource

        if (path / META_FILE).is_file():
            return RecordingSource(path, realtime=realtime, loop=loop, fps=fps)
        from edge_agent.folder_source import ImageFolderSource

        return ImageFolderSource(path, fps=fps, realtime=realtime, loop=loop)
    return CaptureSource(spec, realtime=realtime, loop=loop, fps=fps)
