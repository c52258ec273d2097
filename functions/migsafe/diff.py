"""Compare a backup with the live tables by primary key (the seed's scenario D, delayed discovery)."""

from __future__ import annotations

from collections.abc import Sequence

from .dsn import Dsn
from .models import DiffReport
from .store import Store


def run_diff(store: Store, backup_id: str, target: Dsn, tables: Sequence[str] | None = None, *,
             jobs: int | None = None) -> DiffReport:
    """Load the backup into a staging schema and count rows only in it, only in the target, changed."""
    raise NotImplementedError
