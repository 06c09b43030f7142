"""Export the trained network to ONE self-contained ONNX file, and prove ONNX Runtime agrees with torch."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from lineside_common.cli import CommandError

log = logging.getLogger(__name__)

OPSET = 18
INPUT_NAME = "image"
CLASS_OUTPUT = "logits"
DIMS_OUTPUT = "dimensions_mm"
# ORT and torch differ in summation order; the logits are O(10), so 1e-3 is far below any decision change.
PARITY_ATOL = 1e-3


def export_onnx(module, input_shape: list[int]) -> bytes:
    """Serialize ``module`` (eval mode; fixed batch-1 input) as a single ONNX model (weights inside)."""
    import onnx
    import torch

    module.eval()
    example = torch.zeros(input_shape, dtype=torch.float32)
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            external_data=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[CLASS_OUTPUT, DIMS_OUTPUT],
            optimize=True,
            verbose=False,
        )
    if program is None:
        raise CommandError("torch.onnx.export returned no program")
    proto = program.model_proto
    proto.producer_name = "lineside-models"
    onnx.checker.check_model(proto)
    return bytes(proto.SerializeToString())


@dataclass(frozen=True)
class ParityReport:
    """How far ONNX Runtime's outputs are from torch's on the same inputs."""

    frames: int
    max_abs_logit_diff: float
    max_abs_dims_diff_mm: float
    argmax_agreement: float

    @property
    def ok(self) -> bool:
        return self.max_abs_logit_diff <= PARITY_ATOL and self.argmax_agreement == 1.0


def parity_check(module, model: bytes, inputs: np.ndarray) -> ParityReport:
    """Compare torch and ONNX Runtime on ``inputs`` (N, C, H, W); CommandError when they disagree."""
    import torch

    from models.bundle import run_batch

    module.eval()
    with torch.no_grad():
        t_logits, t_dims = (t.numpy() for t in module(torch.from_numpy(inputs)))
    ort = run_batch(model, inputs)
    report = ParityReport(
        frames=int(inputs.shape[0]),
        max_abs_logit_diff=float(np.max(np.abs(ort[CLASS_OUTPUT] - t_logits))),
        max_abs_dims_diff_mm=float(np.max(np.abs(ort[DIMS_OUTPUT] - t_dims))),
        argmax_agreement=float(np.mean(ort[CLASS_OUTPUT].argmax(1) == t_logits.argmax(1))),
    )
    log.info("export parity: %s", report)
    if not report.ok:
        raise CommandError(
            f"export check failed: ONNX Runtime vs torch max abs logit diff {report.max_abs_logit_diff:.3g} "
            f"(allowed {PARITY_ATOL}), argmax agreement {report.argmax_agreement:.4f}"
        )
    return report
