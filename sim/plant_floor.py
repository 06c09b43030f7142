"""The simulated plant on the broker, for the retraining demo: what the robots' decisions were about.

:class:`PlantFloor` subscribes to every robot's decisions, remembers which frame of its recording
each decision was about (so the plant's labeller can label the samples the robots send — a
sample's id is its decision's id), and, as the line checker, publishes truth for a stable,
hash-chosen share of them (:func:`sim.checker.truth_for`, with each robot's own recording).
"""

from __future__ import annotations

import json
import threading
from typing import Any


class PlantFloor:
    """The simulated plant on the broker: remembers which frame each decision was about, and
    publishes the line checker's truth for ``share`` of them (paho's thread; one lock)."""

    def __init__(self, host: str, port: int, labels: dict[str, list[Any]], share: float) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from edge_agent.messages import DEFAULT_TOPIC_ROOT, Topics

        self.labels = labels  # device → the recording's FrameLabels
        self.share = share
        self.topics = Topics(DEFAULT_TOPIC_ROOT)
        self._frames: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self.truth_sent = 0
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="demo-plant-floor")
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._host, self._port = host, port

    def start(self) -> None:
        self._client.connect(self._host, self._port)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()

    def frames(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._frames)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        client.subscribe(self.topics.wildcard("decisions"), qos=0)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        from edge_agent.messages import dump
        from sim.checker import truth_for

        parsed = self.topics.parse(msg.topic)
        if parsed is None or parsed[1] != "decisions":
            return
        try:
            decision = json.loads(msg.payload)
        except ValueError:
            return
        labels = self.labels.get(parsed[0])
        if not isinstance(decision, dict) or not labels or not isinstance(decision.get("frame_id"), int):
            return
        frame = decision["frame_id"] % len(labels)  # the robots loop their streams
        with self._lock:
            self._frames[(parsed[0], str(decision.get("id")))] = frame
        truth = truth_for({**decision, "frame_id": frame}, labels, self.share)
        if truth is not None:
            client.publish(self.topics.device(parsed[0], "truth"), dump(truth), qos=1)
            self.truth_sent += 1
