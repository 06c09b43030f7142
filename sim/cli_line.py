"""``edge-sim line``: play a line that changes state (run, changeover, run) on the plant broker."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge_agent.messages import DEFAULT_TOPIC_ROOT, Topics
from lineside_common.cli import CommandError
from sim.line import parse_plan, payload


def register(sub: Any) -> None:
    """Add the ``line`` subcommand."""
    p = sub.add_parser(
        "line",
        help="play a line that changes state (run, changeover, run)",
        description=(
            "Publish a line's PackML-like state, retained, on {root}/devices/{id}/line for each device, "
            "step by step: e.g. --plan execute:20,changeover:5,execute:20 (seconds). Agents with "
            '[line] source = "mqtt" read it; with allowed_states set they defer swaps until the window.'
        ),
    )
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="MQTT broker URL")
    p.add_argument("--device", action="append", required=True, help="device id (repeat for several)")
    p.add_argument("--plan", default="execute:20,changeover:5,execute:20", help="STATE:SECONDS,...")
    p.add_argument("--topic-root", default=DEFAULT_TOPIC_ROOT, help="MQTT topic root")
    p.add_argument("--username", default=None, help="the line controller's broker user")
    p.add_argument("--password-file", default=None, help="its password, from this file")
    p.add_argument("--loop", action="store_true", help="play the plan again and again (Ctrl-C stops)")
    p.set_defaults(func=cmd_line)


def cmd_line(args: argparse.Namespace) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    steps = parse_plan(args.plan)
    url = urlsplit(args.broker)
    if url.scheme not in ("mqtt", "tcp") or not url.hostname:
        raise CommandError(f"--broker {args.broker!r}: expected mqtt://host:port")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.username or "")
    if args.username:
        password = Path(args.password_file).read_text().strip() if args.password_file else None
        client.username_pw_set(args.username, password)
    try:
        client.connect(url.hostname, url.port or 1883)
    except OSError as exc:
        raise CommandError(f"cannot reach the broker at {args.broker}: {exc.strerror or exc}") from exc
    client.loop_start()
    topics = Topics(args.topic_root)
    stop = threading.Event()
    try:
        while True:
            for step in steps:
                for device in args.device:
                    client.publish(
                        topics.device(device, "line"), payload(step), qos=1, retain=True
                    ).wait_for_publish(10)
                sys.stdout.write(
                    f"line {step.state}{' (changeover)' if step.changeover else ''} for {step.seconds:g}s\n"
                )
                sys.stdout.flush()
                if stop.wait(step.seconds):  # the plan's own pace, not synchronisation
                    return 0
            if not args.loop:
                return 0
    finally:
        client.loop_stop()
        client.disconnect()
