"""worker nodes and fair share: the heartbeat of each worker's main process with the main process that
claimed each job (a pool process that died alone is charged to its job, a worker killed whole is not), and an
index on jobs.started_at for each client's recently claimed jobs (the lanes' fair share)

Revision ID: 0012
Revises: 0011
Create Date: 2027-01-13

Written by hand to match app/core/tables.py (WorkerNode, Job.worker_main, ix_jobs_started_at). Tested with the
others in tests/admin/test_migration.py (upgrade, downgrade, and no difference from the models' metadata).
"""
from alembic import op
import sqlalchemy as sa

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_nodes",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worker_nodes")),
    )
    op.create_index(op.f("ix_worker_nodes_seen_at"), "worker_nodes", ["seen_at"], unique=False)
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("worker_main", sa.String(length=40), nullable=True))
        batch.create_index("ix_jobs_started_at", ["started_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_started_at")
        batch.drop_column("worker_main")
    op.drop_index(op.f("ix_worker_nodes_seen_at"), table_name="worker_nodes")
    op.drop_table("worker_nodes")
