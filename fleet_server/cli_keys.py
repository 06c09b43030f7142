"""``fleet keys init``, ``fleet release``, ``fleet export``: signing releases with TUF.

``fleet release BUNDLE --keys DIR --server URL --token T`` first GETs
``{URL}/tuf/metadata/targets.json`` (the newest targets, kept unversioned beside the versioned
files; 404 means no release yet), checks it is signed by the targets key in DIR's root.json (so a
compromised server cannot get extra targets signed), adds the bundle's files, signs the next
targets version offline and POSTs ``{"targets": ..., "files": {path: base64}}`` to
``{URL}/api/v1/models``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Targets

from fleet_server import keys as keymod
from fleet_server.tuf_export import Export, export_release
from fleet_server.tuf_repo import AlreadyReleasedError, Repository, build_release_targets, release_local
from lineside_common.cli import CommandError, print_json
from lineside_common.errors import LinesideError, VerificationError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="TUF signing keys", description="Manage the TUF signing keys.")
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    init = ksub.add_parser(
        "init",
        help="create root/targets/snapshot/timestamp keys and root.json",
        description="Create Ed25519 keys for the four TUF roles and the first root.json "
        "(the trust anchor to provision on every device). Private keys are written 0600.",
    )
    init.add_argument("--out", type=Path, required=True, help="directory for the keys (must not hold keys)")
    init.add_argument(
        "--expiry-days",
        default=None,
        help="metadata lifetime per role, e.g. root=365,targets=90,snapshot=7,timestamp=1 (these are the defaults)",
    )
    init.add_argument("--json", action="store_true", help="print the result as JSON")
    init.set_defaults(func=_keys_init)

    rel = sub.add_parser(
        "release",
        help="sign a model bundle and publish it",
        description="Sign BUNDLE's files as TUF targets with the targets key and publish them: into a "
        "local TUF repository (--repo, created on first use; works with no server) or to a fleet "
        "server (--server/--token, or LINESIDE_SERVER/LINESIDE_TOKEN). The bundle must hold regular "
        "files only (no symlinks, hard links or directories) and must run as a device runs it: "
        "model.onnx loads in ONNX Runtime, the manifest matches its inputs and outputs, and the "
        "self-test reproduces on the CPU provider. A failed release changes nothing and can be retried.",
    )
    rel.add_argument("bundle", type=Path, help="bundle directory (manifest.json, model.onnx, selftest.npz)")
    rel.add_argument("--keys", type=Path, required=True, help="keys directory from `fleet keys init`")
    where = rel.add_mutually_exclusive_group()
    where.add_argument("--repo", type=Path, help="local TUF repository directory")
    where.add_argument(
        "--server", help="fleet server URL, e.g. http://127.0.0.1:8700 (default: $LINESIDE_SERVER)"
    )
    rel.add_argument("--token", help="admin API token for the server (default: $LINESIDE_TOKEN)")
    rel.add_argument(
        "--allow-downgrade",
        action="store_true",
        help="sign this release as a deliberate downgrade (devices accept it below their highest version)",
    )
    rel.add_argument("--json", action="store_true", help="print the result as JSON")
    rel.set_defaults(func=_release)

    exp = sub.add_parser(
        "export",
        help="write a signed release to a directory (USB side-loading)",
        description="Write a self-contained signed TUF repository holding NAME@VERSION, for "
        "`edge-agent install DIR` on air-gapped lines.",
    )
    exp.add_argument("ref", help="NAME@VERSION")
    exp.add_argument("--out", type=Path, required=True, help="output directory (must be empty or absent)")
    src = exp.add_mutually_exclusive_group()
    src.add_argument("--repo", type=Path, help="local TUF repository directory")
    src.add_argument("--server", help="fleet server URL, downloads through /tuf/ (default: $LINESIDE_SERVER)")
    exp.add_argument(
        "--token", help="API or device token for --server: model files need one (default: $LINESIDE_TOKEN)"
    )
    exp.add_argument(
        "--expires",
        type=_duration,
        help="re-sign the export's snapshot and timestamp to live this long (e.g. 90d, 12h) for "
        "air-gapped lines; needs the online keys (--keys). Without it the export expires with the "
        "repository's timestamp (a day by default)",
    )
    exp.add_argument(
        "--keys", type=Path, help="keys directory holding private/snapshot.pem and private/timestamp.pem"
    )
    exp.add_argument("--json", action="store_true", help="print the result as JSON")
    exp.set_defaults(func=_export)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``600s``, ``2w`` → a timedelta (argparse type)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw])\s*", text)
    if m is None or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90d, 12h or 30m")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def _keys_init(args: argparse.Namespace) -> int:
    root = keymod.init_keys(args.out, keymod.parse_expiry_days(args.expiry_days))
    if args.json:
        print_json({"keys_dir": str(args.out), "root_json": str(root)})
    else:
        sys.stdout.write(
            f"keys written to {args.out} (private keys in {args.out / keymod.PRIVATE_DIR}, mode 0600)\n"
            f"trust anchor: {root}: provision it on every device ([updates] root_json)\n"
            "keep root.pem and targets.pem offline; the fleet server needs only snapshot.pem and timestamp.pem\n"
        )
    return 0


def _release(args: argparse.Namespace) -> int:
    try:
        if args.repo is not None:
            info = release_local(args.bundle, args.keys, args.repo, allow_downgrade=args.allow_downgrade)
            result: dict[str, Any] = {"repo": str(args.repo), **info.to_dict()}
        else:
            # Like every other `fleet` command: flags first, then the environment.
            args.server = args.server or os.environ.get("LINESIDE_SERVER")
            args.token = args.token or os.environ.get("LINESIDE_TOKEN")
            if not args.server:
                raise CommandError("give --repo DIR, or --server URL (or set LINESIDE_SERVER)")
            if not args.token:
                raise CommandError("--server needs an admin token: pass --token or set LINESIDE_TOKEN")
            result = _release_to_server(args)
    except AlreadyReleasedError as exc:
        # Retrying a release whose answer was lost is not an error: the same bytes are published.
        if args.json:
            print_json({"ok": True, "already_released": True, "ref": exc.ref})
        else:
            sys.stdout.write(f"{exc}; nothing to do\n")
        return 0
    except LinesideError as exc:
        if args.json:
            print_json({"ok": False, "error": str(exc), "reason": getattr(exc, "reason", None)})
        raise
    if args.json:
        print_json(result)
    else:
        sys.stdout.write(f"released {result['name']}@{result['version']} ({len(result['files'])} files)\n")
    return 0


def _release_to_server(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    base = args.server.rstrip("/")
    headers = {"Authorization": f"Bearer {args.token}"}
    root = keymod.load_root(args.keys)
    try:
        with httpx.Client(timeout=60.0) as client:
            r = client.get(f"{base}/tuf/metadata/targets.json")
            current: Metadata[Targets] | None = None
            if r.status_code == 200:
                current = Metadata[Targets].from_bytes(r.content)
                try:
                    root.verify_delegate(Targets.type, current)
                except UnsignedMetadataError as exc:
                    raise VerificationError(
                        "the server's targets.json is not signed by our targets key"
                    ) from exc
            elif r.status_code != 404:
                raise CommandError(f"GET targets.json: HTTP {r.status_code}")
            signed, files = build_release_targets(
                args.bundle,
                targets_signer=keymod.load_signer(args.keys, "targets"),
                current=current,
                expiry_days=keymod.load_expiry_days(args.keys)["targets"],
                allow_downgrade=args.allow_downgrade,
            )
            body = {
                "targets": json.loads(signed),
                "files": {p: base64.b64encode(d).decode() for p, d in files.items()},
            }
            resp = client.post(f"{base}/api/v1/models", json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot reach {base}: {exc}") from exc
    if resp.status_code >= 400:
        raise CommandError(f"the server refused the release: HTTP {resp.status_code}: {_message(resp)}")
    out: dict[str, Any] = resp.json()
    return out


def _message(resp: Any) -> str:
    """The server's one-line error message (its JSON ``detail.message``), else the start of the body."""
    try:
        detail = resp.json().get("detail")
        if isinstance(detail, dict) and isinstance(detail.get("message"), str):
            return str(detail["message"])
    except (ValueError, AttributeError):
        pass
    return str(resp.text[:300]).replace("\n", " ")


