"""Broker credentials: per-device passwords or client certificates, Mosquitto password and ACL entries.

``fleet devices enroll DEVICE`` (fleet_server/cli_enroll.py) is the shell around this module. What a
device may do on the broker is decided here, once, as an ACL block::

    user robot-1
    topic write lineside/v1/devices/robot-1/state
    topic write lineside/v1/devices/robot-1/telemetry
    topic write lineside/v1/devices/robot-1/events
    topic write lineside/v1/devices/robot-1/decisions
    topic read lineside/v1/devices/robot-1/cmd

and the fleet server's own user reads every device channel and writes only ``cmd`` topics. A device
therefore cannot publish as another device, read another device's commands, or command anyone.

Passwords go into Mosquitto's own password-file format (PBKDF2-SHA512, ``$7$``): through the
``mosquitto_passwd`` binary when it is installed, otherwise computed here (tested against a real
Mosquitto). Client certificates come from a CA the fleet server holds (created on first use);
the broker then takes the certificate's common name as the user name (``use_identity_as_username``).

The text transformations (hash lines, ACL blocks, merging them into existing files) are pure
functions; only :func:`write_private` / :func:`write_public` / :func:`write_broker_file` and the CA
touch the disk. The broker's own files keep their owner and mode (:func:`broker_file_ownership`).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.messages import DEFAULT_TOPIC_ROOT, valid_device_id
from lineside_common.atomic import atomic_write_bytes
from lineside_common.errors import ConfigError

FLEET_USER = "lineside-fleet"
# What a device publishes; it reads only its own cmd topic.
DEVICE_WRITE_CHANNELS: tuple[str, ...] = ("state", "telemetry", "events", "decisions")
DEVICE_READ_CHANNELS: tuple[str, ...] = ("cmd",)
# Truth about a device's decisions comes from another principal (a line checker, or the fleet
# server relaying an operator's POST /api/v1/truth): a robot reads its truth topic, never writes it,
# since forged truth would steer the correctness gates.
TRUTH_CHANNEL = "truth"
# Mosquitto 2.0's own defaults for the $7$ format (mosquitto_passwd writes exactly these).
PBKDF2_ITERATIONS = 101
_SALT_BYTES = 12
_HASH_BYTES = 64
CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"


# -- passwords --------------------------------------------------------------------------------------


def generate_password(nbytes: int = 32) -> str:
    """A random password with ``nbytes`` of entropy (URL-safe text, no quoting problems in TOML)."""
    return secrets.token_urlsafe(nbytes)


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """Mosquitto's ``$7$`` hash: ``$7$ITERATIONS$base64(salt)$base64(pbkdf2_sha512(password, salt))``."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, _HASH_BYTES)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash (constant-time comparison)."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[1] != "7" or not parts[2].isdigit():
        return False
    try:
        salt, want = base64.b64decode(parts[3], validate=True), base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]), len(want))
    return hmac.compare_digest(got, want)


