"""checkpoints in the object store: model_versions.weights_sha256, checkpoint_key, checkpoint_files

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-02

Written by hand to match app/core/tables.py (ModelVersion); three nullable columns, so versions registered
before keep working (no hash: not verified; no key: read from checkpoint_path). It follows 0006; the number
0007 is unused (the recovery migration, written beside it, became 0009).
"""
from alembic import op
import sqlalchemy as sa

revision = "0008"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("weights_sha256", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("checkpoint_key", sa.String(length=300), nullable=True))
        batch.add_column(sa.Column("checkpoint_files", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("checkpoint_files")
        batch.drop_column("checkpoint_key")
        batch.drop_column("weights_sha256")
