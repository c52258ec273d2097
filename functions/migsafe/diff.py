"""Compare a backup with the live tables by primary key (the seed's scenario D, delayed discovery).

When a bad migration is noticed days later, users have written rows since the backup; replacing
the tables would throw those away. ``diff`` answers "what differs?" before anyone decides:
the backup is loaded into a staging schema, exactly as a restore does (checksums, counts,
fingerprints), and each table is compared with its live table by primary key -- rows only in the
backup (deleted since), only in the target (written since), and changed (with a sample of keys and
the columns that differ). Values are compared as text, so a column whose type a migration changed
(an enum relabelled, say) still compares. Nothing in the target changes; the staging is dropped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from .dsn import Dsn
from .models import DiffReport, TableDiff
from .restore import Pairing, RestoreOptions, pair, staged_backup
from .staging import entry_name
from .store import Store

SAMPLE = 10


def run_diff(store: Store, backup_id: str, target: Dsn, tables: Sequence[str] | None = None, *,
             jobs: int | None = None, pg_bindir: str | None = None) -> DiffReport:
    """Load the backup into a staging schema and count rows only in it, only in the target, changed."""
    started = time.monotonic()
    opts = RestoreOptions(tables=tables, jobs=jobs, merge="keep", no_owner=True, analyze=True, pg_bindir=pg_bindir)
    with staged_backup(store, backup_id, target, opts, require_key=True) as (conn, manifest, plan, staged):
        diffs = [compare(conn, pair(conn, entry_name(e), staged.tables[e.name]), e.name) for e in plan.entries]
        rid = staged.restore_id
    return DiffReport(backup_id=manifest.backup_id, target=str(target), restore_id=rid, tables=diffs,
                      seconds=round(time.monotonic() - started, 3))


def compare(conn: psycopg.Connection[Any], p: Pairing, name: str) -> TableDiff:
    def key_json(alias: str) -> sql.Composable:
        return sql.SQL("json_build_object({})").format(sql.SQL(", ").join(
            sql.SQL("{}, {}").format(sql.Literal(k), sql.Identifier(alias, k)) for k in p.key))

    def one_sided(present: sql.Composable, absent: sql.Composable, alias: str, other: str) -> tuple[int, list[Any]]:
        match = p.key_match("t", "s")  # the live key against the staged one, whichever side is scanned
        query = sql.SQL("select {key} from {present} as {a} where not exists (select 1 from {absent} as {o} "
                        "where {match})").format(key=key_json(alias), present=present, absent=absent,
                                                 a=sql.Identifier(alias), o=sql.Identifier(other), match=match)
        count = conn.execute(sql.SQL("select count(*) from ({}) as q").format(query)).fetchone()
        rows = conn.execute(sql.SQL("{} limit {}").format(query, sql.Literal(SAMPLE))).fetchall()
        return int(count[0]) if count else 0, [r[0] for r in rows]

    only_backup, sample_backup = one_sided(p.stage.ident, p.live.ident, "s", "t")
    only_target, sample_target = one_sided(p.live.ident, p.stage.ident, "t", "s")
    rest = [c for c in p.columns if c not in p.key]
    changed_cols = sql.SQL("array_remove(array[{}]::text[], null)").format(sql.SQL(", ").join(
        sql.SQL("case when {} is distinct from {} then {} end").format(
            p.as_text("t", c), p.as_text("s", c), sql.Literal(c)) for c in rest)) if rest else sql.SQL("'{}'::text[]")
    changed_q = sql.SQL("select {key}, {cols} from {live} as t join {stage} as s on {match} where {differs}").format(
        key=key_json("t"), cols=changed_cols, live=p.live.ident, stage=p.stage.ident,
        match=p.key_match("t", "s"), differs=p.differs("t", "s"))
    row = conn.execute(sql.SQL("select count(*) from ({}) as q").format(changed_q)).fetchone()
    changed = int(row[0]) if row else 0
    sample_changed = [{"key": r[0], "columns": list(r[1])}
                      for r in conn.execute(sql.SQL("{} limit {}").format(changed_q, sql.Literal(SAMPLE))).fetchall()]
    return TableDiff(name=name, key=p.key, only_in_backup=only_backup, only_in_target=only_target, changed=changed,
                     sample={"only_in_backup": sample_backup, "only_in_target": sample_target,
                             "changed": sample_changed})
