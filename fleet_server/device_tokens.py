"""Device tokens: each robot's own HTTP credential, for downloading TUF targets (the bundles).

Why a bearer token and not the robot's MQTT client certificate: devices enrolled with a password
have no certificate, the fleet server's HTTP listener may sit behind a TLS-terminating proxy that
does not forward client certificates, and a token is revoked or rotated by one database row
without a CRL. A device token is stored hashed like the operators' tokens (role ``device``, the
token row's name is the device id), is shown once when issued, and opens only ``/tuf/targets/``:
every ``/api/v1`` route answers 403 to it.

Issuing again rotates: the device's previous token stops working at once. Robots enrolled before
device tokens existed get theirs with ``fleet devices token DEVICE``.
"""

from __future__ import annotations

from sqlalchemy import delete, select

from fleet_server import auth
from fleet_server.db import Database, TokenRow, utcnow

DEVICE_ROLE: auth.Role = "device"


def issue(db: Database, device_id: str) -> str:
    """A new token for ``device_id``; its previous ones are revoked in the same transaction."""
    token = auth.new_token()
    with db.session() as s:
        s.execute(delete(TokenRow).where(TokenRow.role == DEVICE_ROLE, TokenRow.name == device_id))
        s.add(TokenRow(sha256=auth.hash_token(token), role=DEVICE_ROLE, name=device_id, created_at=utcnow()))
    return token


def revoke(db: Database, device_id: str) -> int:
    """Revoke every token of ``device_id``; how many there were."""
    with db.session() as s:
        res = s.execute(delete(TokenRow).where(TokenRow.role == DEVICE_ROLE, TokenRow.name == device_id))
        return int(getattr(res, "rowcount", 0) or 0)


def has_token(db: Database, device_id: str) -> bool:
    with db.session() as s:
        row = s.scalar(
            select(TokenRow.id).where(TokenRow.role == DEVICE_ROLE, TokenRow.name == device_id).limit(1)
        )
    return row is not None
