"""Recordings: a directory with ``meta.json``, ``frames.avi`` and ``labels.jsonl``.

Why MJPG in AVI: every frame is an independent JPEG, so seeking is exact and
a truncated file loses only its tail (no group of pictures to lose); OpenCV
reads and writes it everywhere with no extra codecs; and the JPEG artefacts
are the camera's own, since industrial and USB cameras send MJPG. We write
the AVI container ourselves (a few RIFF chunks) around ``cv2.imencode``'s
JPEG bytes: OpenCV's FFmpeg writer ignores the quality setting, and this way
a frame decodes to exactly :func:`sim.render.camera_encode` of the rendered
image. The reader is ``edge_agent.recording_source`` (the agent's own code
path); see there why it walks the chunks rather than using VideoCapture.

``labels.jsonl`` holds one :class:`~sim.render.FrameLabel` per line.
A recording is written into a temporary directory beside the target and
renamed into place: there is never a half-written recording at ``out``.
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np

from edge_agent.recording_source import (
    FORMAT_NAME,
    FORMAT_VERSION,
    META_FILE,
    MjpegAviReader,
    RecordingMeta,
    open_recording_video,
    read_meta,
)
from lineside_common.atomic import replace_dir_durably
from lineside_common.errors import SourceError
from sim.render import FrameLabel, RenderConfig, encode_jpeg, render_frame
from sim.scenario import Scenario

GENERATOR = "lineside-sim 1"  # bump when the renderer's output for a given seed changes
VIDEO_FILE = "frames.avi"
LABELS_FILE = "labels.jsonl"


class RecordingError(SourceError):
    """A recording cannot be written or read (missing, corrupt, inconsistent)."""


class MjpegAviWriter:
    """Writes an MJPG AVI (RIFF ``AVI `` with ``idx1``) from ready-made JPEG bytes."""

    def __init__(self, f: BinaryIO, width: int, height: int, fps: float) -> None:
        self._f = f
        self._w, self._h = width, height
        rate = Fraction(fps).limit_denominator(1001)
        self._rate, self._scale = rate.numerator, rate.denominator
        self._us_per_frame = round(1e6 / fps)
        self._index: list[tuple[int, int]] = []
        self._max_size = 0
        f.write(b"RIFF\0\0\0\0AVI ")
        hdrl = self._hdrl()
        f.write(b"LIST" + struct.pack("<I", len(hdrl) + 4) + b"hdrl" + hdrl)
        self._movi = f.tell()
        f.write(b"LIST\0\0\0\0movi")

    def _hdrl(self) -> bytes:
        n, w, h, mx = len(self._index), self._w, self._h, self._max_size
        avih = struct.pack("<10I4I", self._us_per_frame, 0, 0, 0x10, n, 0, 1, mx, w, h, 0, 0, 0, 0)
        strh = struct.pack(
            "<4s4sIHHIIIIIIIIhhhh", b"vids", b"MJPG", 0, 0, 0, 0, self._scale, self._rate, 0, n, mx,
            0xFFFFFFFF, 0, 0, 0, w, h,
        )  # fmt: skip
        strf = struct.pack("<IiiHH4sIiiII", 40, w, h, 1, 24, b"MJPG", w * h * 3, 0, 0, 0, 0)
        strl = _chunk(b"strh", strh) + _chunk(b"strf", strf)
        return _chunk(b"avih", avih) + b"LIST" + struct.pack("<I", len(strl) + 4) + b"strl" + strl

    def write(self, jpeg: bytes) -> None:
        """Append one frame."""
        offset = self._f.tell() - (self._movi + 8)
        self._f.write(_chunk(b"00dc", jpeg))
        self._index.append((offset, len(jpeg)))
        self._max_size = max(self._max_size, len(jpeg))

    def finish(self) -> None:
        """Write the index and patch the sizes and frame counts in the headers."""
        f = self._f
        end = f.tell()
        idx = b"".join(b"00dc" + struct.pack("<III", 0x10, off, size) for off, size in self._index)
        f.write(_chunk(b"idx1", idx))
        total = f.tell()
        f.seek(4)
        f.write(struct.pack("<I", total - 8))
        f.seek(24)
        f.write(self._hdrl())
        f.seek(self._movi + 4)
        f.write(struct.pack("<I", end - self._movi - 8))
        f.seek(total)


def _chunk(fourcc: bytes, data: bytes) -> bytes:
    pad = b"\0" if len(data) % 2 else b""
    return fourcc + struct.pack("<I", len(data)) + data + pad


def write_recording(
    out: str | Path,
    *,
    frames: int,
    seed: int,
    scenario: Scenario,
    fps: float = 10.0,
    config: RenderConfig | None = None,
    fit: bool = False,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> RecordingMeta:
    """Render ``frames`` frames of ``scenario`` into a recording at ``out``; returns its meta.

    Same arguments, same bytes in ``labels.jsonl`` and the same decoded frames.
    ``progress(i)`` is called after each frame. RecordingError if ``out``
    exists (unless ``overwrite``) or cannot be written.
    """
    cfg = config or RenderConfig()
    target = Path(out)
    if frames < 1:
        raise RecordingError("a recording needs at least one frame")
    if fps <= 0:
        raise RecordingError(f"fps must be positive, got {fps}")
    if target.exists() and not overwrite:
        raise RecordingError(f"{target} already exists (use --force to replace it)")
    parent = target.parent.resolve()
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
        tmp.chmod(0o755)  # mkdtemp makes it 0700; a recording is shared data
    except OSError as exc:
        raise RecordingError(f"cannot write into {parent}: {exc.strerror or exc}") from exc
    try:
        sequence = scenario.sequence(frames, fps, seed, fit=fit)
        rng = np.random.default_rng([seed, 0x7E4])
        with open(tmp / VIDEO_FILE, "wb") as vf, open(tmp / LABELS_FILE, "w", encoding="utf-8") as lf:
            writer = MjpegAviWriter(vf, cfg.width, cfg.height, fps)
            for i, (t_s, pkg) in enumerate(sequence):
                image, label = render_frame(pkg, rng, cfg, frame=i, t_s=t_s)
                writer.write(encode_jpeg(image, cfg.jpeg_quality).tobytes())
                lf.write(json.dumps(label.to_json(), separators=(",", ":")) + "\n")
                if progress is not None:
                    progress(i + 1)
            writer.finish()
        meta = RecordingMeta(
            format=FORMAT_NAME,
            format_version=FORMAT_VERSION,
            fps=fps,
            width=cfg.width,
            height=cfg.height,
            frame_count=frames,
            video=VIDEO_FILE,
            codec="MJPG",
            labels=LABELS_FILE,
            px_per_mm=cfg.px_per_mm,
            seed=seed,
            generator=GENERATOR,
            scenario=scenario.model_dump(mode="json"),
            render=cfg.model_dump(mode="json") | {"fit_scenario": fit},
        )
        (tmp / META_FILE).write_text(meta.model_dump_json(indent=2) + "\n", encoding="utf-8")
        replace_dir_durably(tmp, target)  # fsyncs the three files first; an old one is moved aside
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


@dataclass
class Recording:
    """A recording on disk: its meta, its labels, and its frames on demand."""

    path: Path
    meta: RecordingMeta
    labels: list[FrameLabel]
    _reader: MjpegAviReader = field(repr=False)

    def __len__(self) -> int:
        return self.meta.frame_count

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` (BGR uint8), decoded exactly as the camera's JPEG."""
        return self._reader.read(index)

    def frames(self) -> Iterator[np.ndarray]:
        """Every frame in order."""
        for i in range(len(self)):
            yield self._reader.read(i)

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_labels(path: Path, expected: int) -> list[FrameLabel]:
    """Parse ``labels.jsonl``; RecordingError naming the line on a truncated or corrupt file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise RecordingError(f"missing labels file {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordingError(f"cannot read {path}: {exc}") from exc
    labels: list[FrameLabel] = []
    for n, line in enumerate(lines, start=1):
        try:
            label = FrameLabel.from_json(json.loads(line))
        except (ValueError, KeyError, TypeError) as exc:
            raise RecordingError(f"corrupt {path}: line {n} is not a frame label (truncated?)") from exc
        if label.frame != n - 1:
            raise RecordingError(f"corrupt {path}: line {n} labels frame {label.frame}")
        labels.append(label)
    if len(labels) != expected:
        raise RecordingError(f"corrupt {path}: {len(labels)} labels, meta.json says {expected} frames")
    return labels


def load_recording(directory: str | Path) -> Recording:
    """Open a recording; RecordingError/SourceError with one clear message if anything is off."""
    path = Path(directory)
    meta = read_meta(path)
    meta, reader = open_recording_video(path, meta)
    try:
        labels = read_labels(path / (meta.labels or LABELS_FILE), meta.frame_count)
    except BaseException:
        reader.close()
        raise
    return Recording(path=path, meta=meta, labels=labels, _reader=reader)
