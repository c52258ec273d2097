"""Helpers shared by the tests (importable as ``pgsupport``; conftest files are not modules to import)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "functions") not in sys.path:
    sys.path[:0] = [str(ROOT / "functions"), str(ROOT)]

from migsafe.dsn import Dsn  # noqa: E402

from examples.enum_uppercase import seed  # noqa: E402

EVENTS = Path(__file__).parent / "events"


@dataclass
class Database:
    name: str
    dsn: Dsn

    @property
    def conninfo(self) -> str:
        return self.dsn.conninfo()

    @property
    def url(self) -> str:
        return self.dsn.url()

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.conninfo, autocommit=True)

    def scalar(self, query: str, params: tuple = ()) -> object:
        with self.connect() as conn:
            row = conn.execute(query, params).fetchone()
            return row[0] if row else None


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def table_fingerprints(db: Database, tables: list[str]) -> dict[str, tuple[int, str]]:
    """Row count and content fingerprint of each table, computed in the database."""
    from migsafe import catalog
    from migsafe.identifiers import QualifiedName

    with db.connect() as conn:
        return {
            t: (
                catalog.count_rows(conn, QualifiedName.parse(t)),
                catalog.fingerprint(conn, QualifiedName.parse(t)),
            )
            for t in tables
        }


def write_plan(
    path: Path, db: Database, store_url: str, tables: list[str] | None = None, extra: str = ""
) -> Path:
    tables = tables or seed.TABLES
    listed = ", ".join(f'"{t}"' for t in tables)
    path.write_text(
        f'[source]\ndsn = "{db.url}"\ntables = [{listed}]\n\n[store]\nurl = "{store_url}"\n{extra}'
    )
    return path


# --- a server that hangs rather than dies ------------------------------------------------------------
def server_pids(data_dir: Path) -> list[int]:
    """The postmaster of the cluster in ``data_dir`` first, then every process it forked (its backends)."""
    import os

    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == postmaster and int(entry.name) != os.getpid():
            children.append(int(entry.name))
    return [postmaster, *children]


def freeze_server(data_dir: Path) -> list[int]:
    """SIGSTOP the postmaster (so it forks nothing new), then every backend: a server that hangs.

    Two passes, so that a backend forked while the first pass ran is stopped too. The kernel still
    completes TCP handshakes and answers keepalives for it: only a watchdog can tell it hangs.
    """
    import contextlib
    import os
    import signal

    stopped: list[int] = []
    for _ in range(2):
        for pid in server_pids(data_dir):
            if pid not in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                    stopped.append(pid)
    return stopped


def thaw_server(pids: list[int]) -> None:
    """SIGCONT what :func:`freeze_server` stopped."""
    import contextlib
    import os
    import signal

    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def wait_for(predicate: Callable[[], bool], seconds: float, step: float = 0.01) -> bool:
    """Poll ``predicate`` every ``step`` seconds until it holds (True) or ``seconds`` pass (False)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False
