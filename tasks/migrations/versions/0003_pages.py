"""Pages: a multi-page TIFF or PDF holds one telegram per page, so scans and readings are
keyed by (file content hash, page) and every reading names the page it came from. Existing
rows are page 1 of 1.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scans") as batch:
        batch.add_column(sa.Column("page", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("pages", sa.Integer(), nullable=False, server_default="1"))
        batch.drop_constraint("uq_scan_model", type_="unique")
        batch.create_unique_constraint("uq_scan_page_model", ["content_hash", "page", "model_version"])
    with op.batch_alter_table("readings") as batch:
        batch.add_column(sa.Column("page", sa.Integer(), nullable=False, server_default="1"))
        batch.drop_constraint("uq_reading", type_="unique")
        batch.create_unique_constraint("uq_reading_page",
                                       ["content_hash", "page", "cell_id", "model_version"])


def downgrade() -> None:
    with op.batch_alter_table("readings") as batch:
        batch.drop_constraint("uq_reading_page", type_="unique")
        batch.create_unique_constraint("uq_reading", ["content_hash", "cell_id", "model_version"])
        batch.drop_column("page")
    with op.batch_alter_table("scans") as batch:
        batch.drop_constraint("uq_scan_page_model", type_="unique")
        batch.create_unique_constraint("uq_scan_model", ["content_hash", "model_version"])
        batch.drop_column("pages")
        batch.drop_column("page")
