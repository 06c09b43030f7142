"""``fleet devices enroll DEVICE``: issue a device's broker credentials and its Mosquitto entries
(and, against a fleet server, its HTTP token); ``fleet devices token DEVICE``: issue or rotate a
device's HTTP token alone (robots enrolled before device tokens existed)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from edge_agent.messages import DEFAULT_TOPIC_ROOT
from fleet_server.client import ApiError, FleetClient
from fleet_server.enroll import FLEET_USER, CertificateAuthority, enroll, write_private
from lineside_common import cli as clitools

_DESCRIPTION = """\
Issue broker credentials for DEVICE and the Mosquitto entries that lock it to its own topics.

By default a strong random password: DEVICE.password (0600) and DEVICE.broker.toml (the agent's
[broker] section) are written to --out, and the broker's entries (a password-file line in
Mosquitto's PBKDF2-SHA512 format and an ACL block: write its own state/telemetry/events/decisions,
read its own cmd) are merged into --password-file/--acl-file when given (the fleet server's own
block is added to the ACL too), or written next to the credentials for you to install.

--cert issues a client certificate instead, signed by the fleet's MQTT CA (created on first use
in --ca, default DATA_DIR/mqtt-ca); use it with a listener that has `require_certificate true`
and `use_identity_as_username true` (see deploy/mosquitto/lineside.conf).

--fleet-server enrolls the fleet server's own broker user (read every device channel, write only
cmd topics) and writes NAME.env for `fleet serve` (LINESIDE_FLEET_BROKER_USERNAME and
_PASSWORD_FILE, pointing at NAME.password). The shipped broker config binds client ids to user
names, so each fleet-server replica needs its own user: `fleet devices enroll lineside-fleet-2
--fleet-server ...`; `fleet serve`'s client id is then its user name.

--password-file/--acl-file keep their owner, group and mode (Mosquitto runs as its own user and
re-reads them on reload); a new one gets its directory's owner and group, mode 0600 (0640 when
the directory admits its group). See docs/security-broker.md.

