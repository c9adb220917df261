"""login failures: the admin sign-in throttle

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22

Written by hand to match app/models.py (LoginFailure); a new table only. Tested with the others in
tests/admin/test_migration.py (upgrade, downgrade, and no difference from the models' metadata).
"""
from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=100), nullable=False),
        sa.Column("remote_addr", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_failures")),
    )
    op.create_index(op.f("ix_login_failures_username"), "login_failures", ["username"], unique=False)
    op.create_index("ix_login_failures_remote_addr_at", "login_failures", ["remote_addr", "at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_login_failures_remote_addr_at", table_name="login_failures")
    op.drop_index(op.f("ix_login_failures_username"), table_name="login_failures")
    op.drop_table("login_failures")
