"""The agent's configuration: one TOML file, validated once at start-up.

Every section has defaults, so the smallest valid file is::

    device_id = "robot-1"
    [source]
    uri = "/var/lib/lineside/replay"

A wrong file is one ConfigError that names the field (``broker.url: ...``).
The common fields can be overridden on the command line (``--source``,
``--broker``, ``--device-id``, ``--state-dir``); see :func:`load_config`.

Size: one concern, the agent's typed config file; it is long because each section (broker,
updates, inference, samples, line, local outputs, OPC UA, shadow) is a small pydantic model
with its units and validators, kept together so the whole file format reads in one place.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge_agent.messages import DEFAULT_TOPIC_ROOT, valid_device_id
from lineside_common.errors import ConfigError

# ONNX Runtime's provider names, most capable first.
DEFAULT_PROVIDER_PREFERENCE: tuple[str, ...] = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "OpenVINOExecutionProvider",
    "CoreMLExecutionProvider",
    "DmlExecutionProvider",
    "CPUExecutionProvider",
)
_PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
    "dml": "DmlExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


class _Section(BaseModel):
    # A typo in a key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Section):
    """Where frames come from: a recording directory, a folder of images, a video file, a device index
    or a stream URL (docs/frame-sources.md)."""

    uri: str = Field(min_length=1)
    loop: bool = Field(default=False, description="replay a finite source from the start when it ends")
    realtime: bool = Field(default=True, description="replay recordings at their recorded frame rate")
    fps: Annotated[float, Field(gt=0, le=1000)] | None = Field(
        default=None,
        description="frames per second for an image folder (default 10) or to override a recording's",
    )
    queue_size: Annotated[int, Field(ge=1, le=1024)] = Field(
        default=4, description="frames between capture and inference; the oldest is dropped when full"
    )
    reconnect_initial_s: Annotated[float, Field(gt=0)] = 0.5
    reconnect_max_s: Annotated[float, Field(gt=0)] = 10.0


class TlsConfig(_Section):
    """TLS to the broker (``mqtts://`` URLs turn it on even when this section is absent)."""

    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = Field(default=False, description="skip host name verification (testing only)")


class BrokerConfig(_Section):
    """The MQTT broker. Offline is explicit: ``offline = true`` and no ``url``.

    ``edge-agent run`` with neither a ``url`` nor ``offline = true`` is a config error
    (:meth:`check_for_run`): a forgotten url must not connect to whatever listens on localhost.
    """

    url: str | None = None
    offline: bool = Field(
        default=False,
        description="run with no broker: telemetry and events stay in the bounded on-disk spool",
    )
    username: str | None = None
    password: str | None = None
    password_file: Path | None = Field(default=None, description="read the password from this file")
    client_id: str | None = Field(
        default=None,
        description="default: the user name (device_id with a client certificate),"
        " else lineside-agent-<device_id>",
    )
    keepalive_s: Annotated[int, Field(ge=2, le=3600)] = 15
    protocol: Literal["5", "3.1.1"] = Field(
        default="5", description='MQTT version: "5", or "3.1.1" for brokers without MQTT 5 (amqtt)'
    )
    tls: TlsConfig = Field(default_factory=TlsConfig)
    topic_root: str = DEFAULT_TOPIC_ROOT
    reconnect_min_s: Annotated[float, Field(gt=0)] = 0.5
    reconnect_max_s: Annotated[float, Field(gt=0)] = 30.0
    max_inflight: Annotated[int, Field(ge=1, le=65535)] = 100

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError("must look like mqtt://host:port or mqtts://host:port")
        if not parts.hostname:
            raise ValueError("has no host name")
        try:
            _ = parts.port
        except ValueError as exc:
            raise ValueError(f"has a bad port: {exc}") from exc
        return v

    @model_validator(mode="after")
    def _offline_or_url(self) -> BrokerConfig:
        if self.offline and self.url is not None:
            raise ValueError("offline = true and a url at once: remove one")
        return self

    def check_for_run(self) -> None:
        """ConfigError unless the daemon knows where to publish, or was told to run offline."""
        if self.url is None and not self.offline:
            raise ConfigError(
                'broker.url: not set: give the plant broker (url = "mqtt://HOST:1883") or run '
                "without one (offline = true)",
                field="broker.url",
            )

    @field_validator("topic_root")
    @classmethod
    def _root(cls, v: str) -> str:
        if not v or any(c in v for c in "+#") or v.startswith("/") or v.endswith("/"):
            raise ValueError("must be a topic prefix without wildcards or leading/trailing '/'")
        return v

    @property
    def host(self) -> str:
        return urlsplit(self.url or "").hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url or "")
        return parts.port or (8883 if self.use_tls else 1883)

    @property
    def use_tls(self) -> bool:
        return self.tls.enabled or urlsplit(self.url or "").scheme in ("mqtts", "ssl")

    def resolved_password(self) -> str | None:
        """The password, from ``password_file`` when set (raises ConfigError if unreadable)."""
        if self.password_file is None:
            return self.password
        try:
            return self.password_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"broker.password_file: cannot read {self.password_file}: {exc.strerror}",
                field="broker.password_file",
            ) from exc


