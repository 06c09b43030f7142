"""Pure pieces of edge_agent.updates: typed reasons and event kinds, the settings built from
``[updates]`` whole, the download retry schedule of the staging pipeline, and the swap meter."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from edge_agent.acceptance import DeviceFacts
from edge_agent.config import UpdatesConfig
from edge_agent.store import ModelStore, store_error
from edge_agent.trust import UpdateVerificationError
from edge_agent.updates import DecisionMeter, UpdaterSettings, settings_from_config, stage_verified
from edge_agent.updates.outcome import REFUSALS, refusal
from lineside_common import cli
from lineside_common.errors import (
    FetchError,
    IncompatibleModelError,
    LinesideError,
    ModelLoadError,
    SelftestError,
    StoreError,
    UpdateRefusedError,
    VerificationError,
)

# -- reasons and event kinds ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "kind", "reason"),
    [
        (UpdateRefusedError("m", reason="too_large"), "update.rejected", "too_large"),
        (UpdateRefusedError("m", reason="cancelled", kind="update.failed"), "update.failed", "cancelled"),
        (UpdateVerificationError("m", reason="replay"), "update.rejected", "replay"),
        (VerificationError("m"), "update.rejected", "verification"),
        (IncompatibleModelError("m", reason="device_class"), "update.rejected", "device_class"),
        (SelftestError("m"), "update.rejected", "selftest"),
        (FetchError("m"), "update.failed", "fetch"),
        (StoreError("m"), "update.failed", "store"),
        (StoreError("m", reason="disk_full"), "update.failed", "disk_full"),
        (ModelLoadError("m"), "update.failed", "load"),
        (TimeoutError("swap"), "update.failed", "error"),
        (OSError(errno.EIO, "io"), "update.failed", "error"),
    ],
)
def test_a_refusal_is_its_errors_family_and_reason(exc: Exception, kind: str, reason: str) -> None:
    assert isinstance(exc, REFUSALS)
    assert refusal(exc)[:2] == (kind, reason)


def test_a_refusal_carries_the_errors_facts() -> None:
    data = {"device_clock": "2020-01-01T00:00:00+00:00"}
    assert refusal(UpdateVerificationError("m", reason="clock", data=data))[2] == data
    assert refusal(UpdateRefusedError("m", reason="too_large", data={"bytes": 9}))[2] == {"bytes": 9}


def test_store_errors_say_disk_full_by_errno_never_by_words(tmp_path: Path) -> None:
    full = store_error(OSError(errno.ENOSPC, "No space left on device"), "staging")
    assert (full.reason, str(full)) == ("disk_full", "disk full while staging")
    quota = store_error(OSError(errno.EDQUOT, "Disk quota exceeded"), "writing state.json")
    assert quota.reason == "disk_full"
    other = store_error(OSError(errno.EIO, "disk full"), "staging", detail="the words")
    assert (other.reason, str(other)) == ("store", "staging failed: the words")
    store = ModelStore(tmp_path / "s", reserve_bytes=1 << 62)  # no disk has this much free
    with pytest.raises(StoreError) as caught:
        store.check_space(1)
    assert caught.value.reason == "disk_full"


def test_the_cli_frame_reports_each_errors_own_reason(capsys: pytest.CaptureFixture[str]) -> None:
    def parser_raising(exc: Exception) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(prog="t")
        p.add_argument("-v", "--verbose", action="count", default=0)
        p.add_argument("--json", action="store_true")

        def fail(args: argparse.Namespace) -> int:
            raise exc

        p.set_defaults(func=fail)
        return p

    class OddError(LinesideError):
        pass

    for exc, reason in [
        (FetchError("cut"), "fetch"),
        (StoreError("full", reason="disk_full"), "disk_full"),
        (UpdateRefusedError("no", reason="not_configured"), "not_configured"),
        (OddError("odd"), "odd"),  # a class without a code of its own: its name
        (LinesideError("base"), "lineside"),
    ]:
        assert cli.run(parser_raising(exc), ["--json"]) == cli.EXIT_ERROR
        out = capsys.readouterr()
        assert json.loads(out.out) == {"ok": False, "error": str(exc), "reason": reason}
        assert out.err == f"error: {exc}\n"


# -- settings ------------------------------------------------------------------------------------


def test_updater_settings_mirror_every_updates_field_and_default() -> None:
    settings = {f.name: f for f in dataclasses.fields(UpdaterSettings)}
    for name, info in UpdatesConfig.model_fields.items():
        assert name in settings, f"[updates] {name} has no UpdaterSettings field"
        if not info.is_required():
            assert settings[name].default == info.default, name


def test_settings_from_config_passes_the_section_whole(tmp_path: Path) -> None:
    up = UpdatesConfig(
        root_json=tmp_path / "root.json",
        repository_url="http://fleet:8000",
        targets_max_bytes=123,
        fetch_attempts=7,
        fetch_backoff_max_s=2.5,
        max_bundle_bytes=99,
    )

    class Config:
        device_class = "arm-npu"
        updates = up

    got = settings_from_config(Config())
    assert dataclasses.asdict(got) == {
        **up.model_dump(),
        "device_class": "arm-npu",
        "agent_version": got.agent_version,
    }

    class Bare:
        device_class = "x86"
        updates = None

    assert settings_from_config(Bare()) == UpdaterSettings(device_class="x86")


# -- the staging pipeline's retry schedule -------------------------------------------------------


class _Repo:
    """A TUF session whose refresh fails as told (counted)."""

    def __init__(self, exc: Exception, calls: list[int]) -> None:
        self.exc = exc
        calls.append(1)

    def refresh(self) -> None:
        raise self.exc


FACTS = DeviceFacts(device_class="generic", agent_version="0.1.0", highest_accepted={}, failed=frozenset())


def test_a_cut_download_is_retried_doubling_to_the_cap_with_no_wait_after_the_last(tmp_path: Path) -> None:
    settings = UpdaterSettings(fetch_attempts=5, fetch_backoff_s=1.0, fetch_backoff_max_s=3.0)
    calls: list[int] = []
    slept: list[float] = []
    with pytest.raises(FetchError) as caught:
        stage_verified(
            lambda: _Repo(FetchError("connection reset"), calls),  # type: ignore[arg-type,return-value]  # a fake session
            "tiny",
            "1.0.0",
            FACTS,
            store=ModelStore(tmp_path / "s"),
            settings=settings,
            sleep=slept.append,
        )
    assert len(calls) == 5  # a fresh TUF session per attempt
    assert slept == [1.0, 2.0, 3.0, 3.0]
    assert str(caught.value) == "connection reset (gave up after 5 attempts)"
    assert list((tmp_path / "s" / "staging").iterdir()) == []


def test_a_verification_failure_is_never_retried(tmp_path: Path) -> None:
    calls: list[int] = []
    slept: list[float] = []
    with pytest.raises(UpdateVerificationError) as caught:
        stage_verified(
            lambda: _Repo(UpdateVerificationError("bad", reason="signature"), calls),  # type: ignore[arg-type,return-value]  # a fake session
            "tiny",
            "1.0.0",
            FACTS,
            store=ModelStore(tmp_path / "s"),
            settings=UpdaterSettings(),
            sleep=slept.append,
        )
    assert (len(calls), slept, caught.value.reason) == (1, [], "signature")


# -- the swap meter ------------------------------------------------------------------------------


class _Decision:
    def __init__(self, frame_id: int) -> None:
        self.frame_id = frame_id


def test_the_meter_wakes_a_waiting_swap_when_enough_decisions_arrived() -> None:
    meter = DecisionMeter()
    t = meter.clock()
    started = threading.Event()

    def line() -> None:
        started.wait(5)
        for i in range(12):
            meter(_Decision(i))

    th = threading.Thread(target=line)
    th.start()
    started.set()
    assert meter.wait_for(10, t, timeout_s=30.0) is True
    th.join(5)
    assert meter.count_after(t) == 12


def test_the_meter_gives_up_on_an_idle_line() -> None:
    meter = DecisionMeter()
    assert meter.wait_for(1, meter.clock(), timeout_s=0.05) is False  # bounded: never blocks a swap


def test_swap_stats_count_dropped_frames_around_a_swap() -> None:
    times = iter([float(i) for i in range(100)])
    meter = DecisionMeter(clock=lambda: next(times))
    for fid in [1, 2, 3, 4, 7, 8, 9]:  # frames 5 and 6 were never decided
        meter(_Decision(fid))
    stats: dict[str, Any] = meter.swap_stats(3.5, 3.6)
    assert stats["dropped"] == 2 and stats["frames_observed"] == 4
