"""Labelled frames from the simulator, and the preprocessed tensors the model learns from.

Frame ``i`` of a (types, seed) stream is rendered from its own generator,
``numpy.random.default_rng([seed, i])``, with package type ``types[i % n]``:
any frame can be rendered on its own, in any process, and a stream is the same
whatever the number of workers. Frames go through :func:`sim.render.camera_encode`
(the JPEG artefacts a recording's frames carry) and then the agent's own
:class:`edge_agent.preprocess.Preprocessor`, so training sees exactly what the
robot will feed the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.manifest import InputSpec
from edge_agent.preprocess import Preprocessor
from lineside_common.atomic import atomic_open

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("runs/cache/models")
FPS = 30.0


@dataclass(frozen=True)
class LabelledFrame:
    """One camera frame (BGR uint8, as decoded from the camera's JPEG) and its ground truth."""

    image: np.ndarray
    package: str
    dims_mm: tuple[float, float]
    partial: bool


def render_one(types: Sequence[str], seed: int, index: int) -> LabelledFrame:
    """Frame ``index`` of the stream (types, seed), camera-encoded."""
    from sim.render import RenderConfig, camera_encode, render_frame

    config = RenderConfig()
    rng = np.random.default_rng([seed, index])
    img, label = render_frame(types[index % len(types)], rng, config, frame=index, t_s=index / FPS)
    return LabelledFrame(
        camera_encode(img, config), label.package, (label.width_mm, label.height_mm), label.partial
    )


def rendered_frames(types: Sequence[str], seed: int, count: int, start: int = 0) -> Iterator[LabelledFrame]:
    """``count`` frames of the stream (types, seed), rendered lazily in this process."""
    for i in range(start, start + count):
        yield render_one(types, seed, i)


def recorded_frames(directory: Path | str) -> Iterator[LabelledFrame]:
    """Every frame of a recording written by ``edge-sim record``, with its label."""
    from sim.recording import load_recording

    with load_recording(directory) as rec:
        for image, label in zip(rec.frames(), rec.labels, strict=True):
            yield LabelledFrame(image, label.package, (label.width_mm, label.height_mm), label.partial)


@dataclass(frozen=True)
class Dataset:
    """Preprocessed model inputs and targets."""

    x: np.ndarray  # (N, C, H, W) float32, exactly the agent's preprocessing
    y: np.ndarray  # (N,) int64 index into labels
    dims_mm: np.ndarray  # (N, 2) float32 true (width, height)

    def __len__(self) -> int:
        return int(self.y.shape[0])


_worker_state: dict[str, object] = {}


def _init_worker(spec_json: str, types: list[str], seed: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import cv2

    cv2.setNumThreads(1)
    _worker_state["pre"] = Preprocessor(InputSpec.model_validate_json(spec_json))
    _worker_state["types"] = types
    _worker_state["seed"] = seed


def _work(index: int) -> tuple[np.ndarray, str, tuple[float, float]]:
    pre = _worker_state["pre"]
    assert isinstance(pre, Preprocessor)
    types = _worker_state["types"]
    assert isinstance(types, list)
    seed = _worker_state["seed"]
    assert isinstance(seed, int)
    f = render_one(types, seed, index)
    return pre(f.image)[0], f.package, f.dims_mm


def build_dataset(
    spec: InputSpec,
    labels: Sequence[str],
    seed: int,
    frames_per_type: int,
    *,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> Dataset:
    """Render ``frames_per_type * len(labels)`` frames (balanced) and preprocess them in ``workers`` processes."""
    n = frames_per_type * len(labels)
    index_of = {label: i for i, label in enumerate(labels)}
    x = np.empty((n, *spec.shape[1:]), dtype=np.float32)
    y = np.empty(n, dtype=np.int64)
    dims = np.empty((n, 2), dtype=np.float32)
    initargs = (spec.model_dump_json(), list(labels), seed)

    def fill(results: Iterator[tuple[np.ndarray, str, tuple[float, float]]]) -> None:
        for i, (xi, package, d) in enumerate(results):
            x[i], y[i], dims[i] = xi, index_of[package], d
            if progress is not None:
                progress(1)

    if workers <= 1:
        _init_worker(*initargs)
        fill(_work(i) for i in range(n))
    else:
        ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=initargs) as pool:
            fill(pool.imap(_work, range(n), chunksize=32))
    return Dataset(x, y, dims)


def cache_key(spec: InputSpec, labels: Sequence[str], seed: int, frames_per_type: int) -> str:
    """What a cached dataset depends on (the renderer's source too: a changed simulator means new frames)."""
    import sim.packages
    import sim.render

    h = hashlib.sha256()
    h.update(json.dumps([spec.model_dump(mode="json"), list(labels), seed, frames_per_type]).encode())
    for mod in (sim.render, sim.packages):
        if mod.__file__:
            h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:24]


def cached_dataset(
    spec: InputSpec,
    labels: Sequence[str],
    seed: int,
    frames_per_type: int,
    *,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> Dataset:
    """:func:`build_dataset`, memoised on disk under ``cache_dir`` (gitignored) by :func:`cache_key`."""
    if cache_dir is None:
        return build_dataset(spec, labels, seed, frames_per_type, workers=workers, progress=progress)
    path = Path(cache_dir) / f"{cache_key(spec, labels, seed, frames_per_type)}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                log.info("using cached dataset %s", path)
                if progress is not None:
                    progress(int(z["y"].shape[0]))
                return Dataset(z["x"], z["y"], z["dims_mm"])
        except (OSError, KeyError, ValueError) as exc:
            log.warning("ignoring unreadable dataset cache %s: %s", path, exc)
    ds = build_dataset(spec, labels, seed, frames_per_type, workers=workers, progress=progress)
    with atomic_open(path, mode=0o600) as f:  # 0600 as ever (it was a mkstemp file)
        np.savez(f, x=ds.x, y=ds.y, dims_mm=ds.dims_mm)
    return ds