With a fleet server (--server/--token, or LINESIDE_SERVER/LINESIDE_TOKEN) a device also gets its
HTTP token: DEVICE.http-token (0600), for the agent's [updates] token_file. The fleet server
serves model files only to a token holder; a device token reads them and nothing else.
"""

_TOKEN_DESCRIPTION = """Issue DEVICE's HTTP token (or rotate it: the previous one stops working at once), for the
agent's [updates] token_file. It can download model files (/tuf/targets/) and nothing else.
Robots enrolled before device tokens existed get theirs this way. --revoke removes it.
"""

TOKEN_SUFFIX = ".http-token"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    devices = sub.choices.get("devices")
    if devices is None:  # cli_ops not loaded: own the group
        devices = sub.add_parser(
            "devices", help="the device registry", description="Devices the fleet knows."
        )
    actions = [a for a in devices._actions if isinstance(a, argparse._SubParsersAction)]
    dsub = (
        actions[0] if actions else devices.add_subparsers(dest="devices_cmd", required=True, metavar="ACTION")
    )
    p = dsub.add_parser(
        "enroll",
        help="issue a device's broker credentials and ACL",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "device",
        nargs="?",
        help=f"device id (the broker user name); with --fleet-server the server's user (default {FLEET_USER})",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="where to write the credentials (default: ./enroll-DEVICE)"
    )
    p.add_argument("--cert", action="store_true", help="issue a client certificate instead of a password")
    p.add_argument(
        "--line-checker",
        action="store_true",
        help="enroll NAME as a line checker: reads every device's decisions, publishes their truth",
    )
    p.add_argument("--ca", type=Path, help="the fleet's MQTT CA folder (default: DATA_DIR/mqtt-ca)")
    p.add_argument(
        "--data-dir", type=Path, default=Path("fleet-data"), help="the fleet server's data directory"
    )
    p.add_argument(
        "--password-file", type=Path, help="Mosquitto password_file to update in place (atomically)"
    )
    p.add_argument("--acl-file", type=Path, help="Mosquitto acl_file to update in place (atomically)")
    p.add_argument(
        "--topic-root", default=DEFAULT_TOPIC_ROOT, help=f"MQTT topic root (default {DEFAULT_TOPIC_ROOT})"
    )
    p.add_argument(
        "--broker-url", default="mqtts://broker:8883", help="broker URL for the agent's config snippet"
    )
    p.add_argument("--device-dir", default="/etc/lineside", help="where the files will live on the device")
    p.add_argument(
        "--fleet-server",
        action="store_true",
        help=f"enroll the fleet server's own user (default name {FLEET_USER})",
    )
    p.add_argument(
        "--server", help="fleet server that issues the device's HTTP token (default: $LINESIDE_SERVER)"
    )
    p.add_argument("--token", help="admin API token for --server (default: $LINESIDE_TOKEN)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (without the password)")
    p.set_defaults(func=run)

    t = dsub.add_parser(
        "token",
        help="issue or rotate a device's HTTP token (model downloads only)",
        description=_TOKEN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("device", help="device id")
    t.add_argument("--out", type=Path, help="write the token to this file (0600) instead of stdout")
    t.add_argument("--revoke", action="store_true", help="revoke the device's token instead")
    t.add_argument("--server", help="fleet server URL (default: $LINESIDE_SERVER or http://127.0.0.1:8080)")
    t.add_argument("--token", help="admin API token (default: $LINESIDE_TOKEN)")
    t.add_argument(
        "--json", action="store_true", help="print JSON (the token only when not written to --out)"
    )
    t.set_defaults(func=run_token)


def _admin_client(server: str | None, token: str | None) -> FleetClient:
    server = server or os.environ.get("LINESIDE_SERVER") or "http://127.0.0.1:8080"
    token = token or os.environ.get("LINESIDE_TOKEN")
    if not token:
        raise clitools.CommandError("no API token: pass --token or set LINESIDE_TOKEN (an admin token)")
    return FleetClient(server, token)


def _register(client: FleetClient, device: str) -> None:
    """Enrolling against a server registers the device (so it can be grouped before it connects)."""
    try:
        client.add_device(device)
    except ApiError as exc:
        if exc.status != 409:  # 409: already registered (a re-enrollment), which is fine
            raise


def _issue_device_token(client: FleetClient, device: str) -> str:
    token: str = client.request("POST", f"/api/v1/devices/{device}/token")["token"]
    return token


def run_token(args: argparse.Namespace) -> int:
    with _admin_client(args.server, args.token) as client:
        if args.revoke:
            out = client.request("DELETE", f"/api/v1/devices/{args.device}/token")
            if args.json:
                clitools.print_json(out)
            else:
                sys.stdout.write(f"revoked {out['revoked']} token(s) of {args.device}\n")
            return 0
        token = _issue_device_token(client, args.device)
    if args.out is not None:
        try:
            write_private(args.out, token + "\n")
        except OSError as exc:
            raise clitools.CommandError(f"cannot write {args.out}: {exc}") from exc
        if args.json:
            clitools.print_json({"device_id": args.device, "token_file": str(args.out)})
        else:
            sys.stdout.write(f"device token for {args.device} written to {args.out} (0600)\n")
    elif args.json:
        clitools.print_json({"device_id": args.device, "token": token})
    else:
        sys.stdout.write(token + "\n")
        sys.stderr.write(f"device token for {args.device}; shown only once, the previous one is revoked\n")
    return 0


def run(args: argparse.Namespace) -> int:
    name = args.device or (FLEET_USER if args.fleet_server else None)
    if name is None:
        raise clitools.CommandError("name the DEVICE to enroll (or --fleet-server)")
    if args.fleet_server and args.cert:
        raise clitools.CommandError("--cert is for devices; the fleet server authenticates with a password")
    out = args.out or Path(f"enroll-{name}")
    http_token = None
    server = args.server or os.environ.get("LINESIDE_SERVER")
    if args.line_checker and args.fleet_server:
        raise clitools.CommandError("--line-checker and --fleet-server exclude each other")
    if server and not args.fleet_server and not args.line_checker:
        # Before any file is written: an unreachable server or a refused token changes nothing.
        with _admin_client(server, args.token) as client:
            _register(client, name)
            http_token = _issue_device_token(client, name)
    ca = None
    if args.cert:
        ca = CertificateAuthority.load_or_create(args.ca or args.data_dir / "mqtt-ca")
    try:
        result = enroll(
            name,
            out,
            kind="fleet" if args.fleet_server else "checker" if args.line_checker else "device",
            topic_root=args.topic_root,
            password_file=args.password_file,
            acl_file=args.acl_file,
            ca=ca,
            broker_url=args.broker_url,
            device_dir=args.device_dir,
        )
        if http_token is not None:
            result.files["http_token"] = write_private(out / f"{name}{TOKEN_SUFFIX}", http_token + "\n")
    except OSError as exc:
        raise clitools.CommandError(f"cannot write credentials: {exc}") from exc
    if args.json:
        clitools.print_json(result.public_dict())
        return 0
    w = sys.stdout.write
    w(f"enrolled {result.kind} {name} ({result.auth}); files:\n")
    for role, path in result.files.items():
        w(f"  {role:24} {path}\n")
    if args.password_file is None and result.password_line is not None:
        w("add to Mosquitto's password_file (then `kill -HUP` the broker):\n")
        w(f"  {result.password_line}\n")
    if args.acl_file is None:
        w("add to Mosquitto's acl_file:\n")
        w("".join(f"  {ln}\n" for ln in result.acl.splitlines()))
    if http_token is not None:
        w(f'agent config: [updates] token_file = "{args.device_dir}/{name}{TOKEN_SUFFIX}"\n')
    elif not args.fleet_server:
        w(f"no HTTP token issued (no --server): `fleet devices token {name} --out {name}{TOKEN_SUFFIX}`\n")
    return 0
