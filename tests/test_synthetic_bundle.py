"""The synthetic test bundles do what they claim, through the agent's own pre/postprocessing."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge_agent.manifest import load_manifest
from edge_agent.preprocess import Postprocessor, Preprocessor
from models.synthetic import make_bundle

pytest.importorskip("onnx")


def _predict(bundle: Path, frame: np.ndarray):
    manifest = load_manifest(bundle)
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    pre, post = Preprocessor(manifest.input), Postprocessor(manifest.outputs, names)
    return post(session.run(names, {manifest.input.name: pre(frame)}))


@pytest.mark.parametrize("behaviour", ["confident", "unconfident", "nan"])
def test_behaviours(tmp_path: Path, behaviour: str) -> None:
    bundle = make_bundle(tmp_path / "b", behaviour=behaviour)  # type: ignore[arg-type]
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    pred = _predict(bundle, frame)
    if behaviour == "confident":
        assert pred.finite and pred.confidence > 0.99 and pred.label_index == 0
    elif behaviour == "unconfident":
        assert pred.finite and pred.confidence == pytest.approx(1 / 3, abs=1e-4)
    else:
        assert not pred.finite and pred.confidence == 0.0


def test_selftest_reproduces(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", seed=3)
    data = np.load(bundle / "selftest.npz")
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    for i, x in enumerate(data["inputs"]):
        (logits,) = session.run(["logits"], {"image": x[None]})
        np.testing.assert_allclose(logits[0], data["out_logits"][i], atol=1e-5)
