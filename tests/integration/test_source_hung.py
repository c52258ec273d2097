"""A source that hangs (every server process SIGSTOPped) mid-stream: migsafe ends, in bounded time.

A stopped server is not a dead one: its kernel still accepts connections and answers TCP keepalives,
it just never sends another byte. Without a watchdog a backup waits on pg_dump's pipe, and a
rehearsal on pg_basebackup, forever -- with a snapshot or a walsender held on production. Each test
stops the source's postmaster and all its backends while migsafe is copying from it, with a stall
timeout of a few seconds, and checks that migsafe gives up on its own: exit 3, one line naming the
source as stalled, nothing complete in the store, no child process left; then resumes the server
and checks that no session, walsender or replication slot of migsafe's is left on it.

The source is a cluster of its own (stopping the session's shared cluster would hang other tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from alembic_projects import write_project
from migsafe import catalog
from migsafe.exceptions import SourceStalled
from migsafe.localpg import LocalCluster
from migsafe.watchdog import Watchdog
from pgsupport import ROOT, CliResult, Database, freeze_server, thaw_server, wait_for, write_plan

from examples.enum_uppercase import seed

STALL = ["--stall-timeout", "3"]
BOUND = 90  # seconds: far above the stall timeout (plus the connect timeout of a session being opened)
TABLES = [*seed.TABLES, "public.wide", "public.blob"]
SOURCE_BURDEN = """
    select (select count(*) from pg_stat_activity
            where pid <> pg_backend_pid()
              and (application_name like 'migsafe%%' or application_name in ('pg_dump', 'pg_basebackup', 'psql')
                   or backend_type = 'walsender')),
           (select count(*) from pg_stat_replication),
           (select count(*) from pg_replication_slots),
           (select count(*) from pg_locks l join pg_class c on c.oid = l.relation
            where l.pid <> pg_backend_pid() and c.relname in ('users', 'wide', 'blob'))
