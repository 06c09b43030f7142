"""The shadow thread offers the frames the two models disagree on to the sampler (issue 16)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.config import SamplesConfig
from edge_agent.frames import Frame
from edge_agent.messages import ModelRef
from edge_agent.sample_ring import SampleRing
from edge_agent.sampling import FrameSampler, SampleDecision, ShadowOutput, policy_for
from edge_agent.shadow import ShadowRunner

SERVING_LABELS = ["box", "tube", "bag"]


@dataclass
class Pred:
    label_index: int
    confidence: float
    probabilities: Any = None
    dimensions_mm: tuple[float, float] | None = None
    finite: bool = True


@dataclass
class FakeRunner:
    """A model that answers ``answer(image)`` (a label index) with confidence 0.9."""

    name: str
    labels: list[str]
    answer: Callable[[np.ndarray], int]
    validated: list[str] = field(default_factory=lambda: ["color"])
    seen: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sha256 = self.name * 32
        self.manifest = SimpleNamespace(
            labels=self.labels,
            agreement=SimpleNamespace(intended_changes={}),
            input=SimpleNamespace(validated_decodes=self.validated),
        )

    def model_ref(self) -> ModelRef:
        return ModelRef(name="shapes", version=f"v-{self.name}", sha256=self.sha256)

    def predict(self, image: np.ndarray) -> Pred:
        self.seen.append(image)
        return Pred(self.answer(image), 0.9, np.full(len(self.labels), 0.1))

    def close(self) -> None:
        pass


class FakeSampler:
    def __init__(self) -> None:
        self.offers: list[tuple[Frame, SampleDecision, ModelRef, ShadowOutput]] = []

    def offer_disagreement(
        self, frame: Frame, decision: SampleDecision, *, model: ModelRef, shadow: ShadowOutput
    ) -> bool:
        self.offers.append((frame, decision, model, shadow))
        return True


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _ran(shadow: ShadowRunner, n: int) -> None:
    _wait(lambda: shadow.ran_total == n)


def _image(value: int) -> np.ndarray:
    return np.full((24, 32, 3), value, dtype=np.uint8)


def test_only_a_disagreement_on_labels_both_know_is_offered_with_the_frame_and_both_outputs() -> None:
    serving = FakeRunner("a", SERVING_LABELS, lambda img: 0)  # always "box"
    # The candidate knows a new type, "crate"; its answer is coded in the pixel value.
    candidate = FakeRunner("b", [*SERVING_LABELS, "crate"], lambda img: int(img[0, 0, 0]))
    sampler = FakeSampler()
    shadow = ShadowRunner(candidate, serving, role="candidate", every_n=1, nice=0, sampler=sampler)
    try:
        frames = [Frame(i, 0.0, _image(v)) for i, v in enumerate([0, 1, 3, 2])]  # box, tube, crate, bag
        for f in frames:
            served = serving.predict(f.image)
            shadow.offer(serving.sha256, f.image, served, frame=f, decision_id=f"d{f.index}")
            _ran(shadow, f.index + 1)
    finally:
        shadow.close()
    # Frame 0 agrees; frame 2's "crate" is a label only the candidate knows: no disagreement.
    assert [(d.decision_id, s.label) for _, d, _, s in sampler.offers] == [("d1", "tube"), ("d3", "bag")]
    frame, decision, model, out = sampler.offers[0]
    assert frame is frames[1] and decision.label == "box" and model.sha256 == serving.sha256
    assert out.model.sha256 == candidate.sha256 and out.confidence == 0.9


def test_reverse_shadow_and_intended_changes_follow_the_agreement_rule() -> None:
    previous = FakeRunner("a", SERVING_LABELS, lambda img: 1)  # the baseline says "tube"
    serving = FakeRunner("b", SERVING_LABELS, lambda img: 0)  # the new model says "box"
    serving.manifest.agreement.intended_changes = {"tube": ["box"]}
    sampler = FakeSampler()
    shadow = ShadowRunner(previous, serving, role="baseline", every_n=1, nice=0, sampler=sampler)
    try:
        f = Frame(0, 0.0, _image(0))
        shadow.offer(serving.sha256, f.image, serving.predict(f.image), frame=f, decision_id="d0")
        _ran(shadow, 1)
    finally:
        shadow.close()
    assert sampler.offers == []  # tube -> box was declared as intended


def test_a_reduced_decode_disagreement_becomes_a_full_colour_sample(tmp_path: Path) -> None:
    colour = np.zeros((48, 64, 3), dtype=np.uint8)
    colour[:, :, 2] = 200  # red: a grey decode would lose it
    ok, jpg = cv2.imencode(".jpg", colour)
    assert ok
    grey = cv2.imdecode(jpg, cv2.IMREAD_REDUCED_GRAYSCALE_2)
    assert grey is not None
    frame = Frame(0, 0.0, grey, decode="gray_reduced_2", encoded=jpg.tobytes())
    serving = FakeRunner("a", SERVING_LABELS, lambda img: 0, validated=["color", "gray_reduced_2"])
    candidate = FakeRunner("b", SERVING_LABELS, lambda img: 1)  # validated on colour only
    cfg = SamplesConfig(low_confidence_max=0.0, per_minute=None, per_hour=None, per_day=None)
    sampler = FrameSampler(cfg, SampleRing(tmp_path, 1 << 20), policy_for(cfg, None), device_id="r1")
    shadow = ShadowRunner(candidate, serving, role="candidate", every_n=1, nice=0, sampler=sampler)
    try:
        shadow.offer(
            serving.sha256,
            grey,
            serving.predict(grey),
            decode="gray_reduced_2",
            encoded=frame.encoded,
            frame=frame,
            decision_id="000001-000000000000",
        )
        _ran(shadow, 1)
    finally:
        shadow.close()
    assert candidate.seen[0].ndim == 3  # the shadow model got full colour
    # The disagreement waits for the inference thread's next offer (one owner of the policy).
    assert sampler.ring.pending() == []
    next_frame = Frame(1, 0.0, colour)
    decision = SampleDecision("000001-000000000001", "box", 0.99, None, None)
    assert not sampler.offer(next_frame, decision, model=serving.model_ref())
    sampler.start()
    sampler.stop()
    (sid,) = sampler.ring.pending()
    meta_raw, jpeg = sampler.ring.load(sid) or (b"", b"")
    meta = json.loads(meta_raw)
    assert sid == "000001-000000000000" and meta["reason"] == "shadow_disagreement"
    assert meta["label"] == "box" and meta["shadow"]["label"] == "tube"
    assert meta["shadow"]["model"]["version"] == "v-b"
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None and image.shape == (48, 64, 3) and image[:, :, 2].mean() > 150


def test_a_disagreement_is_not_queued_when_the_strategy_is_off(tmp_path: Path) -> None:
    cfg = SamplesConfig(shadow_disagreement=False, per_minute=None, per_hour=None, per_day=None)
    sampler = FrameSampler(cfg, SampleRing(tmp_path, 1 << 20), policy_for(cfg, None), device_id="r1")
    ref = ModelRef(name="shapes", version="1", sha256="ab" * 32)
    d = SampleDecision("000001-000000000000", "box", 0.99, None, None)
    assert not sampler.offer_disagreement(
        Frame(0, 0.0, _image(0)), d, model=ref, shadow=ShadowOutput(ref, "tube", 0.9)
    )


def test_a_frame_already_sampled_is_not_taken_again_for_a_disagreement(tmp_path: Path) -> None:
    cfg = SamplesConfig(low_confidence_max=1.0, per_minute=None, per_hour=None, per_day=None)
    sampler = FrameSampler(cfg, SampleRing(tmp_path, 1 << 20), policy_for(cfg, None), device_id="r1")
    ref = ModelRef(name="shapes", version="1", sha256="ab" * 32)
    d0 = SampleDecision("000001-000000000000", "box", 0.5, None, None)
    assert sampler.offer(Frame(0, 0.0, _image(0)), d0, model=ref)  # low_confidence took it
    assert sampler.offer_disagreement(
        Frame(0, 0.0, _image(0)), d0, model=ref, shadow=ShadowOutput(ref, "tube", 0.9)
    )
    d1 = SampleDecision("000001-000000000001", "box", 0.5, None, None)
    assert sampler.offer(Frame(1, 0.0, _image(1)), d1, model=ref)
    assert sampler.taken == 2  # d0 once, d1 once


@pytest.mark.integration
def test_probations_reverse_shadow_disagreements_arrive_as_samples(
    tmp_path: Path, mosquitto: Any, edge_agent_process: Callable[..., Any]
) -> None:
    """A real agent, Mosquitto and ``fleet serve``: a side-loaded release whose labels are rotated
    disagrees with the model it replaced on every frame; those frames come back as samples."""
    from tests.mqtt import wait_until
    from tests.shadow_support import ShadowLine

    line = ShadowLine(tmp_path, mosquitto, edge_agent_process, devices=1)
    line.start()
    try:
        dev = line.device_ids[0]
        wait_until(
            lambda: line.devices().get(dev, {}).get("active_model") == "shapes@1.0.0", 60, what="online"
        )
        line.release_variant("1.1.0", "rotated")
        out = line.edge_agent_cli(
            dev, "install", str(line.server.data_dir / "repo"), "--model", "shapes@1.1.0"
        )
        assert out.returncode == 0, out.stderr

        def disagreements() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = line.api("GET", "/samples", params={"device": dev})["samples"]
            return [r for r in rows if r["reason"] == "shadow_disagreement"]

        wait_until(lambda: disagreements(), 60, what="a shadow_disagreement sample at the server")
        sample = line.api("GET", f"/samples/{disagreements()[0]['id']}")
        assert sample["model"]["version"] == "1.1.0" and sample["label"] == "square-80"
        shadow = sample["meta"]["shadow"]
        assert shadow["label"] == "circle-80" and shadow["model"]["version"] == "1.0.0"
    finally:
        line.stop()
