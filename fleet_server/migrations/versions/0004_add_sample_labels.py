"""Sample labels: what a frame really shows, who said so and when (issue 17).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 16:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("samples") as batch:
        batch.add_column(sa.Column("true_label", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("labelled_by", sa.String(length=64), nullable=True))
        batch.create_index("ix_samples_true_label", ["true_label"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("samples") as batch:
        batch.drop_index("ix_samples_true_label")
        batch.drop_column("labelled_by")
        batch.drop_column("labelled_at")
        batch.drop_column("true_label")
