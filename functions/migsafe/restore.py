"""Restore tables from a backup: load and verify them in staging, then swap them in, briefly.

A restore is what you run when things already went wrong, so it must never make them worse:

1. Decide before touching anything: every reason to refuse (data present without ``--replace``,
   foreign keys to tables the target lacks, an enum with other labels that other tables use,
   missing owner roles, materialized views on a replaced table) is reported at once, exit 2.
2. Load every selected table into ``migsafe_staging_<restore id>`` in parallel (``--jobs``),
   its archive read once and hashed as it streams (:mod:`migsafe.staging`). The live tables are
   neither changed nor locked meanwhile.
3. Verify staging against the manifest: row counts, content fingerprints, columns, foreign keys
   among the restored tables, enum labels. Any difference, or any object whose sha256 differs,
   drops the staging schema: nothing was swapped (exit 1).
4. Swap in one short transaction (:mod:`migsafe.swap`); the replaced tables wait in
   ``migsafe_undo_<restore id>`` for ``restore --undo`` or ``prune``.

``--merge`` replaces step 4 with one transaction that brings back the rows only the backup has
(and, with ``overwrite``, the backup's values of changed rows), keeping every row written since.

A restore killed at any point leaves the target either unchanged or fully swapped; its staging
schema is dropped by the next restore (or diff, or prune) of that database: each run holds an
advisory lock on its restore id, so a live restore's staging is never mistaken for a leftover.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import psycopg
from psycopg import sql

from . import catalog, extensions
from .dsn import Dsn, mask
from .exceptions import DatabaseError, InputError, RestoreFailed, RestoreRefused, RestoreVerificationFailed
from .identifiers import QualifiedName
from .inventory import check_object, load_manifest
from .models import Manifest, MergeCount, RestoreReport, TableEntry, TypeInfo
from .staging import (
    ADVISORY_CLASS,
    STAGING_PREFIX,
    UNDO_PREFIX,
    Loader,
    Staged,
    advisory_key,
    drop_schemas,
    drop_types,
    entry_name,
    new_restore_id,
    partition_names,
    restore_id_of,
    schema_for,
    split_name,
    sweep_staging,
)
from .store import Store
from .swap import UNDO_TABLE, Item, swap

ProgressFn = Callable[[str, str, dict[str, Any]], None]


@dataclass(frozen=True)
class RestoreOptions:
    tables: Sequence[str] | None = None
    replace: bool = False
    no_owner: bool = False
    lock_timeout: str = "30s"
    analyze: bool = True
    pg_bindir: str | None = None
    jobs: int | None = None  # parallel sessions loading the staging schema; None = CPU count
    merge: Literal["keep", "overwrite"] | None = None  # bring back rows instead of replacing tables
    # the target's schema differs from the backup's (a migration ran): replace it with the backup's
    # instead of refusing with "run the downgrade first"
    restore_schema: bool = False


@dataclass
class _Plan:
    """What the restore will do, decided before anything is touched."""

    entries: list[TableEntry]
    existing: list[QualifiedName] = field(default_factory=list)
    stage_types: list[TypeInfo] = field(default_factory=list)  # enums, loaded into staging and swapped
    create_types: list[TypeInfo] = field(default_factory=list)  # other missing types, created in place
    warnings: list[str] = field(default_factory=list)
    extensions: list[extensions.Install] = field(default_factory=list)  # created before the tables


def run_restore(
    store: Store,
    backup_id: str,
    target: Dsn,
    options: RestoreOptions | None = None,
    *,
    progress: ProgressFn | None = None,
) -> RestoreReport:
    opts = options or RestoreOptions()
    started = time.monotonic()
    with staged_backup(store, backup_id, target, opts, progress=progress) as (conn, manifest, plan, staged):
        report = RestoreReport(backup_id=manifest.backup_id, target=str(target), tables=staged.checks,
                               types=staged.type_checks, restore_id=staged.restore_id)
        if opts.merge:
            report.merged = merge(conn, manifest, plan.entries, staged, overwrite=opts.merge == "overwrite")
        else:
            items = [Item("table", entry_name(e), staged.tables[e.name].schema) for e in plan.entries]
            items += [Item("partition", p, staged.schemas[p.schema]) for e in plan.entries for p in partition_names(e)]
            items += [Item("type", split_name(t.name), staged.types[t.name].schema) for t in plan.stage_types]
            result = swap(conn, items, restore_id=staged.restore_id, backup_id=manifest.backup_id,
                          replace=opts.replace, lock_timeout=opts.lock_timeout)
            report.replaced = result.replaced
            report.lock_window_seconds = result.lock_window_seconds
            report.undo_schema = result.undo_schema
            report.warnings = plan.warnings + result.warnings
            report.invalid_foreign_keys = result.invalid_foreign_keys
    report.seconds = round(time.monotonic() - started, 3)
    return report


@contextlib.contextmanager
def staged_backup(
    store: Store, backup_id: str, target: Dsn, opts: RestoreOptions, *, progress: ProgressFn | None = None,
    require_key: bool = False,
) -> Iterator[tuple[psycopg.Connection[Any], Manifest, _Plan, Staged]]:
    """The backup's selected tables loaded and verified in staging; the staging is dropped after."""
    notify = progress or (lambda *_: None)
    ref, manifest = load_manifest(store, backup_id)
    entries = select(manifest, opts.tables)
    if require_key:
        refuse_without_key(entries)
    restore_id = new_restore_id()
    with catalog.connect(target, application_name="migsafe restore") as conn:
        # held until this session ends: the staging of a live restore is never swept as a leftover
        conn.execute("select pg_advisory_lock(%s, %s)", (ADVISORY_CLASS, advisory_key(restore_id)))
        sweep_staging(conn)
        plan = _decide(conn, manifest, entries, opts)
        if manifest.types_object:  # the types are created from the manifest; the object is checked too
            o = manifest.types_object
            check = check_object(store, ref.prefix + o.key, o.sha256, o.bytes)
            if not check.ok:
                from .exceptions import ChecksumMismatch

                raise ChecksumMismatch(f"backup {backup_id} failed verification: {o.key}: {check.problem}")
        loader = Loader(store, ref.prefix, manifest, target, restore_id, jobs=opts.jobs, no_owner=opts.no_owner,
                        pg_bindir=opts.pg_bindir, notify=notify, analyze=opts.analyze, build=not opts.merge)
        schemas = list(loader.plan_schemas(plan.entries, plan.stage_types).values())
        swapped = False
        created_extensions = extensions.Created()
        try:
            try:
                extensions.install(conn, plan.extensions, created_extensions)
                staged = loader.load(conn, plan.entries, plan.stage_types, plan.create_types)
            except psycopg.Error as exc:
                raise RestoreFailed(f"loading the staging schema failed, nothing swapped: "
                                    f"{mask(str(exc)).strip()}") from exc
            notify("verified", "", {"objects": len(plan.entries)})
            loader.verify(conn, staged, plan.entries, manifest.types)
            yield conn, manifest, plan, staged
            swapped = not opts.merge  # diff and merge leave the target's types as they were
        finally:
            drop_schemas(conn, schemas)
            if not swapped:
                drop_types(conn, loader.created_types)
                extensions.drop(conn, created_extensions)


