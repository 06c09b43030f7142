"""Render one conveyor-camera frame of one package, with its ground-truth label.

The camera over the sort station is triggered by a light barrier as each
package passes, so every frame holds exactly ONE package, centred along the
belt (small trigger jitter) and anywhere across the belt's usable width, fully
inside the frame. With probability ``partial_prob`` the trigger fires early or
late and up to ~30 % of the package is cut off at the left or right edge
(``FrameLabel.partial``; the bbox is clipped to the frame).

The belt runs along x (left to right); rails bound it at the top and bottom.
Realism, so that a classifier cannot reach 100 % trivially: a textured belt
whose grain and seams move with ``t_s``, a soft drop shadow, package colour,
cardboard texture, edge shading, printed labels and tape, random rotation,
a lighting gradient with vignette and flicker, occasional motion and focus
blur, sensor noise; :func:`camera_encode` adds the camera's JPEG artefacts.

Scale is calibrated (``px_per_mm``), and real packages vary only a little
(``size_tolerance``), so similar sizes of one shape stay distinguishable.
Everything random comes from the ``rng`` passed in: the same rng state gives
the same frame and label.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sim.packages import PackageType

_SHIFT = 4  # fixed-point bits for cv2 polygon drawing: 1/16 px precision
_SCALE = 1 << _SHIFT


class RenderConfig(BaseModel):
    """How the simulated camera sees the belt. Units are in the field names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    width: int = Field(default=640, ge=64, le=4096, description="frame width in px (along the belt)")
    height: int = Field(default=480, ge=64, le=4096, description="frame height in px (across the belt)")
    px_per_mm: float = Field(default=1.6, gt=0.1, le=20.0, description="calibrated scale at the belt surface")
    jpeg_quality: int = Field(default=85, ge=1, le=100, description="camera's MJPG quality")
    noise_sigma: float = Field(
        default=3.0, ge=0.0, le=50.0, description="sensor noise std-dev, in 8-bit levels"
    )
    blur_prob: float = Field(default=0.15, ge=0.0, le=1.0, description="chance of motion blur along the belt")
    max_blur_px: int = Field(default=9, ge=1, le=64, description="longest motion-blur streak in px")
    defocus_prob: float = Field(default=0.08, ge=0.0, le=1.0, description="chance of slight defocus")
    flicker_prob: float = Field(
        default=0.1, ge=0.0, le=1.0, description="chance of a strong lighting flicker"
    )
    partial_prob: float = Field(
        default=0.04, ge=0.0, le=1.0, description="chance the trigger cuts a package off"
    )
    max_cut_fraction: float = Field(
        default=0.3, ge=0.0, le=0.9, description="largest cut-off share of a partial package"
    )
    size_tolerance: float = Field(
        default=0.025, ge=0.0, le=0.2, description="real size varies by ±this fraction"
    )
    center_jitter_px: float = Field(
        default=16.0, ge=0.0, description="trigger jitter of the centre along the belt"
    )
    rail_px: int = Field(default=24, ge=0, description="height of each belt rail at top and bottom")
    shadow_strength: float = Field(
        default=0.35, ge=0.0, le=1.0, description="darkening under the drop shadow"
    )
    label_prob: float = Field(
        default=0.7, ge=0.0, le=1.0, description="chance of a printed label on the package"
    )
    tape_prob: float = Field(
        default=0.4, ge=0.0, le=1.0, description="chance of a tape strip across the package"
    )
    belt_speed_mm_s: float = Field(
        default=400.0, ge=0.0, description="belt speed: moves texture and seams with t_s"
    )
    seam_spacing_mm: float = Field(default=300.0, gt=10.0, description="distance between belt seams")

    @property
    def usable_y_px(self) -> tuple[int, int]:
        """The band across the belt where package centres may lie (before subtracting package size)."""
        return (self.rail_px + 6, self.height - self.rail_px - 6)


