"""Deliberately faulty releases of a real bundle, for the demo and the probation tests (no torch).

Each builder copies a bundle, edits its ONNX graph with ``onnx.helper`` and
writes a validly-formed bundle under a new version: the manifest validates and
``selftest.npz`` is regenerated from the edited model, so the fault passes every
install-time check and can only be caught in probation, as on a real line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_agent.manifest import Manifest
from models.bundle import SELFTEST_COUNT, load_bundle, write_bundle


def _rewire_outputs(model_bytes: bytes, names: list[str], op: str, constant: float) -> bytes:
    """Replace each output ``name`` by ``op(name_raw, constant)`` (a scalar initializer)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    outputs = {o.name for o in graph.output}
    for name in names:
        if name not in outputs:
            raise ValueError(f"model has no output {name!r}")
        raw, const = f"{name}__raw", f"{name}__faulty_constant"
        for node in graph.node:
            node.output[:] = [raw if o == name else o for o in node.output]
            # An output may also feed other nodes (it never does in our graphs, but stay correct).
            node.input[:] = [raw if i == name else i for i in node.input]
        graph.initializer.append(numpy_helper.from_array(np.array(constant, dtype=np.float32), const))
        graph.node.append(helper.make_node(op, [raw, const], [name], name=f"faulty_{op.lower()}_{name}"))
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _write_variant(
    bundle_dir: Path | str, out_dir: Path | str, version: str, model: bytes, note: str, force: bool
) -> Path:
    src = load_bundle(bundle_dir)
    manifest = Manifest.model_validate(
        {
            **src.manifest.model_dump(),
            "version": version,
            "description": f"{src.manifest.description} [FAULTY: {note}]".strip(),
            "extra": {**src.manifest.extra, "faulty": note, "derived_from": src.manifest.ref},
        }
    )
    return write_bundle(out_dir, manifest, model, src.selftest["inputs"][:SELFTEST_COUNT], force=force)


def make_unconfident(
    bundle_dir: Path | str,
    out_dir: Path | str,
    *,
    version: str,
    temperature: float = 50.0,
    force: bool = False,
) -> Path:
    """A copy whose class logits are divided by ``temperature``: right answers, near-uniform confidence."""
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    src = load_bundle(bundle_dir)
    if src.manifest.outputs.class_kind != "logits":
        raise ValueError("make_unconfident needs a model whose class output is logits")
    model = _rewire_outputs(src.model, [src.manifest.outputs.class_output], "Div", temperature)
    return _write_variant(bundle_dir, out_dir, version, model, f"logits divided by {temperature:g}", force)


def make_nan(bundle_dir: Path | str, out_dir: Path | str, *, version: str, force: bool = False) -> Path:
    """A copy whose every output is NaN (the selftest records the NaNs, so only probation catches it)."""
    src = load_bundle(bundle_dir)
    names = [src.manifest.outputs.class_output]
    if src.manifest.outputs.dimensions_output:
        names.append(src.manifest.outputs.dimensions_output)
    model = _rewire_outputs(src.model, names, "Mul", float("nan"))
    return _write_variant(bundle_dir, out_dir, version, model, "outputs are NaN", force)


def make_rotated_labels(
    bundle_dir: Path | str, out_dir: Path | str, *, version: str, shift: int = 1, force: bool = False
) -> Path:
    """A confidently wrong copy: the same model, its manifest's labels rotated by ``shift``.

    Signatures, self-test and confidence are exactly those of a good release — only the names
    are wrong, so every health gate passes. Only a comparison with the serving model (shadow,
    reverse shadow in probation) or field truth catches it.
    """
    src = load_bundle(bundle_dir)
    labels = list(src.manifest.labels)
    k = shift % len(labels)
    if k == 0:
        raise ValueError("a rotation by a multiple of the label count changes nothing")
    rotated = labels[k:] + labels[:k]
    manifest = Manifest.model_validate(
        {
            **src.manifest.model_dump(),
            "version": version,
            "labels": rotated,
            "description": f"{src.manifest.description} [FAULTY: labels rotated by {k}]".strip(),
            "extra": {
                **src.manifest.extra,
                "faulty": f"labels rotated by {k}",
                "derived_from": src.manifest.ref,
            },
        }
    )
    return write_bundle(out_dir, manifest, src.model, src.selftest["inputs"][:SELFTEST_COUNT], force=force)
