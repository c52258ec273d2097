"""migsafe against the raw PostgreSQL tools, in one run, on the same data.

    .venv/bin/python bench/run.py                 # 1,000,000 rows in user_application_access (~10 minutes)
    .venv/bin/python bench/run.py --users 20000 --small-users 5000 --repeat 1 --rehearse-repeat 1   # smoke
    .venv/bin/python bench/run.py --only rehearse # the rehearsal section alone (~3 minutes)

What it does (docs/benchmarks.md explains the figures and the choices they led to):
1. starts a throw-away cluster (migsafe.localpg.LocalCluster);
2. the rehearsal: loads the seed scenario stamped at the example alembic project's baseline
   (``--users`` users: 333,334 -> 1,000,002 rows in user_application_access) and times, in interleaved
   rounds (``--rehearse-repeat``), ``python -m migsafe rehearse`` as a subprocess against the same steps
   run by hand one after another: ``pg_dump -Fc`` of the three tables, ``pg_basebackup`` + start of a
   copy, ``pg_restore`` into a second fresh cluster, ``alembic upgrade head`` / ``downgrade -1`` on the
   copy and the count + fingerprint queries before, after the upgrade and after the downgrade;
3. loads the seed scenario twice more, ``--users`` and ``--small-users`` (33,334 -> 100,002 rows, for
   the memory-flatness figure);
4. backups, each variant once per round, rounds interleaved so that load from other processes on the
   machine hits every variant alike: raw ``pg_dump -Fc`` of each table to a file, sequentially (what the
   seed's hand-written kit runs), raw ``pg_dump -Fc -Z0``, and ``migsafe.backup.run_backup`` to a
   ``file://`` store (zstd level 1 and 3, and gzip) in a child process that reports its own peak RSS;
5. restores into an empty database, the same way: raw ``pg_restore`` and ``pg_restore -j2`` of the
   raw dumps (types first, ``psql -f types.sql``), and ``python -m migsafe restore``;
6. the smaller size: the default backup and restore, for peak memory at two table sizes;
7. a profile: where a migsafe restore and backup spend their time (wrapped functions, one run each),
   and the single-core speed of zstd and gzip on the uncompressed archive;
8. prints a table and writes ``bench/results.json`` (git-ignored).

Timings are medians over ``--repeat`` rounds (best also recorded). The ratios compare figures taken in
the same run, so they hold on a busy machine where absolute seconds do not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "functions"), str(ROOT)]

TABLES = ["public.users", "public.user_application_access", "public.user_invitations"]
MIGSAFE_BACKUPS = {  # name: (compression, zstd level, jobs; None = one per CPU)
    "migsafe zstd-1": ("zstd", 1, None),
    "migsafe zstd-3": ("zstd", 3, None),
    "migsafe zstd-3 jobs=1": ("zstd", 3, 1),
    "migsafe gzip": ("gzip", 6, None),
}
DEFAULT_BACKUP = "migsafe zstd-3"  # the plan's default: compression = "zstd", zstd_level = 3


# ---------------------------------------------------------------------------------------------
# child-process workers: they report their own peak RSS (RUSAGE_SELF), not their tools'
def _usage() -> dict[str, float]:
    """Peak RSS of this process alone (VmHWM: unlike ru_maxrss it is not inherited across fork/exec)."""
    hwm_kb = next(
        int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "maxrss_mb": round(hwm_kb / 1024, 1),
        "cpu_s": round(me.ru_utime + me.ru_stime, 3),
        "children_cpu_s": round(kids.ru_utime + kids.ru_stime, 3),
    }


def worker_backup(args: argparse.Namespace) -> None:
    from migsafe.backup import BackupOptions, run_backup
    from migsafe.dsn import Dsn
    from migsafe.identifiers import QualifiedName
    from migsafe.store import open_store

    opts = BackupOptions(compression=args.compression, zstd_level=args.level, jobs=args.jobs)
    result = run_backup(
        Dsn.parse(args.dsn), open_store(args.store), [QualifiedName.parse(t) for t in TABLES], opts
    )
    print(
        json.dumps(
            {
                "backup_id": result.backup_id,
                "bytes": result.bytes,
                "inner_seconds": result.seconds,
                "table_seconds": {t.name: t.seconds for t in result.tables},
                **_usage(),
            }
        )
    )


def worker_cli(args: argparse.Namespace) -> None:
    """``python -m migsafe ARGS`` in this process, then our own rusage on fd 3's file."""
    from migsafe.cli import main as cli_main

    code: int | str | None = 0
    try:
        cli_main(args.argv)
    except SystemExit as exc:
        code = exc.code
    Path(args.report).write_text(json.dumps({"exit": code, **_usage()}))
    sys.exit(code if isinstance(code, int) else 1)


def _timed(record: dict[str, list[float]], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*a: Any, **kw: Any) -> Any:
        t0 = time.monotonic()
        try:
            return fn(*a, **kw)
        finally:
            record.setdefault(name, []).append(time.monotonic() - t0)

    return wrapper


def direct_pipe(original: Callable[..., bytes]) -> Callable[..., bytes]:
    """``restore._run_restore_tool`` with pg_restore writing straight into psql's stdin (an OS pipe),
    instead of through a Python read/write loop; the archive is fed from this thread."""
    import contextlib

    from migsafe import restore
    from migsafe.exceptions import ToolFailed

    def run(store: Any, key: str, manifest: Any, args: list[str], opts: Any, *, capture: bool = False,
            sink: Any = None, header_only: bool = False, digest: Any = None, **_kw: Any) -> bytes:  # fmt: skip
        if capture or sink is None:
            return original(store, key, manifest, args, opts, capture=capture, sink=sink,
                            header_only=header_only, digest=digest, **_kw)  # fmt: skip
        sink.flush()
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen([restore.tool("pg_restore", opts.pg_bindir), *args], stdin=subprocess.PIPE,
                                    stdout=sink.fileno(), stderr=err)  # fmt: skip
            assert proc.stdin is not None
            try:
                chunks = restore._archive_chunks(store, key, manifest, digest)
                for chunk in restore.decompressed(chunks, manifest.compression):
                    proc.stdin.write(chunk)
            except BrokenPipeError:
                if not header_only:
                    raise
            finally:
                with contextlib.suppress(BrokenPipeError, OSError):
                    proc.stdin.close()
            if proc.wait() != 0:
                err.seek(0)
                raise ToolFailed(f"pg_restore failed on {key}: {err.read().decode(errors='replace')[-1500:]}")
        return b""

    return run


