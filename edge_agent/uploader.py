"""The sample uploader: the ring's samples to the fleet server, in the background, at a capped rate.

One thread at the lowest priority. Oldest first, each sample is one ``PUT
/api/v1/devices/{device}/samples/{sample_id}`` (body: the metadata JSON on one line, ``\\n``, the
JPEG) with the device's own token. The server stores a sample once however often it is sent, so
a sample is removed from the ring only after a 2xx, and a cut upload is simply sent again
(samples are small: the unit of resumption is the sample). A bytes-per-second token bucket
caps the bandwidth. While the server is down or refuses the credential, the uploader backs off
with jitter (capped) and keeps everything. A 400/413/422 can never succeed: that sample is
dropped and counted, so it cannot block those behind it.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import urllib3

from edge_agent.sample_ring import SampleRing
from edge_agent.sampler import TokenBucket
from lineside_common.retry import Backoff

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/x-lineside-sample"
_PERMANENT = frozenset({400, 413, 415, 422})


class Transport(Protocol):
    """Sends one upload; returns the HTTP status, or raises OSError/urllib3 errors when it cannot."""

    def put(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int: ...


class Urllib3Transport:
    """The real transport (urllib3 ships with the agent already, for TUF)."""

    def __init__(self) -> None:
        self._http = urllib3.PoolManager(retries=False)

    def put(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
        r = self._http.request(
            "PUT", url, body=body, headers=headers, timeout=timeout_s, preload_content=True
        )
        return int(r.status)


class SampleUploader:
    """Drains a :class:`SampleRing` to the fleet server; see the module docstring."""

    def __init__(
        self,
        ring: SampleRing,
        *,
        server_url: str,
        device_id: str,
        token_file: Path | None,
        max_bytes_per_s: int,
        backoff_s: float = 1.0,
        backoff_max_s: float = 60.0,
        timeout_s: float = 15.0,
        transport: Transport | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        seed: int | None = None,
    ) -> None:
        self.ring = ring
        self.base = server_url.rstrip("/") + f"/api/v1/devices/{device_id}/samples/"
        self.token_file = token_file
        self.bucket = TokenBucket(float(max_bytes_per_s), 1.0)
        self.timeout_s = timeout_s
        self.transport: Transport = transport or Urllib3Transport()
        self.monotonic = monotonic
        self._rng = random.Random(seed)
        # Its count is the consecutive failures: one delay is drawn per failed drain, a 2xx resets.
        self.backoff = Backoff(backoff_s, backoff_max_s, rng=self._rng.random)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="uploader", daemon=True)
        self.uploaded = 0
        self.refused = 0
        self.attempts = 0
        self.last_status: int | None = None

    def notify(self) -> None:
        """A new sample is in the ring (any thread)."""
        self._wake.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def counters(self) -> dict[str, int | None]:
        return {
            "uploaded": self.uploaded,
            "refused": self.refused,
            "attempts": self.attempts,
            "last_status": self.last_status,
        }

    def _run(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (OSError, AttributeError) as exc:
            log.info("could not lower the uploader's priority: %s", exc)
        while not self._stop.is_set():
            self._wake.clear()
            if not self.drain_once():
                self._stop.wait(self.backoff.next_delay())
                continue
            self._wake.wait(5.0)

    def drain_once(self) -> bool:
        """Upload what the ring holds, oldest first; False after a failure that calls for backing off."""
        for sample_id in self.ring.pending():
            if self._stop.is_set():
                return True
            if not self._send(sample_id):
                return False
        return True

    def _token(self) -> str | None:
        if self.token_file is None:
            return None
        try:
            return self.token_file.read_text().strip() or None
        except OSError as exc:
            log.warning("cannot read the device token %s: %s", self.token_file, exc.strerror)
            return None

    def _send(self, sample_id: str) -> bool:
        loaded = self.ring.load(sample_id)
        if loaded is None:
            return True  # evicted meanwhile
        meta, jpeg = loaded
        body = meta + b"\n" + jpeg
        wait = self.bucket.wait_s(self.monotonic(), len(body))
        if wait > 0 and self._stop.wait(wait):
            return True
        # After the wait the tokens are there (to rounding, which is why this does not loop).
        self.bucket.take(self.monotonic(), len(body))
        headers = {"Content-Type": CONTENT_TYPE}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.attempts += 1
        try:
            status = self.transport.put(self.base + sample_id, body, headers, self.timeout_s)
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            log.info("sample upload failed (%s); backing off", type(exc).__name__)
            return False
        self.last_status = status
        if 200 <= status < 300:
            self.ring.remove(sample_id)
            self.uploaded += 1
            self.backoff.reset()
            return True
        if status in _PERMANENT:
            log.warning("the fleet refused sample %s for good (HTTP %d); dropping it", sample_id, status)
            self.ring.remove(sample_id)
            self.refused += 1
            return True
        log.info("sample upload answered HTTP %d; backing off", status)
        return False
