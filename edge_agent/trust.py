"""The device's TUF client: verify releases from the fleet server or from a local directory.

Both paths run the same ``tuf.ngclient.Updater`` workflow from this device's provisioned
``root.json`` (root rotation, timestamp → snapshot → targets, signature thresholds, version
numbers that never go down, expiry, every file's length and sha256); only the fetcher differs:

- over HTTP: ngclient's own fetcher against ``{server}/tuf/metadata/`` and ``{server}/tuf/targets/``,
  sending this device's token (``[updates] token_file``) as a bearer credential: the fleet server
  serves targets (the plant's models) only to a token holder; a refused token is reason
  ``unauthorized`` and is not retried;
- from a directory (a USB export, ``fleet release --repo``): :class:`DirectoryFetcher`, which serves
  ``DIR/metadata`` and ``DIR/targets`` to the same workflow.

The trusted metadata lives in ``metadata_dir`` under the store; it is what makes a replayed old
timestamp or snapshot fail even after a restart. ngclient does not fsync it, so after every
refresh we fsync the files and the directory.

Target downloads are bounded by the signed length: the fetcher stops reading as soon as more bytes
arrive than the targets metadata signed (``DownloadLengthMismatchError``), so an endless or
oversized file never fills the disk; the hash is checked before the file is handed on.

Wrong device clock (decided behaviour):

- The running model never depends on the clock: expiry only gates *new* updates.
- Clock ahead of real time: valid metadata looks expired, so updates are refused with reason
  ``expired`` (the event says to check the clock) and the device keeps its current model. Fix the
  clock (NTP) and retry; nothing needs to be reinstalled.
- Clock behind real time: expired metadata could look fresh (a freeze attack needs that). We keep
  a clock floor, ``clock.json`` beside the metadata: the latest wall-clock time at which a refresh
  succeeded. A clock more than :data:`CLOCK_SKEW_TOLERANCE_S` earlier than that floor refuses every
  refresh with reason ``clock`` until the clock is right. Version numbers (which never go down)
  protect against replay regardless of the clock.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import urllib3
from tuf import __version__ as tuf_version
from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher

from edge_agent.acceptance import split_target_path
from edge_agent.atomic import atomic_write_bytes, fsync_dir
from edge_agent.errors import FetchError, VerificationError

log = logging.getLogger(__name__)

CLOCK_FILE = "clock.json"
CLOCK_SKEW_TOLERANCE_S = 300.0
LOCAL_BASE = "lineside-local://repo/"
_CHUNK = 64 * 1024


class UpdateVerificationError(VerificationError):
    """A VerificationError with a short machine-readable ``reason`` for events.

    Reasons: ``signature``, ``replay``, ``expired``, ``hash``, ``length``, ``untrusted_path``,
    ``not_found``, ``clock``, ``metadata``.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class FetchLimits:
    """Upper bounds for metadata downloads (targets are bounded by their signed length)."""

    root_max_bytes: int = 512_000
    timestamp_max_bytes: int = 16_384
    snapshot_max_bytes: int = 2_000_000
    targets_max_bytes: int = 5_000_000


@dataclass(frozen=True)
class VerifiedRelease:
    """The signed facts of one release: its files' TargetFile entries and the custom data."""

    name: str
    version: str
    targets: dict[str, TargetFile]  # FILE → TargetFile
    custom: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class DirectoryFetcher(FetcherInterface):
    """Serves a local TUF repository directory (``DIR/metadata``, ``DIR/targets``) to ngclient.

    URLs are ``lineside-local://repo/<relative path>``; nothing outside ``root`` can be read.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(LOCAL_BASE):
            raise tuf_exc.DownloadError(f"not a local repository URL: {url}")
        rel = unquote(url[len(LOCAL_BASE) :])
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root):
            raise tuf_exc.DownloadHTTPError(f"{rel} is outside the repository", 403)
        try:
            f = path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise tuf_exc.DownloadHTTPError(f"{rel} not found", 404) from exc
        return self._chunks(f)

    @staticmethod
    def _chunks(f: Any) -> Iterator[bytes]:
        with f:
            while True:
                chunk = f.read(_CHUNK)
                if not chunk:
                    return
                yield chunk


class BearerFetcher(Urllib3Fetcher):
    """ngclient's urllib3 fetcher, sending ``Authorization: Bearer TOKEN`` with every request."""

    def __init__(self, token: str, **kw: Any) -> None:
        super().__init__(**kw)
        headers = {
            "User-Agent": f"lineside-agent python-tuf/{tuf_version}",
            "Authorization": f"Bearer {token}",
        }
        # The parent sends its default headers through the pool it keeps in ``_proxy_env``; replacing
        # that pool with one carrying the token keeps the parent's request and error handling.
        # ProxyEnvironment (proxy variables) is ngclient-internal: without it, a plain pool.
        try:
            from tuf.ngclient._internal.proxy import ProxyEnvironment

            self._proxy_env: Any = ProxyEnvironment(headers=headers)
        except ImportError:
            self._proxy_env = urllib3.PoolManager(headers=headers)