def select(manifest: Manifest, tables: Sequence[str] | None) -> list[TableEntry]:
    if not tables:
        return list(manifest.tables)
    wanted = [QualifiedName.parse(t) for t in tables]
    by_name = {entry_name(t): t for t in manifest.tables}
    unknown = [str(t) for t in wanted if t not in by_name]
    if unknown:
        known = ", ".join(sorted(t.name for t in manifest.tables))
        raise InputError(f"not in backup {manifest.backup_id}: {', '.join(unknown)} (it holds {known})")
    chosen = {by_name[t].name for t in wanted}
    return [t for t in manifest.tables if t.name in chosen]


def refuse_without_key(entries: Sequence[TableEntry]) -> None:
    keyless = [e.name for e in entries if not any(c.type == "p" for c in e.constraints)]
    if keyless:
        raise InputError(
            f"tables without a primary key cannot be compared or merged row by row: {', '.join(keyless)} "
            "(restore them with --replace, or leave them out with --tables)"
        )


def _decide(conn: psycopg.Connection[Any], manifest: Manifest, entries: list[TableEntry], opts: RestoreOptions) -> _Plan:
    """Refuse unsafe restores with every reason at once; otherwise say what will be staged."""
    plan = _Plan(entries=entries)
    names = [entry_name(e) for e in entries]
    selected = {e.name for e in entries}
    existing = catalog.existing_tables(conn, names)
    plan.existing = [n for n in names if n in existing]
    problems: list[str] = []

    if opts.merge:
        missing = [str(n) for n in names if n not in existing]
        if missing:
            problems.append(f"{', '.join(missing)} missing in the target: --merge adds rows to existing tables "
                            "(restore them without --merge)")
        refuse_without_key(entries)
    else:
        for name in plan.existing:  # rechecked under the swap's lock
            has_rows = conn.execute(sql.SQL("select exists (select 1 from {})").format(name.ident)).fetchone()
            if has_rows and has_rows[0] and not opts.replace:
                problems.append(f"{name} already holds data (use --replace to drop and restore it)")
    # foreign keys that leave the backup must find their tables in the target
    outside = sorted({fk.references for e in entries for fk in e.foreign_keys
                      if fk.references and fk.references not in selected})
    # "schema.table" is ambiguous when a name holds a dot: any reading the target has will do
    readings = {t: [QualifiedName(t[:i], t[i + 1:]) for i, ch in enumerate(t) if ch == "."] for t in outside}
    present = catalog.existing_tables(conn, [q for qs in readings.values() for q in qs])
    missing_refs = [t for t in outside if not any(q in present for q in readings[t])]
    if missing_refs:
        refusing = sorted({e.name for e in entries for fk in e.foreign_keys if fk.references in missing_refs})
        problems.append(
            f"{', '.join(refusing)} reference {', '.join(missing_refs)} by foreign key, which the target lacks "
            "(restore those tables too, or create them first)"
        )
    replaced_oids = [existing[n] for n in plan.existing]
    if replaced_oids and not opts.merge:
        matviews = conn.execute(
            """
            select distinct v.oid::regclass::text from pg_depend d
            join pg_rewrite r on r.oid = d.objid join pg_class v on v.oid = r.ev_class
            where d.classid = 'pg_rewrite'::regclass and d.refobjid = any(%s::oid[]) and v.oid <> all(%s::oid[])
              and v.relkind = 'm'
            """,
            (replaced_oids, replaced_oids),
        ).fetchall()
        if matviews:
            problems.append(f"materialized views depend on tables to replace: {', '.join(v[0] for v in matviews)} "
                            "(drop them first; plain views are recreated on the restored tables)")
    if not opts.merge:
        problems += _schema_drift(conn, manifest, entries, plan.existing, opts, plan.warnings)
    # types: stage the missing ones; an enum with other labels is swapped only with all its tables
    needed = {t for e in entries for t in e.types}
    for info in manifest.types:
        if info.name not in needed:
            continue
        tname = split_name(info.name)
        row = conn.execute(
            "select t.oid from pg_type t join pg_namespace n on n.oid = t.typnamespace "
            "where n.nspname = %s and t.typname = %s",
            (tname.schema, tname.name),
        ).fetchone()
        if row is None:
            (plan.stage_types if info.kind == "enum" else plan.create_types).append(info)
            continue
        if info.kind != "enum":
            continue
        from .staging import enum_labels

        labels = enum_labels(conn, tname)
        if labels == info.labels:
            continue
        if opts.merge:  # the rows are compared and merged as text; the target keeps its type
            plan.stage_types.append(info)
            continue
        users = conn.execute(
            """
            select distinct n.nspname || '.' || c.relname, a.attrelid from pg_attribute a
            join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
            where a.atttypid in (select %s union select typarray from pg_type where oid = %s)
              and not a.attisdropped and c.relkind in ('r', 'p', 'v', 'm', 'c', 'f')
              and not c.relispartition
            """,
            (row[0], row[0]),
        ).fetchall()
        others = [u[0] for u in users if u[1] not in replaced_oids]
        if opts.replace and opts.restore_schema and not others:
            plan.stage_types.append(info)
        else:
            problems.append(
                f"type {info.name} has labels {labels} in the target but {info.labels} in the backup"
                + (f"; other relations use it: {', '.join(others)}" if others
                   else " (the backup's type comes back only with --replace --restore-schema)")
                + " -- run the migration's downgrade first, or restore into an empty database"
            )
    if not opts.no_owner:
        owners = sorted({e.owner for e in entries})
        have = {r[0] for r in conn.execute("select rolname from pg_roles where rolname = any(%s)", (owners,))}
        missing_roles = [o for o in owners if o not in have]
        if missing_roles:
            problems.append(f"owner role(s) {', '.join(missing_roles)} missing in the target (use --no-owner)")
    plan.extensions, missing_extensions = extensions.plan_installs(
        conn, extensions.for_tables(manifest.extensions, [e.name for e in entries]))
    problems += missing_extensions
    if problems:
        raise RestoreRefused("restore refused, nothing changed: " + "; ".join(problems))
    return plan


