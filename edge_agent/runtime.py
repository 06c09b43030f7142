"""The inference runtime: one model bundle loaded into ONNX Runtime, warmed up, ready to serve.

``ModelRunner.load`` picks the execution provider, applies the session
options from config, checks that the manifest matches the model's inputs and
outputs, and warms up before returning. The candidates are the configured (or
default) preference filtered by what this onnxruntime build has. With more than
one candidate and no pin, each is loaded, its self-test is timed, and the
fastest one that passes serves (:func:`choose_provider`): a preference list
says what may serve, a measurement says what is fastest on this device. A
provider that fails to initialise or fails its self-test is skipped with an
``on_fallback(provider, reason)`` call.

:func:`runtime_builds` names the onnxruntime distributions installed: the
builds (``onnxruntime``, ``onnxruntime-gpu``, ``onnxruntime-openvino``, ...)
install the same ``onnxruntime`` module, so two at once means one silently
overwrote the other's files.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edge_agent.config import DEFAULT_PROVIDER_PREFERENCE, InferenceConfig
from edge_agent.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, parse_manifest
from edge_agent.messages import ModelRef
from edge_agent.preprocess import Postprocessor, Prediction, Preprocessor
from edge_agent.selftest import run_selftest
from lineside_common.errors import ManifestError, ModelLoadError, ProviderError, SelftestError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"


def provider_candidates(inference: InferenceConfig, available: list[str]) -> list[str]:
    """The providers to try, in order: the preference filtered by ``available``; CPU always last."""
    preference = inference.providers or list(DEFAULT_PROVIDER_PREFERENCE)
    out = [p for p in preference if p in available and p != CPU]
    if CPU in preference or not out:
        out.append(CPU)
    return out


@dataclass(frozen=True)
class RuntimeBuild:
    """The onnxruntime builds installed in this environment (``name==version`` each).

    ``serving`` is the one whose module is imported (by its version); ``conflict``
    is true when more than one build is installed at once.
    """

    installed: tuple[str, ...]
    serving: str

    @property
    def conflict(self) -> bool:
        """Two builds share the ``onnxruntime`` module: whichever installed last won, files mixed."""
        return len(self.installed) > 1


def _installs_onnxruntime_module(dist: metadata.Distribution) -> bool:
    files = dist.files or []
    return any(str(f).replace("\\", "/") == "onnxruntime/__init__.py" for f in files)


def runtime_builds() -> RuntimeBuild:
    """Which onnxruntime distributions are installed here, and which one serves."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        # Cheap filter first (every build is named onnxruntime-*, ort-nightly*), then the files.
        if not (name.startswith("onnxruntime") or name.startswith("ort-")):
            continue
        if _installs_onnxruntime_module(dist):
            found[name] = dist.version
    installed = tuple(f"{n}=={v}" for n, v in sorted(found.items()))
    return RuntimeBuild(installed=installed, serving=serving_build(installed, ort.__version__))


def serving_build(installed: tuple[str, ...], module_version: str) -> str:
    """The build whose version matches the imported module's (the first such); the module's version else."""
    for item in installed:
        if item.split("==", 1)[1] == module_version:
            return item
    return f"onnxruntime=={module_version}"


@dataclass
class ProviderTrial:
    """One candidate's outcome when choosing by measurement: self-test time or why it cannot serve."""

    provider: str
    selftest_ms: float | None = None
    failed: str | None = None


@dataclass
class ProviderChoice:
    """What ``ModelRunner.load`` decided: the serving provider and every candidate's timing (ms)."""

    provider: str
    measured: bool
    timings_ms: dict[str, float] = field(default_factory=dict)


def choose_provider(trials: list[ProviderTrial]) -> str | None:
    """The fastest candidate whose self-test passed; ties go to the earlier (preferred) one."""
    best: ProviderTrial | None = None
    for t in trials:
        if t.failed is not None or t.selftest_ms is None:
            continue
        if best is None or best.selftest_ms is None or t.selftest_ms < best.selftest_ms:
            best = t
    return best.provider if best is not None else None


def is_pinned(inference: InferenceConfig, candidates: list[str]) -> bool:
    """A pin serves without timing: ``pin_provider = true`` or a single candidate."""
    return inference.pin_provider or len(candidates) <= 1


