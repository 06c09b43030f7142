"""``edge-agent install DIR``, ``verify DIR``, ``models``, ``rollback``: the model store by hand.

These work with the daemon running or not: they change the store under its file lock, and a
running agent notices the new ``state.json`` within one telemetry window and swaps to the model
that is now active (a CLI install goes on probation in the daemon like any other).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from edge_agent.store import ModelStore
from edge_agent.updates import Outcome, Updater, UpdaterSettings, settings_from_config, store_dir
from lineside_common.cli import EXIT_USAGE, CommandError, print_json


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="agent config file (state_dir, device_class, [updates])")
    p.add_argument("--state-dir", type=Path, help="override the config's state_dir")
    p.add_argument("--root-json", type=Path, help="override [updates] root_json (the trust anchor)")
    p.add_argument("--device-class", help="override the config's device_class")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ins = sub.add_parser(
        "install",
        help="side-load a signed release from a directory (USB)",
        description="Install a release from a local TUF repository (from `fleet release --repo` or "
        "`fleet export`), with the same verification as over the network.",
    )
    ins.add_argument("dir", nargs="?", help="the repository directory (not with --shadow-stop)")
    ins.add_argument("--model", help="NAME@VERSION when the directory holds several releases")
    ins.add_argument(
        "--force",
        action="store_true",
        help="install even a downgrade or a version that failed probation here",
    )
    _common(ins)
    ins.add_argument(
        "--shadow",
        action="store_true",
        help="verify it like an install, then run it in shadow beside the serving model (never acting)",
    )
    ins.add_argument("--shadow-stop", action="store_true", help="withdraw a side-loaded shadow candidate")
    ins.set_defaults(func=_install)

    ver = sub.add_parser(
        "verify",
        help="check a signed release without installing it",
        description="Run every check of an install (TUF signatures, hashes, manifest, device class, "
        "agent version, self-test) on a local repository directory; install nothing.",
    )
    ver.add_argument("dir", help="the repository directory")
    ver.add_argument("--model", help="NAME@VERSION when the directory holds several releases")
    _common(ver)
    ver.set_defaults(func=_verify)

    mod = sub.add_parser("models", help="installed models: active, rollback target, probation")
    _common(mod)
    mod.set_defaults(func=_models)

    rb = sub.add_parser("rollback", help="go back to the previous model now")
    _common(rb)
    rb.set_defaults(func=_rollback)


def _context(
    args: argparse.Namespace, *, must_exist: bool = False
) -> tuple[ModelStore, UpdaterSettings, Any]:
    """The store, update settings and config; ``must_exist``: a command that only reads or changes
    an existing store never creates one at a mistyped path."""
    config = None
    settings = UpdaterSettings()
    state_dir: Path | None = args.state_dir
    if args.config is not None:
        from edge_agent.config import load_config

        config = load_config(args.config)
        settings = settings_from_config(config)
        state_dir = state_dir or config.state_dir
    if state_dir is None:
        raise CommandError("give --config or --state-dir", exit_code=EXIT_USAGE, reason="usage")
    if must_exist and not Path(store_dir(state_dir)).is_dir():
        raise CommandError(
            f"no model store in {state_dir} (is the state directory right?)", reason="no_store"
        )
    overrides: dict[str, Any] = {}
    if args.root_json is not None:
        overrides["root_json"] = args.root_json
    if args.device_class is not None:
        overrides["device_class"] = args.device_class
    if overrides:
        settings = replace(settings, **overrides)
    return ModelStore(store_dir(state_dir)), settings, config


def _updater(args: argparse.Namespace, *, must_exist: bool = False) -> Updater:
    from edge_agent.runtime import ModelRunner

    store, settings, config = _context(args, must_exist=must_exist)
    inference = config.inference if config is not None else None
    return Updater(store, settings, load_runner=lambda d: ModelRunner.load(d, inference=inference))


def _split(ref: str | None) -> tuple[str | None, str | None]:
    if ref is None:
        return None, None
    name, sep, version = ref.partition("@")
    if not sep or not name or not version:
        raise CommandError("--model takes NAME@VERSION", exit_code=EXIT_USAGE, reason="usage")
    return name, version


def _report(args: argparse.Namespace, out: Outcome) -> int:
    if args.json:
        print_json(out.to_dict())
    elif out.ok:
        sys.stdout.write(out.message + "\n")
    if not out.ok:
        raise CommandError(f"{out.message} ({out.reason})", reason=out.reason or out.status)
    return 0


def _repo_dir(raw: str) -> Path:
    """The release directory a command was given: it must name an existing directory."""
    if not raw.strip():
        raise CommandError(
            "the release directory is empty: give the export's folder", exit_code=EXIT_USAGE, reason="usage"
        )
    path = Path(raw)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise CommandError(
            f"{raw} {what}: give the folder written by `fleet export` or `fleet release --repo`",
            reason="not_found",
        )
    return path


def _install(args: argparse.Namespace) -> int:
    if not args.shadow_stop:
        if args.dir is None:
            raise CommandError(
                "give the release directory (DIR): the folder written by `fleet export`",
                exit_code=EXIT_USAGE,
                reason="usage",
            )
        args.dir = _repo_dir(args.dir)
    name, version = _split(args.model)
    u = _updater(args)
    if args.shadow_stop:
        from edge_agent.shadow_sideload import withdraw_request

        with u.store.locked():
            had = withdraw_request(u.store.root)
        sys.stdout.write("shadow candidate withdrawn\n" if had else "no shadow candidate was side-loaded\n")
        return 0
    if args.shadow:
        return _report(args, u.install_shadow_from_dir(args.dir, name=name, version=version))
    with u.store.locked():
        u.store.recover()
    return _report(args, u.install_from_dir(args.dir, name=name, version=version, force=args.force))


def _verify(args: argparse.Namespace) -> int:
    args.dir = _repo_dir(args.dir)
    name, version = _split(args.model)
    return _report(args, _updater(args).verify_dir(args.dir, name=name, version=version))


def _rollback(args: argparse.Namespace) -> int:
    return _report(
        args, _updater(args, must_exist=True).rollback(reason="edge-agent rollback", code="operator")
    )


def _models(args: argparse.Namespace) -> int:
    store, _, _ = _context(args, must_exist=True)
    state = store.read_state()
    rows: list[dict[str, Any]] = []
    for role, ref in (("active", state.active), ("previous", state.previous)):
        if ref is not None:
            rows.append({"role": role, **ref.to_dict(), "present": store.has_bundle(ref.sha256)})
    doc = {
        "models": rows,
        "probation": state.probation,
        "boot_count": state.boot_count,
        "highest": dict(state.highest),
        "failed": sorted(state.failed),
    }
    if args.json:
        print_json(doc)
        return 0
    if not rows:
        sys.stdout.write("no model installed\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("role", "model", "version", "sha256")
    for r in rows:
        role = r["role"] + (" (probation)" if r["role"] == "active" and state.probation else "")
        table.add_row(role, r["name"], r["version"], r["sha256"][:12])
    Console().print(table)
    if state.failed:
        sys.stdout.write("failed probation here: " + ", ".join(sorted(state.failed)) + "\n")
    return 0
