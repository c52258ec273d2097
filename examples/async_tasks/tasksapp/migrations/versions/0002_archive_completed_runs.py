"""Move completed flow runs to the archive table. The downgrade leaves them there (on purpose)."""

from alembic import op

revision = "0002_archive_completed_runs"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "INSERT INTO flow_run_archive (id, deployment_id, name, state, created) "
        "SELECT id, deployment_id, name, state, created FROM flow_runs WHERE state = 'COMPLETED'"
    )
    op.execute("DELETE FROM flow_runs WHERE state = 'COMPLETED'")


def downgrade() -> None:
    pass  # archived runs stay archived: the plan declares it with [[expect]]
