"""Package types on the conveyor: a shape and a nominal size, e.g. ``circle-80``.

A package type's label (``shape-size``) is the class name the classifier
predicts. Every shape is an outline in millimetres centred on its bounding
box's centre, so the renderer can scale, rotate and place any of them the same
way. New shapes are added with :func:`register_shape`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# An outline function: nominal size in mm -> (N, 2) float array of (x, y) points in mm.
OutlineFn = Callable[[float], np.ndarray]

MIN_SIZE_MM = 10
MAX_SIZE_MM = 400

_LABEL_RE = re.compile(r"^([a-z][a-z0-9_]*)-([0-9]+)$")


@dataclass(frozen=True, slots=True)
class ShapeSpec:
    """A registered shape: how to draw it, and its bounding box per mm of nominal size."""

    name: str
    outline: OutlineFn
    aspect: tuple[float, float]  # (width, height) of the bounding box per 1 mm of nominal size


def _centred(points: np.ndarray) -> np.ndarray:
    """Shift points so their bounding box is centred on (0, 0)."""
    lo = points.min(axis=0)
    hi = points.max(axis=0)
    return points - (lo + hi) / 2.0


def _regular_polygon(n: int, radius: float, phase: float) -> np.ndarray:
    angles = phase + 2.0 * np.pi * np.arange(n) / n
    return _centred(np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1))


def _circle(size_mm: float) -> np.ndarray:
    # 96 vertices: at 1.6 px/mm even a 160 mm circle deviates < 0.2 px from the true circle.
    return _regular_polygon(96, size_mm / 2.0, 0.0)


def _square(size_mm: float) -> np.ndarray:
    h = size_mm / 2.0
    return np.array([[-h, -h], [h, -h], [h, h], [-h, h]], dtype=np.float64)


def _rectangle(size_mm: float) -> np.ndarray:
    # Fixed 3:2 aspect: the nominal size is the long side.
    w, h = size_mm / 2.0, size_mm / 3.0
    return np.array([[-w, -h], [w, -h], [w, h], [-w, h]], dtype=np.float64)


def _triangle(size_mm: float) -> np.ndarray:
    # Equilateral, side = nominal size, point up (image y grows downwards).
    height = size_mm * math.sqrt(3.0) / 2.0
    pts = np.array([[0.0, -height], [size_mm / 2.0, 0.0], [-size_mm / 2.0, 0.0]])
    return _centred(pts)


def _hexagon(size_mm: float) -> np.ndarray:
    # Nominal size = across corners; corners left and right.
    return _regular_polygon(6, size_mm / 2.0, 0.0)


SHAPES: dict[str, ShapeSpec] = {}


def register_shape(name: str, outline: OutlineFn, aspect: tuple[float, float] | None = None) -> ShapeSpec:
    """Add a shape. ``aspect`` is the bounding box per mm of nominal size; measured from the outline if None."""
    if not _LABEL_RE.match(f"{name}-1"):
        raise ValueError(f"invalid shape name {name!r}: lowercase letters, digits and '_' only")
    if aspect is None:
        pts = np.asarray(outline(100.0), dtype=np.float64)
        extent = pts.max(axis=0) - pts.min(axis=0)
        aspect = (float(extent[0]) / 100.0, float(extent[1]) / 100.0)
    spec = ShapeSpec(name=name, outline=outline, aspect=aspect)
    SHAPES[name] = spec
    return spec


register_shape("circle", _circle, (1.0, 1.0))
register_shape("square", _square, (1.0, 1.0))
register_shape("rectangle", _rectangle, (1.0, 2.0 / 3.0))
register_shape("triangle", _triangle, (1.0, math.sqrt(3.0) / 2.0))
register_shape("hexagon", _hexagon, (1.0, math.sqrt(3.0) / 2.0))


@dataclass(frozen=True, slots=True)
class PackageType:
    """A kind of package: ``shape`` (a registered shape name) and nominal ``size_mm``."""

    shape: str
    size_mm: int

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r} (known: {', '.join(sorted(SHAPES))})")
        if not MIN_SIZE_MM <= self.size_mm <= MAX_SIZE_MM:
            raise ValueError(f"size {self.size_mm} mm out of range {MIN_SIZE_MM}..{MAX_SIZE_MM}")

    @classmethod
    def parse(cls, text: str) -> PackageType:
        """``"circle-80"`` -> PackageType("circle", 80); ValueError on anything else."""
        m = _LABEL_RE.match(text.strip())
        if m is None:
            raise ValueError(f"invalid package type {text!r}: expected SHAPE-SIZE_MM, e.g. circle-80")
        return cls(m.group(1), int(m.group(2)))

    @property
    def label(self) -> str:
        """The class name: ``circle-80``."""
        return f"{self.shape}-{self.size_mm}"

    @property
    def nominal_dims_mm(self) -> tuple[float, float]:
        """(width_mm, height_mm) of the unrotated bounding box at nominal size."""
        aw, ah = SHAPES[self.shape].aspect
        return (round(aw * self.size_mm, 1), round(ah * self.size_mm, 1))

    def outline_mm(self, scale: float = 1.0) -> np.ndarray:
        """The outline at ``scale`` x nominal size: (N, 2) points in mm around (0, 0)."""
        return np.asarray(SHAPES[self.shape].outline(self.size_mm * scale), dtype=np.float64)

    def __str__(self) -> str:
        return self.label


def parse_types(text: str) -> list[PackageType]:
    """``"circle-80,square-120"`` -> a list of package types (ValueError on a bad or empty list)."""
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise ValueError("no package types given")
    return [PackageType.parse(item) for item in items]
