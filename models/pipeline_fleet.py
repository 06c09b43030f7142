"""The fleet steps of ``edge-models pipeline``: sign and release the bundle, then start a rollout.

As ``fleet release --server`` does: the targets key signs here (offline), over the server's current
targets metadata verified against our root; the signed metadata and files go up through the API
with an admin token (:class:`fleet_server.client.FleetClient`). Both steps are idempotent: a
release whose files are already on the server byte for byte is not released again, a different
bundle under the same version is refused (``version_exists``), and a rollout of the release that
this workdir (or the server) already started is not started twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleet_server.client import ApiError, FleetClient
from lineside_common.errors import LinesideError
from models.pipeline_config import PipelineConfig
from models.pipeline_steps import (
    BUNDLE_DIR,
    PipelineStop,
    StepOutcome,
    bundle_digest,
    file_sha256,
    read_json,
    write_json,
)


def _released(client: FleetClient, name: str, version: str) -> dict[str, Any] | None:
    try:
        return client.model(name, version)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def release_step(config: PipelineConfig, workdir: Path, client: FleetClient | None) -> StepOutcome:
    """Sign and upload WORKDIR/bundle, unless the server already holds exactly these files."""
    from tuf.api.exceptions import UnsignedMetadataError
    from tuf.api.metadata import Metadata, Targets

    from edge_agent.manifest import load_manifest
    from fleet_server import keys as keymod
    from fleet_server.release_sign import AlreadyReleasedError, build_release_targets

    if config.release is None or client is None:
        return StepOutcome("skipped", "not_configured")
    bundle = workdir / BUNDLE_DIR
    manifest = load_manifest(bundle)
    record = {"name": manifest.name, "version": manifest.version, "digest": bundle_digest(bundle)}
    local = {p.name: file_sha256(p) for p in bundle.iterdir() if p.is_file()}
    try:
        existing = _released(client, manifest.name, manifest.version)
        if existing is not None:
            remote = {f: info.get("sha256") for f, info in existing.get("files", {}).items()}
            if remote != local:
                raise PipelineStop(
                    f"{manifest.ref} is already released with other files: bump [pipeline] version",
                    reason="version_exists",
                )
            write_json(workdir / "release" / "release.json", record)
            return StepOutcome("skipped", "already_released", {"release": record})
        keys = Path(config.release.keys)
        root = keymod.load_root(keys)
        current = None
        try:
            current = Metadata[Targets].from_bytes(client.get_bytes("/tuf/metadata/targets.json"))
        except ApiError as exc:
            if exc.status != 404:
                raise
        if current is not None:
            try:
                root.verify_delegate(Targets.type, current)
            except UnsignedMetadataError as exc:
                raise PipelineStop(
                    "the server's targets.json is not signed by our targets key", reason="untrusted_server"
                ) from exc
        try:
            signed, files = build_release_targets(
                bundle,
                targets_signer=keymod.load_signer(keys, "targets"),
                current=current,
                expiry_days=keymod.load_expiry_days(keys)["targets"],
            )
        except AlreadyReleasedError:
            write_json(workdir / "release" / "release.json", record)
            return StepOutcome("skipped", "already_released", {"release": record})
        answer = client.upload_release(signed, files)
    except ApiError as exc:
        raise PipelineStop(f"the server refused the release: {exc}", reason="release_refused") from exc
    except PipelineStop:
        raise
    except LinesideError as exc:
        raise PipelineStop(f"release: {exc}", reason=f"release_{getattr(exc, 'reason', 'error')}") from exc
    write_json(workdir / "release" / "release.json", {**record, "server": answer})
    return StepOutcome(detail={"release": record})


def rollout_step(config: PipelineConfig, workdir: Path, client: FleetClient | None) -> StepOutcome:
    """Start the configured rollout once: an earlier start recorded here or on the server is kept."""
    if not config.rollout.start:
        return StepOutcome("skipped", "not_requested")
    if client is None:
        return StepOutcome("skipped", "not_configured")
    release = read_json(workdir / "release" / "release.json")
    ref = f"{release['name']}@{release['version']}"
    record_file = workdir / "rollout" / "rollout.json"
    prev = read_json(record_file)
    try:
        if isinstance(prev, dict) and prev.get("ref") == ref and prev.get("digest") == release["digest"]:
            return StepOutcome("skipped", "already_started", {"rollout_id": prev["rollout_id"]})
        for r in client.rollouts():
            if r.get("ref") == ref:
                write_json(record_file, {"ref": ref, "digest": release["digest"], "rollout_id": r["id"]})
                return StepOutcome("skipped", "already_started", {"rollout_id": r["id"]})
        started = client.start_rollout(ref, **config.rollout.options())
    except ApiError as exc:
        raise PipelineStop(f"the server refused the rollout: {exc}", reason="rollout_refused") from exc
    except LinesideError as exc:
        raise PipelineStop(f"rollout: {exc}", reason=f"rollout_{getattr(exc, 'reason', 'error')}") from exc
    write_json(record_file, {"ref": ref, "digest": release["digest"], "rollout_id": started["id"]})
    return StepOutcome(detail={"rollout_id": started["id"], "stages": started.get("stages")})
