"""Back up the tables a migration touches: one consistent snapshot, one dump per table, manifest last.

Order of events, and why:
1. The store is probed and the table names are resolved against the catalog *before* anything is
   written, so bad input changes nothing (exit 2) and an unreachable store fails fast (exit 3).
   Each table's object key is its schema and name, encoded so that distinct tables never share one.
2. One REPEATABLE READ transaction locks the tables ACCESS SHARE and only then takes and exports its
   snapshot (a rewrite or TRUNCATE cannot commit between the snapshot and the dumps); every
   ``pg_dump --snapshot`` and every row count reads that same snapshot, so the counts match the dumps
   and tables agree with each other.
3. Table dumps run in parallel, streamed through zstd and sha256 straight into the store. A table
   larger than ``split_bytes`` is dumped as parts: its schema by pg_dump (without its rows), its rows
   by one ``COPY`` per ctid range, in parallel, in the same snapshot -- one pg_dump streams a table
   through one server backend, which bounded the backup by its largest table (docs/benchmarks.md).
4. ``manifest.json`` is written last. A backup without one is incomplete and never restored from;
   a failed backup deletes what it wrote.
5. Throughout, a watchdog (watchdog.py) watches the source: one that hangs rather than dies (nothing
   from it, no byte and no answer, for ``stall_timeout_s``) cancels the backup like an interrupt
   would, and it ends in SourceStalled (exit 3) instead of waiting on a read forever.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql

from . import __version__, catalog, extensions
from .dsn import Dsn, mask
from .exceptions import (
    BackupFailed,
    DatabaseError,
    EnvironmentFault,
    InputError,
    LockNotAcquired,
    SourceStalled,
    ToolFailed,
)
from .identifiers import QualifiedName
from .inventory import WriterLease, write_manifest
from .models import MANIFEST_NAME, BackupResult, Manifest, ObjectEntry, SourceInfo, TableEntry, TypeInfo
from .pgtools import tool, tool_env
from .store import Store
from .streams import Cancelled, Compression, Tool, stream_to_store
from .watchdog import DEFAULT_STALL_TIMEOUT, Watchdog

ProgressFn = Callable[[str, str, dict[str, Any]], None]

_SUFFIX = {"zstd": ".dump.zst", "gzip": ".dump", "none": ".dump"}
_RESTORE_HINT = {
    "zstd": "zstd -dc TABLE.dump.zst | pg_restore -d TARGET   (types first: psql -d TARGET -f types.sql)",
    "gzip": "pg_restore -d TARGET TABLE.dump   (types first: psql -d TARGET -f types.sql)",
    "none": "pg_restore -d TARGET TABLE.dump   (types first: psql -d TARGET -f types.sql)",
}

# a table with ``parts`` (docs/benchmarks.md, "Split tables with stock tools"), all tables' steps in this order
_SPLIT_HINT = (
    "; a table with parts: zstd -dc TABLE.dump.zst | pg_restore -d TARGET --section=pre-data, then per part "
    "zstd -dc PART | PGCLIENTENCODING=UTF8 psql -d TARGET -c 'COPY TABLE (copy_columns) FROM STDIN', then "
    "zstd -dc TABLE.dump.zst | pg_restore -d TARGET --section=data --section=post-data"
)


@dataclass(frozen=True)
class BackupOptions:
    compression: Compression = "zstd"
    zstd_level: int = 1  # level 1 costs ~20% less CPU than 3 and stored no more here (docs/benchmarks.md)
    # overlap within one dump (docs/benchmarks.md, "Backup speed"): both off by default, since on 2 busy
    # cores neither gained beyond noise and both cost memory; for runners with idle cores
    zstd_threads: int = 0  # zstd's own worker threads per dump (0: compress in the reading thread)
    readahead: int = 0  # 1 MiB chunks a thread reads ahead of the compressor, per dump (0: none)
    jobs: int | None = None
    plan_sha256: str | None = None
    pg_bindir: str | None = None
    lock_timeout_s: float = 30.0  # to lock the tables before the snapshot; exit 3 if not had in time
    # the per-table content fingerprint's method (catalog.FingerprintMethod); "off" counts rows only,
    # and the restore then checks the counts alone -- for measuring what the fingerprint costs
    fingerprint: Literal["record", "text", "off"] = "record"
    # a plain table whose heap is at least this large is dumped as parallel parts (one per CPU): its
    # schema by pg_dump, its rows by COPY over ctid ranges of the same snapshot; 0 never splits.
    # zstd and none only (the gzip setting keeps plain pg_dump files)
    split_bytes: int = 64 << 20
    # the source is stalled (hung, not dead) when nothing comes from it -- no byte on any stream, no
    # answer to the watchdog's heartbeat -- for this long: the backup stops (SourceStalled, exit 3)
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT


def new_backup_id(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def backup_prefix(backup_id: str) -> str:
    """``YYYY-MM-DD/<backup_id>/`` (the date comes from the id, so it is stable)."""
    stamp = datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ")
    return f"{stamp:%Y-%m-%d}/{backup_id}/"


_KEY_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
_KEY_MAX = 200  # characters before the suffix: a file name must stay under 255 bytes


def _key_part(ident: str) -> str:
    """One identifier as it appears in an object key: lower-case letters, digits, ``_`` and ``-``
    as they are (so ordinary names stay readable), every other character -- the ``.`` that separates
    schema from table, ``%``, ``/``, upper case, spaces, non-ASCII -- as ``%XX`` per UTF-8 byte.

    The encoding is injective and its output never holds a bare ``.``, so ``schema.table`` splits back
    unambiguously: ``"s.x".t`` -> ``s%2Ex.t`` and ``s."x.t"`` -> ``s.x%2Et``. Upper case is encoded
    too, so ``"Orders"`` and ``orders`` stay apart on case-insensitive file systems.
    """
    return "".join(ch if ch in _KEY_PLAIN else "".join(f"%{b:02X}" for b in ch.encode()) for ch in ident)


def object_name(table: QualifiedName, suffix: str) -> str:
    """The object name of a table's dump (without the backup's prefix); distinct tables never share one."""
    name = _key_part(table.schema) + "." + _key_part(table.name)
    if len(name) > _KEY_MAX:  # long non-ASCII names: keep a readable head, the exact name's hash decides
        exact = hashlib.sha256(f"{table.schema}\0{table.name}".encode()).hexdigest()
        name = name[: _KEY_MAX - 65] + "~" + exact  # "~" is always encoded in a part, so no clash
    return name + suffix


def object_names(tables: Sequence[QualifiedName], suffix: str) -> dict[QualifiedName, str]:
    """Each table's object name; InputError (nothing written) if two tables would share one."""
    names: dict[QualifiedName, str] = {}
    owner: dict[str, QualifiedName] = {}
    for t in tables:
        name = object_name(t, suffix)
        if name in owner:
            what = "is listed twice" if owner[name] == t else f"and {owner[name].pattern} would share object {name}"
            raise InputError(f"table {t.pattern} {what}: name each table once")
        owner[name] = t
        names[t] = name
    return names


