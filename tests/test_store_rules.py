"""The store's pure state machine: invariants over every sequence of steps (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent import store_rules as rules
from edge_agent.manifest import version_key
from edge_agent.store_rules import BundleRef, StoreState, TransitionError

BUNDLES = [BundleRef(f"{i:064x}", "tiny", f"1.{i}.0") for i in range(5)]
THRESHOLD = 2

step = st.one_of(
    st.tuples(st.just("install"), st.sampled_from(BUNDLES)),
    st.tuples(st.just("commit"), st.none()),
    st.tuples(st.just("fail"), st.none()),
    st.tuples(st.just("rollback"), st.none()),
    st.tuples(st.just("boot"), st.none()),
)


def _invariants(before: StoreState, after: StoreState) -> None:
    if after.active is not None and after.previous is not None:
        assert after.active.sha256 != after.previous.sha256
    if after.probation:
        assert after.previous is not None and after.active is not None
        assert after.boot_count <= THRESHOLD
    else:
        assert after.boot_count == 0
    if before.active is not None:
        assert after.active is not None  # never left without a model
    for name, version in before.highest.items():
        assert version_key(after.highest[name]) >= version_key(version)
    assert after.referenced() <= {b.sha256 for b in BUNDLES}
    assert StoreState.from_dict(after.to_dict()) == after


@settings(max_examples=400, deadline=None)
@given(st.lists(step, max_size=25))
def test_every_sequence_keeps_the_invariants(steps: list[tuple[str, BundleRef | None]]) -> None:
    state = StoreState()
    committed: set[str] = set()
    for op, arg in steps:
        before = state
        try:
            if op == "install":
                assert arg is not None
                state = rules.install(state, arg)
            elif op == "commit":
                state = rules.commit(state)
            elif op == "fail":
                state = rules.fail_probation(state)
                assert before.active is not None
                assert before.active.ref in state.failed
                assert state.active == before.previous
            elif op == "rollback":
                state = rules.rollback(state)
            else:
                state, rolled = rules.boot(state, crash_loop_threshold=THRESHOLD)
                if rolled:
                    assert before.active is not None and before.active.ref in state.failed
        except TransitionError:
            state = before
        if not state.probation and state.active is not None:
            committed.add(state.active.sha256)
        # previous is always a committed model
        if state.previous is not None:
            assert state.previous.sha256 in committed
        _invariants(before, state)


def test_first_install_commits_at_once() -> None:
    s = rules.install(StoreState(), BUNDLES[0])
    assert s.active == BUNDLES[0] and s.previous is None and not s.probation


def test_install_over_committed_goes_on_probation() -> None:
    s = rules.install(rules.install(StoreState(), BUNDLES[0]), BUNDLES[1], cmd_id="c1", rollout_id="r1")
    assert s.active == BUNDLES[1] and s.previous == BUNDLES[0] and s.probation
    assert s.probation_cmd_id == "c1" and s.probation_rollout_id == "r1"
    assert s.highest == {"tiny": "1.1.0"}


def test_install_during_probation_keeps_the_committed_fallback() -> None:
    s = rules.install(rules.install(StoreState(), BUNDLES[0]), BUNDLES[1])
    s = rules.install(s, BUNDLES[2])
    assert s.previous == BUNDLES[0] and s.active == BUNDLES[2] and s.probation


def test_reinstalling_the_active_bundle_changes_nothing() -> None:
    s = rules.install(StoreState(), BUNDLES[0])
    assert rules.install(s, BUNDLES[0]) is s


def test_crash_loop_rolls_back_after_the_threshold() -> None:
    s = rules.install(rules.install(StoreState(), BUNDLES[0]), BUNDLES[1])
    for n in range(1, THRESHOLD + 1):
        s, rolled = rules.boot(s, crash_loop_threshold=THRESHOLD)
        assert not rolled and s.boot_count == n
    s, rolled = rules.boot(s, crash_loop_threshold=THRESHOLD)
    assert rolled and s.active == BUNDLES[0] and s.previous is None and "tiny@1.1.0" in s.failed


def test_boot_without_probation_does_not_count() -> None:
    s = rules.install(StoreState(), BUNDLES[0])
    assert rules.boot(s, crash_loop_threshold=0) == (s, False)


def test_manual_rollback_when_committed_swaps_and_can_be_undone() -> None:
    s = rules.commit(rules.install(rules.install(StoreState(), BUNDLES[0]), BUNDLES[1]))
    r = rules.rollback(s)
    assert r.active == BUNDLES[0] and r.previous == BUNDLES[1] and not r.failed
    assert rules.rollback(r).active == BUNDLES[1]


def test_rollback_with_nothing_to_go_back_to_is_an_error() -> None:
    with pytest.raises(TransitionError):
        rules.rollback(rules.install(StoreState(), BUNDLES[0]))
    with pytest.raises(TransitionError):
        rules.commit(StoreState())


def test_seen_commands_are_bounded() -> None:
    s = StoreState()
    for i in range(rules.MAX_SEEN_COMMANDS + 10):
        s = rules.remember_command(s, f"c{i}")
    assert len(s.seen_commands) == rules.MAX_SEEN_COMMANDS and s.seen_commands[-1] == f"c{i}"
    assert rules.remember_command(s, s.seen_commands[-1]) is s


def test_malformed_state_is_a_store_error() -> None:
    from lineside_common.errors import StoreError

    with pytest.raises(StoreError):
        StoreState.from_dict({"format": 1, "active": {"name": "x"}})
    with pytest.raises(StoreError):
        StoreState.from_dict({"format": 99})
