"""The services behind the fleet server's HTTP API: database, registry, ingest, controller, repository.

``Services.build(settings)`` opens the database (creating tables), bootstraps the admin token,
and opens the TUF repository; ``Services.start()`` starts the background work: the embedded
broker (when no broker URL is set), the MQTT link and its ingest thread, the rollout controller
loop and the timestamp refresher. The HTTP layer (``app.py``, ``api*.py``) only reads them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.messages import Topics
from fleet_server import auth
from fleet_server.alerts import Alerts, Webhook
from fleet_server.broker import EmbeddedBroker
from fleet_server.controller import Publisher, RolloutController
from fleet_server.db import Database
from fleet_server.ingest import Ingest, MqttLink
from fleet_server.registry import Registry
from fleet_server.settings import FleetSettings, split_hostport
from lineside_common.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

ADMIN_TOKEN_FILE = "admin.token"


@dataclass
class Services:
    """Everything the API and the background threads share."""

    settings: FleetSettings
    db: Database
    topics: Topics
    alerts: Alerts
    registry: Registry
    ingest: Ingest
    controller: RolloutController
    repo: Any = None  # fleet_server.tuf_repo.Repository, or None without online keys
    link: MqttLink | None = None
    broker: EmbeddedBroker | None = None
    webhook: Webhook | None = None
    bootstrap_token: str | None = None
    samples: Any = None  # fleet_server.samples.SampleStore
    started_at: float = field(default_factory=time.time)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    @classmethod
    def build(cls, settings: FleetSettings, *, publisher: Publisher | None = None) -> Services:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.effective_database_url)
        db.create()
        topics = Topics(settings.topic_root)
        webhook = (
            Webhook(settings.webhook_url, retries=settings.webhook_retries) if settings.webhook_url else None
        )
        alerts = Alerts(db, webhook)
        controller = RolloutController(db, publisher, alerts, topics)
        svc = cls(
            settings=settings,
            db=db,
            topics=topics,
            alerts=alerts,
            registry=Registry(db, offline_after_s=settings.offline_after_s),
            ingest=Ingest(db, topics, alerts),
            controller=controller,
            webhook=webhook,
        )
        svc.repo = _open_repo(settings, db)
        from fleet_server.samples import SampleStore

        svc.samples = SampleStore(
            db,
            settings.effective_samples_dir,
            max_total_bytes=settings.samples_max_total_bytes,
            max_age_s=settings.samples_max_age_days * 86400.0,
        )
        svc.bootstrap_token = _bootstrap_admin(settings, db)
        return svc

    def start(self) -> None:
        """Start the broker (embedded), MQTT link, controller and timestamp refresher."""
        s = self.settings
        if s.broker_url is None:
            host, port = split_hostport(s.embedded_broker_listen)
            self.broker = EmbeddedBroker(host, port)
            self.broker.start()
        protocol = s.mqtt_protocol
        if protocol == "auto":
            protocol = "3.1.1" if s.broker_url is None else "5"
        self.link = MqttLink(
            s.effective_broker_url,
            self.topics,
            self.ingest,
            client_id=s.mqtt_client_id,
            protocol=protocol,
            shared_group=s.shared_subscription_group,
            username=s.broker_username,
            password=s.broker_password,
            ca_file=str(s.broker_ca_file) if s.broker_ca_file else None,
            queue_max=s.ingest_queue_max,
            batch_max=s.ingest_batch_max,
        )
        self.controller.publisher = self.link
        self.link.start()
        self._spawn(
            "fleet-controller",
            lambda: self.controller.run(
                self._stop, s.controller_tick_s, elect_every_s=s.controller_elect_every_s
            ),
        )
        if self.repo is not None:
            self._spawn("fleet-timestamp", self._refresh_loop)

    def _spawn(self, name: str, target: Any) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.repo.refresh_timestamp(if_expiring_within_s=self.settings.timestamp_refresh_margin_s):
                    log.info("re-signed timestamp.json")
            except Exception:
                log.exception("timestamp refresh failed; retrying")
            self._stop.wait(self.settings.timestamp_refresh_every_s)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        if self.link is not None:
            self.link.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.webhook is not None:
            self.webhook.close()
        self.db.dispose()


def _open_repo(settings: FleetSettings, db: Database) -> Any:
    from fleet_server.tuf_repo import Repository

    repo_dir = settings.effective_repo_dir
    if settings.online_keys_dir is not None:
        # Replicas share repo_dir; the database's lock makes their writes take turns.
        return Repository.open_or_create(repo_dir, settings.online_keys_dir, writer_lock=db.publish_lock)
    if (repo_dir / "metadata" / "root.json").exists():
        log.warning("no online_keys_dir: serving %s read-only (no uploads, no timestamp refresh)", repo_dir)
        return Repository.open(repo_dir, None)
    log.warning("no online_keys_dir and no repository: model uploads are disabled")
    return None


def _bootstrap_admin(settings: FleetSettings, db: Database) -> str | None:
    """The settings' admin token, or a new one when no admin exists (written to data_dir/admin.token)."""
    if settings.admin_token:
        auth.add_token(db, settings.admin_token, "admin", "bootstrap")
        return None
    if auth.has_admin(db):
        return None
    token = auth.create_token(db, "admin", "bootstrap")
    path = Path(settings.data_dir) / ADMIN_TOKEN_FILE
    atomic_write_bytes(path, (token + "\n").encode())
    os.chmod(path, 0o600)
    return token
