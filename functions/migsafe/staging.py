"""Load a backup's tables into staging schemas, in parallel, and verify them there.

Why a staging schema: the live tables stay untouched (and unlocked) while the slow part runs --
reading the store, loading rows, building indexes, validating foreign keys. The swap that follows
only renames schemas of finished, verified tables (see :mod:`migsafe.swap`).

Why we still run ``pg_restore``: every dump must stay restorable with stock tools, so we use the
same tool to turn each archive into SQL. One ``pg_restore --file=-`` per table reads the archive
once, as it streams from the store through sha256; its output is split by the entry headers
pg_dump writes (``-- Name: x; Type: T; Schema: s; Owner: o``):

* table definitions go to one session per table (``--jobs`` tables at once), and the rows of each
  COPY are dealt out, in chunks of whole lines, to several COPY sessions (the jobs left over when
  there are fewer tables than jobs) -- the server's parsing and inserting runs on several cores
  even for one large table;
* indexes and constraints are kept (they are small) and built afterwards, also in parallel --
  several ``CREATE INDEX`` on one table run concurrently in separate sessions;
* foreign keys come last, once every referenced key exists.

The SQL names objects schema-qualified (``public.users``). Each qualified name of a relation of the
restore -- the tables, their partitions, sequences and indexes, listed by the entry headers -- is
rewritten to the staging schema, spelled exactly as pg_dump spells it (``quote_ident``), outside
COPY data only. Names with dots, quotes, spaces and mixed case keep working because nothing is
parsed from the names themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

import psycopg
from psycopg import sql

from . import catalog, pgtools
from .dsn import Dsn, mask
from .exceptions import ChecksumMismatch, DatabaseError, RestoreFailed, RestoreVerificationFailed, ToolFailed
from .identifiers import QualifiedName
from .models import Manifest, ObjectEntry, TableEntry, TableRestoreCheck, TypeInfo, TypeRestoreCheck
from .pgtools import tool
from .store import Store
from .streams import decompressed, hashed_chunks

ProgressFn = Callable[[str, str, dict[str, Any]], None]

STAGING_PREFIX = "migsafe_staging_"
UNDO_PREFIX = "migsafe_undo_"
ADVISORY_CLASS = 0x6D6967  # "mig": the restore holding staging schemas of its id keeps this lock

_HEADER = re.compile(rb"^-- (?:Data for )?Name: (.*); Type: (.*?); Schema: (.*?); Owner: ?(.*)$")
# entries that go into the table's own session, in order, before and with its rows
_LOAD = {b"TABLE", b"SEQUENCE", b"SEQUENCE OWNED BY", b"DEFAULT", b"TABLE ATTACH", b"TABLE DATA",
         b"SEQUENCE SET", b"SHELL TYPE"}
_BUILD = {b"CONSTRAINT", b"INDEX", b"CHECK CONSTRAINT"}  # phase 2, in parallel
# everything else (triggers, policies, row security, grants, index attach, rules) is phase 3,
# foreign keys phase 4


def split_name(name: str, schema: str | None = None) -> QualifiedName:
    """A manifest name as the catalog spells it; ``schema`` (when the manifest has it) disambiguates dots.

    Never :meth:`QualifiedName.parse` it: that folds ``Orders`` to ``orders`` and refuses
    ``Sales Data.Order Items``, names the catalog holds verbatim.
    """
    if schema is not None and name.startswith(schema + "."):
        return QualifiedName(schema, name[len(schema) + 1:])
    first, _, rest = name.partition(".")
    return QualifiedName(first, rest)


def entry_name(entry: TableEntry) -> QualifiedName:
    return split_name(entry.name, entry.schema_name)


def partition_names(entry: TableEntry) -> list[QualifiedName]:
    return [split_name(p, entry.schema_name if p.startswith((entry.schema_name or "\0") + ".") else None)
            for p in entry.partitions]


def new_restore_id() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y%m%d%H%M%S") + "_" + os.urandom(3).hex()


def schema_for(prefix: str, restore_id: str, index: int) -> str:
    """``migsafe_staging_<id>`` for the first real schema of a restore, ``..._<id>_<k>`` for others."""
    return f"{prefix}{restore_id}" + (f"_{index}" if index else "")


def restore_id_of(schema: str) -> str | None:
    for prefix in (STAGING_PREFIX, UNDO_PREFIX):
        if schema.startswith(prefix):
            m = re.match(r"^(\d{14}_[0-9a-f]{6})", schema[len(prefix):])
            return m.group(1) if m else None
    return None


def advisory_key(restore_id: str) -> int:
    return int.from_bytes(hashlib.sha256(restore_id.encode()).digest()[:4], "big", signed=True)


@dataclass
class Staged:
    """What the staging load produced: where each object lives, and what the checks found."""

    restore_id: str
    schemas: dict[str, str]  # real schema -> staging schema
    tables: dict[str, QualifiedName] = field(default_factory=dict)  # manifest name -> staged name
    types: dict[str, QualifiedName] = field(default_factory=dict)  # manifest type name -> staged name
    checks: list[TableRestoreCheck] = field(default_factory=list)
    type_checks: list[TypeRestoreCheck] = field(default_factory=list)
    measured: dict[str, tuple[int, str | None]] = field(default_factory=dict)  # rows and fingerprint, once loaded

    def staged(self, real: QualifiedName) -> QualifiedName:
        return QualifiedName(self.schemas[real.schema], real.name)


@dataclass
class _Measure:
    """A row count and fingerprint to take beside the index builds."""

    entry: str
    name: QualifiedName
    method: catalog.FingerprintMethod | None  # the manifest's (None: an old manifest without one, count only)
    result: tuple[int, str | None] | None = None


class _Rewriter:
    """Rewrites the qualified names of the restore's relations to their staging schemas."""

    def __init__(self, mapping: dict[bytes, bytes]) -> None:
        self.reset(mapping)

    def reset(self, mapping: dict[bytes, bytes]) -> None:
        self.mapping = dict(mapping)
        if mapping:
            alternatives = b"|".join(re.escape(k) for k in sorted(mapping, key=len, reverse=True))
            self.pattern: re.Pattern[bytes] | None = re.compile(rb'(?<![\w$."])(' + alternatives + rb")(?![\w$])")
        else:
            self.pattern = None

    def __call__(self, line: bytes) -> bytes:
        if self.pattern is None or b"." not in line:
            return line
        return self.pattern.sub(lambda m: self.mapping[m.group(1)], line)


