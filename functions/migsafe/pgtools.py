"""The PostgreSQL client binaries, located once.

Debian's ``/usr/bin/pg_dump`` is a Perl wrapper that costs ~75 ms a call and may pick another major
version; we call the real binaries in ``pg_config --bindir`` (or ``MIGSAFE_PG_BINDIR`` through
settings), and fall back to ``PATH``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from .exceptions import ToolMissing


@functools.cache
def bindir(preferred: str | None = None) -> Path | None:
    if preferred:
        return Path(preferred)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
            path = Path(out.stdout.strip())
            if path.is_dir():
                return path
        except (OSError, subprocess.CalledProcessError):
            pass
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        return candidate
    return None


def tool(name: str, preferred_bindir: str | None = None) -> str:
    """Absolute path of a PostgreSQL binary (``pg_dump``, ``pg_restore``, ``initdb``, ...)."""
    directory = bindir(preferred_bindir)
    if directory and (directory / name).exists():
        return str(directory / name)
    found = shutil.which(name)
    if found:
        return found
    raise ToolMissing(
        f"{name} not found: install the PostgreSQL client tools (searched {directory} and PATH)"
    )


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a libpq tool: ours, minus any inherited PG* connection settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(extra or {})
    return env


# --- child processes ----------------------------------------------------------------------------
# Every program migsafe starts (pg_basebackup, pg_dump, pg_restore, psql, alembic) runs in a process
# group of its own, so that one signal reaches it and whatever it forked, and so that a Ctrl-C typed
# at migsafe reaches migsafe alone, which then stops its children in order. On Linux each child also
# gets a parent-death signal (``setpriv --pdeathsig``): if migsafe itself is SIGKILLed, the kernel
# kills the child, so no pg_basebackup keeps a walsender and a replication slot on the source.

_live: set[subprocess.Popen[Any]] = set()
_live_lock = threading.Lock()
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL


@functools.cache
def _setpriv() -> str | None:
    return shutil.which("setpriv")


# The guard: a shell that leads the child's process group, runs the tool, and on SIGTERM (ours, or the
# kernel's parent-death signal when migsafe is SIGKILLed) kills the whole group -- the tool and what it
# forked: pg_basebackup's WAL streamer is a forked child that a signal to pg_basebackup alone misses.
# stdin is handed over through fd 3 (a background job would get /dev/null); the exit status is the tool's.
_GUARD = 'trap "kill -KILL 0" TERM INT HUP; exec 3<&0; "$@" <&3 3<&- & exec 3<&-; wait $!; exit $?'


def guarded(argv: list[str], *, as_user: str | None = None) -> list[str]:
    """``argv`` wrapped so the child and its descendants die with us (run as ``as_user`` when given)."""
    sp = _setpriv()
    if sp is None:  # no util-linux (a slim container): the process group still lets us stop it
        return ["runuser", "-u", as_user, "--", *argv] if as_user else list(argv)
    prefix = [sp, "--pdeathsig=TERM"]
    if as_user:
        prefix += [f"--reuid={as_user}", f"--regid={as_user}", "--init-groups"]
    return [*prefix, "--", "/bin/sh", "-c", _GUARD, "migsafe-guard", *argv]


class GroupProcess(subprocess.Popen[Any]):
    """A child leading its own process group: ``kill()``/``terminate()`` signal the whole group."""

    def send_signal(self, sig: int) -> None:
        self.poll()
        if self.returncode is None:
            _signal_group(self.pid, sig)


def spawn(argv: list[str], *, as_user: str | None = None, **popen: Any) -> subprocess.Popen[Any]:
    """Start ``argv`` in a new process group, registered so :func:`stop_all` can reach it."""
    proc: subprocess.Popen[Any] = GroupProcess(guarded(argv, as_user=as_user), start_new_session=True, **popen)
    with _live_lock:
        _live.add(proc)
    return proc


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop(proc: subprocess.Popen[Any], grace: float = STOP_GRACE) -> None:
    """Stop a spawned child and everything in its process group, and wait for it (idempotent)."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
    # the leader is gone; a child it forked (pg_basebackup's WAL streamer) may not be
    _signal_group(proc.pid, signal.SIGKILL)
    with _live_lock:
        _live.discard(proc)


def release(proc: subprocess.Popen[Any]) -> None:
    """Forget a child that exited by itself (after making sure nothing of its group is left)."""
    if proc.poll() is None:
        stop(proc)
        return
    _signal_group(proc.pid, signal.SIGKILL)
    with _live_lock:
        _live.discard(proc)


def stop_all() -> int:
    """Stop every child still running (the interrupt path); returns how many there were."""
    with _live_lock:
        procs = list(_live)
    for p in procs:
        _signal_group(p.pid, signal.SIGTERM)
    for p in procs:
        stop(p)
    return len(procs)


def run(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    as_user: str | None = None,
    input: str | None = None,
    cwd: Path | str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` (text, captured output) with the child stopped and waited on any exception."""
    proc = spawn(
        argv,
        as_user=as_user,
        env=env,
        cwd=cwd,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except BaseException:
        stop(proc)
        raise
    release(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