def _schema_drift(conn: psycopg.Connection[Any], manifest: Manifest, entries: list[TableEntry],
                  existing: list[QualifiedName], opts: RestoreOptions, warnings: list[str]) -> list[str]:
    """Where the target's schema is not the backup's: columns and types, the alembic revision.

    Restoring the backup's tables under a migrated schema would leave the database inconsistent
    (the application and ``alembic_version`` say "upgraded", the tables say otherwise), so the
    downgrade runs first -- or ``--restore-schema`` says to bring back the recorded schema too.
    """
    problems: list[str] = []
    by_name = {entry_name(e): e for e in entries}
    for name in existing if not opts.restore_schema else []:
        entry = by_name[name]
        have = [(c, t) for c, (_, t, _) in columns_of(conn, name).items()]
        want = [(c.name, c.type) for c in entry.columns]
        if have != want:
            gone = [f"{c} {t}" for c, t in want if (c, t) not in have]
            new = [f"{c} {t}" for c, t in have if (c, t) not in want]
            problems.append(
                f"{name}: the target's columns differ from the backup's"
                + (f" (backup only: {', '.join(gone)}" if gone else " (")
                + (f"; target only: {', '.join(new)})" if new else ")")
                + " -- run the migration's downgrade first, or pass --restore-schema to restore the backup's "
                "schema too"
            )
    restores_version = any(entry_name(e).name == "alembic_version" for e in entries)
    if manifest.alembic_revision and existing and not restores_version:
        current = catalog.alembic_revision(conn)
        if current is not None and current != manifest.alembic_revision:
            if opts.restore_schema:
                warnings.append(f"alembic_version stays at {current}; the restored tables are at "
                                f"{manifest.alembic_revision}: run `alembic stamp {manifest.alembic_revision}`")
                return []
            problems.append(
                f"the target is at alembic revision {current}, the backup was taken at {manifest.alembic_revision} "
                f"-- run `alembic downgrade {manifest.alembic_revision}` first, or pass --restore-schema"
            )
    return problems


