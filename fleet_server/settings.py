"""The fleet server's typed settings: a TOML file plus ``LINESIDE_FLEET_*`` environment overrides.

Read ONCE at the CLI boundary (``fleet serve``) and passed down; nothing deeper reads the
environment. Example ``fleet.toml``::

    data_dir = "/var/lib/lineside-fleet"
    database_url = "postgresql+psycopg://fleet@db/fleet"   # default: sqlite under data_dir
    broker_url = "mqtt://broker.plant:1883"                # default: embedded amqtt (one machine only)
    listen = "0.0.0.0:8080"
    online_keys_dir = "/etc/lineside/online-keys"
    webhook_url = "https://alerts.plant/hook"

    [rollout]
    soak_s = 60
    max_failure_rate = 0.1

Several replicas (PostgreSQL, an external MQTT 5 broker): give each its own broker user
(``fleet devices enroll NAME --fleet-server``; its client id defaults to that user name) and the same ``shared_subscription_group`` (e.g. ``"fleet"``); telemetry and events are then
subscribed as ``$share/fleet/{root}/devices/+/...`` so the broker hands each message to one
replica, while every replica still sees all retained ``state``. Every replica points ``repo_dir``
at the same shared directory (the TUF repository and so the model list; writes take a database
lock). One of them runs the rollout controller (PostgreSQL advisory lock; a standby retries it
every ``controller_elect_every_s``). docs/replicas.md. The embedded amqtt broker is for one
machine only.

Environment: ``LINESIDE_FLEET_<FIELD>`` for top-level fields (``LINESIDE_FLEET_BROKER_URL``,
``LINESIDE_FLEET_DATABASE_URL``, ...) and ``LINESIDE_FLEET_ROLLOUT__<FIELD>`` for rollout defaults.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from edge_agent.messages import DEFAULT_TOPIC_ROOT
from fleet_server.policy import SETTINGS_FIELDS, policy_fields
from lineside_common.errors import ConfigError

ENV_PREFIX = "LINESIDE_FLEET_"


class RolloutDefaults(
    create_model(  # type: ignore[misc]  # a dynamic base: its fields are Policy's (fleet_server/policy.py)
        "_RolloutSettingsFields", __base__=BaseModel, **policy_fields(SETTINGS_FIELDS, optional=False)
    )
):
    """Defaults for ``fleet rollout start`` flags the operator leaves out."""

    # Its policy fields (names, bounds, defaults) are Policy's SETTINGS_FIELDS
    # (fleet_server/policy.py); resolve_policy puts a request's over them.

    model_config = ConfigDict(extra="forbid")

    stages: str = "1,25%,100%"


class FleetSettings(BaseModel):
    """Everything ``fleet serve`` needs; units in names (``_s``, ``_bytes``)."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Path("fleet-data")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; None → sqlite in data_dir")
    broker_url: str | None = Field(default=None, description="mqtt[s]://host:port; None → embedded amqtt")
    embedded_broker_listen: str = "127.0.0.1:1883"
    broker_username: str | None = None
    broker_password: str | None = None
    broker_password_file: Path | None = Field(
        default=None,
        description="read broker_password from this file (0600; `fleet devices enroll --fleet-server`)",
    )
    broker_ca_file: Path | None = None
    # Default: broker_username when set, else "lineside-fleet". The shipped Mosquitto config binds
    # client ids to user names (use_username_as_clientid), so each replica is its own broker user
    # and its client id is that user name; a different id would be silently replaced by the broker.
    mqtt_client_id: str = "lineside-fleet"
    # "auto": MQTT 5 for an external broker, 3.1.1 for the embedded amqtt (which speaks only 3.1.1).
    mqtt_protocol: Literal["auto", "5", "3.1.1"] = "auto"
    # MQTT 5 shared subscription group: several replicas split ingest (``$share/GROUP/...``).
    shared_subscription_group: str | None = None
    topic_root: str = DEFAULT_TOPIC_ROOT
    listen: str = "127.0.0.1:8080"
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    online_keys_dir: Path | None = Field(
        default=None, description="`fleet keys init` output (root.json + online keys); None → no TUF repo"
    )
    repo_dir: Path | None = Field(default=None, description="TUF repository; None → data_dir/repo")
    samples_dir: Path | None = Field(
        default=None,
        description="the sample store's image files; None → data_dir/samples (replicas: a shared directory, "
        "like repo_dir)",
    )
    timestamp_refresh_every_s: Annotated[float, Field(gt=0)] = 300.0
    timestamp_refresh_margin_s: Annotated[float, Field(gt=0)] = 6 * 3600.0
    admin_token: str | None = Field(default=None, description="bootstrap admin token (hashed on start)")
    webhook_url: str | None = None
    webhook_retries: Annotated[int, Field(ge=0)] = 3
    max_upload_bytes: Annotated[int, Field(gt=0)] = 512 * 1024 * 1024
    sample_max_bytes: Annotated[int, Field(gt=0)] = Field(
        default=4 * 1024 * 1024, description="the largest sample upload (metadata and JPEG) accepted"
    )
    samples_max_total_bytes: Annotated[int, Field(gt=0)] = Field(
        default=20 * 1024**3, description="retention: the oldest samples go when their JPEGs add up to more"
    )
    samples_max_age_days: Annotated[float, Field(gt=0)] = Field(
        default=365.0, description="retention: samples received longer ago are removed"
    )
    ingest_queue_max: Annotated[int, Field(gt=0)] = 50_000
    ingest_batch_max: Annotated[int, Field(gt=0)] = 500
    controller_tick_s: Annotated[float, Field(gt=0)] = 0.5
    # A replica without the controller lock tries to take it this often (failover time).
    controller_elect_every_s: Annotated[float, Field(gt=0)] = 2.0
    offline_after_s: Annotated[float, Field(gt=0)] = 120.0
    recent_telemetry: Annotated[int, Field(ge=1, le=1000)] = 20
    rollout: RolloutDefaults = Field(default_factory=RolloutDefaults)

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        u = urlparse(v)
        if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not u.hostname:
            raise ValueError("must look like mqtt://host:port or mqtts://host:port")
        return v

    @model_validator(mode="after")
    def _client_id_is_the_user(self) -> FleetSettings:
        if "mqtt_client_id" not in self.model_fields_set and self.broker_username:
            self.mqtt_client_id = self.broker_username
        return self

    @model_validator(mode="after")
    def _password_from_file(self) -> FleetSettings:
        # Read once here, at the CLI boundary, so the secret never has to sit in the environment.
        if self.broker_password is None and self.broker_password_file is not None:
            try:
                self.broker_password = self.broker_password_file.read_text().strip()
            except OSError as exc:
                raise ValueError(
                    f"broker_password_file: cannot read {self.broker_password_file}: {exc.strerror}"
                ) from exc
        return self

    @field_validator("listen", "embedded_broker_listen")
    @classmethod
    def _hostport(cls, v: str) -> str:
        split_hostport(v)
        return v

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'fleet.db').resolve()}"

    @property
    def effective_repo_dir(self) -> Path:
        return self.repo_dir or self.data_dir / "repo"

    @property
    def effective_samples_dir(self) -> Path:
        return self.samples_dir or self.data_dir / "samples"

    @property
    def effective_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        host, port = split_hostport(self.embedded_broker_listen)
        return f"mqtt://{host}:{port}"


def split_hostport(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` → (host, port); ValueError when it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if "__" in name:
            section, _, sub = name.partition("__")
            out.setdefault(section, {})[sub] = value
        else:
            out[name] = value
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def load_settings(
    config_file: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> FleetSettings:
    """TOML file, then environment, then explicit overrides (CLI flags); ConfigError names the field."""
    raw: dict[str, Any] = {}
    if config_file is not None:
        try:
            raw = tomllib.loads(Path(config_file).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read {config_file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file} is not valid TOML: {exc}") from exc
    raw = _merge(raw, _env_overrides(env or {}))
    raw = _merge(raw, {k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return FleetSettings.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"fleet settings: {loc}: {err['msg']}", field=loc) from exc