def provider_options(name: str, inference: InferenceConfig) -> dict[str, Any]:
    """Options ONNX Runtime takes for provider ``name``: device id, TensorRT cache, FP16, extras."""
    opts: dict[str, Any] = {}
    if name in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        opts["device_id"] = inference.device_id
    if name == "TensorrtExecutionProvider":
        if inference.trt_engine_cache_dir is not None:
            opts["trt_engine_cache_enable"] = True
            opts["trt_engine_cache_path"] = str(inference.trt_engine_cache_dir)
        if inference.fp16:
            opts["trt_fp16_enable"] = True
    if name == "OpenVINOExecutionProvider":
        if inference.fp16:
            opts["precision"] = "FP16"
        if inference.intra_op_num_threads > 0:
            # OpenVINO keeps its own thread pool, deaf to intra_op_num_threads: without this it ran
            # 2 threads here and cost 0.26 ms CPU per call against 0.14 ms with 1 (BENCHMARKS.md).
            opts["num_of_threads"] = str(inference.intra_op_num_threads)
    opts.update(inference.provider_options.get(name, {}))
    return opts


def session_options(inference: InferenceConfig) -> ort.SessionOptions:
    """Threads and spinning from config (1 thread, no spinning: right for a daemon at camera rate)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = inference.intra_op_num_threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if inference.allow_spinning else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1" if inference.allow_spinning else "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


class ModelRunner:
    """A loaded, warmed-up bundle: ``predict(frame) -> Prediction``.

    Attributes: ``manifest``, ``bundle_dir``, ``provider`` (the execution
    provider that serves), ``output_names`` (the order of ``run_tensor``'s
    outputs), ``sha256`` (of manifest.json's bytes), ``choice`` (how the
    provider was chosen, with the self-test timings when measured).
    """

    manifest: Manifest
    bundle_dir: Path
    provider: str
    output_names: list[str]
    sha256: str
    choice: ProviderChoice

    def __init__(
        self,
        *,
        manifest: Manifest,
        bundle_dir: Path,
        session: ort.InferenceSession,
        provider: str,
        sha256: str,
    ) -> None:
        self.manifest = manifest
        self.bundle_dir = bundle_dir
        self.provider = provider
        self.sha256 = sha256
        self._session: ort.InferenceSession | None = session
        self._input_name = manifest.input.name
        self.output_names = [o.name for o in session.get_outputs()]
        self._pre = Preprocessor(manifest.input)
        self._post = Postprocessor(manifest.outputs, self.output_names)
        self._ref = ModelRef(name=manifest.name, version=manifest.version, sha256=sha256)
        self.choice = ProviderChoice(provider=provider, measured=False)

    @classmethod
    def load(
        cls,
        bundle_dir: Path,
        *,
        inference: InferenceConfig | None = None,
        on_fallback: Callable[[str, str], None] | None = None,
    ) -> ModelRunner:
        """Load ``bundle_dir`` (manifest.json + model.onnx) and warm it up.

        Raises ModelLoadError when the manifest, the model file or every
        provider fails. ``on_fallback(provider, reason)`` is called for each
        provider that could not serve before the one that does.
        """
        inference = inference or InferenceConfig()
        bundle_dir = Path(bundle_dir)
        manifest_path = bundle_dir / MANIFEST_FILE
        model_path = bundle_dir / MODEL_FILE
        try:
            manifest_bytes = manifest_path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read {manifest_path}: {exc.strerror or exc}") from exc
        try:
            manifest = parse_manifest(manifest_bytes)
        except ManifestError as exc:
            raise ModelLoadError(f"{manifest_path}: {exc}") from exc
        try:
            model_bytes = model_path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read {model_path}: {exc.strerror or exc}") from exc
        sha256 = hashlib.sha256(manifest_bytes).hexdigest()
        candidates = provider_candidates(inference, ort.get_available_providers())
        so = session_options(inference)
        measure = not is_pinned(inference, candidates) and (bundle_dir / manifest.selftest.file).is_file()
        trials: list[ProviderTrial] = []
        runners: dict[str, ModelRunner] = {}
        last_error: Exception | None = None
        for name in candidates:
            try:
                runner = cls._try_provider(name, model_bytes, so, inference, manifest, bundle_dir, sha256)
                if measure:
                    trials.append(
                        ProviderTrial(name, selftest_ms=_time_selftest(runner, bundle_dir, manifest))
                    )
            except ModelLoadError:
                for other in runners.values():
                    other.close()
                raise
            except (ProviderError, SelftestError) as exc:
                last_error = exc
                trials.append(ProviderTrial(name, failed=str(exc)))
                log.warning("execution provider %s cannot serve: %s", name, exc)
                if on_fallback is not None:
                    on_fallback(name, str(exc))
                continue
            if not measure:
                runner.choice = ProviderChoice(provider=name, measured=False)
                log.info("loaded %s from %s on %s", manifest.ref, bundle_dir, runner.provider)
                return runner
            runners[name] = runner
        chosen = choose_provider(trials) if measure else None
        if chosen is None:
            raise ModelLoadError(f"no execution provider could run {model_path}: {last_error}")
        for name, other in runners.items():
            if name != chosen:
                other.close()
        runner = runners[chosen]
        runner.choice = ProviderChoice(
            provider=chosen,
            measured=True,
            timings_ms={t.provider: t.selftest_ms for t in trials if t.selftest_ms is not None},
        )
        log.info(
            "loaded %s from %s on %s (self-test ms by provider: %s)",
            manifest.ref, bundle_dir, chosen, runner.choice.timings_ms,
        )  # fmt: skip
        return runner

    @classmethod
    def _try_provider(
        cls,
        name: str,
        model_bytes: bytes,
        so: ort.SessionOptions,
        inference: InferenceConfig,
        manifest: Manifest,
        bundle_dir: Path,
        sha256: str,
    ) -> ModelRunner:
        providers: list[Any] = [(name, provider_options(name, inference))]
        if name != CPU:
            providers.append(CPU)  # nodes the accelerator does not support
        try:
            session = ort.InferenceSession(model_bytes, sess_options=so, providers=providers)
        except Exception as exc:
            if name == CPU:
                # The CPU provider always initialises: a failure here is the model's fault.
                raise ModelLoadError(f"ONNX Runtime cannot load {bundle_dir / MODEL_FILE}: {exc}") from exc
            raise ProviderError(f"{name} failed to initialise: {exc}", provider=name) from exc
        serving = session.get_providers()[0] if session.get_providers() else ""
        if serving != name:
            raise ProviderError(f"{name} did not initialise (ONNX Runtime chose {serving})", provider=name)
        _check_io(session, manifest, bundle_dir)
        runner = cls(manifest=manifest, bundle_dir=bundle_dir, session=session, provider=name, sha256=sha256)
        try:
            runner.warm_up(inference.warmup_runs)
        except ModelLoadError as exc:
            if name == CPU:
                raise
            raise ProviderError(f"{name} failed during warm-up: {exc}", provider=name) from exc
        return runner

    def warm_up(self, runs: int = 3) -> None:
        """Run a blank frame ``runs`` times so the first real frame does not pay for allocation."""
        spec = self.manifest.input
        frame = np.full((spec.resize.height, spec.resize.width, 3), 127, dtype=np.uint8)
        for _ in range(max(1, runs)):
            try:
                self.predict(frame)
            except Exception as exc:
                raise ModelLoadError(f"{self.manifest.ref} fails on a blank frame: {exc}") from exc

    def predict(self, image: np.ndarray) -> Prediction:
        """Preprocess a BGR uint8 frame, run the model, postprocess: one Prediction."""
        return self._post(self.run_tensor(self._pre(image)))

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """The model's input tensor for a BGR uint8 frame (as the manifest says)."""
        return self._pre(image)

    def run_tensor(self, x: np.ndarray) -> list[np.ndarray]:
        """Raw outputs for an input tensor, in ``output_names`` order."""
        session = self._session
        if session is None:
            raise ModelLoadError(f"{self.manifest.ref} is closed")
        out: list[np.ndarray] = session.run(self.output_names, {self._input_name: x})
        return out

    def model_ref(self) -> ModelRef:
        """name, version, sha256 (of manifest.json) for messages."""
        return self._ref

    def close(self) -> None:
        """Release the session (ONNX Runtime frees it when the last reference goes)."""
        self._session = None

    def __repr__(self) -> str:
        return f"ModelRunner({self.manifest.ref}, {self.provider})"


# Self-test rounds when timing a provider: the first also checks the outputs; the best counts
# (a shared CPU's background only ever adds time).
TIMING_ROUNDS = 3


def _time_selftest(runner: ModelRunner, bundle_dir: Path, manifest: Manifest) -> float:
    """Run the self-test (SelftestError if it fails) and return its best time in milliseconds."""
    best = float("inf")
    for _ in range(TIMING_ROUNDS):
        t0 = time.perf_counter()
        run_selftest(runner, bundle_dir, manifest)
        best = min(best, (time.perf_counter() - t0) * 1000.0)
    return round(best, 3)


def _check_io(session: ort.InferenceSession, manifest: Manifest, bundle_dir: Path) -> None:
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if manifest.input.name not in inputs:
        raise ModelLoadError(
            f"{bundle_dir}: manifest input {manifest.input.name!r} is not in the model ({inputs})"
        )
    for name in (manifest.outputs.class_output, manifest.outputs.dimensions_output):
        if name is not None and name not in outputs:
            raise ModelLoadError(f"{bundle_dir}: manifest output {name!r} is not in the model ({outputs})")
