"""Simulator recordings as a frame source: ``meta.json`` + ``frames.avi`` (MJPG in AVI).

The agent replays recordings through this module, the same code the simulator's
``edge-sim replay`` uses; ``edge_agent`` never imports ``sim``.

The AVI is read by walking its RIFF chunks ourselves and decoding each frame's
JPEG with ``cv2.imdecode``, not through ``cv2.VideoCapture``:

- every frame is an independent JPEG, so seeking is exact (an offset table);
- a truncated file (a crashed writer, a short copy) loses only its tail: we
  stop at the last complete chunk instead of needing the trailing ``idx1``
  index, which OpenCV's own MJPEG reader insists on;
- the decoded pixels are exactly ``cv2.imdecode`` of the camera's JPEG bytes,
  the same as the simulator's ``camera_encode`` (FFmpeg's MJPEG decoder
  upsamples chroma differently: up to ~20 levels off).

The file stays a standard AVI any player or ``cv2.VideoCapture`` opens.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.decode import COLOR, FLAGS, decode_jpeg
from edge_agent.frames import Frame, Pacer
from lineside_common.errors import SourceError

log = logging.getLogger(__name__)

FORMAT_NAME = "lineside-recording"
FORMAT_VERSION = 1
META_FILE = "meta.json"


class RecordingMeta(BaseModel):
    """``meta.json`` of a recording: what the video holds and how it was made."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    format: str = Field(description=f"always {FORMAT_NAME!r}")
    format_version: int = Field(ge=1)
    fps: float = Field(gt=0, description="recorded frame rate (packages per second)")
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    frame_count: int = Field(ge=0)
    video: str = Field(default="frames.avi", description="video file name inside the recording directory")
    codec: str = Field(default="MJPG")
    labels: str | None = Field(default="labels.jsonl", description="per-frame labels (JSON lines)")
    px_per_mm: float | None = Field(default=None, gt=0, description="calibrated scale at the belt surface")
    seed: int | None = None
    generator: str | None = None
    scenario: dict[str, Any] | None = None
    render: dict[str, Any] | None = None