def worker_profile_restore(args: argparse.Namespace) -> None:
    """One ``run_restore`` with its inner steps wrapped in timers (restore.py is not modified)."""
    from migsafe import restore
    from migsafe.dsn import Dsn
    from migsafe.store import open_store

    if args.direct_pipe:  # and pg_restore -> psql without the Python hop
        restore._run_restore_tool = direct_pipe(restore._run_restore_tool)  # type: ignore[attr-defined]
    spent: dict[str, list[float]] = {}
    for name in ("verify_backup", "_decide", "_execute", "_toc", "_pipe_archive", "check_restored"):
        setattr(restore, name, _timed(spent, name, getattr(restore, name)))
    marks: list[tuple[float, str, str]] = []
    t0 = time.monotonic()
    report = restore.run_restore(
        open_store(args.store),
        args.backup_id,
        Dsn.parse(args.dsn),
        restore.RestoreOptions(pg_bindir=None),
        progress=lambda ev, table, _d: (
            marks.append((time.monotonic() - t0, ev, table)) if ev != "bytes" else None
        ),
    )
    total = time.monotonic() - t0
    assert report.ok, report.problems()
    phases = {k: [round(x, 3) for x in v] for k, v in spent.items()}
    # _pipe_archive runs once per table for the data and once per table for the foreign keys
    pipes = spent.get("_pipe_archive", [])
    n = len(report.tables)
    inside = sum(spent.get("_execute", [0.0]))
    print(
        json.dumps(
            {
                "total_s": round(total, 3),
                "verify_checksums_s": round(sum(spent.get("verify_backup", [0.0])), 3),
                "decide_s": round(sum(spent.get("_decide", [0.0])), 3),
                "toc_listing_s": round(sum(spent.get("_toc", [0.0])), 3),
                "data_pipe_s": round(sum(pipes[:n]), 3),
                "fk_pipe_s": round(sum(pipes[n:]), 3),
                "execute_s": round(inside, 3),
                "fk_verify_commit_s": round(inside - sum(spent.get("_toc", [0.0])) - sum(pipes), 3),
                "check_restored_s": round(sum(spent.get("check_restored", [0.0])), 3),
                "analyze_and_rest_s": round(
                    total
                    - inside
                    - sum(spent.get("verify_backup", [0.0]))
                    - sum(spent.get("_decide", [0.0]))
                    - sum(spent.get("check_restored", [0.0])),
                    3,
                ),
                "per_call": phases,
                "events": [(round(t, 3), ev, table) for t, ev, table in marks],
                **_usage(),
            }
        )
    )


def worker_profile_backup(args: argparse.Namespace) -> None:
    """One ``run_backup`` with the catalog reads and the types dump wrapped in timers."""
    from migsafe import backup, streams
    from migsafe.dsn import Dsn
    from migsafe.identifiers import QualifiedName
    from migsafe.store import open_store

    spent: dict[str, list[float]] = {}
    backup.catalog.describe = _timed(spent, "catalog.describe", backup.catalog.describe)  # type: ignore[attr-defined]
    backup.catalog.count_rows = _timed(spent, "catalog.count_rows", backup.catalog.count_rows)  # type: ignore[attr-defined]
    backup._dump_types = _timed(spent, "_dump_types", backup._dump_types)  # type: ignore[attr-defined]
    backup.stream_to_store = _timed(spent, "stream_to_store", streams.stream_to_store)  # type: ignore[attr-defined]
    t0 = time.monotonic()
    result = backup.run_backup(
        Dsn.parse(args.dsn),
        open_store(args.store),
        [QualifiedName.parse(t) for t in TABLES],
        backup.BackupOptions(compression=args.compression, zstd_level=args.level),
    )
    total = time.monotonic() - t0
    print(
        json.dumps(
            {
                "total_s": round(total, 3),
                "bytes": result.bytes,
                "per_call": {k: [round(x, 3) for x in v] for k, v in spent.items()},
                "table_seconds": {t.name: t.seconds for t in result.tables},
                **_usage(),
            }
        )
    )