class Quoter:
    """Quotes a name as pg_dump's fmtId does: plain lower-case non-keywords bare, the rest in quotes.

    The keyword list comes from the server (``pg_get_keywords``), so it matches the tools' version.
    """

    _PLAIN = re.compile(r"^[a-z_][a-z0-9_]*$")

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.reserved = {r[0] for r in conn.execute("select word from pg_get_keywords() where catcode <> 'U'")}

    def __call__(self, name: str) -> str:
        if self._PLAIN.match(name) and name not in self.reserved:
            return name
        return '"' + name.replace('"', '""') + '"'

    def qualified(self, schema: str, name: str) -> bytes:
        return f"{self(schema)}.{self(name)}".encode()


class Loader:
    """Loads entries into staging schemas of ``target``; one instance per restore or diff."""

    def __init__(self, store: Store, prefix: str, manifest: Manifest, target: Dsn, restore_id: str, *,
                 jobs: int | None, no_owner: bool, pg_bindir: str | None, notify: ProgressFn,
                 analyze: bool = True, build: bool = True) -> None:
        self.analyze = analyze
        # False for diff and merge: their staged tables are read once and dropped, never swapped in,
        # so indexes, constraints, foreign keys, triggers and grants would be built for nothing (a
        # merge's rows meet the live table's own constraints as they are inserted). The rows are
        # still checked: sha256 as they stream, then counts and fingerprints against the manifest.
        self.build = build
        self.created_types: list[QualifiedName] = []  # made in place by load(), in this order
        self.streams = 1  # COPY sessions per table, set by load() from jobs and the table count
        # parallel workers per CREATE INDEX / ADD CONSTRAINT: the server's default, or 0 while our
        # own sessions already fill every job (see _run_sql)
        self.maintenance_workers: int | None = None
        self.store = store
        self.prefix = prefix
        self.manifest = manifest
        self.target = target
        self.restore_id = restore_id
        self.jobs = max(1, jobs or os.cpu_count() or 2)
        self.no_owner = no_owner
        self.pg_bindir = pg_bindir
        self.notify = notify
        # staged tables whose autovacuum is off while they load and build (reset before the swap)
        self.autovacuum_off: list[QualifiedName] = []
        self._av_lock = threading.Lock()

    # -- naming ------------------------------------------------------------------------------
    def plan_schemas(self, entries: Sequence[TableEntry], types: Sequence[TypeInfo]) -> dict[str, str]:
        real = sorted({entry_name(e).schema for e in entries}
                      | {p.schema for e in entries for p in partition_names(e)}
                      | {split_name(t.name).schema for t in types})
        return {s: schema_for(STAGING_PREFIX, self.restore_id, i) for i, s in enumerate(real)}

    # -- the load ----------------------------------------------------------------------------
    def load(self, conn: psycopg.Connection[Any], entries: Sequence[TableEntry],
             stage_types: Sequence[TypeInfo], create_types: Sequence[TypeInfo] = ()) -> Staged:
        """Create the staging schemas and load ``entries``; ChecksumMismatch/RestoreFailed on failure.

        ``stage_types`` are created in staging (missing in the target, or with other enum labels);
        the others are used as the target has them.
        """
        schemas = self.plan_schemas(entries, stage_types)
        staged = Staged(restore_id=self.restore_id, schemas=schemas)
        for s in schemas.values():
            conn.execute(sql.SQL("create schema {}").format(sql.Identifier(s)))
        # the names to rewrite: tables, partitions and staged types (relation names inside each
        # archive -- sequences, indexes -- are added per archive from its entry headers)
        q = Quoter(conn)
        mapping: dict[bytes, bytes] = {}

        def add(schema: str, name: str) -> None:
            if schema in schemas:
                mapping.setdefault(q.qualified(schema, name), q.qualified(schemas[schema], name))

        relations: dict[str, set[str]] = {}
        for e in entries:
            staged.tables[e.name] = staged.staged(entry_name(e))
            for n in (entry_name(e), *partition_names(e)):
                add(n.schema, n.name)
                relations.setdefault(n.schema, set()).add(n.name)
        for t in stage_types:
            n = split_name(t.name)
            add(n.schema, n.name)
            # catalog.type_ddl writes sql.Identifier names: always double-quoted
            mapping[sql.Identifier(n.schema, n.name).as_string(conn).encode()] = q.qualified(schemas[n.schema], n.name)
            staged.types[t.name] = staged.staged(n)
        rewrite = _Rewriter(mapping)
        # enums are staged (swapped with their tables); the other missing types -- domains,
        # composites, ranges, whose helper objects would not follow a schema move -- are created
        # in place, referring to staged enums, and dropped again when the restore does not swap
        staging_ddl = {t.name for t in stage_types}
        with conn.transaction():
            conn.execute("set local search_path = ''")
            conn.execute("set local check_function_bodies = false")
            for s_ in sorted({split_name(t.name).schema for t in create_types}):
                conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(s_)))
            for t in sorted([*stage_types, *create_types], key=lambda t: self.manifest.types.index(t)
                            if t in self.manifest.types else 0):
                conn.execute(rewrite(t.ddl.encode()).decode())
                if t.name not in staging_ddl:
                    self.created_types.append(split_name(t.name))
        # phase 1: definitions and rows; jobs spread over the tables, and the rest of them over
        # each table's rows
        self.streams = max(1, self.jobs // min(self.jobs, max(1, len(entries))))
        names: dict[str, set[tuple[str, str]]] = {}
        later: dict[str, list[tuple[bytes, bytes]]] = {}
        lock = threading.Lock()

        def one(entry: TableEntry) -> None:
            found, kept = self._load_table(entry, rewrite, mapping, lock, q, schemas, relations)
            with lock:
                names[entry.name] = found
                later[entry.name] = kept

        self._parallel(one, entries)
        # phases 2-4 -- the rewriter now knows every sequence and index name of every archive
        built = [(kind, body) for e in entries for kind, body in later[e.name]]
        # the count and fingerprint scan (ACCESS SHARE) runs beside the index builds (SHARE): both
        # only read the rows, and the scan fills a core an index build leaves idle
        measure = [_Measure(e.name, staged.tables[e.name],
                            catalog.fingerprint_method(e.fingerprint) if e.fingerprint else None) for e in entries]
        if not self.build:
            self._run_sql([], "index", extra=measure)
            staged.measured = {m.entry: m.result for m in measure if m.result is not None}
            if self.analyze:  # the comparison's joins are planned from these
                self._parallel(lambda e: self._exec(sql.SQL("analyze {}").format(staged.tables[e.name].ident)),
                               entries)
            return staged
        self._run_sql([rewrite_block(rewrite, b) for k, b in built if k in _BUILD], "index", extra=measure)
        staged.measured = {m.entry: m.result for m in measure if m.result is not None}
        # triggers, policies, row security, grants, comments: quick, and run one after another --
        # GRANT and ALTER TABLE ... ROW LEVEL SECURITY on one table update the same catalog row
        self._run_sql([b";\n".join(rewrite_block(rewrite, b).rstrip(b";") for k, b in built
                                   if k not in _BUILD and k != b"FK CONSTRAINT" and rewrite_block(rewrite, b))],
                      "object")
        # foreign keys: added NOT VALID, then validated -- VALIDATE takes only ROW SHARE on the
        # referenced table, so a live table outside the restore keeps taking writes meanwhile
        fks = [rewrite_block(rewrite, b) for k, b in built if k == b"FK CONSTRAINT"]
        self._run_sql([_not_valid(b) for b in fks], "foreign key")
        pending = conn.execute(
            """
            select n.nspname, r.relname, c.conname from pg_constraint c join pg_class r on r.oid = c.conrelid
            join pg_namespace n on n.oid = r.relnamespace
            where c.contype = 'f' and not c.convalidated and n.nspname = any(%s) order by 1, 2, 3
            """, (list(schemas.values()),)).fetchall()
        self._run_sql([sql.SQL("alter table {} validate constraint {}").format(
            sql.Identifier(r[0], r[1]), sql.Identifier(r[2])).as_string(conn).encode() for r in pending],
            "foreign key")
        if self.analyze:  # statistics travel with the table: the planner knows it from the first query
            self._parallel(lambda e: self._exec(sql.SQL("analyze {}").format(staged.tables[e.name].ident)), entries)
        for n in self.autovacuum_off:  # the tables go live as the backup defined them
            conn.execute(sql.SQL("alter table {} reset (autovacuum_enabled)").format(n.ident))
        return staged

    def _autovacuum_off(self, conn: psycopg.Connection[Any], entry: TableEntry, schemas: dict[str, str]) -> None:
        """Keep autovacuum off the staged tables while they load, build and verify.

        A freshly loaded table crosses autovacuum's insert threshold at once: its vacuum then burns a
        core beside our index builds, and a ``CREATE INDEX`` or ``VALIDATE`` waits up to
        ``deadlock_timeout`` for it to be cancelled (the server log shows "canceling autovacuum
        task" on staging tables). The setting is reset before the swap; a table whose definition
        sets ``autovacuum_enabled`` itself is left alone.
        """
        for real in (entry_name(entry), *partition_names(entry)):
            if real.schema not in schemas:
                continue
            n = QualifiedName(schemas[real.schema], real.name)
            row = conn.execute(
                "select c.relkind, coalesce(c.reloptions, '{}') from pg_class c join pg_namespace s "
                "on s.oid = c.relnamespace where s.nspname = %s and c.relname = %s", (n.schema, n.name)).fetchone()
            if row and row[0] == "r" and not any(o.startswith("autovacuum_enabled=") for o in row[1]):
                conn.execute(sql.SQL("alter table {} set (autovacuum_enabled = false)").format(n.ident))
                with self._av_lock:
                    self.autovacuum_off.append(n)

    def _parallel(self, fn: Callable[[Any], None], items: Sequence[Any]) -> None:
        if not items:
            return
        with ThreadPoolExecutor(max_workers=min(self.jobs, len(items)), thread_name_prefix="migsafe-stage") as pool:
            futures = [pool.submit(fn, i) for i in items]
            errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            # a checksum mismatch explains the rest; otherwise the first failure
            first = next((e for e in errors if isinstance(e, ChecksumMismatch)), errors[0])
            raise first  # type: ignore[misc]

    def _exec(self, stmt: sql.Composed | sql.SQL | str) -> None:
        with catalog.connect(self.target, application_name="migsafe restore staging") as conn:
            conn.execute("set search_path = ''")
            conn.execute("set check_function_bodies = false")
            conn.execute("set maintenance_work_mem = '256MB'")
            if self.maintenance_workers is not None:
                conn.execute(sql.SQL("set max_parallel_maintenance_workers = {}").format(
                    sql.Literal(self.maintenance_workers)))
            conn.execute(stmt.encode() if isinstance(stmt, str) else stmt)

    def _run_sql(self, blocks: list[bytes], what: str, extra: Sequence[_Measure] = ()) -> None:
        def run(block: bytes | _Measure) -> None:
            if isinstance(block, _Measure):
                with catalog.connect(self.target, application_name="migsafe restore verify") as c:
                    block.result = _measure(c, block.name, block.method)
                return
            try:
                self._exec(block.decode())
            except psycopg.errors.ForeignKeyViolation as exc:
                raise RestoreVerificationFailed(
                    f"foreign key check failed in staging, nothing swapped: {mask(str(exc)).strip()}") from exc
            except psycopg.Error as exc:
                raise RestoreFailed(f"building {what} in staging failed: {mask(str(exc)).strip()}") from exc

        # the scans first: an index build is shorter than a scan that hashes every row
        work = [*extra, *(b for b in blocks if b.strip())]
        # as many builds as jobs: each session builds alone. The server's parallel workers per build
        # (max_parallel_maintenance_workers, 2 by default) would only put three processes on each
        # core, each sort paying for the hand-over; measured at 1 M rows on 2 cores, 7% less CPU and
        # 10% less wall time for the restore (docs/benchmarks.md). Fewer builds than jobs: the
        # idle cores are theirs.
        self.maintenance_workers = 0 if len(work) >= self.jobs else None
        try:
            self._parallel(run, work)
        finally:
            self.maintenance_workers = None

    def _load_table(self, entry: TableEntry, rewrite: _Rewriter, mapping: dict[bytes, bytes], lock: threading.Lock,
                    q: Quoter, schemas: dict[str, str], relations: dict[str, set[str]]
                    ) -> tuple[set[tuple[str, str]], list[tuple[bytes, bytes]]]:
        """Stream one archive: definitions, then rows over several COPY sessions; the rest kept for later."""
        key = self.prefix + entry.key
        self.notify("start", entry.name, {})
        argv = [tool("pg_restore", self.pg_bindir), "--file=-"] + (
            ["--no-owner", "--no-privileges"] if self.no_owner else [])
        conn = catalog.connect(self.target, application_name="migsafe restore staging")
        # its own process group, stopped with migsafe (an interrupt, a kill -9 of migsafe)
        restore = pgtools.spawn(argv, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=(rerr := tempfile.TemporaryFile()))  # noqa: SIM115
        assert restore.stdin is not None and restore.stdout is not None
        digest = hashlib.sha256()
        size = [0]
        feed_error: list[BaseException] = []

        def feed() -> None:
            assert restore.stdin is not None
            stored = hashed_chunks(self.store.read(key), digest)
            try:
                for chunk in decompressed(_counted(stored, size), self.manifest.compression):
                    restore.stdin.write(chunk)
            except BrokenPipeError:
                # pg_restore stopped early (it failed, or we stopped reading): still hash every
                # byte, so a changed object is reported as such
                with contextlib.suppress(Exception):
                    for _ in _counted(stored, size):
                        pass
            except BaseException as exc:
                feed_error.append(exc)
            finally:
                with contextlib.suppress(BrokenPipeError, OSError):
                    restore.stdin.close()

        feeder = threading.Thread(target=feed, name="migsafe-stage-feed", daemon=True)
        feeder.start()
        found: set[tuple[str, str]] = set()
        kept: list[tuple[bytes, bytes]] = []
        current: list[bytes] | None = None  # lines of an entry kept for later
        kind = b""
        pending: list[bytes] = []  # SQL of the entries loaded now, run before each COPY and at the end
        preamble: list[bytes] = []  # pg_restore's session settings (encoding, ...): every COPY session's too
        seen_header = False
        quiet = False  # autovacuum turned off on the entry's staged tables
        moved = 0
        failure: BaseException | None = None

        def flush() -> None:
            if pending:
                conn.execute(b"".join(pending))
                pending.clear()

        try:
            conn.execute("set maintenance_work_mem = '256MB'")
            source = _Lines(restore.stdout)
            while line := source.readline():
                m = _HEADER.match(line.rstrip(b"\n"))
                if m:
                    seen_header = True
                    kind = m.group(2)
                    schema = m.group(3).decode(errors="replace")
                    name = m.group(1).decode(errors="replace")
                    if kind == b"CONSTRAINT" and schema in schemas:
                        # "table constraint": a unique/primary key's index is a relation too
                        # (partition indexes are attached by name)
                        owner = next((t for t in relations.get(schema, ()) if name.startswith(t + " ")), None)
                        name = name[len(owner) + 1:] if owner else ""
                    if kind in (b"SEQUENCE", b"INDEX", b"TABLE", b"CONSTRAINT") and schema in schemas and name:
                        found.add((schema, name))
                        with lock:
                            before = len(mapping)
                            mapping.setdefault(q.qualified(schema, name), q.qualified(schemas[schema], name))
                            if len(mapping) != before:
                                rewrite.reset(mapping)
                    if kind in _LOAD:
                        current = None
                    else:
                        current = [line]
                        kept.append((kind, b""))
                    continue
                if current is not None:
                    current.append(line)
                    kept[-1] = (kind, b"".join(current))
                    continue
                if line.startswith(b"\\"):  # psql meta-commands (\restrict): we are not psql
                    continue
                if line.startswith(b"COPY ") and line.rstrip().endswith(b"FROM stdin;"):
                    flush()  # the table exists, committed, before any COPY session starts
                    if not quiet:
                        self._autovacuum_off(conn, entry, schemas)
                        quiet = True
                    moved = self._copy(b"".join(preamble), rewrite(line).rstrip().rstrip(b";"), source,
                                       entry.name, moved)
                    continue
                if not seen_header:
                    preamble.append(line)
                pending.append(rewrite(line))
            flush()
            if entry.parts:  # a split table: its archive held no rows; they are in the parts
                if not quiet:
                    self._autovacuum_off(conn, entry, schemas)
                real = entry_name(entry)
                moved = self._load_parts(entry, QualifiedName(schemas[real.schema], real.name), moved)
        except psycopg.Error as exc:
            failure = RestoreFailed(f"loading {entry.name} into staging failed: {mask(str(exc)).strip()}")
            failure.__cause__ = exc  # its SQLSTATE tells a restore test's FAIL from a fault
        except BaseException as exc:
            failure = exc
        finally:
            conn.close()
            if failure is not None:
                pgtools.stop(restore)
            rrc = restore.wait()
            pgtools.release(restore)
            feeder.join()
            rerr.seek(0)
            restore_msg = rerr.read().decode(errors="replace").strip()
            rerr.close()
        if feed_error:
            raise feed_error[0]
        if digest.hexdigest() != entry.sha256 or size[0] != entry.bytes:
            raise ChecksumMismatch(f"checksum mismatch: {key} differs from the manifest; nothing was swapped")
        if failure is not None:
            raise failure
        if rrc != 0:
            raise ToolFailed(f"pg_restore failed on {key}: {restore_msg[-1500:]}")
        self.notify("loaded", entry.name, {"rows": entry.rows})
        return found, kept

    def _load_parts(self, entry: TableEntry, staged: QualifiedName, moved: int) -> int:
        """A split table's parts, in parallel, one COPY session each; ChecksumMismatch if one differs.

        Each part is the text COPY output of a ctid range, in UTF8 (see TableEntry.parts): it streams
        from the store through sha256 and zstd straight into its session, so the parts load side by
        side, as they were dumped.
        """
        statement = sql.SQL("copy {} ({}) from stdin").format(
            staged.ident, sql.SQL(", ").join(sql.Identifier(c) for c in entry.copy_columns))
        lock = threading.Lock()

        def load(part: ObjectEntry) -> None:
            nonlocal moved
            digest = hashlib.sha256()
            size = [0]
            stored = _counted(hashed_chunks(self.store.read(self.prefix + part.key), digest), size)
            try:
                with catalog.connect(self.target, application_name="migsafe restore staging") as c:
                    c.execute("set client_encoding = 'UTF8'; set datestyle = 'ISO'; set intervalstyle = 'postgres'")
                    with c.cursor() as cur, cur.copy(statement) as copy:
                        for chunk in decompressed(stored, self.manifest.compression):
                            copy.write(chunk)
                            with lock:
                                moved += len(chunk)
                                self.notify("bytes", entry.name, {"bytes": moved})
            except psycopg.Error as exc:
                for _ in stored:  # hash the rest: a changed part is reported as such
                    pass
                if digest.hexdigest() != part.sha256 or size[0] != part.bytes:
                    raise ChecksumMismatch(f"checksum mismatch: {self.prefix + part.key} differs from the "
                                           "manifest; nothing was swapped") from exc
                raise RestoreFailed(f"loading {entry.name} into staging failed: {mask(str(exc)).strip()}") from exc
            if digest.hexdigest() != part.sha256 or size[0] != part.bytes:
                # the session has committed its rows into staging, which is dropped: nothing is swapped
                raise ChecksumMismatch(f"checksum mismatch: {self.prefix + part.key} differs from the manifest; "
                                       "nothing was swapped")

        with ThreadPoolExecutor(max_workers=max(1, min(self.jobs, len(entry.parts))),
                                thread_name_prefix="migsafe-stage-part") as pool:
            futures = [pool.submit(load, part) for part in entry.parts]
            errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise next((e for e in errors if isinstance(e, ChecksumMismatch)), errors[0])  # type: ignore[misc]
        return moved

    def _copy(self, preamble: bytes, statement: bytes, source: _Lines, name: str, moved: int) -> int:
        """One table's rows, spread chunk by chunk over ``streams`` COPY sessions; returns bytes moved.

        COPY rows are independent lines and every chunk holds whole lines, so sessions can load
        them side by side: the server's parsing and inserting, the bulk of a restore, runs on as
        many cores as there are sessions.
        """
        streams = max(1, self.streams)
        queues: list[queue.Queue[bytes | None]] = [queue.Queue(maxsize=8) for _ in range(streams)]
        errors: list[BaseException] = []

        def load(q: queue.Queue[bytes | None]) -> None:
            ended = False
            try:
                with catalog.connect(self.target, application_name="migsafe restore staging") as c:
                    if preamble.strip():
                        c.execute(preamble)
                    with c.cursor() as cur, cur.copy(statement.decode()) as copy:
                        while (chunk := q.get()) is not None:
                            copy.write(chunk)
                        ended = True
            except BaseException as exc:
                errors.append(exc)
                while not ended:  # keep draining: the reader never blocks on a dead session
                    ended = q.get() is None

        threads = [threading.Thread(target=load, args=(q,), name="migsafe-stage-copy", daemon=True) for q in queues]
        for t in threads:
            t.start()
        turn = 0

        def forward(data: bytes) -> None:
            nonlocal turn, moved
            moved += len(data)
            if data.endswith(b"\\.\n") and (len(data) == 3 or data[-4:-3] == b"\n"):
                data = data[:-3]  # the end marker is psql's; over the protocol, the end is the message
            if data:
                queues[turn % streams].put(data)
                turn += 1
            self.notify("bytes", name, {"bytes": moved})

        try:
            source.copy_rows(forward)
        finally:
            for q in queues:
                q.put(None)
            for t in threads:
                t.join()
        if errors:
            first = errors[0]
            if isinstance(first, psycopg.Error):
                raise RestoreFailed(f"loading {name} into staging failed: {mask(str(first)).strip()}") from first
            raise first
        return moved

    # -- verification ------------------------------------------------------------------------
    def verify(self, conn: psycopg.Connection[Any], staged: Staged, entries: Sequence[TableEntry],
               types: Sequence[TypeInfo]) -> None:
        """Row counts, fingerprints, columns, foreign keys and enum labels against the manifest."""
        checks: list[TableRestoreCheck] = []
        lock = threading.Lock()

        def check(entry: TableEntry) -> None:
            name = staged.tables[entry.name]
            with catalog.connect(self.target, application_name="migsafe restore verify") as c:
                method = catalog.fingerprint_method(entry.fingerprint) if entry.fingerprint else None
                rows, fingerprint = staged.measured.get(entry.name) or _measure(c, name, method)
                oid = catalog.resolve_tables(c, [name])[name]
                columns = [r[0] for r in c.execute(
                    "select attname from pg_attribute where attrelid = %s and attnum > 0 and not attisdropped "
                    "order by attnum", (oid,)).fetchall()]
                fks = catalog.foreign_keys(c, [oid])
            problems = []
            if rows != entry.rows:
                problems.append(f"{entry.name}: {rows} rows, the backup has {entry.rows}")
            elif entry.fingerprint is not None and fingerprint != entry.fingerprint:
                problems.append(f"{entry.name}: content fingerprint {fingerprint} differs from the backup's "
                                f"{entry.fingerprint}")
            expected_columns = [c.name for c in entry.columns]
            if columns != expected_columns:
                problems.append(f"{entry.name}: columns {columns} differ from the backup's {expected_columns}")
            invalid = [fk["name"] for fk in fks if not fk["validated"]]
            if invalid:
                problems.append(f"{entry.name}: foreign keys not valid: {', '.join(invalid)}")
            missing = sorted({c.name for c in entry.foreign_keys} - {fk["name"] for fk in fks})
            if missing and self.build:  # without the build, no foreign key was meant to exist
                problems.append(f"{entry.name}: foreign keys missing: {', '.join(missing)}")
            with lock:
                checks.append(TableRestoreCheck(name=entry.name, rows_expected=entry.rows, rows_restored=rows,
                                                foreign_keys=len(fks), foreign_keys_valid=len(fks) - len(invalid),
                                                problems=problems))

        self._parallel(check, entries)
        order = {e.name: i for i, e in enumerate(entries)}
        staged.checks = sorted(checks, key=lambda c: order[c.name])
        needed = {t for e in entries for t in e.types}
        for t in types:
            if t.name not in needed:
                continue
            where = staged.types.get(t.name) or split_name(t.name)
            found = enum_labels(conn, where) if t.kind == "enum" else t.labels
            staged.type_checks.append(TypeRestoreCheck(name=t.name, labels_expected=t.labels, labels_found=found,
                                                       created=t.name in staged.types))
        problems = [p for c in staged.checks for p in c.problems] + [
            f"type {t.name}: labels {t.labels_found} differ from the backup's {t.labels_expected}"
            for t in staged.type_checks if not t.ok]
        if problems:
            raise RestoreVerificationFailed("verification failed in staging, nothing swapped: " + "; ".join(problems))


def _measure(conn: psycopg.Connection[Any], table: QualifiedName, method: catalog.FingerprintMethod | None
             ) -> tuple[int, str | None]:
    """Rows and fingerprint, taken with the manifest's method (a manifest without one: rows only)."""
    if method is None:
        return catalog.count_rows(conn, table), None
    return catalog.count_and_fingerprint(conn, table, method)


def rewrite_block(rewrite: _Rewriter, block: bytes) -> bytes:
    """One kept entry, rewritten, without comments or psql meta-commands (run through psycopg)."""
    lines = [rewrite(line) for line in block.splitlines(keepends=True)
             if not line.startswith((b"--", b"\\"))]
    return b"".join(lines).strip()


class _Lines:
    """pg_restore's output as lines, except COPY rows, which move as chunks (4x faster in Python)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.buf = b""

    def unread(self, data: bytes) -> None:
        self.buf = data + self.buf

    def readline(self) -> bytes:
        if self.buf:
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[:i + 1], self.buf[i + 1:]
                return line
            line, self.buf = self.buf + self.raw.readline(), b""
            return line
        return self.raw.readline()

    def copy_rows(self, forward: Callable[[bytes], None]) -> None:
        """Forward COPY rows and the ``\\.`` line that ends them; what follows stays to be read.

        The data always starts at a line start (only whole lines are forwarded), so the end
        marker is either at the start of the data or right after a newline. A row never equals
        ``\\.``: COPY escapes every backslash in the data.
        """
        data, self.buf = self.buf, b""
        while True:
            end = 0 if data.startswith(b"\\.\n") else data.find(b"\n\\.\n") + 1
            if end > 0 or data.startswith(b"\\.\n"):
                forward(data[:end + 3])
                self.buf = data[end + 3:]
                return
            cut = data.rfind(b"\n") + 1
            if cut:
                forward(data[:cut])
                data = data[cut:]
            chunk = self.raw.read1(1 << 16)  # type: ignore[attr-defined]
            if not chunk:  # pg_restore ended mid-table: psql reports the incomplete COPY
                if data:
                    forward(data)
                return
            data += chunk


def _not_valid(block: bytes) -> bytes:
    """pg_dump's ``ALTER TABLE ... ADD CONSTRAINT ... FOREIGN KEY ...;`` as ``... NOT VALID;``."""
    body = block.rstrip()
    return body[:-1] + b" NOT VALID;" if body.endswith(b";") and body.count(b";") == 1 else block


def _counted(chunks: Iterable[bytes], size: list[int]) -> Iterable[bytes]:
    for chunk in chunks:
        size[0] += len(chunk)
        yield chunk


def drop_schemas(conn: psycopg.Connection[Any], schemas: Iterable[str]) -> None:
    for s in schemas:
        with contextlib.suppress(psycopg.Error):
            conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(s)))