def _pg_dump_argv(dsn: Dsn, snapshot: str, extra: Sequence[str], bindir: str | None) -> list[str]:
    return [tool("pg_dump", bindir), "--format=custom", f"--snapshot={snapshot}", "--no-sync",
            f"--dbname={dsn.tool_conninfo()}", *extra]


def _refuse_partitions_listed_twice(
    tables: Sequence[QualifiedName], children: dict[QualifiedName, list[QualifiedName]]
) -> None:
    below = {c: parent for parent, kids in children.items() for c in kids}
    twice = [f"{t} (a partition of {below[t]})" for t in tables if t in below]
    if twice:
        raise InputError(
            "a partitioned table is backed up with all its partitions; do not also list "
            + ", ".join(twice)
        )


def _check_tool_version(conn: psycopg.Connection[Any], bindir: str | None) -> None:
    server_major = int(catalog.server_version(conn).split(".")[0].split()[0])
    out = subprocess.run([tool("pg_dump", bindir), "--version"], capture_output=True, text=True).stdout
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    if match and int(match.group(1)) < server_major:
        raise ToolFailed(
            f"pg_dump {match.group(1)} cannot dump a PostgreSQL {server_major} server: install client {server_major}+"
        )


def _lock_and_export_snapshot(
    conn: psycopg.Connection[Any], tables: Sequence[QualifiedName], oids: dict[QualifiedName, int],
    opts: BackupOptions,
) -> str:
    """Lock the tables ACCESS SHARE, *then* take the snapshot every dump and count reads; return its id.

    In REPEATABLE READ the snapshot is taken by the transaction's first query, and ``SET`` and
    ``LOCK TABLE`` are not queries. Locking first means a TRUNCATE or a table-rewriting ALTER either
    commits before the snapshot (the backup sees its result) or waits for the backup: it can no longer
    commit in between, where a rewrite is invisible to the older snapshot and the dump holds 0 rows.
    ``LOCK`` on a partitioned table locks its partitions too.
    """
    names = ", ".join(str(t) for t in tables)
    try:
        conn.execute(sql.SQL("set local lock_timeout = {}").format(sql.Literal(f"{int(opts.lock_timeout_s * 1000)}ms")))
        conn.execute(sql.SQL("lock table {} in access share mode").format(sql.SQL(", ").join(t.ident for t in tables)))
        locked = catalog.resolve_tables(conn, tables)  # the first query: the snapshot starts here
        row = conn.execute("select pg_export_snapshot()").fetchone()
    except psycopg.errors.LockNotAvailable as exc:
        raise LockNotAcquired(
            f"could not lock {names} for the backup within {opts.lock_timeout_s:g}s: another session holds a "
            "conflicting lock (a migration or other DDL?); nothing was written"
        ) from exc
    except psycopg.Error as exc:
        raise DatabaseError(f"starting the backup's snapshot failed: {mask(str(exc)).strip()}") from exc
    replaced = [str(t) for t in tables if locked[t] != oids[t]]
    if replaced:
        raise DatabaseError(f"dropped and recreated while the backup started: {', '.join(replaced)}; run it again")
    assert row is not None
    return str(row[0])