class TelemetryConfig(_Section):
    """Aggregation windows, the on-disk spool and the local decision output."""

    window_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    decisions: bool = Field(
        default=True, description="publish every decision on {root}/devices/{id}/decisions (QoS 0)"
    )
    spool_max_messages: Annotated[int, Field(ge=10)] = 10000
    decision_log: Annotated[int, Field(ge=100, le=10_000_000)] = Field(
        default=20000, description="how many recent decisions the agent keeps to join truth from the line"
    )
    flush_timeout_s: Annotated[float, Field(ge=0)] = Field(
        default=5.0, description="at shutdown, how long to wait for the spool to drain"
    )


class InferenceConfig(_Section):
    """ONNX Runtime: which execution providers, with which options, and session threading."""

    providers: list[str] | None = Field(
        default=None,
        description="preference order (names or aliases: tensorrt, cuda, openvino, coreml, directml, cpu); "
        "default: all, most capable first, filtered by what onnxruntime has",
    )
    pin_provider: bool = Field(
        default=False,
        description="serve the first available of `providers` without timing; otherwise, with several "
        "candidates, each one's self-test is timed at load and the fastest that passes serves",
    )
    device_id: Annotated[int, Field(ge=0)] = 0
    trt_engine_cache_dir: Path | None = None
    fp16: bool = False
    provider_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="extra options per provider name, passed through"
    )
    intra_op_num_threads: Annotated[int, Field(ge=0, le=256)] = 1
    allow_spinning: bool = Field(
        default=False, description="ORT's busy-wait between calls: burns CPU at camera rate"
    )
    warmup_runs: Annotated[int, Field(ge=0, le=100)] = 3
    gil_switch_interval_ms: Annotated[float, Field(gt=0, le=100)] | None = Field(
        default=1.0,
        description="Python's GIL switch interval while the agent runs (interpreter default 5 ms): "
        "bounds how long update or telemetry work can keep the inference thread waiting; None keeps it",
    )
    cpu_affinity: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None,
        description="pin the inference thread to these CPU cores (Linux); None: the scheduler decides. "
        "Pair it with the systemd unit's CPUAffinity= for the whole process (BENCHMARKS.md: its effect)",
    )
    update_nice: Annotated[int, Field(ge=0, le=19)] = Field(
        default=10, description="nice value of the thread that installs updates (0: same as inference)"
    )

    @field_validator("providers")
    @classmethod
    def _providers(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        if not v:
            raise ValueError("must not be empty (leave it out for the default order)")
        out = []
        for name in v:
            full = _PROVIDER_ALIASES.get(name.lower(), name)
            if full not in DEFAULT_PROVIDER_PREFERENCE and not full.endswith("ExecutionProvider"):
                raise ValueError(f"unknown execution provider {name!r}")
            out.append(full)
        return out


class ShadowConfig(_Section):
    """How much a model running in shadow (a shadow deploy, probation's reverse shadow) may take.

    It never delays a serving decision: it runs on its own thread, on every ``every_n``-th
    frame, and skips frames while its CPU time is over ``max_cpu_share`` of the wall time.
    """

    every_n: Annotated[int, Field(ge=1, le=1000)] = 3
    max_cpu_share: Annotated[float, Field(gt=0, le=4)] = 0.25
    nice: Annotated[int, Field(ge=0, le=19)] = Field(
        default=10, description="nice value of the shadow's thread: on a busy CPU serving goes first"
    )


class ThresholdsConfig(_Section):
    """Local overrides of the manifest's drift thresholds (None: use the manifest's)."""

    low_confidence: Annotated[float, Field(gt=0, lt=1)] | None = None
    max_p50_drop: Annotated[float, Field(ge=0, le=1)] | None = None
    max_low_confidence_rate: Annotated[float, Field(ge=0, le=1)] | None = None
    sustain_windows: Annotated[int, Field(ge=1)] | None = None
    drift: bool = Field(default=True, description="detect drift at all")


class UpdatesConfig(_Section):
    """Verified model updates (TUF). Without this section the agent serves ``bundle`` and takes no updates.

    ``root_json`` is the provisioned trust anchor (from ``fleet keys init``); ``repository_url`` the
    fleet server (``{url}/tuf/metadata/``, ``{url}/tuf/targets/``); None accepts only side-loads
    (``edge-agent install DIR``). The updater takes this section whole: every field here is a field
    of :class:`edge_agent.updates.UpdaterSettings` of the same name and default.
    """

    root_json: Path
    repository_url: str | None = None
    token_file: Path | None = Field(
        default=None,
        description="file holding this device's HTTP token (`fleet devices enroll --server` or "
        "`fleet devices token DEVICE`); the fleet server serves model files only to a token holder",
    )
    root_max_bytes: Annotated[int, Field(gt=0)] = 512_000
    timestamp_max_bytes: Annotated[int, Field(gt=0)] = 16_384
    snapshot_max_bytes: Annotated[int, Field(gt=0)] = 2_000_000
    targets_max_bytes: Annotated[int, Field(gt=0)] = 5_000_000
    crash_loop_threshold: Annotated[int, Field(ge=0)] = Field(
        default=3, description="starts on probation before the new model counts as crash-looping"
    )
    reserve_bytes: Annotated[int, Field(ge=0)] = Field(
        default=0, description="free space to keep on the store's disk"
    )
    swap_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    fetch_attempts: Annotated[int, Field(ge=1, le=100)] = Field(
        default=4, description="downloads cut by the network are retried this many times in all"
    )
    fetch_backoff_s: Annotated[float, Field(gt=0)] = 1.0
    fetch_backoff_max_s: Annotated[float, Field(gt=0)] = 30.0
    max_bundle_bytes: Annotated[int, Field(gt=0)] = Field(
        default=512 * 1024 * 1024, description="refuse a release whose signed files add up to more"
    )
    fault_point: str | None = Field(
        default=None,
        description="FAULT-INJECTION TESTS ONLY: SIGKILL the agent at this install step "
        "(after_download, mid_stage, after_verify, after_rename, after_state_write, during_probation)",
    )

    @field_validator("repository_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and urlsplit(v).scheme not in ("http", "https"):
            raise ValueError("must be an http(s):// URL")
        return v


class LineConfig(_Section):
    """The line's state and the update window: when a staged model may be swapped in.

    Without ``allowed_states`` a swap happens in any state (nothing changes for lines that don't
    opt in). An unknown line state counts as not allowed. See edge_agent/update_window.py.
    """

    source: Literal["none", "mqtt", "local", "opcua"] = Field(
        default="none",
        description="where the line's state comes from: the plant broker (mqtt), "
        "the local output socket (local), an OPC UA node on the PLC (opcua), or nowhere (none)",
    )
    mqtt_topic: str | None = Field(default=None, description="default: {topic_root}/devices/{device_id}/line")
    opcua_url: str | None = Field(default=None, description="the PLC's OPC UA server, opc.tcp://host:port")
    opcua_node: str | None = Field(default=None, description='the state node, e.g. "ns=2;s=Line1.State"')
    opcua_changeover_node: str | None = Field(default=None, description="an optional Boolean node")
    opcua_poll_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    allowed_states: list[str] | None = Field(
        default=None, description='PackML-like states a swap may happen in, e.g. ["idle", "stopped"]'
    )
    changeover_allowed: bool = Field(default=True, description="a changeover opens the window too")
    deadline_s: Annotated[float, Field(ge=0)] | None = Field(
        default=None, description="how long a staged model waits for the window (None: forever)"
    )
    at_deadline: Literal["wait", "proceed"] = Field(
        default="wait", description="at the deadline: keep waiting and alert, or swap anyway"
    )

    @field_validator("allowed_states")
    @classmethod
    def _states(cls, v: list[str] | None) -> list[str] | None:
        from edge_agent.update_window import LINE_STATES

        if v is None:
            return None
        out = [s.strip().lower() for s in v]
        bad = [s for s in out if s not in LINE_STATES]
        if bad:
            raise ValueError(f"unknown line state(s) {bad}; known: {', '.join(LINE_STATES)}")
        return out

    @model_validator(mode="after")
    def _opcua_source(self) -> LineConfig:
        if self.source == "opcua" and (not self.opcua_url or not self.opcua_node):
            raise ValueError('source = "opcua" needs opcua_url and opcua_node')
        return self


class LocalOutputConfig(_Section):
    """Decisions for a program on the same box: a Unix socket, newline-delimited JSON."""

    socket_path: Path | None = Field(
        default=None, description="e.g. /run/lineside/decisions.sock (systemd RuntimeDirectory); None: off"
    )
    socket_mode: Annotated[int, Field(ge=0, le=0o777)] = Field(
        default=0o660, description="permissions of the socket file (who may connect)"
    )
    max_clients: Annotated[int, Field(ge=1, le=1024)] = 16
    client_buffer_bytes: Annotated[int, Field(ge=4096)] = Field(
        default=1_048_576, description="a client this far behind is disconnected (it never blocks serving)"
    )
    queue_size: Annotated[int, Field(ge=1)] = Field(
        default=4096, description="decisions between inference and the output thread; the oldest is dropped"
    )


OpcUaPolicy = Literal["None", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt"]
_DEFAULT_OPCUA_POLICY: OpcUaPolicy = "Basic256Sha256_SignAndEncrypt"


class OpcUaConfig(_Section):
    """An OPC UA server in the agent (needs the ``opcua`` extra); off by default.

    Security as OPC UA defines it: anonymous access is off unless ``allow_anonymous``; users log in
    with ``username``/``password_file``; ``certificate``/``private_key`` enable the signed and
    encrypted policies listed in ``security_policies``.
    """

    enabled: bool = False
    endpoint: str = "opc.tcp://127.0.0.1:4840/lineside/"
    allow_anonymous: bool = False
    username: str | None = None
    password_file: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    security_policies: list[OpcUaPolicy] = Field(default_factory=lambda: [_DEFAULT_OPCUA_POLICY])
    queue_size: Annotated[int, Field(ge=1)] = 4096

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if urlsplit(v).scheme != "opc.tcp":
            raise ValueError("must look like opc.tcp://host:port/path")
        return v


class SamplesConfig(_Section):
    """Frames kept for retraining (docs/samples.md): which, how many, how they travel to the fleet.

    ``capture = false`` is final: nothing is sampled or sent, whatever the fleet's ``capture``
    command or a rollout asks. Strategies left unset take the model manifest's ``sampling``
    defaults, then the built-in ones.
    """

    capture: bool = Field(default=True, description="false: never sample, never send (privacy; final)")
    low_confidence_min: Annotated[float, Field(ge=0, le=1)] | None = None
    low_confidence_max: Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=None,
        description="sample frames whose confidence is in [min, max); default the drift threshold",
    )
    random_share: Annotated[float, Field(ge=0, le=1)] | None = None
    drift_share: Annotated[float, Field(ge=0, le=1)] | None = None
    shadow_disagreement: bool = True
    per_minute: Annotated[int, Field(ge=0)] | None = 6
    per_hour: Annotated[int, Field(ge=0)] | None = 60
    per_day: Annotated[int, Field(ge=0)] | None = 500
    per_label_per_minute: Annotated[int, Field(ge=0)] | None = None
    per_label_per_hour: Annotated[int, Field(ge=0)] | None = None
    per_label_per_day: Annotated[int, Field(ge=0)] | None = None
    jpeg_quality: Annotated[int, Field(ge=1, le=100)] = 85
    max_side_px: Annotated[int, Field(ge=16, le=8192)] = 640
    ring_max_bytes: Annotated[int, Field(ge=65536)] = 64 * 1024 * 1024
    queue_size: Annotated[int, Field(ge=1, le=1024)] = Field(
        default=8, description="frames waiting for JPEG encoding; a frame offered to a full queue is dropped"
    )
    seed: int | None = Field(default=None, description="seed the random share (tests, reproducible runs)")
    server_url: str | None = Field(
        default=None, description="the fleet server (http[s]://host:port); default: updates.repository_url"
    )
    token_file: Path | None = Field(
        default=None, description="this device's HTTP token; default: updates.token_file"
    )
    upload_max_bytes_per_s: Annotated[int, Field(ge=1024)] = 250_000
    upload_backoff_s: Annotated[float, Field(gt=0)] = 1.0
    upload_backoff_max_s: Annotated[float, Field(gt=0)] = 60.0
    upload_timeout_s: Annotated[float, Field(gt=0)] = 15.0

    @field_validator("server_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and urlsplit(v).scheme not in ("http", "https"):
            raise ValueError("must be an http(s):// URL")
        return v


class AgentConfig(_Section):
    """The whole agent config file."""

    device_id: str
    device_class: str = "generic"
    state_dir: Path = Path("/var/lib/lineside")
    bundle: Path | None = Field(default=None, description="model bundle directory to serve")
    source: SourceConfig
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    thresholds: ThresholdsConfig = Field(default_factory=ThresholdsConfig)
    updates: UpdatesConfig | None = None
    line: LineConfig = Field(default_factory=LineConfig)
    local_output: LocalOutputConfig = Field(default_factory=LocalOutputConfig)
    opcua: OpcUaConfig = Field(default_factory=OpcUaConfig)
    shadow: ShadowConfig = Field(default_factory=ShadowConfig)
    samples: SamplesConfig = Field(default_factory=SamplesConfig)
    watchdog_s: Annotated[float, Field(ge=0)] = Field(
        default=0.0, description="systemd watchdog interval (0: taken from WATCHDOG_USEC, or off)"
    )

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, v: str) -> str:
        if not valid_device_id(v):
            raise ValueError("must be 1-64 letters, digits, '.', '_' or '-' (no '/', '+', '#', spaces)")
        return v

    @property
    def client_id(self) -> str:
        """The MQTT client id. With credentials it is the broker user name (a client certificate's
        CN is the device id): the shipped Mosquitto config binds client ids to user names
        (``use_username_as_clientid``), so that is the id the broker uses anyway."""
        if self.broker.client_id:
            return self.broker.client_id
        if self.broker.username:
            return self.broker.username
        if self.broker.tls.cert_file is not None:
            return self.device_id
        return f"lineside-agent-{self.device_id}"


def _first_error(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "(root)"
    msg = err["msg"]
    if err["type"] == "missing":
        msg = "is required"
    elif err["type"] == "extra_forbidden":
        msg = "is not a known setting"
    else:
        msg = msg.removeprefix("Value error, ")
    return field, msg


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for p in parents:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{p}: must be a table", field=p)
        node = child
    node[leaf] = value


def parse_config(raw: dict[str, Any], *, origin: str = "config") -> AgentConfig:
    """Validate a config dict; raise ConfigError naming the first bad field."""
    try:
        return AgentConfig.model_validate(raw)
    except ValidationError as exc:
        field, msg = _first_error(exc)
        raise ConfigError(f"{origin}: {field}: {msg}", field=field) from exc


def load_config(path: Path | str | None, overrides: dict[str, Any] | None = None) -> AgentConfig:
    """Read a TOML file (or nothing), apply dotted-key ``overrides`` (None values skipped), validate.

    ``overrides`` keys are dotted field paths, e.g. ``{"source.uri": "/tmp/rec", "broker.url": ...}``:
    what the CLI flags set.
    """
    raw: dict[str, Any] = {}
    origin = "command line"
    if path is not None:
        p = Path(path)
        origin = str(p)
        try:
            raw = tomllib.loads(p.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {p} does not exist", field=None) from exc
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{p}: not UTF-8 text") from exc
    for key, value in (overrides or {}).items():
        if value is not None:
            _set(raw, key, value)
    return parse_config(raw, origin=origin)
