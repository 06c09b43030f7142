"""``edge-sim``: Conveyor-camera simulator: record, replay, simulated fleets and the end-to-end demo."""

from sim.packages import SHAPES, PackageType, parse_types, register_shape
from sim.render import FrameLabel, RenderConfig, camera_encode, render_frame

__all__ = [
    "SHAPES",
    "FrameLabel",
    "PackageType",
    "RenderConfig",
    "camera_encode",
    "parse_types",
    "register_shape",
    "render_frame",
]
