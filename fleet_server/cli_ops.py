"""The operator's ``fleet`` commands over the HTTP API: models, devices, rollouts, rollback, alerts, tokens.

Server and token: ``--server``/``--token`` or ``LINESIDE_SERVER``/``LINESIDE_TOKEN`` (read here,
at the CLI boundary). ``--json`` prints machine-readable output. Exit codes: 0 ok, 1 error
(one line on stderr), 3 ``rollout status --watch`` ended in halted/aborted.

Size: the operator commands' argparse definitions and their thin handlers, one short function
each; splitting them by noun would scatter one CLI's help and conventions.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, get_args

from rich.console import Console
from rich.live import Live
from rich.table import Table

from fleet_server.client import FleetClient
from fleet_server.policy import Policy
from lineside_common.cli import CommandError, print_json

EXIT_ROLLOUT_FAILED = 3


def _common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--server", help="fleet server URL (default: $LINESIDE_SERVER or http://127.0.0.1:8080)")
    p.add_argument("--token", help="API token (default: $LINESIDE_TOKEN)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return p


def _client(args: argparse.Namespace) -> FleetClient:
    server = args.server or os.environ.get("LINESIDE_SERVER") or "http://127.0.0.1:8080"
    token = args.token or os.environ.get("LINESIDE_TOKEN")
    if not token:
        raise CommandError("no API token: pass --token or set LINESIDE_TOKEN (see `fleet tokens create`)")
    return FleetClient(server, token)


def _console() -> Console:
    # Not a terminal (a pipe, a log): wide enough that tables do not wrap every cell.
    return Console(stderr=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    return t


def _csv(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = sub.add_parser("models", help="released models", description="Models in the fleet's repository.")
    msub = models.add_subparsers(dest="models_cmd", required=True, metavar="ACTION")
    _common(msub.add_parser("list", help="list releases")).set_defaults(func=models_list)

    devices = sub.add_parser("devices", help="the device registry", description="Devices the fleet knows.")
    dsub = devices.add_subparsers(dest="devices_cmd", required=True, metavar="ACTION")
    p = _common(dsub.add_parser("list", help="list devices"))
    p.add_argument("--group")
    p.add_argument("--tag")
    p.set_defaults(func=devices_list)
    p = _common(dsub.add_parser("show", help="one device with its recent telemetry"))
    p.add_argument("device")
    p.set_defaults(func=devices_show)
    p = _common(
        dsub.add_parser(
            "add",
            help="register a device before its first connection",
            description=(
                "Register a robot before it first connects, so it can be put in a group (and a group "
                "rollout includes it). A device also registers itself when it first reports."
            ),
        )
    )
    p.add_argument("device", metavar="ROBOT")
    p.add_argument("--group", help="group name (rollouts target groups)")
    p.add_argument("--tags", help="comma-separated tags")
    p.set_defaults(func=devices_add)
    p = _common(dsub.add_parser("tag", help="assign a group and/or tags to a known device"))
    p.add_argument("device")
    p.add_argument("--group", help="group name (rollouts target groups)")
    p.add_argument("--clear-group", action="store_true")
    p.add_argument("--tags", help="comma-separated tags (replaces the device's tags)")
    p.set_defaults(func=devices_tag)

    rollout = sub.add_parser(
        "rollout",
        help="staged rollouts",
        description=(
            "Staged rollouts: each stage deploys to its devices, waits for probation and the soak time, "
            "then checks the gates (install/probation failures, and confidence vs the same devices' "
            "pre-rollout telemetry) before the next stage. A failed gate halts and rolls back."
        ),
    )
    rsub = rollout.add_subparsers(dest="rollout_cmd", required=True, metavar="ACTION")
    p = _common(rsub.add_parser("start", help="start a rollout of NAME@VERSION"))
    p.add_argument("model", metavar="NAME@VERSION")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--devices", help="comma-separated device ids, in rollout order")
    who.add_argument("--group", help="every device in this group (online first)")
    p.add_argument("--stages", help="cumulative stage sizes, e.g. 1,25%%,100%% (server default if omitted)")
    p.add_argument("--soak", help="time to watch each stage after probation, e.g. 60s, 5m")
    p.add_argument("--max-failure", help="halt when more than this share fails, e.g. 10%%")
    p.add_argument("--max-p50-drop", type=float, help="halt when confidence p50 drops more than this (0-1)")
    p.add_argument(
        "--max-low-rise", type=float, help="halt when the low-confidence rate rises more than this (0-1)"
    )
    p.add_argument("--min-gate-frames", type=int, help="frames on the new version needed to judge quality")
    p.add_argument(
        "--shadow",
        help="first run the candidate in shadow (never acting) on this share of the devices: 25%%, 2 or all",
    )
    p.add_argument("--shadow-soak", help="how long the shadow phase runs before its verdict, e.g. 5m")
    p.add_argument("--shadow-min-agreement", type=float, help="agreement the shadow phase needs (0-1)")
    p.add_argument("--shadow-min-frames", type=int, help="compared frames the shadow verdict needs")
    p.add_argument(
        "--no-baseline",
        choices=get_args(Policy.model_fields["no_baseline"].annotation),  # the one definition
        help="a gate with no baseline telemetry: pause as inconclusive (default) or pass (recorded)",
    )
    p.add_argument(
        "--sample-low-confidence",
        type=_band,
        metavar="MIN,MAX",
        help="while this release serves, sample frames with confidence in [MIN, MAX), e.g. 0.3,0.6",
    )
    p.add_argument("--sample-random", type=_share, metavar="SHARE", help="sample this share of frames (0-1)")
    p.add_argument(
        "--sample-drift",
        type=_share,
        metavar="SHARE",
        help="sample this share of frames while drifting (0-1)",
    )
    for period in ("minute", "hour", "day"):
        p.add_argument(
            f"--sample-per-{period}", type=int, metavar="N", help=f"at most N samples per {period}"
        )
    p.add_argument("--watch", action="store_true", help="follow it until it ends")
    p.set_defaults(func=rollout_start)
    p = _common(rsub.add_parser("status", help="a rollout's stages and devices"))
    p.add_argument("id")
    p.add_argument("--watch", action="store_true", help="refresh until it ends (exit 3 if halted/aborted)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (--watch)")
    p.set_defaults(func=rollout_status)
    p = _common(rsub.add_parser("list", help="recent rollouts"))
    p.set_defaults(func=rollout_list)
    for op in ("pause", "resume", "abort"):
        p = _common(rsub.add_parser(op, help=f"{op} a rollout"))
        p.add_argument("id")
        if op == "abort":
            p.add_argument("--rollback", action="store_true", help="also roll back devices that received it")
        if op == "resume":
            p.add_argument("--why", default="", help="the reason, to resume past an inconclusive verdict")
            p.add_argument("--by", default="", help="who overrides (default: $USER)")
        p.set_defaults(func=rollout_op, op=op)

    p = _common(
        sub.add_parser(
            "rollback",
            help="roll devices back to their previous model now",
            description="Send rollback to a device or a group.",
        )
    )
    p.add_argument("device", nargs="?")
    p.add_argument("--group")
    p.add_argument("--reason", default="operator rollback")
    p.set_defaults(func=rollback)

    p = _common(
        sub.add_parser(
            "alerts", help="list or acknowledge alerts", description="Drift alerts, rollbacks, rollout halts."
        )
    )
    p.add_argument("--ack", type=int, metavar="ID", help="acknowledge alert ID")
    p.add_argument("--open", action="store_true", help="only unacknowledged alerts")
    p.set_defaults(func=alerts)

    p = _common(
        sub.add_parser(
            "accuracy",
            help="field accuracy per model version (and device)",
            description="Field accuracy and dimension MAE from truth joined to decisions on the devices.",
        )
    )
    p.add_argument("--device", help="only this device")
    p.add_argument("--model", help="only this NAME@VERSION")
    p.add_argument("--by-device", action="store_true", help="one row per model version and device")
    p.add_argument("--since", metavar="ISO", help="only truth joined at or after this time (ISO 8601)")
    p.add_argument("--until", metavar="ISO", help="only truth joined before this time (ISO 8601)")
    p.set_defaults(func=accuracy_cmd)

    p = _common(
        sub.add_parser(
            "truth",
            help="say what a decision's package really was",
            description="Post truth about one decision (needs a truth or admin token); the device joins it.",
        )
    )
    p.add_argument("device", help="the device that decided")
    p.add_argument("decision", help="the decision id (BOOT-N)")
    p.add_argument("label", help="the true label")
    p.add_argument("--dimensions", metavar="W,H", help="the true dimensions in mm")
    p.set_defaults(func=truth_cmd)

    tokens = sub.add_parser(
        "tokens", help="API tokens", description="Bearer tokens (stored hashed on the server)."
    )
    tsub = tokens.add_subparsers(dest="tokens_cmd", required=True, metavar="ACTION")
    p = _common(tsub.add_parser("create", help="create a token (printed once)"))
    p.add_argument("--role", choices=["admin", "viewer", "truth"], required=True)
    p.add_argument("--name", default="")
    p.set_defaults(func=tokens_create)
    _common(tsub.add_parser("list", help="list tokens (hash prefixes only)")).set_defaults(func=tokens_list)


# -- handlers -----------------------------------------------------------------------------------


def models_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        rel = c.models()
    if args.json:
        print_json(rel)
        return 0
    rows = [
        [r["name"], r["version"], ",".join(r["device_classes"]), len(r["files"]), r.get("created", "")]
        for r in rel
    ]
    _console().print(_table("models", ["name", "version", "device classes", "files", "created"], rows))
    return 0


def devices_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        devs = c.devices(group=args.group, tag=args.tag)
    if args.json:
        print_json(devs)
        return 0
    rows = [
        [
            d["device_id"],
            "[green]online[/]" if d["online"] else "[red]offline[/]",
            d["active_model"],
            d["previous_model"],
            "yes" if d["probation"] else "",
            d["execution_provider"],
            d["agent_version"],
            d["group"],
            ",".join(d["tags"]),
            d["last_seen"],
        ]
        for d in devs
    ]
    cols = [
        "device",
        "status",
        "active",
        "previous",
        "probation",
        "provider",
        "agent",
        "group",
        "tags",
        "last seen",
    ]
    _console().print(_table(f"devices ({len(devs)})", cols, rows))
    return 0


def devices_show(args: argparse.Namespace) -> int:
    with _client(args) as c:
        d = c.device(args.device)
    if args.json:
        print_json(d)
        return 0
    con = _console()
    for k in (
        "device_id",
        "online",
        "active_model",
        "previous_model",
        "probation",
        "execution_provider",
        "agent_version",
        "group",
        "tags",
        "last_seen",
    ):
        con.print(f"[bold]{k}[/]: {d.get(k)}")
    rows = [
        [
            t["seq"],
            t["received_at"],
            t["model"],
            t["frames"],
            f"{t['confidence_p50']:.3f}",
            t["low_confidence"],
            f"{t['latency_ms_p99']:.1f}",
        ]
        for t in d["recent_telemetry"]
    ]
    con.print(
        _table(
            "recent telemetry",
            ["seq", "received", "model", "frames", "conf p50", "low conf", "lat p99 ms"],
            rows,
        )
    )
    return 0


def devices_add(args: argparse.Namespace) -> int:
    with _client(args) as c:
        d = c.add_device(args.device, group=args.group, tags=_csv(args.tags))
    if args.json:
        print_json(d)
    else:
        _console().print(f"{d['device_id']}: registered, group={d['group']} tags={','.join(d['tags'])}")
    return 0


def devices_tag(args: argparse.Namespace) -> int:
    with _client(args) as c:
        d = c.tag(
            args.device,
            group=args.group,
            tags=_csv(args.tags) if args.tags is not None else None,
            clear_group=args.clear_group,
        )
    if args.json:
        print_json(d)
    else:
        _console().print(f"{d['device_id']}: group={d['group']} tags={','.join(d['tags'])}")
    return 0


def _status_table(r: dict[str, Any]) -> Table:
    t = Table(title=f"rollout {r['id']}  {r['ref']}  [bold]{r['state']}[/]", title_justify="left")
    for c in (
        "stage",
        "size",
        "devices",
        "passed",
        "in flight",
        "deferred",
        "failed",
        "rolled back",
        "progress",
    ):
        t.add_column(c)
    for st in r["stages"]:
        counts = st["counts"]
        n = st["devices"]
        passed = counts.get("passed", 0)
        failed = counts.get("failed", 0)
        rolled = counts.get("rolled_back", 0)
        flight = sum(counts.get(k, 0) for k in ("sent", "installing", "probation"))
        deferred = counts.get("deferred", 0)  # staged, waiting for the line's update window
        done = passed + failed + rolled
        width = 20
        filled = round(width * done / n) if n else width
        bar = "█" * filled + "░" * (width - filled)
        marker = "▶ " if st["stage"] == r["stage"] and r["state"] in ("running", "paused") else ""
        t.add_row(
            f"{marker}{st['stage'] + 1}",
            st["size"],
            str(n),
            str(passed),
            str(flight),
            str(deferred),
            str(failed),
            str(rolled),
            f"{bar} {done}/{n}",
        )
    return t


def _status_text(r: dict[str, Any]) -> str:
    lines = []
    if r.get("reason"):
        lines.append(f"reason: {r['reason']}")
    sh = r.get("shadow")
    if sh:
        counts: dict[str, int] = {}
        for p in sh["devices"].values():
            counts[p["status"]] = counts.get(p["status"], 0) + 1
        lines.append(
            f"shadow phase ({sh['size']}, soak {sh['soak_s']:g}s): {sh['state']} — "
            + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        )
        conf = (sh.get("evidence") or {}).get("confusion") or {}
        for b, row in sorted(conf.items()):
            lines.append(
                f"  serving {b} → candidate " + ", ".join(f"{c}: {n}" for c, n in sorted(row.items()))
            )
    for v in r.get("verdicts") or []:
        lines.append(
            f"verdict {v['gate']} {v['metric']}: {v['verdict'].upper()} ({v['test']}, n={v['n']}) {v['reason']}"
        )
    for o in r.get("overrides") or []:
        lines.append(f"override {o['gate']} by {o['by']}: {o['why']}")
    for p in r["devices"].values():
        if p["status"] in ("failed", "rolled_back", "deferred"):
            lines.append(f"  {p['device_id']}: {p['status']} — {p['reason']}")
    if r.get("history"):
        lines.append(f"last: {r['history'][-1]['text']}")
    return "\n".join(lines)


def _print_status(r: dict[str, Any]) -> None:
    con = _console()
    con.print(_status_table(r))
    text = _status_text(r)
    if text:
        con.print(text, markup=False)


def _watch(c: FleetClient, rollout_id: str, interval: float, as_json: bool) -> int:
    r = c.rollout(rollout_id)
    if as_json:
        while r["state"] in ("running", "paused"):
            time.sleep(interval)
            r = c.rollout(rollout_id)
        print_json(r)
    else:
        with Live(_status_table(r), console=_console(), refresh_per_second=4, transient=False) as live:
            while r["state"] in ("running", "paused"):
                time.sleep(interval)
                r = c.rollout(rollout_id)
                live.update(_status_table(r))
        sys.stdout.write("\n")
        text = _status_text(r)
        if text:
            _console().print(text, markup=False)
    if r["state"] == "succeeded":
        return 0
    sys.stderr.write(f"error: rollout {rollout_id} {r['state']}: {r.get('reason', '')}\n")
    return EXIT_ROLLOUT_FAILED


def _share(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return v


def _band(text: str) -> tuple[float, float]:
    low, sep, high = text.partition(",")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not MIN,MAX")
    band = (_share(low.strip()), _share(high.strip()))
    if band[0] >= band[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: MIN must be below MAX")
    return band


def rollout_sampling(args: argparse.Namespace) -> dict[str, Any] | None:
    """The rollout's sampling overrides from the ``--sample-*`` options; None when none is given."""
    band = args.sample_low_confidence
    out = {
        "low_confidence_min": None if band is None else band[0],
        "low_confidence_max": None if band is None else band[1],
        "random_share": args.sample_random,
        "drift_share": args.sample_drift,
        "per_minute": args.sample_per_minute,
        "per_hour": args.sample_per_hour,
        "per_day": args.sample_per_day,
    }
    return {k: v for k, v in out.items() if v is not None} or None


