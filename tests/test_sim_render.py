"""The renderer: geometry matches the label, scale is calibrated, output is deterministic."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from sim.packages import SHAPES, PackageType, parse_types, register_shape
from sim.render import FrameLabel, RenderConfig, camera_encode, render_frame

# No blur, noise, shadow, flicker or partial packages: the shape's own pixels are easy to find.
CLEAN = RenderConfig(
    noise_sigma=0.0,
    blur_prob=0.0,
    defocus_prob=0.0,
    flicker_prob=0.0,
    partial_prob=0.0,
    shadow_strength=0.0,
)


def _segment(img: np.ndarray, config: RenderConfig) -> tuple[int, int, int, int]:
    """The package's bbox, found by comparing each pixel with the belt seen at the frame's ends.

    The package sits near the middle along the belt, so the left and right 80
    columns are belt; a per-row linear interpolation between them models the
    belt under the smooth lighting gradient. Packages are much brighter than
    the belt in at least one channel; seams are darker, so they drop out.
    """
    f = img.astype(np.float32) + 1.0
    left = np.median(f[:, :80], axis=1)  # (H, 3)
    right = np.median(f[:, -80:], axis=1)
    xs = np.linspace(0.0, 1.0, img.shape[1], dtype=np.float32)[None, :, None]
    xl, xr = 40 / img.shape[1], 1 - 40 / img.shape[1]
    t = (xs - xl) / (xr - xl)
    belt = left[:, None, :] * (1 - t) + right[:, None, :] * t
    ratio = (f / belt).max(axis=2)
    mask = (ratio > 1.4).astype(np.uint8)
    r = config.rail_px
    mask[: r + 2] = 0
    mask[-r - 2 :] = 0
    n, _labels, stats, _ = cv2.connectedComponentsWithStats(mask)
    assert n > 1, "no package found"
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[biggest, :4])
    return x, y, w, h


@pytest.mark.parametrize("label", ["circle-80", "square-120", "rectangle-100", "triangle-140", "hexagon-60"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_drawn_shape_matches_label_bbox(label: str, seed: int) -> None:
    img, lab = render_frame(label, np.random.default_rng(seed), CLEAN)
    assert img.shape == (CLEAN.height, CLEAN.width, 3) and img.dtype == np.uint8
    assert lab.package == label and not lab.partial
    found = _segment(img, CLEAN)
    lx, ly, lw, lh = lab.bbox
    fx, fy, fw, fh = found
    for a, b in [(lx, fx), (ly, fy), (lx + lw, fx + fw), (ly + lh, fy + fh)]:
        assert abs(a - b) <= 4, (lab.bbox, found)


def test_true_size_is_near_nominal_and_in_label() -> None:
    rng = np.random.default_rng(3)
    pkg = PackageType.parse("rectangle-120")
    assert pkg.nominal_dims_mm == (120.0, 80.0)
    for i in range(20):
        _, lab = render_frame(pkg, rng, frame=i)
        assert abs(lab.width_mm / 120.0 - 1) <= 0.0251
        assert abs(lab.height_mm / 80.0 - 1) <= 0.0251
        assert math.isclose(lab.width_mm / lab.height_mm, 1.5, rel_tol=1e-3)


def test_size_scales_with_px_per_mm() -> None:
    def area(cfg: RenderConfig) -> float:
        img, _ = render_frame("circle-100", np.random.default_rng(5), cfg)
        _, _, w, h = _segment(img, cfg)
        return float(w * h)

    small = CLEAN
    big = CLEAN.model_copy(update={"px_per_mm": 2.0})
    # The same rng draws give the same tolerance factor: the bbox grows by (2.0/1.6)^2.
    assert area(big) / area(small) == pytest.approx((2.0 / 1.6) ** 2, rel=0.06)
    _img, lab = render_frame("circle-100", np.random.default_rng(5), big)
    assert lab.bbox[2] == pytest.approx(lab.width_mm * 2.0, abs=2)


def test_similar_sizes_are_distinct_in_pixels() -> None:
    rng = np.random.default_rng(8)
    widths = {
        label: [render_frame(label, rng, CLEAN)[1].bbox[2] for _ in range(10)]
        for label in ["circle-80", "circle-100", "circle-120"]
    }
    assert max(widths["circle-80"]) < min(widths["circle-100"])
    assert max(widths["circle-100"]) < min(widths["circle-120"])


def test_deterministic_for_a_given_rng_state() -> None:
    a_img, a_lab = render_frame("triangle-100", np.random.default_rng(42), t_s=1.25, frame=7)
    b_img, b_lab = render_frame("triangle-100", np.random.default_rng(42), t_s=1.25, frame=7)
    c_img, c_lab = render_frame("triangle-100", np.random.default_rng(43), t_s=1.25, frame=7)
    assert np.array_equal(a_img, b_img) and a_lab == b_lab
    assert not np.array_equal(a_img, c_img) and a_lab != c_lab


def test_belt_moves_with_time() -> None:
    cfg = CLEAN.model_copy(update={"label_prob": 0.0})
    a, _ = render_frame("circle-80", np.random.default_rng(1), cfg, t_s=0.0)
    b, _ = render_frame("circle-80", np.random.default_rng(1), cfg, t_s=0.1)
    # Only the belt differs: compare the rows above the usable region's middle, left end.
    assert np.abs(a[60:120, :100].astype(int) - b[60:120, :100].astype(int)).mean() > 1.0


def test_partial_packages_are_cut_and_flagged() -> None:
    cfg = RenderConfig(partial_prob=1.0)
    rng = np.random.default_rng(11)
    for _ in range(10):
        _, lab = render_frame("square-120", rng, cfg)
        x, _, w, _ = lab.bbox
        assert lab.partial
        assert x == 0 or x + w == cfg.width
        full_w = 2 * abs(lab.center_px[0] - (x + w / 2)) + w  # width before clipping
        assert 0.05 <= 1 - w / full_w <= cfg.max_cut_fraction + 0.01


def test_partial_rate_matches_config() -> None:
    rng = np.random.default_rng(12)
    cfg = RenderConfig(partial_prob=0.25, noise_sigma=0.0)
    n = sum(render_frame("circle-50", rng, cfg)[1].partial for _ in range(200))
    assert 25 <= n <= 75


def test_label_json_round_trip() -> None:
    _, lab = render_frame("hexagon-100", np.random.default_rng(0), frame=3)
    again = FrameLabel.from_json(lab.to_json())
    assert again == lab
    with pytest.raises(KeyError):
        FrameLabel.from_json({"frame": 1})


def test_camera_encode_adds_jpeg_artefacts() -> None:
    img, _ = render_frame("square-80", np.random.default_rng(0))
    low = camera_encode(img, RenderConfig(jpeg_quality=30))
    high = camera_encode(img, RenderConfig(jpeg_quality=95))
    assert low.shape == img.shape and low.dtype == np.uint8
    err_low = np.abs(low.astype(int) - img).mean()
    err_high = np.abs(high.astype(int) - img).mean()
    assert 0 < err_high < err_low


def test_package_type_parse_and_dims() -> None:
    assert PackageType.parse("circle-80") == PackageType("circle", 80)
    assert PackageType.parse("circle-80").label == "circle-80"
    assert PackageType.parse("triangle-100").nominal_dims_mm == (100.0, 86.6)
    assert PackageType.parse("hexagon-100").nominal_dims_mm == (100.0, 86.6)
    for bad in ["circle", "circle-", "blob-80", "circle-80mm", "Circle-80", "circle-0", ""]:
        with pytest.raises(ValueError):
            PackageType.parse(bad)
    assert [p.label for p in parse_types("circle-80, square-120")] == ["circle-80", "square-120"]
    with pytest.raises(ValueError):
        parse_types(" , ")


def test_register_shape_adds_a_renderable_shape() -> None:
    def diamond(size: float) -> np.ndarray:
        h = size / 2
        return np.array([[0, -h], [h / 2, 0], [0, h], [-h / 2, 0]], dtype=float)

    try:
        register_shape("diamond", diamond)
        pkg = PackageType.parse("diamond-100")
        assert pkg.nominal_dims_mm == (50.0, 100.0)
        _img, lab = render_frame(pkg, np.random.default_rng(0), CLEAN)
        assert lab.shape == "diamond"
        assert abs(lab.height_mm * lab.width_mm - 5000) < 400
    finally:
        SHAPES.pop("diamond", None)


def test_too_big_a_package_is_rejected() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        render_frame("square-300", np.random.default_rng(0))
