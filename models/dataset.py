"""Image folders as labelled frames: a folder-per-label dataset, or a flat folder of samples.

The layout is the one ``fleet samples export`` writes and most tools read::

    DIR/
      circle-80/  0001.jpg  0002.png ...
      square-80/  ...

A frame's label is the name of the folder right under ``DIR`` that holds it; files directly
in ``DIR`` have no label (``""``). Files are read in sorted path order, so a dataset is the
same sequence on every machine. Frames are decoded as the camera's are: BGR uint8.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lineside_common.errors import LocalError
from models.data import LabelledFrame

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"})
_NO_DIMS = (float("nan"), float("nan"))


class DatasetError(LocalError):
    """An image folder that cannot be used: missing, empty, or holding an unreadable image."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # missing | empty | unreadable


def image_files(directory: Path | str) -> list[Path]:
    """Every image file under ``directory`` (recursively, hidden entries skipped), sorted."""
    root = Path(directory)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a directory", reason="missing")
    files = [
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    if not files:
        raise DatasetError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}", reason="empty")
    return sorted(files)


def label_of(root: Path, path: Path) -> str:
    """The folder under ``root`` that holds ``path`` ("" for a file directly in ``root``)."""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else ""


def read_image(path: Path) -> np.ndarray:
    """A BGR uint8 (H, W, 3) frame; greyscale and alpha images are converted as a camera's would be."""
    import cv2

    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DatasetError(f"cannot decode {path} as an image", reason="unreadable")
    return image


def dataset_frames(directory: Path | str) -> Iterator[LabelledFrame]:
    """Every image under ``directory`` as a :class:`LabelledFrame` labelled by its folder."""
    root = Path(directory)
    for path in image_files(root):
        yield LabelledFrame(read_image(path), label_of(root, path), _NO_DIMS, False)


def dataset_labels(directory: Path | str) -> list[str]:
    """The label folders that hold at least one image, sorted."""
    root = Path(directory)
    return sorted({label for p in image_files(root) if (label := label_of(root, p))})
