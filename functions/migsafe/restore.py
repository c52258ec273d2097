"""Restore tables from a backup: checksums first, then one transaction, verified before COMMIT.

Why one transaction: a restore is what you run when things already went wrong, so it must never
make them worse. Every statement -- dropping the tables being replaced, creating missing types,
each table's ``pg_restore`` script, the foreign keys, and the verification of row counts and
constraints -- runs in a single ``psql`` session between ``BEGIN`` and ``COMMIT`` with
``ON_ERROR_STOP``. Any error, a row count that differs from the manifest, or a stored object whose
sha256 changed while it was being read, rolls everything back: the target is either restored and
verified, or untouched.

Why ``pg_restore`` and not our own loader: every dump must stay restorable with stock tools, so we
use the same tools; ``pg_restore --file=-`` turns each archive into SQL that we stream into psql.
Foreign keys are held back until every table of the backup is loaded, so tables restore in any order.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import psycopg
from psycopg import sql

from . import catalog
from .dsn import Dsn, mask
from .exceptions import (
    ChecksumMismatch,
    InputError,
    RestoreFailed,
    RestoreRefused,
    RestoreVerificationFailed,
    ToolFailed,
)
from .identifiers import QualifiedName
from .inventory import check_object, load_manifest, require_intact, verify_objects
from .models import Manifest, RestoreReport, TableEntry, TableRestoreCheck, TypeInfo, TypeRestoreCheck
from .pgtools import tool, tool_env
from .store import Store
from .streams import decompressed, hashed_chunks

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


@dataclass
class _Plan:
    """What the restore will do, decided before anything is touched."""

    entries: list[TableEntry]
    drop_tables: list[QualifiedName] = field(default_factory=list)
    incoming_fks: list[tuple[QualifiedName, str, str]] = field(default_factory=list)  # table, name, definition
    create_types: list[TypeInfo] = field(default_factory=list)
    drop_types: list[TypeInfo] = field(default_factory=list)
    schemas: list[str] = field(default_factory=list)


def run_restore(
    store: Store,
    backup_id: str,
    target: Dsn,
    options: RestoreOptions | None = None,
    *,
    progress: ProgressFn | None = None,
) -> RestoreReport:
    opts = options or RestoreOptions()
    notify = progress or (lambda *_: None)
    started = time.monotonic()
    ref, manifest = load_manifest(store, backup_id)
    entries = _select(manifest, opts.tables)
    # 1. checksums before touching the target
    report = verify_objects(store, ref.prefix, manifest, [e.name for e in entries])
    require_intact(report)
    notify("verified", "", {"objects": len(report.objects)})
    with catalog.connect(target, application_name="migsafe restore") as conn:
        plan = _decide(conn, manifest, entries, opts)
        counted = _execute(conn, store, ref.prefix, manifest, plan, target, opts, notify)
        result = check_restored(conn, manifest, [e.name for e in entries], counted)
        if opts.analyze:
            for e in entries:
                conn.execute(sql.SQL("analyze {}").format(_entry_name(e.name).ident))
    result.target = str(target)
    result.replaced = [str(t) for t in plan.drop_tables]
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _entry_name(name: str) -> QualifiedName:
    """A name as the manifest stores it: ``schema.table`` spelled as in the catalog.

    Never :meth:`QualifiedName.parse` it: that folds ``Orders`` to ``orders`` and refuses
    ``Sales Data.Order Items``, names the catalog holds verbatim.
    """
    schema, _, table = name.partition(".")
    return QualifiedName(schema, table)


def _select(manifest: Manifest, tables: Sequence[str] | None) -> list[TableEntry]:
    if not tables:
        return list(manifest.tables)
    wanted = [str(QualifiedName.parse(t)) for t in tables]
    known = {t.name for t in manifest.tables}
    unknown = [t for t in wanted if t not in known]
    if unknown:
        raise InputError(f"not in backup {manifest.backup_id}: {', '.join(unknown)} (it holds {', '.join(sorted(known))})")
    return [t for t in manifest.tables if t.name in wanted]


def _decide(conn: psycopg.Connection[Any], manifest: Manifest, entries: list[TableEntry], opts: RestoreOptions) -> _Plan:
    """Refuse unsafe restores with every reason at once; otherwise say exactly what will change."""
    plan = _Plan(entries=entries)
    names = [_entry_name(e.name) for e in entries]
    selected = {str(n) for n in names}
    existing = catalog.existing_tables(conn, names)
    problems: list[str] = []

    # tables that hold data are only replaced on request
    for name in existing:
        has_rows = conn.execute(sql.SQL("select exists (select 1 from {})").format(name.ident)).fetchone()
        if has_rows and has_rows[0] and not opts.replace:
            problems.append(f"{name} already holds data (use --replace to drop and restore it)")
        plan.drop_tables.append(name)
    # foreign keys that leave the backup must find their tables in the target
    outside = sorted({fk.references for e in entries for fk in e.foreign_keys
                      if fk.references and fk.references not in selected})
    present = catalog.existing_tables(conn, [_entry_name(t) for t in outside if t])
    missing_refs = [t for t in outside if t and _entry_name(t) not in present]
    if missing_refs:
        refusing = sorted({e.name for e in entries for fk in e.foreign_keys if fk.references in missing_refs})
        problems.append(
            f"{', '.join(refusing)} reference {', '.join(missing_refs)} by foreign key, which the target lacks "
            "(restore those tables too, or create them first)"
        )
    if plan.drop_tables:
        oids = [existing[n] for n in plan.drop_tables]
        views = conn.execute(
            """
            select distinct v.oid::regclass::text from pg_depend d
            join pg_rewrite r on r.oid = d.objid join pg_class v on v.oid = r.ev_class
            where d.classid = 'pg_rewrite'::regclass and d.refobjid = any(%s::oid[]) and v.oid <> all(%s::oid[])
            """,
            (oids, oids),
        ).fetchall()
        if views:
            problems.append(f"views depend on tables to replace: {', '.join(v[0] for v in views)} (drop them first)")
        with conn.transaction():
            # an empty search_path makes pg_get_constraintdef qualify every name: the definitions are
            # replayed in the restore session, where pg_restore's script has emptied the search_path
            conn.execute("set local search_path = ''")
            incoming = conn.execute(
                """
                select n.nspname, r.relname, c.conname, pg_get_constraintdef(c.oid)
                from pg_catalog.pg_constraint c join pg_catalog.pg_class r on r.oid = c.conrelid
                join pg_catalog.pg_namespace n on n.oid = r.relnamespace
                where c.contype = 'f' and c.confrelid = any(%s::oid[]) and c.conrelid <> all(%s::oid[])
                """,
                (oids, oids),
            ).fetchall()
        for row in incoming:
            plan.incoming_fks.append((QualifiedName(row[0], row[1]), row[2], row[3]))
    # types: create the missing ones; an enum with other labels is replaced only with its tables
    needed = {t for e in entries for t in e.types}
    replaced_oids = [existing[n] for n in plan.drop_tables]
    for info in manifest.types:
        if info.name not in needed:
            continue
        row = conn.execute(
            """
            select t.oid, t.typtype::text from pg_type t join pg_namespace n on n.oid = t.typnamespace
            where n.nspname = %s and t.typname = %s
            """,
            tuple(info.name.split(".", 1)),
        ).fetchone()
        if row is None:
            plan.create_types.append(info)
            continue
        if info.kind != "enum":
            continue
        labels = catalog.enum_labels(conn, info.name)
        if labels == info.labels:
            continue
        users = conn.execute(
            """
            select distinct n.nspname || '.' || c.relname, a.attrelid from pg_attribute a
            join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
            where a.atttypid in (select %s union select typarray from pg_type where oid = %s)
              and not a.attisdropped and c.relkind in ('r', 'p', 'v', 'm', 'c', 'f')
            """,
            (row[0], row[0]),
        ).fetchall()
        others = [u[0] for u in users if u[1] not in replaced_oids]
        if opts.replace and not others:
            plan.drop_types.append(info)
            plan.create_types.append(info)
        else:
            problems.append(
                f"type {info.name} has labels {labels} in the target but {info.labels} in the backup"
                + (f"; other relations use it: {', '.join(others)}" if others else " (use --replace)")
                + " -- run the migration's downgrade first, or restore into an empty database"
            )
    if not opts.no_owner:
        owners = sorted({e.owner for e in entries})
        have = {r[0] for r in conn.execute("select rolname from pg_roles where rolname = any(%s)", (owners,))}
        missing_roles = [o for o in owners if o not in have]
        if missing_roles:
            problems.append(f"owner role(s) {', '.join(missing_roles)} missing in the target (use --no-owner)")
    if problems:
        raise RestoreRefused("restore refused, nothing changed: " + "; ".join(problems))
    plan.schemas = sorted({n.schema for n in names} | {t.name.split(".", 1)[0] for t in plan.create_types})
    return plan


# ---------------------------------------------------------------------------------------------
def _execute(conn: psycopg.Connection[Any], store: Store, prefix: str, manifest: Manifest, plan: _Plan,
             target: Dsn, opts: RestoreOptions, notify: ProgressFn) -> dict[str, int]:
    """Stream the whole restore into one psql transaction; return the row counts it verified."""

    def q(stmt: sql.Composable) -> bytes:
        return (stmt.as_string(conn) + ";\n").encode()

    env = tool_env(target.tool_env())
    psql = subprocess.Popen(
        [tool("psql", opts.pg_bindir), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--no-psqlrc",
         f"--dbname={target.conninfo(with_password=False)}", "--set=application_name=migsafe restore"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=(err := tempfile.TemporaryFile()), env=env,  # noqa: SIM115 - closed below
    )
    assert psql.stdin is not None
    sink: IO[bytes] = psql.stdin
    digests: dict[str, str] = {}
    try:
        sink.write(b"BEGIN;\n")
        sink.write(q(sql.SQL("set local lock_timeout = {}").format(sql.Literal(opts.lock_timeout))))
        sink.write(b"SET LOCAL maintenance_work_mem = '256MB';\n")
        for schema in plan.schemas:
            sink.write(q(sql.SQL("create schema if not exists {}").format(sql.Identifier(schema))))
        for table, name, _ in plan.incoming_fks:
            sink.write(q(sql.SQL("alter table {} drop constraint {}").format(table.ident, sql.Identifier(name))))
        if plan.drop_tables:
            sink.write(q(sql.SQL("drop table {}").format(sql.SQL(", ").join(t.ident for t in plan.drop_tables))))
        for info in plan.drop_types:
            sink.write(q(sql.SQL("drop type {}").format(_entry_name(info.name).ident)))
        for info in plan.create_types:
            sink.write(info.ddl.encode() + b"\n")
        listings: dict[str, list[str]] = {}
        for entry in plan.entries:
            key = prefix + entry.key
            listings[entry.name] = _toc(store, key, manifest, opts)
            keep = [line for line in listings[entry.name] if " FK CONSTRAINT " not in line]
            notify("start", entry.name, {})
            digests[entry.name] = _pipe_archive(store, key, manifest, keep, sink, opts, notify, entry.name)
            notify("loaded", entry.name, {"rows": entry.rows})
        for entry in plan.entries:
            fks = [line for line in listings[entry.name] if " FK CONSTRAINT " in line]
            if fks:
                _pipe_archive(store, prefix + entry.key, manifest, fks, sink, opts, None, entry.name, header_only=True)
        for table, name, definition in plan.incoming_fks:
            sink.write(q(sql.SQL("alter table {} add constraint {} {}").format(
                table.ident, sql.Identifier(name), sql.SQL(definition))))
        sink.write(_verification_sql(conn, plan.entries))
        changed = [n for n, d in digests.items() if d != manifest.table(n).sha256]
        if changed:  # the store changed between the checksum pass and the restore: never COMMIT that
            raise ChecksumMismatch(f"checksum mismatch while restoring {', '.join(changed)}: rolled back")
        sink.write(b"COMMIT;\n")
        sink.close()
    except BrokenPipeError:
        pass  # psql stopped on an error: its message is read below
    except BaseException:
        psql.kill()
        psql.wait()
        raise
    rc = psql.wait()
    err.seek(0)
    message = mask(err.read().decode(errors="replace").strip())
    err.close()
    if rc != 0:
        detail = _first_error(message)
        if "migsafe verification:" in detail:
            raise RestoreVerificationFailed(f"restore rolled back, target unchanged: {detail}")
        raise RestoreFailed(f"restore rolled back, target unchanged: {detail}")
    counted: dict[str, int] = {}
    for line in message.splitlines():
        _, marker, rest = line.partition("NOTICE:  migsafe-rows ")
        if marker:
            n, _, name = rest.partition(" ")
            counted[name.strip()] = int(n)
    return counted


def _first_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "ERROR" in line or "FATAL" in line]
    return (lines[0].split("ERROR:", 1)[-1].strip() if lines else stderr[-1000:]) or "psql failed"


def _verification_sql(conn: psycopg.Connection[Any], entries: list[TableEntry]) -> bytes:
    """A DO block that aborts the transaction unless counts and foreign keys are as promised."""
    parts = []
    for e in entries:
        ident = _entry_name(e.name).ident
        parts.append(
            sql.SQL(
                "n := (select count(*) from {t}); raise notice 'migsafe-rows % %', n, {name}; "
                "if n <> {n} then raise exception "
                "'migsafe verification: row count mismatch for %: % restored, % in the manifest', {name}, n, {n}; "
                "end if;"
            ).format(t=ident, n=sql.Literal(e.rows), name=sql.Literal(e.name))
        )
    body = sql.SQL("\n").join(parts)
    regs = sql.SQL(", ").join(
        sql.SQL("to_regclass({})").format(sql.Literal('"{}"."{}"'.format(*_entry_name(e.name)))) for e in entries
    )
    validate = sql.SQL(
        "for r in select c.conrelid::regclass as rel, c.conname from pg_constraint c "
        "where c.contype = 'f' and not c.convalidated and c.conrelid = any(array[{regs}]) "
        "loop execute format('alter table %s validate constraint %I', r.rel, r.conname); end loop;"
    ).format(regs=regs)
    block = sql.SQL("do $migsafe$ declare r record; n bigint; begin {validate}\n{body}\nend $migsafe$").format(
        validate=validate, body=body
    )
    return (block.as_string(conn) + ";\n").encode()


def _toc(store: Store, key: str, manifest: Manifest, opts: RestoreOptions) -> list[str]:
    """The archive's table of contents (``pg_restore --list``), reading only its header."""
    out = _run_restore_tool(store, key, manifest, ["--list"], opts, capture=True, header_only=True)
    return [line for line in out.decode().splitlines() if line and not line.startswith(";")]


