"""Oversized bundles are refused by a configured bound before a byte of them is downloaded.

TUF already bounds each file by its signed length (an endless or longer-than-signed file is cut;
tests/test_trust_rejections.py). This is the other half: a release that is *signed* as huge (a
mistake, or a stolen targets key) is refused by the device's ``[updates] max_bundle_bytes``.
"""

from __future__ import annotations

from pathlib import Path

from edge_agent.config import parse_config
from edge_agent.store import ModelStore
from edge_agent.updates import settings_from_config
from tests.fault_support import CuttingProxy
from tests.updates_support import FakeHost, World, tuf_http_server


def test_release_over_max_bundle_bytes_is_refused_before_download(tmp_path: Path) -> None:
    w = World(tmp_path)
    bundle = w.release("1.0.0")
    size = sum(p.stat().st_size for p in bundle.iterdir())
    with tuf_http_server(w.repo_dir) as upstream, CuttingProxy(upstream, cuts=0) as proxy:
        host = FakeHost()
        u = w.updater(host, repository_url=proxy.url, max_bundle_bytes=size - 1)
        out = u.deploy("tiny", "1.0.0", cmd_id="big")
        assert out.status == "rejected" and out.reason == "too_large", out
        ev = host.last("update.rejected")
        assert ev["data"]["bytes"] == size and ev["data"]["max_bundle_bytes"] == size - 1
        assert not [r for r in proxy.requests if "/targets/" in r], proxy.requests  # nothing fetched
        assert ModelStore(w.state_dir).read_state().active is None
        # At the bound it installs.
        u = w.updater(host, repository_url=proxy.url, max_bundle_bytes=size)
        assert u.deploy("tiny", "1.0.0", cmd_id="fits").status == "installed"


def test_max_bundle_bytes_comes_from_the_config(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "device_id": "d1",
            "source": {"uri": "/nonexistent"},
            "updates": {"root_json": str(tmp_path / "root.json"), "max_bundle_bytes": 1234},
        }
    )
    assert settings_from_config(cfg).max_bundle_bytes == 1234