# ---------------------------------------------------------------------------------------------
# the parent
class Bench:
    def __init__(self, work: Path, bindir: Path, repeat: int) -> None:
        self.work = work
        self.bindir = bindir
        self.repeat = repeat
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self.env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "functions"), str(ROOT)])

    def bin(self, name: str) -> str:
        return str(self.bindir / name)

    def run(
        self, argv: Sequence[str], *, stdout: Any = subprocess.DEVNULL, env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Run to completion; wall seconds, and the child's rusage through wait4."""
        t0 = time.monotonic()
        proc = subprocess.Popen(
            list(argv), stdout=stdout, stderr=subprocess.PIPE, env={**self.env, **(env or {})}
        )
        err = proc.stderr.read() if proc.stderr else b""
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(
                f"bench: {' '.join(argv)} exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}"
            )
        return {
            "seconds": seconds,
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        }

    def py(self, *args: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run a worker of this file; return (timing, the JSON it printed)."""
        out = self.work / "worker.out"
        with open(out, "wb") as fh:
            timing = self.run([sys.executable, str(Path(__file__).resolve()), *args], stdout=fh)
        return timing, json.loads(out.read_text().strip().splitlines()[-1])

    @staticmethod
    def admin(dsn: str, stmt: sql.Composed) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(stmt)


def _scalar(conn: psycopg.Connection[Any], stmt: sql.SQL | sql.Composed) -> Any:
    row = conn.execute(stmt).fetchone()
    assert row is not None
    return row[0]


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


def summarize(samples: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, runs in samples.items():
        secs = [r["seconds"] for r in runs]
        entry: dict[str, Any] = {
            "median_s": _median(secs),
            "best_s": round(min(secs), 3),
            "runs_s": [round(s, 3) for s in secs],
        }
        for key in (
            "bytes",
            "maxrss_mb",
            "cpu_s",
            "children_cpu_s",
        ):
            vals = [r[key] for r in runs if key in r]
            if vals:
                entry[key] = max(vals) if "maxrss" in key else (vals[-1] if key == "bytes" else _median(vals))
        out[name] = entry
    return out


def machine_info(bench: Bench, dsn: str) -> dict[str, Any]:
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    server = subprocess.run(
        [bench.bin("psql"), "-X", "-Atc", "select version()", "-d", dsn],
        capture_output=True,
        text=True,
        env=bench.env,
    ).stdout.strip()
    import zstandard

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "loadavg_start": os.getloadavg(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "zstandard": zstandard.__version__,
        "postgresql": server,
        "pg_dump": subprocess.run(
            [bench.bin("pg_dump"), "--version"], capture_output=True, text=True
        ).stdout.strip(),
        "pg_bindir": str(bench.bindir),
    }


def compression_speed(path: Path) -> dict[str, Any]:
    """Single-core compression of an uncompressed archive: what each codec costs per MB."""
    import zstandard

    data = path.read_bytes()
    out: dict[str, Any] = {"input": path.name, "input_bytes": len(data)}
    codecs: dict[str, Callable[[bytes], bytes]] = {
        "zstd-1": lambda b: zstandard.ZstdCompressor(level=1).compress(b),
        "zstd-3": lambda b: zstandard.ZstdCompressor(level=3).compress(b),
        "zstd-6": lambda b: zstandard.ZstdCompressor(level=6).compress(b),
        "gzip-6 (pg_dump's default)": lambda b: zlib.compress(b, 6),
        "gzip-1": lambda b: zlib.compress(b, 1),
    }
    for name, fn in codecs.items():
        t0 = time.process_time()
        packed = fn(data)
        cpu = time.process_time() - t0
        out[name] = {
            "cpu_s": round(cpu, 3),
            "mb_per_s": round(len(data) / cpu / 1e6, 1),
            "bytes": len(packed),
            "ratio": round(len(data) / len(packed), 2),
        }
    unpack: dict[str, Callable[[bytes], bytes]] = {
        "zstd": lambda b: zstandard.ZstdDecompressor().decompress(b),
        "gzip": zlib.decompress,
    }
    for name, fn in unpack.items():
        packed = codecs["zstd-3" if name == "zstd" else "gzip-6 (pg_dump's default)"](data)
        t0 = time.process_time()
        fn(packed)
        cpu = time.process_time() - t0
        out[f"decompress {name}"] = {"cpu_s": round(cpu, 3), "mb_per_s": round(len(data) / cpu / 1e6, 1)}
    return out


def pipe_into_psql(bench: Bench, files: Sequence[Path], target: str, *, one_transaction: bool) -> float:
    """``pg_restore --file=- DUMP | psql`` without migsafe: one psql per archive, or one psql session and
    one transaction for all of them (what migsafe restore does, minus its checks)."""
    psql = [bench.bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", target]
    t0 = time.monotonic()
    groups = [list(files)] if one_transaction else [[f] for f in files]  # a .sql file is sent as it is
    for group in groups:
        sink = subprocess.Popen(
            [*psql, *(["--single-transaction"] if one_transaction else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=bench.env,
        )
        assert sink.stdin is not None
        for f in group:
            if f.suffix == ".sql":
                sink.stdin.write(f.read_bytes())
                sink.stdin.flush()
                continue
            subprocess.run(
                [bench.bin("pg_restore"), "--file=-", str(f)], stdout=sink.stdin, check=True, env=bench.env
            )
        sink.stdin.close()
        if sink.wait() != 0:
            raise SystemExit(f"bench: psql failed restoring {group}")
    return round(time.monotonic() - t0, 3)


def profile(
    bench: Bench,
    cluster: Any,
    large: dict[str, Any],
    types_sql: Path,
    fresh_db: Callable[[str], str],
    drop_db: Callable[[str], None],
) -> dict[str, Any]:
    """Where the time goes: migsafe's restore and backup step by step, and the raw SQL pipe it wraps."""
    out: dict[str, Any] = {}
    backup_id = large["backup_ids"][DEFAULT_BACKUP]
    dumps = [bench.work / "large" / "raw" / "gz" / f"{t}.dump" for t in TABLES]
    runs: dict[str, list[dict[str, Any]]] = {}
    pipes: dict[str, list[float]] = {}
    for _ in range(bench.repeat):  # interleaved, like the main figures
        for key, extra in (
            ("restore", []),
            ("restore_direct_pipe", ["--direct-pipe"]),
        ):
            db = fresh_db("prof")
            _t, prof = bench.py("_profile_restore", "--store", large["store"], "--backup-id", backup_id,
                                "--dsn", cluster.dsn(db).url(), *extra)  # fmt: skip
            drop_db(db)
            runs.setdefault(key, []).append(prof)
        # the same SQL stream without migsafe: pg_restore --file=- | psql, per archive (autocommit) or all
        # in one psql session and one transaction (what migsafe restore does, minus its checks and ANALYZE)
        for key, one in (("pipe_psql_per_archive_s", False), ("pipe_psql_one_transaction_s", True)):
            db = fresh_db("prof")
            pipes.setdefault(key, []).append(
                pipe_into_psql(bench, [types_sql, *dumps], cluster.dsn(db).conninfo(), one_transaction=one)
            )
            drop_db(db)
        _t, prof = bench.py("_profile_backup", "--dsn", cluster.dsn("src_large").url(), "--store", large["store"],
                            "--compression", "zstd", "--level", "3")  # fmt: skip
        runs.setdefault("backup", []).append(prof)
    for key, values in runs.items():
        values.sort(key=lambda r: r["total_s"])
        out[key] = {
            **values[len(values) // 2],
            "runs_total_s": [r["total_s"] for r in values],
            "peak_maxrss_mb": max(r["maxrss_mb"] for r in values),
        }
    for key, secs in pipes.items():
        out[key] = _median(secs)
        out[key.removesuffix("_s") + "_runs_s"] = secs
    # fixed cost of every migsafe command: the interpreter and the imports
    for key, code in (("import_cli_s", "import migsafe.cli"), ("import_backup_s", "import migsafe.backup")):
        out[key] = _median([bench.run([sys.executable, "-c", code])["seconds"] for _ in range(bench.repeat)])
    out["codecs"] = compression_speed(
        bench.work / "large" / "raw" / "z0" / "public.user_application_access.dump"
    )
    return out


# ---------------------------------------------------------------------------------------------
# the rehearsal against the same steps run by hand
# (label, the migsafe step in result.json, the raw steps that do the same work)
REHEARSAL_STEPS: list[tuple[str, str | None, tuple[str, ...]]] = [
    ("back up the 3 tables", "backup", ("pg_dump -Fc, 3 tables",)),
    ("scratch copy", "scratch", ("pg_basebackup + start",)),
    ("restore test", "restore_test", ("initdb + start a 2nd cluster", "types.sql + pg_restore, 3 dumps")),
    ("baseline: count + fingerprint", "baseline", ("queries before",)),
    ("alembic upgrade head", "upgrade", ("alembic upgrade head",)),
    ("verify after the upgrade", "verify_upgrade", ("queries after upgrade",)),
    ("alembic downgrade -1", "downgrade", ("alembic downgrade -1",)),
    ("verify after the downgrade", "verify_downgrade", ("queries after downgrade",)),
    ("destroy the scratch", "destroy_scratch", ()),
]
RAW_DUMP_RESTORE = (
    "pg_dump -Fc, 3 tables",
    "initdb + start a 2nd cluster",
    "types.sql + pg_restore, 3 dumps",
)
OVERLAPPED = (  # what migsafe runs between the backup and the upgrade, the restore test concurrently
    "pg_basebackup + start",
    "initdb + start a 2nd cluster",
    "types.sql + pg_restore, 3 dumps",
    "queries before",
)
RAW_TEARDOWN = "stop + delete both clusters"  # timed, not in the raw sum (the brief's raw steps)


def fingerprints(conninfo: str) -> dict[str, list[int]]:
    """count(*) and sum(hashtextextended(t::text, 0)) per table: one scan each, one connection."""
    with psycopg.connect(conninfo) as conn:
        out = {}
        for t in TABLES:
            row = conn.execute(
                sql.SQL("select count(*), sum(hashtextextended(t::text, 0)) from {} as t").format(
                    sql.Identifier(*t.split("."))
                )
            ).fetchone()
            assert row is not None
            out[t] = [int(row[0]), int(row[1])]
        return out


def raw_rehearsal(bench: Bench, src: Any, types_sql: Path, ini: Path, rnd: int) -> dict[str, Any]:
    """The rehearsal's steps run by hand, one after another, each timed: what the seed's kit and a
    careful engineer would type (pg_dump, pg_basebackup, pg_restore, psql queries, alembic)."""
    from migsafe.localpg import LocalCluster, _as_server_user

    steps: dict[str, float] = {}
    dumps = bench.work / "rehearse" / "raw" / str(rnd)
    dumps.mkdir(parents=True)
    conninfo = src.conninfo()

    def clock(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        try:
            return fn()
        finally:
            steps[name] = steps.get(name, 0.0) + time.monotonic() - t0

    def dump() -> None:  # the seed kit's backup: one pg_dump -Fc per table, sequentially
        for t in TABLES:
            bench.run(
                [
                    bench.bin("pg_dump"),
                    "-Fc",
                    f"--table={t}",
                    f"--file={dumps / t}.dump",
                    f"--dbname={conninfo}",
                ]
            )

    clock("pg_dump -Fc, 3 tables", dump)
    scratch = restore = None
    try:
        scratch = LocalCluster.prepare("bench-raw-scratch")

        def basebackup() -> None:
            assert scratch is not None  # the flags of migsafe/scratch.py, as the server's user
            bench.run(_as_server_user([bench.bin("pg_basebackup"), "-D", str(scratch.data_dir), "-X", "stream",
                                       "-c", "fast", "--no-sync", "--no-password", "-d", conninfo]))  # fmt: skip
            scratch.start()

        clock("pg_basebackup + start", basebackup)
        restore = clock("initdb + start a 2nd cluster", lambda: LocalCluster.create("bench-raw-restore"))
        target = restore.dsn().conninfo()

        def pg_restore() -> None:
            bench.run(
                [bench.bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(types_sql), "-d", target]
            )
            for t in TABLES:
                bench.run(
                    [bench.bin("pg_restore"), "--exit-on-error", f"--dbname={target}", f"{dumps / t}.dump"]
                )

        clock("types.sql + pg_restore, 3 dumps", pg_restore)
        clock(RAW_TEARDOWN, restore.destroy)
        on_scratch = scratch.dsn(src.dbname)
        url = {"DATABASE_URL": on_scratch.url().replace("postgresql://", "postgresql+psycopg://", 1)}
        alembic = [sys.executable, "-m", "alembic", "-c", str(ini)]
        before = clock("queries before", lambda: fingerprints(on_scratch.conninfo()))
        clock("alembic upgrade head", lambda: bench.run([*alembic, "upgrade", "head"], env=url))
        upgraded = clock("queries after upgrade", lambda: fingerprints(on_scratch.conninfo()))
        clock("alembic downgrade -1", lambda: bench.run([*alembic, "downgrade", "-1"], env=url))
        after = clock("queries after downgrade", lambda: fingerprints(on_scratch.conninfo()))
        clock(RAW_TEARDOWN, scratch.destroy)
    finally:
        for c in (scratch, restore):
            if c is not None:
                c.destroy()
    shutil.rmtree(dumps, ignore_errors=True)
    if before != after or any(before[t][0] != upgraded[t][0] for t in TABLES):
        raise SystemExit(f"bench: the raw rehearsal did not round-trip: {before} -> {upgraded} -> {after}")
    rewritten = [t for t in TABLES if before[t][1] != upgraded[t][1]]
    total = sum(v for k, v in steps.items() if k != RAW_TEARDOWN)
    strict = sum(v for k, v in steps.items() if k != RAW_TEARDOWN and k not in RAW_DUMP_RESTORE)
    return {
        "seconds": total,
        "strict_s": strict,
        "steps": {k: round(v, 3) for k, v in steps.items()},
        "upgrade_changed": rewritten,
    }


def migsafe_rehearsal(bench: Bench, plan: Path, rnd: int) -> dict[str, Any]:
    """``python -m migsafe rehearse`` as a user runs it: wall time, and result.json's step timings."""
    reports = bench.work / "rehearse" / f"report-{rnd}"
    timing = bench.run(
        [sys.executable, "-m", "migsafe", "rehearse", "--plan", str(plan), "--report-dir", str(reports)]
    )
    result = json.loads((reports / "result.json").read_text())
    if result["verdict"] != "PASS" or result["scratch"]["method"] != "pg_basebackup":
        raise SystemExit(f"bench: rehearsal {result['verdict']} via {result['scratch']['method']}: {result}")
    steps = {s["name"]: s["seconds"] for s in result["steps"]}
    started = {s["name"]: datetime.fromisoformat(s["started"]).timestamp() for s in result["steps"]}
    # the critical path: from the backup's start to the upgrade's, and how long the upgrade waited for
    # the restore test (running on its own cluster) after the baseline was taken
    to_upgrade = started["upgrade"] - started["scratch"]
    waited = started["upgrade"] - (started["baseline"] + steps["baseline"])
    return {
        "seconds": timing["seconds"],
        "cpu_s": timing["cpu_s"],
        "in_process_s": result["seconds"],
        "steps": steps,
        "scratch_to_upgrade_s": round(to_upgrade, 3),
        "waited_for_restore_test_s": round(max(waited, 0.0), 3),
        "backup_bytes": result["backup"]["bytes"],
    }


def rehearsal_section(bench: Bench, cluster: Any, users: int, repeat: int, types_sql: Path,
                      say: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """The seed scenario stamped at alembic's baseline on the bench cluster, rehearsed ``repeat`` times
    by migsafe and by hand, interleaved (migsafe first in even rounds, raw first in odd ones)."""
    from examples.enum_uppercase import seed

    db = "app"
    work = bench.work / "rehearse"
    work.mkdir()
    bench.admin(cluster.dsn().conninfo(), sql.SQL("create database {}").format(sql.Identifier(db)))
    src = cluster.dsn(db)
    t0 = time.monotonic()
    seed.load(src.conninfo(), users, alembic=True)
    with psycopg.connect(src.conninfo(), autocommit=True) as conn:
        conn.execute("vacuum (analyze)")  # hint bits and statistics set now, not in the first timed round
        conn.execute("checkpoint")
        rows = {t: _scalar(conn, sql.SQL("select count(*) from {}").format(sql.Identifier(*t.split("."))))
                for t in TABLES}  # fmt: skip
        cluster_bytes = int(_scalar(conn, sql.SQL("select sum(pg_database_size(oid)) from pg_database")))
    say(f"rehearsal: seeded {db} {rows} in {time.monotonic() - t0:.1f}s; {repeat} rounds of each side")
    ini = ROOT / "examples" / "enum_uppercase" / "alembic.ini"
    plan = work / "plan.toml"
    store_url = f"file://{work / 'store'}"
    plan.write_text(
        'name = "bench-us-6-uppercase-enums"\n[source]\n'
        f"dsn = {json.dumps(src.url())}\ntables = {json.dumps(TABLES)}\n"
        f"\n[migration]\nalembic_ini = {json.dumps(str(ini))}\n"
        'upgrade_to = "head"\ndowngrade_to = "-1"\nurl_env = "DATABASE_URL"\n'
        '\n[scratch]\nkind = "local"\n'
        f"\n[store]\nurl = {json.dumps(store_url)}\nretention_days = 1\n\n"
        + (ROOT / "examples" / "enum_uppercase" / "checks.toml").read_text()
    )
    runs: dict[str, list[dict[str, Any]]] = {"migsafe": [], "raw": []}
    for rnd in range(repeat):
        order = ("migsafe", "raw") if rnd % 2 == 0 else ("raw", "migsafe")
        for side in order:
            r = migsafe_rehearsal(bench, plan, rnd) if side == "migsafe" else raw_rehearsal(
                bench, src, types_sql, ini, rnd)  # fmt: skip
            runs[side].append(r)
        m, w = runs["migsafe"][-1], runs["raw"][-1]
        say(f"rehearsal round {rnd + 1}/{repeat}: migsafe {m['seconds']:.2f}s, raw sum {w['seconds']:.2f}s "
            f"(strict {w['strict_s']:.2f}s), ratio {m['seconds'] / w['seconds']:.2f}x")  # fmt: skip
    bench.admin(cluster.dsn().conninfo(), sql.SQL("drop database {} with (force)").format(sql.Identifier(db)))

    def med(side: str, key: str) -> float:
        return _median([r[key] for r in runs[side]])

    def med_step(side: str, key: str) -> float:
        return _median([r["steps"].get(key, 0.0) for r in runs[side]])

    table = []
    for label, mstep, raw_steps in REHEARSAL_STEPS:
        table.append({
            "step": label,
            "migsafe_step": mstep,
            "migsafe_s": med_step("migsafe", mstep) if mstep else None,
            "raw_steps": list(raw_steps),
            "raw_s": round(sum(med_step("raw", k) for k in raw_steps), 3) if raw_steps else None,
            "raw_parts_s": {k: med_step("raw", k) for k in raw_steps},
        })  # fmt: skip
    wall, raw_sum, strict = med("migsafe", "seconds"), med("raw", "seconds"), med("raw", "strict_s")
    return {
        "rows": rows,
        "cluster_bytes": cluster_bytes,
        "repeat": repeat,
        "migsafe_wall_s": wall,
        "migsafe_in_process_s": med("migsafe", "in_process_s"),
        "migsafe_outside_steps_s": _median([r["seconds"] - r["in_process_s"] for r in runs["migsafe"]]),
        "migsafe_steps_sum_s": _median([sum(r["steps"].values()) for r in runs["migsafe"]]),
        "migsafe_scratch_to_upgrade_s": med("migsafe", "scratch_to_upgrade_s"),
        "migsafe_waited_for_restore_test_s": med("migsafe", "waited_for_restore_test_s"),
        "raw_scratch_to_upgrade_s": _median([sum(r["steps"][k] for k in OVERLAPPED) for r in runs["raw"]]),
        "raw_sum_s": raw_sum,
        "raw_strict_sum_s": strict,
        "raw_teardown_s": med_step("raw", RAW_TEARDOWN),
        "ratio": round(wall / raw_sum, 3),
        "ratio_strict": round(wall / strict, 3),
        "ratio_per_round": [
            round(m["seconds"] / w["seconds"], 3) for m, w in zip(runs["migsafe"], runs["raw"], strict=True)
        ],
        "ratio_strict_per_round": [
            round(m["seconds"] / w["strict_s"], 3) for m, w in zip(runs["migsafe"], runs["raw"], strict=True)
        ],
        "target": 1.20,
        "steps": table,
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=333_334, help="3 user_application_access rows per user")
    parser.add_argument("--small-users", type=int, default=33_334, help="the second size (peak memory)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds per measurement (median reported)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--workdir", type=Path, default=None, help="dumps and store (default: a temp folder)")
    parser.add_argument("--no-profile", action="store_true", help="skip the phase profile")
    parser.add_argument("--rehearse-repeat", type=int, default=3, help="rounds of each rehearsal side")
    parser.add_argument(
        "--only",
        choices=("backup", "rehearse"),
        default=None,
        help="one section: backup/restore or rehearsal",
    )
    args = parser.parse_args()

    from migsafe.localpg import LocalCluster
    from migsafe.pgtools import bindir

    from examples.enum_uppercase import seed

    pg_bindir = bindir()
    if pg_bindir is None:
        raise SystemExit("bench: pg_config --bindir not found: install the PostgreSQL client tools")
    work = Path(tempfile.mkdtemp(prefix="migsafe-bench-", dir=args.workdir))
    bench = Bench(work, pg_bindir, args.repeat)
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "repeat": args.repeat,
    }
    t_start = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - t_start:6.1f}s] {msg}", flush=True)

    types_sql = work / "types.sql"
    types_sql.write_text(
        "\n".join(
            line
            for line in (ROOT / "examples/enum_uppercase/schema.sql").read_text().splitlines()
            if line.startswith("CREATE TYPE")
        )
        + "\n"
    )
    counter = iter(range(1_000_000))
    try:
        with LocalCluster.create("bench") as cluster:
            admin = cluster.dsn("postgres").conninfo()
            results["machine"] = machine_info(bench, admin)
            say(
                f"cluster on port {cluster.port}; {results['machine']['nproc']} CPUs, "
                f"{results['machine']['memory_gb']} GB, load {results['machine']['loadavg_start']}"
            )

            def fresh_db(prefix: str) -> str:
                name = f"{prefix}_{next(counter)}"
                bench.admin(admin, sql.SQL("create database {}").format(sql.Identifier(name)))
                return name

            def drop_db(name: str) -> None:
                bench.admin(admin, sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))

            if args.only != "backup":  # first, while the cluster holds nothing else to copy
                results["rehearsal"] = rehearsal_section(
                    bench, cluster, args.users, args.rehearse_repeat, types_sql, say
                )
            if args.only == "rehearse":
                cluster.destroy()
                finish(results, args, t_start, work)
                return

            sizes: dict[str, Any] = {}
            for label, users in (("large", args.users), ("small", args.small_users)):
                db = f"src_{label}"
                bench.admin(admin, sql.SQL("create database {}").format(sql.Identifier(db)))
                t0 = time.monotonic()
                seed.load(cluster.dsn(db).conninfo(), users)
                with psycopg.connect(cluster.dsn(db).conninfo()) as conn:
                    rows = {
                        t: _scalar(
                            conn, sql.SQL("select count(*) from {}").format(sql.Identifier(*t.split(".")))
                        )
                        for t in TABLES
                    }
                    sizes[label] = {
                        "users": users,
                        "rows": rows,
                        "seed_s": round(time.monotonic() - t0, 1),
                        "relation_bytes": int(
                            _scalar(
                                conn,
                                sql.SQL(
                                    "select sum(pg_total_relation_size(c::regclass))"
                                    " from unnest({}::text[]) c"
                                ).format(sql.Literal(TABLES)),
                            )
                        ),
                    }
                say(f"seeded {db}: {rows} in {sizes[label]['seed_s']}s")
            results["sizes"] = sizes

            def measure(
                label: str,
                repeat: int,
                with_raw: bool,
                migsafe_variants: Sequence[str],
                restore_variants: Sequence[str],
            ) -> dict[str, Any]:
                src = cluster.dsn(f"src_{label}")
                dumps = work / label / "raw"
                store_dir = work / label / "store"
                store_url = f"file://{store_dir}"
                for d in (dumps, store_dir):
                    d.mkdir(parents=True, exist_ok=True)
                samples: dict[str, list[dict[str, Any]]] = {}
                backup_ids: dict[str, str] = {}
                # -- backups, interleaved rounds
                for rnd in range(repeat):
                    if with_raw:
                        for name, extra, sub in (
                            ("pg_dump -Fc", [], "gz"),
                            ("pg_dump -Fc -Z0", ["-Z0"], "z0"),
                        ):
                            (dumps / sub).mkdir(exist_ok=True)
                            total = {"seconds": 0.0, "bytes": 0, "cpu_s": 0.0}
                            for t in TABLES:  # sequentially, one pg_dump per table, as the kit does
                                f = dumps / sub / f"{t}.dump"
                                r = bench.run(
                                    [
                                        bench.bin("pg_dump"),
                                        "-Fc",
                                        *extra,
                                        f"--table={t}",
                                        f"--file={f}",
                                        f"--dbname={src.conninfo()}",
                                    ]
                                )
                                total["seconds"] += r["seconds"]
                                total["cpu_s"] += r["cpu_s"]
                                total["bytes"] += f.stat().st_size
                            samples.setdefault(name, []).append(total)
                    for name in migsafe_variants:
                        comp, level, njobs = MIGSAFE_BACKUPS[name]
                        timing, out = bench.py("_backup", "--dsn", src.url(), "--store", store_url,
                                               "--compression", comp, "--level", str(level),
                                               *(["--jobs", str(njobs)] if njobs else []))  # fmt: skip
                        samples.setdefault(name, []).append({**timing, **out})
                        backup_ids[name] = out["backup_id"]
                    say(
                        f"{label}: backup round {rnd + 1}/{repeat}: "
                        + ", ".join(f"{n} {v[-1]['seconds']:.2f}s" for n, v in samples.items())
                    )
                # -- restores into empty databases, interleaved rounds
                for rnd in range(repeat):
                    for name in restore_variants:
                        db = fresh_db("tgt")
                        target = cluster.dsn(db)
                        if name.startswith("pg_restore"):
                            sub = "z0" if "Z0" in name else "gz"
                            jobs = ["-j2"] if "-j2" in name else []
                            total = {"seconds": 0.0, "cpu_s": 0.0}
                            steps = [
                                [
                                    bench.bin("psql"),
                                    "-X",
                                    "-q",
                                    "-v",
                                    "ON_ERROR_STOP=1",
                                    "-f",
                                    str(types_sql),
                                    "-d",
                                    target.conninfo(),
                                ]
                            ]
                            steps += [
                                [
                                    bench.bin("pg_restore"),
                                    *jobs,
                                    "--exit-on-error",
                                    f"--dbname={target.conninfo()}",
                                    str(dumps / sub / f"{t}.dump"),
                                ]
                                for t in TABLES
                            ]
                            for argv in steps:
                                r = bench.run(argv)
                                total["seconds"] += r["seconds"]
                                total["cpu_s"] += r["cpu_s"]
                            samples.setdefault(name, []).append(total)
                        else:
                            variant = name.removeprefix("migsafe restore ").strip("()")
                            report = work / "cli-report.json"
                            timing = bench.run(
                                [
                                    sys.executable,
                                    str(Path(__file__).resolve()),
                                    "_cli",
                                    "--report",
                                    str(report),
                                    "--",
                                    "restore",
                                    "--store",
                                    store_url,
                                    "--backup-id",
                                    backup_ids[variant],
                                    "--target-dsn",
                                    target.url(),
                                ]
                            )
                            samples.setdefault(name, []).append({**timing, **json.loads(report.read_text())})
                        drop_db(db)
                    say(
                        f"{label}: restore round {rnd + 1}/{repeat}: "
                        + ", ".join(f"{n} {samples[n][-1]['seconds']:.2f}s" for n in restore_variants)
                    )
                return {"figures": summarize(samples), "backup_ids": backup_ids, "store": store_url}

            large_restores = [
                "pg_restore",
                "pg_restore -j2",
                "pg_restore (-Z0 dumps)",
                f"migsafe restore ({DEFAULT_BACKUP})",
                "migsafe restore (migsafe gzip)",
            ]
            results["large"] = measure("large", args.repeat, True, list(MIGSAFE_BACKUPS), large_restores)
            results["small"] = measure(
                "small",
                args.repeat,
                True,
                [DEFAULT_BACKUP],
                ["pg_restore", "pg_restore -j2", f"migsafe restore ({DEFAULT_BACKUP})"],
            )

            if not args.no_profile:
                say("profile: instrumented migsafe restore and backup, pg_restore | psql, imports, codecs")
                results["profile"] = profile(bench, cluster, results["large"], types_sql, fresh_db, drop_db)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finish(results, args, t_start, work)


def finish(results: dict[str, Any], args: argparse.Namespace, t_start: float, work: Path) -> None:
    results["loadavg_end"] = os.getloadavg()
    results["seconds"] = round(time.monotonic() - t_start, 1)
    shutil.rmtree(work, ignore_errors=True)
    results["ratios"] = ratios(results)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nwrote {args.out} ({results['seconds']}s)")


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label in ("large", "small"):
        f = results.get(label, {}).get("figures", {})
        if "pg_dump -Fc" not in f:
            continue
        r = out[label] = {}
        for name in MIGSAFE_BACKUPS:
            if name in f:
                r[f"{name} / pg_dump -Fc"] = round(f[name]["median_s"] / f["pg_dump -Fc"]["median_s"], 2)
        mr = f"migsafe restore ({DEFAULT_BACKUP})"
        for raw in ("pg_restore", "pg_restore -j2"):
            if mr in f and raw in f:
                r[f"{mr} / {raw}"] = round(f[mr]["median_s"] / f[raw]["median_s"], 2)
    return out


def print_table(results: dict[str, Any]) -> None:
    m = results["machine"]
    print(
        f"\n{m['nproc']} CPUs ({m['cpu']}), {m['memory_gb']} GB, {m['postgresql'].split(' on ')[0]}; "
        f"load average at start {m['loadavg_start'][0]:.2f}, at end {results['loadavg_end'][0]:.2f}"
    )
    if "rehearsal" in results:
        print_rehearsal(results["rehearsal"])
    for label in ("large", "small"):
        if label not in results:
            continue
        size = results["sizes"][label]
        f = results[label]["figures"]
        print(
            f"\n{label}: {size['rows']['public.user_application_access']:,} rows in user_application_access, "
            f"{sum(size['rows'].values()):,} in all ({size['relation_bytes'] / 1e6:.0f} MB on disk)"
        )
        head = ("median s", "best s", "ratio", "(best)", "MB stored", "peak RSS MB")
        print(f"  {'':34} {head[0]:>9} {head[1]:>7} {head[2]:>6} {head[3]:>6} {head[4]:>10} {head[5]:>12}")
        for name, e in f.items():
            base = "pg_restore" if name.startswith(("pg_restore", "migsafe restore")) else "pg_dump -Fc"
            ratio = e["median_s"] / f[base]["median_s"] if base in f else float("nan")
            best = e["best_s"] / f[base]["best_s"] if base in f else float("nan")
            stored = f"{e['bytes'] / 1e6:10.1f}" if "bytes" in e else f"{'':10}"
            rss = f"{e['maxrss_mb']:12.0f}" if "maxrss_mb" in e else ""
            print(
                f"  {name:34} {e['median_s']:9.2f} {e['best_s']:7.2f} {ratio:5.2f}x {best:5.2f}x {stored} {rss}"
            )
    print("\nratio = median seconds / the raw tool's median ((best) = best / best): pg_dump -Fc for backups,")
    print("pg_restore for restores. Peak RSS = migsafe's own Python process (VmHWM); its pg_dump, pg_restore")
    print("and psql children are separate processes. Raw tools: one process per table, sequentially.")
    if "profile" not in results:
        return
    pr = results["profile"]
    for key in ("restore", "restore_direct_pipe"):
        p = pr[key]
        print(
            f"\n{key} profile, median run {p['total_s']}s in-process (peak RSS {p['peak_maxrss_mb']} MB): "
            f"checksums {p['verify_checksums_s']}s, TOC listings {p['toc_listing_s']}s, data {p['data_pipe_s']}s, "
            f"FK pass {p['fk_pipe_s']}s, FKs+verification+commit {p['fk_verify_commit_s']}s, "
            f"check {p['check_restored_s']}s, ANALYZE and the rest {p['analyze_and_rest_s']}s"
        )
    print(
        f"pg_restore --file=- | psql without migsafe: {pr['pipe_psql_per_archive_s']}s per archive, "
        f"{pr['pipe_psql_one_transaction_s']}s in one transaction; "
        f"interpreter + imports: migsafe.cli {pr['import_cli_s']}s, migsafe.backup {pr['import_backup_s']}s"
    )
    b = pr["backup"]
    print(
        f"backup profile, median run {b['total_s']}s in-process: per table {b['table_seconds']}, "
        f"types dump {b['per_call'].get('_dump_types')}s (concurrent), peak RSS {b['maxrss_mb']} MB"
    )
    c = pr["codecs"]
    print(
        f"codecs, one core, the {c['input_bytes'] / 1e6:.0f} MB uncompressed user_application_access archive: "
        + ", ".join(
            f"{k} {v['mb_per_s']} MB/s" + (f" (x{v['ratio']})" if "ratio" in v else "")
            for k, v in c.items()
            if isinstance(v, dict)
        )
    )


def print_rehearsal(r: dict[str, Any]) -> None:
    rows = r["rows"]
    print(
        f"\nrehearsal: {rows['public.user_application_access']:,} rows in user_application_access, "
        f"{sum(rows.values()):,} in all; the cluster copied is {r['cluster_bytes'] / 1e6:.0f} MB; "
        f"medians of {r['repeat']} rounds per side, interleaved"
    )
    print(f"  {'step':34} {'migsafe s':>9} {'raw s':>8}  raw steps")
    for e in r["steps"]:
        m = f"{e['migsafe_s']:9.2f}" if e["migsafe_s"] is not None else f"{'':9}"
        w = f"{e['raw_s']:8.2f}" if e["raw_s"] is not None else f"{'':8}"
        parts = (
            " + ".join(f"{k} {v:.2f}" for k, v in e["raw_parts_s"].items()) or "(teardown, not in the sum)"
        )
        print(f"  {e['step']:34} {m} {w}  {parts}")
    print(
        f"  {'(outside steps: start, preflight, reports)':34} {r['migsafe_outside_steps_s']:9.2f}"
        f" {'':8}  raw teardown {r['raw_teardown_s']:.2f}s (not in the sum)"
    )
    print(
        f"  migsafe rehearse wall {r['migsafe_wall_s']:.2f}s (steps add up to {r['migsafe_steps_sum_s']:.2f}s; "
        f"the restore test overlaps the scratch copy and baseline)\n"
        f"  scratch copy -> upgrade start: migsafe {r['migsafe_scratch_to_upgrade_s']:.2f}s, of which "
        f"{r['migsafe_waited_for_restore_test_s']:.2f}s waiting for the restore test after the baseline; "
        f"raw {r['raw_scratch_to_upgrade_s']:.2f}s in sequence\n"
        f"  raw sum {r['raw_sum_s']:.2f}s -> ratio {r['ratio']:.2f}x (target <= {r['target']:.2f}x; per round "
        f"{r['ratio_per_round']})\n"
        f"  raw sum without the dump/restore steps {r['raw_strict_sum_s']:.2f}s -> ratio {r['ratio_strict']:.2f}x "
        f"(per round {r['ratio_strict_per_round']})"
    )


def _worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("_backup")
    pb = sub.add_parser("_profile_backup")
    for p in (b, pb):
        p.add_argument("--dsn", required=True)
        p.add_argument("--store", required=True)
        p.add_argument("--compression", default="zstd")
        p.add_argument("--level", type=int, default=3)
        p.add_argument("--jobs", type=int, default=None)
    c = sub.add_parser("_cli")
    c.add_argument("--report", required=True)
    c.add_argument("argv", nargs=argparse.REMAINDER)
    pr = sub.add_parser("_profile_restore")
    pr.add_argument("--store", required=True)
    pr.add_argument("--backup-id", required=True)
    pr.add_argument("--dsn", required=True)
    pr.add_argument("--direct-pipe", action="store_true")
    args = parser.parse_args(argv)
    if args.cmd == "_cli" and args.argv[:1] == ["--"]:
        args.argv = args.argv[1:]
    {
        "_backup": worker_backup,
        "_cli": worker_cli,
        "_profile_restore": worker_profile_restore,
        "_profile_backup": worker_profile_backup,
    }[args.cmd](args)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        _worker_main(sys.argv[1:])
    else:
        main()
