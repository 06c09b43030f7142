"""``fleet samples list | show | label | import | export | purge | capture``: the frames devices sent back, over the HTTP API.

Filters (``--device``, ``--since``, ``--until`` as ISO 8601 times, ``--label``: the model's label)
select by device, time taken and label. ``purge`` needs at least one filter, or ``--all``.
With ``--json`` the output, and an error too, is one JSON document.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from fleet_server import labels
from fleet_server.cli_ops import _client, _common, _console, _table
from lineside_common.atomic import atomic_write_bytes, replace_dir_durably
from lineside_common.cli import CommandError, error_line, print_json
from lineside_common.errors import LinesideError


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
    p = _common(ssub.add_parser("label", help="say what a sample really shows"))
    p.add_argument("id", type=int, help="the sample's id (from `fleet samples list`)")
    p.add_argument("label", help="the true label")
    p.add_argument(
        "--new-label", action="store_true", help="the label is new (no model or sample has it yet)"
    )
    p.set_defaults(func=_guard(samples_label))
    p = _common(ssub.add_parser("import", help="labels from a labelling tool (CSV or JSONL), all or nothing"))
    p.add_argument("file", type=Path, help="CSV with a header (id or device_id,sample_id; label) or JSONL")
    p.add_argument("--format", choices=["csv", "jsonl"], help="default: from the file name")
    p.add_argument("--new-labels", action="store_true", help="accept labels no model or sample has yet")
    p.set_defaults(func=_guard(samples_import))
    p = _common(ssub.add_parser("export", help="the labelled samples as a dataset folder"))
    p.add_argument("--labelled", action="store_true", required=True, help="export the labelled samples")
    p.add_argument("--out", type=Path, required=True, help="a new or empty folder")
    p.set_defaults(func=_guard(samples_export))
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


def samples_label(args: argparse.Namespace) -> int:
    body = {"labels": [{"id": args.id, "label": args.label}], "new_labels": args.new_label}
    with _client(args) as c:
        out = c.request("POST", "/api/v1/samples/labels", json=body)
    if args.json:
        print_json(out)
    else:
        _console().print(f"sample {args.id} labelled {args.label}")
    return 0


def samples_import(args: argparse.Namespace) -> int:
    fmt: Literal["csv", "jsonl"] = args.format or (
        "jsonl" if args.file.suffix.lower() in (".jsonl", ".ndjson") else "csv"
    )
    try:
        text = args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {args.file}: {exc}") from exc
    try:
        rows = labels.parse_rows(text, fmt)
    except labels.LabelError as exc:
        raise CommandError(f"{args.file}: {exc}; nothing imported") from exc
    items = [{k: v for k, v in dataclasses.asdict(r).items() if v is not None} for r in rows]
    with _client(args) as c:
        out = c.request(
            "POST", "/api/v1/samples/labels", json={"labels": items, "new_labels": args.new_labels}
        )
    if args.json:
        print_json(out)
    else:
        _console().print(f"labelled {out['labelled']} samples from {args.file}")
    return 0


def samples_export(args: argparse.Namespace) -> int:
    """Folder per label with the JPEGs (named by their SHA-256), ``samples.jsonl`` (metadata, one
    sample a line) and ``dataset.json`` (its hash: labels.dataset_hash over (image, label))."""
    out_dir: Path = args.out
    if out_dir.exists() and any(out_dir.iterdir()):
        raise CommandError(f"{out_dir} is not empty; export into a new folder")
    with _client(args) as c:
        samples: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = c.request(
                "GET", "/api/v1/samples", params={"labelled": "true", "limit": 10000, "offset": offset}
            )
            samples += page["samples"]
            offset += len(page["samples"])
            if not page["samples"] or offset >= page["total"]:
                break
        tmp = out_dir.with_name(f".{out_dir.name}.partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        lines = []
        for smp in sorted(samples, key=lambda x: (x["image_sha256"], x["true_label"], x["id"])):
            label = smp["true_label"]
            if not labels.valid_label(label):
                raise CommandError(f"sample {smp['id']}: label {label!r} cannot be a folder name")
            data = c.get_bytes(f"/api/v1/samples/{smp['id']}/image")
            if hashlib.sha256(data).hexdigest() != smp["image_sha256"]:
                raise CommandError(f"sample {smp['id']}: the image does not match its SHA-256")
            rel = f"{label}/{smp['image_sha256']}.jpg"
            (tmp / label).mkdir(exist_ok=True)
            (tmp / rel).write_bytes(data)
            meta = {k: smp[k] for k in ("id", "device_id", "sample_id", "decision_id", "label", "confidence")}
            lines.append(
                json.dumps(
                    {"file": rel, "image_sha256": smp["image_sha256"], "true_label": label, **meta,
                     "model": smp["model"], "taken_at": smp["taken_at"]},
                    sort_keys=True,
                )
            )  # fmt: skip
    digest = labels.dataset_hash((x["image_sha256"], x["true_label"]) for x in samples)
    (tmp / "samples.jsonl").write_text("".join(x + "\n" for x in lines))
    info = {
        "dataset_sha256": digest,
        "samples": len(samples),
        "labels": sorted({x["true_label"] for x in samples}),
    }
    (tmp / "dataset.json").write_text(json.dumps(info, indent=2) + "\n")
    replace_dir_durably(tmp, out_dir)  # an existing out_dir is empty (checked above)
    if args.json:
        print_json({**info, "out": str(out_dir)})
    else:
        _console().print(f"exported {len(samples)} labelled samples to {out_dir}; dataset {digest}")
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
