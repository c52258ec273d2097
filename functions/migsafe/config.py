"""Runtime settings: one pydantic model, read from the environment once, at the entry point.

Logic receives a :class:`Settings` (or the values it needs); it never reads ``os.environ``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    pg_bindir: str | None = None  # MIGSAFE_PG_BINDIR: where pg_dump/pg_restore/psql live
    runtime_dir: Path | None = None  # MIGSAFE_RUNTIME_DIR: where local scratch clusters live
    environ: dict[str, str] = {}  # the process environment, for plan values like source.dsn_env

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        return cls(
            pg_bindir=environ.get("MIGSAFE_PG_BINDIR") or None,
            runtime_dir=Path(environ["MIGSAFE_RUNTIME_DIR"]) if environ.get("MIGSAFE_RUNTIME_DIR") else None,
            environ=dict(environ),
        )
