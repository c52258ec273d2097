"""The project's alembic configuration, built in Python (no alembic.ini): migsafe's ``config_factory``."""

from __future__ import annotations

import os
from pathlib import Path

from alembic.config import Config

HERE = Path(__file__).parent
URL_ENV = "TASKSAPP_DATABASE_URL"


def alembic_config() -> Config:
    """Script location, version locations and URL, as the application sets them at start-up."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE / "migrations"))
    cfg.set_main_option("version_locations", str(HERE / "migrations" / "versions"))
    url = os.environ.get(URL_ENV)  # migsafe sets sqlalchemy.url itself after calling this
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg
