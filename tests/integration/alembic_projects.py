"""Factory for small alembic projects written into a temp dir (one migration under test each)."""

from __future__ import annotations

import textwrap
from pathlib import Path

ENV_PY = """
import os
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
if os.environ.get("DATABASE_URL"):
    config.set_main_option("sqlalchemy.url", os.environ["DATABASE_URL"].replace("%", "%%"))
engine = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                            poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
"""

# `alembic init -t async`'s env.py (online part), as an asyncpg project ships it
ASYNC_ENV_PY = """
import asyncio
from alembic import context
from sqlalchemy import pool
from sqlalchemy.ext.asyncio import async_engine_from_config

config = context.config


def do_run_migrations(connection):
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations():
    connectable = async_engine_from_config(
        config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool
    )
    async with connectable.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await connectable.dispose()


asyncio.run(run_async_migrations())
"""

VERSION = """
from alembic import op

revision = {rev!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
{up}


def downgrade():
{down_body}
"""


def _body(statements: list[str]) -> str:
    if not statements:
        return "    pass"
    return "\n".join(f"    op.execute({s!r})" for s in statements)


def write_project(
    root: Path,
    upgrade: list[str],
    downgrade: list[str],
    baseline: str = "0001_baseline",
    env_py: str = ENV_PY,
) -> Path:
    """A project with the baseline revision (already applied to the source) and 0002_change on top."""
    versions = root / "migrations" / "versions"
    versions.mkdir(parents=True)
    (root / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/migrations\nsqlalchemy.url = postgresql+psycopg://nowhere/db\n"
    )
    (root / "migrations" / "env.py").write_text(textwrap.dedent(env_py))
    (versions / "0001_baseline.py").write_text(
        VERSION.format(rev=baseline, down=None, up=_body([]), down_body=_body([]))
    )
    (versions / "0002_change.py").write_text(
        VERSION.format(rev="0002_change", down=baseline, up=_body(upgrade), down_body=_body(downgrade))
    )
    return root / "alembic.ini"
