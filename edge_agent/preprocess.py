"""Turn a camera frame into the model's input tensor, and model outputs into a decision.

Exactly what the manifest says, and nothing else: the same code runs on the
robot, in ``edge-models evaluate`` and in the benchmarks' minimal loop, so the
numbers a model is released with are the numbers it gets on the line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge_agent.manifest import InputSpec, OutputSpec

_INTERPOLATION = {
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "nearest": cv2.INTER_NEAREST,
    "cubic": cv2.INTER_CUBIC,
}


class Preprocessor:
    """Callable: BGR uint8 frame (H, W, 3) -- or grey (H, W) for a GRAY model -- → input tensor, batch of 1."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self._size = (spec.resize.width, spec.resize.height)
        self._interp = _INTERPOLATION[spec.resize.interpolation]
        # Fold scale, mean and std into one multiply-add per channel: (x*scale - mean)/std = x*a + b.
        std = np.asarray(spec.std, dtype=np.float32)
        self._a = (np.asarray(spec.scale_per_channel, dtype=np.float32) / std).astype(np.float32)
        self._b = (-np.asarray(spec.mean, dtype=np.float32) / std).astype(np.float32)
        self._dtype = np.dtype(spec.dtype)
        self._nchw = spec.layout == "NCHW"
        self._roi_cache: tuple[tuple[int, int], tuple[int, int, int, int]] | None = None
        self._letterbox = spec.resize.mode == "letterbox"
        # (frame h, w) → (inner w, h, top, bottom, left, right): computed once per frame size.
        self._box_cache: tuple[tuple[int, int], tuple[int, int, int, int, int, int]] | None = None

    def _crop(self, frame: np.ndarray) -> np.ndarray:
        roi = self.spec.roi
        if roi is None:
            return frame
        h, w = frame.shape[:2]
        if self._roi_cache is None or self._roi_cache[0] != (h, w):
            x0, y0 = round(roi.x * w), round(roi.y * h)
            x1, y1 = min(w, round((roi.x + roi.width) * w)), min(h, round((roi.y + roi.height) * h))
            self._roi_cache = ((h, w), (x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)))
        x0, y0, x1, y1 = self._roi_cache[1]
        return frame[y0:y1, x0:x1]

    def _resize(self, img: np.ndarray) -> np.ndarray:
        if not self._letterbox:
            return cv2.resize(img, self._size, interpolation=self._interp)
        h, w = img.shape[:2]
        if self._box_cache is None or self._box_cache[0] != (h, w):
            self._box_cache = ((h, w), letterbox_geometry((w, h), self._size))
        iw, ih, top, bottom, left, right = self._box_cache[1]
        inner = cv2.resize(img, (iw, ih), interpolation=self._interp)
        pad = self.spec.resize.pad_value
        return cv2.copyMakeBorder(inner, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad, pad, pad))

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        img = self._resize(self._crop(frame))
        order = self.spec.color_order
        if order == "RGB":
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        elif order == "GRAY":
            # A frame decoded straight to grey (edge_agent.decode) is already one channel.
            img = img[:, :, None] if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:, :, None]
        if self._dtype == np.uint8:
            x = img
        else:
            x = img.astype(np.float32) * self._a + self._b
            if self._dtype != np.float32:
                x = x.astype(self._dtype)
        if self._nchw:
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x[None])


def letterbox_geometry(src: tuple[int, int], dst: tuple[int, int]) -> tuple[int, int, int, int, int, int]:
    """Fit ``src`` (w, h) inside ``dst`` (w, h) keeping its aspect ratio, centred.

    Returns (inner width, inner height, top, bottom, left, right padding); the odd pixel of
    padding goes to the bottom/right.
    """
    (sw, sh), (dw, dh) = src, dst
    r = min(dw / sw, dh / sh)
    iw, ih = max(1, min(dw, round(sw * r))), max(1, min(dh, round(sh * r)))
    top, left = (dh - ih) // 2, (dw - iw) // 2
    return iw, ih, top, dh - ih - top, left, dw - iw - left


@dataclass(frozen=True, slots=True)
class Prediction:
    """One frame's result."""

    label_index: int
    confidence: float
    margin: float  # top-1 minus top-2 probability
    dimensions_mm: tuple[float, float] | None
    finite: bool
    probabilities: Any = None  # the class probabilities (np.ndarray), for samples


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - np.max(logits, axis=-1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / np.sum(e, axis=-1, keepdims=True)
    return out


class Postprocessor:
    """Model outputs (by name) → Prediction, as the manifest's output spec says."""

    def __init__(self, spec: OutputSpec, output_names: list[str]) -> None:
        self.spec = spec
        self._class_idx = output_names.index(spec.class_output)
        self._dims_idx = output_names.index(spec.dimensions_output) if spec.dimensions_output else None
        self._logits = spec.class_kind == "logits"

    def __call__(self, outputs: list[np.ndarray]) -> Prediction:
        scores = np.asarray(outputs[self._class_idx], dtype=np.float32).reshape(-1)
        finite = bool(np.isfinite(scores).all())
        probs = softmax(scores) if self._logits else scores
        if probs.size >= 2:
            top2 = np.argpartition(probs, -2)[-2:]
            i1, i2 = (
                (int(top2[1]), int(top2[0]))
                if probs[top2[1]] >= probs[top2[0]]
                else (int(top2[0]), int(top2[1]))
            )
            conf, margin = float(probs[i1]), float(probs[i1] - probs[i2])
        else:
            i1, conf, margin = 0, float(probs[0]), float(probs[0])
        dims: tuple[float, float] | None = None
        if self._dims_idx is not None:
            d = np.asarray(outputs[self._dims_idx], dtype=np.float32).reshape(-1)
            finite = finite and bool(np.isfinite(d).all())
            dims = (float(d[0]), float(d[1]))
        if not finite:
            conf, margin = 0.0, 0.0
        return Prediction(
            label_index=i1,
            confidence=conf,
            margin=margin,
            dimensions_mm=dims,
            finite=finite,
            probabilities=probs,
        )
