"""The on-disk sample ring: samples waiting for upload, under a byte cap, surviving restarts.

Each sample is two files in one directory: ``{id}.jpg`` then ``{id}.json`` (its metadata), each
written atomically; the metadata file is written last, so its presence means the sample is
whole. A ``.jpg`` without its ``.json`` (a crash between the two writes) is removed at open.
Sample ids sort in the order they were made (:mod:`edge_agent.decision_id`), so the oldest is
the first name. Over ``max_bytes`` the oldest samples are evicted, and counted (the count is
persisted beside them). The uploader removes a sample once the fleet has stored it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from pathlib import Path

from lineside_common.atomic import atomic_write_bytes, fsync_dir

log = logging.getLogger(__name__)

_EVICTED_FILE = "evicted"
_QUOTA_FILE = "quota.json"


class SampleRing:
    """Samples on disk, oldest first; thread-safe (the encoder writes, the uploader removes)."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)
        self._sizes: dict[str, int] = {}
        self._recover()
        try:
            self.evicted_total = int((directory / _EVICTED_FILE).read_text().strip() or "0")
        except (OSError, ValueError):
            self.evicted_total = 0

    def _recover(self) -> None:
        for tmp in self.directory.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        for jpg in self.directory.glob("*.jpg"):
            meta = jpg.with_suffix(".json")
            if not meta.exists():
                log.info("removing %s: its metadata was never written (a crash mid-sample)", jpg.name)
                with contextlib.suppress(FileNotFoundError):
                    jpg.unlink()
                continue
            self._sizes[jpg.stem] = jpg.stat().st_size + meta.stat().st_size
        for meta in self.directory.glob("*.json"):
            if meta.name != _QUOTA_FILE and meta.stem not in self._sizes:
                with contextlib.suppress(FileNotFoundError):
                    meta.unlink()

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    def __len__(self) -> int:
        return len(self._sizes)

    def put(self, sample_id: str, jpeg: bytes, meta: bytes) -> int:
        """Store one sample durably; evict the oldest while over the cap. Returns how many were evicted."""
        atomic_write_bytes(self.directory / f"{sample_id}.jpg", jpeg)
        atomic_write_bytes(self.directory / f"{sample_id}.json", meta)
        evicted = 0
        with self._lock:
            self._sizes[sample_id] = len(jpeg) + len(meta)
            while self.total_bytes > self.max_bytes and len(self._sizes) > 1:
                oldest = min(self._sizes)
                self._unlink(oldest)
                evicted += 1
            if evicted:
                self.evicted_total += evicted
                atomic_write_bytes(self.directory / _EVICTED_FILE, f"{self.evicted_total}\n".encode())
        if evicted:
            log.warning("sample ring over %d bytes: evicted the %d oldest", self.max_bytes, evicted)
        return evicted

    def pending(self) -> list[str]:
        """Sample ids waiting, oldest first."""
        with self._lock:
            return sorted(self._sizes)

    def load(self, sample_id: str) -> tuple[bytes, bytes] | None:
        """``(metadata, jpeg)``, or None when it was evicted meanwhile."""
        try:
            meta = (self.directory / f"{sample_id}.json").read_bytes()
            jpeg = (self.directory / f"{sample_id}.jpg").read_bytes()
        except FileNotFoundError:
            return None
        return meta, jpeg

    def remove(self, sample_id: str) -> None:
        """Forget a sample (uploaded, or refused for good)."""
        with self._lock:
            self._unlink(sample_id)
        fsync_dir(self.directory)

    def _unlink(self, sample_id: str) -> None:
        self._sizes.pop(sample_id, None)
        # The metadata first: without it the sample no longer counts as whole.
        for suffix in (".json", ".jpg"):
            with contextlib.suppress(FileNotFoundError):
                (self.directory / f"{sample_id}{suffix}").unlink()

    def save_quota(self, state: dict[str, object]) -> None:
        """Persist the sampler's quota levels (they must hold across restarts)."""
        atomic_write_bytes(self.directory / _QUOTA_FILE, json.dumps(state).encode())

    def load_quota(self) -> dict[str, object]:
        try:
            raw = json.loads((self.directory / _QUOTA_FILE).read_bytes())
        except (OSError, ValueError):
            return {}
        return raw if isinstance(raw, dict) else {}
