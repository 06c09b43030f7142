"""The simulated plant on the broker, for the retraining demo: what the robots' decisions were about.

:class:`PlantFloor` subscribes to every robot's decisions, remembers which frame of its recording
each decision was about (so the plant's labeller can label the samples the robots send — a
sample's id is its decision's id), and, as the line checker, publishes truth for a stable,
hash-chosen share of them (:func:`sim.checker.truth_for`, with each robot's own recording).
"""

from __future__ import annotations

from typing import Any

from edge_agent.messages import Truth
from sim.checker import LineChecker, truth_for
from sim.render import FrameLabel


class PlantFloor(LineChecker):
    """The simulated plant on the broker: remembers which frame each decision was about, and
    publishes the line checker's truth for ``share`` of them (paho's thread; one lock)."""

    def __init__(self, host: str, port: int, labels: dict[str, list[FrameLabel]], share: float) -> None:
        super().__init__(host, port, [], share=share, client_id="demo-plant-floor")
        self.by_device = labels  # device → the recording's FrameLabels
        self._frames: dict[tuple[str, str], int] = {}

    def frames(self) -> dict[tuple[str, str], int]:
        with self.lock:
            return dict(self._frames)

    def truth(self, device_id: str, decision: dict[str, Any]) -> Truth | None:
        labels = self.by_device.get(device_id)
        if not labels or not isinstance(decision.get("frame_id"), int):
            return None
        frame = decision["frame_id"] % len(labels)  # the robots loop their streams
        with self.lock:
            self._frames[(device_id, str(decision.get("id")))] = frame
        return truth_for({**decision, "frame_id": frame}, labels, self.share)
