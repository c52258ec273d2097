"""Search deployments by name (a pg_trgm GIN index) and record their owner (a citext column)."""

from alembic import op

revision = "0003_deployment_search"
down_revision = "0002_archive_completed_runs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX ix_deployments_name_trgm ON deployments USING gin (name gin_trgm_ops)")
    op.execute("ALTER TABLE deployments ADD COLUMN owner_email citext")


def downgrade() -> None:
    op.execute("ALTER TABLE deployments DROP COLUMN owner_email")
    op.execute("DROP INDEX ix_deployments_name_trgm")
