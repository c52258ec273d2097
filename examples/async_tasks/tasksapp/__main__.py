"""The project's own CLI: ``python -m tasksapp db upgrade|downgrade REVISION`` (migsafe's ``command``)."""

from __future__ import annotations

import sys

from alembic import command

from .db import alembic_config


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "db" or argv[1] not in ("upgrade", "downgrade"):
        print("usage: python -m tasksapp db upgrade|downgrade REVISION", file=sys.stderr)
        return 2
    getattr(command, argv[1])(alembic_config(), argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
