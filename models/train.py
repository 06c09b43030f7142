"""Train the package classifier from a config and write a bundle (needs the ``train`` extra).

Steps: render + preprocess the train/validation frames (cached), train the CNN
(seeded, deterministic, ``train.threads`` torch threads), fit a temperature on
the validation logits and fold it into the exported graph, export ONNX, check
ONNX Runtime against torch, evaluate the ONNX model on the validation split,
check the release gates, write the bundle atomically.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.manifest import AgreementGates, Manifest, OutputSpec
from lineside_common.cli import CommandError
from models import metrics as M
from models.bundle import SELFTEST_COUNT, run_batch, write_bundle
from models.config import TrainConfig
from models.data import DEFAULT_CACHE_DIR, Dataset, cached_dataset
from models.export import CLASS_OUTPUT, DIMS_OUTPUT, ParityReport, export_onnx, parity_check
from models.init_weights import InitialWeights

log = logging.getLogger(__name__)

# An update callback: (task, advance, fields) — the CLI turns it into a rich progress bar.
Progress = Callable[[str, int, dict[str, Any]], None]


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced."""

    bundle_dir: Path | None
    manifest: Manifest
    weights_sha256: str
    parity: ParityReport
    validation: dict[str, Any]
    train_seconds: float
    data_seconds: float


