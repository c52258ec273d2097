"""Helpers shared by the backup/restore integration tests (not fixtures: plain functions)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from migsafe.pgtools import bindir
from pgsupport import Database


def pg_tool(name: str) -> str:
    """A stock PostgreSQL binary from ``pg_config --bindir``."""
    directory = bindir()
    assert directory is not None, "pg_config --bindir found nothing"
    return str(directory / name)


def file_url(path: Path) -> str:
    return f"file://{path}"


def all_files(root: Path) -> list[Path]:
    """Every file under ``root``, hidden temp files included (empty when root is absent)."""
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file())


def backup_id_from(stdout: str) -> str:
    """``migsafe backup`` prints the backup id as its last stdout line."""
    return stdout.strip().splitlines()[-1].strip()


def backup_dir(store: Path, backup_id: str) -> Path:
    found = [p for p in store.glob(f"*/{backup_id}") if p.is_dir()]
    assert len(found) == 1, f"backup folder of {backup_id} not found under {store}"
    return found[0]


def load_manifest(store: Path, backup_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((backup_dir(store, backup_id) / "manifest.json").read_text())
    return data


def user_relations(db: Database) -> list[str]:
    """Tables, sequences and user types outside the system schemas: empty for an untouched database."""
    with db.connect() as conn:
        rels = conn.execute(
            """
            select n.nspname || '.' || c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
            where n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast') and c.relkind in ('r', 'p', 'S')
            union all
            select n.nspname || '.' || t.typname from pg_type t join pg_namespace n on n.oid = t.typnamespace
            where n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast') and t.typtype = 'e'
            order by 1
            """
        ).fetchall()
    return [r[0] for r in rels]


def process_group_members(pgid: int) -> dict[int, str]:
    """pid -> command name of every live (non-zombie) process in a process group."""
    members: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members[int(entry.name)] = comm
    return members


def pg_dumps_of(dbname: str) -> dict[int, str]:
    """pid -> "pg_dump" for every live pg_dump of ``dbname``, whichever process group it is in."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = argv and argv[0].endswith(b"pg_dump") and any(f"dbname={dbname}".encode() in a for a in argv)
        if ours and alive(int(entry.name)):
            found[int(entry.name)] = "pg_dump"
    return found


def alive(pid: int) -> bool:
    """True when ``pid`` runs (a zombie waiting to be reaped counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


def run_tool(argv: list[str], *, stdin: Any = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    full_env.update(env or {})
    return subprocess.run(argv, stdin=stdin, capture_output=True, text=True, env=full_env, timeout=120)