def run_backup(
    dsn: Dsn,
    store: Store,
    tables: Sequence[QualifiedName],
    options: BackupOptions | None = None,
    *,
    progress: ProgressFn | None = None,
    now: datetime | None = None,
) -> BackupResult:
    """Back up ``tables`` of ``dsn`` into ``store``; return the result once the manifest is written."""
    opts = options or BackupOptions()
    notify = progress or (lambda *_: None)
    started = time.monotonic()
    store.check()
    with Watchdog(dsn, opts.stall_timeout_s, "the backup") as watch:
        try:
            return _backup(dsn, store, tables, opts, notify, started, now, watch)
        except SourceStalled:
            raise
        except BaseException as exc:
            if watch.stalled is None or isinstance(exc, KeyboardInterrupt):
                raise
            raise watch.error("backup failed, nothing was written: ") from exc  # before any object


def _backup(
    dsn: Dsn, store: Store, tables: Sequence[QualifiedName], opts: BackupOptions, notify: ProgressFn,
    started: float, now: datetime | None, watch: Watchdog,
) -> BackupResult:
    with catalog.connect(dsn, autocommit=True, application_name="migsafe backup") as conn, watch.session(conn):
        # names, keys and tools first, outside any snapshot: bad input changes nothing (exit 2)
        oids = catalog.resolve_tables(conn, tables)  # UnknownTable: nothing written yet
        children = {t: catalog.partitions(conn, oids[t]) for t in tables}
        _refuse_partitions_listed_twice(tables, children)
        object_names(tables, _SUFFIX[opts.compression])  # two tables on one key: refused here
        _check_tool_version(conn, opts.pg_bindir)
        conn.autocommit = False
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        snapshot = _lock_and_export_snapshot(conn, tables, oids, opts)
        children = {t: catalog.partitions(conn, oids[t]) for t in tables}  # as of the lock
        created = now or datetime.now(UTC)
        backup_id = new_backup_id(created)
        prefix = backup_prefix(backup_id)
        written: list[str] = []
        lease = WriterLease(store, prefix)  # prune leaves a running backup alone
        try:
            manifest = _dump_all(conn, dsn, store, tables, oids, snapshot, backup_id, prefix, created,
                                 opts, notify, written, children, watch)
            write_manifest(store, prefix, manifest)  # objects re-checked, then the manifest, then its sha256
        except BaseException as exc:
            with contextlib.suppress(Exception):
                store.delete(written)
            if watch.stalled is not None and not isinstance(exc, KeyboardInterrupt):
                raise watch.error(f"backup {backup_id} failed and was removed: ") from exc
            if isinstance(exc, EnvironmentFault):
                raise BackupFailed(f"backup {backup_id} failed and was removed: {exc}") from exc
            if isinstance(exc, psycopg.Error):
                raise BackupFailed(f"backup {backup_id} failed and was removed: {mask(str(exc)).strip()}") from exc
            raise
        finally:
            lease.release()
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
    return BackupResult(
        backup_id=backup_id,
        url=store.location(prefix),
        bytes=manifest.total_bytes,
        seconds=round(time.monotonic() - started, 3),
        tables=manifest.tables,
        manifest_key=prefix + MANIFEST_NAME,
    )


