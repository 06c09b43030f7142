"""Fine-tuning's starting point (models/init_weights.py) and field-data mixing (models/field_data.py).

Needs torch; no rendering and no training run: a randomly initialised net with non-trivial
BatchNorm statistics is exported, read back from its ONNX initializers, and must compute the same.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from tests.pg_support import require_module

require_module("torch", "fine-tuning tests need the train extra")
require_module("onnxscript", "the dynamo ONNX exporter needs it")

import torch  # noqa: E402

from edge_agent.manifest import InputSpec, Manifest, OutputSpec, ResizeSpec  # noqa: E402
from models import init_weights  # noqa: E402
from models.bundle import run_batch, write_bundle  # noqa: E402
from models.field_data import renders_per_label  # noqa: E402
from models.init_weights import InitError  # noqa: E402
from models.metrics import confidence_baseline  # noqa: E402
from models.net import ExportedShapeNet, ShapeNet  # noqa: E402

pytestmark = [pytest.mark.train]
LABELS = ["circle-80", "square-80", "triangle-100"]
SHAPE = [1, 1, 24, 32]


def _net(labels: list[str], width: int = 4, seed: int = 0) -> ShapeNet:
    torch.manual_seed(seed)
    net = ShapeNet(1, len(labels), width=width)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ShapeNet, np.ndarray]:
    from models.export import export_onnx

    tmp = tmp_path_factory.mktemp("init")
    net = _net(LABELS)
    module = ExportedShapeNet(net, 2.0, [90.0, 80.0], [20.0, 15.0]).eval()
    model = export_onnx(module, SHAPE)
    spec = InputSpec(
        name="image", shape=SHAPE, dtype="float32", layout="NCHW", color_order="GRAY",
        resize=ResizeSpec(width=32, height=24), mean=[0.5], std=[0.25],
    )  # fmt: skip
    manifest = Manifest(
        name="tiny", version="1.0.0", labels=LABELS, input=spec, created=datetime.now(UTC).replace(microsecond=0),
        outputs=OutputSpec(class_output="logits", class_kind="logits", dimensions_output="dimensions_mm"),
        confidence_baseline=confidence_baseline(np.linspace(0.5, 1.0, 50), 0.7),
    )  # fmt: skip
    x = np.random.default_rng(1).normal(size=(6, *SHAPE[1:])).astype(np.float32)
    bundle = write_bundle(tmp / "work" / "bundle", manifest, model, x[:2])
    return bundle, net, x


def test_bundle_onnx_weights_compute_the_same(exported: tuple[Path, ShapeNet, np.ndarray]) -> None:
    bundle, _, x = exported
    init = init_weights.resolve(bundle)
    assert init.kind == "bundle_onnx" and init.frozen_batchnorm and init.labels == LABELS
    assert init.dims_mean == [90.0, 80.0] and init.dims_std == [20.0, 15.0]
    net = ShapeNet(1, 3, width=4)
    head = init_weights.apply(init, net, LABELS)
    assert head == {"kept_labels": LABELS, "new_labels": [], "dropped_labels": []}
    again = ExportedShapeNet(net.eval(), 2.0, init.dims_mean, init.dims_std).eval()
    with torch.no_grad():
        logits, dims = again(torch.from_numpy(x))
    onnx_out = run_batch((bundle / "model.onnx").read_bytes(), x)
    np.testing.assert_allclose(logits.numpy(), onnx_out["logits"], atol=1e-4)
    np.testing.assert_allclose(dims.numpy(), onnx_out["dimensions_mm"], atol=1e-3)


def test_new_labels_grow_the_head_and_old_rows_keep_their_weights(
    exported: tuple[Path, ShapeNet, np.ndarray],
) -> None:
    bundle, _, x = exported
    init = init_weights.resolve(bundle)
    grown = ["square-80", "hexagon-100", "circle-80"]  # reordered, one new, one dropped
    net = ShapeNet(1, 3, width=4)
    fresh_row = net.classifier.weight[1].detach().clone()
    head = init_weights.apply(init, net, grown)
    assert head == {
        "kept_labels": ["square-80", "circle-80"],
        "new_labels": ["hexagon-100"],
        "dropped_labels": ["triangle-100"],
    }
    old = ShapeNet(1, 3, width=4)
    init_weights.apply(init, old, LABELS)
    with torch.no_grad():
        new_logits, _ = net.eval()(torch.from_numpy(x))
        old_logits, _ = old.eval()(torch.from_numpy(x))
    np.testing.assert_allclose(new_logits[:, 0].numpy(), old_logits[:, 1].numpy(), atol=1e-6)
    np.testing.assert_allclose(new_logits[:, 2].numpy(), old_logits[:, 0].numpy(), atol=1e-6)
    assert torch.equal(net.classifier.weight[1], fresh_row)


def test_another_width_or_a_foreign_bundle_is_refused(
    exported: tuple[Path, ShapeNet, np.ndarray], tmp_path: Path
) -> None:
    bundle, _, _ = exported
    with pytest.raises(InitError) as err:
        init_weights.apply(init_weights.resolve(bundle), ShapeNet(1, 3, width=8), LABELS)
    assert err.value.reason == "architecture_mismatch"
    from models.synthetic import make_bundle

    foreign = make_bundle(tmp_path / "foreign")
    with pytest.raises(InitError) as err:
        init_weights.resolve(foreign)
    assert err.value.reason == "architecture_mismatch"
    with pytest.raises(InitError) as err:
        init_weights.resolve(tmp_path / "nothing")
    assert err.value.reason == "missing"


def test_a_checkpoint_beside_the_bundle_is_preferred_only_when_it_matches(
    exported: tuple[Path, ShapeNet, np.ndarray],
) -> None:
    import hashlib

    bundle, net, _ = exported
    ckpt = bundle.parent / init_weights.CHECKPOINT_FILE
    sha = hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest()
    try:
        init_weights.save_checkpoint(
            ckpt, net, labels=LABELS, dims_mean=[90, 80], dims_std=[20, 15], model_sha256=sha
        )
        init = init_weights.resolve(bundle)
        assert init.kind == "checkpoint" and not init.frozen_batchnorm
        restored = ShapeNet(1, 3, width=4)
        init_weights.apply(init, restored, LABELS)
        for (k, a), (_, b) in zip(net.state_dict().items(), restored.state_dict().items(), strict=True):
            assert torch.equal(a, b), k
        init_weights.save_checkpoint(
            ckpt, net, labels=LABELS, dims_mean=[90, 80], dims_std=[20, 15], model_sha256="0" * 64
        )
        assert init_weights.resolve(bundle).kind == "bundle_onnx"
        ckpt.write_bytes(b"not a checkpoint")
        with pytest.raises(InitError) as err:
            init_weights.resolve(ckpt)
        assert err.value.reason == "unreadable"
    finally:
        ckpt.unlink(missing_ok=True)


def test_field_frames_without_dimensions_train_finite_weights() -> None:
    from models.config import TrainConfig
    from models.data import Dataset
    from models.train import _train_net

    config = TrainConfig.model_validate(
        {
            "name": "t",
            "version": "0.0.1",
            "labels": LABELS,
            "train": {"epochs": 1, "batch_size": 8, "width": 4, "threads": 1},
        }
    )
    rng = np.random.default_rng(0)
    n = 24
    dims = rng.uniform(60, 120, size=(n, 2)).astype(np.float32)
    dims[::2] = np.nan  # half the frames are field images: no measured dimensions
    ds = Dataset(rng.normal(size=(n, *SHAPE[1:])).astype(np.float32), np.arange(n) % 3, dims)
    net, mean, std = _train_net(config, ds, None)
    assert np.isfinite(mean).all() and np.isfinite(std).all()
    assert all(torch.isfinite(p).all() for p in net.parameters())
    all_field = Dataset(ds.x, ds.y, np.full_like(dims, np.nan))
    net, mean, std = _train_net(config, all_field, None)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert list(mean) == [0.0, 0.0] and list(std) == [1.0, 1.0]


def test_render_share() -> None:
    assert renders_per_label(0, 4, 0.5, 900) == 900  # no field frames: the config's renders
    assert renders_per_label(100, 4, None, 900) == 900
    assert renders_per_label(100, 4, 0.0, 900) == 0
    assert renders_per_label(100, 4, 0.5, 900) == 25  # as many renders as field frames
    assert renders_per_label(70, 4, 0.3, 900) == 8  # 30 renders / 4 labels, rounded up


def test_a_fine_tune_that_adds_labels_declares_them_as_intended_changes() -> None:
    from types import SimpleNamespace

    from models.train import intended_agreement

    grown = SimpleNamespace(head={"kept_labels": ["circle-80"], "new_labels": ["hexagon-100", "circle-100"]})
    assert intended_agreement(grown).intended_changes == {"*": ["hexagon-100", "circle-100"]}  # type: ignore[arg-type]
    same = SimpleNamespace(head={"kept_labels": ["circle-80"], "new_labels": []})
    assert intended_agreement(same).intended_changes == {}  # type: ignore[arg-type]
    assert intended_agreement(None).intended_changes == {}
