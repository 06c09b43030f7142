"""The hand-over of a side-loaded shadow candidate from the CLI to the daemon, through the store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from edge_agent.manifest import BUNDLE_FILES
from edge_agent.shadow_sideload import publish_request, read_request, shadow_paths, withdraw_request
from lineside_common.errors import ShadowCandidateError
from models.synthetic import make_bundle


def _publish(tmp_path: Path) -> Path:
    staged = make_bundle(tmp_path / "staged", version="1.2.0")
    files = {
        f: ((staged / f).stat().st_size, hashlib.sha256((staged / f).read_bytes()).hexdigest())
        for f in BUNDLE_FILES
    }
    publish_request(tmp_path / "store", staged, "tiny", "1.2.0", files)
    return tmp_path / "store"


def test_a_verified_candidate_is_handed_over_and_withdrawn(tmp_path: Path) -> None:
    store = _publish(tmp_path)
    request = read_request(store)
    assert request is not None and (request["name"], request["version"]) == ("tiny", "1.2.0")
    assert withdraw_request(store) and read_request(store) is None
    assert not shadow_paths(store)[1].exists()


def test_a_file_changed_at_rest_is_refused(tmp_path: Path) -> None:
    store = _publish(tmp_path)
    model = shadow_paths(store)[1] / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ShadowCandidateError) as err:
        read_request(store)
    assert err.value.file == "model.onnx"
