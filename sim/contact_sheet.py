"""A contact sheet: a grid of a recording's frames with each label's bbox and text drawn on."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from lineside_common.atomic import atomic_write_bytes
from sim.recording import Recording, RecordingError


def contact_sheet(
    recording: Recording, count: int = 16, *, columns: int | None = None, thumb_w: int = 320
) -> np.ndarray:
    """A BGR image of ``count`` frames spread evenly over the recording, annotated with their labels."""
    n = len(recording)
    if n == 0:
        raise RecordingError("the recording has no frames")
    count = max(1, min(count, n))
    indices = np.linspace(0, n - 1, count).round().astype(int)
    cols = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    scale = thumb_w / recording.meta.width
    th = round(recording.meta.height * scale)
    sheet = np.full((rows * th, cols * thumb_w, 3), 24, np.uint8)
    for k, i in enumerate(indices):
        img = recording.frame(int(i)).copy()
        label = recording.labels[int(i)]
        x, y, w, h = label.bbox
        colour = (0, 0, 255) if label.partial else (0, 255, 0)
        cv2.rectangle(img, (x, y), (x + w - 1, y + h - 1), colour, 2)
        text = f"#{label.frame} {label.package} {label.width_mm:.0f}x{label.height_mm:.0f}mm"
        if label.partial:
            text += " partial"
        for thickness, col in ((5, (0, 0, 0)), (2, (255, 255, 255))):
            cv2.putText(img, text, (8, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, col, thickness, cv2.LINE_AA)
        thumb = cv2.resize(img, (thumb_w, th), interpolation=cv2.INTER_AREA)
        r, c = divmod(k, cols)
        sheet[r * th : (r + 1) * th, c * thumb_w : (c + 1) * thumb_w] = thumb
    return sheet


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write an image atomically (temp file beside it, fsync, rename)."""
    p = Path(path)
    ext = p.suffix or ".png"
    ok, buf = cv2.imencode(ext, image)
    if not ok:
        raise RecordingError(f"cannot encode an image as {ext}")
    try:
        atomic_write_bytes(p, buf.tobytes())
    except OSError as exc:
        raise RecordingError(f"cannot write {p}: {exc.strerror or exc}") from exc
