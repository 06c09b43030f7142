"""Recordings: format round trip, determinism, atomic writes, clear errors through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.recording_source import RecordingSource, scan_mjpeg_avi
from lineside_common.errors import SourceError
from sim import cli
from sim.recording import load_recording, write_recording
from sim.render import RenderConfig, camera_encode, render_frame
from sim.scenario import resolve_scenario, scenario_from_types

SMALL = RenderConfig(
    width=192, height=144, px_per_mm=0.5, rail_px=8, center_jitter_px=5
)  # small frames keep the suite fast


def _record(out: Path, frames: int = 12, seed: int = 1, config: RenderConfig = SMALL) -> Path:
    write_recording(
        out, frames=frames, seed=seed, scenario=scenario_from_types("circle-80,square-120"), config=config
    )
    return out


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _record(tmp_path_factory.mktemp("rec") / "r")


def test_300_frame_round_trip(tmp_path: Path) -> None:
    """Full-size frames: exactly 300 decode, labels match meta and renders; OpenCV reads the AVI too."""
    out = tmp_path / "r"
    meta = write_recording(out, frames=300, seed=7, scenario=resolve_scenario("baseline"))
    assert sorted(p.name for p in out.iterdir()) == ["frames.avi", "labels.jsonl", "meta.json"]
    on_disk = json.loads((out / "meta.json").read_text())
    assert on_disk["format"] == "lineside-recording" and on_disk["format_version"] == 1
    assert on_disk["frame_count"] == 300 and on_disk["px_per_mm"] == 1.6 and on_disk["seed"] == 7
    assert on_disk["codec"] == "MJPG" and on_disk["video"] == "frames.avi" and on_disk["fps"] == meta.fps
    with load_recording(out) as rec:
        frames = list(rec.frames())
        assert len(frames) == 300 and len(rec.labels) == 300
        assert [lab.frame for lab in rec.labels] == list(range(300))
        assert {lab.package for lab in rec.labels} == set(resolve_scenario("baseline").package_types)
        assert all(f.shape == (480, 640, 3) for f in frames)
    # Frame 0 is exactly camera_encode of the first render (same rng stream as the writer).
    rng = np.random.default_rng([7, 0x7E4])
    image, label = render_frame(rec.labels[0].package, rng, frame=0, t_s=0.0)
    assert label == rec.labels[0]
    assert np.array_equal(frames[0], camera_encode(image, RenderConfig()))
    cap = cv2.VideoCapture(str(out / "frames.avi"), cv2.CAP_OPENCV_MJPEG)
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 300
    cap.set(cv2.CAP_PROP_POS_FRAMES, 123)
    ok, f123 = cap.read()
    assert ok and np.array_equal(f123, frames[123])


def test_same_seed_same_recording_different_seed_differs(tmp_path: Path, recording: Path) -> None:
    again = _record(tmp_path / "again")
    other = _record(tmp_path / "other", seed=2)
    assert (again / "labels.jsonl").read_bytes() == (recording / "labels.jsonl").read_bytes()
    assert (other / "labels.jsonl").read_bytes() != (recording / "labels.jsonl").read_bytes()
    with load_recording(recording) as a, load_recording(again) as b, load_recording(other) as c:
        fa, fb, fc = list(a.frames()), list(b.frames()), list(c.frames())
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb, strict=True))
    assert not all(np.array_equal(x, z) for x, z in zip(fa, fc, strict=True))


def test_existing_target_is_kept_and_no_temp_left(tmp_path: Path, recording: Path) -> None:
    out = _record(tmp_path / "r")
    before = (out / "labels.jsonl").read_bytes()
    with pytest.raises(SourceError, match="already exists"):
        _record(out, seed=3)
    assert (out / "labels.jsonl").read_bytes() == before
    write_recording(
        out, frames=3, seed=3, scenario=scenario_from_types("circle-80"), config=SMALL, overwrite=True
    )
    assert load_recording(out).meta.frame_count == 3
    assert [p.name for p in tmp_path.iterdir()] == ["r"]


def test_truncated_video_keeps_its_head(tmp_path: Path, recording: Path) -> None:
    data = (recording / "frames.avi").read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with open(cut, "rb") as f:
        chunks = scan_mjpeg_avi(f)
    assert 4 <= len(chunks) < 12
    with open(recording / "frames.avi", "rb") as f:
        assert scan_mjpeg_avi(f)[: len(chunks)] == chunks


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(argv)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing_dir", "no such file or directory"),
        ("no_meta", "not a recording"),
        ("corrupt_meta", "corrupt"),
        ("no_video", "no such file or directory"),
        ("garbage_video", "not an AVI"),
        ("truncated_video", "frames, meta.json says 12"),
        ("truncated_labels", "labels.jsonl"),
        ("short_labels", "11 labels, meta.json says 12"),
    ],
)
def test_bad_recordings_fail_with_one_line(
    tmp_path: Path, recording: Path, capsys: pytest.CaptureFixture[str], damage: str, message: str
) -> None:
    rec = tmp_path / "missing" if damage == "missing_dir" else _copy(recording, tmp_path / "rec")
    video, labels = rec / "frames.avi", rec / "labels.jsonl"
    if damage == "no_meta":
        (rec / "meta.json").unlink()
    elif damage == "corrupt_meta":
        (rec / "meta.json").write_text('{"format": "lineside-recording", "fps": ')
    elif damage == "no_video":
        video.unlink()
    elif damage == "garbage_video":
        video.write_bytes(b"\x00" * 1000)
    elif damage == "truncated_video":
        video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    elif damage == "truncated_labels":
        labels.write_bytes(labels.read_bytes()[:-40])
    elif damage == "short_labels":
        labels.write_text("".join(labels.read_text().splitlines(keepends=True)[:-1]))
    for argv in (["show", str(rec), "--out", str(tmp_path / "s.png")], ["replay", "--fast", str(rec)]):
        if argv[0] == "replay" and "labels" in damage:
            continue  # the agent's replay needs no labels
        code, err = _run_cli(argv, capsys)
        assert code != 0
        assert err.count("\n") == 1 and err.startswith("error:") and message in err, err
        assert "Traceback" not in err


def test_record_show_replay_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r"
    assert (
        cli.main(["record", "--out", str(out), "--frames", "5", "--seed", "4", "--types", "hexagon-60"]) == 0
    )
    assert len(load_recording(out)) == 5
    assert cli.main(["show", str(out), "--out", str(tmp_path / "sheet.png"), "--count", "4"]) == 0
    sheet = cv2.imread(str(tmp_path / "sheet.png"))
    assert sheet is not None and sheet.shape == (2 * 240, 2 * 320, 3)
    capsys.readouterr()
    assert cli.main(["replay", str(out), "--fast", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == 5
    code, err = _run_cli(["record", "--out", str(out), "--frames", "2"], capsys)
    assert code == 1 and "already exists" in err
    code, err = _run_cli(
        ["record", "--out", str(tmp_path / "x"), "--scenario", str(tmp_path / "nope.json")], capsys
    )
    assert code == 1 and "no such file or directory" in err and "Traceback" not in err


def test_recording_source_reads_every_frame_with_its_index(recording: Path) -> None:
    with RecordingSource(recording, realtime=False) as src, load_recording(recording) as rec:
        frames = list(src)
        assert [f.index for f in frames] == list(range(12))
        assert all(np.array_equal(f.image, rec.frame(f.index)) for f in frames)
        assert src.read() is None
    looping = RecordingSource(recording, realtime=False, loop=True)
    indices = [looping.read().index for _ in range(30)]  # type: ignore[union-attr]
    assert indices == [i % 12 for i in range(30)]
    looping.close()
