"""What every benchmark shares: running a timed child, its peak RSS, interleaved rounds, medians.

A benchmark module (``bench/bench_*.py``) exposes ``NAME`` and ``run(ctx) -> dict``. It measures its
variants with :func:`interleave`, which runs every variant once per round, so that load from other
processes on a shared machine falls on every variant alike, and reports medians and bests from
:func:`summarize`. Ratios are only ever taken between figures of the same run.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
TABLES = ["public.users", "public.user_application_access", "public.user_invitations"]
BIG = "public.user_application_access"  # the table the sizes are counted in (3 rows per user)


class BenchFailed(Exception):
    """A child of the bench (a tool, a worker) failed: the figure cannot be taken."""


class Unavailable(Exception):
    """The migsafe API a benchmark drives is not in this branch: reported, not a failure."""


# ---------------------------------------------------------------------------------------------
# in a child process
def usage() -> dict[str, float]:
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


def timed(record: dict[str, list[float]], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` wrapped to append its wall seconds to ``record[name]`` (for profiles)."""

    def wrapper(*a: Any, **kw: Any) -> Any:
        t0 = time.monotonic()
        try:
            return fn(*a, **kw)
        finally:
            record.setdefault(name, []).append(time.monotonic() - t0)

    return wrapper


# ---------------------------------------------------------------------------------------------
# in the parent
class Bench:
    """Runs children to completion and measures them (wall seconds, CPU through wait4)."""

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
        _pid, status, rusage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - t0
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise BenchFailed(f"bench: {' '.join(argv)} exited {code}: {err.decode(errors='replace')[-2000:]}")
        return {"seconds": seconds, "cpu_s": round(rusage.ru_utime + rusage.ru_stime, 3)}

    def worker(self, *args: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run ``bench/workers.py ARGS``; return (timing, the JSON it printed last).

        A worker that finds its migsafe API missing prints ``{"unavailable": why}``: raised here as
        :class:`Unavailable`.
        """
        out = self.work / "worker.out"
        with open(out, "wb") as fh:
            timing = self.run([sys.executable, str(BENCH / "workers.py"), *args], stdout=fh)
        printed = json.loads(out.read_text().strip().splitlines()[-1])
        if "unavailable" in printed:
            raise Unavailable(printed["unavailable"])
        return timing, printed

    def migsafe_cli(self, *args: str) -> dict[str, Any]:
        """``python -m migsafe ARGS`` as a user runs it, with its own peak RSS (through the worker)."""
        report = self.work / "cli-report.json"
        timing = self.run([sys.executable, str(BENCH / "workers.py"), "_cli", "--report", str(report), "--", *args])
        return {**timing, **json.loads(report.read_text())}

    @staticmethod
    def admin(dsn: str, stmt: sql.Composable) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(stmt)


@dataclass
class Context:
    """One bench run: the cluster, the seeded sources and the knobs every benchmark reads."""

    bench: Bench
    cluster: Any  # migsafe.localpg.LocalCluster
    sizes: dict[str, dict[str, Any]]  # label -> {"users", "rows", "db", ...}
    repeat: int
    smoke: bool
    types_sql: Path
    say: Callable[[str], None]
    cpus: int = field(default_factory=lambda: os.cpu_count() or 2)
    shared: dict[str, Any] = field(default_factory=dict)  # what one benchmark leaves for the next
    _counter: Iterator[int] = field(default_factory=lambda: iter(range(1_000_000)))

    @property
    def admin_dsn(self) -> str:
        return str(self.cluster.dsn("postgres").conninfo())

    def source(self, label: str) -> Any:
        return self.cluster.dsn(self.sizes[label]["db"])

    def fresh_db(self, prefix: str, template: str | None = None) -> str:
        name = f"{prefix}_{next(self._counter)}"
        stmt = sql.SQL("create database {}").format(sql.Identifier(name))
        if template:
            stmt = sql.SQL("{} template {}").format(stmt, sql.Identifier(template))
        self.bench.admin(self.admin_dsn, stmt)
        return name

    def drop_db(self, name: str) -> None:
        self.bench.admin(self.admin_dsn, sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))

    @contextmanager
    def database(self, prefix: str, template: str | None = None) -> Iterator[Any]:
        name = self.fresh_db(prefix, template)
        try:
            yield self.cluster.dsn(name)
        finally:
            self.drop_db(name)


def interleave(
    repeat: int,
    variants: Sequence[str],
    measure: Callable[[str, int], dict[str, Any]],
    *,
    say: Callable[[str], None] | None = None,
    label: str = "",
) -> dict[str, list[dict[str, Any]]]:
    """Run every variant once per round, ``repeat`` rounds, the order rotated each round; samples by name."""
    samples: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for rnd in range(repeat):
        k = rnd % len(variants) if variants else 0
        for name in [*variants[k:], *variants[:k]]:
            samples[name].append(measure(name, rnd))
        if say:
            say(f"{label} round {rnd + 1}/{repeat}: "
                + ", ".join(f"{n} {samples[n][-1]['seconds']:.2f}s" for n in variants))  # fmt: skip
    return samples


def median(xs: Sequence[float]) -> float:
    return round(statistics.median(xs), 3)


def summarize(samples: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per variant: median and best seconds, all runs, and the other figures a sample carries."""
    out = {}
    for name, runs in samples.items():
        if not runs:
            continue
        secs = [r["seconds"] for r in runs]
        entry: dict[str, Any] = {"median_s": median(secs), "best_s": round(min(secs), 3),
                                 "runs_s": [round(s, 3) for s in secs]}  # fmt: skip
        for key in ("bytes", "maxrss_mb", "cpu_s", "children_cpu_s", "lock_window_s", "inner_seconds"):
            vals = [r[key] for r in runs if r.get(key) is not None]
            if vals:
                entry[key] = max(vals) if key == "maxrss_mb" else (vals[-1] if key == "bytes" else median(vals))
        out[name] = entry
    return out


def ratio(figures: dict[str, dict[str, Any]], name: str, base: str) -> float | None:
    if name in figures and base in figures and figures[base]["median_s"] > 0:
        return round(figures[name]["median_s"] / figures[base]["median_s"], 3)
    return None


def scalar(conn: psycopg.Connection[Any], stmt: sql.Composable) -> Any:
    row = conn.execute(stmt).fetchone()
    assert row is not None
    return row[0]


def raw_dump(bench: Bench, src: Any, folder: Path, extra: Sequence[str] = (),
             tables: Sequence[str] = TABLES) -> dict[str, Any]:  # fmt: skip
    """The seed kit's backup: one ``pg_dump -Fc`` per table, sequentially, into files."""
    folder.mkdir(parents=True, exist_ok=True)
    total: dict[str, Any] = {"seconds": 0.0, "bytes": 0, "cpu_s": 0.0}
    for t in tables:
        f = folder / f"{t}.dump"
        r = bench.run([bench.bin("pg_dump"), "-Fc", *extra, f"--table={t}", f"--file={f}",
                       f"--dbname={src.conninfo()}"])  # fmt: skip
        total["seconds"] += r["seconds"]
        total["cpu_s"] += r["cpu_s"]
        total["bytes"] += f.stat().st_size
    return total


def raw_restore(bench: Bench, types_sql: Path, folder: Path, target: Any, jobs: int = 1) -> dict[str, Any]:
    """Stock tools into an empty database: ``psql -f types.sql``, then ``pg_restore [-j N]`` per dump."""
    steps = [[bench.bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(types_sql), "-d", target.conninfo()]]
    steps += [[bench.bin("pg_restore"), *([f"-j{jobs}"] if jobs > 1 else []), "--exit-on-error",
               f"--dbname={target.conninfo()}", str(folder / f"{t}.dump")] for t in TABLES]  # fmt: skip
    total = {"seconds": 0.0, "cpu_s": 0.0}
    for argv in steps:
        r = bench.run(argv)
        total["seconds"] += r["seconds"]
        total["cpu_s"] += r["cpu_s"]
    return total


def machine_info(bench: Bench, dsn: str) -> dict[str, Any]:
    import zstandard

    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    server = subprocess.run([bench.bin("psql"), "-X", "-Atc", "select version()", "-d", dsn],
                            capture_output=True, text=True, env=bench.env).stdout.strip()  # fmt: skip
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "loadavg_start": os.getloadavg(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "zstandard": zstandard.__version__,
        "postgresql": server,
        "pg_dump": subprocess.run([bench.bin("pg_dump"), "--version"], capture_output=True, text=True).stdout.strip(),
        "pg_bindir": str(bench.bindir),
    }
