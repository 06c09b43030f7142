"""A second model running beside the serving one on a share of live frames, never acting.

Two uses, one mechanism:

- a **shadow deploy** (``deploy`` with ``mode: shadow``, ``edge-agent install --shadow``): the
  candidate is verified and staged like an install and runs as ``role="candidate"``; the serving
  model is the baseline;
- probation's **reverse shadow**: after a swap the previous model keeps running as
  ``role="baseline"``, so the new model is judged against the answers it replaced.

The serving decision is never delayed: the inference thread only offers a frame (a counter and
a non-blocking put into a queue of one); the shadow model runs on its own thread. It takes every
``every_n``-th frame, and skips frames while its own CPU time exceeds ``max_cpu_share`` of the
wall time (both counted as ``skipped``). Each telemetry window takes the counts accumulated since
the last (:meth:`ShadowRunner.take_block`).

When the two models disagree on a frame (:meth:`AgreementTally.disagrees`: labels both know,
different, not an intended change) and a ``sampler`` is attached, the shadow thread hands that
frame to :meth:`FrameSampler.offer_disagreement` (non-blocking) with reason
``shadow_disagreement``. The queued item keeps the :class:`~edge_agent.frames.Frame`, so a frame
decoded at reduced scale is still sampled from its original JPEG.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from edge_agent.agreement import AgreementTally
from edge_agent.decode import COLOR, accepts, decode_jpeg
from edge_agent.sampling import SampleDecision, ShadowOutput

log = logging.getLogger(__name__)

Role = Literal["candidate", "baseline"]


class ShadowRunner:
    """Runs ``runner`` on offered frames on its own thread and tallies agreement with the serving model.

    ``serving`` is the serving model's runner (labels, sha256); ``intended_changes`` and
    ``confident`` come from the candidate's manifest and the drift thresholds.
    ``on_close`` runs after the runner is closed (e.g. deleting a staged shadow bundle).
    ``sampler`` (a :class:`~edge_agent.sampling.FrameSampler`, or None) receives the frames the
    two models disagree on.
    """

    def __init__(
        self,
        runner: Any,
        serving: Any,
        *,
        role: Role,
        every_n: int = 3,
        max_cpu_share: float = 0.25,
        nice: int = 10,
        confident: float = 0.7,
        on_close: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        sampler: Any = None,
    ) -> None:
        self.runner = runner
        self.sampler = sampler
        self.serving_ref = serving.model_ref()
        self.shadow_ref = runner.model_ref()
        self.role: Role = role
        self.serving_sha256 = serving.sha256
        self.every_n = max(1, every_n)
        self.max_cpu_share = max_cpu_share
        self.nice = nice
        self._serving_labels = list(serving.manifest.labels)
        shadow_labels = list(runner.manifest.labels)
        candidate = runner if role == "candidate" else serving
        baseline = serving if role == "candidate" else runner
        self.candidate_ref = candidate.model_ref()
        self.baseline_ref = baseline.model_ref()
        self._tally = AgreementTally(
            baseline.manifest.labels,
            candidate.manifest.labels,
            confident=confident,
            intended_changes=candidate.manifest.agreement.intended_changes,
        )
        self._shadow_labels = shadow_labels
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[Any, Any, str, bytes | None, Any, str | None] | None] = queue.Queue(
            maxsize=1
        )
        self._validated = list(getattr(getattr(runner.manifest, "input", None), "validated_decodes", [COLOR]))
        self._offered = 0
        self._skipped = 0
        self._busy_s = 0.0
        self.ran_total = 0  # frames the shadow model ran on since it started (all windows)
        self._clock = clock
        self._started = clock()
        self._on_close = on_close
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"shadow-{role}", daemon=True)
        self._thread.start()

    # -- the inference thread (hot path: no locks, no allocation beyond the tuple)
    def offer(
        self,
        serving_sha256: str,
        image: Any,
        pred: Any,
        *,
        decode: str = COLOR,
        encoded: bytes | None = None,
        frame: Any = None,
        decision_id: str | None = None,
    ) -> None:
        """A frame the serving model (``serving_sha256``) just decided; maybe queue it for the shadow.

        ``decode`` names how ``image`` was decoded; when the shadow model was not validated on it,
        the shadow thread decodes ``encoded`` again in full colour (off the serving path).
        ``frame`` and ``decision_id`` (the camera's frame and the serving decision's id) let a
        disagreement become a sample; without them none is offered.
        """
        if self._closed or serving_sha256 != self.serving_sha256:
            return  # a frame from before/after the swap this shadow was built for
        self._offered += 1
        if self._offered % self.every_n:
            self._skipped += 1
            return
        elapsed = self._clock() - self._started
        if elapsed > 1.0 and self._busy_s > self.max_cpu_share * elapsed:
            self._skipped += 1
            return
        try:
            self._queue.put_nowait((image, pred, decode, encoded, frame, decision_id))
        except queue.Full:
            self._skipped += 1

    # -- the shadow thread
    def _loop(self) -> None:
        if self.nice:
            # On a busy CPU the kernel must prefer the inference thread: the shadow yields (Linux
            # threads have their own nice value; elsewhere this is a no-op).
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
            except (OSError, AttributeError) as exc:
                log.info("could not lower the shadow thread's priority: %s", exc)
        while True:
            item = self._queue.get()
            if item is None or self._closed:
                return
            image, served, decode, encoded, frame, decision_id = item
            t0 = self._clock()
            try:
                if not accepts(self._validated, decode):
                    image = decode_jpeg(encoded, COLOR) if encoded is not None else None
                    if image is None:
                        raise ValueError("no full-colour decode of this frame for the shadow model")
                shadow = self.runner.predict(image)
            except Exception:
                with self._lock:
                    self._tally.add_error()
                continue
            finally:
                self._busy_s += self._clock() - t0
                self.ran_total += 1
            s_label = self._serving_labels[served.label_index]
            h_label = self._shadow_labels[shadow.label_index]
            with self._lock:
                if self.role == "candidate":
                    self._tally.add(
                        s_label,
                        served.confidence,
                        served.dimensions_mm,
                        h_label,
                        shadow.confidence,
                        shadow.dimensions_mm,
                        shadow.finite,
                    )
                elif shadow.finite and served.finite:
                    self._tally.add(
                        h_label,
                        shadow.confidence,
                        shadow.dimensions_mm,
                        s_label,
                        served.confidence,
                        served.dimensions_mm,
                        True,
                    )
            if self.sampler is not None and frame is not None and decision_id is not None:
                self._offer_sample(frame, decision_id, served, s_label, shadow, h_label)

    def _offer_sample(
        self, frame: Any, decision_id: str, served: Any, s_label: str, shadow: Any, h_label: str
    ) -> None:
        """Offer a frame the two models disagree on to the sampler (never blocks this thread)."""
        if not (served.finite and shadow.finite):
            return
        b, c = (s_label, h_label) if self.role == "candidate" else (h_label, s_label)
        if not self._tally.disagrees(b, c):
            return
        try:
            self.sampler.offer_disagreement(
                frame,
                SampleDecision(
                    decision_id, s_label, served.confidence, served.probabilities, served.dimensions_mm
                ),
                model=self.serving_ref,
                shadow=ShadowOutput(self.shadow_ref, h_label, shadow.confidence, shadow.probabilities),
            )
        except Exception:
            log.exception("could not offer a shadow disagreement to the sampler")

    # -- the telemetry thread
    def take_block(self) -> dict[str, Any]:
        """This window's shadow block (see :class:`edge_agent.messages.ShadowBlock`); starts the next."""
        skipped, self._skipped = self._skipped, 0
        with self._lock:
            self._tally.add_skipped(skipped)
            block = self._tally.block(self.role)
            self._tally.reset()
        block["candidate"] = self.candidate_ref.model_dump()
        block["baseline"] = self.baseline_ref.model_dump()
        block["shadow_cpu_s"] = round(self._busy_s, 4)  # since the shadow started
        block["shadow_frames_total"] = self.ran_total
        return block

    def close(self) -> None:
        """Stop the thread, close the shadow runner, run ``on_close``. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(queue.Empty):
            self._queue.get_nowait()
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=1.0)
        self._thread.join(timeout=10)
        with contextlib.suppress(Exception):
            self.runner.close()
        if self._on_close is not None:
            try:
                self._on_close()
            except Exception:
                log.exception("cleaning up after the shadow failed")
