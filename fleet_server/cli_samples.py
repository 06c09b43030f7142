"""``fleet samples list | show | purge | capture``: the frames devices sent back, over the HTTP API.

Filters (``--device``, ``--since``, ``--until`` as ISO 8601 times, ``--label``: the model's label)
select by device, time taken and label. ``purge`` needs at least one filter, or ``--all``.
With ``--json`` the output, and an error too, is one JSON document.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from edge_agent.atomic import atomic_write_bytes
from edge_agent.clitools import CommandError, error_line, print_json
from edge_agent.errors import LinesideError
from fleet_server.cli_ops import _client, _common, _console, _table


def _when(text: str) -> str:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).isoformat()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from exc


def _filters(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--device", help="only this device's samples")
    p.add_argument("--since", type=_when, help="taken at or after this time (ISO 8601)")
    p.add_argument("--until", type=_when, help="taken before this time (ISO 8601)")
    p.add_argument("--label", help="only samples the model gave this label")
    return p


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    samples = sub.add_parser(
        "samples",
        help="frames devices kept for retraining",
        description="Frames the devices sampled (low confidence, drift, shadow disagreement, random, "
        "operator capture) and uploaded; stored once each, content-addressed.",
    )
    ssub = samples.add_subparsers(dest="samples_command", metavar="SUBCOMMAND", required=True)
    p = _filters(_common(ssub.add_parser("list", help="list samples, newest first")))
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    p.set_defaults(func=_guard(samples_list))
    p = _common(ssub.add_parser("show", help="one sample's metadata; --image-out writes its JPEG"))
    p.add_argument("id", type=int, help="the sample's id (from `fleet samples list`)")
    p.add_argument("--image-out", type=Path, help="write the sample's JPEG to this file")
    p.set_defaults(func=_guard(samples_show))
    p = _common(ssub.add_parser("capture", help="ask a device for its next N frames (within its quotas)"))
    p.add_argument("device", help="the device id")
    p.add_argument("--count", type=int, default=10, help="how many frames (1-1000, default 10)")
    p.add_argument("--low-confidence", action="store_true", help="only frames in its low-confidence band")
    p.set_defaults(func=_guard(samples_capture))
    p = _filters(_common(ssub.add_parser("purge", help="remove samples (rows and their files)")))
    p.add_argument("--all", action="store_true", help="every sample (needed when no filter is given)")
    p.set_defaults(func=_guard(samples_purge))


def _guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """With --json, an expected error is a JSON document on stdout too (and the one line on stderr)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except LinesideError as exc:
            if not args.json:
                raise
            reason = getattr(exc, "body", None)
            print_json(
                {
                    "error": str(exc),
                    "status": getattr(exc, "status", None),
                    "reason": reason.get("reason") if isinstance(reason, dict) else None,
                }
            )
            error_line(str(exc))
            return getattr(exc, "exit_code", 1)

    return run


def _params(args: argparse.Namespace) -> dict[str, Any]:
    return {
        k: v
        for k, v in {
            "device": args.device,
            "since": args.since,
            "until": args.until,
            "label": args.label,
        }.items()
        if v is not None
    }


def samples_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        out = c.request("GET", "/api/v1/samples", params={**_params(args), "limit": args.limit})
    if args.json:
        print_json(out)
        return 0
    rows = [
        [
            s["id"],
            s["device_id"],
            s["sample_id"],
            s["taken_at"],
            s["reason"],
            s["label"],
            f"{s['confidence']:.3f}",
            f"{s['model']['name']}@{s['model']['version']}",
            s["image_bytes"],
        ]
        for s in out["samples"]
    ]
    cols = ["id", "device", "sample", "taken", "reason", "label", "confidence", "model", "bytes"]
    _console().print(_table(f"samples ({len(rows)} of {out['total']})", cols, rows))
    return 0


def samples_show(args: argparse.Namespace) -> int:
    with _client(args) as c:
        sample = c.request("GET", f"/api/v1/samples/{args.id}")
        if args.image_out is not None:
            atomic_write_bytes(args.image_out, c.get_bytes(f"/api/v1/samples/{args.id}/image"))
    if args.json:
        print_json(sample)
    else:
        _console().print_json(data=sample, default=str)
    return 0


def samples_purge(args: argparse.Namespace) -> int:
    body: dict[str, Any] = _params(args)
    if not body and not args.all:
        raise CommandError("purge needs a filter (--device, --since, --until, --label) or --all")
    if args.all:
        body["all"] = True
    with _client(args) as c:
        out = c.request("POST", "/api/v1/samples/purge", json=body)
    if args.json:
        print_json(out)
    else:
        _console().print(f"removed {out['samples']} samples and {out['files']} files")
    return 0


def samples_capture(args: argparse.Namespace) -> int:
    with _client(args) as c:
        out = c.request(
            "POST",
            f"/api/v1/devices/{args.device}/capture",
            json={"count": args.count, "low_confidence": args.low_confidence},
        )
    if args.json:
        print_json(out)
    else:
        _console().print(
            f"sent capture {out['cmd_id']} to {out['device_id']} (watch its events for the answer)"
        )
    return 0