def _dump_all(
    conn: psycopg.Connection[Any],
    dsn: Dsn,
    store: Store,
    tables: Sequence[QualifiedName],
    oids: dict[QualifiedName, int],
    snapshot: str,
    backup_id: str,
    prefix: str,
    created: datetime,
    opts: BackupOptions,
    notify: ProgressFn,
    written: list[str],
    children: dict[QualifiedName, list[QualifiedName]],
    watch: Watchdog,
) -> Manifest:
    cancel = threading.Event()
    env = tool_env(dsn.tool_env())
    lock = threading.Lock()
    running: set[Tool] = set()
    suffix = _SUFFIX[opts.compression]
    zlevel = ["--compress=0"] if opts.compression in ("zstd", "none") else ["--compress=6"]

    cpus = max(1, opts.jobs or os.cpu_count() or 2)
    splits = _plan_splits(conn, tables, oids, children, cpus, opts)  # table -> ctid block ranges
    jobs = max(1, min(cpus, len(tables) + sum(len(r) - 1 for r in splits.values())))
    slots = threading.Semaphore(jobs)  # the pool has one more worker, for the types dump

    def dump_table(table: QualifiedName) -> tuple[str, int, str, float]:
        with slots:
            if cancel.is_set():
                raise Cancelled("cancelled")
            return dump_one(table)

    def dump_part(table: QualifiedName, index: int) -> tuple[str, int, str, float]:
        with slots:
            if cancel.is_set():
                raise Cancelled("cancelled")
            return copy_part(table, index)

    def dump_one(table: QualifiedName) -> tuple[str, int, str, float]:
        key = prefix + object_name(table, suffix)
        selected = [f"--table={t.pattern}" for t in (table, *children[table])]
        if table in splits:  # its rows go into the parts; its sequences' values stay in the archive
            selected.append(f"--exclude-table-data={table.pattern}")
        # a rewrite queued behind the backup's lock would queue pg_dump's own lock behind it, and wait
        # for the backup to end: the timeout turns that wait-for-each-other into a failed backup (exit 3)
        wait_lock = f"--lock-wait-timeout={int(opts.lock_timeout_s * 1000)}"
        argv = _pg_dump_argv(dsn, snapshot, [*zlevel, *selected, "--strict-names", wait_lock], opts.pg_bindir)
        return stream_tool(table, key, argv, env, f"dump {table}")

    def copy_part(table: QualifiedName, index: int) -> tuple[str, int, str, float]:
        first, end = splits[table][index]
        key = prefix + object_name(table, _part_suffix(index, opts.compression))
        argv = _copy_part_argv(dsn, snapshot, table, copy_columns[table], first, end, opts)
        return stream_tool(table, key, argv, {**env, "PGCLIENTENCODING": "UTF8"}, f"part {index + 1} of {table}")

    @contextlib.contextmanager
    def tracked(proc: Tool) -> Iterator[None]:
        """``proc`` is killed by :func:`stop_all` (a cancel that came just before it started, too)."""
        with lock:
            running.add(proc)
            late = cancel.is_set()  # stop_all sets cancel before it takes the running set
        try:
            if late:
                proc.kill()
                raise Cancelled("cancelled")
            yield
        finally:
            with lock:
                running.discard(proc)

    def stream_tool(table: QualifiedName, key: str, argv: list[str], tool_env_: dict[str, str],
                    what: str) -> tuple[str, int, str, float]:
        t0 = time.monotonic()
        notify("start", str(table), {})
        proc = Tool(argv, tool_env_)
        sent = 0

        def on_bytes(n: int) -> None:
            nonlocal sent
            sent += n
            watch.alive()  # a byte from the source: it is not hung
            notify("bytes", str(table), {"bytes": sent})

        try:
            with tracked(proc):
                assert proc.proc.stdout is not None
                out = stream_to_store(proc.proc.stdout, store, key, opts.compression, zstd_level=opts.zstd_level,
                                      zstd_threads=opts.zstd_threads, readahead=opts.readahead, cancel=cancel,
                                      on_bytes=on_bytes, finish=lambda: proc.finish(what))
        except BaseException as exc:
            proc.kill()
            if cancel.is_set() and not isinstance(exc, Cancelled):
                raise Cancelled("cancelled: another part of the backup failed") from exc
            raise
        with lock:
            written.append(key)
        return key, out.bytes, out.sha256, time.monotonic() - t0

    def stop_all() -> None:
        """Cancel: a pg_dump waiting on a lock sends nothing, so it is killed rather than awaited."""
        cancel.set()
        with lock:
            doomed = list(running)
        for p in doomed:
            p.proc.kill()

    def dump_types() -> tuple[list[TypeInfo], ObjectEntry | None]:
        infos, obj = _dump_types(dsn, store, oids, snapshot, prefix, env, opts, watch, tracked)
        if obj:
            with lock:
                written.append(obj.key)  # so a backup that fails later removes it too
        return infos, obj

    def measure(table: QualifiedName) -> tuple[int, str | None]:
        """Row count and fingerprint of ``table`` in the backup's snapshot, on a session of its own."""
        with catalog.connect(dsn, autocommit=False, application_name="migsafe backup count") as c, \
                watch.session(c):  # a scan is silent until it ends: the watchdog's heartbeat says if the source hangs
            c.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            c.read_only = True
            c.execute(sql.SQL("set transaction snapshot {}").format(sql.Literal(snapshot)))
            # a DDL queued behind the backup's lock would queue this one behind it: fail, not wait forever
            c.execute(sql.SQL("set local lock_timeout = {}").format(sql.Literal(f"{int(opts.lock_timeout_s * 1000)}ms")))
            try:
                if opts.fingerprint == "off":
                    return catalog.count_rows(c, table), None
                return catalog.count_and_fingerprint(c, table, opts.fingerprint)
            finally:
                c.rollback()

    copy_columns = {t: catalog.copy_columns(conn, oids[t]) for t in splits}
    with ThreadPoolExecutor(max_workers=jobs + 1, thread_name_prefix="migsafe-dump") as pool, \
            watch.on_stall(stop_all):  # a stalled source: every tool killed, every worker cancelled
        # the types first, so they get the extra worker instead of queueing behind the table dumps;
        # then the parts of split tables (the longest work), then the archives
        types_future = pool.submit(dump_types)
        futures: dict[Future[Any], str] = {types_future: "types"}
        part_futures = {t: [pool.submit(dump_part, t, i) for i in range(len(r))] for t, r in splits.items()}
        futures.update({f: str(t) for t, fs in part_futures.items() for f in fs})
        table_futures = {t: pool.submit(dump_table, t) for t in tables}
        futures.update({f: str(t) for t, f in table_futures.items()})
        # count and fingerprint each table in one scan of the same snapshot, one session per table, the
        # split (largest) tables first: on one connection, one after another, these scans outlasted
        # the split dumps and became the backup's critical path (docs/benchmarks.md)
        scans = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="migsafe-count")
        measured = {t: scans.submit(measure, t) for t in sorted(tables, key=lambda t: t not in splits)}
        try:
            # while the dumps and the scans run, read the catalog in the same snapshot
            details = {t: catalog.describe(conn, oids[t]) for t in tables}
            revision = catalog.alembic_revision(conn)
            version = catalog.server_version(conn)
            needs = extensions.required(conn, {str(t): oids[t] for t in tables})
            counts: dict[QualifiedName, int] = {}
            prints: dict[QualifiedName, str | None] = {}
            for t in tables:
                counts[t], prints[t] = measured[t].result()
                notify("rows", str(t), {"rows": counts[t]})
        except psycopg.Error as exc:
            stop_all()
            raise DatabaseError(f"reading the source catalog failed: {mask(str(exc)).strip()}") from exc
        except BaseException:
            stop_all()
            raise
        finally:
            scans.shutdown(wait=True, cancel_futures=True)
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:
            stop_all()
            wait(futures)
            # the failure that started it, not the dumps we killed because of it
            first = [f.exception() for f in failed if not isinstance(f.exception(), Cancelled)]
            later = [f.exception() for f in futures if f.exception() and not isinstance(f.exception(), Cancelled)]
            raise (first or later or [failed[0].exception()])[0]  # type: ignore[misc]
        types_info, types_obj = types_future.result()
    entries = []
    for t in tables:
        key, size, sha, seconds = table_futures[t].result()
        parts = [f.result() for f in part_futures.get(t, [])]
        d = details[t]
        entries.append(
            TableEntry(name=str(t), key=key[len(prefix):], bytes=size, sha256=sha, rows=counts[t],
                       relation_bytes=d["relation_bytes"], owner=d["owner"], columns=d["columns"],
                       indexes=d["indexes"], constraints=d["constraints"], types=d["types"],
                       partitions=[str(c) for c in children[t]],
                       seconds=round(max([seconds, *(p[3] for p in parts)]), 3), fingerprint=prints[t],
                       schema_name=t.schema,
                       parts=[ObjectEntry(key=k[len(prefix):], bytes=b, sha256=h) for k, b, h, _ in parts],
                       copy_columns=copy_columns.get(t, []))
        )
        size += sum(p[1] for p in parts)
        notify("done", str(t), {"bytes": size, "rows": counts[t]})
    return Manifest(
        backup_id=backup_id,
        created_at=created,
        completed_at=datetime.now(UTC),
        tool_version=__version__,
        source=SourceInfo(host=dsn.host, port=dsn.port, database=dsn.dbname, user=dsn.user, server_version=version),
        plan_sha256=opts.plan_sha256,
        alembic_revision=revision,
        compression=opts.compression,
        tables=entries,
        types=types_info,
        types_object=ObjectEntry(key=types_obj.key[len(prefix):], bytes=types_obj.bytes, sha256=types_obj.sha256)
        if types_obj
        else None,
        restore_hint=(f"extensions first, as SQL: {extensions.stock_sql(needs)} then: " if needs else "")
        + _RESTORE_HINT[opts.compression] + (_SPLIT_HINT if any(e.parts for e in entries) else ""),
        extensions=needs,
    )


