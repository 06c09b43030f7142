"""``fleet serve``: the fleet server (HTTP API + MQTT ingest + rollout controller) under uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fleet_server.keys import check_online_keys
from fleet_server.settings import load_settings, split_hostport
from lineside_common.cli import CommandError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the fleet server",
        description=(
            "Run the fleet server: HTTP API (/api/v1, /tuf, /healthz, /metrics), MQTT ingest and the "
            "rollout controller. Settings: --config TOML, then LINESIDE_FLEET_* environment, then these "
            "flags. With no broker URL an embedded amqtt broker is started (one machine only); with no "
            "database URL, SQLite under the data directory. On first start it creates an admin token in "
            "DATA_DIR/admin.token (mode 0600) and prints where that file is, never the token. With "
            "--online-keys DIR it checks at start that DIR/root.json, DIR/private/snapshot.pem and "
            "DIR/private/timestamp.pem exist, load and match root.json, and refuses to start otherwise."
        ),
    )
    p.add_argument("--config", type=Path, help="TOML settings file")
    p.add_argument("--data-dir", type=Path, help="data directory (database, repository, admin.token)")
    p.add_argument("--listen", help="HOST:PORT for HTTP (default 127.0.0.1:8080)")
    p.add_argument("--broker", help="mqtt://HOST:PORT of the broker (default: embedded amqtt)")
    p.add_argument(
        "--embedded-broker-listen", help="HOST:PORT for the embedded broker (default 127.0.0.1:1883)"
    )
    p.add_argument("--database-url", help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db")
    p.add_argument(
        "--online-keys",
        type=Path,
        help="directory with root.json, private/snapshot.pem and private/timestamp.pem (from `fleet keys init`)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from fleet_server.app import ADMIN_TOKEN_FILE, Services, create_app

    settings = load_settings(
        args.config,
        env=os.environ,
        overrides={
            "data_dir": args.data_dir,
            "listen": args.listen,
            "broker_url": args.broker,
            "embedded_broker_listen": args.embedded_broker_listen,
            "database_url": args.database_url,
            "online_keys_dir": args.online_keys,
        },
    )
    host, port = split_hostport(settings.listen)
    if settings.online_keys_dir is not None:
        # Before anything is created: a server that cannot sign would accept nothing and serve a
        # repository without timestamp.json (one line naming the file it expected).
        check_online_keys(settings.online_keys_dir)
    try:
        services = Services.build(settings)
    except OSError as exc:
        raise CommandError(f"cannot start: {exc}") from exc
    app = create_app(settings, services=services)
    scheme = "https" if settings.tls_certfile else "http"
    broker = settings.broker_url or f"embedded amqtt on {settings.embedded_broker_listen}"
    sys.stderr.write(
        f"fleet server on {scheme}://{host}:{port}  (broker: {broker}; data: {settings.data_dir})\n"
    )
    if services.bootstrap_token:
        sys.stderr.write(
            # The path, never the token: stderr ends up in journald and log collectors (SECURITY.md).
            f"admin token created: {settings.data_dir / ADMIN_TOKEN_FILE} (mode 0600)\n"
        )
    sys.stderr.flush()
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        ssl_certfile=str(settings.tls_certfile) if settings.tls_certfile else None,
        ssl_keyfile=str(settings.tls_keyfile) if settings.tls_keyfile else None,
        timeout_graceful_shutdown=5,
    )
    return 0
