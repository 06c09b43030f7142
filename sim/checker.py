"""The simulated plant's line checker: truth for a share of the robots' decisions.

A real line learns later what a package was (a dimension check, a scale, a reject gate). The
simulator knows: each replayed frame has its label in the recording (``labels.jsonl``). The
checker reads the robots' decisions (``{root}/devices/+/decisions``: id, frame number, model),
picks a share of them — deterministically, by a hash of the decision id, so a test can recompute
exactly which — and publishes the recording's label and dimensions for them on
``{root}/devices/{id}/truth`` with its own broker user (a line checker, never the robot).

:func:`truth_for` is the pure decision; :class:`LineChecker` is the MQTT shell.
"""

from __future__ import annotations

import json
import threading
import zlib
from dataclasses import dataclass
from typing import Any

from edge_agent.messages import DEFAULT_TOPIC_ROOT, Topics, Truth, dump
from sim.render import FrameLabel


def chosen(decision_id: str, share: float) -> bool:
    """Whether the checker checks this decision: a stable hash of its id under ``share``."""
    return zlib.crc32(decision_id.encode()) % 10000 < round(share * 10000)


def truth_for(decision: dict[str, Any], labels: list[FrameLabel], share: float) -> Truth | None:
    """The truth message for one decision payload, or None (not chosen, no label, not ours). Pure."""
    did, frame = decision.get("id"), decision.get("frame_id")
    if not isinstance(did, str) or not isinstance(frame, int) or not 0 <= frame < len(labels):
        return None
    if not chosen(did, share):
        return None
    lab = labels[frame]
    return Truth(
        decision_id=did,
        label=lab.package,
        dimensions_mm=(lab.width_mm, lab.height_mm),
        truth_id=f"sim-{did}",
        source="sim-checker",
    )


@dataclass
class Sent:
    """One truth the checker published, with the decision it was about (for tests and reports)."""

    device_id: str
    decision: dict[str, Any]
    truth: Truth


class LineChecker:
    """Subscribes to decisions, publishes truth for ``share`` of them (paho, its own thread)."""

    def __init__(
        self,
        host: str,
        port: int,
        labels: list[FrameLabel],
        *,
        share: float = 0.2,
        topic_root: str = DEFAULT_TOPIC_ROOT,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.labels = labels
        self.share = share
        self.topics = Topics(topic_root)
        self.sent: list[Sent] = []
        self.lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or username or "")
        if username:
            self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._host, self._port = host, port

    def start(self) -> None:
        self._client.connect(self._host, self._port)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        client.subscribe(self.topics.wildcard("decisions"), qos=0)

    def truth(self, device_id: str, decision: dict[str, Any]) -> Truth | None:
        """The truth to publish for one robot's decision, or None (see :func:`truth_for`)."""
        return truth_for(decision, self.labels, self.share)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        parsed = self.topics.parse(msg.topic)
        if parsed is None or parsed[1] != "decisions":
            return
        try:
            decision = json.loads(msg.payload)
        except ValueError:
            return
        truth = self.truth(parsed[0], decision) if isinstance(decision, dict) else None
        if truth is None:
            return
        client.publish(self.topics.device(parsed[0], "truth"), dump(truth), qos=1)
        with self.lock:
            self.sent.append(Sent(parsed[0], decision, truth))
