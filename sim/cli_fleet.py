"""``edge-sim fleet``: many simulated devices speaking the real MQTT protocol (no inference)."""

from __future__ import annotations

import argparse
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from edge_agent.messages import DEFAULT_TOPIC_ROOT, valid_device_id
from lineside_common.cli import CommandError, print_json
from sim.fleet import SimFleet, SimOptions


def _versions(text: str | None) -> set[str]:
    return {v.strip() for v in (text or "").split(",") if v.strip()}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "fleet",
        help="simulate many devices",
        description=(
            "Simulated devices that speak the agent's MQTT protocol: retained state with a Last Will, "
            "telemetry windows with seq, and answers to deploy/rollback/ping with the real lifecycle "
            "events. They skip inference and downloads (with --server, a deploy of a release the "
            "server's TUF targets.json does not list fails). Runs until interrupted or --duration."
        ),
    )
    p.add_argument("--broker", required=True, help="mqtt://HOST:PORT")
    p.add_argument("--server", help="fleet server URL (to check that deployed releases exist)")
    p.add_argument(
        "--token-file",
        type=Path,
        help="a device token (`fleet devices token`): deploys then download the release's manifest with it",
    )
    p.add_argument("--devices", type=int, default=3, help="how many devices (default 3)")
    p.add_argument("--prefix", default="sim-", help="device id prefix (default sim-)")
    p.add_argument("--start-index", type=int, default=1, help="first device number (default 1)")
    p.add_argument("--initial-model", default="shapes@1.0.0", help="NAME@VERSION each device starts with")
    p.add_argument("--window", type=float, default=1.0, help="telemetry window in seconds (default 1)")
    p.add_argument("--fps", type=float, default=20.0, help="simulated frames per second")
    p.add_argument("--probation", type=float, default=1.0, help="probation seconds after an install")
    p.add_argument("--install-delay", type=float, default=0.3, help="seconds from deploy to installed")
    p.add_argument("--faulty-version", help="comma-separated versions that fail probation (auto rollback)")
    p.add_argument("--low-confidence-version", help="comma-separated versions that report low confidence")
    p.add_argument("--reject-version", help="comma-separated versions answered with update.rejected")
    p.add_argument(
        "--truth-share",
        type=float,
        default=0.0,
        help="share of decisions the plant checks: truth.joined events, as real agents send (default 0)",
    )
    p.add_argument("--truth-accuracy", type=float, default=0.9, help="how often a checked decision is right")
    p.add_argument("--topic-root", default=DEFAULT_TOPIC_ROOT)
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--json", action="store_true", help="print a JSON line when all devices are connected")
    p.set_defaults(func=run)


def _read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError as exc:
        raise CommandError(f"cannot read --token-file {path}: {exc}") from exc


def raise_fd_limit(needed: int) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit towards ``needed`` (capped by the hard limit).

    Each simulated device holds one socket; the common default soft limit (1024) would stop a
    fleet of thousands at its 1000th connection. Returns the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return int(soft)


def run(args: argparse.Namespace) -> int:
    if args.devices < 1:
        raise CommandError("--devices must be at least 1")
    limit = raise_fd_limit(args.devices + 256)  # + the process's own files, the server check's sockets
    if limit < args.devices + 64:
        raise CommandError(
            f"--devices {args.devices} needs about {args.devices + 64} open files; the hard limit is "
            f"{limit} (raise it: `ulimit -Hn`, LimitNOFILE= in a unit)"
        )
    for name in ("truth_share", "truth_accuracy"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise CommandError(f"--{name.replace('_', '-')} must be between 0 and 1")
    ids = [f"{args.prefix}{i}" for i in range(args.start_index, args.start_index + args.devices)]
    bad = [d for d in ids if not valid_device_id(d)]
    if bad:
        raise CommandError(f"{bad[0]!r} is not a valid device id (letters, digits, . _ -)")
    opts = SimOptions(
        topic_root=args.topic_root,
        initial_model=args.initial_model,
        window_s=args.window,
        fps=args.fps,
        probation_s=args.probation,
        install_delay_s=args.install_delay,
        faulty_versions=_versions(args.faulty_version),
        low_confidence_versions=_versions(args.low_confidence_version),
        reject_versions=_versions(args.reject_version),
        server_url=args.server,
        token=_read_token(args.token_file),
        truth_share=args.truth_share,
        truth_accuracy=args.truth_accuracy,
    )
    fleet = SimFleet(args.broker, ids, opts)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    fleet.start()
    deadline = time.monotonic() + 30
    while fleet.connected() < len(ids) and time.monotonic() < deadline and not stop.is_set():
        stop.wait(0.1)
    if args.json:
        print_json({"devices": ids, "connected": fleet.connected()})
    else:
        sys.stderr.write(f"{fleet.connected()}/{len(ids)} simulated devices connected to {args.broker}\n")
    sys.stdout.flush()
    stop.wait(args.duration)
    fleet.stop()
    return 0