# --- merge ------------------------------------------------------------------------------------
def fk_order(entries: Sequence[TableEntry]) -> list[TableEntry]:
    """Referenced tables before the tables that reference them (cycles keep manifest order)."""
    by_name = {e.name: e for e in entries}
    done: list[TableEntry] = []
    seen: set[str] = set()

    def visit(e: TableEntry, path: set[str]) -> None:
        if e.name in seen or e.name in path:
            return
        for fk in e.foreign_keys:
            if fk.references in by_name and fk.references != e.name:
                visit(by_name[fk.references], path | {e.name})
        seen.add(e.name)
        done.append(e)

    for e in entries:
        visit(e, set())
    return done


def columns_of(conn: psycopg.Connection[Any], table: QualifiedName) -> dict[str, tuple[int, str, bool]]:
    """column -> (type oid, formatted type, generated) in column order."""
    rows = conn.execute(
        """
        select a.attname, a.atttypid, format_type(a.atttypid, a.atttypmod), a.attgenerated <> ''
        from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = %s and c.relname = %s and a.attnum > 0 and not a.attisdropped order by a.attnum
        """,
        (table.schema, table.name),
    ).fetchall()
    return {r[0]: (int(r[1]), str(r[2]), bool(r[3])) for r in rows}


def primary_key(conn: psycopg.Connection[Any], table: QualifiedName) -> list[str]:
    rows = conn.execute(
        """
        select a.attname from pg_index i
        join pg_class c on c.oid = i.indrelid join pg_namespace n on n.oid = c.relnamespace
        cross join lateral unnest(i.indkey) with ordinality as k(attnum, ord)
        join pg_attribute a on a.attrelid = c.oid and a.attnum = k.attnum
        where n.nspname = %s and c.relname = %s and i.indisprimary order by k.ord
        """,
        (table.schema, table.name),
    ).fetchall()
    return [r[0] for r in rows]


@dataclass
class Pairing:
    """How one staged table lines up with its live table: key and shared columns, as SQL pieces."""

    live: QualifiedName
    stage: QualifiedName
    key: list[str]
    columns: list[str]  # shared, not generated, in live order
    same_type: dict[str, bool]
    live_types: dict[str, str]
    exact: set[str] = field(default_factory=set)  # same type on both sides, compared as it is (not as text)

    def value(self, alias: str, column: str) -> sql.Composable:
        """A staged column as the live column's type (through text when the types differ)."""
        ref = sql.Identifier(alias, column)
        if self.same_type[column]:
            return ref
        return sql.SQL("{}::text::{}").format(ref, sql.SQL(self.live_types[column]))  # type: ignore[arg-type]

    def as_text(self, alias: str, column: str) -> sql.Composable:
        return sql.SQL("{}::text").format(sql.Identifier(alias, column))

    def key_match(self, live: str, stage: str) -> sql.Composable:
        return sql.SQL(" and ").join(
            sql.SQL("{} = {}").format(sql.Identifier(live, k), self.value(stage, k)) for k in self.key)

    def differs(self, live: str, stage: str) -> sql.Composable:
        rest = [c for c in self.columns if c not in self.key]
        if not rest:
            return sql.SQL("false")
        return sql.SQL("row({}) is distinct from row({})").format(
            sql.SQL(", ").join(self.compared(live, c) for c in rest),
            sql.SQL(", ").join(self.compared(stage, c) for c in rest))

    def compared(self, alias: str, column: str) -> sql.Composable:
        """A column as changed rows are told apart: as it is where that equals its text's answer."""
        return sql.Identifier(alias, column) if column in self.exact else self.as_text(alias, column)


def pair(conn: psycopg.Connection[Any], live: QualifiedName, stage: QualifiedName) -> Pairing:
    lc = columns_of(conn, live)
    sc = columns_of(conn, stage)
    key = primary_key(conn, live) or primary_key(conn, stage)
    if not key:
        raise InputError(f"{live} has no primary key in the target: it cannot be compared or merged row by row")
    shared = [c for c in lc if c in sc and not lc[c][2]]
    missing_key = [k for k in key if k not in shared]
    if missing_key:
        raise InputError(f"{live}: key column(s) {', '.join(missing_key)} are not in the backup")
    same_type = {c: lc[c][0] == sc[c][0] for c in shared}
    exact = catalog.exact_columns(conn, live) & {c for c in shared if same_type[c]}
    return Pairing(live=live, stage=stage, key=key, columns=shared, same_type=same_type,
                   live_types={c: lc[c][1] for c in shared}, exact=exact)


def merge(conn: psycopg.Connection[Any], manifest: Manifest, entries: Sequence[TableEntry], staged: Staged, *,
          overwrite: bool) -> list[MergeCount]:
    """Bring back the rows only the backup has (and, with ``overwrite``, its values of changed rows).

    One transaction, referenced tables first, so foreign keys hold at every statement; rows written
    since the backup are kept (``ON CONFLICT DO NOTHING``).
    """
    counts: list[MergeCount] = []
    try:
        with conn.transaction():
            for e in fk_order(entries):
                p = pair(conn, entry_name(e), staged.tables[e.name])
                count = MergeCount(name=e.name)
                cols = sql.SQL(", ").join(sql.Identifier(c) for c in p.columns)
                if overwrite:
                    rest = [c for c in p.columns if c not in p.key]
                    if rest:
                        cur = conn.execute(sql.SQL("update {live} as t set ({cols}) = row({vals}) from {stage} as s "
                                                   "where {match} and {differs}").format(
                            live=p.live.ident, stage=p.stage.ident,
                            cols=sql.SQL(", ").join(sql.Identifier(c) for c in rest),
                            vals=sql.SQL(", ").join(p.value("s", c) for c in rest),
                            match=p.key_match("t", "s"), differs=p.differs("t", "s")))
                        count.updated = max(cur.rowcount, 0)
                # the rows the live table lacks, found by one anti-join, rather than an index probe
                # and a refused insert for each of the (mostly present) staged rows; ON CONFLICT
                # still keeps a row written meanwhile
                cur = conn.execute(sql.SQL("insert into {live} ({cols}) overriding system value "
                                           "select {vals} from {stage} as s where not exists "
                                           "(select 1 from {live} as t where {match}) on conflict do nothing").format(
                    live=p.live.ident, cols=cols, stage=p.stage.ident, match=p.key_match("t", "s"),
                    vals=sql.SQL(", ").join(p.value("s", c) for c in p.columns)))
                count.inserted = max(cur.rowcount, 0)
                counts.append(count)
    except psycopg.errors.IntegrityError as exc:
        raise RestoreVerificationFailed(f"merge rolled back, target unchanged: {mask(str(exc)).strip()}") from exc
    except psycopg.Error as exc:
        raise RestoreFailed(f"merge rolled back, target unchanged: {mask(str(exc)).strip()}") from exc
    order = {e.name: i for i, e in enumerate(entries)}
    return sorted(counts, key=lambda c: order[c.name])


