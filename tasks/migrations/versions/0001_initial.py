"""Initial schema: telegrams, official results, runs, readings.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "telegrams",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("mesa_code", sa.String(32), nullable=False, unique=True),
        sa.Column("distrito", sa.Integer(), nullable=False),
        sa.Column("seccion", sa.Integer(), nullable=False),
        sa.Column("circuito", sa.String(16), nullable=False),
        sa.Column("mesa", sa.Integer(), nullable=False),
        sa.Column("template", sa.String(64), nullable=False),
        sa.Column("scan_uri", sa.Text(), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_telegrams_content_hash", "telegrams", ["content_hash"])
    op.create_table(
        "official_results",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("telegram_id", sa.Integer(), sa.ForeignKey("telegrams.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("cell_id", sa.String(64), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(256), nullable=False),
        sa.UniqueConstraint("telegram_id", "cell_id", name="uq_official_cell"),
    )
    op.create_index("ix_official_results_telegram_id", "official_results", ["telegram_id"])
    op.create_table(
        "runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("flow", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=True),
        sa.Column("template", sa.String(64), nullable=True),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "readings",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("telegram_id", sa.Integer(), sa.ForeignKey("telegrams.id", ondelete="SET NULL"),
                  nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("scan_uri", sa.Text(), nullable=False),
        sa.Column("template", sa.String(64), nullable=False),
        sa.Column("cell_id", sa.String(64), nullable=False),
        sa.Column("value", sa.Integer(), nullable=True),
        sa.Column("digits", sa.String(32), nullable=False),
        sa.Column("digit_probs", sa.JSON(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("content_hash", "cell_id", "model_version", name="uq_reading"),
    )
    op.create_index("ix_readings_telegram_id", "readings", ["telegram_id"])
    op.create_index("ix_readings_run_id", "readings", ["run_id"])


def downgrade() -> None:
    op.drop_table("readings")
    op.drop_table("runs")
    op.drop_table("official_results")
    op.drop_table("telegrams")