def read_meta(directory: Path) -> RecordingMeta:
    """Read and check ``meta.json``; SourceError with one clear message otherwise."""
    if not directory.exists():
        raise SourceError(f"no such file or directory: {directory}")
    if not directory.is_dir():
        raise SourceError(f"not a recording directory: {directory}")
    path = directory / META_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        meta = RecordingMeta.model_validate(raw)
    except FileNotFoundError as exc:
        raise SourceError(f"not a recording (no {META_FILE}): {directory}") from exc
    except (OSError, ValueError, ValidationError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SourceError(f"corrupt {path}: {first}") from exc
    if meta.format != FORMAT_NAME:
        raise SourceError(f"{path}: format {meta.format!r} is not {FORMAT_NAME!r}")
    if meta.format_version > FORMAT_VERSION:
        raise SourceError(f"{path}: format version {meta.format_version} is newer than {FORMAT_VERSION}")
    if meta.codec != "MJPG":
        raise SourceError(f"{path}: codec {meta.codec!r} is not supported (only MJPG)")
    return meta


def scan_mjpeg_avi(f: BinaryIO) -> list[tuple[int, int]]:
    """(offset, size) of every complete video chunk in an AVI file, in order.

    Walks the RIFF structure (no reliance on the trailing ``idx1`` index), so a
    truncated file yields the frames before the cut. SourceError if it is not
    an AVI at all.
    """
    f.seek(0, os.SEEK_END)
    file_size = f.tell()
    f.seek(0)
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"AVI ":
        raise SourceError("not an AVI file (no RIFF/AVI header)")
    chunks: list[tuple[int, int]] = []

    def walk(start: int, end: int) -> None:
        pos = start
        while pos + 8 <= end:
            f.seek(pos)
            hdr = f.read(8)
            if len(hdr) < 8:
                return
            fourcc, size = hdr[:4], struct.unpack("<I", hdr[4:])[0]
            if fourcc in (b"LIST", b"RIFF"):
                list_type = f.read(4)
                # A writer that died before patching sizes leaves 0: scan to the end of the file.
                list_end = file_size if size == 0 else min(pos + 8 + size, file_size)
                if list_type in (b"movi", b"rec "):
                    walk(pos + 12, list_end)
                pos = pos + 8 + size + (size & 1) if size else file_size
                continue
            data_end = pos + 8 + size
            if data_end > end:
                return  # truncated chunk: keep what came before it
            if fourcc[2:] in (b"dc", b"db"):
                chunks.append((pos + 8, size))
            pos = data_end + (size & 1)

    walk(12, file_size)
    return chunks


class MjpegAviReader:
    """Random access to the frames of an MJPG AVI: ``len``, ``read(i)`` (BGR uint8)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._f: BinaryIO = open(path, "rb")  # noqa: SIM115 (held open for the reader's life)
        except FileNotFoundError as exc:
            raise SourceError(f"no such file or directory: {path}") from exc
        except OSError as exc:
            raise SourceError(f"cannot open {path}: {exc.strerror or exc}") from exc
        try:
            self._chunks = scan_mjpeg_avi(self._f)
        except SourceError as exc:
            self._f.close()
            raise SourceError(f"corrupt video {path}: {exc}") from exc

    def __len__(self) -> int:
        return len(self._chunks)

    def read_bytes(self, index: int) -> bytes:
        """The JPEG bytes of frame ``index``."""
        offset, size = self._chunks[index]
        self._f.seek(offset)
        return self._f.read(size)

    def read(self, index: int, decode: str = COLOR) -> np.ndarray:
        """Frame ``index`` decoded to BGR uint8 (or as ``decode`` says); SourceError if corrupt."""
        return self.decode_bytes(index, self.read_bytes(index), decode)

    def decode_bytes(self, index: int, data: bytes, decode: str = COLOR) -> np.ndarray:
        """Frame ``index``'s JPEG ``data`` decoded; SourceError if it does not decode."""
        image = decode_jpeg(data, decode)
        if image is None:
            raise SourceError(f"corrupt video {self.path}: frame {index} does not decode")
        return image

    def close(self) -> None:
        self._f.close()


def open_recording_video(
    directory: Path, meta: RecordingMeta | None = None
) -> tuple[RecordingMeta, MjpegAviReader]:
    """Meta and video reader of a recording; SourceError if the video is missing, corrupt or short."""
    meta = meta or read_meta(directory)
    reader = MjpegAviReader(directory / meta.video)
    if len(reader) != meta.frame_count:
        reader.close()
        raise SourceError(
            f"corrupt video {directory / meta.video}: {len(reader)} frames, meta.json says {meta.frame_count}"
        )
    if len(reader) and reader.read(0).shape[:2] != (meta.height, meta.width):
        reader.close()
        raise SourceError(f"corrupt video {directory / meta.video}: frame size differs from meta.json")
    return meta, reader


class RecordingSource:
    """Replays a recording as a camera.

    ``realtime``: frames are due at the recorded fps (or ``fps``), paced against
    absolute deadlines from the first read, so slow consumers do not make the
    schedule drift; a consumer that falls behind gets the next frame at once.
    ``realtime=False`` delivers as fast as possible. ``loop`` starts over at the
    end; ``Frame.index`` is the frame number within the recording.
    ``clock``/``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        realtime: bool = True,
        loop: bool = False,
        fps: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._dir = Path(directory)
        self.meta, self._reader = open_recording_video(self._dir)
        if fps is not None and fps <= 0:
            raise SourceError(f"fps must be positive, got {fps}")
        self._fps = fps or self.meta.fps
        self._realtime = realtime
        self._loop = loop
        self._clock = clock
        self._pacer = Pacer(self._fps, clock, sleep)
        self._pos = 0
        self._delivered = 0
        # How frames are decoded (edge_agent.decode); the agent sets it from what its model accepts.
        self.decode: str = COLOR

    def set_decode(self, decode: str) -> None:
        """Decode the next frames as ``decode`` (``color`` or a reduced greyscale path)."""
        if decode not in FLAGS:
            raise ValueError(f"unknown decode path {decode!r}")
        self.decode = decode

    @property
    def fps(self) -> float | None:
        return self._fps

    @property
    def description(self) -> str:
        return f"recording {self._dir} ({self.meta.frame_count} frames at {self._fps:g} fps)"

    def __len__(self) -> int:
        return self.meta.frame_count

    def read(self) -> Frame | None:
        """The next frame, when it is due; None at the end (unless looping)."""
        if self._pos >= self.meta.frame_count:
            if not self._loop or self.meta.frame_count == 0:
                return None
            # Re-open at every wrap (keeping the schedule): a recording that went away, as an
            # unplugged camera does, raises SourceError here within one pass instead of
            # replaying from a deleted file forever; the capture thread then reconnects.
            self._reader.close()
            self.meta, self._reader = open_recording_video(self._dir)
            self._pos = 0
        if self._realtime:
            self._pacer.wait(self._delivered)
        decode = self.decode  # one read: the agent may change it between frames
        if decode == COLOR:
            frame = Frame(index=self._pos, captured_at=self._clock(), image=self._reader.read(self._pos))
        else:
            data = self._reader.read_bytes(self._pos)
            image = self._reader.decode_bytes(self._pos, data, decode)
            frame = Frame(self._pos, self._clock(), image, decode=decode, encoded=data)
        self._pos += 1
        self._delivered += 1
        return frame

    def seek(self, index: int) -> None:
        """Continue from frame ``index`` (exact: every frame is a keyframe)."""
        if not 0 <= index <= self.meta.frame_count:
            raise SourceError(f"frame {index} out of range 0..{self.meta.frame_count}")
        self._pos = index

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame

    def reopen(self) -> None:
        """Start over from the first frame with a fresh schedule."""
        self._reader.close()
        self.meta, self._reader = open_recording_video(self._dir)
        self._pos = 0
        self._delivered = 0
        self._pacer.restart()

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> RecordingSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
