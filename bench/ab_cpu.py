"""Interleaved A/B of backup (or restore) variants by wall time *and total CPU*, in-process.

On a loaded 2-core machine wall seconds swing by +-50% between rounds; the CPU a run costs -- ours,
our children's (pg_dump, psql) and the server's (every backend of the cluster, live or reaped by the
postmaster) -- is what competes for the cores, and moves far less with the load.

    .venv/bin/python bench/ab_cpu.py --dsn postgresql://postgres@127.0.0.1:PORT/app --rounds 5 \\
        --variant 'record=fingerprint=record' --variant 'off=fingerprint=off' ...

A variant is ``name=field=value[,field=value]`` over BackupOptions fields (ints parsed); with
``--restore``, ``x_autovacuum=on`` leaves autovacuum on the staged tables (the code before it was off),
``r_<field>=value`` sets a RestoreOptions field (``r_analyze=0``, ``r_jobs=1``), and ``x_raw=1`` or
``x_raw=2`` restores stock ``pg_dump -Fc`` archives of the same tables with ``pg_restore`` (serial, or
``-j2``) instead: the baseline, measured by the same wall and CPU clocks in the same rounds;
``x_pgoptions=-c name=value`` runs the variant with those server settings in every session (PGOPTIONS).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "functions"), str(Path(__file__).resolve().parent.parent)]

TABLES = ["public.users", "public.user_application_access", "public.user_invitations"]
TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int, children: bool) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if children else 0)
    return ticks / TICK


def server_cpu(postmaster: int) -> float:
    """The cluster's CPU seconds so far: the postmaster with its reaped children, and the live ones."""
    total = _proc_cpu(postmaster, True)
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(postmaster)], capture_output=True, text=True).stdout
    for pid in out.split():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += _proc_cpu(int(pid), False)
    return total


def own_cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = text.partition("=")
    opts: dict[str, Any] = {}
    for pair in filter(None, rest.split(",")):
        k, _, v = pair.partition("=")
        opts[k] = int(v) if v.lstrip("-").isdigit() else v
    return name, opts


def main() -> None:
    import psycopg
    from migsafe.backup import BackupOptions, run_backup
    from migsafe.dsn import Dsn
    from migsafe.identifiers import QualifiedName
    from migsafe.restore import RestoreOptions, run_restore
    from migsafe.store.file import FileStore

    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variant", action="append", required=True)
    ap.add_argument("--restore", action="store_true", help="time a restore of each variant's backup instead")
    args = ap.parse_args()
    dsn = Dsn.parse(args.dsn)
    with psycopg.connect(dsn.conninfo(), autocommit=True) as c:
        data_dir = Path(c.execute("show data_directory").fetchone()[0])  # type: ignore[index]
    postmaster = int(Path(data_dir / "postmaster.pid").read_text().split()[0])
    variants = dict(parse_variant(v) for v in args.variant)
    work = Path(tempfile.mkdtemp(prefix="migsafe-ab-"))
    store = FileStore(work / "store")
    tables = [QualifiedName.parse(t) for t in TABLES]
    samples: dict[str, list[dict[str, float]]] = {n: [] for n in variants}
    backups: dict[str, str] = {}
    extra = {n: {k: v for k, v in o.items() if k.startswith("x_")} for n, o in variants.items()}
    restore_opts = {n: {k[2:]: v for k, v in o.items() if k.startswith("r_")} for n, o in variants.items()}
    variants = {n: {k: v for k, v in o.items() if not k.startswith(("x_", "r_"))} for n, o in variants.items()}
    bindir = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip())
    raw = work / "raw"
    if args.restore:
        for name, opts in variants.items():
            if "x_raw" not in extra[name]:
                backups[name] = run_backup(dsn, store, tables, BackupOptions(**opts)).backup_id
        if any("x_raw" in e for e in extra.values()):  # the seed kit's backup: one pg_dump -Fc per table
            raw.mkdir()
            types = "\n".join(r[0] for r in psycopg.connect(dsn.conninfo()).execute(
                "select format('create type %I.%I as enum (%s);', n.nspname, t.typname, "
                "(select string_agg(quote_literal(e.enumlabel), ', ' order by e.enumsortorder) "
                "from pg_enum e where e.enumtypid = t.oid)) from pg_type t join pg_namespace n "
                "on n.oid = t.typnamespace where t.typtype = 'e' and n.nspname = 'public'").fetchall())
            (raw / "types.sql").write_text(types + "\n")
            for t in TABLES:
                subprocess.run([str(bindir / "pg_dump"), "-Fc", f"--table={t}", f"--file={raw / t}.dump",
                                f"--dbname={dsn.conninfo()}"], check=True)
    names = list(variants)
    for rnd in range(args.rounds):
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for name in order:
            target = None
            if args.restore:
                target = f"ab_{rnd}_{name.replace('-', '_').replace(' ', '_')}"
                with psycopg.connect(dsn.conninfo(), autocommit=True) as c:
                    c.execute(f'create database "{target}"')
            os.environ.pop("PGOPTIONS", None)
            if "x_pgoptions" in extra[name]:  # server settings for every session of the run (libpq reads it)
                os.environ["PGOPTIONS"] = str(extra[name]["x_pgoptions"])
            srv0, me0, t0 = server_cpu(postmaster), own_cpu(), time.monotonic()
            from migsafe import staging

            off = staging.Loader._autovacuum_off
            if extra[name].get("x_autovacuum") == "on":
                staging.Loader._autovacuum_off = lambda *a, **k: None  # type: ignore[method-assign]
            target_dsn = Dsn.parse(args.dsn.rsplit("/", 1)[0] + "/" + target) if target else None
            if target_dsn and "x_raw" in extra[name]:
                jobs = int(extra[name]["x_raw"])
                steps = [[str(bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(raw / "types.sql"),
                          "-d", target_dsn.conninfo()]]
                steps += [[str(bindir / "pg_restore"), *([f"-j{jobs}"] if jobs > 1 else []), "--exit-on-error",
                           f"--dbname={target_dsn.conninfo()}", f"{raw / t}.dump"] for t in TABLES]
                for argv in steps:
                    subprocess.run(argv, check=True)
            elif target_dsn:
                report = run_restore(store, backups[name], target_dsn, RestoreOptions(**restore_opts[name]))
                assert report.ok, report.problems()
            else:
                run_backup(dsn, store, tables, BackupOptions(**variants[name]))
            staging.Loader._autovacuum_off = off  # type: ignore[method-assign]
            wall, me, srv = time.monotonic() - t0, own_cpu() - me0, server_cpu(postmaster) - srv0
            samples[name].append({"wall_s": wall, "client_cpu_s": me, "server_cpu_s": srv, "cpu_s": me + srv,
                                  "load1": os.getloadavg()[0]})
            print(f"round {rnd + 1} {name}: wall {wall:.2f}s cpu {me + srv:.2f}s (client {me:.2f}, server {srv:.2f}) "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
            if target:
                with psycopg.connect(dsn.conninfo(), autocommit=True) as c:
                    c.execute(f'drop database "{target}" with (force)')
    summary = {n: {k: round(statistics.median(s[k] for s in v), 3) for k in v[0]} for n, v in samples.items()}
    print(json.dumps({"summary": summary, "samples": samples}, indent=1))


if __name__ == "__main__":
    main()
