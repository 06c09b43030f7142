"""``edge-sim checker``: the plant's line checker, publishing truth from a recording's labels."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge_agent.messages import DEFAULT_TOPIC_ROOT
from lineside_common.cli import CommandError


def register(sub: Any) -> None:
    """Add the ``checker`` subcommand."""
    p = sub.add_parser(
        "checker",
        help="publish truth for a share of the robots' decisions, from a recording's labels",
        description=(
            "Play the line checker at the end of the belt: read {root}/devices/+/decisions of agents "
            "replaying RECORDING and publish the recording's label and dimensions for --share of them "
            "on {root}/devices/{id}/truth (QoS 1), with a line checker's broker user "
            "(fleet devices enroll NAME --line-checker)."
        ),
    )
    p.add_argument("recording", type=Path, help="the recording the agents replay")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="MQTT broker URL")
    p.add_argument("--share", type=float, default=0.2, help="share of decisions to check (0..1)")
    p.add_argument("--topic-root", default=DEFAULT_TOPIC_ROOT, help="MQTT topic root")
    p.add_argument("--username", default=None, help="the line checker's broker user")
    p.add_argument("--password-file", default=None, help="its password, from this file")
    p.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: until Ctrl-C)")
    p.set_defaults(func=cmd_checker)


def cmd_checker(args: argparse.Namespace) -> int:
    from sim.checker import LineChecker
    from sim.recording import load_recording

    if not 0.0 <= args.share <= 1.0:
        raise CommandError(f"--share {args.share}: give a share between 0 and 1")
    url = urlsplit(args.broker)
    if url.scheme not in ("mqtt", "tcp") or not url.hostname:
        raise CommandError(f"--broker {args.broker!r}: expected mqtt://host:port")
    with load_recording(args.recording) as rec:
        labels = list(rec.labels)
    password = Path(args.password_file).read_text().strip() if args.password_file else None
    checker = LineChecker(
        url.hostname,
        url.port or 1883,
        labels,
        share=args.share,
        topic_root=args.topic_root,
        username=args.username,
        password=password,
    )
    try:
        checker.start()
    except OSError as exc:
        raise CommandError(f"cannot reach the broker at {args.broker}: {exc.strerror or exc}") from exc
    stop = threading.Event()
    try:
        stop.wait(args.seconds or None)  # the run's length, not synchronisation
    except KeyboardInterrupt:
        pass
    finally:
        checker.stop()
    sys.stdout.write(f"{len(checker.sent)} truths published\n")
    return 0