def _export(args: argparse.Namespace) -> int:
    try:
        name, sep, version = args.ref.partition("@")
        if not sep:
            raise CommandError("give the release as NAME@VERSION")
        if args.repo is not None:
            done = export_release(
                Repository.open(args.repo, args.keys), name, version, args.out, expires=args.expires
            )
        else:
            server = args.server or os.environ.get("LINESIDE_SERVER")
            token = args.token or os.environ.get("LINESIDE_TOKEN")
            if not server:
                raise CommandError("give --repo DIR or --server URL (or set LINESIDE_SERVER)")
            if not token:
                raise CommandError(
                    "--server needs --token (or LINESIDE_TOKEN): the server serves model files only to a"
                    " token holder"
                )
            done = _export_from_server(
                server, token, name, version, args.out, keys=args.keys, expires=args.expires
            )
    except LinesideError as exc:
        if args.json:
            print_json({"ok": False, "error": str(exc), "reason": getattr(exc, "reason", None)})
        raise
    if args.json:
        print_json({"ok": True, "ref": f"{name}@{version}", **done.to_dict()})
    else:
        sys.stdout.write(
            f"exported {name}@{version} to {done.path}; it expires {done.expires:%Y-%m-%d %H:%M} UTC"
            f" (its {done.expires_role} metadata)\n"
        )
    return 0


