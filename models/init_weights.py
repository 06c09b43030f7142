"""Where fine-tuning starts: a training checkpoint, or the ONNX initializers of a bundle of our own net.

Bundles carry only ONNX (what robots run). A pipeline keeps each release's training checkpoint
beside its bundle, ``WORKDIR/checkpoint.pt`` (unsigned, never in a bundle, never shipped); a bundle
directory whose sibling ``checkpoint.pt`` names the bundle's exact ``model.onnx`` (SHA-256) is
loaded from that checkpoint. Any other bundle is read from its ONNX initializers, which works only
for a bundle exported by :class:`models.net.ExportedShapeNet` (names ``net.features.*``,
``net.classifier.*``, ``net.dims.*``, ``dims_mean``, ``dims_std``): anything else is refused with
reason ``architecture_mismatch``. The exporter folds each BatchNorm into its conv, so such weights
come with identity BatchNorms that :func:`models.train` keeps frozen (eval mode) while fine-tuning —
re-estimating batch statistics would change the function the weights were trained for.

New labels grow the class head: rows of labels the source knew are copied by name, new rows keep
their fresh initialisation, rows of labels no longer wanted are dropped.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lineside_common.atomic import fsync_dir
from lineside_common.errors import LocalError

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
_BN_EPS = 1e-5  # torch.nn.BatchNorm2d's default


class InitError(LocalError):
    """Initial weights that cannot be used; ``reason``: ``missing`` | ``architecture_mismatch`` | ``unreadable``."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class InitialWeights:
    """A full ShapeNet state dict (numpy arrays) and what it was trained with."""

    state: dict[str, np.ndarray]
    labels: list[str]
    dims_mean: list[float]
    dims_std: list[float]
    kind: str  # "checkpoint" | "bundle_onnx"
    source: str
    source_sha256: str  # of the checkpoint file or the bundle's model.onnx
    frozen_batchnorm: bool = False
    model_sha256: str | None = None  # a checkpoint: the model.onnx it was exported as
    head: dict[str, Any] = field(default_factory=dict)  # filled by apply(): kept/new/dropped labels

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "sha256": self.source_sha256,
            "labels": self.labels,
            "frozen_batchnorm": self.frozen_batchnorm,
            **self.head,
        }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resolve(source: Path | str) -> InitialWeights:
    """Load a checkpoint file, or a bundle directory (its sibling checkpoint when it matches, else ONNX)."""
    p = Path(source)
    if p.is_file():
        return _load_checkpoint(p)
    if not (p / "model.onnx").is_file():
        raise InitError(f"init_from {p}: neither a checkpoint file nor a bundle directory", reason="missing")
    model_sha = _sha256(p / "model.onnx")
    sibling = p.parent / CHECKPOINT_FILE
    if sibling.is_file():
        ckpt = _load_checkpoint(sibling)
        if ckpt.model_sha256 == model_sha:
            return ckpt
    return _load_bundle(p, model_sha)


def _load_checkpoint(path: Path) -> InitialWeights:
    import torch

    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle/runtime errors of many kinds
        raise InitError(f"cannot read checkpoint {path}: {exc}", reason="unreadable") from exc
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        raise InitError(f"{path} is not a Lineside training checkpoint", reason="unreadable")
    return InitialWeights(
        state={k: v.numpy() for k, v in raw["state_dict"].items()},
        labels=list(raw["labels"]),
        dims_mean=list(raw["dims_mean"]),
        dims_std=list(raw["dims_std"]),
        kind="checkpoint",
        source=str(path),
        source_sha256=_sha256(path),
        model_sha256=raw.get("model_sha256"),
    )


