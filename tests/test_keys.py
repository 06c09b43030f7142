"""`fleet keys init`, `fleet release --repo`, `fleet export` and the device-side CLI on their output."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root

from edge_agent.cli import main as edge_agent
from fleet_server import keys as keymod
from fleet_server.cli import main as fleet
from fleet_server.tuf_repo import Repository
from lineside_common.errors import ConfigError
from models.synthetic import make_bundle


def test_keys_init_writes_private_keys_0600_and_a_self_signed_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "keys"
    assert fleet(["keys", "init", "--out", str(out), "--expiry-days", "timestamp=2,targets=30"]) == 0
    printed = capsys.readouterr()
    for role in keymod.ROLES:
        mode = stat.S_IMODE((out / "private" / f"{role}.pem").stat().st_mode)
        assert mode == 0o600, (role, oct(mode))
        pem = (out / "private" / f"{role}.pem").read_text()
        assert pem.splitlines()[1] not in printed.out + printed.err  # never printed
    root = Metadata[Root].from_bytes((out / "root.json").read_bytes())
    root.verify_delegate(Root.type, root)
    assert root.signed.consistent_snapshot
    assert set(root.signed.roles) == set(keymod.ROLES)
    assert keymod.load_expiry_days(out)["timestamp"] == 2.0
    assert keymod.load_expiry_days(out)["targets"] == 30.0
    # Refuses to overwrite: that would orphan every provisioned device.
    assert fleet(["keys", "init", "--out", str(out)]) == 1


def test_expiry_days_parsing() -> None:
    assert keymod.parse_expiry_days("root=10")["root"] == 10.0
    for bad in ("nope=1", "root", "root=x", "root=-1"):
        with pytest.raises(ConfigError):
            keymod.parse_expiry_days(bad)


def test_release_export_install_models_verify_rollback_by_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys, repo, dev = tmp_path / "keys", tmp_path / "repo", tmp_path / "dev"
    assert fleet(["keys", "init", "--out", str(keys)]) == 0
    b1 = make_bundle(tmp_path / "b1", version="1.0.0")
    b2 = make_bundle(tmp_path / "b2", version="1.1.0")
    assert fleet(["release", str(b1), "--keys", str(keys), "--repo", str(repo)]) == 0
    assert fleet(["release", str(b2), "--keys", str(keys), "--repo", str(repo), "--json"]) == 0
    capsys.readouterr()
    # Releasing the same version again with other content is refused.
    make_bundle(b1, version="1.0.0", behaviour="unconfident")
    assert fleet(["release", str(b1), "--keys", str(keys), "--repo", str(repo)]) == 1
    assert [r.ref for r in Repository.open(repo, None).releases()] == ["tiny@1.0.0", "tiny@1.1.0"]

    usb = tmp_path / "usb"
    assert fleet(["export", "tiny@1.0.0", "--repo", str(repo), "--out", str(usb)]) == 0
    assert sorted(p.parent.name for p in (usb / "targets").rglob("*") if p.is_file()) == ["1.0.0"] * 3
    dev_args = ["--state-dir", str(dev), "--root-json", str(keys / "root.json")]
    assert edge_agent(["verify", str(usb), *dev_args]) == 0
    assert not (dev / "models" / "state.json").exists()  # verify installs nothing
    assert edge_agent(["install", str(usb), *dev_args]) == 0
    assert edge_agent(["install", str(repo), "--model", "tiny@1.1.0", *dev_args]) == 0
    capsys.readouterr()
    assert edge_agent(["models", "--json", *dev_args]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(m["role"], m["version"]) for m in doc["models"]] == [("active", "1.1.0"), ("previous", "1.0.0")]
    assert doc["probation"] is True
    assert edge_agent(["rollback", *dev_args]) == 0
    capsys.readouterr()
    assert edge_agent(["models", "--json", *dev_args]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(m["role"], m["version"]) for m in doc["models"]] == [("active", "1.0.0")]
    assert doc["failed"] == ["tiny@1.1.0"]
    # Without --force the failed version is not reinstalled; with it, it is.
    assert edge_agent(["install", str(repo), "--model", "tiny@1.1.0", *dev_args]) == 1
    assert "failed probation" in capsys.readouterr().err
    assert edge_agent(["install", str(repo), "--model", "tiny@1.1.0", "--force", *dev_args]) == 0
    assert edge_agent(["models", *dev_args]) == 0
    assert "1.1.0" in capsys.readouterr().out


def test_refresh_timestamp_resigns_before_expiry(tmp_path: Path) -> None:
    keys, repo_dir = tmp_path / "keys", tmp_path / "repo"
    keymod.init_keys(keys)
    fleet(
        [
            "release",
            str(make_bundle(tmp_path / "b", version="1.0.0")),
            "--keys",
            str(keys),
            "--repo",
            str(repo_dir),
        ]
    )
    repo = Repository.open(repo_dir, keys)
    ts = repo.timestamp()
    assert ts is not None
    assert repo.refresh_timestamp(if_expiring_within_s=60) is False
    assert repo.refresh_timestamp(if_expiring_within_s=2 * 86400) is True
    ts2 = repo.timestamp()
    assert ts2 is not None and ts2.signed.version == ts.signed.version + 1
    # Without online keys the repository cannot sign anything.
    with pytest.raises(ConfigError):
        Repository.open(repo_dir, None).refresh_timestamp(if_expiring_within_s=10 * 86400)