# --- undo and prune ---------------------------------------------------------------------------
def run_undo(target: Dsn, restore_id: str, *, lock_timeout: str = "30s") -> RestoreReport:
    """Swap the tables a restore replaced back into place; what it put there waits in a new undo schema."""
    if restore_id_of(STAGING_PREFIX + restore_id) != restore_id:
        raise InputError(f"not a restore id: {restore_id!r} (expected YYYYMMDDHHMMSS_xxxxxx, as a restore prints)")
    started = time.monotonic()
    first = schema_for(UNDO_PREFIX, restore_id, 0)
    with catalog.connect(target, application_name="migsafe restore --undo") as conn:
        try:
            rows = conn.execute(sql.SQL("select kind, schema_name, name, undo_schema, had_old, backup_id from {}")
                                .format(sql.Identifier(first, UNDO_TABLE))).fetchall()
        except psycopg.errors.UndefinedTable:
            raise InputError(f"no undo schema {first} in the target: nothing to undo for restore {restore_id} "
                             "(pruned, or the restore replaced nothing)") from None
        items = [Item(r[0], QualifiedName(r[1], r[2]), r[3] if r[4] else None) for r in rows]
        backup_id = rows[0][5] if rows else ""
        new_id = new_restore_id()
        result = swap(conn, items, restore_id=new_id, backup_id=backup_id or "", replace=True,
                      lock_timeout=lock_timeout, mode="undo")
        drop_schemas(conn, sorted({r[3] for r in rows} | {first}))
    return RestoreReport(backup_id=backup_id or "", target=str(target), tables=[], types=[],
                         replaced=result.replaced, restore_id=new_id, lock_window_seconds=result.lock_window_seconds,
                         undo_schema=result.undo_schema, warnings=result.warnings,
                         invalid_foreign_keys=result.invalid_foreign_keys,
                         seconds=round(time.monotonic() - started, 3))


def prune_target(target: Dsn, keep_undo: timedelta, *, now: datetime | None = None,
                 dry_run: bool = False) -> list[str]:
    """Drop undo schemas older than ``keep_undo`` and staging schemas no running restore holds."""
    now = now or datetime.now(UTC)
    doomed: list[str] = []
    with catalog.connect(target, application_name="migsafe prune") as conn:
        try:
            rows = conn.execute(
                "select nspname from pg_namespace where starts_with(nspname, %s) or starts_with(nspname, %s) "
                "order by 1", (UNDO_PREFIX, STAGING_PREFIX)).fetchall()
            for (schema,) in rows:
                rid = restore_id_of(schema)
                if rid is None:
                    continue
                if schema.startswith(STAGING_PREFIX):
                    key = advisory_key(rid)
                    free = conn.execute("select pg_try_advisory_lock(%s, %s)", (ADVISORY_CLASS, key)).fetchone()
                    if free and free[0]:
                        conn.execute("select pg_advisory_unlock(%s, %s)", (ADVISORY_CLASS, key))
                        doomed.append(schema)
                    continue
                made = datetime.strptime(rid[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
                if now - made > keep_undo:
                    doomed.append(schema)
            if not dry_run:
                sweep_staging(conn)
                drop_schemas(conn, [s for s in doomed if s.startswith(UNDO_PREFIX)])
        except psycopg.Error as exc:
            raise DatabaseError(f"prune of {target} failed: {mask(str(exc)).strip()}") from exc
    return doomed