def _load_bundle(bundle: Path, model_sha: str) -> InitialWeights:
    import onnx
    from onnx import numpy_helper

    from edge_agent.manifest import load_manifest

    manifest = load_manifest(bundle)
    model = onnx.load(str(bundle / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    needed = ["net.classifier.weight", "net.classifier.bias", "dims_mean", "dims_std"]
    missing = [n for n in needed if n not in inits]
    convs = sorted(n for n in inits if n.startswith("net.features.") and n.endswith(".0.weight"))
    if missing or not convs:
        raise InitError(
            f"init_from {bundle}: not a bundle of our network (no {missing or 'conv weights'} among its "
            "ONNX initializers); give a checkpoint instead",
            reason="architecture_mismatch",
        )
    state: dict[str, np.ndarray] = {}
    frozen = False
    for name, arr in inits.items():
        if not name.startswith("net."):
            continue
        key = name[4:]
        if key.endswith(".0.weight_bias"):
            # BatchNorm folded into the conv: an identity BN (running var 1 - eps) with the folded bias.
            prefix = key[: -len(".0.weight_bias")]
            state[f"{prefix}.1.weight"] = np.ones_like(arr)
            state[f"{prefix}.1.bias"] = arr
            state[f"{prefix}.1.running_mean"] = np.zeros_like(arr)
            state[f"{prefix}.1.running_var"] = np.full_like(arr, 1.0 - _BN_EPS)
            state[f"{prefix}.1.num_batches_tracked"] = np.array(0, dtype=np.int64)
            frozen = True
        else:
            state[key] = arr
    return InitialWeights(
        state=state,
        labels=list(manifest.labels),
        dims_mean=[float(v) for v in inits["dims_mean"]],
        dims_std=[float(v) for v in inits["dims_std"]],
        kind="bundle_onnx",
        source=str(bundle),
        source_sha256=model_sha,
        frozen_batchnorm=frozen,
    )


def apply(init: InitialWeights, net: Any, labels: Sequence[str]) -> dict[str, Any]:
    """Load ``init`` into ``net`` (a fresh ShapeNet for ``labels``), growing/shrinking the class head.

    InitError ``architecture_mismatch`` when any other tensor's shape differs (another width, input
    channel count or network). Returns what happened to the head.
    """
    import torch

    target = net.state_dict()
    for key, value in target.items():
        if key.startswith("classifier."):
            continue
        if key not in init.state:
            raise InitError(f"init_from {init.source}: no tensor {key}", reason="architecture_mismatch")
        if tuple(init.state[key].shape) != tuple(value.shape):
            raise InitError(
                f"init_from {init.source}: {key} is {tuple(init.state[key].shape)}, this config's network "
                f"needs {tuple(value.shape)} (check train.width, input size and colour order)",
                reason="architecture_mismatch",
            )
    new_state = {
        k: torch.from_numpy(np.array(init.state[k])) for k in target if not k.startswith("classifier.")
    }
    weight = target["classifier.weight"].clone()
    bias = target["classifier.bias"].clone()
    old_index = {label: i for i, label in enumerate(init.labels)}
    if init.state["classifier.weight"].shape[1] != weight.shape[1]:
        raise InitError(
            f"init_from {init.source}: classifier input width differs", reason="architecture_mismatch"
        )
    kept = []
    for row, label in enumerate(labels):
        if label in old_index:
            weight[row] = torch.from_numpy(np.array(init.state["classifier.weight"][old_index[label]]))
            bias[row] = float(init.state["classifier.bias"][old_index[label]])
            kept.append(label)
    new_state["classifier.weight"] = weight
    new_state["classifier.bias"] = bias
    net.load_state_dict(new_state)
    init.head = {
        "kept_labels": kept,
        "new_labels": [lab for lab in labels if lab not in old_index],
        "dropped_labels": [lab for lab in init.labels if lab not in set(labels)],
    }
    return init.head


def save_checkpoint(
    path: Path | str,
    net: Any,
    *,
    labels: Sequence[str],
    dims_mean: Sequence[float],
    dims_std: Sequence[float],
    model_sha256: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a training checkpoint atomically (temp file, fsync, rename, fsync the directory)."""
    import torch

    out = Path(path)
    buf = io.BytesIO()
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
            "labels": list(labels),
            "dims_mean": [float(v) for v in dims_mean],
            "dims_std": [float(v) for v in dims_std],
            "model_sha256": model_sha256,
            **(extra or {}),
        },
        buf,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