@dataclass(frozen=True, slots=True)
class FrameLabel:
    """Ground truth for one rendered frame."""

    frame: int
    package: str  # the class label, e.g. "circle-80"
    shape: str
    width_mm: float  # TRUE (tolerance-varied) unrotated bounding-box width
    height_mm: float
    rotation_deg: float
    bbox: tuple[int, int, int, int]  # x, y, w, h in px, clipped to the frame
    center_px: tuple[float, float]  # may lie outside the frame for a partial package
    partial: bool

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["bbox"] = list(self.bbox)
        d["center_px"] = list(self.center_px)
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FrameLabel:
        """Inverse of :meth:`to_json`; KeyError/TypeError/ValueError on malformed data."""
        bbox = tuple(int(v) for v in data["bbox"])
        center = tuple(float(v) for v in data["center_px"])
        if len(bbox) != 4 or len(center) != 2:
            raise ValueError("bbox needs 4 values and center_px 2")
        return cls(
            frame=int(data["frame"]),
            package=str(data["package"]),
            shape=str(data["shape"]),
            width_mm=float(data["width_mm"]),
            height_mm=float(data["height_mm"]),
            rotation_deg=float(data["rotation_deg"]),
            bbox=(bbox[0], bbox[1], bbox[2], bbox[3]),
            center_px=(center[0], center[1]),
            partial=bool(data["partial"]),
        )


