"""Compare a backup with the live tables by primary key (the seed's scenario D, delayed discovery).

When a bad migration is noticed days later, users have written rows since the backup; replacing
the tables would throw those away. ``diff`` answers "what differs?" before anyone decides:
the backup is loaded into a staging schema, exactly as a restore does (checksums, counts,
fingerprints), and each table is compared with its live table by primary key -- rows only in the
backup (deleted since), only in the target (written since), and changed (with a sample of keys and
the columns that differ). Values are compared as text, so a column whose type a migration changed
(an enum relabelled, say) still compares, and 1.0 and 1.00 differ as they do in a dump; a column
of the same type on both sides whose equality already tells apart what its text does (integers,
text, uuid, timestamps: ``catalog.exact_columns``) is compared as it is, which skips the output
function. One full join by key counts the three kinds of difference; the samples are queried only
for the kinds found. Nothing in the target changes; the staging is dropped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from psycopg import sql

from . import catalog
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
        pairs = [(e.name, pair(conn, entry_name(e), staged.tables[e.name])) for e in plan.entries]

        def one(item: tuple[str, Pairing]) -> TableDiff:  # each table on a session of its own, read-only
            with catalog.connect(target, application_name="migsafe diff") as c:
                return compare(c, item[1], item[0])

        workers = max(1, min(len(pairs), jobs or os.cpu_count() or 2))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="migsafe-diff") as pool:
            diffs = list(pool.map(one, pairs))
        rid = staged.restore_id
    return DiffReport(backup_id=manifest.backup_id, target=str(target), restore_id=rid, tables=diffs,
                      seconds=round(time.monotonic() - started, 3))


def compare(conn: psycopg.Connection[Any], p: Pairing, name: str) -> TableDiff:
    """Count the three kinds of difference in one full join by key; sample only the kinds found."""

    def key_json(alias: str) -> sql.Composable:
        return sql.SQL("json_build_object({})").format(sql.SQL(", ").join(
            sql.SQL("{}, {}").format(sql.Literal(k), sql.Identifier(alias, k)) for k in p.key))

    def one_sided(present: sql.Composable, absent: sql.Composable, alias: str, other: str) -> list[Any]:
        match = p.key_match("t", "s")  # the live key against the staged one, whichever side is scanned
        query = sql.SQL("select {key} from {present} as {a} where not exists (select 1 from {absent} as {o} "
                        "where {match}) limit {n}").format(key=key_json(alias), present=present, absent=absent,
                                                           a=sql.Identifier(alias), o=sql.Identifier(other),
                                                           match=match, n=sql.Literal(SAMPLE))
        return [r[0] for r in conn.execute(query).fetchall()]

    # a key column is never null (primary key): a null one marks the side a row is missing from
    live_k, stage_k = sql.Identifier("t", p.key[0]), sql.Identifier("s", p.key[0])
    row = conn.execute(sql.SQL(
        "select count(*) filter (where {lk} is null), count(*) filter (where {sk} is null), "
        "count(*) filter (where {lk} is not null and {sk} is not null and {differs}) "
        "from {live} as t full join {stage} as s on {match}").format(
        lk=live_k, sk=stage_k, differs=p.differs("t", "s"), live=p.live.ident, stage=p.stage.ident,
        match=p.key_match("t", "s"))).fetchone()
    only_backup, only_target, changed = (int(x) for x in row) if row else (0, 0, 0)
    sample_backup = one_sided(p.stage.ident, p.live.ident, "s", "t") if only_backup else []
    sample_target = one_sided(p.live.ident, p.stage.ident, "t", "s") if only_target else []
    sample_changed: list[dict[str, Any]] = []
    rest = [c for c in p.columns if c not in p.key]
    if changed:
        changed_cols = sql.SQL("array_remove(array[{}]::text[], null)").format(sql.SQL(", ").join(
            sql.SQL("case when {} is distinct from {} then {} end").format(
                p.compared("t", c), p.compared("s", c), sql.Literal(c)) for c in rest)) if rest else sql.SQL(
            "'{}'::text[]")
        changed_q = sql.SQL("select {key}, {cols} from {live} as t join {stage} as s on {match} where {differs} "
                            "limit {n}").format(key=key_json("t"), cols=changed_cols, live=p.live.ident,
                                                stage=p.stage.ident, match=p.key_match("t", "s"),
                                                differs=p.differs("t", "s"), n=sql.Literal(SAMPLE))
        sample_changed = [{"key": r[0], "columns": list(r[1])} for r in conn.execute(changed_q).fetchall()]
    return TableDiff(name=name, key=p.key, only_in_backup=only_backup, only_in_target=only_target, changed=changed,
                     sample={"only_in_backup": sample_backup, "only_in_target": sample_target,
                             "changed": sample_changed})
