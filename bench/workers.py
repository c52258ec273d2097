"""Child processes of the bench: each does one migsafe operation and prints one JSON line.

They run in their own process so that the figures include what a user pays (interpreter, imports) and
so that their peak RSS (VmHWM) is migsafe's own, not the parent's. A worker whose migsafe API is
missing from this branch prints ``{"unavailable": "..."}`` instead of failing.

    bench/workers.py _backup --dsn URL --store URL [--compression zstd --level 3 --jobs N --threads N]
    bench/workers.py _cli --report FILE -- restore --store ... (python -m migsafe, with our rusage)
    bench/workers.py _restore --mode replace|merge|merge-overwrite|diff --store URL --backup-id ID --dsn URL
    bench/workers.py _profile_restore / _profile_backup ...   (phase timers around migsafe's functions)
    bench/workers.py _split --dsn URL --table T --parts N --out DIR   (prototype: ctid-range COPY parts)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "functions"), str(Path(__file__).resolve().parent.parent)]

from bench.common import TABLES, timed, usage  # noqa: E402


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def backup_options(args: argparse.Namespace) -> Any:
    from migsafe.backup import BackupOptions

    fields = {f.name for f in dataclasses.fields(BackupOptions)}
    kw: dict[str, Any] = {"compression": args.compression, "jobs": args.jobs}
    if args.level is not None:
        kw["zstd_level"] = args.level
    for option, value in (("zstd_threads", args.threads), ("readahead", args.readahead),
                          ("fingerprint", args.fingerprint), ("split_bytes", args.split_bytes)):
        if value is not None:
            if option not in fields:
                raise LookupError(f"BackupOptions.{option}")
            kw[option] = value
    return BackupOptions(**kw)


def worker_backup(args: argparse.Namespace) -> None:
    from migsafe.backup import run_backup
    from migsafe.dsn import Dsn
    from migsafe.identifiers import QualifiedName
    from migsafe.store import open_store

    try:
        opts = backup_options(args)
    except LookupError as exc:
        _emit({"unavailable": f"{exc} is missing"})
        return
    result = run_backup(Dsn.parse(args.dsn), open_store(args.store), [QualifiedName.parse(t) for t in TABLES], opts)
    _emit({"backup_id": result.backup_id, "bytes": result.bytes, "inner_seconds": result.seconds,
           "table_seconds": {t.name: t.seconds for t in result.tables}, **usage()})  # fmt: skip


def worker_cli(args: argparse.Namespace) -> None:
    """``python -m migsafe ARGS`` in this process, then our own rusage into the report file."""
    from migsafe.cli import main as cli_main

    code: int | str | None = 0
    try:
        cli_main(args.argv)
    except SystemExit as exc:
        code = exc.code
    Path(args.report).write_text(json.dumps({"exit": code, **usage()}))
    sys.exit(code if isinstance(code, int) else 1)


def worker_restore(args: argparse.Namespace) -> None:
    """A restore through the Python API: ``replace`` (into a populated target), ``merge``,
    ``merge-overwrite`` or ``diff``; reports the lock window when the RestoreReport carries one."""
    from migsafe import restore
    from migsafe.dsn import Dsn
    from migsafe.store import open_store

    store, target = open_store(args.store), Dsn.parse(args.dsn)
    fields = {f.name for f in dataclasses.fields(restore.RestoreOptions)}
    if args.mode == "diff":
        try:
            from migsafe.diff import run_diff
        except ImportError:
            _emit({"unavailable": "migsafe.diff.run_diff is missing"})
            return
        report: Any = run_diff(store, args.backup_id, target, jobs=args.jobs)
        _emit({"equal": bool(report.equal), **usage()})
        return
    kw: dict[str, Any] = {"replace": args.mode == "replace"}
    if args.mode.startswith("merge"):
        if "merge" not in fields:
            _emit({"unavailable": "RestoreOptions.merge is missing"})
            return
        kw["merge"] = "overwrite" if args.mode == "merge-overwrite" else "keep"
    if args.jobs and "jobs" in fields:
        kw["jobs"] = args.jobs
    report = restore.run_restore(store, args.backup_id, target, restore.RestoreOptions(**kw))
    assert report.ok, report.problems()
    _emit({"lock_window_s": getattr(report, "lock_window_seconds", None), "inner_seconds": report.seconds,
           **usage()})  # fmt: skip


def worker_profile_restore(args: argparse.Namespace) -> None:
    """One ``run_restore`` with the module's phase functions wrapped in timers (restore.py unchanged):
    whatever of the names below exists in this branch is timed, the rest is left out."""
    from migsafe import restore
    from migsafe.dsn import Dsn
    from migsafe.store import open_store

    spent: dict[str, list[float]] = {}
    spans: dict[str, list[float]] = {}  # name -> [first start, last end], since the offset t0
    t0 = time.monotonic()

    def spanned(name: str, fn: Any) -> Any:
        def wrapper(*a: Any, **kw: Any) -> Any:
            start = time.monotonic() - t0
            try:
                return fn(*a, **kw)
            finally:
                end = time.monotonic() - t0
                span = spans.setdefault(name, [start, end])
                span[0], span[1] = min(span[0], start), max(span[1], end)
                spent.setdefault(name, []).append(end - start)
        return wrapper

    for name in ("verify_objects", "_decide", "_execute", "_toc", "_pipe_archive", "check_restored"):
        if callable(getattr(restore, name, None)):
            setattr(restore, name, spanned(name, getattr(restore, name)))
    # the staging restore's phases (they run in threads: the span is the phase's wall time)
    staging = getattr(restore, "staging", None) or __import__("migsafe.staging", fromlist=["Loader"])
    loader = getattr(staging, "Loader", None)
    for name in ("load", "_load_table", "_load_parts", "_copy", "_run_sql", "verify"):
        if loader is not None and callable(getattr(loader, name, None)):
            setattr(loader, name, spanned(f"Loader.{name}", getattr(loader, name)))
    for mod, name in ((staging, "_measure"), (getattr(restore, "swap", None), "swap")):
        if mod is not None and callable(getattr(mod, name, None)):
            setattr(mod, name, spanned(name, getattr(mod, name)))
    report = restore.run_restore(open_store(args.store), args.backup_id, Dsn.parse(args.dsn), restore.RestoreOptions())
    total = time.monotonic() - t0
    assert report.ok, report.problems()
    _emit({"total_s": round(total, 3), "phases_s": {k: round(sum(v), 3) for k, v in spent.items()},
           "spans_s": {k: [round(a, 3), round(b, 3)] for k, (a, b) in spans.items()},
           "calls": {k: len(v) for k, v in spent.items()}, **usage()})  # fmt: skip


def worker_profile_backup(args: argparse.Namespace) -> None:
    """One ``run_backup`` with the catalog reads, the types dump and the streams wrapped in timers."""
    from migsafe import backup
    from migsafe.dsn import Dsn
    from migsafe.identifiers import QualifiedName
    from migsafe.store import open_store

    spent: dict[str, list[float]] = {}
    for mod, name in ((backup.catalog, "describe"), (backup.catalog, "count_rows"),
                      (backup.catalog, "count_and_fingerprint"), (backup, "_dump_types"),
                      (backup, "stream_to_store")):  # fmt: skip
        if callable(getattr(mod, name, None)):
            setattr(mod, name, timed(spent, name, getattr(mod, name)))
    t0 = time.monotonic()
    result = backup.run_backup(Dsn.parse(args.dsn), open_store(args.store), [QualifiedName.parse(t) for t in TABLES],
                               backup_options(args))  # fmt: skip
    _emit({"total_s": round(time.monotonic() - t0, 3), "bytes": result.bytes,
           "phases_s": {k: [round(x, 3) for x in v] for k, v in spent.items()},
           "table_seconds": {t.name: t.seconds for t in result.tables}, **usage()})  # fmt: skip


def worker_split(args: argparse.Namespace) -> None:
    """Prototype, not migsafe's format: one table as ``--parts`` COPY streams over ctid ranges of one
    exported snapshot, each a ``psql`` whose stdout goes through migsafe's ``stream_to_store`` (zstd,
    sha256, read-ahead) into a file store, in parallel threads.

    What it measures is the floor a split backup could reach: the server's COPY, the transfer and the
    compression spread over N sessions. The schema would still come from one pg_dump per table.
    """
    import psycopg
    from migsafe.identifiers import QualifiedName
    from migsafe.pgtools import tool
    from migsafe.store import FileStore
    from migsafe.streams import stream_to_store
    from psycopg import sql

    table = QualifiedName.parse(args.table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = FileStore(out)
    t0 = time.monotonic()
    with psycopg.connect(args.dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.execute(sql.SQL("lock table {} in access share mode").format(table.ident))
        row = conn.execute("select pg_export_snapshot(), pg_relation_size(%s::regclass) / current_setting('block_size')::int",
                           (str(table),)).fetchone()  # fmt: skip
        assert row is not None
        snapshot, pages = str(row[0]), int(row[1])
        step = pages // args.parts + 1
        sizes: list[int] = [0] * args.parts
        errors: list[BaseException] = []

        def part(i: int) -> None:
            try:
                where = sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({i * step},0)"))
                if i < args.parts - 1:
                    where = sql.SQL("{} and ctid < {}::tid").format(where, sql.Literal(f"({(i + 1) * step},0)"))
                copy = sql.SQL("copy (select * from {} where {}) to stdout").format(table.ident, where)
                argv = [tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", args.dsn,
                        "-c", "begin isolation level repeatable read",
                        "-c", sql.SQL("set transaction snapshot {}").format(sql.Literal(snapshot)).as_string(conn),
                        "-c", copy.as_string(conn), "-c", "commit"]  # fmt: skip
                with subprocess.Popen(argv, stdout=subprocess.PIPE) as proc:
                    assert proc.stdout is not None
                    written = stream_to_store(proc.stdout, store, f"part{i}.copy.zst", "zstd", zstd_level=args.level)
                    if proc.wait() != 0:
                        raise RuntimeError(f"psql exited {proc.returncode}")
                sizes[i] = written.bytes
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=part, args=(i,)) for i in range(args.parts)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        conn.rollback()
    if errors:
        raise errors[0]
    _emit({"seconds_inner": round(time.monotonic() - t0, 3), "bytes": sum(sizes), "parts": args.parts, **usage()})


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    b, pb = sub.add_parser("_backup"), sub.add_parser("_profile_backup")
    for p in (b, pb):
        p.add_argument("--dsn", required=True)
        p.add_argument("--store", required=True)
        p.add_argument("--compression", default="zstd")
        p.add_argument("--level", type=int, default=None)
        p.add_argument("--jobs", type=int, default=None)
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--readahead", type=int, default=None)
        p.add_argument("--fingerprint", default=None)
        p.add_argument("--split-bytes", type=int, default=None)
    c = sub.add_parser("_cli")
    c.add_argument("--report", required=True)
    c.add_argument("argv", nargs=argparse.REMAINDER)
    r, pr = sub.add_parser("_restore"), sub.add_parser("_profile_restore")
    for p in (r, pr):
        p.add_argument("--store", required=True)
        p.add_argument("--backup-id", required=True)
        p.add_argument("--dsn", required=True)
    r.add_argument("--mode", choices=("replace", "merge", "merge-overwrite", "diff"), required=True)
    r.add_argument("--jobs", type=int, default=None)
    s = sub.add_parser("_split")
    s.add_argument("--dsn", required=True)
    s.add_argument("--table", required=True)
    s.add_argument("--parts", type=int, default=2)
    s.add_argument("--level", type=int, default=3)
    s.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.cmd == "_cli" and args.argv[:1] == ["--"]:
        args.argv = args.argv[1:]
    {
        "_backup": worker_backup,
        "_profile_backup": worker_profile_backup,
        "_cli": worker_cli,
        "_restore": worker_restore,
        "_profile_restore": worker_profile_restore,
        "_split": worker_split,
    }[args.cmd](args)


if __name__ == "__main__":
    main(sys.argv[1:])