def _export_from_server(
    server: str,
    token: str,
    name: str,
    version: str,
    out: Path,
    *,
    keys: Path | None,
    expires: timedelta | None,
) -> Export:
    """Mirror the server's metadata and the release's files, then export from the mirror."""
    import tempfile

    import httpx

    from fleet_server.tuf_repo import METADATA_DIR, TARGETS_DIR, target_file_name

    base = server.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"}
    with tempfile.TemporaryDirectory() as tmp, httpx.Client(timeout=60.0, headers=headers) as client:
        mirror = Path(tmp)
        md = mirror / METADATA_DIR
        md.mkdir()

        def get(path: str) -> bytes:
            try:
                r = client.get(f"{base}/tuf/{path}")
            except httpx.HTTPError as exc:
                raise CommandError(f"cannot reach {base}: {exc}") from exc
            if r.status_code in (401, 403):
                raise CommandError(f"GET /tuf/{path}: HTTP {r.status_code}: the server refused the token")
            if r.status_code != 200:
                raise CommandError(f"GET /tuf/{path}: HTTP {r.status_code}")
            return r.content

        (md / "timestamp.json").write_bytes(get("metadata/timestamp.json"))
        for fname in ("root.json", "snapshot.json", "targets.json"):
            (md / fname).write_bytes(get(f"metadata/{fname}"))
        rootv = Metadata.from_bytes((md / "root.json").read_bytes()).signed.version
        for v in range(1, rootv + 1):
            (md / f"{v}.root.json").write_bytes(get(f"metadata/{v}.root.json"))
        for role in ("snapshot", "targets"):
            v = Metadata.from_bytes((md / f"{role}.json").read_bytes()).signed.version
            (md / f"{v}.{role}.json").write_bytes((md / f"{role}.json").read_bytes())
        repo = Repository.open(mirror, keys)
        for info in repo.releases():
            if (info.name, info.version) != (name, version):
                continue
            for f in info.files.values():
                rel = target_file_name(f["path"], f["sha256"])
                dest = mirror / TARGETS_DIR / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(get(f"targets/{rel}"))
        return export_release(repo, name, version, out, expires=expires)
