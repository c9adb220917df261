"""ownership and session revocation: jobs/batches.owner_token_id and cancel_hash, jobs.client_key
(with an index for the per-client quota), users.session_version

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-10

Written by hand to match app/core/tables.py; tested with the others in tests/admin/test_migration.py (upgrade,
downgrade, and no difference from the models' metadata). Rows created before it have no owner and no capability:
nobody can cancel them through the API or the pages any more.
"""
from alembic import op
import sqlalchemy as sa

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("batches", "jobs"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("owner_token_id", sa.Integer(), nullable=True))
            batch.add_column(sa.Column("cancel_hash", sa.String(length=64), nullable=True))
            if table == "jobs":
                batch.add_column(sa.Column("client_key", sa.String(length=80), nullable=True))
            batch.create_foreign_key(f"fk_{table}_owner_token_id_api_tokens", "api_tokens", ["owner_token_id"],
                                     ["id"], ondelete="SET NULL")
    op.create_index("ix_jobs_client_key_status", "jobs", ["client_key", "status"])
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("session_version", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("session_version")
    op.drop_index("ix_jobs_client_key_status", table_name="jobs")
    for table in ("jobs", "batches"):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"fk_{table}_owner_token_id_api_tokens", type_="foreignkey")
            if table == "jobs":
                batch.drop_column("client_key")
            batch.drop_column("cancel_hash")
            batch.drop_column("owner_token_id")