def sweep_staging(conn: psycopg.Connection[Any]) -> list[str]:
    """Drop staging schemas whose restore is gone (its advisory lock is free); return their names."""
    rows = conn.execute(
        "select nspname from pg_namespace where starts_with(nspname, %s) order by 1", (STAGING_PREFIX,)
    ).fetchall()
    dropped = []
    for (schema,) in rows:
        rid = restore_id_of(schema)
        if rid is None:
            continue
        key = advisory_key(rid)
        got = conn.execute("select pg_try_advisory_lock(%s, %s)", (ADVISORY_CLASS, key)).fetchone()
        if not got or not got[0]:
            continue  # a live restore owns it
        try:
            conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))
            dropped.append(schema)
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot drop leftover staging schema {schema}: {mask(str(exc)).strip()}") from exc
        finally:
            conn.execute("select pg_advisory_unlock(%s, %s)", (ADVISORY_CLASS, key))
    return dropped


def enum_labels(conn: psycopg.Connection[Any], name: QualifiedName) -> list[str] | None:
    """An enum's labels in order (None when no such type), by verbatim schema and name."""
    row = conn.execute(
        """
        select coalesce(array_agg(e.enumlabel order by e.enumsortorder) filter (where e.enumlabel is not null), '{}')
        from pg_type t join pg_namespace n on n.oid = t.typnamespace
        left join pg_enum e on e.enumtypid = t.oid
        where n.nspname = %s and t.typname = %s group by t.oid
        """,
        (name.schema, name.name),
    ).fetchone()
    return list(row[0]) if row else None


def drop_types(conn: psycopg.Connection[Any], types: Sequence[QualifiedName]) -> None:
    """Drop types a restore created in place, newest first (best effort: it is cleanup)."""
    for t in reversed(types):
        with contextlib.suppress(psycopg.Error):
            conn.execute(sql.SQL("drop type if exists {}").format(t.ident))