def _part_suffix(index: int, compression: Compression) -> str:
    """``.part1.copy.zst``: the rows of a split table's part ``index`` (0-based), numbered from 1."""
    return f".part{index + 1}.copy" + (".zst" if compression == "zstd" else "")


def _plan_splits(
    conn: psycopg.Connection[Any], tables: Sequence[QualifiedName], oids: dict[QualifiedName, int],
    children: dict[QualifiedName, list[QualifiedName]], cpus: int, opts: BackupOptions,
) -> dict[QualifiedName, list[tuple[int, int | None]]]:
    """The tables to dump as parallel parts, each as ``[first, end)`` heap block ranges.

    A plain table whose heap is at least ``split_bytes`` is split into one part per CPU (at least two,
    and at most one per ``split_bytes``): one pg_dump streams one table through one server backend,
    so the largest table bounds a backup of one archive per table (docs/benchmarks.md). The last
    range is open-ended: the heap can only grow after the snapshot, and rows written since are not
    in the snapshot anyway.
    """
    if opts.split_bytes <= 0 or opts.compression == "gzip" or cpus < 2:
        return {}
    rows = conn.execute(
        "select c.oid, pg_relation_size(c.oid), current_setting('block_size')::int from pg_class c "
        "where c.oid = any(%s) and c.relkind = 'r'", ([oids[t] for t in tables if not children[t]],)).fetchall()
    heap = {int(r[0]): (int(r[1]), int(r[2])) for r in rows}
    splits: dict[QualifiedName, list[tuple[int, int | None]]] = {}
    for t in tables:
        size, block = heap.get(oids[t], (0, 8192))
        if size < opts.split_bytes:
            continue
        n = max(2, min(cpus, size // opts.split_bytes))
        blocks = size // block
        step = -(-blocks // n)
        splits[t] = [(i * step, (i + 1) * step if i < n - 1 else None) for i in range(n)]
    return splits


def _copy_part_argv(dsn: Dsn, snapshot: str, table: QualifiedName, columns: Sequence[str], first: int,
                    end: int | None, opts: BackupOptions) -> list[str]:
    """``psql`` running one part's ``COPY (select ... where ctid in [first, end)) TO STDOUT`` in the snapshot.

    ``row_security = off`` makes a table with row-level security that would hide rows from the backup's
    role fail instead of losing them silently (as pg_dump does). The output settings are pg_dump's.
    """
    where = sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({first},0)"))
    if end is not None:
        where = sql.SQL("{} and ctid < {}::tid").format(where, sql.Literal(f"({end},0)"))
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns) if columns else sql.SQL("")
    copy = sql.SQL("copy (select {} from {} where {}) to stdout").format(cols, table.ident, where)
    setup = sql.SQL(
        "set transaction snapshot {}; set local row_security = off; set local datestyle = 'ISO'; "
        "set local intervalstyle = 'postgres'; set local extra_float_digits = 3; set local bytea_output = 'hex'"
    ).format(sql.Literal(snapshot))
    wait = sql.SQL("set local lock_timeout = {}").format(sql.Literal(f"{int(opts.lock_timeout_s * 1000)}ms"))
    return [tool("psql", opts.pg_bindir), "-X", "-q", "-v", "ON_ERROR_STOP=1",
            f"--dbname={dsn.tool_conninfo()}",
            "-c", "begin isolation level repeatable read read only",
            "-c", _text(setup), "-c", _text(wait), "-c", _text(copy), "-c", "commit"]


def _text(stmt: sql.Composable) -> str:
    """A composed statement as text, without a connection (identifiers and literals are quoted alike)."""
    return stmt.as_string(None)


_TOC_LINE = re.compile(r"^(\d+);\s+(\d+)\s+(\d+)\s+(\S+)\s")


def _dump_types(
    dsn: Dsn,
    store: Store,
    oids: dict[QualifiedName, int],
    snapshot: str,
    prefix: str,
    env: dict[str, str],
    opts: BackupOptions,
    watch: Watchdog,
    tracked: Callable[[Tool], contextlib.AbstractContextManager[None]],
) -> tuple[list[TypeInfo], ObjectEntry | None]:
    """The user types the tables use: ``types.sql`` plus per-type DDL in the manifest.

    A table-only ``pg_dump -t`` leaves enum types out, so a table dump alone does not restore into an
    empty database. Enums, domains and composites are written from the catalog, read in the same
    snapshot; anything else falls back to a schema-only pg_dump of that snapshot.
    """
    # a separate connection (the main one is busy counting rows), in the same exported snapshot
    with catalog.connect(dsn, autocommit=False, application_name="migsafe backup types") as tconn, \
            watch.session(tconn):
        tconn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        tconn.read_only = True
        tconn.execute(sql.SQL("set transaction snapshot {}").format(sql.Literal(snapshot)))
        # format_type and pg_get_expr leave out the schema of a type on the search path: an empty one
        # makes them qualify every name (a domain over public.colour or public.citext must not say "AS colour", which
        # a restore, run with an empty search path, cannot resolve)
        tconn.execute("set local search_path = ''")
        types = catalog.user_types(tconn, list(oids.values()))
        ddls = {int(t["oid"]): catalog.type_ddl(tconn, int(t["oid"]), t["kind"]) for t in types}
        tconn.rollback()
    if not types:
        return [], None
    if all(ddls.values()):
        infos = [
            TypeInfo(name=t["name"], kind=t["kind"], labels=list(t["labels"]), ddl=ddls[int(t["oid"])] or "")
            for t in types
        ]
    else:  # a range type (or another kind we do not write ourselves): ask pg_dump
        infos = _types_from_pg_dump(dsn, types, snapshot, env, opts, tracked)
    return infos, _put_types(store, prefix, infos)


def _types_from_pg_dump(
    dsn: Dsn, types: list[dict[str, Any]], snapshot: str, env: dict[str, str], opts: BackupOptions,
    tracked: Callable[[Tool], contextlib.AbstractContextManager[None]],
) -> list[TypeInfo]:
    """Per-type DDL as pg_dump writes it, from a schema-only dump of the same snapshot."""
    with tempfile.TemporaryDirectory(prefix="migsafe-types-") as tmp:
        archive = Path(tmp) / "schema.dump"
        # like the table dumps: in its own process group, killed by a cancel (a stalled source, ...)
        dump = Tool(_pg_dump_argv(dsn, snapshot, ["--schema-only", f"--file={archive}"], opts.pg_bindir), env,
                    stdout=subprocess.DEVNULL)
        try:
            with tracked(dump):
                dump.finish("schema for types")
        except BaseException:
            dump.kill()
            raise
        listing = subprocess.run([tool("pg_restore", opts.pg_bindir), "--list", str(archive)],
                                 capture_output=True, text=True, check=False)
        if listing.returncode != 0:
            raise ToolFailed(f"pg_restore --list failed: {listing.stderr.strip()[-2000:]}")
        by_oid: dict[int, str] = {}
        for line in listing.stdout.splitlines():
            m = _TOC_LINE.match(line)
            if m and m.group(4) in ("TYPE", "DOMAIN"):
                by_oid[int(m.group(3))] = line
        infos: list[TypeInfo] = []
        for t in types:  # ordered by oid, so a domain follows the enum it wraps
            toc_line = by_oid.get(int(t["oid"]))
            if toc_line is None:
                raise ToolFailed(f"type {t['name']} is missing from pg_dump's schema listing")
            list_file = Path(tmp) / "one.list"
            list_file.write_text(toc_line + "\n")
            ddl = subprocess.run(
                [tool("pg_restore", opts.pg_bindir), "--no-owner", "--no-privileges", f"--use-list={list_file}",
                 "--file=-", str(archive)],
                capture_output=True, text=True, check=False,
            )
            if ddl.returncode != 0:
                raise ToolFailed(f"pg_restore (type {t['name']}) failed: {ddl.stderr.strip()[-2000:]}")
            infos.append(TypeInfo(name=t["name"], kind=t["kind"], labels=list(t["labels"]), ddl=_entry_body(ddl.stdout)))
    return infos


def _put_types(store: Store, prefix: str, infos: list[TypeInfo]) -> ObjectEntry:
    body = "-- migsafe: user types the backed-up tables depend on; run before pg_restore of the tables\n"
    body += "SET check_function_bodies = false;\n\n" + "\n".join(i.ddl + "\n" for i in infos)
    key = prefix + "types.sql"
    store.put_bytes(key, body.encode())
    return ObjectEntry(key=key, bytes=len(body.encode()), sha256=hashlib.sha256(body.encode()).hexdigest())


def _entry_body(script: str) -> str:
    """The statements of one pg_restore entry, without the SET preamble and comments."""
    lines = script.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("-- Name:")), 0)
    # drop comments and psql meta-commands (pg_dump 15.14+ wraps scripts in \restrict/\unrestrict)
    body = [line for line in lines[start:] if line.strip() and not line.startswith(("--", "\\"))]
    return "\n".join(body).strip()


__all__ = ["BackupOptions", "backup_prefix", "new_backup_id", "run_backup"]
