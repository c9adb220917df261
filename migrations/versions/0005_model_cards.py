"""model cards: model_versions.card, what a model's card.json says

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

Written by hand to match app/core/tables.py (ModelVersion.card); one nullable JSON column. Tested with the
others in tests/admin/test_migration.py (upgrade, downgrade, and no difference from the models' metadata).
"""
from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("card", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("card")