def rollout_start(args: argparse.Namespace) -> int:
    with _client(args) as c:
        r = c.start_rollout(
            args.model,
            devices=_csv(args.devices),
            group=args.group,
            stages=args.stages,
            soak=args.soak,
            max_failure=args.max_failure,
            max_confidence_p50_drop=args.max_p50_drop,
            max_low_confidence_rate_rise=args.max_low_rise,
            min_gate_frames=args.min_gate_frames,
            shadow=args.shadow,
            shadow_soak=args.shadow_soak,
            shadow_min_agreement=args.shadow_min_agreement,
            shadow_min_frames=args.shadow_min_frames,
            no_baseline=args.no_baseline,
            sampling=rollout_sampling(args),
        )
        if args.watch:
            if not args.json:
                sys.stderr.write(f"rollout {r['id']} started\n")
            return _watch(c, r["id"], 1.0, args.json)
    if args.json:
        print_json(r)
    else:
        _console().print(
            f"rollout [bold]{r['id']}[/] started: {r['ref']} to {len(r['devices'])} devices in {len(r['stages'])} stages"
        )
    return 0


def rollout_status(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.watch:
            return _watch(c, args.id, args.interval, args.json)
        r = c.rollout(args.id)
    if args.json:
        print_json(r)
    else:
        _print_status(r)
    return 0


def rollout_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        rs = c.rollouts()
    if args.json:
        print_json(rs)
        return 0
    rows = [
        [
            r["id"],
            r["ref"],
            r["state"],
            f"{r['stage'] + 1}/{r['stages']}",
            r["devices"],
            r["created_at"],
            r["reason"],
        ]
        for r in rs
    ]
    _console().print(
        _table("rollouts", ["id", "model", "state", "stage", "devices", "created", "reason"], rows)
    )
    return 0


def rollout_op(args: argparse.Namespace) -> int:
    with _client(args) as c:
        why = getattr(args, "why", "")
        by = getattr(args, "by", "") or (os.environ.get("USER", "") if why else "")
        r = c.rollout_op(args.id, args.op, rollback=getattr(args, "rollback", False), by=by, why=why)
    if args.json:
        print_json(r)
    else:
        _console().print(f"rollout {r['id']}: {r['state']}")
    return 0


def rollback(args: argparse.Namespace) -> int:
    if (args.device is None) == (args.group is None):
        raise CommandError("give a DEVICE or --group G (one of them)")
    with _client(args) as c:
        out = c.rollback(devices=[args.device] if args.device else None, group=args.group, reason=args.reason)
    if args.json:
        print_json(out)
    else:
        for s in out["sent"]:
            _console().print(f"rollback sent to {s['device_id']} (cmd {s['cmd_id']})")
    return 0


def alerts(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.ack is not None:
            a = c.ack(args.ack)
            if args.json:
                print_json(a)
            else:
                _console().print(f"alert {a['id']} acknowledged")
            return 0
        items = c.alerts(open_only=args.open)
    if args.json:
        print_json(items)
        return 0
    rows = [
        [
            a["id"],
            a["created_at"],
            a["severity"],
            a["kind"],
            a["device_id"] or a["rollout_id"] or "",
            "yes" if a["acknowledged"] else "",
            a["message"],
        ]
        for a in items
    ]
    _console().print(_table("alerts", ["id", "at", "severity", "kind", "about", "ack", "message"], rows))
    return 0


def accuracy_cmd(args: argparse.Namespace) -> int:
    with _client(args) as c:
        rows = c.accuracy(
            device_id=args.device,
            model=args.model,
            by_device=args.by_device or bool(args.device),
            since=args.since,
            until=args.until,
        )
    if args.json:
        print_json(rows)
        return 0
    table = [
        [
            r["model"],
            r["device_id"] or "(all)",
            r["n"],
            r["correct"],
            "" if r["accuracy"] is None else f"{r['accuracy']:.2%}",
            "" if r["dimension_mae_mm"] is None else f"{r['dimension_mae_mm']:.2f}",
        ]
        for r in rows
    ]
    _console().print(
        _table("field accuracy", ["model", "device", "truth", "correct", "accuracy", "dim MAE mm"], table)
    )
    return 0


def truth_cmd(args: argparse.Namespace) -> int:
    dims: tuple[float, float] | None = None
    if args.dimensions:
        try:
            w, h = (float(x) for x in args.dimensions.split(","))
        except ValueError:
            raise CommandError(f"--dimensions {args.dimensions!r}: give W,H in mm") from None
        dims = (w, h)
    with _client(args) as c:
        out = c.post_truth(args.device, args.decision, args.label, dims)
    if args.json:
        print_json(out)
    else:
        sys.stdout.write(f"truth {out['truth_id']} sent to {out['device_id']} for {out['decision_id']}\n")
    return 0


def tokens_create(args: argparse.Namespace) -> int:
    with _client(args) as c:
        t = c.create_token(args.role, args.name)
    if args.json:
        print_json(t)
    else:
        sys.stdout.write(t["token"] + "\n")
        sys.stderr.write(f"{args.role} token created; it is shown only once\n")
    return 0


def tokens_list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        ts = c.tokens()
    if args.json:
        print_json(ts)
    else:
        _console().print(
            _table(
                "tokens",
                ["id", "role", "name", "created", "sha256"],
                [[t["id"], t["role"], t["name"], t["created_at"], t["sha256_prefix"] + "…"] for t in ts],
            )
        )
    return 0
