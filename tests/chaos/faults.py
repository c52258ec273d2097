"""Fault injection against a real migsafe: seeded trials, each checked against the invariants.

A trial starts the real ``migsafe`` CLI in a subprocess (as a deploy pipeline would), injects one
fault at a random point, and then checks every invariant that fault could break. Every random choice
comes from one ``random.Random(seed)``, so a run is reproduced by its seed (timing on a loaded host
still moves the exact kill point a little; the phase it lands in is what the seed fixes).

Faults:
- ``backup/SIGKILL``, ``backup/SIGTERM``: a random moment of ``migsafe backup``;
- ``rehearse/<phase>/SIGKILL|SIGTERM``: a random moment inside one phase of ``migsafe rehearse``
  (backup, scratch copy, restore test, upgrade, downgrade, reports);
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
- ``refused_untouched``: a flipped byte is refused (exit 1) before the target is touched.
"""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
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
from pgsupport import Database, table_fingerprints, write_plan  # noqa: E402

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

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "migsafe", *args], capture_output=True, text=True,
                              env=self.full_env(), cwd=ROOT, timeout=timeout)

    def full_env(self) -> dict[str, str]:
        return {**os.environ, "MIGSAFE_RUNTIME_DIR": str(self.runtime_dir), **self.env}

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
    """Client processes migsafe started (scratch *servers* are daemons: ``scratch sweep`` stops them)."""
    found = processes_mentioning(str(lab.runtime_dir / "scratch-"), str(lab.runtime_dir / "restoretest-"),
                                 f"dbname={lab.source.name}", str(lab.work))
    return [p for p in found if not p.split(": ", 1)[1].split(" ", 1)[0].endswith("/postgres")]


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
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        t.check("exits_promptly", False)
    code = proc.returncode
    if sig == signal.SIGTERM and code == 0:
        # the backup finished before the signal (or the signal came after the work was done): its
        # backup must then be complete and verify, which killed_backup_incomplete checks
        t.notes.append("finished before the signal")
        code = 130
    _common_after_kill(lab, t, sig, code, before)
    _killed_backups_incomplete(lab, t, store)
    return t


def trial_rehearse(lab: Lab, rng: random.Random, phase: str, sig: signal.Signals, trial_seed: int) -> Trial:
    t = Trial(f"rehearse/{phase}/{sig.name}", trial_seed)
    proj = lab.work / f"proj-{trial_seed}"
    ini = write_project(proj, upgrade=["SELECT pg_sleep(0.4)"], downgrade=["SELECT pg_sleep(0.4)"])
    store = lab.work / f"store-{trial_seed}"
    store.mkdir()
    plan = write_plan(lab.work / f"plan-{trial_seed}.toml", lab.source, f"file://{store}",
                      extra=f'[migration]\nalembic_ini = "{ini}"\nurl_env = "DATABASE_URL"\n')
    before = source_state(lab.source)
    proc = lab.start("rehearse", "--plan", str(plan), "--report-dir", str(lab.work / f"report-{trial_seed}"))
    lines = _lines(proc)
    if not _wait_line(lines, PHASES[phase], 180):
        t.notes.append(f"phase {phase} never started (exit {proc.poll()})")
    time.sleep(rng.uniform(0.0, 0.4))
    proc.send_signal(sig)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        t.check("exits_promptly", False)
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


@dataclass
class Sealed:
    store: Path
    backup_id: str


def make_backup(lab: Lab) -> Sealed:
    store = lab.work / "flip-origin"
    store.mkdir(exist_ok=True)
    plan = write_plan(lab.work / "flip-plan.toml", lab.source, f"file://{store}")
    res = lab.cli("backup", "--plan", str(plan))
    assert res.returncode == 0, res.stderr
    return Sealed(store, res.stdout.strip().splitlines()[-1])


def trial_byteflip(lab: Lab, rng: random.Random, origin: Sealed, trial_seed: int) -> Trial:
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


def plan_trials(rng: random.Random, per_kind: int, flips: int,
                phases: int | None = None) -> Iterator[tuple[str, tuple[object, ...]]]:
    """The trials of a run, shuffled; ``phases`` rehearse phases per signal (all by default)."""
    kinds: list[tuple[str, tuple[object, ...]]] = []
    for sig in (signal.SIGKILL, signal.SIGTERM):
        kinds += [("backup", (sig,))] * per_kind
        chosen = list(PHASES) if phases is None else rng.sample(list(PHASES), phases)
        for phase in chosen:
            kinds += [("rehearse", (phase, sig))] * per_kind
    kinds += [("byteflip", ())] * flips
    rng.shuffle(kinds)
    yield from kinds


def run_trials(lab: Lab, seed_value: int, per_kind: int, flips: int, phases: int | None = None,
               say: Callable[[str], None] = print) -> list[Trial]:
    rng = random.Random(seed_value)  # noqa: S311 - seeded so that a run is reproduced
    say(f"chaos: seed {seed_value}, {per_kind} trial(s) per kill fault, {flips} byte flips")
    origin = make_backup(lab) if flips else None
    trials = []
    for kind, args in plan_trials(rng, per_kind, flips, phases):
        trial_seed = rng.randrange(1 << 30)
        sub = random.Random(trial_seed)  # noqa: S311 - seeded so that a trial is reproduced
        if kind == "backup":
            t = trial_backup(lab, sub, args[0], trial_seed)  # type: ignore[arg-type]
        elif kind == "rehearse":
            t = trial_rehearse(lab, sub, args[0], args[1], trial_seed)  # type: ignore[arg-type]
        else:
            assert origin is not None
            t = trial_byteflip(lab, sub, origin, trial_seed)
        trials.append(t)
        say(f"  {t.fault:<32} seed {trial_seed:<10} {'ok' if not t.broken else 'BROKEN ' + '; '.join(t.notes)}")
    return trials


def table(trials: list[Trial]) -> str:
    rows: dict[str, list[int]] = {}
    for t in trials:
        r = rows.setdefault(t.fault, [0, 0, 0])
        r[0] += 1
        r[1] += len(t.held)
        r[2] += len(t.broken)
    out = [f"{'fault':<34}{'trials':>7}{'invariants held':>17}{'broken':>8}"]
    for fault in sorted(rows):
        n, held, broken = rows[fault]
        out.append(f"{fault:<34}{n:>7}{held:>17}{broken:>8}")
    tot = [sum(r[i] for r in rows.values()) for i in range(3)]
    out.append(f"{'total':<34}{tot[0]:>7}{tot[1]:>17}{tot[2]:>8}")
    return "\n".join(out)
