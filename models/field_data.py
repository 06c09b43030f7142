"""Labelled field images as training data: read, identify (the export's dataset hash), mix with renders.

A labelled image folder (``DIR/LABEL/*.jpg``: ``fleet samples export --labelled`` or any
folder-per-label set, read by :mod:`models.dataset`) becomes a :class:`~models.data.Dataset` through
the agent's own :class:`~edge_agent.preprocess.Preprocessor`. Field frames have no measured
dimensions: their ``dims_mm`` are NaN and the training loss masks them.

A folder's identity is :func:`fleet_server.labels.dataset_hash` over its (image SHA-256, label)
pairs — the very hash ``fleet samples export --labelled`` writes into ``dataset.json`` — so a bundle's
lineage names the same dataset the fleet exported.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.manifest import InputSpec
from edge_agent.preprocess import Preprocessor
from fleet_server.labels import dataset_hash
from models.data import Dataset
from models.dataset import DatasetError, image_files, label_of, read_image


@dataclass(frozen=True)
class ImageSet:
    """A labelled image folder's files, labels and identity (no pixels read yet)."""

    root: Path
    files: tuple[Path, ...]
    labels: tuple[str, ...]  # per file; "" for a file directly in root
    image_sha256: tuple[str, ...]  # per file: SHA-256 of the file's bytes (the export's file name)

    @property
    def dataset_sha256(self) -> str:
        """The same hash ``fleet samples export --labelled`` writes (labelled files only)."""
        return dataset_hash((s, lab) for s, lab in zip(self.image_sha256, self.labels, strict=True) if lab)

    def label_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for label in self.labels:
            if label:
                out[label] = out.get(label, 0) + 1
        return dict(sorted(out.items()))

    def summary(self) -> dict[str, object]:
        return {
            "path": str(self.root),
            "dataset_sha256": self.dataset_sha256,
            "images": sum(1 for lab in self.labels if lab),
            "labels": self.label_counts(),
        }


def scan(directory: Path | str) -> ImageSet:
    """List and hash a labelled image folder (DatasetError ``missing`` / ``empty``)."""
    root = Path(directory)
    files = tuple(image_files(root))
    labels = tuple(label_of(root, p) for p in files)
    shas = tuple(hashlib.sha256(p.read_bytes()).hexdigest() for p in files)
    if not any(labels):
        raise DatasetError(f"{root} has no label folders (DIR/LABEL/*.jpg)", reason="empty")
    return ImageSet(root, files, labels, shas)


def load(images: ImageSet, spec: InputSpec, labels: Sequence[str]) -> Dataset:
    """Preprocess every labelled image whose label is in ``labels`` (others: DatasetError ``unknown_label``)."""
    index_of = {label: i for i, label in enumerate(labels)}
    unknown = sorted({lab for lab in images.labels if lab and lab not in index_of})
    if unknown:
        raise DatasetError(
            f"{images.root}: labels {unknown} are not among the model's labels", reason="unknown_label"
        )
    pre = Preprocessor(spec)
    keep = [i for i, lab in enumerate(images.labels) if lab]
    x = np.empty((len(keep), *spec.shape[1:]), dtype=np.float32)
    for j, i in enumerate(keep):
        x[j] = pre(read_image(images.files[i]))[0]
    y = np.array([index_of[images.labels[i]] for i in keep], dtype=np.int64)
    dims = np.full((len(keep), 2), np.nan, dtype=np.float32)
    return Dataset(x, y, dims)


def concat(parts: Sequence[Dataset]) -> Dataset:
    """One dataset from several (same input shape)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        raise ValueError("no frames to train on")
    return Dataset(
        np.concatenate([p.x for p in parts]),
        np.concatenate([p.y for p in parts]),
        np.concatenate([p.dims_mm for p in parts]),
    )


def renders_per_label(field_frames: int, n_labels: int, render_share: float | None, default: int) -> int:
    """Rendered frames per label so that renders are ``render_share`` of the training frames.

    ``render_share`` None (or no field frames): ``default`` (``train_frames_per_type``); 0: none.
    """
    if render_share is None or field_frames == 0:
        return default
    if render_share <= 0.0:
        return 0
    total = field_frames * render_share / (1.0 - render_share)
    return max(1, math.ceil(total / n_labels))


def render_image_folder(
    out: Path | str,
    types: Sequence[str],
    seed: int,
    frames_per_type: int,
    *,
    relabel: dict[str, str] | None = None,
) -> ImageSet:
    """Write simulator frames as a labelled image folder (``OUT/LABEL/NNNNN.png``), for tests and demos.

    ``relabel`` files a type's frames under another label (a mislabelling, on purpose). Frame ``i``
    is :func:`models.data.render_one` ``(types, seed, i)``: the same folder on every machine.
    """
    import cv2

    from models.data import render_one

    root = Path(out)
    for i in range(frames_per_type * len(types)):
        frame = render_one(types, seed, i)
        label = (relabel or {}).get(frame.package, frame.package)
        (root / label).mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(root / label / f"{seed}-{i:05d}.png"), frame.image):
            raise OSError(f"cannot write {root / label}")
    return scan(root)
