"""The manifest contract through the real updater (TUF-verified local repository, real store).

An agent that reads only schema 1 refuses a schema-2 release with ``update.rejected`` and the
reason ``unsupported``, keeping its model; this agent installs both a schema-1 and a schema-2
release.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from edge_agent.manifest import parse_manifest
from edge_agent.store import ModelStore
from edge_agent.updates import staging as updater_mod
from tests.updates_support import FakeHost, World


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    w.release("1.0.0")  # schema 1, as every release before schema 2
    w.release("1.1.0", letterbox=True)  # schema 2
    return w


def _install(w: World, host: FakeHost, version: str) -> updater_mod.Outcome:
    u = w.updater(host)
    u.boot()
    return u.install_from_dir(w.repo_dir, name="tiny", version=version)


def test_this_agent_installs_schema1_and_schema2_releases(world: World) -> None:
    host = FakeHost()
    assert _install(world, host, "1.0.0").status == "installed"
    out = _install(world, host, "1.1.0")
    assert out.status == "installed", out
    state = ModelStore(world.state_dir).read_state()
    assert state.active is not None and state.active.version == "1.1.0"


def test_an_agent_that_reads_only_schema1_refuses_a_schema2_release(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = FakeHost()
    assert _install(world, host, "1.0.0").status == "installed"
    # The older agent: the same updater whose manifest parser stops at schema 1.
    monkeypatch.setattr(
        updater_mod, "parse_manifest", functools.partial(parse_manifest, max_schema_version=1)
    )
    out = _install(world, host, "1.1.0")
    assert (out.status, out.reason) == ("rejected", "unsupported"), out
    assert host.last("update.rejected")["data"]["reason"] == "unsupported"
    state = ModelStore(world.state_dir).read_state()
    assert state.active is not None and state.active.version == "1.0.0"
    assert len(list((world.state_dir / "bundles").iterdir())) == 1  # nothing of 1.1.0 kept
