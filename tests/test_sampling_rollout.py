"""Per-rollout sampling overrides (issue 16): manifest < rollout < the device's own config."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.config import SamplesConfig
from edge_agent.frames import Frame
from edge_agent.manifest import MANIFEST_FILE, Manifest, parse_manifest
from edge_agent.messages import DeployCommand, ModelRef, SamplingOverride, dump, parse_command
from edge_agent.sample_ring import SampleRing
from edge_agent.sampling import FrameSampler, SampleDecision, policy_for
from fleet_server.cli import COMMAND_MODULES
from fleet_server.cli_ops import rollout_sampling
from lineside_common import cli as clitools
from lineside_common.errors import MessageError

V1 = ModelRef(name="shapes", version="1.0.0", sha256="ab" * 32)
V2 = ModelRef(name="shapes", version="2.0.0", sha256="cd" * 32)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    from models.synthetic import make_bundle

    bundle = make_bundle(tmp_path_factory.mktemp("b") / "b")
    raw = json.loads((bundle / MANIFEST_FILE).read_text())
    raw["sampling"] = {"low_confidence_max": 0.5, "random_share": 0.02}
    return parse_manifest(json.dumps({**raw, "schema_version": 2}))


def test_the_rollout_sits_above_the_manifest_and_below_the_devices_explicit_settings(
    manifest: Manifest,
) -> None:
    rollout = SamplingOverride(low_confidence_min=0.3, low_confidence_max=0.6, random_share=0.5, per_hour=120)
    p = policy_for(SamplesConfig(), manifest, rollout)
    assert p.rules.low_confidence_band == (0.3, 0.6) and p.rules.random_share == 0.5
    assert p.quotas.total == type(p.quotas.total)(6, 120, 500)  # only per_hour overridden
    # The device's file sets random_share and per_hour: those are the plant engineer's, and win.
    mine = SamplesConfig.model_validate({"random_share": 0.0, "per_hour": 10})
    p = policy_for(mine, manifest, rollout)
    assert p.rules.random_share == 0.0 and p.rules.low_confidence_band == (0.3, 0.6)
    assert p.quotas.total.per_hour == 10
    # No rollout: the manifest's defaults, as before.
    p = policy_for(SamplesConfig(), manifest, None)
    assert p.rules.low_confidence_band == (0.0, 0.5) and p.rules.random_share == 0.02


def _frame(i: int) -> Frame:
    return Frame(index=i, captured_at=0.0, image=np.zeros((24, 32, 3), dtype=np.uint8))


def _decision(i: int) -> SampleDecision:
    return SampleDecision(f"000001-{i:012d}", "box", 0.99, None, None)


def test_overrides_apply_while_their_release_serves_and_survive_a_restart(
    tmp_path: Path, manifest: Manifest
) -> None:
    cfg = SamplesConfig(low_confidence_max=0.0, per_minute=None, per_hour=None, per_day=None)
    rollouts = tmp_path / "sampling-rollouts.json"

    def sampler() -> FrameSampler:
        return FrameSampler(
            cfg,
            SampleRing(tmp_path / "ring", 1 << 20),
            policy_for(cfg, manifest),
            device_id="r1",
            manifest_of=lambda: manifest,
            rollouts_file=rollouts,
        )

    s = sampler()
    s.set_rollout_sampling("shapes", "2.0.0", SamplingOverride(random_share=1.0))
    s.offer(_frame(0), _decision(0), model=V1)  # 1.0.0 serves: the manifest's 2 %
    assert s.policy.rules.random_share == 0.02
    assert s.offer(_frame(1), _decision(1), model=V2)  # 2.0.0 serves: every frame
    assert s.offer(_frame(2), _decision(2), model=V2) and s.policy.rules.random_share == 1.0
    again = sampler()  # the agent restarted: the override is read back
    assert again.rollout_sampling("shapes", "2.0.0") == SamplingOverride(random_share=1.0)
    assert again.offer(_frame(3), _decision(3), model=V2) and again.policy.rules.random_share == 1.0
    # A later deploy of the same release without overrides clears them, also on disk.
    again.set_rollout_sampling("shapes", "2.0.0", None)
    again.offer(_frame(4), _decision(4), model=V2)
    assert again.policy.rules.random_share == 0.02 and sampler().rollout_sampling("shapes", "2.0.0") is None


def test_the_deploy_carries_sampling_only_when_given() -> None:
    plain = DeployCommand(cmd_id="c1", name="shapes", version="2.0.0")
    assert b"sampling" not in dump(plain)  # what an older agent accepts
    cmd = DeployCommand(cmd_id="c1", name="shapes", version="2.0.0", sampling=SamplingOverride(per_hour=120))
    back = parse_command(dump(cmd))
    assert isinstance(back, DeployCommand) and back.sampling == SamplingOverride(per_hour=120)
    raw = json.loads(dump(cmd))
    raw["sampling"]["per_week"] = 3
    with pytest.raises(MessageError):
        parse_command(json.dumps(raw).encode())


def test_the_cli_options_become_the_rollouts_sampling_block() -> None:
    parser = clitools.build_parser("fleet", "", COMMAND_MODULES)
    start = ["rollout", "start", "shapes@2.0.0", "--devices", "a"]
    args = parser.parse_args(
        [*start, "--sample-low-confidence", "0.3,0.6", "--sample-random", "0.01", "--sample-per-hour", "120"]
    )
    assert rollout_sampling(args) == {
        "low_confidence_min": 0.3,
        "low_confidence_max": 0.6,
        "random_share": 0.01,
        "per_hour": 120,
    }
    assert rollout_sampling(parser.parse_args(["rollout", "start", "shapes@2.0.0", "--devices", "a"])) is None
    for bad in (["--sample-low-confidence", "0.6,0.3"], ["--sample-random", "2"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["rollout", "start", "shapes@2.0.0", "--devices", "a", *bad])
        assert exc.value.code == 2


# -- with real processes ---------------------------------------------------------------------------


@pytest.mark.integration
def test_a_rollouts_sampling_reaches_the_device_and_its_own_settings_win(
    tmp_path: Path, mosquitto: Any, edge_agent_process: Callable[..., Any]
) -> None:
    """Two real agents, Mosquitto and ``fleet serve``. The rollout asks for every frame at random,
    a near-empty low-confidence band and 600 samples a minute. line-1 (no [samples] settings)
    follows it once 1.1.0 serves. line-2's file says ``random_share = 0.0`` and a band of [0, 1):
    those win (all its samples are low_confidence, none random), while the rollout's quota, which
    its file leaves unset, applies (more samples in a minute than its default 6 a minute allow).
    line-3 says ``capture = false``: it installs the release and sends no sample."""
    from tests.fault_support import LineRig
    from tests.mqtt import wait_until

    class Rig(LineRig):
        def config(self, device: str) -> Path:
            path = super().config(device)
            extra = {
                "line-2": "[samples]\nrandom_share = 0.0\nlow_confidence_max = 1.0\n",
                "line-3": "[samples]\ncapture = false\n",
            }.get(device)
            if extra:
                with path.open("a") as f:
                    f.write(extra)
            return path

    rig = Rig(tmp_path, mosquitto, edge_agent_process, devices=3)
    rig.start()
    try:
        wait_until(
            lambda: (
                len(rig.devices()) == 2
                and all(d.get("active_model") == "shapes@1.0.0" for d in rig.devices().values())
            ),
            60,
            what="agents online on 1.0.0",
        )
        rig.release("1.1.0")
        out = rig.server.cli(
            "rollout", "start", "shapes@1.1.0", "--devices", "line-1,line-2,line-3", "--stages", "100%",
            "--soak", "1s", "--min-gate-frames", "10", "--sample-random", "1", "--sample-per-minute", "600",
            "--sample-low-confidence", "0,0.01",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr

        def samples(device: str) -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = rig.api("GET", "/samples", params={"device": device, "limit": 500})[
                "samples"
            ]
            return [r for r in rows if r["model"]["version"] == "1.1.0"]

        wait_until(lambda: len(samples("line-1")) >= 12, 90, what="line-1's samples on 1.1.0")
        assert {r["reason"] for r in samples("line-1")} == {"random"}
        wait_until(lambda: len(samples("line-2")) >= 12, 45, what="line-2's samples on 1.1.0")
        assert {r["reason"] for r in samples("line-2")} == {"low_confidence"}
        # capture = false is final: line-3 serves 1.1.0 like the others and sends nothing.
        wait_until(lambda: rig.active().get("line-3") == "shapes@1.1.0", 60, what="line-3 on 1.1.0")
        assert rig.api("GET", "/samples", params={"device": "line-3"})["total"] == 0
    finally:
        rig.stop()
