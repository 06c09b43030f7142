"""A classifier our pipeline did not train: built here from fixed weights with onnx.helper.

``colour_classifier()`` is an NHWC RGB model (what many frameworks export) that averages
each channel and scores ``red``, ``green``, ``blue`` with a fixed linear layer, so its right
answer for a frame is known without running it: the channel with the largest mean.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

LABELS = ["red", "green", "blue"]
SIZE = 32  # the model's input is 1 x 32 x 32 x 3 (NHWC), float32, RGB in [0, 1]
# BGR pixel values that are unmistakably one colour (with some texture, so frames differ).
COLOURS_BGR = {"red": (30, 40, 220), "green": (50, 200, 60), "blue": (210, 60, 40), "purple": (200, 40, 190)}


def colour_classifier() -> bytes:
    """The ONNX bytes (opset 13, IR 8: loads in any ONNX Runtime since 1.10)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = (np.eye(3, dtype=np.float32) * 8.0) - 2.0  # logits: 8 * channel mean - 2 * sum
    bias = np.zeros(3, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["means"], axes=[1, 2], keepdims=0),
            helper.make_node("Gemm", ["means", "W", "b"], ["scores"]),
        ],
        "colour-classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 3])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def colour_frame(label: str, seed: int, size: tuple[int, int] = (96, 64)) -> np.ndarray:
    """A BGR frame (width x height) of ``label``'s colour with noise: its known answer is ``label``."""
    rng = np.random.default_rng(seed)
    base = np.array(COLOURS_BGR[label], dtype=np.int16)
    noise = rng.integers(-25, 26, size=(size[1], size[0], 3), dtype=np.int16)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_frames(directory: Path, labels: list[str], *, per_label_dirs: bool = False, seed: int = 0) -> None:
    """One PNG per entry of ``labels`` (in that order: file names sort as written)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, label in enumerate(labels):
        target = directory / label if per_label_dirs else directory
        target.mkdir(exist_ok=True)
        assert cv2.imwrite(str(target / f"{i:04d}-{label}.png"), colour_frame(label, seed + i))
