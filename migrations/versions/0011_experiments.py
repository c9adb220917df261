"""experiments: the papers' experiments (compare, attribute sweep, interpolate) as groups of ordinary jobs

Revision ID: 0011
Revises: 0010
Create Date: 2027-01-12

Written by hand to match app/core/tables.py (Experiment, Job.experiment_id/experiment_index/operation). Tested
with the others in tests/admin/test_migration.py (upgrade, downgrade, and no difference from the models'
metadata).
"""
from alembic import op
import sqlalchemy as sa

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("owner_token_id", sa.Integer(), nullable=True),
        sa.Column("cancel_hash", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["owner_token_id"], ["api_tokens.id"],
                                name=op.f("fk_experiments_owner_token_id_api_tokens"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiments")),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("experiment_id", sa.String(length=36), nullable=True))
        batch.add_column(sa.Column("experiment_index", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("operation", sa.JSON(), nullable=True))
        batch.create_index(op.f("ix_jobs_experiment_id"), ["experiment_id"], unique=False)
        batch.create_foreign_key(op.f("fk_jobs_experiment_id_experiments"), "experiments", ["experiment_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("fk_jobs_experiment_id_experiments"), type_="foreignkey")
        batch.drop_index(op.f("ix_jobs_experiment_id"))
        batch.drop_column("operation")
        batch.drop_column("experiment_index")
        batch.drop_column("experiment_id")
    op.drop_table("experiments")
