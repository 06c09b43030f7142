"""Prometheus ``/metrics`` in the text exposition format, written by hand.

A handful of gauges and counters do not justify the ``prometheus_client`` dependency and its
global registry (which fights with several apps in one test process).
"""

from __future__ import annotations

from collections.abc import Iterable


def _line(name: str, value: float, labels: dict[str, str] | None = None) -> str:
    if labels:
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        return f"{name}{{{inner}}} {value:g}"
    return f"{name} {value:g}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def family(
    name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str] | None, float]]
) -> str:
    """One metric family: HELP, TYPE and its samples."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [_line(name, v, labels) for labels, v in samples]
    return "\n".join(lines) + "\n"


def render(
    *,
    devices_total: int,
    devices_online: int,
    rollouts_by_state: dict[str, int],
    ingest_totals: dict[str, int],
    alerts_open: int,
    ingest_backlog: int,
    uptime_s: float,
) -> str:
    parts = [
        family("lineside_devices", "gauge", "Devices known to the fleet.", [(None, devices_total)]),
        family("lineside_devices_online", "gauge", "Devices online now.", [(None, devices_online)]),
        family(
            "lineside_rollouts",
            "gauge",
            "Rollouts by state.",
            [({"state": k}, v) for k, v in sorted(rollouts_by_state.items())],
        ),
        family(
            "lineside_ingest_messages_total",
            "counter",
            "MQTT messages ingested since start, by kind and outcome (dup = already stored).",
            [({"kind": k}, v) for k, v in sorted(ingest_totals.items())],
        ),
        family(
            "lineside_ingest_backlog",
            "gauge",
            "Messages received but not yet written.",
            [(None, ingest_backlog)],
        ),
        family("lineside_alerts_open", "gauge", "Alerts not yet acknowledged.", [(None, alerts_open)]),
        family("lineside_uptime_seconds", "gauge", "Seconds since this server started.", [(None, uptime_s)]),
    ]
    return "".join(parts)
