"""The sampler's shell: ``offer`` on the inference thread, JPEG encoding and disk writes on a worker.

The inference thread calls :meth:`FrameSampler.offer` for every decision. It asks the pure
policy (:mod:`edge_agent.sampler`) and, for a frame it takes, puts a reference to the frame and
its metadata into a bounded queue — never blocking: a full queue drops the sample and counts it.
A worker thread at the lowest priority resizes, encodes the JPEG, writes it to the
:class:`~edge_agent.sample_ring.SampleRing` and wakes the uploader.

Operator ``capture`` requests arrive on another thread, and so do the shadow thread's
disagreements (:meth:`FrameSampler.offer_disagreement`); both cross into the inference thread's
policy through queues that ``offer`` drains, so the policy has one owner.

Size: the sampler's shell (offer on the inference thread, the JPEG worker, attaching to the
agent, per-release overrides); the decisions live in edge_agent/sampler.py, the ring in
sample_ring.py and the upload in uploader.py.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np

from edge_agent.config import SamplesConfig
from edge_agent.decode import COLOR, decode_jpeg
from edge_agent.frames import Frame
from edge_agent.manifest import Manifest
from edge_agent.messages import ModelRef, SamplingOverride
from edge_agent.sample_ring import SampleRing
from edge_agent.sampler import Limits, Quotas, Reason, SamplingPolicy, SamplingRules
from edge_agent.uploader import SampleUploader
from lineside_common.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

SAMPLE_FORMAT = 1


@dataclass(frozen=True, slots=True)
class SampleDecision:
    """What the sampler needs of one decision."""

    decision_id: str
    label: str
    confidence: float
    probabilities: Any  # np.ndarray of the model's class probabilities, or None
    dimensions_mm: tuple[float, float] | None


@dataclass(frozen=True, slots=True)
class ShadowOutput:
    """The shadow model's view of the same frame (issue 15's runner provides it)."""

    model: ModelRef
    label: str
    confidence: float
    probabilities: Any = None


def policy_for(
    cfg: SamplesConfig, manifest: Manifest | None, rollout: SamplingOverride | None = None
) -> SamplingPolicy:
    """The policy, each setting from the first layer that has it: the agent's config (set
    explicitly), the rollout's overrides, the manifest's sampling defaults, then the built-ins
    (for the quotas: the config's defaults). The plant engineer's file on the robot has the last word.
    """
    defaults = getattr(manifest, "sampling", None) if manifest is not None else None
    low_threshold = manifest.drift.low_confidence if manifest is not None else 0.5
    explicit = cfg.model_fields_set

    def pick(name: str, builtin: Any) -> Any:
        value = getattr(cfg, name) if name in explicit else None
        if value is None and rollout is not None:
            value = getattr(rollout, name, None)
        if value is None and defaults is not None:
            value = getattr(defaults, name, None)
        return builtin if value is None else value

    def quota(name: str) -> int | None:
        if name not in explicit and rollout is not None and getattr(rollout, name) is not None:
            return int(getattr(rollout, name))
        return cast("int | None", getattr(cfg, name))

    low_min = pick("low_confidence_min", 0.0)
    low_max = pick("low_confidence_max", low_threshold)
    band = (float(low_min), float(low_max)) if low_max > low_min else None
    rules = SamplingRules(
        low_confidence_band=band,
        random_share=float(pick("random_share", 0.0)),
        drift_share=float(pick("drift_share", 0.0)),
        shadow_disagreement=cfg.shadow_disagreement,
    )
    quotas = Quotas(
        Limits(quota("per_minute"), quota("per_hour"), quota("per_day")),
        Limits(cfg.per_label_per_minute, cfg.per_label_per_hour, cfg.per_label_per_day),
    )
    return SamplingPolicy(rules, quotas)


_MAX_ROLLOUTS = 8


def _load_rollouts(path: Path | None) -> dict[str, SamplingOverride]:
    """The persisted per-rollout overrides; a missing or unreadable file is none (logged)."""
    if path is None or not path.exists():
        return {}
    try:
        raw = json.loads(path.read_bytes())
        return {str(k): SamplingOverride.model_validate(v) for k, v in dict(raw).items()}
    except (OSError, ValueError, TypeError) as exc:
        log.warning("ignoring the rollouts' sampling overrides in %s: %s", path, exc)
        return {}


class FrameSampler:
    """Takes frames as the policy and quotas allow, encodes and stores them off the serving path."""

    def __init__(
        self,
        cfg: SamplesConfig,
        ring: SampleRing,
        policy: SamplingPolicy,
        *,
        device_id: str,
        crop: Any = None,
        wall: Callable[[], float] = time.time,
        on_stored: Callable[[], None] | None = None,
        manifest_of: Callable[[], Manifest | None] | None = None,
        rollouts_file: Path | None = None,
    ) -> None:
        if not cfg.capture:
            raise ValueError("capture = false: no sampler may exist")
        self.cfg = cfg
        self.ring = ring
        self.policy = policy
        self.device_id = device_id
        self.crop = crop
        self.wall = wall
        self.on_stored = on_stored
        self.uploader: SampleUploader | None = None
        # Per-rollout overrides by NAME@VERSION; with ``manifest_of`` (the serving model's manifest)
        # the policy is rebuilt on the inference thread whenever the serving model or they change.
        self.manifest_of = manifest_of
        self.rollouts_file = rollouts_file
        self._rollouts_lock = threading.Lock()
        self._rollouts: dict[str, SamplingOverride] = _load_rollouts(rollouts_file)
        self._rollouts_generation = 0
        self._policy_key: tuple[str, str, int] | None = None
        # Decisions taken lately: the shadow thread reports a frame after the inference thread
        # judged it, and a frame is one sample (its id is the decision's), never two.
        self._recent: collections.deque[str] = collections.deque(maxlen=64)
        self.drifting = False  # set by the telemetry thread; read here (a bool: racy reads are fine)
        policy.quotas.restore(ring.load_quota())
        self._rng = random.Random(cfg.seed)
        self._requests: queue.SimpleQueue[tuple[int, bool]] = queue.SimpleQueue()
        # Bounded: the shadow thread runs one frame at a time, and the inference thread drains
        # this on every frame; a full queue (no frames flowing) drops the newest, counted.
        self._disagreements: queue.Queue[tuple[Frame, SampleDecision, ModelRef, ShadowOutput]] = queue.Queue(
            maxsize=8
        )
        self._work: queue.Queue[tuple[np.ndarray | bytes | None, dict[str, Any], dict[str, Any]] | None] = (
            queue.Queue(maxsize=cfg.queue_size)
        )
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self.offered = 0
        self.taken = 0
        self.dropped = 0
        self.stored = 0
        self.failed = 0

    # -- any thread
    def request(self, count: int, *, low_confidence: bool) -> None:
        """An operator's ``capture``: the next ``count`` frames (low-confidence ones only, if asked)."""
        self._requests.put((count, low_confidence))

    def set_rollout_sampling(self, name: str, version: str, sampling: SamplingOverride | None) -> None:
        """A deploy of ``name@version`` carried these overrides (None: none); kept across restarts.

        They apply while that release serves: from the next frame it decides.
        """
        ref = f"{name}@{version}"
        with self._rollouts_lock:
            if sampling is None:
                changed = self._rollouts.pop(ref, None) is not None
            else:
                changed = self._rollouts.get(ref) != sampling
                self._rollouts.pop(ref, None)
                self._rollouts[ref] = sampling
                while len(self._rollouts) > _MAX_ROLLOUTS:  # bounded: the oldest deploys go first
                    del self._rollouts[next(iter(self._rollouts))]
            if not changed:
                return
            if self.rollouts_file is not None:
                doc = {k: v.model_dump(exclude_none=True) for k, v in self._rollouts.items()}
                atomic_write_bytes(self.rollouts_file, json.dumps(doc, sort_keys=True).encode())
            self._rollouts_generation += 1

    def rollout_sampling(self, name: str, version: str) -> SamplingOverride | None:
        """The overrides a rollout gave ``name@version``, if any."""
        with self._rollouts_lock:
            return self._rollouts.get(f"{name}@{version}")

    def _refresh_policy(self, model: ModelRef) -> None:
        # The inference thread: the one owner of the policy. Quota levels and pending capture
        # requests carry over; only the rules and the limits change.
        key = (model.name, model.version, self._rollouts_generation)
        if key == self._policy_key or self.manifest_of is None:
            return
        self._policy_key = key
        old = self.policy
        new = policy_for(self.cfg, self.manifest_of(), self.rollout_sampling(model.name, model.version))
        new.quotas.restore(old.quotas.state())
        new.pending_any, new.pending_low_confidence = old.pending_any, old.pending_low_confidence
        new.refused_by_quota = old.refused_by_quota
        self.policy = new

    def offer_disagreement(
        self, frame: Frame, decision: SampleDecision, *, model: ModelRef, shadow: ShadowOutput
    ) -> bool:
        """The shadow thread's frame that the two models disagree on (never blocks; any thread).

        It is judged on the inference thread's next ``offer`` with reason ``shadow_disagreement``
        (when ``[samples] shadow_disagreement`` is on), under the same quotas. False: dropped.
        """
        if not self.policy.rules.shadow_disagreement:
            return False
        try:
            self._disagreements.put_nowait((frame, decision, model, shadow))
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def _drain_disagreements(self) -> None:
        while True:
            try:
                frame, decision, model, shadow = self._disagreements.get_nowait()
            except queue.Empty:
                return
            if decision.decision_id in self._recent:
                continue  # already a sample (another strategy took it): one sample per decision
            self._consider(frame, decision, model=model, reason="shadow_disagreement", shadow=shadow)

    def start(self) -> None:
        self._thread.start()
        if self.uploader is not None:
            self.uploader.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the queued samples, then stop the worker (and the uploader)."""
        self._drain_disagreements()  # the inference thread has stopped: no other owner now
        if self._thread.is_alive():
            try:
                self._work.put(None, timeout=timeout)
                self._thread.join(timeout)
            except queue.Full:
                log.warning("sampler queue still full at stop; its samples are lost")
        if self.uploader is not None:
            self.uploader.stop()

    def counters(self) -> dict[str, int | None]:
        up = self.uploader.counters() if self.uploader is not None else {}
        return {
            **up,
            "taken": self.taken,
            "dropped": self.dropped,
            "stored": self.stored,
            "failed": self.failed,
            "refused_by_quota": self.policy.refused_by_quota,
            "ring": len(self.ring),
            "ring_bytes": self.ring.total_bytes,
            "evicted": self.ring.evicted_total,
        }

    # -- the inference thread
    def offer(
        self,
        frame: Frame,
        decision: SampleDecision,
        *,
        model: ModelRef,
        reason: Reason | None = None,
        shadow: ShadowOutput | None = None,
    ) -> bool:
        """Maybe take this frame (never blocks). ``reason`` forces a strategy's wish (still under quotas)."""
        self._refresh_policy(model)
        while not self._requests.empty():
            count, low = self._requests.get_nowait()
            self.policy.request(count, low_confidence=low)
        if not self._disagreements.empty():
            self._drain_disagreements()
        return self._consider(frame, decision, model=model, reason=reason, shadow=shadow)

    def _consider(
        self,
        frame: Frame,
        decision: SampleDecision,
        *,
        model: ModelRef,
        reason: Reason | None,
        shadow: ShadowOutput | None,
    ) -> bool:
        self.offered += 1
        now = self.wall()
        disagrees = None if shadow is None else shadow.label != decision.label
        if reason is None:
            taken = self.policy.decide(
                now=now,
                label=decision.label,
                confidence=decision.confidence,
                drifting=self.drifting,
                u=self._rng.random(),
                shadow_disagrees=disagrees,
            )
        else:
            taken = reason if self.policy.quotas.try_take(decision.label, now) else None
        if taken is None:
            return False
        self.taken += 1
        self._recent.append(decision.decision_id)
        probs = decision.probabilities
        meta: dict[str, Any] = {
            "format": SAMPLE_FORMAT,
            "sample_id": decision.decision_id,
            "decision_id": decision.decision_id,
            "device_id": self.device_id,
            "taken_at": now,
            "reason": taken,
            "model": {"name": model.name, "version": model.version, "sha256": model.sha256},
            "label": decision.label,
            "confidence": decision.confidence,
            "probabilities": None if probs is None else [round(float(p), 6) for p in probs],
            "dimensions_mm": None if decision.dimensions_mm is None else list(decision.dimensions_mm),
            "shadow": None
            if shadow is None
            else {
                "model": {"name": shadow.model.name, "version": shadow.model.version},
                "label": shadow.label,
                "confidence": shadow.confidence,
                "probabilities": None
                if shadow.probabilities is None
                else [round(float(p), 6) for p in shadow.probabilities],
            },
        }
        try:
            # A frame decoded at reduced scale for the model (edge_agent.decode) is not the camera's
            # frame: the worker decodes the original JPEG again in full colour, off the serving path.
            full = (
                frame.image if getattr(frame, "decode", COLOR) == COLOR else getattr(frame, "encoded", None)
            )
            self._work.put_nowait((full, meta, self.policy.quotas.state()))
        except queue.Full:
            self.dropped += 1
            return False
        return True

    # -- the worker
    def _run(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (OSError, AttributeError) as exc:
            log.info("could not lower the sampler's priority: %s", exc)
        while True:
            item = self._work.get()
            if item is None:
                return
            image, meta, quota = item
            try:
                if isinstance(image, bytes | bytearray):
                    image = decode_jpeg(image, COLOR)
                if image is None:
                    raise ValueError("no full-colour image of this frame")
                self._store(image, meta, quota)
            except Exception:
                self.failed += 1
                log.exception("could not store sample %s", meta.get("sample_id"))

    def _store(self, image: np.ndarray, meta: dict[str, Any], quota: dict[str, Any]) -> None:
        h, w = image.shape[:2]
        scale = min(1.0, self.cfg.max_side_px / max(h, w))
        if scale < 1.0:
            image = cv2.resize(
                image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
            )
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        jpeg = buf.tobytes()
        meta["image"] = {
            "width": image.shape[1],
            "height": image.shape[0],
            "camera_width": w,
            "camera_height": h,
            "scale": scale,
            "jpeg_quality": self.cfg.jpeg_quality,
            # The frame as the camera gave it; the model saw this crop of it (None: the whole frame).
            "crop": self.crop,
        }
        self.ring.put(meta["sample_id"], jpeg, json.dumps(meta, separators=(",", ":")).encode())
        self.ring.save_quota(quota)
        self.stored += 1
        if self.on_stored is not None:
            self.on_stored()


def attach_to_agent(agent: Any) -> FrameSampler | None:
    """Give ``agent`` its sampler and uploader from its config, and answer ``capture`` commands.

    With ``[samples] capture = false`` nothing is built: no sampler, no uploader, and every
    ``capture`` command is rejected with reason ``capture_disabled``. Without a fleet server to
    send samples to (``[samples] server_url`` or ``[updates] repository_url``) nothing is sampled
    either, and ``capture`` is rejected with reason ``no_destination``.
    """
    config = agent.config
    cfg: SamplesConfig = config.samples
    sampler: FrameSampler | None = None
    updates = config.updates
    server = cfg.server_url or (updates.repository_url if updates is not None else None)
    token_file = cfg.token_file or (updates.token_file if updates is not None else None)
    if cfg.capture and server is None:
        # Nowhere to send them: keeping camera frames on disk for nobody is a privacy cost only.
        log.info("no sampling: no [samples] server_url or [updates] repository_url to send samples to")
    if cfg.capture and server is not None:
        manifest = agent.runner.manifest
        ring = SampleRing(config.state_dir / "samples", cfg.ring_max_bytes)
        roi = manifest.input.roi
        sampler = FrameSampler(
            cfg,
            ring,
            policy_for(cfg, manifest),
            device_id=config.device_id,
            crop=None if roi is None else roi.model_dump(),
            manifest_of=lambda: agent.runner.manifest,
            rollouts_file=config.state_dir / "sampling-rollouts.json",
        )
        uploader = SampleUploader(
            ring,
            server_url=server,
            device_id=config.device_id,
            token_file=token_file,
            max_bytes_per_s=cfg.upload_max_bytes_per_s,
            backoff_s=cfg.upload_backoff_s,
            backoff_max_s=cfg.upload_backoff_max_s,
            timeout_s=cfg.upload_timeout_s,
            seed=cfg.seed,
        )
        sampler.uploader = uploader
        sampler.on_stored = uploader.notify
        agent.sampler = sampler

    def on_capture(cmd: Any) -> None:
        if not cfg.capture or sampler is None:
            disabled = not cfg.capture
            agent.emit_event(
                "command.rejected",
                level="warning",
                cmd_id=cmd.cmd_id,
                message="capture is disabled on this device ([samples] capture = false)"
                if disabled
                else "this device has no fleet server to send samples to",
                data={"type": "capture", "reason": "capture_disabled" if disabled else "no_destination"},
            )
            return
        sampler.request(cmd.count, low_confidence=cmd.low_confidence)
        agent.emit_event(
            "capture",
            cmd_id=cmd.cmd_id,
            message=f"capturing the next {cmd.count} {'low-confidence ' if cmd.low_confidence else ''}frames",
            data={"count": cmd.count, "low_confidence": cmd.low_confidence},
        )

    agent.set_command_handler("capture", on_capture)
    return sampler
