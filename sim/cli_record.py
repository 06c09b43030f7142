"""``edge-sim record | replay | show``: make, play back and look at conveyor recordings."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from edge_agent.recording_source import RecordingSource
from lineside_common import cli as clitools
from lineside_common.cli import CommandError
from lineside_common.errors import ConfigError
from sim.contact_sheet import contact_sheet, write_image
from sim.recording import load_recording, write_recording
from sim.render import RenderConfig
from sim.scenario import resolve_scenario, scenario_from_types


def register(sub: Any) -> None:
    """Add the record, replay and show subcommands."""
    p = sub.add_parser(
        "record",
        help="render a labelled conveyor recording",
        description=(
            "Render N frames (one package each, as the light-barrier-triggered camera sees them) into DIR: "
            "meta.json, frames.avi (MJPG) and labels.jsonl. The package mix comes from --scenario (a JSON "
            "file or a built-in name: baseline, new-packages) or --types. Same seed, same recording."
        ),
    )
    p.add_argument("--out", required=True, help="recording directory to create")
    p.add_argument("--frames", type=int, default=300, help="number of frames (default 300)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--scenario", help="scenario JSON file or built-in name (default: baseline)")
    src.add_argument(
        "--types", help="comma-separated package types in equal shares, e.g. circle-80,square-120"
    )
    p.add_argument("--fps", type=float, default=10.0, help="packages (frames) per second (default 10)")
    p.add_argument(
        "--fit", action="store_true", help="stretch the scenario's phases over the whole recording"
    )
    p.add_argument("--jpeg-quality", type=int, default=None, help="camera JPEG quality (default 85)")
    p.add_argument(
        "--partial-prob", type=float, default=None, help="share of cut-off packages (default 0.04)"
    )
    p.add_argument("--force", action="store_true", help="replace DIR if it exists")
    p.add_argument("--json", action="store_true", help="print the recording's meta as JSON")
    p.set_defaults(func=cmd_record)

    p = sub.add_parser(
        "replay",
        help="play a recording as the agent's camera would",
        description="Read DIR through the agent's RecordingSource at its recorded fps and report frames read and fps.",
    )
    p.add_argument("dir", help="recording directory")
    p.add_argument("--fast", action="store_true", help="as fast as possible instead of the recorded fps")
    p.add_argument(
        "--loop", action="store_true", help="start over at the end (stop with --max-frames or Ctrl-C)"
    )
    p.add_argument("--fps", type=float, default=None, help="override the recorded fps")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "show",
        help="write a contact sheet of a recording",
        description="Write a grid of frames from DIR with each label's bbox, package and size drawn on.",
    )
    p.add_argument("dir", help="recording directory")
    p.add_argument("--out", required=True, help="image to write (e.g. sheet.png)")
    p.add_argument("--count", type=int, default=16, help="number of frames (default 16)")
    p.set_defaults(func=cmd_show)


def cmd_record(args: argparse.Namespace) -> int:
    if args.frames < 1:
        raise CommandError("--frames must be at least 1", exit_code=clitools.EXIT_USAGE)
    scenario = (
        scenario_from_types(args.types) if args.types else resolve_scenario(args.scenario or "baseline")
    )
    overrides = {
        k: v
        for k, v in (("jpeg_quality", args.jpeg_quality), ("partial_prob", args.partial_prob))
        if v is not None
    }
    try:
        config = RenderConfig(**overrides)
    except ValueError as exc:
        raise ConfigError(f"invalid render option: {str(exc).splitlines()[-1].strip()}") from exc
    started = time.perf_counter()
    with Progress(
        TextColumn("recording"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=None,
        transient=True,
        disable=args.json or not sys.stderr.isatty(),
    ) as progress:
        task = progress.add_task("record", total=args.frames)
        meta = write_recording(
            args.out,
            frames=args.frames,
            seed=args.seed,
            scenario=scenario,
            fps=args.fps,
            config=config,
            fit=args.fit,
            overwrite=args.force,
            progress=lambda i: progress.update(task, completed=i),
        )
    elapsed = time.perf_counter() - started
    if args.json:
        clitools.print_json(meta.model_dump(mode="json") | {"elapsed_s": round(elapsed, 3)})
    else:
        print(
            f"wrote {args.out}: {meta.frame_count} frames, {scenario.name}, seed {args.seed} ({elapsed:.1f} s)"
        )
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    source = RecordingSource(args.dir, realtime=not args.fast, loop=args.loop, fps=args.fps)
    n = 0
    started = time.monotonic()
    with source:
        while args.max_frames is None or n < args.max_frames:
            frame = source.read()
            if frame is None:
                break
            n += 1
    elapsed = time.monotonic() - started
    fps = n / elapsed if elapsed > 0 else float("inf")
    result = {"frames": n, "elapsed_s": round(elapsed, 3), "fps": round(fps, 1), "source": source.description}
    if args.json:
        clitools.print_json(result)
    else:
        print(f"read {n} frames in {elapsed:.2f} s ({fps:.1f} fps) from {source.description}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise CommandError("--count must be at least 1", exit_code=clitools.EXIT_USAGE)
    with load_recording(args.dir) as rec:
        sheet = contact_sheet(rec, args.count)
    write_image(args.out, sheet)
    print(f"wrote {args.out} ({sheet.shape[1]}x{sheet.shape[0]}, {min(args.count, len(rec))} frames)")
    return 0


__all__ = ["register"]