def password_line(username: str, password: str, *, use_binary: bool = True) -> str:
    """One password-file line ``username:$7$...``; via ``mosquitto_passwd`` when installed and asked."""
    binary = shutil.which("mosquitto_passwd") if use_binary else None
    if binary is None:
        return f"{username}:{hash_password(password)}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "passwd"
        # -b puts the password on the command line of a short-lived child: visible in /proc to this
        # user only for an instant; acceptable on the operator's machine, never on a shared host.
        cp = subprocess.run(
            [binary, "-c", "-b", str(path), username, password],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if cp.returncode != 0 or not path.exists():
            return f"{username}:{hash_password(password)}"
        return path.read_text().strip().splitlines()[0]


def merge_password_file(text: str, line: str) -> str:
    """``text`` with ``line``'s user replaced (or added); other users' lines kept as they were."""
    user = line.split(":", 1)[0]
    kept = [ln for ln in text.splitlines() if ln.strip() and ln.split(":", 1)[0] != user]
    return "\n".join([*kept, line]) + "\n"


# -- ACLs -------------------------------------------------------------------------------------------


def device_acl(device_id: str, topic_root: str = DEFAULT_TOPIC_ROOT) -> str:
    """The ACL block of one device: write its own channels, read its own cmd topic, nothing else."""
    base = f"{topic_root}/devices/{device_id}"
    lines = [f"# lineside device {device_id}", f"user {device_id}"]
    lines += [f"topic write {base}/{ch}" for ch in DEVICE_WRITE_CHANNELS]
    lines += [f"topic read {base}/{ch}" for ch in DEVICE_READ_CHANNELS]
    # The line's state, published (retained) by the line controller's own broker user, which needs
    # "topic write {root}/devices/+/line" (or the robots of its line); see docs/robot-side.md.
    lines.append(f"topic read {base}/line")
    lines.append(f"topic read {base}/{TRUTH_CHANNEL}")
    return "\n".join(lines) + "\n"


def checker_acl(username: str, topic_root: str = DEFAULT_TOPIC_ROOT) -> str:
    """A line checker's block: read every device's decisions, write every device's truth topic."""
    base = f"{topic_root}/devices/+"
    lines = [f"# lineside line checker {username}", f"user {username}"]
    lines += [f"topic read {base}/decisions", f"topic write {base}/{TRUTH_CHANNEL}"]
    return "\n".join(lines) + "\n"


def fleet_acl(username: str = FLEET_USER, topic_root: str = DEFAULT_TOPIC_ROOT) -> str:
    """The fleet server's block: read every device's channels, write only cmd topics."""
    base = f"{topic_root}/devices/+"
    lines = [f"# lineside fleet server {username}", f"user {username}"]
    lines += [f"topic read {base}/{ch}" for ch in DEVICE_WRITE_CHANNELS]
    lines += [f"topic write {base}/{ch}" for ch in DEVICE_READ_CHANNELS]
    # It relays truth posted over HTTP (a truth-role token) to the device that decided.
    lines.append(f"topic write {base}/{TRUTH_CHANNEL}")
    return "\n".join(lines) + "\n"


def _acl_blocks(text: str) -> tuple[list[str], list[tuple[str | None, list[str]]]]:
    """Split an ACL file into its header (rules for everyone) and per-``user``/``pattern`` blocks."""
    header: list[str] = []
    blocks: list[tuple[str | None, list[str]]] = []
    pending_comments: list[str] = []
    for ln in text.splitlines():
        s = ln.strip()
        if s.startswith("user ") or s.startswith("pattern "):
            user = s.split(None, 1)[1].strip() if s.startswith("user ") else None
            blocks.append((user, [*pending_comments, ln]))
            pending_comments = []
        elif not s or s.startswith("#"):
            # Comments just before a block belong to it (our blocks start with one).
            if s:
                pending_comments.append(ln)
        elif blocks:
            blocks[-1][1].extend([*pending_comments, ln])
            pending_comments = []
        else:
            header.extend([*pending_comments, ln])
            pending_comments = []
    if pending_comments:
        (blocks[-1][1] if blocks else header).extend(pending_comments)
    return header, blocks


def merge_acl(text: str, block: str) -> str:
    """``text`` with the ``user`` block in ``block`` replaced (or appended); other blocks untouched."""
    _, new_blocks = _acl_blocks(block)
    users = {u for u, _ in new_blocks}
    header, blocks = _acl_blocks(text)
    kept = [lines for u, lines in blocks if u is None or u not in users]
    parts = ["\n".join(header)] if header else []
    parts += ["\n".join(lines) for lines in kept]
    parts += ["\n".join(lines) for _, lines in new_blocks]
    return "\n\n".join(parts) + "\n"


def acl_users(text: str) -> set[str]:
    """The user names that have a block in an ACL file."""
    return {u for u, _ in _acl_blocks(text)[1] if u is not None}


def acl_user_kind(text: str, username: str) -> str | None:
    """``"fleet"`` if ``username``'s ACL block writes every device's cmd topic (a fleet server),
    ``"device"`` if it has another block, None if it has none."""
    for user, lines in _acl_blocks(text)[1]:
        if user == username:
            rules = [ln.split() for ln in lines if ln.strip().startswith("topic ")]
            fleet = any(r[1:2] == ["write"] and r[-1].endswith("/devices/+/cmd") for r in rules)
            if fleet:
                return "fleet"
            truth = any(r[1:2] == ["write"] and r[-1].endswith(f"/devices/+/{TRUTH_CHANNEL}") for r in rules)
            return "checker" if truth else "device"
    return None


# -- files ------------------------------------------------------------------------------------------


def write_private(path: Path, data: str | bytes) -> Path:
    """Write a secret (password, private key): mode 0600, temp file + fsync + rename."""
    atomic_write_bytes(path, data.encode() if isinstance(data, str) else data, mode=0o600)
    return path


def write_public(path: Path, data: str | bytes) -> Path:
    """Write a non-secret file (certificate, ACL, config snippet): mode 0644, atomically."""
    atomic_write_bytes(path, data.encode() if isinstance(data, str) else data, mode=0o644)
    return path


@dataclass(frozen=True)
class FileOwnership:
    """Who owns a file and its permission bits (``stat``'s ``st_uid``, ``st_gid``, mode & 0o7777)."""

    uid: int
    gid: int
    mode: int


def broker_file_ownership(
    existing: FileOwnership | None, directory: FileOwnership, *, euid: int
) -> FileOwnership:
    """Owner and mode for a broker file enroll (re)writes (issue 13, hole 6).

    An existing file keeps its owner, group and mode exactly: Mosquitto runs as its own user and
    re-reads ``password_file``/``acl_file`` on SIGHUP, so a file rewritten as root 0600 takes every
    client offline at the next reload. A new file takes its directory's owner (when we run as root,
    else ourselves) and group: in the documented ``mosquitto:mosquitto 0700`` directory it is
    ``mosquitto:mosquitto 0600``, what Mosquitto 2.0.18+ asks for; in a directory its group may
    enter (e.g. ``root:mosquitto 0750``) it is 0640, so the broker's group can read it. Never
    readable by others.
    """
    if existing is not None:
        return existing
    mode = 0o640 if directory.mode & 0o010 else 0o600
    return FileOwnership(directory.uid if euid == 0 else euid, directory.gid, mode)


def _ownership(path: Path) -> FileOwnership:
    st = path.stat()
    return FileOwnership(st.st_uid, st.st_gid, st.st_mode & 0o7777)


def write_broker_file(path: Path, data: str) -> Path:
    """Rewrite a Mosquitto password or ACL file atomically, keeping its owner, group and mode.

    A symlink is followed (the target is replaced, the link kept). If the owner cannot be kept
    (not root), nothing is written and ``PermissionError`` says so.
    """
    path = path.resolve()
    existing = _ownership(path) if path.exists() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    want = broker_file_ownership(existing, _ownership(path.parent), euid=os.geteuid())
    try:
        atomic_write_bytes(path, data.encode(), mode=want.mode, owner=(want.uid, want.gid))
    except PermissionError as exc:
        if existing is not None:
            raise PermissionError(
                exc.errno,
                f"cannot keep the owner ({want.uid}:{want.gid}) of {path}: run enroll as root or as"
                " that user",
            ) from exc
        # A new file whose directory group we are not in: ours, still not world-readable.
        atomic_write_bytes(path, data.encode(), mode=want.mode)
    return path


# -- certificates -----------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Lineside"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class IssuedCert:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes


class CertificateAuthority:
    """The fleet's MQTT CA: an EC P-256 key and a self-signed certificate in ``directory``.

    ``ca.key`` is 0600 and never leaves the fleet server's data directory (or the ``--ca`` folder).
    """

    def __init__(self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.directory = directory
        self.cert = cert
        self.key = key

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def load_or_create(
        cls, directory: Path, *, common_name: str = "Lineside fleet CA", days: int = 3650
    ) -> CertificateAuthority:
        """Open the CA in ``directory``, creating it on first use."""
        cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
        if cert_path.exists() and key_path.exists():
            try:
                cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
                key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot read the CA in {directory}: {exc}") from exc
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ConfigError(f"{key_path} is not an EC private key")
            return cls(directory, cert, key)
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        write_private(key_path, _key_pem(key))
        write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return cls(directory, cert, key)

    def issue(
        self, common_name: str, *, server_hosts: list[str] | None = None, days: int = 825
    ) -> IssuedCert:
        """A leaf certificate: a client certificate for ``common_name``, or with ``server_hosts`` a
        server certificate whose SubjectAltNames are those DNS names / IP addresses."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if server_hosts:
            sans: list[x509.GeneralName] = []
            for h in server_hosts:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(h)))
                except ValueError:
                    sans.append(x509.DNSName(h))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return IssuedCert(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


# -- enrollment -------------------------------------------------------------------------------------


@dataclass
class Enrollment:
    """What ``enroll`` produced. ``password`` is set only for password enrollments (shown once)."""

    username: str
    kind: str  # "device" or "fleet"
    auth: str  # "password" or "certificate"
    password: str | None
    password_line: str | None
    acl: str
    files: dict[str, Path] = field(default_factory=dict)

    def public_dict(self) -> dict[str, object]:
        """A JSON-able summary without the password itself (it is in the 0600 file)."""
        return {
            "username": self.username,
            "kind": self.kind,
            "auth": self.auth,
            "password_line": self.password_line,
            "acl": self.acl,
            "files": {k: str(v) for k, v in self.files.items()},
        }


def _broker_snippet(username: str, broker_url: str, device_dir: str, *, cert: bool) -> str:
    lines = [
        f"# [broker] section for {username}'s agent.toml; copy the files next to it into {device_dir}.",
        "[broker]",
        f'url = "{broker_url}"',
    ]
    if not cert:
        lines += [f'username = "{username}"', f'password_file = "{device_dir}/{username}.password"']
    lines += ["", "[broker.tls]", "enabled = true", f'ca_file = "{device_dir}/{CA_CERT_FILE}"']
    if cert:
        lines += [f'cert_file = "{device_dir}/{username}.crt"', f'key_file = "{device_dir}/{username}.key"']
    return "\n".join(lines) + "\n"


def enroll(
    username: str,
    out_dir: Path,
    *,
    kind: str = "device",
    topic_root: str = DEFAULT_TOPIC_ROOT,
    password_file: Path | None = None,
    acl_file: Path | None = None,
    ca: CertificateAuthority | None = None,
    broker_url: str = "mqtts://broker:8883",
    device_dir: str = "/etc/lineside",
    fleet_user: str = FLEET_USER,
    use_binary: bool = True,
) -> Enrollment:
    """Issue credentials for a device (or, ``kind="fleet"``, for the fleet server itself).

    Writes into ``out_dir``: ``NAME.password`` (0600) or, with ``ca``, ``NAME.key`` (0600) +
    ``NAME.crt`` + ``ca.crt``; ``NAME.broker.toml`` (device) or ``NAME.env`` (fleet, 0600);
    and the broker entries: merged into ``password_file``/``acl_file`` when given (the fleet
    user's block is always kept in the ACL), else ``NAME.mosquitto-passwd``/``NAME.mosquitto-acl``.
    """
    if kind not in ("device", "fleet", "checker"):
        raise ValueError(f"kind must be device, fleet or checker, not {kind!r}")
    if not valid_device_id(username):
        raise ConfigError(f"{username!r} is not a valid device id (1-64 letters, digits, '.', '_', '-')")
    if kind == "device" and username == fleet_user:
        raise ConfigError(f"{username!r} is the fleet server's own broker user; pick another device id")
    acl = (
        device_acl(username, topic_root)
        if kind == "device"
        else checker_acl(username, topic_root)
        if kind == "checker"
        else fleet_acl(username, topic_root)
    )
    if acl_file is not None and acl_file.exists():
        # Re-enrolling rotates a password; it must not turn a fleet server's user into a device's
        # (which would cut that replica off every device channel) or a device into a fleet server.
        existing = acl_user_kind(acl_file.read_text(), username)
        if existing is not None and existing != kind:
            what = {"fleet": "a fleet server", "checker": "a line checker"}.get(existing, "a device")
            raise ConfigError(
                f"{username!r} is already enrolled as {what} in {acl_file}; "
                + ("add --fleet-server" if existing == "fleet" else "pick another name")
            )
    result = Enrollment(
        username=username, kind=kind, auth="password", password=None, password_line=None, acl=acl
    )
    files = result.files
    if ca is not None:
        result.auth = "certificate"
        issued = ca.issue(username)
        files["key"] = write_private(out_dir / f"{username}.key", issued.key_pem)
        files["cert"] = write_public(out_dir / f"{username}.crt", issued.cert_pem)
        files["ca"] = write_public(out_dir / CA_CERT_FILE, ca.cert_pem)
    else:
        result.password = generate_password()
        result.password_line = password_line(username, result.password, use_binary=use_binary)
        files["password"] = write_private(out_dir / f"{username}.password", result.password + "\n")
    if kind in ("device", "checker"):
        files["broker_config"] = write_public(
            out_dir / f"{username}.broker.toml",
            _broker_snippet(username, broker_url, device_dir, cert=ca is not None),
        )
    elif result.password is not None:
        # For systemd's EnvironmentFile=: fleet serve reads the password from the 0600 file, so the
        # secret itself is not in the process environment.
        env = (
            f"LINESIDE_FLEET_BROKER_USERNAME={username}\n"
            f"LINESIDE_FLEET_BROKER_PASSWORD_FILE={files['password'].resolve()}\n"
        )
        files["env"] = write_private(out_dir / f"{username}.env", env)
    if result.password_line is not None:
        if password_file is not None:
            old = password_file.read_text() if password_file.exists() else ""
            files["mosquitto_password_file"] = write_broker_file(
                password_file, merge_password_file(old, result.password_line)
            )
        else:
            files["mosquitto_passwd"] = write_private(
                out_dir / f"{username}.mosquitto-passwd", result.password_line + "\n"
            )
    if acl_file is not None:
        old = acl_file.read_text() if acl_file.exists() else ""
        merged = merge_acl(old, acl)
        if fleet_user not in acl_users(merged):
            merged = merge_acl(merged, fleet_acl(fleet_user, topic_root))
        files["mosquitto_acl_file"] = write_broker_file(acl_file, merged)
    else:
        files["mosquitto_acl"] = write_public(out_dir / f"{username}.mosquitto-acl", acl)
    return result


__all__ = [
    "DEVICE_READ_CHANNELS",
    "DEVICE_WRITE_CHANNELS",
    "FLEET_USER",
    "CertificateAuthority",
    "Enrollment",
    "FileOwnership",
    "IssuedCert",
    "acl_user_kind",
    "acl_users",
    "broker_file_ownership",
    "device_acl",
    "enroll",
    "fleet_acl",
    "generate_password",
    "hash_password",
    "merge_acl",
    "merge_password_file",
    "password_line",
    "verify_password",
    "write_broker_file",
    "write_private",
    "write_public",
]
