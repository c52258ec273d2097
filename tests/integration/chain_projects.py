"""Factory for alembic projects with a chain of revisions, whose env.py also runs offline (``--sql``)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from alembic_projects import VERSION, _body

ENV_PY = """
import os
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
if os.environ.get("DATABASE_URL"):
    config.set_main_option("sqlalchemy.url", os.environ["DATABASE_URL"].replace("%", "%%"))

if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                                poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()
"""

def write_chain(
    root: Path, steps: list[tuple[list[str], list[str]]], baseline: str = "0001_baseline"
) -> Path:
    """``baseline`` (empty, already applied to the source) then one revision per (upgrade, downgrade)."""
    versions = root / "migrations" / "versions"
    versions.mkdir(parents=True)
    (root / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/migrations\nsqlalchemy.url = postgresql+psycopg://nowhere/db\n"
    )
    (root / "migrations" / "env.py").write_text(textwrap.dedent(ENV_PY))
    (versions / f"{baseline}.py").write_text(
        VERSION.format(rev=baseline, down=None, up=_body([]), down_body=_body([]))
    )
    down = baseline
    for i, (up, back) in enumerate(steps, start=2):
        rev = f"{i:04d}_step"
        (versions / f"{rev}.py").write_text(
            VERSION.format(rev=rev, down=down, up=_body(up), down_body=_body(back))
        )
        down = rev
    return root / "alembic.ini"
