"""migsafe against the raw PostgreSQL tools, in one run, on the same data.

    .venv/bin/python bench/run.py                 # 1,000,000 rows in user_application_access (~5 minutes)
    .venv/bin/python bench/run.py --users 20000 --small-users 5000 --repeat 1    # a quick smoke run

What it does (docs/benchmarks.md explains the figures and the choices they led to):
1. starts a throw-away cluster (migsafe.localpg.LocalCluster) and loads the seed scenario twice:
   ``--users`` users (333,334 -> 1,000,002 rows in user_application_access) and ``--small-users``
   (33,334 -> 100,002 rows) for the memory-flatness figure;
2. backups, each variant once per round, rounds interleaved so that load from other processes on the
   machine hits every variant alike: raw ``pg_dump -Fc`` of each table to a file, sequentially (what the
   seed's hand-written kit runs), raw ``pg_dump -Fc -Z0``, and ``migsafe.backup.run_backup`` to a
   ``file://`` store (zstd level 1 and 3, and gzip) in a child process that reports its own peak RSS;
3. restores into an empty database, the same way: raw ``pg_restore`` and ``pg_restore -j2`` of the
   raw dumps (types first, ``psql -f types.sql``), and ``python -m migsafe restore``;
4. the smaller size: the default backup and restore, for peak memory at two table sizes;
5. a profile: where a migsafe restore and backup spend their time (wrapped functions, one run each),
   and the single-core speed of zstd and gzip on the uncompressed archive;
6. prints a table and writes ``bench/results.json`` (git-ignored).

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
from collections.abc import Callable, Iterable, Iterator, Sequence
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


def bounded_decompressed(chunks: Iterable[bytes], compression: str) -> Iterator[bytes]:
    """``migsafe.streams.decompressed`` with its output bounded: zstd expands a 1 MiB chunk of a dump
    ~15x in one ``decompress`` call; feeding it 64 KiB slices keeps each output near 1 MiB."""
    import zstandard

    if compression != "zstd":
        yield from chunks
        return
    dobj = zstandard.ZstdDecompressor().decompressobj()
    for chunk in chunks:
        view = memoryview(chunk)
        for i in range(0, len(view), 1 << 16):
            out = dobj.decompress(view[i : i + (1 << 16)])
            if out:
                yield out


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

    if (
        args.bounded_decompression
    ):  # the change proposed in docs/benchmarks.md, tried without editing streams.py
        restore.decompressed = bounded_decompressed  # type: ignore[attr-defined]
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

    def run(self, argv: Sequence[str], *, stdout: Any = subprocess.DEVNULL) -> dict[str, Any]:
        """Run to completion; wall seconds, and the child's rusage through wait4."""
        t0 = time.monotonic()
        proc = subprocess.Popen(list(argv), stdout=stdout, stderr=subprocess.PIPE, env=self.env)
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


def _scalar(conn: psycopg.Connection[Any], stmt: sql.Composed) -> Any:
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
            ("restore_bounded_decompression", ["--bounded-decompression"]),
            ("restore_bounded_direct_pipe", ["--bounded-decompression", "--direct-pipe"]),
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
    finally:
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
    for key in ("restore", "restore_bounded_decompression", "restore_bounded_direct_pipe"):
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
    pr.add_argument("--bounded-decompression", action="store_true")
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
