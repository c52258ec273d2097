"""US-6: upper-case the applicationtype and invitationstatus enum values.

Done the way the seed's team did it -- a new type and ALTER COLUMN ... TYPE ... USING -- which
rewrites both tables under ACCESS EXCLUSIVE; the rehearsal measures how long that holds the lock.
(``ALTER TYPE ... RENAME VALUE`` would avoid the rewrite; see docs/rollback-runbook.md.)

Revision ID: 0002_uppercase_enums
Revises: 0001_baseline
"""

from alembic import op

revision = "0002_uppercase_enums"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def _convert(typename: str, labels: list[str], columns: list[tuple[str, str, str | None]], fn: str) -> None:
    values = ", ".join(f"'{v}'" for v in labels)
    op.execute(f"CREATE TYPE {typename}_new AS ENUM ({values})")
    for table, column, default in columns:
        if default is not None:
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} DROP DEFAULT")
        op.execute(
            f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {typename}_new USING {fn}({column}::text)::{typename}_new"
        )
        if default is not None:
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET DEFAULT '{default}'")
    op.execute(f"DROP TYPE {typename}")
    op.execute(f"ALTER TYPE {typename}_new RENAME TO {typename}")


APPS = ["market_edge", "causal_edge", "value_edge"]
STATUSES = ["pending", "accepted", "expired", "revoked"]
APP_COLUMNS = [("user_application_access", "application", None), ("user_invitations", "application", None)]


def upgrade() -> None:
    _convert("applicationtype", [a.upper() for a in APPS], APP_COLUMNS, "upper")
    _convert(
        "invitationstatus",
        [s.upper() for s in STATUSES],
        [("user_invitations", "status", "PENDING")],
        "upper",
    )


def downgrade() -> None:
    _convert("applicationtype", APPS, APP_COLUMNS, "lower")
    _convert("invitationstatus", STATUSES, [("user_invitations", "status", "pending")], "lower")