"""


@pytest.fixture(scope="module")
def hung_source(runtime_dir: Path) -> Iterator[tuple[LocalCluster, Database]]:
    """A source on a server of its own: the seed tables, ``wide`` (~55 MB, dumped by one pg_dump)
    and ``blob`` (~90 MB, above the split size: its rows go out as parallel COPY parts)."""
    cluster = LocalCluster.create("hungsource", runtime_dir)
    try:
        with psycopg.connect(cluster.dsn().conninfo(), autocommit=True) as conn:
            conn.execute("create database hung")
        db = Database("hung", cluster.dsn("hung"))
        seed.load(db.conninfo, 2000, alembic=True)
        with db.connect() as conn:
            conn.execute("create table public.wide as select g as id, repeat(md5(g::text), 3) as payload "
                         "from generate_series(1, 420000) g")
            conn.execute("create table public.blob as select g as id, repeat(md5(g::text), 3) as payload "
                         "from generate_series(1, 700000) g")
            conn.execute("alter table public.wide add primary key (id)")
            conn.execute("alter table public.blob add primary key (id)")
        yield cluster, db
    finally:
        cluster.destroy()


def _marked(mark: str) -> list[str]:
    """Live processes whose environment carries ``mark`` (everything the migsafe under test started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if state != "Z" and mark.encode() in environ:
            found.append(f"{entry.name}: {cmd[:160]}")
    return found


def _burden(db: Database, seconds: float = 15.0) -> tuple[int, int, int, int]:
    """Sessions, walsenders, slots and table locks of migsafe's on the source (its snapshot dies with
    its session), once resumed backends noticed their client is gone (a backend stopped mid-send sees
    the closed socket when it runs again)."""
    deadline = time.monotonic() + seconds
    while True:
        with db.connect() as conn:
            row = conn.execute(SOURCE_BURDEN).fetchone()
        assert row is not None
        now = (int(row[0]), int(row[1]), int(row[2]), int(row[3]))
        if not any(now) or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


def _start(args: list[str], runtime_dir: Path, mark: str) -> subprocess.Popen[str]:
    env = {**os.environ, "MIGSAFE_RUNTIME_DIR": str(runtime_dir), "MIGSAFE_TEST_MARK": mark}
    return subprocess.Popen([sys.executable, "-m", "migsafe", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _end_frozen(proc: subprocess.Popen[str], stopped: list[int]) -> tuple[int | None, str]:
    """Wait (bounded) for migsafe to give up on the frozen source; on a hang, kill it and resume the server."""
    try:
        _, err = proc.communicate(timeout=BOUND)
    except subprocess.TimeoutExpired:
        proc.kill()  # its children die with it (their parent-death signal)
        _, err = proc.communicate()
        thaw_server(stopped)
        pytest.fail(f"migsafe still waited on the stopped source after {BOUND}s: {err[-600:]}")
    return proc.returncode, err


def _assert_one_stalled_line(code: int | None, err: str, db: Database) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("migsafe: error:")]
    assert code == 3, err
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    assert "stalled" in errors[0] and f"{db.dsn.host}:{db.dsn.port}" in errors[0], errors[0]


@pytest.mark.parametrize(("stream", "pattern"), [
    ("pg_dump", "COPY public.wide %"),  # a pg_dump streaming a table's rows
    ("copy part", 'copy (select % from "public"."blob" where ctid%'),  # psql streaming one part of a split table
])
def test_a_backup_from_a_source_that_hangs_mid_copy_ends_as_stalled_and_leaves_nothing(
    stream: str, pattern: str, hung_source: tuple[LocalCluster, Database], tmp_path: Path, runtime_dir: Path,
    migsafe: Callable[..., CliResult],
) -> None:
    # Given: a backup streaming rows out of the source (the stream of the kind under test has begun)
    cluster, db = hung_source
    store = tmp_path / "store"
    store.mkdir()
    plan = write_plan(tmp_path / "plan.toml", db, f"file://{store}", tables=TABLES)
    mark = uuid.uuid4().hex
    proc = _start(["backup", "--plan", str(plan), *STALL], runtime_dir, mark)
    copying = "select count(*) from pg_stat_activity where state = 'active' and query ilike %s"
    stopped: list[int] = []
    try:
        assert wait_for(lambda: bool(db.scalar(copying, (pattern,))), 120), f"no {stream} COPY seen"
        # When: the source's server hangs (every process of it stopped, its sockets still open)
        stopped = freeze_server(cluster.data_dir)
        code, err = _end_frozen(proc, stopped)
        # Then: the backup gave up by itself: exit 3, one line naming the source as stalled
        _assert_one_stalled_line(code, err, db)
        # no pg_dump or psql (nor anything else it started) is left waiting on the source
        assert wait_for(lambda: not _marked(mark), 5, 0.05), _marked(mark)
        # and nothing of it looks complete: no manifest
        listed = migsafe("backups", "list", "--store", f"file://{store}", "--json")
        assert listed.code == 0, listed.output
        assert not [b for b in json.loads(listed.stdout) if b["complete"]], listed.stdout
        assert not list(store.rglob("manifest.json*"))
    finally:
        thaw_server(stopped)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # once the server runs again, no session (its snapshot, its locks) of migsafe's is left on it
    assert _burden(db) == (0, 0, 0, 0)


def test_a_rehearsal_whose_source_hangs_during_the_scratch_copy_ends_as_stalled_and_leaves_no_walsender(
    hung_source: tuple[LocalCluster, Database], tmp_path: Path, runtime_dir: Path,
    migsafe: Callable[..., CliResult],
) -> None:
    # Given: a rehearsal copying the source to scratch with pg_basebackup (a walsender on the source)
    cluster, db = hung_source
    ini = write_project(tmp_path / "proj", upgrade=["SELECT 1"], downgrade=["SELECT 1"])
    plan = write_plan(tmp_path / "plan.toml", db, f"file://{tmp_path / 'store'}", tables=TABLES,
                      extra=f'[migration]\nalembic_ini = "{ini}"\nurl_env = "DATABASE_URL"\n')
    mark = uuid.uuid4().hex
    proc = _start(["rehearse", "--plan", str(plan), "--report-dir", str(tmp_path / "r"), *STALL], runtime_dir, mark)
    assert proc.stderr is not None
    stopped: list[int] = []
    try:
        for line in proc.stderr:  # the backup comes first; the copy starts with "scratch ..."
            if line.startswith("scratch ..."):
                break
        walsender = "select count(*) from pg_stat_activity where backend_type = 'walsender'"
        assert wait_for(lambda: bool(db.scalar(walsender)), 60), "no walsender of pg_basebackup seen"
        # When: the source's server hangs mid-copy
        stopped = freeze_server(cluster.data_dir)
        code, err = _end_frozen(proc, stopped)
        # Then: the rehearsal gave up by itself (exit 3, one line naming the source as stalled)
        _assert_one_stalled_line(code, err, db)
        # no pg_basebackup (nor its forked WAL streamer), no scratch server: nothing it started runs
        assert wait_for(lambda: not _marked(mark), 5, 0.05), _marked(mark)
        assert not list(runtime_dir.glob(f"*-{proc.pid}-*"))
    finally:
        thaw_server(stopped)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            migsafe("scratch", "sweep")
    # once the server runs again: no walsender, no (temporary) replication slot, no session of migsafe's
    assert _burden(db) == (0, 0, 0, 0)


# --- the watchdog itself ------------------------------------------------------------------------------
def test_a_long_silent_query_on_a_live_source_is_not_a_stall(hung_source: tuple[LocalCluster, Database]) -> None:
    # Given: a watchdog with a 1 s stall timeout, watching a session
    _cluster, db = hung_source
    with Watchdog(db.dsn, 1.0, "a test") as watch, catalog.connect(db.dsn) as conn, watch.session(conn):
        # When: that session runs a query that returns nothing for 3 s (a fingerprint scan of a big
        # table does), while the server is fine
        conn.execute("select pg_sleep(3)")
        # Then: the heartbeat kept answering, so the source is slow, not stalled
        assert watch.stalled is None


def test_a_session_blocked_on_a_hung_source_is_released_and_the_operation_cancelled(
    hung_source: tuple[LocalCluster, Database],
) -> None:
    # Given: a watchdog with a 1 s stall timeout, a session it watches, a cancel callback
    cluster, db = hung_source
    cancelled: list[float] = []
    stopped: list[int] = []
    try:
        with Watchdog(db.dsn, 1.0, "a test") as watch, catalog.connect(db.dsn) as conn, watch.session(conn), \
                watch.on_stall(lambda: cancelled.append(time.monotonic())):
            # When: the server hangs under a query
            stopped = freeze_server(cluster.data_dir)
            began = time.monotonic()
            with pytest.raises(psycopg.OperationalError):
                conn.execute("select 1")
            waited = time.monotonic() - began
            # Then: the query returned an error as soon as the watchdog saw the stall (not never)
            assert watch.stalled is not None and waited < 30, waited
            assert cancelled, "the operation's cancel callback was not called"
            with pytest.raises(SourceStalled, match=rf"the source {db.dsn.host}:{db.dsn.port}/hung stalled during a test"):
                watch.check()
    finally:
        thaw_server(stopped)
    # and once the server runs again, neither that session nor the heartbeat's is left on it
    assert _burden(db) == (0, 0, 0, 0)


def test_every_session_with_the_source_has_tcp_keepalives(hung_source: tuple[LocalCluster, Database]) -> None:
    # Given / When: a session opened the way every step opens one
    _cluster, db = hung_source
    with catalog.connect(db.dsn) as conn:
        params = conn.info.get_parameters()
    # Then: a connection whose peer vanished (a network partition) errors out instead of waiting forever
    assert (params.get("keepalives"), params.get("keepalives_idle"), params.get("keepalives_interval"),
            params.get("keepalives_count")) == ("1", "30", "10", "3"), params
