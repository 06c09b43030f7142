"""Tiny, fully-specified ONNX bundles for tests and benchmarks — no torch, no training.

``make_bundle`` writes a real bundle (manifest.json, model.onnx, selftest.npz)
whose model is a few ONNX nodes: the channel means of the input go through one
linear layer to the class logits and a second to ``dimensions_mm``. ``behaviour``
chooses what the model does on any frame, so update, probation and rollback
tests can ask for a confident, an unconfident or a NaN-producing release
without training anything.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np

from edge_agent.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    SELFTEST_FILE,
    AgreementGates,
    ConfidenceBaseline,
    InputSpec,
    Manifest,
    OutputSpec,
    ProbationGates,
    ResizeSpec,
)
from lineside_common.atomic import replace_dir_durably

Behaviour = Literal["confident", "unconfident", "nan"]


def _model_bytes(
    num_labels: int, size: tuple[int, int], behaviour: Behaviour, seed: int, silent: int = 0
) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w, h = size
    # The last ``silent`` labels never win (a release adding package types the line has not
    # started sending yet); the others get the same weights as a model without them.
    weight = rng.normal(0, 0.5, size=(3, num_labels - silent)).astype(np.float32)
    weight = np.hstack([weight, np.zeros((3, silent), dtype=np.float32)])
    bias = np.zeros(num_labels, dtype=np.float32)
    if silent:
        bias[num_labels - silent :] = -20.0
    if behaviour == "confident":
        bias[0] = 12.0  # label 0 wins by a wide margin whatever the frame
    elif behaviour == "unconfident":
        weight *= 0.0  # uniform probabilities: 1 / num_labels
    scale = np.array([np.nan if behaviour == "nan" else 1.0], dtype=np.float32)
    dims_w = np.full((3, 2), 10.0, dtype=np.float32)
    dims_b = np.array([80.0, 80.0], dtype=np.float32)
    inits = [
        numpy_helper.from_array(weight, "W"),
        numpy_helper.from_array(bias, "B"),
        numpy_helper.from_array(scale, "S"),
        numpy_helper.from_array(dims_w, "DW"),
        numpy_helper.from_array(dims_b, "DB"),
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["image", "axes"], ["m"], keepdims=0),
        helper.make_node("MatMul", ["m", "W"], ["z"]),
        helper.make_node("Add", ["z", "B"], ["zb"]),
        helper.make_node("Mul", ["zb", "S"], ["logits"]),
        helper.make_node("MatMul", ["m", "DW"], ["dz"]),
        helper.make_node("Add", ["dz", "DB"], ["dimensions_mm"]),
    ]
    graph = helper.make_graph(
        nodes,
        "synthetic",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, h, w])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, num_labels]),
            helper.make_tensor_value_info("dimensions_mm", TensorProto.FLOAT, [1, 2]),
        ],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="lineside-synthetic"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def make_bundle(
    out_dir: Path | str,
    *,
    name: str = "tiny",
    version: str = "1.0.0",
    labels: tuple[str, ...] = ("circle-80", "square-80", "triangle-100"),
    size: tuple[int, int] = (32, 32),
    behaviour: Behaviour = "confident",
    seed: int = 0,
    device_classes: tuple[str, ...] = ("*",),
    min_agent_version: str = "0.1.0",
    probation: ProbationGates | None = None,
    letterbox: bool = False,
    agreement: AgreementGates | None = None,
    new_labels_silent: bool = False,
) -> Path:
    """Write a complete bundle to ``out_dir`` (replaced if present) and return its path.

    ``letterbox`` makes a schema-2 manifest (resize mode letterbox): for the contract tests.
    ``new_labels_silent``: labels past the first three never win (new package types not on the
    line yet), and the first three answer exactly as a three-label bundle of the same seed.
    """
    import onnxruntime as ort

    out = Path(out_dir)
    model = _model_bytes(
        len(labels), size, behaviour, seed, silent=max(0, len(labels) - 3) if new_labels_silent else 0
    )
    spec = InputSpec(
        name="image",
        shape=[1, 3, size[1], size[0]],
        dtype="float32",
        layout="NCHW",
        color_order="RGB",
        resize=ResizeSpec(
            width=size[0], height=size[1], interpolation="area", mode="letterbox" if letterbox else "stretch"
        ),
    )
    confident = behaviour == "confident"
    manifest = Manifest(
        schema_version=2 if letterbox else 1,
        name=name,
        version=version,
        created=datetime(2026, 1, 1, tzinfo=UTC),
        description=f"synthetic {behaviour} test model",
        labels=list(labels),
        input=spec,
        outputs=OutputSpec(class_output="logits", class_kind="logits", dimensions_output="dimensions_mm"),
        confidence_baseline=ConfidenceBaseline(
            mean=0.99 if confident else 0.5,
            p05=0.98 if confident else 0.4,
            p50=0.99 if confident else 0.5,
            low_confidence_rate=0.0 if confident else 1.0,
        ),
        probation=probation or ProbationGates(window_s=5.0, min_frames=10),
        agreement=agreement or AgreementGates(),
        device_classes=list(device_classes),
        min_agent_version=min_agent_version,
    )
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    inputs = np.random.default_rng(seed + 1).random((4, 3, size[1], size[0]), dtype=np.float32)
    outs: dict[str, list[np.ndarray]] = {"logits": [], "dimensions_mm": []}
    for x in inputs:
        logits, dims = session.run(["logits", "dimensions_mm"], {"image": x[None]})
        outs["logits"].append(logits[0])
        outs["dimensions_mm"].append(dims[0])

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / MODEL_FILE).write_bytes(model)
        (tmp / MANIFEST_FILE).write_text(manifest.to_json())
        with open(tmp / SELFTEST_FILE, "wb") as f:
            arrays = {"inputs": inputs, **{f"out_{k}": np.stack(v) for k, v in outs.items()}}
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy stubs mistype **kwds
        replace_dir_durably(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
