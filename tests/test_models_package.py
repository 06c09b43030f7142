"""``edge-models package`` and ``edge-models evaluate --dataset`` on a classifier we did not train.

Through the command line (in process: the CLI's parser, handler and error path), with the
fixed-weight colour classifier of :mod:`tests.foreign_model`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.manifest import load_manifest
from models.bundle import check_selftest, load_bundle
from models.cli import main
from tests.foreign_model import LABELS, colour_classifier, write_frames

BASE = ["--name", "colours", "--version", "1.0.0", "--labels", ",".join(LABELS)]
GOOD = [*BASE, "--layout", "NHWC", "--color-order", "RGB", "--scale", "1/255"]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "colours.onnx"
    path.write_bytes(colour_classifier())
    return path


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    d = tmp_path / "samples"
    write_frames(d, LABELS * 4, per_label_dirs=True)
    return d


def _package(model: Path, samples: Path, out: Path, *extra: str) -> tuple[int, dict[str, object]]:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["package", str(model), "--samples", str(samples), "--out", str(out), "--json", *extra])
    return code, json.loads(buf.getvalue())


def test_package_writes_a_bundle_that_passes_its_selftest(tmp_path: Path, model: Path, samples: Path) -> None:
    out = tmp_path / "colours-1.0.0"
    code, result = _package(model, samples, out, *GOOD)
    assert code == 0 and result["ok"] is True
    assert result["accuracy"] == 1.0 and result["samples"] == 12
    bundle = load_bundle(out)
    check_selftest(bundle)
    m = bundle.manifest
    assert m.schema_version == 1  # nothing schema-2 used: older agents can run it
    assert m.input.layout == "NHWC" and m.input.shape == [1, 32, 32, 3]
    assert m.outputs.class_output == "scores" and m.labels == LABELS
    assert m.confidence_baseline.p50 > 0.9
    assert m.probation.min_confidence_p50 <= 0.8 * m.confidence_baseline.p50


def test_letterbox_and_per_channel_scale_make_a_schema2_bundle(
    tmp_path: Path, model: Path, samples: Path
) -> None:
    out = tmp_path / "b"
    code, result = _package(
        model, samples, out, *BASE, "--layout", "NHWC", "--resize", "letterbox", "--pad-value", "114",
        "--scale", "1/255,1/255,1/255",
    )  # fmt: skip
    assert code == 0 and result["accuracy"] == 1.0
    m = load_manifest(out)
    assert m.schema_version == 2
    assert m.input.resize.mode == "letterbox" and m.input.resize.pad_value == 114


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (["--layout", "NCHW"], "input_mismatch"),  # the model is NHWC
        (["--layout", "NHWC", "--color-order", "GRAY"], "input_mismatch"),
        (["--layout", "NHWC", "--size", "64,64"], "input_mismatch"),
        (["--layout", "NHWC", "--labels", "red,green"], "output_mismatch"),
        (["--layout", "NHWC", "--output-kind", "probabilities"], "output_mismatch"),
        (["--layout", "NHWC", "--class-output", "logits"], "output_mismatch"),
        (["--layout", "NHWC", "--version", "one"], "config"),
    ],
)
def test_a_model_that_does_not_match_its_declaration_is_refused(
    tmp_path: Path,
    model: Path,
    samples: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    reason: str,
) -> None:
    out = tmp_path / "b"
    code, result = _package(model, samples, out, *BASE, *extra)
    assert code == 1 and result == {"ok": False, "reason": reason, "error": result["error"]}
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not out.exists()


def test_too_few_samples_and_an_unloadable_model(tmp_path: Path, model: Path) -> None:
    few = tmp_path / "few"
    write_frames(few, LABELS)
    code, result = _package(model, few, tmp_path / "b", *GOOD)
    assert (code, result["reason"]) == (1, "samples")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    code, result = _package(junk, few, tmp_path / "b", *GOOD)
    assert (code, result["reason"]) == (1, "model_load")


def test_a_toml_declaration_with_options_on_top(tmp_path: Path, model: Path, samples: Path) -> None:
    config = tmp_path / "colours.toml"
    config.write_text(
        'name = "colours"\nversion = "1.0.0"\nlabels = ["red", "green", "blue"]\n'
        'layout = "NHWC"\ncolor_order = "RGB"\nscale = 0.00392156862745098\n'
    )
    code, result = _package(model, samples, tmp_path / "b", "--config", str(config), "--version", "1.2.0")
    assert code == 0 and result["model"] == "colours@1.2.0"


def test_evaluate_a_dataset(
    tmp_path: Path, model: Path, samples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b"
    assert _package(model, samples, out, *GOOD)[0] == 0
    data = tmp_path / "data"
    write_frames(data, ["red", "blue", "blue", "purple"], per_label_dirs=True, seed=100)
    # "purple" is not one of the model's labels: reported apart as an unknown type, not as wrong.
    assert main(["evaluate", str(out), "--dataset", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == 3 and report["accuracy"] == 1.0
    assert report["per_class"]["blue"]["support"] == 2
    assert report["unknown_types"]["purple"]["frames"] == 1
    assert report["source"] == {"dataset": str(data)}
    assert main(["evaluate", str(out), "--dataset", str(tmp_path / "nothing")]) == 1


def test_labels_file_and_roi(tmp_path: Path, model: Path, samples: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("red\ngreen\nblue\n")
    out = tmp_path / "b"
    code, result = _package(
        model, samples, out, "--name", "colours", "--version", "1.0.0", "--labels-file", str(labels),
        "--layout", "NHWC", "--roi", "0.25,0.25,0.5,0.5",
    )  # fmt: skip
    assert code == 0 and result["accuracy"] == 1.0
    m = load_manifest(out)
    assert m.labels == LABELS
    assert m.input.roi is not None and (m.input.roi.x, m.input.roi.width) == (0.25, 0.5)
