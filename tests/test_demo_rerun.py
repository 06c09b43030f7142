"""`make demo` twice in one checkout: every file-preparing step of the demo works whatever an earlier
run (finished, failed or interrupted) left in its output directory.

The full ``--fast`` demo takes minutes (``tests/test_demo.py``); these run the steps that touch the
output directory — the recordings and step 4's faulty bundle, which crashed a second run with
``FileExistsError`` — twice in the same directory, in seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from models.bundle import load_bundle
from sim.demo import DemoTiming, _record, prepare_faulty_bundle

pytest.importorskip("onnx")  # the demo extra: step 4 edits the model's graph


def test_faulty_bundle_is_prepared_again_over_what_an_earlier_run_left(tmp_path: Path) -> None:
    first = prepare_faulty_bundle(tmp_path)
    assert load_bundle(first).manifest.version == "2.0.1"
    second = prepare_faulty_bundle(tmp_path)  # the second `make demo`
    assert second == first
    assert load_bundle(second).manifest.version == "2.0.1"
    # An interrupted run's leftover: a directory that is not a bundle.
    for f in second.iterdir():
        f.unlink()
    (second / "junk").write_bytes(b"half written")
    third = prepare_faulty_bundle(tmp_path)
    assert load_bundle(third).manifest.version == "2.0.1"
    assert not (third / "junk").exists()


def _timing(shift_at_s: float) -> DemoTiming:
    return DemoTiming(
        fps=5.0, window_s=1.0, shift_at_s=shift_at_s, stream_s=2.0, soak_s=1.0, step_timeout_s=10.0
    )


def test_recordings_are_reused_only_when_they_are_the_same_recording(tmp_path: Path) -> None:
    stream = tmp_path / "robot-1" / "stream"
    assert _record((stream, 101, True, _timing(1.0))) == "stream: recorded"
    assert _record((stream, 101, True, _timing(1.0))) == "stream: reused"
    # Another timing (a `--fast` run before a normal one): the packages change at another time.
    assert _record((stream, 101, True, _timing(0.6))) == "stream: recorded"
    assert _record((stream, 101, True, _timing(0.6))) == "stream: reused"
    # A damaged meta.json is not trusted: recorded again, not a crash.
    (stream / "meta.json").write_text("{not json")
    assert _record((stream, 101, True, _timing(0.6))) == "stream: recorded"
