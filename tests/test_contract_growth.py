"""The contract's growth rule, both directions (issue 14 item 11).

- An agent refuses a command carrying a field it does not know with ``command.rejected`` (by its
  ``cmd_id``), never half-understands it: a shadow deploy is never taken for a real install.
- The server stores event kinds and telemetry fields from a newer agent instead of dropping them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from edge_agent.commands import CommandDispatcher
from edge_agent.messages import Topics
from fleet_server.db import Database, EventRow, TelemetryRow
from fleet_server.ingest import Inbound, Ingest

TOPICS = Topics()


def _dispatcher() -> tuple[CommandDispatcher, list[tuple[str, dict[str, Any]]], list[Any]]:
    emitted: list[tuple[str, dict[str, Any]]] = []
    handled: list[Any] = []
    d = CommandDispatcher(lambda kind, **kw: emitted.append((kind, kw)))
    d.set_handler("deploy", handled.append)
    return d, emitted, handled


def test_a_command_with_an_unknown_field_is_refused_by_its_cmd_id_and_never_run() -> None:
    d, emitted, handled = _dispatcher()
    payload = {"type": "deploy", "cmd_id": "c-9", "name": "shapes", "version": "2.0.0", "canary_only": True}
    d.handle("cmd", json.dumps(payload).encode())
    assert handled == []
    [(kind, kw)] = emitted
    assert kind == "command.rejected" and kw["cmd_id"] == "c-9"
    assert kw["data"]["reason"] == "unknown_fields" and kw["data"]["fields"] == ["canary_only"]


def test_a_shadow_deploy_reaches_the_handler_as_a_shadow() -> None:
    d, emitted, handled = _dispatcher()
    payload = {"type": "deploy", "cmd_id": "c-1", "name": "shapes", "version": "2.0.0", "mode": "shadow"}
    d.handle("cmd", json.dumps(payload).encode())
    assert emitted == [] and [c.mode for c in handled] == ["shadow"]


def test_a_payload_without_a_cmd_id_stays_a_message_rejection() -> None:
    d, emitted, _ = _dispatcher()
    d.handle("cmd", json.dumps({"type": "deploy", "name": "x", "version": "1.0.0", "foo": 1}).encode())
    assert [k for k, _ in emitted] == ["message.rejected"]


def test_the_server_stores_a_newer_agents_event_kinds_and_telemetry_fields(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'fleet.db'}")
    db.create()
    ing = Ingest(db, TOPICS)
    now = datetime.now(UTC).isoformat()
    ev = {"device_id": "d1", "seq": 1, "kind": "truth.received", "data": {"label": "circle-80"}}
    tel = {
        "device_id": "d1",
        "seq": 1,
        "window_start": now,
        "window_s": 1.0,
        "frames": 5,
        "opcua": {"clients": 2},
        "shadow": {"role": "candidate", "compared": 4, "agree": 4, "future_counter": 7},
    }
    c = ing.write_batch(
        [
            Inbound(TOPICS.device("d1", "events"), json.dumps(ev).encode(), 0, 1),
            Inbound(TOPICS.device("d1", "telemetry"), json.dumps(tel).encode(), 0, 1),
        ]
    )
    assert (c.events_new, c.telemetry_new) == (1, 1)
    with db.session() as s:
        kind, ev_payload = s.execute(select(EventRow.kind, EventRow.payload)).one()
        (tel_payload,) = s.execute(select(TelemetryRow.payload)).one()
    assert kind == "truth.received" and ev_payload["data"] == {"label": "circle-80"}
    assert tel_payload["opcua"] == {"clients": 2}
    assert tel_payload["shadow"]["future_counter"] == 7 and tel_payload["shadow"]["agree"] == 4
    db.dispose()