def read_token_file(path: Path) -> str:
    """The device's HTTP token from its file (first line). FetchError names the file."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise FetchError(f"cannot read the device token file {path}: {exc}") from exc
    if not token or any(c.isspace() for c in token):
        raise FetchError(f"the device token file {path} does not hold one token")
    return token


def _reason(exc: BaseException) -> str:
    if isinstance(exc, tuf_exc.UnsignedMetadataError):
        return "signature"
    if isinstance(exc, tuf_exc.BadVersionNumberError):
        return "replay"
    if isinstance(exc, tuf_exc.ExpiredMetadataError):
        return "expired"
    if isinstance(exc, tuf_exc.LengthOrHashMismatchError):
        return "hash"
    if isinstance(exc, tuf_exc.DownloadLengthMismatchError):
        return "length"
    return "metadata"


class TrustedRepository:
    """One TUF session against one repository (HTTP or directory). Use a new one per update.

    ``now`` is the wall clock (a seam for clock tests); ngclient itself reads the system clock.
    """

    def __init__(
        self,
        metadata_dir: Path,
        root_json: Path,
        *,
        metadata_base_url: str,
        target_base_url: str,
        fetcher: FetcherInterface | None = None,
        limits: FetchLimits | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.metadata_dir = Path(metadata_dir)
        self.root_json = Path(root_json)
        self.metadata_base_url = metadata_base_url
        self.target_base_url = target_base_url
        self.fetcher = fetcher
        self.limits = limits or FetchLimits()
        self.now = now
        self._updater: Updater | None = None

    @classmethod
    def over_http(
        cls, metadata_dir: Path, root_json: Path, server_url: str, *, token: str | None = None, **kw: Any
    ) -> TrustedRepository:
        """The fleet server's repository: ``{server_url}/tuf/metadata/`` and ``/tuf/targets/``.

        ``token`` is this device's HTTP credential (``fleet devices token``), sent as a bearer token.
        """
        base = server_url.rstrip("/")
        return cls(
            metadata_dir,
            root_json,
            metadata_base_url=f"{base}/tuf/metadata/",
            target_base_url=f"{base}/tuf/targets/",
            fetcher=BearerFetcher(token) if token else None,
            **kw,
        )

    @classmethod
    def from_directory(
        cls, metadata_dir: Path, root_json: Path, repo_dir: Path, **kw: Any
    ) -> TrustedRepository:
        """A local repository directory (USB export): the same workflow through DirectoryFetcher."""
        return cls(
            metadata_dir,
            root_json,
            metadata_base_url=f"{LOCAL_BASE}metadata/",
            target_base_url=f"{LOCAL_BASE}targets/",
            fetcher=DirectoryFetcher(repo_dir),
            **kw,
        )

    # -- clock floor -------------------------------------------------------------------------------

    def _check_clock(self) -> datetime:
        now = self.now()
        path = self.metadata_dir / CLOCK_FILE
        try:
            floor = datetime.fromisoformat(json.loads(path.read_bytes())["last_refresh_utc"])
        except (FileNotFoundError, KeyError, ValueError):
            return now
        if (floor - now).total_seconds() > CLOCK_SKEW_TOLERANCE_S:
            raise UpdateVerificationError(
                f"device clock {now.isoformat()} is earlier than the last successful update "
                f"({floor.isoformat()}); fix the clock before updating",
                reason="clock",
            )
        return now

    def _record_clock(self, now: datetime) -> None:
        path = self.metadata_dir / CLOCK_FILE
        try:
            floor = datetime.fromisoformat(json.loads(path.read_bytes())["last_refresh_utc"])
            now = max(now, floor)
        except (FileNotFoundError, KeyError, ValueError):
            pass
        atomic_write_bytes(path, json.dumps({"last_refresh_utc": now.isoformat()}).encode())

    # -- workflow ----------------------------------------------------------------------------------

    def _fsync_metadata(self) -> None:
        # ngclient writes with os.replace but no fsync: make the trusted state durable.
        for d in (self.metadata_dir, self.metadata_dir / "root_history"):
            if not d.is_dir():
                continue
            for p in d.iterdir():
                if p.is_file() and not p.is_symlink():
                    fd = os.open(p, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            fsync_dir(d)

    def refresh(self) -> None:
        """Run the TUF client workflow for the top-level metadata. UpdateVerificationError / FetchError."""
        now = self._check_clock()
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        config = UpdaterConfig(
            root_max_length=self.limits.root_max_bytes,
            timestamp_max_length=self.limits.timestamp_max_bytes,
            snapshot_max_length=self.limits.snapshot_max_bytes,
            targets_max_length=self.limits.targets_max_bytes,
        )
        # The cached root (after rotations) is the anchor once it exists; the provisioned one before.
        cached = self.metadata_dir / "root.json"
        try:
            bootstrap = None if cached.exists() else self.root_json.read_bytes()
        except OSError as exc:
            raise UpdateVerificationError(
                f"cannot read the trust anchor {self.root_json}: {exc}", reason="metadata"
            ) from exc
        try:
            updater = Updater(
                metadata_dir=str(self.metadata_dir),
                metadata_base_url=self.metadata_base_url,
                target_base_url=self.target_base_url,
                fetcher=self.fetcher,
                config=config,
                bootstrap=bootstrap,
            )
            updater.refresh()
        except tuf_exc.RepositoryError as exc:
            reason = _reason(exc)
            hint = ""
            if reason == "expired":
                # Either a freeze attack or this device's clock runs ahead: say which clock we used.
                hint = f" (device clock reads {now.isoformat()}: if the server's metadata is fresh, fix the clock)"
            raise UpdateVerificationError(f"TUF metadata rejected: {exc}{hint}", reason=reason) from exc
        except tuf_exc.DownloadLengthMismatchError as exc:
            raise UpdateVerificationError(f"metadata too long: {exc}", reason="length") from exc
        except tuf_exc.DownloadError as exc:
            raise FetchError(f"cannot download TUF metadata: {exc}") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise FetchError(f"download of TUF metadata was cut: {exc}") from exc
        except (ValueError, TypeError, KeyError) as exc:
            raise UpdateVerificationError(f"malformed TUF metadata: {exc}", reason="metadata") from exc
        finally:
            self._fsync_metadata()
        self._record_clock(now)
        self._updater = updater

    def _trusted_targets(self) -> Metadata[Targets]:
        # Written by ngclient only after it verified it in this refresh.
        return Metadata[Targets].from_bytes((self.metadata_dir / "targets.json").read_bytes())

    def release(self, name: str, version: str) -> VerifiedRelease:
        """The signed files of ``name/version``; every one of its paths must be safe."""
        if self._updater is None:
            self.refresh()
        assert self._updater is not None
        prefix = f"{name}/{version}/"
        found: dict[str, TargetFile] = {}
        custom: dict[str, Any] = {}
        for path in self._trusted_targets().signed.targets:
            if not path.startswith(prefix):
                continue
            try:
                _, _, file = split_target_path(path)
            except VerificationError as exc:
                raise UpdateVerificationError(str(exc), reason="untrusted_path") from exc
            try:
                info = self._updater.get_targetinfo(path)
            except tuf_exc.RepositoryError as exc:
                raise UpdateVerificationError(f"TUF metadata rejected: {exc}", reason=_reason(exc)) from exc
            except tuf_exc.DownloadError as exc:
                raise FetchError(f"cannot download TUF metadata: {exc}") from exc
            if info is None:
                continue
            found[file] = info
            if isinstance(info.custom, dict):
                custom = dict(info.custom)
        if not found:
            raise UpdateVerificationError(
                f"{name}@{version} is not in the signed targets", reason="not_found"
            )
        return VerifiedRelease(name=name, version=version, targets=found, custom=custom)

    def download(self, target: TargetFile, dest: Path) -> Path:
        """Download one target to ``dest`` (fsynced); at most its signed length is ever read."""
        if self._updater is None:
            raise RuntimeError("refresh() first")
        try:
            path = self._updater.download_target(target, filepath=str(dest))
        except tuf_exc.RepositoryError as exc:
            raise UpdateVerificationError(f"{target.path}: {exc}", reason=_reason(exc)) from exc
        except tuf_exc.DownloadLengthMismatchError as exc:
            raise UpdateVerificationError(
                f"{target.path}: longer than signed ({exc})", reason="length"
            ) from exc
        except tuf_exc.DownloadHTTPError as exc:
            if exc.status_code in (401, 403):
                # Not a network fault: retrying with the same token cannot help.
                raise UpdateVerificationError(
                    f"the server refused this device's token for {target.path} (HTTP {exc.status_code}): "
                    "set [updates] token_file to the token from `fleet devices token DEVICE`",
                    reason="unauthorized",
                ) from exc
            raise FetchError(f"cannot download {target.path}: {exc}") from exc
        except tuf_exc.DownloadError as exc:
            raise FetchError(f"cannot download {target.path}: {exc}") from exc
        except urllib3.exceptions.HTTPError as exc:
            # ngclient wraps errors of the request but not of the body stream: a connection cut
            # mid-download surfaces as urllib3's ProtocolError (IncompleteRead). Transport, retry.
            raise FetchError(f"download of {target.path} was cut: {exc}") from exc
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return Path(path)
