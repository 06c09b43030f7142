"""Bearer tokens: random 32 bytes, stored as their SHA-256; roles ``admin`` (everything), ``viewer``
(read) and ``device`` (one robot's download credential: TUF targets and nothing else).

``/healthz``, ``/metrics`` and the TUF metadata are open (signed; anyone may fetch it). The TUF
targets (the bundles: the plant's models) need any token; everything under ``/api/v1`` needs an
admin or viewer token, writes an admin one. Device tokens are issued per device by
:mod:`fleet_server.device_tokens`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from typing import Literal

from sqlalchemy import select

from fleet_server.db import Database, TokenRow, utcnow

log = logging.getLogger(__name__)

Role = Literal["admin", "viewer", "device", "truth"]
# ``truth``: a line checker's or labelling tool's credential; it may post truth about decisions
# (POST /api/v1/truth) and nothing else. A robot's ``device`` token never can (forged truth would
# steer the correctness gates).
ROLES: tuple[Role, ...] = ("admin", "viewer", "device", "truth")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh token: 32 random bytes, URL-safe; prefixed so it is recognisable in a leak scan."""
    return "lsf_" + secrets.token_urlsafe(32)


def create_token(db: Database, role: Role, name: str = "") -> str:
    """Store a new token's hash; return the token (shown once, never stored)."""
    token = new_token()
    add_token(db, token, role, name)
    return token


def add_token(db: Database, token: str, role: Role, name: str = "") -> None:
    """Store the hash of a given token (the bootstrap admin token from settings); idempotent."""
    digest = hash_token(token)
    with db.session() as s:
        if s.scalar(select(TokenRow).where(TokenRow.sha256 == digest)) is None:
            s.add(TokenRow(sha256=digest, role=role, name=name, created_at=utcnow()))


def has_admin(db: Database) -> bool:
    with db.session() as s:
        return s.scalar(select(TokenRow.id).where(TokenRow.role == "admin").limit(1)) is not None


def role_of(db: Database, token: str) -> Role | None:
    """The role of a presented token, or None."""
    digest = hash_token(token)
    with db.session() as s:
        row = s.scalar(select(TokenRow).where(TokenRow.sha256 == digest))
    # The lookup is by hash (an index), so timing reveals nothing about other tokens' values;
    # compare_digest keeps the final check constant-time anyway.
    if row is None or not hmac.compare_digest(row.sha256, digest):
        return None
    return row.role if row.role in ROLES else None


def list_tokens(db: Database) -> list[dict[str, object]]:
    with db.session() as s:
        rows = s.scalars(select(TokenRow).order_by(TokenRow.id)).all()
        return [
            {
                "id": r.id,
                "role": r.role,
                "name": r.name,
                "created_at": r.created_at,
                "sha256_prefix": r.sha256[:8],
            }
            for r in rows
        ]
