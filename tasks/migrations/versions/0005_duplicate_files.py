"""Duplicate files: a file whose bytes another file already holds is recorded with the file it
repeats, instead of being dropped without a trace and fetched again every night.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "duplicate_files",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=True),
        sa.Column("etag", sa.String(128), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("original_uri", sa.Text, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id"), nullable=True),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("uri", "model_version", name="uq_duplicate_uri_model"),
    )


def downgrade() -> None:
    op.drop_table("duplicate_files")
