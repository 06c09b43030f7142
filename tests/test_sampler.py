"""The on-device sampler (issue 16): policy, quotas, decision ids, the disk ring, the uploader.

Pure and in-memory: time and randomness come in as arguments or fakes, so counts are exact.
The same parts with real processes: test_samples_agent.py.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config import SamplesConfig
from edge_agent.decision_id import DecisionIds, valid_decision_id
from edge_agent.frames import Frame
from edge_agent.messages import ModelRef
from edge_agent.sample_ring import SampleRing
from edge_agent.sampler import Limits, Quotas, SamplingPolicy, SamplingRules, TokenBucket
from edge_agent.sampling import FrameSampler, SampleDecision, ShadowOutput, policy_for
from edge_agent.uploader import SampleUploader

MODEL = ModelRef(name="shapes", version="1.0.0", sha256="ab" * 32)


# -- token buckets and quotas ---------------------------------------------------------------------


def test_a_bucket_gives_its_capacity_then_refills_at_its_rate() -> None:
    b = TokenBucket(3, 60.0)
    taken = 0
    for _ in range(10):
        if b.available(0.0):
            b.take(0.0)
            taken += 1
    assert taken == 3
    assert not b.available(19.9)  # 1 token every 20 s
    assert b.available(20.0)
    b.take(20.0)
    assert not b.available(20.0)
    assert b.available(1e9) and b.tokens == 3  # never more than capacity


def test_a_clock_going_back_refunds_nothing() -> None:
    b = TokenBucket(1, 60.0)
    b.take(100.0)
    assert not b.available(50.0)  # earlier: no refill, no refund
    assert not b.available(100.0 + 59.0)
    assert b.available(100.0 + 60.0)


@settings(max_examples=200, deadline=None)
@given(
    per_minute=st.integers(0, 20),
    per_hour=st.integers(0, 40),
    times=st.lists(st.floats(0, 7200), min_size=0, max_size=120),
)
def test_quotas_never_exceed_any_limit_in_any_window(
    per_minute: int, per_hour: int, times: list[float]
) -> None:
    q = Quotas(Limits(per_minute=per_minute, per_hour=per_hour), Limits())
    taken = [t for t in sorted(times) if q.try_take("box", t)]
    # A bucket of N per period admits at most N + (elapsed / period) * N in any span.
    for i, start in enumerate(taken):
        in_minute = [t for t in taken[i:] if t < start + 60.0]
        in_hour = [t for t in taken[i:] if t < start + 3600.0]
        assert len(in_minute) <= per_minute + per_minute * 1.0  # refill can add at most one period's worth
        assert len(in_hour) <= per_hour * 2
    # And the burst from a full bucket is exactly the smaller capacity.
    burst = Quotas(Limits(per_minute=per_minute, per_hour=per_hour), Limits())
    assert sum(burst.try_take("box", 0.0) for _ in range(100)) == min(per_minute, per_hour)


def test_per_label_quotas_are_counted_per_label_and_a_refusal_takes_no_global_token() -> None:
    q = Quotas(Limits(per_minute=5), Limits(per_minute=2))
    got = [label for label in ["box"] * 4 + ["tube"] * 4 if q.try_take(label, 0.0)]
    assert got == ["box", "box", "tube", "tube"]
    # Four were refused by their label's bucket: the global one still has 5 - 4 = 1.
    assert q.try_take("bag", 0.0) and not q.try_take("other", 0.0)


def test_quota_levels_survive_a_restart_through_their_state() -> None:
    q = Quotas(Limits(per_minute=3), Limits(per_minute=2))
    assert q.try_take("box", 10.0) and q.try_take("box", 10.0)
    state = json.loads(json.dumps(q.state()))
    fresh = Quotas(Limits(per_minute=3), Limits(per_minute=2))
    fresh.restore(state)
    assert not fresh.try_take("box", 10.0)  # its label's 2 are spent
    assert fresh.try_take("tube", 10.0) and not fresh.try_take("tube", 10.0)  # the global 3rd, then none
    fresh.restore({"global": {"minute": ["x", None]}, "labels": []})  # malformed: ignored


# -- the policy -----------------------------------------------------------------------------------


def policy(**rules: Any) -> SamplingPolicy:
    return SamplingPolicy(SamplingRules(**rules), Quotas(Limits(per_minute=1000), Limits()))


@pytest.mark.parametrize(
    ("rules", "frame", "want"),
    [
        ({}, {"confidence": 0.2}, None),
        ({"low_confidence_band": (0.0, 0.7)}, {"confidence": 0.69}, "low_confidence"),
        ({"low_confidence_band": (0.0, 0.7)}, {"confidence": 0.7}, None),  # the band is [low, high)
        ({"low_confidence_band": (0.3, 0.7)}, {"confidence": 0.29}, None),
        ({"random_share": 0.25}, {"confidence": 0.9, "u": 0.24}, "random"),
        ({"random_share": 0.25}, {"confidence": 0.9, "u": 0.25}, None),
        ({"drift_share": 0.5}, {"confidence": 0.9, "u": 0.1, "drifting": True}, "drift"),
        ({"drift_share": 0.5}, {"confidence": 0.9, "u": 0.1, "drifting": False}, None),
        ({"shadow_disagreement": True}, {"confidence": 0.9, "shadow_disagrees": True}, "shadow_disagreement"),
        ({"shadow_disagreement": False}, {"confidence": 0.9, "shadow_disagrees": True}, None),
        ({"shadow_disagreement": True}, {"confidence": 0.9, "shadow_disagrees": None}, None),
        # The first strategy that wants a frame names the reason.
        (
            {"low_confidence_band": (0, 0.7), "random_share": 1.0},
            {"confidence": 0.5, "u": 0.0},
            "low_confidence",
        ),
        (
            {"low_confidence_band": (0, 0.7)},
            {"confidence": 0.5, "shadow_disagrees": True},
            "shadow_disagreement",
        ),
    ],
)
def test_each_strategy_wants_exactly_its_frames(
    rules: dict[str, Any], frame: dict[str, Any], want: str | None
) -> None:
    assert policy(**rules).decide(now=0.0, label="box", **frame) == want


def test_a_capture_request_takes_the_next_n_frames_within_the_quotas() -> None:
    p = SamplingPolicy(SamplingRules(low_confidence_band=(0.0, 0.5)), Quotas(Limits(per_minute=3), Limits()))
    p.request(5, low_confidence=False)
    reasons = [p.decide(now=0.0, label="box", confidence=0.9) for _ in range(6)]
    assert reasons == ["capture"] * 3 + [None] * 3  # the quota binds the operator too
    assert p.pending_any == 2 and p.refused_by_quota == 3
    # Later, with tokens back, the rest of the request is served, then nothing more.
    later = [p.decide(now=60.0, label="box", confidence=0.9) for _ in range(4)]
    assert later == ["capture", "capture", None, None]


def test_a_low_confidence_capture_takes_only_frames_in_the_band() -> None:
    p = policy(low_confidence_band=(0.0, 0.5))
    p.request(2, low_confidence=True)
    confs = [0.9, 0.4, 0.95, 0.1, 0.2]
    assert [p.decide(now=0.0, label="box", confidence=c) for c in confs] == [
        None,
        "capture",
        None,
        "capture",
        "low_confidence",
    ]


def test_policy_defaults_come_from_config_then_manifest_then_builtins(tmp_path: Path) -> None:
    from edge_agent.manifest import MANIFEST_FILE, parse_manifest
    from lineside_common.errors import ManifestError
    from models.synthetic import make_bundle

    bundle = make_bundle(tmp_path / "b")
    manifest = parse_manifest((bundle / MANIFEST_FILE).read_bytes())
    p = policy_for(SamplesConfig(), manifest)
    assert p.rules.low_confidence_band == (0.0, manifest.drift.low_confidence)
    assert p.rules.random_share == 0.0
    p = policy_for(SamplesConfig(low_confidence_max=0.3, random_share=0.1), manifest)
    assert p.rules.low_confidence_band == (0.0, 0.3) and p.rules.random_share == 0.1
    assert policy_for(SamplesConfig(low_confidence_max=0.0), manifest).rules.low_confidence_band is None
    # A schema-2 manifest's sampling block sits between the two; schema 1 cannot carry it.
    raw = json.loads((bundle / MANIFEST_FILE).read_text())
    raw["sampling"] = {"low_confidence_max": 0.5, "random_share": 0.02}
    with pytest.raises(ManifestError):
        parse_manifest(json.dumps(raw))
    v2 = parse_manifest(json.dumps({**raw, "schema_version": 2}))
    p = policy_for(SamplesConfig(), v2)
    assert p.rules.low_confidence_band == (0.0, 0.5) and p.rules.random_share == 0.02
    p = policy_for(SamplesConfig(random_share=0.0), v2)
    assert p.rules.random_share == 0.0  # the device's config wins


# -- decision ids ---------------------------------------------------------------------------------


def test_decision_ids_are_unique_across_restarts_and_sort_in_order(tmp_path: Path) -> None:
    seen: list[str] = []
    for _ in range(3):  # three boots of the agent
        ids = DecisionIds.for_state_dir(tmp_path)
        seen += [ids.next() for _ in range(5)]
    assert len(set(seen)) == 15 and seen == sorted(seen)
    assert all(valid_decision_id(i) for i in seen)
    assert seen[0] == "000001-000000000000" and seen[-1] == "000003-000000000004"


# -- the ring -------------------------------------------------------------------------------------


def test_the_ring_evicts_the_oldest_over_its_cap_and_counts_it_across_restarts(tmp_path: Path) -> None:
    ring = SampleRing(tmp_path, max_bytes=250)
    for i in range(5):
        ring.put(f"000001-{i:012d}", b"\xff\xd8" + bytes(98), b"{}")
    assert ring.pending() == ["000001-000000000003", "000001-000000000004"]
    assert ring.evicted_total == 3
    # A crash between the JPEG and its metadata leaves a JPEG alone: removed at the next open.
    (tmp_path / "000001-000000000009.jpg").write_bytes(b"\xff\xd8")
    again = SampleRing(tmp_path, max_bytes=250)
    assert again.pending() == ["000001-000000000003", "000001-000000000004"]
    assert again.evicted_total == 3 and not (tmp_path / "000001-000000000009.jpg").exists()
    again.remove("000001-000000000003")
    assert SampleRing(tmp_path, max_bytes=250).pending() == ["000001-000000000004"]


# -- the sampler's shell --------------------------------------------------------------------------


def frame(i: int) -> Frame:
    return Frame(index=i, captured_at=0.0, image=np.full((48, 64, 3), i % 255, dtype=np.uint8))


def decision(i: int, confidence: float = 0.3) -> SampleDecision:
    return SampleDecision(f"000001-{i:012d}", "box", confidence, np.array([confidence, 1 - confidence]), None)


def test_offer_never_blocks_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    cfg = SamplesConfig(queue_size=2, per_minute=None, per_hour=None, per_day=None, max_side_px=32)
    sampler = FrameSampler(
        cfg, SampleRing(tmp_path, 1 << 20), policy_for(cfg, None), device_id="r1", wall=lambda: 5.0
    )
    # The worker is not started: the queue fills after 2 and every further offer returns at once.
    taken = [sampler.offer(frame(i), decision(i), model=MODEL) for i in range(5)]
    assert taken == [True, True, False, False, False]
    assert sampler.dropped == 3 and sampler.taken == 5
    sampler.start()
    sampler.stop()
    ids = sampler.ring.pending()
    assert ids == ["000001-000000000000", "000001-000000000001"]
    meta, jpg = sampler.ring.load(ids[0]) or (b"", b"")
    m = json.loads(meta)
    assert jpg.startswith(b"\xff\xd8") and m["reason"] == "low_confidence" and m["decision_id"] == ids[0]
    assert m["probabilities"] == [0.3, 0.7] and m["model"]["version"] == "1.0.0"
    assert (m["image"]["width"], m["image"]["height"], m["image"]["camera_width"]) == (32, 24, 64)


def test_shadow_output_is_kept_and_a_disagreement_is_a_reason(tmp_path: Path) -> None:
    cfg = SamplesConfig(low_confidence_max=0.0, per_minute=None, per_hour=None, per_day=None)
    sampler = FrameSampler(cfg, SampleRing(tmp_path, 1 << 20), policy_for(cfg, None), device_id="r1")
    agree = ShadowOutput(MODEL, "box", 0.8)
    assert not sampler.offer(frame(0), decision(0, 0.9), model=MODEL, shadow=agree)
    differ = ShadowOutput(MODEL, "tube", 0.6, np.array([0.4, 0.6]))
    assert sampler.offer(frame(1), decision(1, 0.9), model=MODEL, shadow=differ)
    sampler.start()
    sampler.stop()
    (sid,) = sampler.ring.pending()
    m = json.loads((sampler.ring.load(sid) or (b"", b""))[0])
    assert (
        m["reason"] == "shadow_disagreement"
        and m["shadow"]["label"] == "tube"
        and m["shadow"]["probabilities"] == [0.4, 0.6]
    )


def test_capture_false_builds_no_sampler(tmp_path: Path) -> None:
    cfg = SamplesConfig(capture=False)
    with pytest.raises(ValueError):
        FrameSampler(cfg, SampleRing(tmp_path, 1 << 20), policy_for(cfg, None), device_id="r1")


# -- the uploader ---------------------------------------------------------------------------------


class FakeServer:
    """A transport answering from a script of statuses (then 201); records what arrived."""

    def __init__(self, script: list[int | Exception]) -> None:
        self.script = script
        self.calls: list[tuple[str, int, float]] = []
        self.now = 0.0

    def put(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
        self.calls.append((url.rsplit("/", 1)[1], len(body), self.now))
        step = self.script.pop(0) if self.script else 201
        if isinstance(step, Exception):
            raise step
        assert headers["Authorization"] == "Bearer tok"
        return step


def uploader(tmp_path: Path, server: FakeServer, rate: int = 1_000_000) -> SampleUploader:
    token = tmp_path / "token"
    token.write_text("tok\n")
    ring = SampleRing(tmp_path / "ring", 1 << 20)
    return SampleUploader(
        ring,
        server_url="http://fleet",
        device_id="r1",
        token_file=token,
        max_bytes_per_s=rate,
        transport=server,
        monotonic=lambda: server.now,
        seed=1,
    )


def test_the_uploader_keeps_samples_through_outages_and_sends_each_until_acknowledged(tmp_path: Path) -> None:
    server = FakeServer([ConnectionRefusedError(), 503, 201, 200, 422])
    up = uploader(tmp_path, server)
    for i in range(4):
        up.ring.put(f"000001-{i:012d}", b"\xff\xd8" + bytes(10), b"{}")
    assert not up.drain_once() and len(up.ring) == 4  # refused connection: back off, keep all
    assert not up.drain_once() and len(up.ring) == 4  # 503: the same
    assert up.drain_once()  # 201, 200 (already stored: as good), 422 (never storable: dropped), 201
    assert [c[0] for c in server.calls] == ["000001-000000000000"] * 3 + [
        f"000001-{i:012d}" for i in (1, 2, 3)
    ]
    assert up.uploaded == 3 and up.refused == 1 and len(up.ring) == 0


def test_backoff_grows_with_jitter_and_is_capped(tmp_path: Path) -> None:
    up = uploader(tmp_path, FakeServer([503] * 11))
    up.ring.put("000001-000000000000", b"\xff\xd8" + bytes(10), b"{}")
    delays = []
    for _ in range(11):
        assert not up.drain_once()
        delays.append(up.backoff.next_delay())  # what the upload thread waits after a failed drain
    for n, d in enumerate(delays, start=1):
        base = min(up.backoff.max_s, up.backoff.min_s * 2 ** (n - 1))
        assert 0.5 * base <= d <= base
    assert max(delays) <= up.backoff.max_s == 60.0 and up.backoff.min_s == 1.0
    assert up.drain_once() and len(up.ring) == 0  # a 2xx: the next failure starts from the minimum
    assert up.backoff.next_delay() <= up.backoff.min_s


def test_the_bandwidth_cap_paces_uploads(tmp_path: Path) -> None:
    server = FakeServer([])
    up = uploader(tmp_path, server, rate=2000)
    for i in range(5):
        up.ring.put(f"000001-{i:012d}", b"\xff\xd8" + bytes(996), b"{}")

    def fake_wait(timeout: float | None = None) -> bool:
        server.now += timeout or 0.0
        return False

    up._stop.wait = fake_wait  # type: ignore[method-assign]  # the clock seam: waiting advances fake time
    assert up.drain_once()
    sent = sum(c[1] for c in server.calls)
    # 2000 B/s with a one-second burst: 5 x 1001 bytes cannot all be sent before (5005 - 2000) / 2000 s.
    assert server.calls[-1][2] >= (sent - 2000) / 2000 - 1e-9
    assert server.calls[0][2] == 0.0 and server.calls[1][2] < 0.01  # the burst: about two at once


def test_ids_are_strictly_increasing_per_boot() -> None:
    ids = DecisionIds(7)
    got = [ids.next() for _ in range(1000)]
    assert got == sorted(got) and len(set(got)) == 1000
    assert list(itertools.islice(got, 2)) == ["000007-000000000000", "000007-000000000001"]


class _FakeAgent:
    """What attach_to_agent touches of an Agent: config, runner.manifest, events, command handlers."""

    def __init__(self, config: Any, manifest: Any) -> None:
        self.config = config
        self.runner = type("R", (), {"manifest": manifest})()
        self.sampler: FrameSampler | None = None
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.handlers: dict[str, Any] = {}

    def emit_event(self, kind: str, **kw: Any) -> None:
        self.events.append((kind, kw))

    def set_command_handler(self, type_: str, handler: Any) -> None:
        self.handlers[type_] = handler


@pytest.mark.parametrize(
    ("samples", "built", "answer", "reason"),
    [
        ({"server_url": "http://fleet:8080"}, True, "capture", None),
        (
            {"server_url": "http://fleet:8080", "capture": False},
            False,
            "command.rejected",
            "capture_disabled",
        ),
        ({}, False, "command.rejected", "no_destination"),  # nowhere to send: nothing kept
    ],
)
def test_attach_builds_a_sampler_only_with_capture_on_and_a_destination(
    tmp_path: Path, samples: dict[str, Any], built: bool, answer: str, reason: str | None
) -> None:
    from edge_agent.config import parse_config
    from edge_agent.manifest import MANIFEST_FILE, parse_manifest
    from edge_agent.messages import CaptureCommand
    from edge_agent.sampling import attach_to_agent
    from models.synthetic import make_bundle

    manifest = parse_manifest((make_bundle(tmp_path / "b") / MANIFEST_FILE).read_bytes())
    config = parse_config(
        {"device_id": "r1", "state_dir": str(tmp_path / "s"), "source": {"uri": "x"}, "samples": samples}
    )
    agent = _FakeAgent(config, manifest)
    assert (attach_to_agent(agent) is not None) is built and (agent.sampler is not None) is built
    assert (tmp_path / "s" / "samples").exists() is built
    agent.handlers["capture"](CaptureCommand(cmd_id="c1", count=3))
    kind, kw = agent.events[-1]
    assert kind == answer and kw["cmd_id"] == "c1"
    assert kw["data"].get("reason") == reason
