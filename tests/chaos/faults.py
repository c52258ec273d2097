"""Fault injection against a real migsafe: seeded trials, each checked against the invariants.

A trial starts the real ``migsafe`` CLI in a subprocess (as a deploy pipeline would), injects one
fault at a random point, and then checks every invariant that fault could break. Every random choice
comes from one ``random.Random(seed)``, so a run is reproduced by its seed (timing on a loaded host
still moves the exact kill point a little; the phase it lands in is what the seed fixes).

Faults:
- ``backup/SIGKILL``, ``backup/SIGTERM``: a random moment of ``migsafe backup``;
- ``rehearse/<phase>/SIGKILL|SIGTERM``: a random moment inside one phase of ``migsafe rehearse``
  (backup, scratch copy, restore test, upgrade, downgrade, reports);
- ``restore/<empty|populated>/SIGKILL|SIGTERM``: a random moment of ``migsafe restore --replace``
  from a complete backup into an empty database, or into one holding other rows of the same tables;
- ``server/source-stopped``: the source server stopped (``pg_ctl stop -m immediate``) at a random
  moment of ``migsafe backup``;
- ``server/scratch-killed``: the scratch server killed (kill -9 of its postmaster, or
  ``pg_ctl stop -m immediate``) at a random moment of the upgrade during ``migsafe rehearse``;
- ``server/source-hung/backup``, ``server/source-hung/scratch``: the source server *hung* (its
  postmaster and every backend SIGSTOPped: sockets open, nothing answers) at a random moment of
  ``migsafe backup`` or of a rehearsal's scratch copy, with a stall timeout of a few seconds; then
  resumed (SIGCONT) and checked for leftovers;
- ``store/disk-full``: ``migsafe backup`` into a file store on a tmpfs too small for the backup
  (a size drawn at random, so the disk fills in a dump, in the manifest or in its seal; or never);
- ``byteflip``: one random byte of one random object of a complete backup (the manifest and its
  seal included) flipped, then ``restore``.

Invariants (see docs/reliability.md for why each matters):
- ``no_child_left``: no process migsafe started survives it (pg_dump, pg_basebackup, alembic, ...);
- ``source_unburdened``: no session, walsender or replication slot of migsafe's on the source;
- ``source_unchanged``: the source's table fingerprints and alembic revision are what they were;
- ``killed_backup_incomplete``: a backup killed before it finished is listed incomplete, and a
  restore from it is refused (exit 2) without touching the target;
- ``exit_code``: SIGTERM ends in 130 (a kill -9 cannot say anything);
- ``no_scratch_after_sweep``: after ``migsafe scratch sweep`` no scratch folder or server is left;
- ``refused_untouched``: a flipped byte is refused (exit 1) before the target is touched;
- ``target_all_or_nothing``: a killed restore leaves the target as it was or fully restored, with
  every constraint valid;
- ``target_unburdened``: no session of migsafe's left on the restore target;
- ``staging_swept``: a killed restore's staging schema is dropped by the next restore (which then
  succeeds) or by ``prune --target-dsn``;
- ``exit_3_one_line``: a server or disk fault ends in exit 3 and one ``migsafe: error:`` line that
  names the cause, never a traceback (a hung source: "stalled");
- ``exits_promptly``: the faulted command ends by itself within the trial's bound (broken only: a
  command still running at the bound is killed and the trial says so);
- ``scratch_removed``: a rehearsal whose scratch server died removes the scratch itself (no sweep);
- ``partials_removed``: a backup that failed on a full disk leaves no partial file, and
  ``backups list`` shows it incomplete with the bytes it really holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
for p in (HERE.parent, HERE.parent / "integration", ROOT / "functions", ROOT):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from alembic_projects import write_project  # noqa: E402
from migsafe.localpg import LocalCluster  # noqa: E402
from pgsupport import Database, freeze_server, table_fingerprints, thaw_server, write_plan  # noqa: E402

from examples.enum_uppercase import seed  # noqa: E402

TABLES = seed.TABLES
PHASES = {  # phase -> the stderr line that starts it
    "backup": "backup ...",
    "scratch": "scratch ...",
    "restore_test": "restore_test ...",
    "upgrade": "baseline: ok",
    "downgrade": "verify_upgrade: ok",
    "reports": "destroy_scratch: ok",
}
MARKER_ENV = "MIGSAFE_CHAOS_LAB"
SOURCE_SESSIONS = """
    select count(*) from pg_stat_activity
    where datname is distinct from 'postgres' and pid <> pg_backend_pid()
      and (application_name like 'migsafe%%' or application_name in ('pg_dump', 'pg_basebackup')
           or backend_type = 'walsender')
"""


@dataclass
class Trial:
    fault: str
    seed: int
    held: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unavailable: str = ""  # the host cannot inject this fault: not run, counted neither held nor broken
    outcome: str = ""  # where the fault landed, when a trial can tell (printed on its line)

    def check(self, name: str, ok: bool, note: str = "") -> None:
        (self.held if ok else self.broken).append(name)
        if not ok and note:
            self.notes.append(f"{name}: {note}")


@dataclass
class Lab:
    """Where trials run: a source database, a runtime folder, a work folder, the migsafe command."""

    source: Database
    runtime_dir: Path
    work: Path
    make_target: Callable[[], Database]
    env: dict[str, str] = field(default_factory=dict)
    # in the environment of every process a trial starts (inherited by whatever those start): a
    # process that still carries it after the trial is a child migsafe left behind
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    servers: dict[str, LocalCluster] = field(default_factory=dict)  # for the server faults, made once
    timings: dict[str, float] = field(default_factory=dict)

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "migsafe", *args], capture_output=True, text=True,
                              env=self.full_env(), cwd=ROOT, timeout=timeout)

    def full_env(self) -> dict[str, str]:
        return {**os.environ, "MIGSAFE_RUNTIME_DIR": str(self.runtime_dir), MARKER_ENV: self.marker, **self.env}

    def close(self) -> None:
        for cluster in self.servers.values():
            cluster.destroy()
        self.servers.clear()

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "migsafe", *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=self.full_env(), cwd=ROOT)


def prepare_source(db: Database) -> None:
    seed.load(db.conninfo, 2000, alembic=True)


# --- observations ------------------------------------------------------------------------------------
def processes_mentioning(*needles: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and any(n in cmd for n in needles):
            found.append(f"{entry.name}: {cmd[:160]}")
    return found


def burden(db: Database, seconds: float = 5.0) -> dict[str, int]:
    """Sessions, walsenders and slots of migsafe's on the source, once closed ones had time to exit."""
    deadline = time.monotonic() + seconds
    while True:
        with psycopg.connect(db.dsn.with_db("postgres").conninfo(), autocommit=True) as conn:
            now = {
                "walsenders": int(conn.execute("select count(*) from pg_stat_replication").fetchone()[0]),  # type: ignore[index]
                "slots": int(conn.execute("select count(*) from pg_replication_slots").fetchone()[0]),  # type: ignore[index]
                "sessions": int(conn.execute(SOURCE_SESSIONS).fetchone()[0]),  # type: ignore[index]
            }
        if not any(now.values()) or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


def source_state(db: Database) -> tuple[dict[str, tuple[int, str]], object]:
    return table_fingerprints(db, TABLES), db.scalar("select version_num from alembic_version")


def _children_of_lab(lab: Lab) -> list[str]:
    """Client processes migsafe started (scratch *servers* are daemons: ``scratch sweep`` stops them).

    Found by what they mention (the scratch folders, the source, the work folder) and by the lab's
    marker in their environment, which every descendant inherits (pg_restore reading stdin names
    nothing of ours on its command line).
    """
    found = processes_mentioning(str(lab.runtime_dir / "scratch-"), str(lab.runtime_dir / "restoretest-"),
                                 f"dbname={lab.source.name}", str(lab.work))
    found += [p for p in processes_carrying(f"{MARKER_ENV}={lab.marker}") if p not in found]
    return [p for p in found if not _is_server(int(p.split(":", 1)[0]))]


def processes_carrying(entry: str) -> list[str]:
    """Live processes with ``entry`` (``NAME=value``) in their environment."""
    found = []
    needle = entry.encode() + b"\0"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            env = (proc / "environ").read_bytes() + b"\0"
            if not env.startswith(needle) and b"\0" + needle not in env:
                continue
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if state != "Z":
            found.append(f"{proc.name}: {cmd[:160]}")
    return found


def _is_server(pid: int) -> bool:
    """A PostgreSQL server process (a scratch or lab server, or one of its backends)."""
    try:
        return os.readlink(f"/proc/{pid}/exe").endswith("/postgres")
    except OSError:
        return False


def _settle(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    q: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            q.put(line.rstrip("\n"))
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _wait_line(q: queue.Queue[str | None], start: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            line = q.get(timeout=0.2)
        except queue.Empty:
            continue
        if line is None:
            return False
        if line.startswith(start):
            return True
    return False


# --- trials ------------------------------------------------------------------------------------------
def _common_after_kill(lab: Lab, t: Trial, sig: signal.Signals, code: int | None, before: object) -> None:
    if sig == signal.SIGTERM:
        t.check("exit_code", code == 130, f"exit {code}")
    left = _settle(lambda: not _children_of_lab(lab), 5.0)
    t.check("no_child_left", left, "; ".join(_children_of_lab(lab)))
    b = burden(lab.source)
    t.check("source_unburdened", not any(b.values()), json.dumps(b))
    t.check("source_unchanged", source_state(lab.source) == before)


def _killed_backups_incomplete(lab: Lab, t: Trial, store: Path) -> None:
    if not store.exists():
        t.check("killed_backup_incomplete", True)
        return
    listed = lab.cli("backups", "list", "--store", f"file://{store}", "--json")
    if listed.returncode != 0:
        t.check("killed_backup_incomplete", False, listed.stderr.strip()[-200:])
        return
    ok = True
    for ref in json.loads(listed.stdout or "[]"):
        if ref["complete"]:
            v = lab.cli("verify", "--store", f"file://{store}", "--backup-id", ref["backup_id"])
            ok &= v.returncode == 0  # finished before the kill: then it must be whole
            continue
        target = lab.make_target()
        r = lab.cli("restore", "--store", f"file://{store}", "--backup-id", ref["backup_id"],
                    "--target-dsn", target.conninfo)
        touched = target.scalar("select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                                "where n.nspname = 'public'")
        ok &= r.returncode == 2 and touched == 0
    t.check("killed_backup_incomplete", ok)


def trial_backup(lab: Lab, rng: random.Random, sig: signal.Signals, trial_seed: int) -> Trial:
    t = Trial(f"backup/{sig.name}", trial_seed)
    store = lab.work / f"store-{trial_seed}"
    store.mkdir()
    plan = write_plan(lab.work / f"plan-{trial_seed}.toml", lab.source, f"file://{store}")
    before = source_state(lab.source)
    proc = lab.start("backup", "--plan", str(plan))
    lines = _lines(proc)
    _wait_line(lines, "backup ", 60)  # the first dump started (before that, Python is still starting)
    time.sleep(rng.uniform(0.0, 1.0))  # a backup of the seed takes about a second
    proc.send_signal(sig)
    _await_exit(proc, t, 60)
    code = proc.returncode
    if sig == signal.SIGTERM and code == 0:
        # the backup finished before the signal (or the signal came after the work was done): its
        # backup must then be complete and verify, which killed_backup_incomplete checks
        t.notes.append("finished before the signal")
        code = 130
    _common_after_kill(lab, t, sig, code, before)
    _killed_backups_incomplete(lab, t, store)
    return t


def _await_exit(proc: subprocess.Popen[str], t: Trial, seconds: float) -> None:
    """Wait for the faulted command to end; one that outlives ``seconds`` is killed and breaks exits_promptly."""
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        t.check("exits_promptly", False)


def _start_rehearsal(lab: Lab, trial_seed: int, upgrade_sleep: float, downgrade_sleep: float) -> tuple[
        Path, object, subprocess.Popen[str], queue.Queue[str | None]]:
    """A trial's own project, store and plan, and ``migsafe rehearse`` started on them."""
    ini = write_project(lab.work / f"proj-{trial_seed}", upgrade=[f"SELECT pg_sleep({upgrade_sleep})"],
                        downgrade=[f"SELECT pg_sleep({downgrade_sleep})"])
    store = lab.work / f"store-{trial_seed}"
    store.mkdir()
    plan = write_plan(lab.work / f"plan-{trial_seed}.toml", lab.source, f"file://{store}",
                      extra=f'[migration]\nalembic_ini = "{ini}"\nurl_env = "DATABASE_URL"\n')
    before = source_state(lab.source)
    proc = lab.start("rehearse", "--plan", str(plan), "--report-dir", str(lab.work / f"report-{trial_seed}"))
    return store, before, proc, _lines(proc)


def trial_rehearse(lab: Lab, rng: random.Random, phase: str, sig: signal.Signals, trial_seed: int) -> Trial:
    t = Trial(f"rehearse/{phase}/{sig.name}", trial_seed)
    store, before, proc, lines = _start_rehearsal(lab, trial_seed, upgrade_sleep=0.4, downgrade_sleep=0.4)
    if not _wait_line(lines, PHASES[phase], 180):
        t.notes.append(f"phase {phase} never started (exit {proc.poll()})")
    time.sleep(rng.uniform(0.0, 0.4))
    proc.send_signal(sig)
    _await_exit(proc, t, 90)
    if sig == signal.SIGTERM and proc.returncode in (0, 1):
        t.notes.append("finished before the signal")  # the reports phase may end first
    code = 130 if (sig == signal.SIGTERM and proc.returncode in (0, 1)) else proc.returncode
    _common_after_kill(lab, t, sig, code, before)
    _killed_backups_incomplete(lab, t, store)
    sweep = lab.cli("scratch", "sweep")
    left = [p.name for p in lab.runtime_dir.iterdir() if p.name.startswith(("scratch-", "restoretest-"))]
    left += processes_mentioning(str(lab.runtime_dir / "scratch-"), str(lab.runtime_dir / "restoretest-"))
    t.check("no_scratch_after_sweep", sweep.returncode == 0 and not left, ", ".join(left))
    return t


def trial_byteflip(lab: Lab, rng: random.Random, origin: Origin, trial_seed: int) -> Trial:
    t = Trial("byteflip", trial_seed)
    store = lab.work / f"flip-{trial_seed}"
    shutil.copytree(origin.store, store)
    objects = sorted(p for p in store.rglob("*") if p.is_file())
    victim = rng.choice(objects)
    data = bytearray(victim.read_bytes())
    pos = rng.randrange(len(data))
    data[pos] ^= 1 << rng.randrange(8)
    victim.write_bytes(bytes(data))
    target = lab.make_target()
    res = lab.cli("restore", "--store", f"file://{store}", "--backup-id", origin.backup_id,
                  "--target-dsn", target.conninfo)
    touched = target.scalar("select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                            "where n.nspname = 'public'")
    ok = res.returncode == 1 and touched == 0 and "Traceback" not in res.stderr
    t.check("refused_untouched", ok, f"{victim.name}@{pos}: exit {res.returncode}, {touched} relations, "
            f"{res.stderr.strip()[-160:]}")
    shutil.rmtree(store, ignore_errors=True)
    return t


# --- restore kills ------------------------------------------------------------------------------
@dataclass
class Origin:
    """A complete backup of the source, what its tables hold, and how long a restore of it takes."""

    store: Path
    backup_id: str
    restored: dict[str, tuple[int, str] | None]  # the tables as a full restore leaves them
    restore_seconds: float  # from the restore's first line to its exit
    pages: int  # 4 KiB pages its files take (for the disk-full sizes)


def target_state(db: Database) -> tuple[dict[str, tuple[int, str] | None], list[str]]:
    """The seed tables' counts and fingerprints (None: absent) and the target's own types."""
    with db.connect() as conn:
        present = {r[0] for r in conn.execute(
            "select n.nspname || '.' || c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where c.relkind in ('r', 'p')")}
        types = [r[0] for r in conn.execute(
            "select t.typname || coalesce(':' || (select string_agg(e.enumlabel, ',' order by e.enumsortorder) "
            "from pg_enum e where e.enumtypid = t.oid), '') from pg_type t "
            "join pg_namespace n on n.oid = t.typnamespace "
            "where n.nspname = 'public' and t.typtype in ('e', 'd', 'c', 'r', 'm') and t.typrelid = 0 order by 1")]
    fps = table_fingerprints(db, [t for t in TABLES if t in present])
    return {t: fps.get(t) for t in TABLES}, types


def _invalid_constraints(db: Database) -> int:
    return int(str(db.scalar("select count(*) from pg_constraint c join pg_namespace n on n.oid = c.connamespace "
                             "where n.nspname = 'public' and not c.convalidated")))


def _staging_schemas(db: Database) -> list[str]:
    with db.connect() as conn:
        return [r[0] for r in conn.execute("select nspname from pg_namespace where nspname like 'migsafe\\_staging\\_%'")]


def _sessions_on(db: Database, seconds: float = 10.0) -> int:
    """Sessions on ``db`` once the closed ones had time to exit (only migsafe connects to a target)."""
    q = "select count(*) from pg_stat_activity where datname = %s and pid <> pg_backend_pid()"
    deadline = time.monotonic() + seconds
    while True:
        with psycopg.connect(db.dsn.with_db("postgres").conninfo(), autocommit=True) as conn:
            n = int(conn.execute(q, (db.name,)).fetchone()[0])  # type: ignore[index]
        if not n or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


def make_origin(lab: Lab) -> Origin:
    """The complete backup restores and byte flips start from, timed by one restore into an empty database."""
    store = lab.work / "origin"
    store.mkdir(exist_ok=True)
    plan = write_plan(lab.work / "origin-plan.toml", lab.source, f"file://{store}")
    res = lab.cli("backup", "--plan", str(plan))
    assert res.returncode == 0, res.stderr
    backup_id = res.stdout.strip().splitlines()[-1]
    target = lab.make_target()
    proc = lab.start("restore", "--store", f"file://{store}", "--backup-id", backup_id,
                     "--target-dsn", target.conninfo)
    lines = _lines(proc)
    _wait_line(lines, "", 120)
    first = time.monotonic()
    proc.wait(timeout=300)
    assert proc.returncode == 0, f"calibration restore exited {proc.returncode}"
    pages = sum(-(-f.stat().st_size // 4096) for f in store.rglob("*") if f.is_file())
    return Origin(store, backup_id, target_state(target)[0], time.monotonic() - first, pages)


def _populate(db: Database) -> None:
    """The same tables holding other rows (fewer users), at the same alembic revision."""
    seed.load(db.conninfo, 700, alembic=True)


def trial_restore(lab: Lab, rng: random.Random, origin: Origin, into: str, sig: signal.Signals,
                  trial_seed: int) -> Trial:
    t = Trial(f"restore/{into}/{sig.name}", trial_seed)
    target = lab.make_target()
    if into == "populated":
        _populate(target)
    before = target_state(target)
    args = ("restore", "--store", f"file://{origin.store}", "--backup-id", origin.backup_id,
            "--target-dsn", target.conninfo, "--replace")
    proc = lab.start(*args)
    lines = _lines(proc)
    _wait_line(lines, "", 120)  # its first line: the load started
    time.sleep(rng.uniform(0.0, origin.restore_seconds * 1.1))  # anywhere up to just after its end
    proc.send_signal(sig)
    _await_exit(proc, t, 90)
    code = proc.returncode
    if code == 0:
        t.notes.append("finished before the signal")
    if sig == signal.SIGTERM:
        t.check("exit_code", code in (0, 130), f"exit {code}")
    left = _settle(lambda: not _children_of_lab(lab), 5.0)
    t.check("no_child_left", left, "; ".join(_children_of_lab(lab)))
    t.check("target_unburdened", _sessions_on(target) == 0)
    after = target_state(target)
    whole = after[0] == origin.restored
    ok = whole if code == 0 else (after == before or whole)  # exit 0 means restored
    t.outcome = "finished" if code == 0 else "restored" if whole else "untouched" if after == before else "mixed"
    invalid = _invalid_constraints(target)
    t.check("target_all_or_nothing", ok and invalid == 0,
            f"exit {code}, untouched={after == before}, restored={whole}, {invalid} invalid constraint(s)")
    # the next restore (which must then work) or a prune drops what the killed one left in staging
    if rng.random() < 0.5:
        again = lab.cli(*args)
        swept = again.returncode == 0 and target_state(target)[0] == origin.restored
        how = f"next restore: exit {again.returncode} {again.stderr.strip()[-160:]}"
    else:
        again = lab.cli("prune", "--target-dsn", target.conninfo)
        swept = again.returncode == 0
        how = f"prune: exit {again.returncode} {again.stderr.strip()[-160:]}"
    staging = _staging_schemas(target)
    t.check("staging_swept", swept and not staging, f"{how}; left {staging}")
    return t


# --- server and disk faults ----------------------------------------------------------------------
def _one_clear_line(t: Trial, code: int | None, stderr: str, cause: tuple[str, ...]) -> None:
    """Exit 3 and exactly one ``migsafe: error:`` line, last, naming the cause; no traceback."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("migsafe: error:")]
    named = bool(errors) and any(c in errors[0].lower() for c in cause)
    ok = (code == 3 and len(errors) == 1 and lines[-1] == errors[0] and named
          and "Traceback" not in stderr)
    t.check("exit_3_one_line", ok, f"exit {code}: {' | '.join(lines[-3:])[-300:]}")
    if ok:
        t.notes.append(errors[0])


def _fault_server(lab: Lab) -> tuple[LocalCluster, Database]:
    """A source on a server of its own, so that stopping it disturbs nothing else."""
    cluster = lab.servers.get("source")
    if cluster is None:
        cluster = LocalCluster.create("chaosfault", lab.runtime_dir)
        lab.servers["source"] = cluster
        with psycopg.connect(cluster.dsn().conninfo(), autocommit=True) as conn:
            conn.execute("create database faultsource")
        db = Database("faultsource", cluster.dsn("faultsource"))
        seed.load(db.conninfo, 60000, alembic=True)
        # how long a backup of it runs, from its first line: the stop lands anywhere in that
        store = lab.work / "fault-timing"
        store.mkdir()
        proc = lab.start("backup", "--plan", str(write_plan(lab.work / "fault-timing.toml", db, f"file://{store}")))
        lines = _lines(proc)
        _wait_line(lines, "backup ", 60)
        first = time.monotonic()
        proc.wait(timeout=300)
        lab.timings["source_backup"] = time.monotonic() - first
        return cluster, db
    if not (cluster.data_dir / "postmaster.pid").exists():
        cluster.start()
    return cluster, Database("faultsource", cluster.dsn("faultsource"))


SOURCE_GONE = ("source", "server", "connection")  # the message says what went away


def trial_source_stopped(lab: Lab, rng: random.Random, trial_seed: int) -> Trial:
    t = Trial("server/source-stopped", trial_seed)
    cluster, db = _fault_server(lab)
    before = source_state(db)
    store = lab.work / f"store-{trial_seed}"
    store.mkdir()
    plan = write_plan(lab.work / f"plan-{trial_seed}.toml", db, f"file://{store}")
    proc = lab.start("backup", "--plan", str(plan))
    lines = _lines(proc)
    _wait_line(lines, "backup ", 60)
    time.sleep(rng.uniform(0.0, lab.timings["source_backup"] * 0.8))  # pg_ctl takes a moment too
    cluster.stop("immediate")  # pg_ctl stop -m immediate: the server is gone at once
    _await_exit(proc, t, 90)
    stderr = _drain(lines)
    if proc.returncode == 0:
        t.notes.append("finished before the stop")
        t.outcome = "finished"
    else:
        t.outcome = "stopped"
        _one_clear_line(t, proc.returncode, stderr, SOURCE_GONE)
    t.check("no_child_left", _settle(lambda: not _children_of_lab(lab), 5.0), "; ".join(_children_of_lab(lab)))
    _killed_backups_incomplete(lab, t, store)
    cluster.start()
    t.check("source_unchanged", source_state(db) == before)
    b = burden(db)
    t.check("source_unburdened", not any(b.values()), json.dumps(b))
    return t


STALL_TIMEOUT = "3"  # seconds, for the hung-source trials (the default, 120 s, is for production)
SOURCE_STALLED = ("stalled",)


def _scratch_copy_seconds(lab: Lab, db: Database) -> float:
    """How long a pg_basebackup of the fault server takes (once per run): the hang lands anywhere in it."""
    if "source_copy" not in lab.timings:
        from migsafe.pgtools import tool

        folder = Path(tempfile.mkdtemp(prefix="copytiming", dir=lab.runtime_dir))
        folder.chmod(0o777)
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        began = time.monotonic()
        subprocess.run([*as_user, tool("pg_basebackup"), "-D", str(folder / "data"), "-X", "stream", "-c", "fast",
                        "--no-sync", "-d", db.dsn.conninfo(with_password=False)], capture_output=True, check=True)
        lab.timings["source_copy"] = time.monotonic() - began
        shutil.rmtree(folder, ignore_errors=True)
    return lab.timings["source_copy"]


def trial_source_hung(lab: Lab, rng: random.Random, trial_seed: int) -> Trial:
    """The source hangs (SIGSTOP of every server process) during a backup or a rehearsal's scratch copy."""
    target = rng.choice(["backup", "scratch"])
    t = Trial(f"server/source-hung/{target}", trial_seed)
    cluster, db = _fault_server(lab)
    before = source_state(db)
    store = lab.work / f"store-{trial_seed}"
    store.mkdir()
    stall = ("--stall-timeout", STALL_TIMEOUT)
    if target == "backup":
        plan = write_plan(lab.work / f"plan-{trial_seed}.toml", db, f"file://{store}")
        proc = lab.start("backup", "--plan", str(plan), *stall)
        lines = _lines(proc)
        _wait_line(lines, "backup ", 60)
        window = lab.timings["source_backup"] * 0.75  # its end (the manifest, the exit) reads nothing from it
    else:
        window = _scratch_copy_seconds(lab, db)
        ini = write_project(lab.work / f"proj-{trial_seed}", upgrade=["SELECT 1"], downgrade=["SELECT 1"])
        plan = write_plan(lab.work / f"plan-{trial_seed}.toml", db, f"file://{store}",
                          extra=f'[migration]\nalembic_ini = "{ini}"\nurl_env = "DATABASE_URL"\n')
        proc = lab.start("rehearse", "--plan", str(plan), "--report-dir", str(lab.work / f"report-{trial_seed}"),
                         *stall)
        lines = _lines(proc)
        if not _wait_line(lines, "scratch ...", 180):
            t.notes.append(f"the scratch copy never started (exit {proc.poll()})")
    stopped: list[int] = []
    try:
        time.sleep(rng.uniform(0.0, window * 0.8))
        stopped = freeze_server(cluster.data_dir)  # hung: every socket open, nothing answers
        _await_exit(proc, t, 90)
        stderr = _drain(lines)
        finished = proc.returncode in (0, 1)  # done with the source before it hung (a rehearsal may FAIL)
        t.outcome = f"{target}: " + ("finished" if finished else "stalled" if "stalled" in stderr else "other")
        if finished:
            t.notes.append("finished before the hang")
        else:
            _one_clear_line(t, proc.returncode, stderr, SOURCE_STALLED)
        t.check("no_child_left", _settle(lambda: not _children_of_lab(lab), 5.0), "; ".join(_children_of_lab(lab)))
        _killed_backups_incomplete(lab, t, store)
        if target == "scratch":
            left = [p.name for p in lab.runtime_dir.glob(f"*-{proc.pid}-*")]
            t.check("scratch_removed", not left, ", ".join(left))
    finally:
        thaw_server(stopped)
    t.check("source_unchanged", source_state(db) == before)
    b = burden(db, 15.0)  # resumed backends notice their client is gone when they next read or send
    t.check("source_unburdened", not any(b.values()), json.dumps(b))
    return t


SCRATCH_GONE = ("scratch",)  # not "database: ...", which an operator reads as the source


def trial_scratch_killed(lab: Lab, rng: random.Random, trial_seed: int) -> Trial:
    t = Trial("server/scratch-killed", trial_seed)
    _store, before, proc, lines = _start_rehearsal(lab, trial_seed, upgrade_sleep=3, downgrade_sleep=0.2)
    # "upgrade ..." is said when alembic starts (after the restore test, which the upgrade waits for)
    if not _wait_line(lines, "upgrade ...", 180):
        t.notes.append(f"upgrade never started (exit {proc.poll()})")
    time.sleep(rng.uniform(0.0, 2.5))
    how = rng.choice(["kill -9 postmaster", "pg_ctl stop -m immediate"])
    scratch = [d for d in lab.runtime_dir.glob(f"scratch-{proc.pid}-*") if (d / "data").is_dir()]
    if not scratch:
        t.notes.append("no scratch server found to kill")
    for d in scratch:
        if how.startswith("kill"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                os.kill(int((d / "data" / "postmaster.pid").read_text().split()[0]), signal.SIGKILL)
        else:
            LocalCluster(root=d, port=0).stop("immediate")
    _await_exit(proc, t, 120)
    stderr = _drain(lines)
    t.notes.append(how)
    step = [ln for ln in stderr.splitlines() if "rehearsal stopped at step" in ln]
    t.outcome = how + (": " + step[-1].split("at step ", 1)[1].split(":", 1)[0] if step else "")
    _one_clear_line(t, proc.returncode, stderr, SCRATCH_GONE)
    t.check("no_child_left", _settle(lambda: not _children_of_lab(lab), 5.0), "; ".join(_children_of_lab(lab)))
    left = [p.name for p in lab.runtime_dir.glob(f"*-{proc.pid}-*")]
    left += processes_mentioning(*(str(d) for d in scratch))
    t.check("scratch_removed", not left, ", ".join(left))
    b = burden(lab.source)
    t.check("source_unburdened", not any(b.values()), json.dumps(b))
    t.check("source_unchanged", source_state(lab.source) == before)
    return t


def _drain(q: queue.Queue[str | None], seconds: float = 5.0) -> str:
    """What is left of a finished process's stderr."""
    out = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            line = q.get(timeout=0.2)
        except queue.Empty:
            continue
        if line is None:
            break
        out.append(line)
    return "\n".join(out)


class Unavailable(Exception):
    """The host cannot inject this fault (a tmpfs cannot be mounted): reported, never counted as held."""


DISK_FULL = ("no space", "disk full")


def trial_disk_full(lab: Lab, rng: random.Random, origin: Origin, trial_seed: int) -> Trial:
    t = Trial("store/disk-full", trial_seed)
    mount = lab.work / f"full-{trial_seed}"
    mount.mkdir()
    pages = rng.randint(1, origin.pages + 1)  # may fill in any object, the manifest and its seal included
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={pages * 4}k,mode=0700", "tmpfs", str(mount)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise Unavailable(f"mount -t tmpfs refused: {res.stderr.strip()}")
    try:
        store = mount / "store"
        store.mkdir()
        plan = write_plan(lab.work / f"plan-{trial_seed}.toml", lab.source, f"file://{store}")
        before = source_state(lab.source)
        run = lab.cli("backup", "--plan", str(plan))
        if run.returncode == 0:
            t.notes.append(f"{pages} pages were enough")
            t.outcome = "fit"
        else:
            _one_clear_line(t, run.returncode, run.stderr, DISK_FULL)
            full_in = [w.rstrip(":") for w in run.stderr.split() if w.startswith(str(store))]
            t.outcome = "full in " + (full_in[-1].rsplit("/", 1)[-1] if full_in else "?")
        _killed_backups_incomplete(lab, t, store)
        partials = [p.name for p in store.rglob("*.migsafe-partial")]
        listed = lab.cli("backups", "list", "--store", f"file://{store}", "--json")
        refs = json.loads(listed.stdout or "[]") if listed.returncode == 0 else None
        true_bytes = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
        listed_bytes = sum(r["bytes"] for r in refs) if refs is not None else -1
        t.check("partials_removed", not partials and listed_bytes == true_bytes,
                f"{pages} pages: partial files {partials}; listed {listed_bytes} bytes, on disk {true_bytes}")
        t.check("no_child_left", _settle(lambda: not _children_of_lab(lab), 5.0), "; ".join(_children_of_lab(lab)))
        b = burden(lab.source)
        t.check("source_unburdened", not any(b.values()), json.dumps(b))
        t.check("source_unchanged", source_state(lab.source) == before)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    return t


def plan_trials(rng: random.Random, per_kind: int, flips: int, phases: int | None = None,
                faults: int | None = None) -> Iterator[tuple[str, tuple[object, ...]]]:
    """The trials of a run, shuffled; ``phases`` rehearse phases per signal (all by default),
    ``faults`` trials of each server and disk fault (``per_kind`` by default)."""
    kinds: list[tuple[str, tuple[object, ...]]] = []
    for sig in (signal.SIGKILL, signal.SIGTERM):
        kinds += [("backup", (sig,))] * per_kind
        chosen = list(PHASES) if phases is None else rng.sample(list(PHASES), phases)
        for phase in chosen:
            kinds += [("rehearse", (phase, sig))] * per_kind
        for into in ("empty", "populated"):
            kinds += [("restore", (into, sig))] * per_kind
    n = per_kind if faults is None else faults
    kinds += [("source_stopped", ()), ("scratch_killed", ()), ("disk_full", ())] * n
    kinds += [("byteflip", ())] * flips
    rng.shuffle(kinds)
    # kinds added later go after the shuffle, so that a seed replays every earlier kind's trials as before
    kinds += [("source_hung", ())] * n
    yield from kinds


def run_trials(lab: Lab, seed_value: int, per_kind: int, flips: int, phases: int | None = None,
               faults: int | None = None, say: Callable[[str], None] = print,
               only: set[str] | None = None) -> list[Trial]:
    """Run the planned trials; ``only`` keeps some kinds (their trial seeds are the full run's)."""
    rng = random.Random(seed_value)  # noqa: S311 - seeded so that a run is reproduced
    say(f"chaos: seed {seed_value}, {per_kind} trial(s) per kill fault, "
        f"{per_kind if faults is None else faults} per server/disk fault, {flips} byte flips")
    trials = []
    try:
        origin = make_origin(lab)
        for kind, args in plan_trials(rng, per_kind, flips, phases, faults):
            trial_seed = rng.randrange(1 << 30)
            if only is not None and kind not in only:
                continue
            sub = random.Random(trial_seed)  # noqa: S311 - seeded so that a trial is reproduced
            started = time.monotonic()
            try:
                t = _one(lab, kind, args, sub, origin, trial_seed)
            except Unavailable as exc:
                t = Trial(_FAULT_NAMES.get(kind, kind), trial_seed, unavailable=str(exc))
            trials.append(t)
            status = ("NOT RUN " + t.unavailable if t.unavailable else
                      "ok" if not t.broken else "BROKEN " + "; ".join(t.notes))
            status += f" ({t.outcome})" if t.outcome else ""
            say(f"  {t.fault:<32} seed {trial_seed:<10} {time.monotonic() - started:5.1f}s "
                f"held {len(t.held)} broken {len(t.broken)} {status}")
    finally:
        lab.close()
    return trials


_FAULT_NAMES = {"source_stopped": "server/source-stopped", "scratch_killed": "server/scratch-killed",
                "disk_full": "store/disk-full", "source_hung": "server/source-hung"}


def _one(lab: Lab, kind: str, args: tuple[object, ...], sub: random.Random, origin: Origin, trial_seed: int) -> Trial:
    if kind == "backup":
        return trial_backup(lab, sub, args[0], trial_seed)  # type: ignore[arg-type]
    if kind == "rehearse":
        return trial_rehearse(lab, sub, args[0], args[1], trial_seed)  # type: ignore[arg-type]
    if kind == "restore":
        return trial_restore(lab, sub, origin, args[0], args[1], trial_seed)  # type: ignore[arg-type]
    if kind == "source_stopped":
        return trial_source_stopped(lab, sub, trial_seed)
    if kind == "scratch_killed":
        return trial_scratch_killed(lab, sub, trial_seed)
    if kind == "source_hung":
        return trial_source_hung(lab, sub, trial_seed)
    if kind == "disk_full":
        return trial_disk_full(lab, sub, origin, trial_seed)
    return trial_byteflip(lab, sub, origin, trial_seed)


def table(trials: list[Trial]) -> str:
    rows: dict[str, list[int]] = {}
    for t in trials:
        r = rows.setdefault(t.fault, [0, 0, 0, 0])
        r[0] += 1
        r[1] += len(t.held)
        r[2] += len(t.broken)
        r[3] += bool(t.unavailable)
    out = [f"{'fault':<34}{'trials':>7}{'invariants held':>17}{'broken':>8}{'not run':>9}"]
    for fault in sorted(rows):
        n, held, broken, skipped = rows[fault]
        out.append(f"{fault:<34}{n:>7}{held:>17}{broken:>8}{skipped:>9}")
    tot = [sum(r[i] for r in rows.values()) for i in range(4)]
    out.append(f"{'total':<34}{tot[0]:>7}{tot[1]:>17}{tot[2]:>8}{tot[3]:>9}")
    return "\n".join(out)
