"""The PostgreSQL client binaries, located once.

Debian's ``/usr/bin/pg_dump`` is a Perl wrapper that costs ~75 ms a call and may pick another major
version; we call the real binaries in ``pg_config --bindir`` (or ``MIGSAFE_PG_BINDIR`` through
settings), and fall back to ``PATH``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

from .exceptions import ToolMissing


@functools.cache
def bindir(preferred: str | None = None) -> Path | None:
    if preferred:
        return Path(preferred)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
            path = Path(out.stdout.strip())
            if path.is_dir():
                return path
        except (OSError, subprocess.CalledProcessError):
            pass
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        return candidate
    return None


def tool(name: str, preferred_bindir: str | None = None) -> str:
    """Absolute path of a PostgreSQL binary (``pg_dump``, ``pg_restore``, ``initdb``, ...)."""
    directory = bindir(preferred_bindir)
    if directory and (directory / name).exists():
        return str(directory / name)
    found = shutil.which(name)
    if found:
        return found
    raise ToolMissing(
        f"{name} not found: install the PostgreSQL client tools (searched {directory} and PATH)"
    )


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a libpq tool: ours, minus any inherited PG* connection settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(extra or {})
    return env
