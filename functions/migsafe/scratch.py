"""Scratch copies of the source: where the migration is rehearsed, and always destroyed after.

``local``: a throw-away cluster filled by ``pg_basebackup`` when the source allows a replication
connection (the local analogue of restoring an RDS snapshot: a physical copy, same catalog, same
relfilenodes, fast), otherwise by a full ``pg_dump | pg_restore`` of the source database.
``dsn``: an existing scratch server (on AWS, the instance the state machine restored from a
snapshot); it is used as is, and the state machine deletes it.
The source is only ever read. While it is copied a watchdog watches it (watchdog.py): a source that
hangs mid-copy (nothing from it, not even an answer to a heartbeat, for ``stall_timeout`` seconds)
stops the copy's tools -- pg_basebackup's walsenders and temporary slot go with them -- and the
copy ends in SourceStalled instead of waiting forever.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from . import pgtools
from .dsn import Dsn, mask
from .exceptions import InputError, ScratchFailed
from .localpg import SERVER_USER, LocalCluster, _chown_tree
from .pgtools import tool, tool_env
from .watchdog import DEFAULT_STALL_TIMEOUT, Watchdog

COPY_APPLICATION_NAME = "migsafe scratch copy"


@dataclass
class Scratch:
    kind: str
    id: str
    dsn: Dsn  # same database name and user as the source
    method: str
    cluster: LocalCluster | None = None
    destroyed: bool = False

    def destroy(self) -> None:
        if self.cluster is not None and not self.destroyed:
            self.cluster.destroy()
            self.destroyed = True


def create_scratch(
    kind: str,
    source: Dsn,
    *,
    runtime_dir: Path | None = None,
    scratch_dsn: Dsn | None = None,
    pg_bindir: str | None = None,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
) -> Scratch:
    if kind == "dsn":
        if scratch_dsn is None:
            raise InputError("scratch.kind = 'dsn' needs scratch.dsn (or the runner's scratch endpoint)")
        if (scratch_dsn.host, scratch_dsn.port) == (source.host, source.port):
            raise InputError("the scratch server is the source server: refusing to migrate the source")
        return Scratch(kind="dsn", id=f"{scratch_dsn.host}:{scratch_dsn.port}", dsn=scratch_dsn, method="dsn")
    if kind != "local":
        raise InputError(
            f"scratch.kind = {kind!r} runs on AWS (the state machine restores it); locally use 'local'"
        )
    cluster = LocalCluster.prepare("scratch", runtime_dir)
    try:
        with Watchdog(source, stall_timeout, "the scratch copy") as watch:
            method = "pg_basebackup" if _try_basebackup(cluster, source, pg_bindir, watch) else "pg_dump"
            if method == "pg_dump":
                cluster.initdb()
                cluster.start()
                _dump_restore(cluster, source, pg_bindir, watch)
        if method == "pg_basebackup":
            cluster.start()
        dsn = Dsn(
            {
                "host": "127.0.0.1",
                "port": str(cluster.port),
                "dbname": source.dbname,
                "user": source.user or "postgres",
            }
            if method == "pg_basebackup"
            else {"host": "127.0.0.1", "port": str(cluster.port), "dbname": source.dbname, "user": "postgres"}
        )
        return Scratch(kind="local", id=cluster.id, dsn=dsn, method=method, cluster=cluster)
    except BaseException:
        cluster.destroy()
        raise


def _try_basebackup(cluster: LocalCluster, source: Dsn, pg_bindir: str | None, watch: Watchdog) -> bool:
    """Physical copy of the source cluster; False when the source refuses replication connections.

    SourceStalled if the source hangs while it is copied (pg_basebackup is stopped, with its group).
    """
    # named, so an operator (and our tests) can tell our walsender from anybody else's on the source
    conninfo = source.tool_conninfo(application_name=COPY_APPLICATION_NAME)
    watch.during = "the scratch copy (pg_basebackup)"
    copy = pgtools.spawn(
        [
            tool("pg_basebackup", pg_bindir),
            "-D",
            str(cluster.data_dir),
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
            "--no-password",
            "-d",
            conninfo,
        ],
        as_user=SERVER_USER if os.geteuid() == 0 else None,
        env=tool_env(source.tool_env()),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with watch.on_stall(lambda: pgtools.stop(copy, grace=2.0)):
            copy.communicate(timeout=3600)
    except BaseException:
        pgtools.stop(copy)
        raise
    pgtools.release(copy)
    watch.check()
    if copy.returncode != 0:
        shutil.rmtree(cluster.data_dir, ignore_errors=True)
        return False
    data = cluster.data_dir
    # a Debian-managed source keeps its configuration outside the data directory: give the copy its own
    if not (data / "postgresql.conf").exists():
        (data / "postgresql.conf").write_text("")
    with open(data / "postgresql.conf", "a") as fh:
        fh.write(
            "\n# migsafe scratch copy: private, loopback only\n"
            f"listen_addresses = '127.0.0.1'\nport = {cluster.port}\nunix_socket_directories = '{cluster.socket_dir}'\n"
            f"hba_file = '{data / 'pg_hba.conf'}'\nident_file = '{data / 'pg_ident.conf'}'\n"
            "fsync = off\nsynchronous_commit = off\n"
            "archive_mode = off\nprimary_conninfo = ''\nssl = off\n"
        )
    (data / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    (data / "pg_ident.conf").write_text("")
    for name in ("standby.signal", "recovery.signal", "postmaster.pid"):
        (data / name).unlink(missing_ok=True)
    _chown_tree(cluster.root)
    return True


def _dump_restore(cluster: LocalCluster, source: Dsn, pg_bindir: str | None, watch: Watchdog) -> None:
    """Logical copy of the source database (when replication is not allowed); SourceStalled if it hangs."""
    watch.during = "the scratch copy (pg_dump)"
    with psycopg.connect(cluster.dsn().conninfo(), autocommit=True) as conn:
        if not conn.execute("select 1 from pg_database where datname = %s", (source.dbname,)).fetchone():
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(source.dbname)))
    dump = pgtools.spawn(
        [
            tool("pg_dump", pg_bindir),
            "--format=custom",
            "--compress=0",
            f"--dbname={source.tool_conninfo(application_name=COPY_APPLICATION_NAME)}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=tool_env(source.tool_env()),
    )
    restore: subprocess.Popen[bytes] | None = None
    try:
        restore = pgtools.spawn(
            [
                tool("pg_restore", pg_bindir),
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                f"--dbname={cluster.dsn(source.dbname).conninfo()}",
            ],
            stdin=dump.stdout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=tool_env(),
        )
        assert dump.stdout is not None
        dump.stdout.close()  # pg_restore holds it now: pg_dump sees a closed pipe if it dies
        with watch.on_stall(lambda: pgtools.stop(dump, grace=2.0)):
            _rout, restore_err = restore.communicate()
            _out, dump_err = dump.communicate()
    except BaseException:
        pgtools.stop(dump)
        if restore is not None:
            pgtools.stop(restore)
        raise
    pgtools.release(dump)
    pgtools.release(restore)
    watch.check()
    if dump.returncode != 0:
        raise ScratchFailed(
            f"pg_dump of the source failed: {mask(dump_err.decode(errors='replace').strip())[-1500:]}"
        )
    if restore.returncode != 0:
        raise ScratchFailed(
            f"pg_restore into scratch failed: {mask(restore_err.decode(errors='replace').strip())[-1500:]}"
        )
