"""The swap: staged tables take the place of the live ones in one short transaction.

Why a swap and not a restore in place: a restore in place holds ACCESS EXCLUSIVE on every
replaced table for as long as loading, indexing and checking take. Here all of that already
happened in staging; the transaction below only

* takes the locks (``lock_timeout``, retried with backoff, so a long reader delays us instead of
  queueing every other session behind our lock request),
* rechecks, under those locks, what was decided before (a table that holds data is only replaced
  with ``--replace``: rows inserted between the decision and the swap are never lost silently),
* moves each live table -- with its indexes, constraints and owned sequences -- to
  ``migsafe_undo_<restore id>``, and the staged one into its place (``ALTER ... SET SCHEMA`` is a
  catalog update: its cost does not grow with the table),
* carries sequences forward (``setval`` to the larger of both, so no id is handed out twice),
  recreates the views that read a replaced table, and re-points incoming foreign keys as
  ``NOT VALID``.

The foreign keys are validated after COMMIT, under SHARE UPDATE EXCLUSIVE, which readers and
writers do not wait for. The lock window -- from the moment the locks are granted to COMMIT -- is
measured and reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from .dsn import mask
from .exceptions import DatabaseError, RestoreRefused
from .identifiers import QualifiedName
from .staging import UNDO_PREFIX, schema_for

UNDO_TABLE = "migsafe_undo"  # inside the first undo schema: what was moved, to swap it back


@dataclass(frozen=True)
class Item:
    """One object to put in place: ``real`` is where it goes, ``source_schema`` where it waits now."""

    kind: str  # "table" (with its partitions listed as "partition"), "partition" or "type"
    real: QualifiedName
    source_schema: str | None  # None: nothing comes back, the live object only moves out (undo)


@dataclass
class SwapResult:
    lock_window_seconds: float = 0.0
    undo_schema: str | None = None
    replaced: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    invalid_foreign_keys: list[str] = field(default_factory=list)  # incoming, failed VALIDATE after COMMIT
    attempts: int = 0


def undo_schemas(restore_id: str, real_schemas: list[str]) -> dict[str, str]:
    return {s: schema_for(UNDO_PREFIX, restore_id, i) for i, s in enumerate(sorted(real_schemas))}


def _rel_oid(conn: psycopg.Connection[Any], name: QualifiedName, kinds: str = "rp") -> int | None:
    row = conn.execute(
        "select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = %s and c.relname = %s and c.relkind = any(%s)",
        (name.schema, name.name, list(kinds)),
    ).fetchone()
    return int(row[0]) if row else None


def _type_oid(conn: psycopg.Connection[Any], name: QualifiedName) -> int | None:
    row = conn.execute(
        "select t.oid from pg_type t join pg_namespace n on n.oid = t.typnamespace "
        "where n.nspname = %s and t.typname = %s",
        (name.schema, name.name),
    ).fetchone()
    return int(row[0]) if row else None


def _owned_sequences(conn: psycopg.Connection[Any], oid: int) -> dict[str, int]:
    """column name -> OID of the sequence it owns (serial and identity columns)."""
    rows = conn.execute(
        """
        select a.attname, d.objid from pg_depend d
        join pg_class s on s.oid = d.objid and s.relkind = 'S'
        join pg_attribute a on a.attrelid = d.refobjid and a.attnum = d.refobjsubid
        where d.classid = 'pg_class'::regclass and d.refclassid = 'pg_class'::regclass
          and d.refobjid = %s and d.deptype in ('a', 'i')
        """,
        (oid,),
    ).fetchall()
    return {r[0]: int(r[1]) for r in rows}


def swap(
    conn: psycopg.Connection[Any],
    items: list[Item],
    *,
    restore_id: str,
    backup_id: str,
    replace: bool,
    lock_timeout: str,
    retries: int = 6,
    mode: str = "restore",
) -> SwapResult:
    """Put ``items`` in place in one transaction (retried when a lock is not granted in time)."""
    delay = 0.2
    for attempt in range(1, retries + 1):
        try:
            result = _swap_once(conn, items, restore_id=restore_id, backup_id=backup_id, replace=replace,
                                lock_timeout=lock_timeout, mode=mode)
            result.attempts = attempt
            return result
        except psycopg.errors.LockNotAvailable as exc:
            if attempt == retries:
                raise DatabaseError(
                    f"the swap could not lock the target tables within {lock_timeout} after {retries} attempts "
                    f"(long-running sessions hold them); nothing was swapped: {mask(str(exc)).strip()}"
                ) from exc
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


def _swap_once(conn: psycopg.Connection[Any], items: list[Item], *, restore_id: str, backup_id: str,
               replace: bool, lock_timeout: str, mode: str) -> SwapResult:
    result = SwapResult()
    tables = [i for i in items if i.kind == "table"]
    real_schemas = sorted({i.real.schema for i in items})
    undo = undo_schemas(restore_id, real_schemas)
    locked_at: float | None = None
    with conn.transaction():
        conn.execute(sql.SQL("set local lock_timeout = {}").format(sql.Literal(lock_timeout)))
        # an empty search_path makes pg_get_viewdef/pg_get_constraintdef qualify every name, so the
        # definitions bind to whatever holds the name when they are replayed below
        conn.execute("set local search_path = ''")
        live = {i.real: oid for i in items if i.kind in ("table", "partition")
                and (oid := _rel_oid(conn, i.real)) is not None}
        live_tables = [i.real for i in tables if i.real in live]
        if live_tables:
            conn.execute(sql.SQL("lock table {} in access exclusive mode").format(
                sql.SQL(", ").join(t.ident for t in live_tables)))
            locked_at = time.monotonic()
            # re-read under the lock: the decision made before loading may be stale
            if not replace:
                full = [str(t) for t in live_tables
                        if conn.execute(sql.SQL("select exists (select 1 from {})").format(t.ident)).fetchone()[0]]  # type: ignore[index]
                if full:
                    raise RestoreRefused(
                        "restore refused, nothing changed: " + ", ".join(f"{t} already holds data" for t in full)
                        + " (rows were written while the backup was being loaded; use --replace)")
        live_oids = list(live.values())
        incoming: list[tuple[str, str, str, str]] = []
        views: list[tuple[str, str, str]] = []
        if live_oids:
            incoming = [tuple(r) for r in conn.execute(  # type: ignore[misc]
                """
                select n.nspname, r.relname, c.conname, pg_get_constraintdef(c.oid)
                from pg_constraint c join pg_class r on r.oid = c.conrelid join pg_namespace n on n.oid = r.relnamespace
                where c.contype = 'f' and c.confrelid = any(%s::oid[]) and c.conrelid <> all(%s::oid[])
                order by 1, 2, 3
                """, (live_oids, live_oids)).fetchall()]
            views = [tuple(r) for r in conn.execute(  # type: ignore[misc]
                """
                select distinct n.nspname, v.relname, pg_get_viewdef(v.oid) from pg_depend d
                join pg_rewrite r on r.oid = d.objid join pg_class v on v.oid = r.ev_class
                join pg_namespace n on n.oid = v.relnamespace
                where d.classid = 'pg_rewrite'::regclass and d.refobjid = any(%s::oid[]) and v.oid <> all(%s::oid[])
                  and v.relkind = 'v'
                """, (live_oids, live_oids)).fetchall()]
        for s in real_schemas:
            conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(s)))
        if live or any(i.kind == "type" and _type_oid(conn, i.real) is not None for i in items):
            for s in real_schemas:
                conn.execute(sql.SQL("create schema {}").format(sql.Identifier(undo[s])))
            result.undo_schema = undo[real_schemas[0]]
        for schema, table, name, _ in incoming:
            conn.execute(sql.SQL("alter table {} drop constraint {}").format(
                sql.Identifier(schema, table), sql.Identifier(name)))
        sequences: dict[QualifiedName, dict[str, int]] = {t: _owned_sequences(conn, live[t]) for t in live_tables}
        moved_types: list[Item] = []
        # 1. the live objects out of the way (partitions first: a parent does not take them along)
        for i in sorted(items, key=lambda i: i.kind != "partition"):
            if i.kind in ("table", "partition") and i.real in live:
                conn.execute(sql.SQL("alter table {} set schema {}").format(
                    i.real.ident, sql.Identifier(undo[i.real.schema])))
                if i.kind == "table":
                    result.replaced.append(str(i.real))
            elif i.kind == "type" and _type_oid(conn, i.real) is not None:
                conn.execute(sql.SQL("alter type {} set schema {}").format(
                    i.real.ident, sql.Identifier(undo[i.real.schema])))
                moved_types.append(i)
        # 2. the staged objects into place
        for i in sorted(items, key=lambda i: ({"type": 0, "table": 1, "partition": 2}[i.kind])):
            if i.source_schema is None:
                continue
            what = sql.SQL("type" if i.kind == "type" else "table")
            conn.execute(sql.SQL("alter {} {} set schema {}").format(
                what, sql.Identifier(i.source_schema, i.real.name), sql.Identifier(i.real.schema)))
        # 3. sequences carried forward: never hand out an id the replaced table already used
        for t in live_tables:
            new_oid = _rel_oid(conn, t)
            if new_oid is None:
                continue
            new = _owned_sequences(conn, new_oid)
            for column, old_seq in sequences[t].items():
                if column in new:
                    conn.execute(
                        "select setval(%(new)s::regclass, greatest(pg_sequence_last_value(%(new)s::regclass), "
                        "pg_sequence_last_value(%(old)s::regclass))) "
                        "where coalesce(pg_sequence_last_value(%(new)s::regclass), "
                        "pg_sequence_last_value(%(old)s::regclass)) is not null",
                        {"new": new[column], "old": old_seq},
                    )
        # 4. views read the new tables; foreign keys point at them again (validated after COMMIT)
        for schema, view, definition in views:
            conn.execute(sql.SQL("create or replace view {} as {}").format(
                sql.Identifier(schema, view), sql.SQL(definition.rstrip().rstrip(";"))))  # type: ignore[arg-type]
        for schema, table, name, definition in incoming:
            conn.execute(sql.SQL("alter table {} add constraint {} {} not valid").format(
                sql.Identifier(schema, table), sql.Identifier(name), sql.SQL(definition)))  # type: ignore[arg-type]
        if result.undo_schema:
            ident = sql.Identifier(result.undo_schema, UNDO_TABLE)
            conn.execute(sql.SQL(
                "create table {} (kind text not null, schema_name text not null, name text not null, "
                "undo_schema text not null, had_old boolean not null, backup_id text, mode text, "
                "created_at timestamptz not null)").format(ident))
            now = datetime.now(UTC)
            for i in items:  # every item, also those new in the target: undo moves them all back out
                had_old = i.real in live if i.kind != "type" else i in moved_types
                conn.execute(sql.SQL("insert into {} values (%s, %s, %s, %s, %s, %s, %s, %s)").format(ident),
                             (i.kind, i.real.schema, i.real.name, undo[i.real.schema], had_old, backup_id, mode, now))
    committed = time.monotonic()
    if locked_at is not None:
        result.lock_window_seconds = round(committed - locked_at, 4)
    # after COMMIT, under SHARE UPDATE EXCLUSIVE: readers and writers carry on meanwhile
    for schema, table, name, _ in incoming:
        try:
            conn.execute(sql.SQL("alter table {} validate constraint {}").format(
                sql.Identifier(schema, table), sql.Identifier(name)))
        except psycopg.Error as exc:
            result.invalid_foreign_keys.append(
                f"foreign key {name} of {schema}.{table} stays NOT VALID: {mask(str(exc)).strip()}")
    return result