# Cardboard browns dominate; some white boxes, grey and blue totes, a yellow one now and then (BGR).
_PACKAGE_COLOURS = np.array(
    [
        (92, 140, 186),
        (80, 125, 170),
        (110, 155, 196),
        (70, 110, 150),
        (215, 215, 210),
        (150, 150, 145),
        (170, 110, 60),
        (60, 170, 210),
    ],
    dtype=np.float32,
)
_COLOUR_WEIGHTS = np.array([0.2, 0.2, 0.15, 0.1, 0.12, 0.1, 0.08, 0.05])
_BELT_BGR = np.array((62.0, 70.0, 66.0), dtype=np.float32)
_RAIL_BGR = np.array((150.0, 150.0, 155.0), dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _belt_tile(height: int, period_px: int) -> np.ndarray:
    """A periodic belt-texture tile (float32 gain around 1.0, (H, period)) with one seam; fixed seed."""
    rng = np.random.default_rng(0x5EED)
    grain: np.ndarray = rng.normal(0.0, 1.0, (height, period_px)).astype(np.float32)
    # Longitudinal grain: smear along the belt, wrap-around so the tile stays periodic.
    pad = 32
    grain = np.pad(grain, ((0, 0), (pad, pad)), mode="wrap")
    grain = cv2.GaussianBlur(grain, (0, 0), sigmaX=6.0, sigmaY=0.7)[:, pad:-pad]
    gain = 1.0 + 0.06 * grain / (float(grain.std()) + 1e-6)
    blotch: np.ndarray = rng.normal(0.0, 1.0, (max(height // 16, 2), max(period_px // 16, 2))).astype(
        np.float32
    )
    blotch = cv2.resize(blotch, (period_px, height), interpolation=cv2.INTER_CUBIC)
    # Fade the blotches out towards the tile's ends so the tile stays seamless when repeated.
    blotch *= np.sin(np.linspace(0.0, np.pi, period_px, dtype=np.float32))[None, :]
    gain += 0.04 * blotch
    seam = period_px // 3
    gain[:, seam : seam + 3] *= 0.55
    gain[:, seam + 3 : seam + 5] *= 1.15
    return gain


@functools.lru_cache(maxsize=8)
def _grids(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    return xs, ys


@functools.lru_cache(maxsize=4)
def _noise_bank(height: int, width: int) -> np.ndarray:
    """Unit normal noise twice the frame size (fixed seed); frames take random windows of it.

    Drawing fresh Gaussian noise for every 640x480x3 frame cost ~8 ms, a third of
    the render time; a window at a random offset is as good for the classifier.
    """
    rng = np.random.default_rng(0x0015E)
    return rng.standard_normal((2 * height, 2 * width, 3), dtype=np.float32)


def _belt(config: RenderConfig, t_s: float, tint: np.ndarray) -> np.ndarray:
    """The belt at time ``t_s`` (float32 BGR), texture and seams shifted by the belt's travel."""
    period = max(round(config.seam_spacing_mm * config.px_per_mm), 8)
    tile = _belt_tile(config.height, period)
    offset = round(config.belt_speed_mm_s * t_s * config.px_per_mm) % period
    reps = (config.width + period) // period + 1
    strip = np.tile(tile, (1, reps))
    # The belt moves to the right: what is at x now was at x - travel before.
    start = (period - offset) % period
    gain = strip[:, start : start + config.width]
    b, g, r_ = (float(v) for v in _BELT_BGR * tint)
    img = cv2.merge([gain * b, gain * g, gain * r_])
    r = config.rail_px
    if r > 0:
        ramp = np.linspace(1.1, 0.75, r, dtype=np.float32)[:, None, None]
        img[:r] = _RAIL_BGR * ramp
        img[-r:] = _RAIL_BGR * ramp[::-1]
    return img


def _to_fixed(points: np.ndarray) -> np.ndarray:
    return np.round(points * _SCALE).astype(np.int32).reshape(-1, 1, 2)


def _transform(points_mm: np.ndarray, px_per_mm: float, angle_rad: float, center: np.ndarray) -> np.ndarray:
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    rot = np.array([[c, -s], [s, c]])
    return points_mm @ rot.T * px_per_mm + center


def _decorate(
    layer: np.ndarray,
    rng: np.random.Generator,
    config: RenderConfig,
    dims_mm: tuple[float, float],
    angle: float,
    center: np.ndarray,
    outline_px: np.ndarray,
    colour: np.ndarray,
) -> None:
    """Draw texture, edge shading, tape and a printed label onto the package layer (in place)."""
    w_mm, h_mm = dims_mm
    edge = tuple(float(v) for v in colour * rng.uniform(0.6, 0.85))
    cv2.polylines(layer, [_to_fixed(outline_px)], True, edge, 3, cv2.LINE_AA, _SHIFT)
    if rng.random() < config.tape_prob:
        tape_w = rng.uniform(0.12, 0.22) * h_mm
        tape = np.array([[-w_mm, -tape_w / 2], [w_mm, -tape_w / 2], [w_mm, tape_w / 2], [-w_mm, tape_w / 2]])
        tape_col = tuple(float(v) for v in colour * rng.uniform(0.85, 1.2))
        pts = _transform(tape, config.px_per_mm, angle, center)
        cv2.fillPoly(layer, [_to_fixed(pts)], tape_col, cv2.LINE_AA, _SHIFT)
    if rng.random() < config.label_prob:
        # Keep the label within the inscribed region of any shape: about 30 % of the smaller side.
        side = min(w_mm, h_mm)
        lw, lh = side * rng.uniform(0.25, 0.4), side * rng.uniform(0.15, 0.25)
        ox, oy = rng.uniform(-0.08, 0.08, 2) * side
        oy += 0.08 * h_mm  # nudged down: triangles (point up) have their room near the base
        rect = np.array([[-lw, -lh], [lw, -lh], [lw, lh], [-lw, lh]]) / 2 + (ox, oy)
        paper = float(rng.uniform(215, 250))
        pts = _transform(rect, config.px_per_mm, angle, center)
        cv2.fillPoly(layer, [_to_fixed(pts)], (paper, paper, paper), cv2.LINE_AA, _SHIFT)
        n_bars = int(rng.integers(6, 14))
        xs = np.sort(rng.uniform(-0.4, 0.4, n_bars)) * lw + ox
        for x in xs:
            bar = np.array([[x, oy - lh * 0.3], [x, oy + lh * 0.3]])
            p = _transform(bar, config.px_per_mm, angle, center)
            cv2.line(
                layer,
                tuple(_to_fixed(p[0]).ravel()),
                tuple(_to_fixed(p[1]).ravel()),
                (30, 30, 30),
                1,
                cv2.LINE_AA,
                _SHIFT,
            )


def render_frame(
    package: PackageType | str,
    rng: np.random.Generator,
    config: RenderConfig | None = None,
    *,
    frame: int = 0,
    t_s: float = 0.0,
) -> tuple[np.ndarray, FrameLabel]:
    """Render one frame holding exactly one ``package``; returns (BGR uint8 (H, W, 3), label).

    The image is what the sensor sees before compression; pass it through
    :func:`camera_encode` for the camera's JPEG artefacts. Deterministic for a
    given rng state; ``t_s`` moves the belt texture. The label carries the
    package's true (tolerance-varied) size. ValueError if the package cannot
    fit the usable belt width.
    """
    cfg = config or RenderConfig()
    pkg = PackageType.parse(package) if isinstance(package, str) else package
    W, H = cfg.width, cfg.height

    scale = 1.0 + rng.uniform(-cfg.size_tolerance, cfg.size_tolerance)
    outline_mm = pkg.outline_mm(scale)
    w_mm, h_mm = (float(v) for v in outline_mm.max(axis=0) - outline_mm.min(axis=0))
    rotation = float(rng.uniform(0.0, 360.0))
    angle = math.radians(rotation)
    rotated = _transform(outline_mm, cfg.px_per_mm, angle, np.zeros(2))
    half = (rotated.max(axis=0) - rotated.min(axis=0)) / 2.0
    mid = (rotated.max(axis=0) + rotated.min(axis=0)) / 2.0  # ~0; exact for the bbox-centred outlines

    y_lo, y_hi = cfg.usable_y_px
    if y_hi - y_lo < 2 * half[1] or 2 * half[0] + 2 * cfg.center_jitter_px > W:
        raise ValueError(f"{pkg.label} does not fit a {W}x{H} frame at {cfg.px_per_mm} px/mm")
    cy = rng.uniform(y_lo + half[1], y_hi - half[1])
    partial = bool(rng.random() < cfg.partial_prob)
    if partial:
        cut = rng.uniform(0.08, max(cfg.max_cut_fraction, 0.08))
        side = 1 if rng.random() < 0.5 else -1
        bw = 2 * half[0]
        cx = W - half[0] + cut * bw if side > 0 else half[0] - cut * bw
    else:
        cx = W / 2.0 + rng.uniform(-cfg.center_jitter_px, cfg.center_jitter_px)
    center = np.array([cx, cy]) - mid
    outline_px = rotated + center

    # Per-frame appearance draws, in a fixed order for determinism.
    belt_tint = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    colour = _PACKAGE_COLOURS[rng.choice(len(_PACKAGE_COLOURS), p=_COLOUR_WEIGHTS)]
    colour = np.clip(colour * rng.uniform(0.85, 1.15, 3).astype(np.float32), 0, 255)

    img = _belt(cfg, t_s, belt_tint)

    # ROI around the package (plus shadow and blur margin) keeps per-frame work small.
    x0 = max(int(outline_px[:, 0].min()) - 16, 0)
    y0 = max(int(outline_px[:, 1].min()) - 16, 0)
    x1 = min(math.ceil(outline_px[:, 0].max()) + 16, W)
    y1 = min(math.ceil(outline_px[:, 1].max()) + 16, H)
    local = outline_px - (x0, y0)
    roi_shape = (y1 - y0, x1 - x0)

    if cfg.shadow_strength > 0:
        shadow = np.zeros(roi_shape, np.float32)
        offset = rng.uniform(2.0, 6.0, 2)
        cv2.fillPoly(shadow, [_to_fixed(local + offset)], 1.0, cv2.LINE_AA, _SHIFT)
        shadow = cv2.GaussianBlur(shadow, (0, 0), 3.0)
        img[y0:y1, x0:x1] *= (1.0 - cfg.shadow_strength * shadow)[:, :, None]
    else:
        rng.uniform(2.0, 6.0, 2)  # keep the draw sequence independent of the option

    alpha = np.zeros(roi_shape, np.uint8)
    cv2.fillPoly(alpha, [_to_fixed(local)], 255, cv2.LINE_AA, _SHIFT)
    layer = np.empty((*roi_shape, 3), np.float32)
    layer[:] = colour
    # Cardboard texture: low-frequency blotches.
    tex: np.ndarray = rng.normal(0.0, 1.0, (max(roi_shape[0] // 12, 2), max(roi_shape[1] // 12, 2))).astype(
        np.float32
    )
    tex = cv2.resize(tex, (roi_shape[1], roi_shape[0]), interpolation=cv2.INTER_LINEAR)
    layer *= (1.0 + 0.05 * tex)[:, :, None]
    _decorate(layer, rng, cfg, (w_mm, h_mm), angle, center - (x0, y0), local, colour)
    a = (alpha.astype(np.float32) / 255.0)[:, :, None]
    roi = img[y0:y1, x0:x1]
    roi *= 1.0 - a
    roi += layer * a

    # Lighting: gradient in a random direction, vignette, brightness (sometimes a strong flicker).
    xs, ys = _grids(H, W)
    gx, gy = rng.uniform(-0.15, 0.15, 2)
    if rng.random() < cfg.flicker_prob:
        brightness = float(rng.choice([rng.uniform(0.55, 0.75), rng.uniform(1.2, 1.4)]))
    else:
        brightness = float(rng.uniform(0.9, 1.1))
    # Flicker banding from mains-powered lights, drifting with time.
    band = 0.03 * math.sin(2 * math.pi * 100.0 * t_s)
    light = brightness * (1.0 + gx * xs + gy * ys + band) * (1.0 - 0.12 * (xs * xs + ys * ys))
    light = light.astype(np.float32, copy=False)
    img = cv2.multiply(img, cv2.merge([light, light, light]))

    if rng.random() < cfg.blur_prob:
        k = int(rng.integers(3, max(cfg.max_blur_px, 3) + 1))
        kernel = np.full((1, k), 1.0 / k, np.float32)
        img = cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT)
    if rng.random() < cfg.defocus_prob:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.8, 1.6)))
    if cfg.noise_sigma > 0:
        bank = _noise_bank(H, W)
        ny, nx = int(rng.integers(0, H)), int(rng.integers(0, W))
        sigma = np.float32(cfg.noise_sigma * rng.uniform(0.7, 1.3))
        img = cv2.scaleAdd(bank[ny : ny + H, nx : nx + W], float(sigma), img)
    out = np.clip(img, 0.0, 255.0).astype(np.uint8)

    bx0 = max(math.floor(outline_px[:, 0].min()), 0)
    by0 = max(math.floor(outline_px[:, 1].min()), 0)
    bx1 = min(math.ceil(outline_px[:, 0].max()), W)
    by1 = min(math.ceil(outline_px[:, 1].max()), H)
    label = FrameLabel(
        frame=frame,
        package=pkg.label,
        shape=pkg.shape,
        width_mm=round(w_mm, 2),
        height_mm=round(h_mm, 2),
        rotation_deg=round(rotation, 2),
        bbox=(bx0, by0, max(bx1 - bx0, 0), max(by1 - by0, 0)),
        center_px=(round(float(cx), 2), round(float(cy), 2)),
        partial=partial,
    )
    return out, label


def camera_encode(image: np.ndarray, config: RenderConfig) -> np.ndarray:
    """JPEG round trip at ``config.jpeg_quality``: exactly what a recording's MJPG frame decodes to."""
    decoded = cv2.imdecode(encode_jpeg(image, config.jpeg_quality), cv2.IMREAD_COLOR)
    if decoded is None:
        raise ValueError("JPEG decoding failed")
    return decoded


def encode_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """The camera's JPEG bytes for one frame (baseline JPEG, 4:2:0, as MJPG cameras send)."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf
