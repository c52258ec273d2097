"""Interrupts leave nothing behind: no child process, no session, walsender or slot on the source.

Each test interrupts a real ``migsafe`` (a subprocess, as an operator's ``kill`` or Ctrl-C would) at a
moment when a child tool is working against the source, then looks at the process table and at the
source's ``pg_stat_replication``, ``pg_replication_slots`` and ``pg_stat_activity``.

To make "during the scratch copy" a window wide enough to hit, the PostgreSQL binaries are given
through ``MIGSAFE_PG_BINDIR`` (the documented setting) as a folder whose ``pg_basebackup`` is the real
one throttled to 32 kB/s; every other tool is the real binary.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alembic_projects import write_project
from migsafe.localpg import LocalCluster, owner_of, process_start, sweep
from migsafe.pgtools import bindir
from pgsupport import ROOT, CliResult, Database, wait_for, write_plan

from examples.enum_uppercase import seed

SOURCE_SESSIONS = """
    select count(*) from pg_stat_activity
    where pid <> pg_backend_pid()
      and (application_name like 'migsafe%%' or application_name in ('pg_dump', 'pg_basebackup')
           or backend_type = 'walsender')
"""


@pytest.fixture(scope="module")
def slow_bindir(runtime_dir: Path) -> Iterator[Path]:
    """Real PostgreSQL binaries, except a pg_basebackup that starts 2 s late (as one waiting for the
    source's checkpoint does) and then copies at 32 kB/s.

    In the session's runtime folder: the ``postgres`` user (who runs pg_basebackup when we are root)
    can read it, and a sweep leaves it alone (its name names no owner).
    """
    real = bindir()
    assert real is not None
    folder = Path(tempfile.mkdtemp(prefix="slowbin", dir=runtime_dir))
    for tool in real.iterdir():
        (folder / tool.name).symlink_to(tool)
    (folder / "pg_basebackup").unlink()
    (folder / "pg_basebackup").write_text(f'#!/bin/sh\nsleep 2\nexec {real / "pg_basebackup"} --max-rate=32k "$@"\n')
    (folder / "pg_basebackup").chmod(0o755)
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def source(make_database: Callable[..., Database]) -> Database:
    db = make_database()
    seed.load(db.conninfo, 500, alembic=True)
    return db


def _processes_mentioning(needle: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle in cmd and state != "Z":
            found.append(f"{entry.name}: {cmd[:200]}")
    return found


def _source_burden(db: Database) -> dict[str, object]:
    with db.connect() as conn:
        return {
            "pg_stat_replication": conn.execute("select count(*) from pg_stat_replication").fetchone()[0],  # type: ignore[index]
            "pg_replication_slots": conn.execute("select count(*) from pg_replication_slots").fetchone()[0],  # type: ignore[index]
            "sessions": conn.execute(SOURCE_SESSIONS).fetchone()[0],  # type: ignore[index]
        }


def _settled_burden(db: Database, seconds: float = 5.0) -> dict[str, object]:
    """The source's burden once a just-closed connection's backend had time to exit."""
    deadline = time.monotonic() + seconds
    burden = _source_burden(db)
    while any(burden.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
        burden = _source_burden(db)
    return burden


def _rehearsal(tmp_path: Path, db: Database, runtime_dir: Path, pg_bindir: Path) -> subprocess.Popen[str]:
    ini = write_project(tmp_path / "proj", upgrade=["SELECT pg_sleep(60)"], downgrade=[])
    plan = write_plan(
        tmp_path / "plan.toml",
        db,
        f"file://{tmp_path / 'store'}",
        extra=f'[migration]\nalembic_ini = "{ini}"\nurl_env = "DATABASE_URL"\n',
    )
    env = {**os.environ, "MIGSAFE_RUNTIME_DIR": str(runtime_dir), "MIGSAFE_PG_BINDIR": str(pg_bindir)}
    return subprocess.Popen(
        [sys.executable, "-m", "migsafe", "rehearse", "--plan", str(plan), "--report-dir", str(tmp_path / "r")],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.parametrize("phase", ["starting", "streaming"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["TERM", "INT", "KILL"])
def test_an_interrupt_during_the_scratch_copy_leaves_no_pg_basebackup_nor_walsender(
    sig: signal.Signals, phase: str, tmp_path: Path, source: Database, runtime_dir: Path, slow_bindir: Path,
    migsafe: Callable[..., CliResult],
) -> None:
    # Given: a rehearsal copying the source to scratch with pg_basebackup, still starting (waiting
    # for the checkpoint) or already streaming from the source
    proc = _rehearsal(tmp_path, source, runtime_dir, slow_bindir)
    try:
        # this run's own scratch folder names its pid (another test's leftovers never match)
        needle = str(runtime_dir / f"scratch-{proc.pid}-")
        copying = wait_for(lambda: any("pg_basebackup" in p for p in _processes_mentioning(needle)), 120)
        assert copying, proc.stderr.read() if proc.poll() is not None and proc.stderr else "no pg_basebackup"
        if phase == "streaming":
            assert wait_for(lambda: bool(_source_burden(source)["pg_stat_replication"]), 30, 0.05)

        # When: a polite kill, a Ctrl-C, or a SIGKILL of migsafe itself
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # never leave a run behind for the next test
            proc.kill()
            proc.wait()
            migsafe("scratch", "sweep")

    # Then: migsafe says it was interrupted (SIGKILL cannot say anything)
    if sig != signal.SIGKILL:
        assert proc.returncode == 130, err
        assert "interrupted" in err and "Traceback" not in err
    # no pg_basebackup (nor anything else working on the scratch folder) is left running: at once
    # when migsafe exits (it waits for its children), within moments after a SIGKILL (the kernel's
    # parent-death signal)
    if sig != signal.SIGKILL:
        assert not _processes_mentioning(needle)
    assert wait_for(lambda: not _processes_mentioning(needle), 5, 0.05), _processes_mentioning(needle)
    # and nothing of migsafe's burdens the source: no walsender, no slot, no session
    assert _settled_burden(source) == {"pg_stat_replication": 0, "pg_replication_slots": 0, "sessions": 0}
    # the scratch folder is gone, or (SIGKILL) found and removed by a sweep
    if sig == signal.SIGKILL:
        assert migsafe("scratch", "sweep").code == 0
    assert not list(runtime_dir.glob("scratch-*")), list(runtime_dir.glob("scratch-*"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_backup_stops_its_pg_dumps_and_closes_every_source_session(
    sig: signal.Signals, tmp_path: Path, source: Database, migsafe: Callable[..., CliResult],
    runtime_dir: Path,
) -> None:
    # Given: a backup whose dumps wait on a lock another session holds on the source
    store = tmp_path / "store"
    store.mkdir()
    plan = write_plan(tmp_path / "plan.toml", source, f"file://{store}")
    blocker = source.connect()
    blocker.autocommit = False
    blocker.execute("lock table public.users in access exclusive mode")
    env = {**os.environ, "MIGSAFE_RUNTIME_DIR": str(runtime_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "migsafe", "backup", "--plan", str(plan)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        waiting = wait_for(
            lambda: bool(source.scalar(
                "select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                "and (application_name like 'migsafe%%' or application_name = 'pg_dump')"
            )),
            60, 0.05,
        )
        assert waiting, "the backup never reached the locked table"
        time.sleep(0.5)  # every dump has started by now

        # When
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        blocker.rollback()
        blocker.close()

    # Then: exit 130, one line, and no pg_dump nor session of migsafe's remains
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not [p for p in _processes_mentioning("pg_dump") if source.name in p]
    assert _settled_burden(source) == {"pg_stat_replication": 0, "pg_replication_slots": 0, "sessions": 0}
    # and no backup was left looking complete
    listed = migsafe("backups", "list", "--store", f"file://{store}", "--json")
    assert listed.code == 0, listed.output
    assert not [b for b in json.loads(listed.stdout) if b["complete"]]


# --- sweep: owners are a pid and a start time -------------------------------------------------------
@pytest.fixture
def private_runtime(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "runtime"
    path.mkdir()
    yield path


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_cluster_folder_names_its_owner_from_the_moment_it_exists(private_runtime: Path) -> None:
    # When a cluster folder is prepared
    cluster = LocalCluster.prepare("scratch", private_runtime)
    try:
        # Then its name alone (marker or not) says who owns it: this process, by pid and start time
        (cluster.root / "migsafe-cluster.json").unlink()
        assert owner_of(cluster.root) == (os.getpid(), process_start(os.getpid()))
        # and a live owner's folder is never swept, marker or not
        assert sweep(private_runtime) == []
        assert cluster.root.exists()
    finally:
        cluster.destroy()
    assert not cluster.root.exists()


def test_sweep_removes_a_markerless_folder_of_a_dead_owner(private_runtime: Path) -> None:
    # Given: what a killed run leaves when it dies before (or while) writing its marker
    dead = private_runtime / f"scratch-{_dead_pid()}-12345-abcdefgh"
    (dead / "data" / "base").mkdir(parents=True)
    (dead / "data" / "base" / "1").write_bytes(b"x" * 4096)
    # When
    removed = sweep(private_runtime)
    # Then
    assert removed == [dead.name]
    assert not dead.exists()


def test_sweep_tells_a_reused_pid_from_its_owner(private_runtime: Path) -> None:
    # Given: two folders naming this very pid; one with our start time, one with another (pid reused)
    me, started = os.getpid(), process_start(os.getpid())
    assert started is not None
    ours = private_runtime / f"scratch-{me}-{started}-aaaaaaaa"
    reused = private_runtime / f"scratch-{me}-{started - 1}-bbbbbbbb"
    for d in (ours, reused):
        d.mkdir()
        (d / "migsafe-cluster.json").write_text(
            json.dumps({"owner_pid": me, "owner_start": int(d.name.split("-")[2]), "port": 0})
        )
    # When
    removed = sweep(private_runtime)
    # Then: only the folder of the dead (earlier) owner is removed
    assert removed == [reused.name]
    assert ours.exists() and not reused.exists()


def test_sweep_leaves_folders_it_cannot_attribute_alone(private_runtime: Path) -> None:
    # Given: somebody else's folder in the runtime directory
    other = private_runtime / "not-ours"
    other.mkdir()
    # When / Then
    assert sweep(private_runtime) == []
    assert other.exists()


@pytest.mark.parametrize("interrupted", [False, True], ids=["finished", "interrupted-in-upgrade"])
def test_a_rehearsal_leaves_no_lock_report_in_tmp(
    interrupted: bool, tmp_path: Path, source: Database, runtime_dir: Path
) -> None:
    # Given: a private TMPDIR, so only this rehearsal's temporary files can appear in it
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    tmp.chmod(0o777)
    upgrade = ["SELECT pg_sleep(60)"] if interrupted else ["SELECT 1"]
    ini = write_project(tmp_path / "proj", upgrade=upgrade, downgrade=["SELECT 1"])
    plan = write_plan(tmp_path / "plan.toml", source, f"file://{tmp_path / 'store'}",
                      extra=f'[migration]\nalembic_ini = "{ini}"\nurl_env = "DATABASE_URL"\n')
    env = {**os.environ, "MIGSAFE_RUNTIME_DIR": str(runtime_dir), "TMPDIR": str(tmp)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "migsafe", "rehearse", "--plan", str(plan), "--report-dir", str(tmp_path / "r")],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    # When: it finishes, or is stopped while the upgrade runs (its lock report exists then)
    if interrupted:
        assert wait_for(lambda: bool([*tmp.glob("migsafe-locks-*"), *tmp.glob("migsafe-alembic-*")]), 120, 0.05)
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    # Then
    assert proc.returncode == (130 if interrupted else 0), err
    assert not list(tmp.glob("migsafe-locks-*")) and not list(tmp.glob("migsafe-alembic-*")), list(tmp.iterdir())


# --- server faults ----------------------------------------------------------------------------------
def _read_until(proc: subprocess.Popen[str], start: str, seconds: float) -> list[str]:
    """Stderr lines up to (and with) the first that starts with ``start``."""
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    for line in proc.stderr:
        seen.append(line.rstrip("\n"))
        if line.startswith(start) or time.monotonic() > deadline:
            break
    return seen


@pytest.mark.parametrize(("how", "when"), [
    ("kill -9", "upgrade ..."),  # alembic is running its statement
    ("pg_ctl stop -m immediate", "upgrade ..."),
    ("kill -9", "baseline: ok"),  # before alembic starts: the error comes outside any step
])
def test_a_scratch_server_dying_mid_upgrade_is_an_environment_fault_naming_the_scratch(
    how: str, when: str, tmp_path: Path, source: Database, runtime_dir: Path, migsafe: Callable[..., CliResult],
) -> None:
    # Given: a rehearsal whose upgrade runs for a minute on its scratch copy
    ini = write_project(tmp_path / "proj", upgrade=["SELECT pg_sleep(60)"], downgrade=["SELECT 1"])
    plan = write_plan(tmp_path / "plan.toml", source, f"file://{tmp_path / 'store'}",
                      extra=f'[migration]\nalembic_ini = "{ini}"\nurl_env = "DATABASE_URL"\n')
    fingerprint = source.scalar("select md5(string_agg(u::text, ',' order by id)) from public.users u")
    env = {**os.environ, "MIGSAFE_RUNTIME_DIR": str(runtime_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "migsafe", "rehearse", "--plan", str(plan), "--report-dir", str(tmp_path / "r")],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        seen = _read_until(proc, when, 180)
        assert seen and seen[-1].startswith(when), seen
        (scratch,) = runtime_dir.glob(f"scratch-{proc.pid}-*")
        if when == "upgrade ...":
            time.sleep(1.0)  # the upgrade's statement is running
        # When: the scratch server dies under it
        if how == "kill -9":
            os.kill(int((scratch / "data" / "postmaster.pid").read_text().split()[0]), signal.SIGKILL)
        else:
            LocalCluster(root=scratch, port=0).stop("immediate")
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            migsafe("scratch", "sweep")
    # Then: exit 3 (an environment fault, not a FAIL of the migration), in one line that says the
    # scratch server failed, and where it stopped -- not a bare "database: ..." an operator would read
    # as the source, nor the last step that ran (destroy_scratch)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 3, err
    assert lines[-1].startswith("migsafe: error: rehearsal stopped at step upgrade: the scratch server failed"), err
    assert len([ln for ln in lines if ln.startswith("migsafe: error:")]) == 1 and "Traceback" not in err
    # the scratch is removed by the rehearsal itself (no sweep), nothing of it runs, the source is as it was
    assert not list(runtime_dir.glob(f"*-{proc.pid}-*"))
    assert wait_for(lambda: not _processes_mentioning(str(scratch)), 5, 0.05), _processes_mentioning(str(scratch))
    assert _settled_burden(source) == {"pg_stat_replication": 0, "pg_replication_slots": 0, "sessions": 0}
    assert source.scalar("select md5(string_agg(u::text, ',' order by id)) from public.users u") == fingerprint
