"""``edge-sim demo``: the end-to-end story on one machine."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

from lineside_common.cli import CommandError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the end-to-end demo (broker, fleet server, three agents)",
        description=(
            "Everything real on one machine: an MQTT broker, `fleet serve`, TUF keys made for the demo and "
            "three `edge-agent` processes replaying recorded conveyor streams. New packages cause drift; "
            "shapes-2.0.0 is rolled out canary-first; a faulty 2.0.1 is rolled back automatically. "
            "Exits non-zero if any step of the story does not happen."
        ),
    )
    p.add_argument(
        "--out", type=Path, default=Path("demo-out"), help="where recordings, logs and the chart go"
    )
    p.add_argument("--fast", action="store_true", help="a shorter run (for CI)")
    p.add_argument("--broker", help="mqtt://HOST:PORT of a broker to use instead of the embedded one")
    p.add_argument(
        "--retrain",
        action="store_true",
        help="the retraining story instead: drift alerts → field samples labelled by the plant → a new "
        "model trained, gated on held-out truth, rolled out with a shadow stage (needs the train extra)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from sim.demo import Demo, DemoFailed

    if args.retrain:
        if args.broker is not None and not _broker_url_ok(args.broker):
            # The retrain story's line checker connects to it too, without TLS or a user.
            raise CommandError(
                f"--retrain --broker must be mqtt://HOST:PORT, not {args.broker!r}", reason="bad_broker"
            )
        if importlib.util.find_spec("torch") is None:
            raise CommandError(
                "--retrain trains a model: it needs the train extra (pip install -e '.[train]')",
                reason="no_train_extra",
            )
        from sim.demo_retrain import RetrainDemo

        demo: Demo = RetrainDemo(args.out, fast=args.fast, broker_url=args.broker)
    else:
        demo = Demo(args.out, fast=args.fast, broker_url=args.broker)
    try:
        demo.run()
    except DemoFailed as exc:
        raise CommandError(f"demo failed: {exc} (logs in {demo.out / 'logs'})") from exc
    return 0


def _broker_url_ok(url: str) -> bool:
    return re.fullmatch(r"mqtt://[^:/\s]+:[0-9]{1,5}", url) is not None