def _pipe_archive(store: Store, key: str, manifest: Manifest, toc: list[str], sink: IO[bytes],
                  opts: RestoreOptions, notify: ProgressFn | None, name: str, header_only: bool = False) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".list", delete=False) as fh:
        fh.write("\n".join(toc) + "\n")
        list_path = fh.name
    try:
        args = [f"--use-list={list_path}", "--file=-"]
        if opts.no_owner:
            args += ["--no-owner", "--no-privileges"]
        digest = hashlib.sha256()
        try:
            _run_restore_tool(store, key, manifest, args, opts, sink=sink, header_only=header_only,
                              digest=None if header_only else digest, notify=notify, name=name)
        except ToolFailed as exc:
            # pg_restore choking on bytes that passed the checksum pass means the store changed
            # under us: say that (the transaction is rolled back either way)
            entry = manifest.table(name)
            if not check_object(store, key, entry.sha256, entry.bytes).ok:
                raise ChecksumMismatch(f"checksum mismatch: {key} changed while restoring; rolled back") from exc
            raise
        return digest.hexdigest()
    finally:
        Path(list_path).unlink(missing_ok=True)


def _run_restore_tool(store: Store, key: str, manifest: Manifest, args: list[str], opts: RestoreOptions, *,
                      capture: bool = False, sink: IO[bytes] | None = None, header_only: bool = False,
                      digest: Any | None = None, notify: ProgressFn | None = None, name: str = "") -> bytes:
    """Run pg_restore on the archive streamed from the store; its output goes to ``sink`` or is returned."""
    proc = subprocess.Popen([tool("pg_restore", opts.pg_bindir), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=(err := tempfile.TemporaryFile()))  # noqa: SIM115
    assert proc.stdin is not None and proc.stdout is not None
    feed_error: list[BaseException] = []

    def feed() -> None:
        assert proc.stdin is not None
        try:
            stored = store.read(key) if digest is None else hashed_chunks(store.read(key), digest)
            for chunk in decompressed(stored, manifest.compression):
                proc.stdin.write(chunk)
        except BrokenPipeError:
            if not header_only:
                feed_error.append(ToolFailed(f"pg_restore stopped reading {key}"))
        except BaseException as exc:
            feed_error.append(exc)
        finally:
            with contextlib.suppress(BrokenPipeError, OSError):
                proc.stdin.close()

    feeder = threading.Thread(target=feed, name="migsafe-restore-feed", daemon=True)
    feeder.start()
    captured = bytearray()
    moved = 0
    try:
        while chunk := proc.stdout.read(1 << 20):
            if capture:
                captured += chunk
            else:
                assert sink is not None
                sink.write(chunk)
                moved += len(chunk)
                if notify:
                    notify("bytes", name, {"bytes": moved})
    except BaseException:
        proc.kill()
        raise
    finally:
        rc = proc.wait()
        feeder.join()
        err.seek(0)
        message = err.read().decode(errors="replace").strip()
        err.close()
    if feed_error:
        raise feed_error[0]
    if rc != 0:
        raise ToolFailed(f"pg_restore failed on {key}: {message[-1500:]}")
    return bytes(captured)


def check_restored(
    conn: psycopg.Connection[Any],
    manifest: Manifest,
    tables: Sequence[str],
    counted: dict[str, int] | None = None,
) -> RestoreReport:
    """Compare the target with the manifest: row counts, FK validity, enum labels.

    ``counted`` are the row counts the restore transaction itself measured just before COMMIT
    (reported by its verification block); tables missing from it are counted now.
    """
    checks = []
    names = [_entry_name(t) for t in tables]
    existing = catalog.existing_tables(conn, names)
    for name in names:
        entry = manifest.table(str(name))
        problems = []
        if name not in existing:
            checks.append(TableRestoreCheck(name=str(name), rows_expected=entry.rows, rows_restored=0, foreign_keys=0,
                                            foreign_keys_valid=0, problems=[f"{name} does not exist"]))
            continue
        rows = (counted or {}).get(entry.name)
        if rows is None:
            rows = catalog.count_rows(conn, name)
        fks = catalog.foreign_keys(conn, [existing[name]])
        if rows != entry.rows:
            problems.append(f"{name}: {rows} rows, the backup has {entry.rows}")
        invalid = [fk["name"] for fk in fks if not fk["validated"]]
        if invalid:
            problems.append(f"{name}: foreign keys not valid: {', '.join(invalid)}")
        expected_fks = {c.name for c in entry.foreign_keys}
        missing = sorted(expected_fks - {fk["name"] for fk in fks})
        if missing:
            problems.append(f"{name}: foreign keys missing: {', '.join(missing)}")
        checks.append(TableRestoreCheck(name=str(name), rows_expected=entry.rows, rows_restored=rows,
                                        foreign_keys=len(fks), foreign_keys_valid=len(fks) - len(invalid),
                                        problems=problems))
    needed = {t for name in tables for t in manifest.table(name).types}
    types = [
        TypeRestoreCheck(name=t.name, labels_expected=t.labels,
                         labels_found=catalog.enum_labels(conn, t.name) if t.kind == "enum" else t.labels, created=False)
        for t in manifest.types
        if t.name in needed
    ]
    return RestoreReport(backup_id=manifest.backup_id, target="", tables=checks, types=types)


def run_undo(target: Dsn, restore_id: str, *, lock_timeout: str = "30s") -> RestoreReport:
    """Swap the tables a restore replaced back into place (contract; implemented with the swap)."""
    raise NotImplementedError
