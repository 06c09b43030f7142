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
- The clock is a seam of ours: ``TrustedRepository(now=...)`` (the agent's ``Updater(now=...)``)
  is the one clock both our floor and ngclient's expiry checks use.
- Clock ahead of real time: valid metadata looks expired, so updates are refused with reason
  ``expired`` (the event says which clock was used) and the device keeps its current model. Fix the
  clock (NTP) and retry; nothing needs to be reinstalled.
- Clock behind real time: expired metadata could look fresh (a freeze attack needs that). The
  clock floor is what the *fleet signed*, never this device's clock: the fleet server puts its
  signing time in every timestamp it signs (:data:`ISSUED_FIELD`, inside the signed part), and the
  floor is the issue time of the newest timestamp this device trusts after a refresh. A clock more
  than :data:`CLOCK_SKEW_TOLERANCE_S` earlier than that refuses the update with reason ``clock``
  until the clock is right. A clock that once ran fast raises nothing: after it is corrected,
  valid updates install at once. Version numbers (which never go down) protect against replay
  regardless of the clock. A timestamp without the field (an older fleet server) gives no floor.
  (Earlier agents kept the device's own clock at the last success in ``clock.json``; that file is
  ignored, so a floor raised by a fast clock no longer locks a device out.)

Size: one concern, the device side of TUF (fetchers for HTTP and a directory, the clock seam,
the signed clock floor, and translating python-tuf's errors into typed reasons with advice).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

import urllib3
from tuf import __version__ as tuf_version
from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, TargetFile, Targets, Timestamp
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher

from edge_agent.acceptance import split_target_path
from lineside_common.atomic import fsync_file, fsync_tree
from lineside_common.errors import FetchError, VerificationError

log = logging.getLogger(__name__)

CLOCK_SKEW_TOLERANCE_S = 300.0
# The fleet's signing time, a field inside the signed part of every timestamp the fleet signs.
ISSUED_FIELD = "x-lineside-issued"
LOCAL_BASE = "lineside-local://repo/"
_CHUNK = 64 * 1024


class UpdateVerificationError(VerificationError):
    """A VerificationError with a short machine-readable ``reason`` for events.

    Reasons: ``signature``, ``replay``, ``expired``, ``hash``, ``length``, ``untrusted_path``,
    ``not_found``, ``clock``, ``metadata``, ``incomplete`` (a local repository lacks a file).
    ``data`` carries the facts behind the message (clocks, the library's own words) for events.
    """

    def __init__(self, message: str, *, reason: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.data = dict(data or {})


def issued_fields(now: datetime | None = None) -> dict[str, Any]:
    """The signed fields the fleet adds to a timestamp: its signing time (the devices' clock floor)."""
    when = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    return {ISSUED_FIELD: when.isoformat().replace("+00:00", "Z")}


def signed_issue_time(md: Metadata[Any]) -> datetime | None:
    """The fleet's signing time in ``md`` (a timestamp), or None when it carries none or a bad one."""
    raw = md.signed.unrecognized_fields.get(ISSUED_FIELD)
    if not isinstance(raw, str):
        return None
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


class MetadataLimits(Protocol):
    """Upper bounds for metadata downloads (targets are bounded by their signed length).

    The updater passes its settings (``[updates] root_max_bytes`` …) as they are.
    """

    @property
    def root_max_bytes(self) -> int: ...

    @property
    def timestamp_max_bytes(self) -> int: ...

    @property
    def snapshot_max_bytes(self) -> int: ...

    @property
    def targets_max_bytes(self) -> int: ...


@dataclass(frozen=True)
class FetchLimits:
    """The default :class:`MetadataLimits` (the same as ``[updates]``'s defaults)."""

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


def _use_clock(updater: Updater, now: datetime) -> None:
    """Make ngclient judge expiry by ``now`` (our clock seam) instead of reading the system clock.

    ngclient 7 reads ``datetime.now()`` once, into its trusted set's ``reference_time``, when the
    Updater is built, and has no parameter for it; we set that one attribute. If a new python-tuf
    moves it, this fails loudly rather than silently judging expiry by another clock.
    """
    trusted = getattr(updater, "_trusted_set", None)
    if trusted is None or not hasattr(trusted, "reference_time"):
        raise RuntimeError("python-tuf no longer exposes its reference time: update edge_agent.trust")
    trusted.reference_time = now


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
        limits: MetadataLimits | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.metadata_dir = Path(metadata_dir)
        self.root_json = Path(root_json)
        self.metadata_base_url = metadata_base_url
        self.target_base_url = target_base_url
        self.fetcher = fetcher
        self.limits: MetadataLimits = limits or FetchLimits()
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

    def clock_floor(self) -> datetime | None:
        """The fleet's signing time of the newest timestamp this device trusts (None: no floor).

        Read from the trusted metadata on disk, which only ever moves forward; never from this
        device's clock, so a clock that ran fast once leaves nothing behind.
        """
        try:
            md = Metadata[Timestamp].from_bytes((self.metadata_dir / "timestamp.json").read_bytes())
        except (OSError, ValueError, TypeError, KeyError):
            return None
        return signed_issue_time(md)

    def _check_clock(self, now: datetime) -> None:
        floor = self.clock_floor()
        if floor is None or (floor - now).total_seconds() <= CLOCK_SKEW_TOLERANCE_S:
            return
        raise UpdateVerificationError(
            f"the device clock reads {now.isoformat(timespec='seconds')}, earlier than the fleet "
            f"signed its metadata ({floor.isoformat(timespec='seconds')}): fix the clock (NTP), "
            "then retry; the running model is untouched",
            reason="clock",
            data={"device_clock": now.isoformat(), "clock_floor": floor.isoformat()},
        )

    # -- what went wrong, and what to do -------------------------------------------------------------

    def _advice(self, reason: str, now: datetime, exc: BaseException) -> UpdateVerificationError:
        """A refused repository as one line that says what is wrong and what to do."""
        where = "this export" if self.local else "the fleet server's repository"
        fix = (
            "re-export the stick with `fleet export`"
            if self.local
            else "retry; if it persists, check the server"
        )
        data = {"detail": str(exc), "device_clock": now.isoformat()}
        if reason == "signature":
            msg = (
                f"{where} is not signed by the keys in this device's root.json: the root.json belongs to "
                "another fleet (check [updates] root_json), or the files were tampered with"
            )
        elif reason == "replay":
            msg = f"{where} is older than what this device already trusts (a stale copy or a replay): " + (
                "re-export the stick from the current fleet" if self.local else "check the server"
            )
        elif reason == "expired":
            clock = now.isoformat(timespec="seconds")
            if self.local:
                msg = (
                    f"this export's signed metadata has expired (device clock reads {clock}): re-export "
                    "the stick (`fleet export --expires` for a longer-lived export), or fix the clock if "
                    "it is wrong"
                )
            else:
                msg = (
                    f"the fleet server's signed metadata looks expired (device clock reads {clock}): if "
                    "the clock is right the server has stopped re-signing; if the clock runs ahead, fix it"
                )
        elif reason in ("hash", "length"):
            msg = f"a file in {where} does not match what the fleet signed (corrupted or tampered): {fix}"
        else:
            msg = f"{where} has malformed or inconsistent signed metadata: {fix}"
        log.info("TUF refused %s: %s", where, exc)
        return UpdateVerificationError(msg, reason=reason, data=data)

    def _missing(self, what: str, exc: BaseException) -> UpdateVerificationError:
        # A local directory does not heal by waiting: no retries, say it is incomplete.
        return UpdateVerificationError(
            f"this export is incomplete ({what} is missing or unreadable): copy it again or re-export "
            "the stick with `fleet export`",
            reason="incomplete",
            data={"detail": str(exc)},
        )

    # -- workflow ----------------------------------------------------------------------------------

    @property
    def local(self) -> bool:
        """True for a local directory (USB export): nothing to retry, errors speak of the export."""
        return isinstance(self.fetcher, DirectoryFetcher)

    def _fsync_metadata(self) -> None:
        # ngclient writes with os.replace but no fsync: make the trusted state durable.
        for d in (self.metadata_dir, self.metadata_dir / "root_history"):
            if d.is_dir():
                fsync_tree(d)

    def refresh(self) -> None:
        """Run the TUF client workflow for the top-level metadata. UpdateVerificationError / FetchError."""
        now = self.now()
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
                f"cannot read the trust anchor {self.root_json}: {exc.strerror or exc} "
                "(check [updates] root_json)",
                reason="metadata",
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
            _use_clock(updater, now)
            updater.refresh()
        except tuf_exc.RepositoryError as exc:
            raise self._advice(_reason(exc), now, exc) from exc
        except tuf_exc.DownloadLengthMismatchError as exc:
            raise self._advice("length", now, exc) from exc
        except tuf_exc.DownloadError as exc:
            if self.local:
                raise self._missing("its signed metadata", exc) from exc
            raise FetchError(f"cannot download TUF metadata: {exc}") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise FetchError(f"download of TUF metadata was cut: {exc}") from exc
        except (ValueError, TypeError, KeyError) as exc:
            raise self._advice("metadata", now, exc) from exc
        finally:
            self._fsync_metadata()
        # Checked after the refresh, against the newest timestamp now trusted (fresh from the
        # fleet, or the one kept when the fleet has nothing newer): a clock far behind the
        # fleet's signing time is wrong, whatever the metadata's expiry says. Not checked before:
        # a floor the fleet set wrongly (a future issue time) is then healed by its next timestamp.
        self._check_clock(now)
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
                raise self._advice(_reason(exc), self.now(), exc) from exc
            except tuf_exc.DownloadError as exc:
                if self.local:
                    raise self._missing("its signed metadata", exc) from exc
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
            raise self._advice(_reason(exc), self.now(), exc) from exc
        except tuf_exc.DownloadLengthMismatchError as exc:
            raise self._advice("length", self.now(), exc) from exc
        except tuf_exc.DownloadHTTPError as exc:
            if self.local:
                raise self._missing(target.path, exc) from exc
            if exc.status_code in (401, 403):
                # Not a network fault: retrying with the same token cannot help.
                raise UpdateVerificationError(
                    f"the server refused this device's token for {target.path} (HTTP {exc.status_code}): "
                    "set [updates] token_file to the token from `fleet devices token DEVICE`",
                    reason="unauthorized",
                ) from exc
            raise FetchError(f"cannot download {target.path}: {exc}") from exc
        except tuf_exc.DownloadError as exc:
            if self.local:
                raise self._missing(target.path, exc) from exc
            raise FetchError(f"cannot download {target.path}: {exc}") from exc
        except urllib3.exceptions.HTTPError as exc:
            # ngclient wraps errors of the request but not of the body stream: a connection cut
            # mid-download surfaces as urllib3's ProtocolError (IncompleteRead). Transport, retry.
            raise FetchError(f"download of {target.path} was cut: {exc}") from exc
        fsync_file(path)
        return Path(path)
