"""``edge-models pipeline``: the shell over :mod:`models.pipeline` (config, token, progress, exit code)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from lineside_common import cli as clitools
from lineside_common.cli import CommandError


def register(sub: Any) -> None:
    """Add the pipeline subcommand."""
    p = sub.add_parser(
        "pipeline",
        help="field data → train → evaluate against the serving model → field gate → bundle → release → rollout",
        description="Run the retraining pipeline of PIPELINE.toml in WORKDIR (see models/README.md): every step's "
        "artefacts and WORKDIR/pipeline.json are kept there; it stops at the first failed step with its reason "
        "(exit 1); a rerun skips what is unchanged, never releases the same bundle twice, and never starts the "
        "same rollout twice. Training needs the train extra.",
    )
    p.add_argument("--config", required=True, type=Path, help="PIPELINE.toml")
    p.add_argument("--workdir", required=True, type=Path, help="where every step's artefacts are kept")
    p.add_argument("--cache-dir", type=Path, default=Path("runs/cache/models"), help="rendered-frame cache")
    p.add_argument("--no-cache", action="store_true", help="render everything afresh, cache nothing")
    p.add_argument("--json", action="store_true", help="print the report (WORKDIR/pipeline.json) as JSON")
    p.set_defaults(func=_pipeline)


def _pipeline(args: argparse.Namespace) -> int:
    from models.pipeline import Pipeline
    from models.pipeline_config import load_pipeline_config

    config = load_pipeline_config(args.config)
    client = None
    if config.release is not None:
        token = os.environ.get(config.release.token_env)
        if not token:
            raise CommandError(
                f"[release] needs an admin API token in ${config.release.token_env}", reason="no_token"
            )
        from fleet_server.client import FleetClient

        client = FleetClient(config.release.server, token, timeout_s=120.0)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description:<20}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(kind: str, advance: int, fields: dict[str, Any]) -> None:
            if kind not in tasks:
                tasks[kind] = bar.add_task(kind, total=fields.get("total"), info="")
            info = ""
            if "epoch" in fields:
                info = f"epoch {fields['epoch']}  loss {fields['loss']:.4f}  acc {fields['acc']:.4f}"
            bar.update(tasks[kind], advance=advance, info=info)

        def on_step(entry: dict[str, Any]) -> None:
            why = f" ({entry['reason']})" if entry["reason"] else ""
            console.print(f"{entry['name']:<9} {entry['status']}{why}  {entry['seconds']:.1f} s")

        try:
            report = Pipeline(
                config,
                args.workdir,
                client=client,
                cache_dir=None if args.no_cache else args.cache_dir,
                progress=progress,
                on_step=on_step,
            ).run()
        finally:
            if client is not None:
                client.close()
    if args.json:
        clitools.print_json(report)
    if not report["ok"]:
        raise CommandError(f"pipeline stopped at {report['message']}", reason=report["reason"])
    if not args.json:
        rel = report["release"]
        done = f"released {rel['name']}@{rel['version']}" if rel else "not released (no [release])"
        rollout = f", rollout {report['rollout_id']}" if report["rollout_id"] else ""
        sys.stdout.write(f"pipeline ok: {done}{rollout}; report {args.workdir / 'pipeline.json'}\n")
    return 0
