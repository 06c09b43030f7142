"""`fleet release`: only a bundle's own regular files are signed, only runnable bundles, atomic publishing.

Issue 13, holes 1 and 3, through the real `fleet` CLI (in-process here; the server path and the
serve start-up check are in ``test_release_server.py`` with real processes):

- a symlink, a hard link or a directory in a bundle is refused, naming the file, with the
  repository unchanged and the key bytes nowhere in it;
- a bundle no device could run (model does not load, manifest does not match the model, self-test
  does not reproduce on the CPU provider) is refused at release time; the deliberately faulty
  releases of ``models.faulty`` pass by construction;
- a release that fails at any point (missing online key, write error, crash) leaves the published
  repository as it was, and the same release succeeds once the cause is gone;
- `fleet export --expires` re-signs the export's snapshot/timestamp and says when it expires.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tuf.api.metadata import Metadata, Root, Timestamp

from edge_agent.cli import main as edge_agent
from edge_agent.manifest import MODEL_FILE
from edge_agent.trust import TrustedRepository
from fleet_server import keys as keymod
from fleet_server import release_check, tuf_repo
from fleet_server.cli import main as fleet
from fleet_server.release_check import BundleRefusedError, check_release_files, read_bundle_files
from fleet_server.tuf_export import export_release
from fleet_server.tuf_repo import Repository
from lineside_common.errors import ConfigError
from models.faulty import make_nan, make_unconfident
from models.synthetic import make_bundle


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("keys") / "keys"
    keymod.init_keys(out)
    return out


def _tree(repo: Path) -> dict[str, bytes]:
    """Every file under the repository with its bytes (the lock file aside: it holds nothing)."""
    return {
        p.relative_to(repo).as_posix(): p.read_bytes()
        for p in sorted(repo.rglob("*"))
        if p.is_file() and p.name != tuf_repo.LOCK_FILE
    }


def _release(bundle: Path, keys: Path, repo: Path, *extra: str) -> int:
    return fleet(["release", str(bundle), "--keys", str(keys), "--repo", str(repo), *extra])


# -- hole 1: only the bundle's own regular files ------------------------------------------------


@pytest.mark.parametrize("victim", [MODEL_FILE, "notes.txt"])
def test_symlink_to_the_targets_key_is_refused_and_nothing_is_published(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str], victim: str
) -> None:
    repo = tmp_path / "repo"
    assert _release(make_bundle(tmp_path / "b1", version="1.0.0"), keys, repo) == 0
    before = _tree(repo)
    bundle = make_bundle(tmp_path / "evil", version="1.1.0")
    (bundle / victim).unlink(missing_ok=True)
    (bundle / victim).symlink_to(keys / "private" / "targets.pem")
    capsys.readouterr()

    assert _release(bundle, keys, repo, "--json") == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["reason"] == release_check.NOT_REGULAR
    assert len(err.strip().splitlines()) == 1 and victim in err
    assert _tree(repo) == before
    secret = (keys / "private" / "targets.pem").read_bytes()
    assert not any(secret in data for data in _tree(repo).values())


def test_hard_link_directory_and_fifo_are_refused(tmp_path: Path, keys: Path) -> None:
    for kind in ("hardlink", "dir", "fifo"):
        bundle = make_bundle(tmp_path / f"b-{kind}", version="1.0.0")
        target = bundle / "extra"
        if kind == "hardlink":
            os.link(keys / "private" / "targets.pem", target)
        elif kind == "dir":
            target.mkdir()
        else:
            os.mkfifo(target)
        with pytest.raises(BundleRefusedError) as exc:
            read_bundle_files(bundle)
        assert exc.value.file == "extra", kind
        assert exc.value.reason == (
            release_check.HARD_LINK if kind == "hardlink" else release_check.NOT_REGULAR
        )
        repo = tmp_path / f"repo-{kind}"
        assert _release(bundle, keys, repo) == 1
        assert not (repo / "targets").exists() or not any((repo / "targets").rglob("*.*"))


def test_key_material_is_refused_even_as_a_regular_file(tmp_path: Path, keys: Path) -> None:
    bundle = make_bundle(tmp_path / "b", version="1.0.0")
    shutil.copyfile(keys / "private" / "targets.pem", bundle / "notes.txt")  # a copy, not a link
    with pytest.raises(BundleRefusedError) as exc:
        check_release_files(read_bundle_files(bundle))
    assert (exc.value.reason, exc.value.file) == (release_check.KEY_MATERIAL, "notes.txt")


# -- hole 1: a release no device could run is refused at release time ----------------------------


def _break(bundle: Path, how: str) -> None:
    if how == "model_not_onnx":
        (bundle / MODEL_FILE).write_bytes(b"this is not an ONNX model")
    elif how == "manifest_input_name":
        doc = json.loads((bundle / "manifest.json").read_text())
        doc["input"]["name"] = "not_the_models_input"
        (bundle / "manifest.json").write_text(json.dumps(doc))
    elif how == "manifest_output_name":
        doc = json.loads((bundle / "manifest.json").read_text())
        doc["outputs"]["class_output"] = "not_an_output"
        (bundle / "manifest.json").write_text(json.dumps(doc))
    elif how == "selftest_off":
        with np.load(bundle / "selftest.npz") as z:
            arrays = {k: z[k] for k in z.files}
        for k in arrays:
            if k.startswith("out_"):
                arrays[k] = arrays[k] + 1.0  # far outside atol/rtol
        np.savez(bundle / "selftest.npz", **arrays)
    elif how == "no_model":
        (bundle / MODEL_FILE).unlink()


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("model_not_onnx", release_check.NOT_RUNNABLE),
        ("manifest_input_name", release_check.NOT_RUNNABLE),
        ("manifest_output_name", release_check.NOT_RUNNABLE),
        ("selftest_off", release_check.SELFTEST_FAILED),
        ("no_model", release_check.NOT_RUNNABLE),
    ],
)
def test_a_release_no_device_could_run_is_refused(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str], how: str, reason: str
) -> None:
    bundle = make_bundle(tmp_path / "b", version="1.0.0")
    _break(bundle, how)
    repo = tmp_path / "repo"
    capsys.readouterr()
    assert _release(bundle, keys, repo, "--json") == 1
    assert json.loads(capsys.readouterr().out)["reason"] == reason
    assert Repository.open(repo, None).releases() == []


def test_the_faulty_releases_pass_by_construction(tmp_path: Path, keys: Path) -> None:
    # models.faulty regenerates selftest.npz from the edited model, so the release check (the
    # agent's own self-test) passes and only probation on the device can catch the fault.
    good = make_bundle(tmp_path / "good", version="1.0.0")
    repo = tmp_path / "repo"
    assert _release(good, keys, repo) == 0
    for version, builder in (("1.0.1", make_unconfident), ("1.0.2", make_nan)):
        faulty = builder(good, tmp_path / f"faulty-{version}", version=version)
        assert _release(faulty, keys, repo) == 0
    assert [r.version for r in Repository.open(repo, None).releases()] == ["1.0.0", "1.0.1", "1.0.2"]


# -- hole 3: atomic, retryable publishing --------------------------------------------------------


def test_missing_online_key_refuses_before_any_write_and_the_same_release_then_succeeds(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    own = tmp_path / "keys"
    shutil.copytree(keys, own)
    repo = tmp_path / "repo"
    assert _release(make_bundle(tmp_path / "b1", version="1.0.0"), own, repo) == 0
    before = _tree(repo)
    b2 = make_bundle(tmp_path / "b2", version="1.1.0")
    aside = tmp_path / "timestamp.pem"
    (own / "private" / "timestamp.pem").rename(aside)
    capsys.readouterr()

    assert _release(b2, own, repo) == 1
    assert "private/timestamp.pem" in capsys.readouterr().err
    assert _tree(repo) == before  # nothing half-published: no targets v2, no files

    aside.rename(own / "private" / "timestamp.pem")
    assert _release(b2, own, repo) == 0  # the same bundle, retried
    assert [r.version for r in Repository.open(repo, None).releases()] == ["1.0.0", "1.1.0"]
    trust = TrustedRepository.from_directory(tmp_path / "dev", own / "root.json", repo)
    trust.refresh()
    assert set(trust.release("tiny", "1.1.0").targets) == {"manifest.json", "model.onnx", "selftest.npz"}


def test_releasing_the_same_bundle_again_is_done_not_refused(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The retry of a release whose answer was lost (or a CI job run twice): exit 0, nothing signed.
    repo = tmp_path / "repo"
    bundle = make_bundle(tmp_path / "b", version="1.0.0")
    assert _release(bundle, keys, repo) == 0
    before = _tree(repo)
    capsys.readouterr()
    assert _release(bundle, keys, repo, "--json") == 0
    assert json.loads(capsys.readouterr().out)["already_released"] is True
    assert _tree(repo) == before


class _Crash(BaseException):
    """The process dies here: no except clause of ours runs (a BaseException, like SIGKILL's effect)."""


# Writes of one release: 3 target files, N.targets.json, targets.json, M.snapshot.json,
# snapshot.json, timestamp.json (the commit point, last).
WRITES_PER_RELEASE = 8


@pytest.mark.parametrize("crash_at", range(1, WRITES_PER_RELEASE + 1))
def test_a_crash_at_any_write_publishes_nothing_and_a_retry_succeeds(
    tmp_path: Path, keys: Path, monkeypatch: pytest.MonkeyPatch, crash_at: int
) -> None:
    repo_dir = tmp_path / "repo"
    assert _release(make_bundle(tmp_path / "b1", version="1.0.0"), keys, repo_dir) == 0
    before = _tree(repo_dir)
    b2 = make_bundle(tmp_path / "b2", version="1.1.0")
    real = tuf_repo.atomic_write_bytes
    calls: list[str] = []

    def crashing(path: Path | str, data: bytes, **kw: Any) -> None:
        calls.append(Path(path).name)
        if len(calls) == crash_at:
            raise _Crash
        real(path, data, **kw)

    monkeypatch.setattr(tuf_repo, "atomic_write_bytes", crashing)
    with pytest.raises(_Crash):
        tuf_repo.release_local(b2, keys, repo_dir)
    monkeypatch.setattr(tuf_repo, "atomic_write_bytes", real)

    # What a device sees is exactly the old release set, from a fresh client ...
    assert Repository.open(repo_dir, None).timestamp() is not None
    assert (repo_dir / "metadata" / "timestamp.json").read_bytes() == before["metadata/timestamp.json"]
    assert [r.version for r in Repository.open(repo_dir, None).releases()] == ["1.0.0"]
    # ... the leftovers go when the repository is next opened for writing ...
    Repository.open_or_create(repo_dir, keys)
    assert _tree(repo_dir) == before
    # ... and the same release, retried, is published.
    assert _release(b2, keys, repo_dir) == 0
    trust = TrustedRepository.from_directory(tmp_path / "dev", keys / "root.json", repo_dir)
    trust.refresh()
    assert set(trust.release("tiny", "1.1.0").targets) == {"manifest.json", "model.onnx", "selftest.npz"}


def test_the_write_count_matches_a_release(
    tmp_path: Path, keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Guards the parametrisation above: every write of a release is one of the crash points,
    # and timestamp.json is the last.
    real = tuf_repo.atomic_write_bytes
    calls: list[str] = []

    def counting(path: Path | str, data: bytes, **kw: Any) -> None:
        calls.append(Path(path).name)
        real(path, data, **kw)

    repo_dir = tmp_path / "repo"
    Repository.open_or_create(repo_dir, keys)
    monkeypatch.setattr(tuf_repo, "atomic_write_bytes", counting)
    tuf_repo.release_local(make_bundle(tmp_path / "b", version="1.0.0"), keys, repo_dir)
    assert len(calls) == WRITES_PER_RELEASE and calls[-1] == "timestamp.json", calls


def test_a_repository_wedged_by_the_old_code_heals(tmp_path: Path, keys: Path) -> None:
    # What the old `accept_release` left when the online keys were missing: targets metadata and
    # files written, no snapshot, no timestamp. Opening for writing heals it; the release retries.
    repo_dir = tmp_path / "repo"
    repo = Repository.open_or_create(repo_dir, keys)
    signed, files = tuf_repo.build_release_targets(
        make_bundle(tmp_path / "b", version="1.0.0"),
        targets_signer=keymod.load_signer(keys, "targets"),
        current=None,
        expiry_days=30,
    )
    (repo.metadata_dir / "1.targets.json").write_bytes(signed)
    (repo.metadata_dir / "targets.json").write_bytes(signed)
    for path, data in files.items():
        dest = repo.targets_dir / tuf_repo.target_file_name(path, tuf_repo._sha256(data))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    assert Repository.open(repo_dir, None).releases() == []  # nothing is published
    assert _release(tmp_path / "b", keys, repo_dir) == 0
    assert [r.version for r in Repository.open(repo_dir, None).releases()] == ["1.0.0"]


# -- fleet export --expires ------------------------------------------------------------------------


def _export_args(repo: Path, out: Path, expires: str) -> list[str]:
    return ["export", "tiny@1.0.0", "--repo", str(repo), "--out", str(out), "--expires", expires]


def test_export_expires_resigns_for_air_gapped_lines(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    assert _release(make_bundle(tmp_path / "b", version="1.0.0"), keys, repo) == 0
    served = Metadata[Timestamp].from_bytes((repo / "metadata" / "timestamp.json").read_bytes())

    # Without --expires: the served timestamp's day, and the command says so.
    capsys.readouterr()
    assert (
        fleet(["export", "tiny@1.0.0", "--repo", str(repo), "--out", str(tmp_path / "usb1"), "--json"]) == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert (doc["expires_role"], datetime.fromisoformat(doc["expires"])) == (
        "timestamp",
        served.signed.expires,
    )

    # --expires needs the online keys: one line naming them, nothing written.
    out2 = tmp_path / "usb2"
    assert fleet(["export", "tiny@1.0.0", "--repo", str(repo), "--out", str(out2), "--expires", "30d"]) == 1
    assert "private/timestamp.pem" in capsys.readouterr().err and not out2.exists()

    assert fleet([*_export_args(repo, out2, "30d"), "--keys", str(keys), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    ts = Metadata[Timestamp].from_bytes((out2 / "metadata" / "timestamp.json").read_bytes())
    want = datetime.now(UTC) + timedelta(days=30)
    assert abs((ts.signed.expires - want).total_seconds()) < 120
    assert datetime.fromisoformat(doc["expires"]) == ts.signed.expires
    assert ts.signed.version == served.signed.version + 1  # newer than what devices have seen
    root = Metadata[Root].from_bytes((keys / "root.json").read_bytes())
    root.verify_delegate("timestamp", ts)
    # The repository itself is not changed; a device verifies the stick.
    assert (repo / "metadata" / "timestamp.json").read_bytes() == served.to_bytes()
    dev_args = ["--state-dir", str(tmp_path / "dev"), "--root-json", str(keys / "root.json")]
    assert edge_agent(["verify", str(out2), *dev_args]) == 0
    capsys.readouterr()
    # Beyond the targets metadata's own life the export cannot go: it says which role decides.
    assert fleet([*_export_args(repo, tmp_path / "usb3", "400d"), "--keys", str(keys), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["expires_role"] in ("targets", "root")
    with pytest.raises(SystemExit) as bad:
        fleet(_export_args(repo, tmp_path / "u4", "soon"))
    assert bad.value.code == 2


def test_an_export_that_would_already_be_expired_is_refused(tmp_path: Path, keys: Path) -> None:
    # A stick written two days after the last `fleet release --repo` (timestamp: one day) would
    # fail on every device; the export says so and how to re-sign, and --expires makes it work.
    repo_dir = tmp_path / "repo"
    assert _release(make_bundle(tmp_path / "b", version="1.0.0"), keys, repo_dir) == 0
    later = datetime.now(UTC) + timedelta(days=2)
    with pytest.raises(ConfigError, match="--expires"):
        export_release(Repository.open(repo_dir, None), "tiny", "1.0.0", tmp_path / "usb", now=later)
    assert not (tmp_path / "usb").exists()
    done = export_release(
        Repository.open(repo_dir, keys),
        "tiny",
        "1.0.0",
        tmp_path / "usb",
        expires=timedelta(days=30),
        now=later,
    )
    assert done.expires_role in ("timestamp", "snapshot") and done.expires > later + timedelta(days=29)


def test_serve_help_says_where_the_token_is_not_that_it_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        fleet(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "prints it and writes it" not in text
    assert "prints where that file is, never the token" in text
