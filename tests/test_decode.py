"""Reduced JPEG decoding: only for a model validated with it, every consumer served, accuracy kept."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.agent import Agent, Decision
from edge_agent.decode import accepts, decode_jpeg, serving_decode
from edge_agent.frames import Frame
from edge_agent.manifest import parse_manifest
from edge_agent.recording_source import RecordingSource
from edge_agent.runtime import ModelRunner
from edge_agent.spool import Spool
from lineside_common.errors import ManifestError
from tests.agent_fakes import SpoolDrainingPublisher, agent_config
from tests.fault_support import record
from tests.mqtt import wait_until

REPO = Path(__file__).resolve().parent.parent
SHAPES = REPO / "models" / "releases" / "shapes-1.0.0"


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record(tmp_path_factory.mktemp("rec") / "dec", frames=40, seed=21, fps=30)


@pytest.fixture(scope="module")
def validated_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """shapes-1.0.0 declaring the 1/4-scale greyscale decode (tests/test_decode.py checks its accuracy)."""
    bundle = tmp_path_factory.mktemp("b") / "shapes-grey4"
    shutil.copytree(SHAPES, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["input"]["validated_decodes"] = ["gray_reduced_4"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def test_the_cheapest_decode_every_consumer_accepts() -> None:
    assert serving_decode([["gray_reduced_4"]]) == "gray_reduced_4"
    assert serving_decode([["gray_reduced_2", "gray_reduced_4"]]) == "gray_reduced_4"
    # One consumer without a reduced path (a shadow model, a sampler keeping full frames): colour.
    assert serving_decode([["gray_reduced_4"], []]) == "color"
    assert serving_decode([]) == "color"
    assert accepts([], "color") and not accepts([], "gray_reduced_4")


def test_reduced_decode_needs_a_grey_model_and_old_manifests_keep_colour() -> None:
    raw = json.loads((SHAPES / "manifest.json").read_text())
    assert parse_manifest(json.dumps(raw).encode()).input.validated_decodes == []
    raw["input"].update(
        validated_decodes=["gray_reduced_4"],
        color_order="RGB",
        shape=[1, 3, 88, 128],
        mean=[0.5] * 3,
        std=[0.25] * 3,
    )
    with pytest.raises(ManifestError):
        parse_manifest(json.dumps(raw).encode())


def test_recording_source_decodes_grey_at_quarter_scale_and_keeps_the_jpeg(recording: Path) -> None:
    with RecordingSource(recording, realtime=False) as src:
        full = src.read()
        src.set_decode("gray_reduced_4")
        reduced = src.read()
    assert full is not None and reduced is not None
    assert full.image.shape == (480, 640, 3) and full.decode == "color" and full.encoded is None
    assert reduced.image.shape == (120, 160) and reduced.decode == "gray_reduced_4"
    assert reduced.encoded is not None and decode_jpeg(reduced.encoded, "color") is not None


def _run(tmp_path: Path, bundle: Path, source: object, frames: int) -> tuple[Agent, list[Decision]]:
    config = agent_config(tmp_path / "state")
    spool = Spool(config.state_dir / "spool")
    decisions: list[Decision] = []
    agent = Agent(
        config, source, SpoolDrainingPublisher(spool), ModelRunner.load(bundle), spool=spool,  # type: ignore[arg-type]
        on_decision=decisions.append,
    )  # fmt: skip
    agent.start()
    try:
        wait_until(lambda: len(decisions) >= frames, 30, what="frames decided")
    finally:
        agent.stop()
    return agent, decisions


def test_agent_decodes_reduced_for_a_validated_model_with_the_same_labels(
    tmp_path: Path, recording: Path, validated_bundle: Path
) -> None:
    reduced_src = RecordingSource(recording, realtime=False)
    _, reduced = _run(tmp_path / "a", validated_bundle, reduced_src, 40)
    assert reduced_src.decode == "gray_reduced_4"
    colour_src = RecordingSource(recording, realtime=False)
    _, colour = _run(tmp_path / "b", SHAPES, colour_src, 40)
    assert colour_src.decode == "color"  # a model without the declaration: full colour
    truth = [
        json.loads(line)["package"] for line in (recording / "labels.jsonl").read_text().splitlines() if line
    ]
    right = {
        name: sum(d.label == truth[d.frame_id] for d in decisions)
        for name, decisions in (("reduced", reduced), ("colour", colour))
    }
    # Accuracy unchanged (at most one frame of 40 either way; 299/300 vs 299/300 on a longer run),
    # and the two paths agree on nearly every frame.
    assert abs(right["reduced"] - right["colour"]) <= 1 and right["colour"] >= 38
    assert sum(a.label == b.label for a, b in zip(reduced, colour, strict=True)) >= 38


class _OneFrame:
    """A frame decoded reduced (as before a swap) whose grey pixels are blank: only its JPEG is real."""

    fps = None
    description = "one-frame"

    def __init__(self, jpeg: bytes) -> None:
        self.jpeg = jpeg
        self.sent = threading.Event()

    def read(self) -> Frame | None:
        if self.sent.is_set():
            return None
        self.sent.set()
        return Frame(0, 0.0, np.zeros((120, 160), np.uint8), decode="gray_reduced_4", encoded=self.jpeg)

    def reopen(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_reduced_frame_reaching_a_model_not_validated_for_it_is_decoded_again_in_colour(
    tmp_path: Path, recording: Path
) -> None:
    with RecordingSource(recording, realtime=False) as src:
        src.set_decode("gray_reduced_4")
        frame = src.read()
    assert frame is not None and frame.encoded is not None
    runner = ModelRunner.load(SHAPES)
    expected = runner.predict(cv2.imdecode(np.frombuffer(frame.encoded, np.uint8), cv2.IMREAD_COLOR))
    _, decisions = _run(tmp_path, SHAPES, _OneFrame(frame.encoded), 1)
    assert decisions[0].confidence == pytest.approx(expected.confidence, abs=1e-6)


def test_evaluate_runs_the_declared_decode_path(validated_bundle: Path) -> None:
    from models.bundle import load_bundle
    from models.data import rendered_frames
    from models.evaluate import evaluate_bundle

    bundle = load_bundle(validated_bundle)
    frames = list(rendered_frames(bundle.manifest.labels, 9000, 24))
    reduced = evaluate_bundle(bundle, frames, decode="gray_reduced_4")
    colour = evaluate_bundle(bundle, frames, decode="color")
    assert reduced["decode"] == "gray_reduced_4" and colour["decode"] == "color"
    assert abs(reduced["accuracy"] - colour["accuracy"]) <= 1 / 24
