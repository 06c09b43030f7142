"""``fleet devices enroll DEVICE``: issue a device's broker credentials and its Mosquitto entries."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_agent import clitools
from edge_agent.messages import DEFAULT_TOPIC_ROOT
from fleet_server.enroll import FLEET_USER, CertificateAuthority, enroll

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
"""


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
    p.add_argument("--json", action="store_true", help="print the result as JSON (without the password)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    name = args.device or (FLEET_USER if args.fleet_server else None)
    if name is None:
        raise clitools.CommandError("name the DEVICE to enroll (or --fleet-server)")
    if args.fleet_server and args.cert:
        raise clitools.CommandError("--cert is for devices; the fleet server authenticates with a password")
    out = args.out or Path(f"enroll-{name}")
    ca = None
    if args.cert:
        ca = CertificateAuthority.load_or_create(args.ca or args.data_dir / "mqtt-ca")
    try:
        result = enroll(
            name,
            out,
            kind="fleet" if args.fleet_server else "device",
            topic_root=args.topic_root,
            password_file=args.password_file,
            acl_file=args.acl_file,
            ca=ca,
            broker_url=args.broker_url,
            device_dir=args.device_dir,
        )
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
    return 0
