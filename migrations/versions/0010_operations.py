"""operations: webhooks of jobs and batches (their deliveries, each token's signing key) and the workers'
status for the admin's queue page

Revision ID: 0010
Revises: 0009
Create Date: 2027-01-05

Written by hand to match app/core/tables.py (Job/Batch.webhook*, ApiToken.webhook_secret, WebhookDelivery,
WorkerStatus). Tested with the others in tests/admin/test_migration.py (upgrade, downgrade, and no difference
from the models' metadata).
"""
from alembic import op
import sqlalchemy as sa

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def _webhook_columns(table: str) -> None:
    with op.batch_alter_table(table) as batch:
        batch.add_column(sa.Column("webhook", sa.Text(), nullable=True))
        batch.add_column(sa.Column("webhook_events", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("webhook_pending", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.create_index(f"ix_{table}_webhook_pending", ["webhook_pending"], unique=False)


def upgrade() -> None:
    _webhook_columns("jobs")
    _webhook_columns("batches")
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("webhook_secret", sa.String(length=80), nullable=True))
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("batch_id", sa.String(length=36), nullable=True),
        sa.Column("event", sa.String(length=20), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_webhook_deliveries_job_id_jobs"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], name=op.f("fk_webhook_deliveries_batch_id_batches"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["token_id"], ["api_tokens.id"],
                                name=op.f("fk_webhook_deliveries_token_id_api_tokens"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint("job_id", "event", name=op.f("uq_webhook_deliveries_job_id_event")),
        sa.UniqueConstraint("batch_id", "event", name=op.f("uq_webhook_deliveries_batch_id_event")),
    )
    op.create_index(op.f("ix_webhook_deliveries_job_id"), "webhook_deliveries", ["job_id"], unique=False)
    op.create_index(op.f("ix_webhook_deliveries_batch_id"), "webhook_deliveries", ["batch_id"], unique=False)
    op.create_index("ix_webhook_deliveries_state_next", "webhook_deliveries", ["state", "next_attempt_at"],
                    unique=False)
    op.create_table(
        "worker_status",
        sa.Column("worker", sa.String(length=200), nullable=False),
        sa.Column("node", sa.String(length=200), nullable=True),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("tasks", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("worker", name=op.f("pk_worker_status")),
    )
    op.create_index(op.f("ix_worker_status_seen_at"), "worker_status", ["seen_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_worker_status_seen_at"), table_name="worker_status")
    op.drop_table("worker_status")
    op.drop_index("ix_webhook_deliveries_state_next", table_name="webhook_deliveries")
    op.drop_index(op.f("ix_webhook_deliveries_batch_id"), table_name="webhook_deliveries")
    op.drop_index(op.f("ix_webhook_deliveries_job_id"), table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("webhook_secret")
    for table in ("batches", "jobs"):
        with op.batch_alter_table(table) as batch:
            batch.drop_index(f"ix_{table}_webhook_pending")
            batch.drop_column("webhook_pending")
            batch.drop_column("webhook_events")
            batch.drop_column("webhook")