def weights_digest(module) -> str:
    """SHA-256 over the state dict (names, shapes and bytes): equal iff the weights are equal."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        arr = tensor.detach().cpu().contiguous().numpy()
        h.update(name.encode())
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


@contextmanager
def _torch_setup(threads: int, seed: int) -> Iterator[None]:
    import torch

    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def fit_temperature(logits: np.ndarray, y: np.ndarray, min_temperature: float = 0.05) -> float:
    """The temperature T >= min_temperature minimising validation NLL of softmax(logits / T).

    Golden-section search on log T over [min_temperature, 20] (the NLL is unimodal in log T).
    """
    z = logits.astype(np.float64)

    def nll(log_t: float) -> float:
        s = z / math.exp(log_t)
        s = s - s.max(axis=1, keepdims=True)
        logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(y)), y].mean())

    lo, hi = math.log(min_temperature), math.log(20.0)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    return math.exp((lo + hi) / 2)


def _selftest_indices(y: np.ndarray, count: int) -> np.ndarray:
    """Golden inputs: the first frame of each class in turn, so every class is covered when possible."""
    picked: list[int] = []
    classes = list(dict.fromkeys(int(c) for c in y))
    while len(picked) < min(count, len(y)):
        for c in classes:
            left = [i for i in np.flatnonzero(y == c) if i not in picked]
            if left and len(picked) < count:
                picked.append(int(left[0]))
    return np.array(picked, dtype=np.int64)


def _train_net(
    config: TrainConfig, train: Dataset, progress: Progress | None, init: InitialWeights | None = None
):
    import torch
    import torch.nn.functional as F

    from models import init_weights
    from models.net import ShapeNet

    p = config.train
    net = ShapeNet(train.x.shape[1], len(config.labels), width=p.width)
    # y == -1: an outlier frame (see DataConfig.outlier_types); NaN dims: a field image (none measured).
    measured = (train.y >= 0) & np.isfinite(train.dims_mm).all(axis=1)
    if init is not None:
        init_weights.apply(init, net, config.labels)
        # Keep the dimension head's scale: it was trained for these.
        dims_mean = np.array(init.dims_mean, dtype=np.float32)
        dims_std = np.array(init.dims_std, dtype=np.float32)
    elif measured.any():
        dims_mean = train.dims_mm[measured].mean(axis=0)
        dims_std = train.dims_mm[measured].std(axis=0) + 1e-6
    else:
        dims_mean, dims_std = np.zeros(2, dtype=np.float32), np.ones(2, dtype=np.float32)
    frozen_bn = init is not None and init.frozen_batchnorm
    x_all = torch.from_numpy(train.x)
    y_all = torch.from_numpy(train.y)
    d_all = torch.from_numpy(np.nan_to_num((train.dims_mm - dims_mean) / dims_std).astype(np.float32))
    m_all = torch.from_numpy(measured)
    n = len(train)
    steps_per_epoch = math.ceil(n / p.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    total = p.epochs * steps_per_epoch
    warmup = max(1, total // 10)

    def lr_factor(step: int) -> float:
        # Linear warm-up, then cosine decay to zero: stable from a cold start, converged at the end.
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    gen = torch.Generator().manual_seed(p.seed)
    for epoch in range(p.epochs):
        net.train()
        if frozen_bn:
            for module in net.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.eval()
        order = torch.randperm(n, generator=gen)
        seen = correct = 0
        loss_sum = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * p.batch_size : (step + 1) * p.batch_size]
            xb, yb, db, mb = x_all[idx], y_all[idx], d_all[idx], m_all[idx]
            if p.flips:
                # Shapes and their unrotated bounding boxes are unchanged by mirroring.
                flip = torch.rand(2, generator=gen)
                if flip[0] < 0.5:
                    xb = torch.flip(xb, dims=(3,))
                if flip[1] < 0.5:
                    xb = torch.flip(xb, dims=(2,))
            logits, dims = net(xb)
            k = yb >= 0
            loss = F.cross_entropy(logits[k], yb[k])
            if bool(mb.any()):
                loss = loss + p.dims_loss_weight * F.smooth_l1_loss(dims[mb], db[mb])
            if not bool(k.all()):
                # Outlier exposure: cross-entropy to the uniform distribution over the labels.
                loss = loss - p.outlier_loss_weight * F.log_softmax(logits[~k], dim=1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += int(k.sum())
            correct += int((logits[k].argmax(1) == yb[k]).sum())
            loss_sum += float(loss.detach()) * int(k.sum())
            if progress is not None:
                progress(
                    "train",
                    1,
                    {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1)},
                )
        log.info("epoch %d: loss %.4f acc %.4f", epoch + 1, loss_sum / max(seen, 1), correct / max(seen, 1))
    net.eval()
    return net, dims_mean, dims_std


def train(
    config: TrainConfig,
    out_dir: Path | str | None,
    *,
    force: bool = False,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    config_text: str | None = None,
    enforce_gates: bool = True,
    progress: Progress | None = None,
    checkpoint_out: Path | None = None,
) -> TrainResult:
    """Run the whole pipeline; writes the bundle to ``out_dir`` (None: write nothing) if the gates pass.

    ``checkpoint_out``: also write the training checkpoint there (never into the bundle).
    """
    import torch

    from models import field_data, init_weights
    from models.net import ExportedShapeNet, ShapeNet, param_count

    if out_dir is not None and Path(out_dir).exists() and not force:
        raise CommandError(f"{out_dir} exists (use --force to replace it)")
    spec = config.input.spec()
    d = config.data
    t0 = time.perf_counter()

    def data_progress(k: int) -> None:
        if progress is not None:
            progress("data", k, {})

    image_sets = [field_data.scan(path) for path in d.datasets]
    n_field = sum(sum(1 for lab in s.labels if lab) for s in image_sets)
    per_label = field_data.renders_per_label(
        n_field, len(config.labels), d.render_share, d.train_frames_per_type
    )
    # Every render first: their worker processes are forked before this process decodes an image.
    renders: list[Dataset] = []
    outliers: list[Dataset] = []
    if per_label:
        renders.append(cached_dataset(
            spec, config.labels, d.train_seed, per_label,
            cache_dir=cache_dir, workers=d.workers, progress=data_progress,
        ))  # fmt: skip
    val_ds = cached_dataset(
        spec, config.labels, d.val_seed, d.val_frames_per_type,
        cache_dir=cache_dir, workers=d.workers, progress=data_progress,
    )  # fmt: skip
    if d.outlier_types and d.outlier_frames_per_type:
        # A seed of their own: outlier frames share no random stream with the train/val frames.
        out_ds = cached_dataset(
            spec, d.outlier_types, d.train_seed + 500_000, d.outlier_frames_per_type,
            cache_dir=cache_dir, workers=d.workers, progress=data_progress,
        )  # fmt: skip
        outliers.append(Dataset(out_ds.x, np.full_like(out_ds.y, -1), out_ds.dims_mm))
    field = [field_data.load(s, spec, config.labels) for s in image_sets]
    train_ds = field_data.concat([*renders, *field, *outliers])
    init = init_weights.resolve(config.train.init_from) if config.train.init_from else None
    t_data = time.perf_counter() - t0

    t1 = time.perf_counter()
    with _torch_setup(config.train.threads, config.train.seed):
        net, dims_mean, dims_std = _train_net(config, train_ds, progress, init)
        with torch.no_grad():
            raw_logits = torch.cat(
                [net(torch.from_numpy(val_ds.x[i : i + 256]))[0] for i in range(0, len(val_ds), 256)]
            ).numpy()
        temperature = fit_temperature(raw_logits, val_ds.y, config.train.min_temperature)
        exported = ExportedShapeNet(net, temperature, dims_mean.tolist(), dims_std.tolist()).eval()
        digest = weights_digest(net)
        model = export_onnx(exported, spec.shape)
        parity = parity_check(exported, model, val_ds.x)
        n_params = param_count(ShapeNet(spec.channels, len(config.labels), config.train.width))
    t_train = time.perf_counter() - t1
    log.info("temperature %.3f, weights %s", temperature, digest[:12])

    # Validation metrics from the ONNX model itself (what ships), not from torch.
    outs = run_batch(model, val_ds.x)
    logits = outs[CLASS_OUTPUT]
    from edge_agent.preprocess import softmax

    probs = softmax(logits)
    conf = probs.max(axis=1)
    report = M.classification_report(
        val_ds.y,
        probs.argmax(axis=1),
        conf,
        config.labels,
        dims_pred=outs[DIMS_OUTPUT],
        dims_true=val_ds.dims_mm,
        low_confidence=config.drift.low_confidence,
    )
    failures = M.check_gate(report, config.gates.gate())
    if failures and enforce_gates:
        raise CommandError(failures[0].message() + " (on the validation split)", reason="validation_gate")

    manifest = Manifest(
        name=config.name,
        version=config.version,
        created=datetime.now(UTC).replace(microsecond=0),
        description=config.description
        or f"Package shape/size classifier over {len(config.labels)} types, with a dimensions head.",
        labels=list(config.labels),
        input=spec,
        outputs=OutputSpec(class_output=CLASS_OUTPUT, class_kind="logits", dimensions_output=DIMS_OUTPUT),
        metrics=M_metrics(report, split="validation"),
        confidence_baseline=M.confidence_baseline(conf, config.drift.low_confidence),
        probation=config.probation,
        drift=config.drift,
        agreement=intended_agreement(init),
        min_agent_version=config.min_agent_version,
        device_classes=list(config.device_classes),
        extra={
            "config_sha256": config.digest(),
            "weights_sha256": digest,
            "temperature": round(temperature, 6),
            "parameters": n_params,
            "train_frames": int((train_ds.y >= 0).sum()),
            "field_frames": n_field,
            "rendered_frames_per_label": per_label,
            "datasets": [s.summary() for s in image_sets],
            **({"init_from": init.describe()} if init is not None else {}),
            "outlier_frames": int((train_ds.y < 0).sum()),
            "outlier_types": list(d.outlier_types),
            "val_frames": len(val_ds),
            "train_seed": d.train_seed,
            "val_seed": d.val_seed,
            "export_max_abs_logit_diff": parity.max_abs_logit_diff,
            "train_seconds": round(t_train, 1),
            "data_seconds": round(t_data, 1),
            "torch_threads": config.train.threads,
        },
    )
    bundle_dir = None
    if out_dir is not None:
        golden = val_ds.x[_selftest_indices(val_ds.y, SELFTEST_COUNT)]
        extra_files = {"train.toml": config_text.encode()} if config_text else None
        bundle_dir = write_bundle(out_dir, manifest, model, golden, extra_files=extra_files, force=force)
    if checkpoint_out is not None:
        init_weights.save_checkpoint(
            checkpoint_out, net, labels=config.labels, dims_mean=dims_mean.tolist(), dims_std=dims_std.tolist(),
            model_sha256=hashlib.sha256(model).hexdigest(),
        )  # fmt: skip
    return TrainResult(bundle_dir, manifest, digest, parity, report, t_train, t_data)


def intended_agreement(init: InitialWeights | None) -> AgreementGates:
    """The agreement gates of a model fine-tuned from another: labels it adds are intended changes.

    A release that adds package types is meant to answer them where the model it replaces
    confidently named a known type (``{"*": new_labels}``), so the shadow phase and probation's
    reverse shadow judge agreement on the other frames only (see ``AgreementGates``).
    """
    new = list((init.head or {}).get("new_labels", [])) if init is not None else []
    return AgreementGates(intended_changes={"*": new} if new else {})


def M_metrics(report: dict[str, Any], *, split: str) -> Any:
    """manifest.metrics from a classification report."""
    from edge_agent.manifest import Metrics

    return Metrics(
        accuracy=report["accuracy"],
        dimension_mae_mm=report.get("dimension_mae_mm"),
        ece=min(report["ece"], 1.0),
        frames=report["frames"],
        split=split,  # type: ignore[call-arg]  # Metrics allows extra fields
    )
