"""Roles and credential epochs, caption review, job queues and retries, the audit log.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("role", sa.String(16), nullable=False, server_default="user"))
        batch.add_column(sa.Column("auth_epoch", sa.Integer, nullable=False, server_default="0"))
    op.execute("UPDATE users SET role = 'admin' WHERE is_admin")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("is_admin")
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("queue", sa.String(200), nullable=False, server_default="celery"))
        batch.add_column(sa.Column("retry_of", sa.String(36), nullable=True))
        batch.add_column(sa.Column("resubmitted", sa.Integer, nullable=False, server_default="0"))
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("width", sa.Integer, nullable=True))
        batch.add_column(sa.Column("height", sa.Integer, nullable=True))
        batch.add_column(sa.Column("thumbnail", sa.String(1024), nullable=True))
    with op.batch_alter_table("captions") as batch:
        batch.add_column(sa.Column("stages", sa.String(255), nullable=True))
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="generated"))
        batch.add_column(sa.Column("generated", sa.Text, nullable=True))
        batch.add_column(sa.Column("edited_by", sa.String(64), nullable=True))
        batch.add_column(sa.Column("updated_at", sa.Float, nullable=False, server_default="0"))
    op.execute("UPDATE captions SET status = 'failed' WHERE error IS NOT NULL")
    op.execute("UPDATE captions SET generated = text, updated_at = created_at")
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("user", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("result", sa.Text, nullable=False),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_at", "audit_log")
    op.drop_table("audit_log")
    with op.batch_alter_table("captions") as batch:
        for column in ("updated_at", "edited_by", "generated", "status", "stages"):
            batch.drop_column(column)
    with op.batch_alter_table("images") as batch:
        for column in ("thumbnail", "height", "width"):
            batch.drop_column(column)
    with op.batch_alter_table("jobs") as batch:
        for column in ("resubmitted", "retry_of", "queue"):
            batch.drop_column(column)
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("is_admin", sa.Boolean, nullable=False, server_default=sa.false()))
    op.execute("UPDATE users SET is_admin = (role = 'admin')")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("auth_epoch")
        batch.drop_column("role")
