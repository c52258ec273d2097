"""Baseline: the schema as it is in production before US-6 (see ../schema.sql).

Revision ID: 0001_baseline
Revises:
"""

from pathlib import Path

from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute((Path(__file__).resolve().parents[2] / "schema.sql").read_text())


def downgrade() -> None:
    op.execute("DROP TABLE user_invitations, user_application_access, users")
    op.execute("DROP TYPE invitationstatus, applicationtype")
