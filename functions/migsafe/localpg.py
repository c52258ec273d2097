"""Throw-away local PostgreSQL clusters: the demo's source, the tests' servers, local scratch copies.

PostgreSQL refuses to run as root, so when we are root the cluster's files belong to the
``postgres`` user and every server command runs through ``runuser -u postgres --``.

Ownership, and why it is recorded twice. A cluster folder is named
``<purpose>-<owner pid>-<owner start time>-<random>``: the owner is written by the very ``mkdir``
that creates the folder, so no folder of ours ever exists without it, whatever kills us and when.
Inside, ``migsafe-cluster.json`` repeats the owner and adds the port. :func:`sweep` stops and removes
a cluster only when its owner is dead: the pid no longer exists, or it now belongs to another
process (its start time, in clock ticks since boot from ``/proc/<pid>/stat``, differs). A pid alone
is not enough: on a busy CI host pids are reused, and a sweep must never remove a live rehearsal's
cluster, least of all another user's. The runtime folder is ``$MIGSAFE_RUNTIME_DIR``, by default
``$TMPDIR/migsafe-clusters``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import pgtools
from .dsn import Dsn
from .exceptions import ScratchFailed
from .pgtools import tool, tool_env

MARKER = "migsafe-cluster.json"
DEFAULT_RUNTIME_DIR = Path(tempfile.gettempdir()) / "migsafe-clusters"
SERVER_USER = "postgres"


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", SERVER_USER, "--", *cmd]
    return cmd


def _chown_tree(path: Path) -> None:
    if os.geteuid() != 0:
        return
    pw = pwd.getpwnam(SERVER_USER)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str], what: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a server-side tool as the server user, stopped with its process group if we are interrupted."""
    as_user = SERVER_USER if os.geteuid() == 0 else None
    try:
        proc = pgtools.run(cmd, as_user=as_user, timeout=timeout, env=tool_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ScratchFailed(f"{what} failed: {exc}") from exc
    if proc.returncode != 0:
        raise ScratchFailed(f"{what} failed: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


@dataclass
class LocalCluster:
    """A PostgreSQL cluster in its own folder, on a free loopback port."""

    root: Path
    port: int
    purpose: str = "scratch"
    started: bool = field(default=False)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    @property
    def id(self) -> str:
        return self.root.name

    def dsn(self, dbname: str = "postgres", user: str = SERVER_USER) -> Dsn:
        return Dsn({"host": "127.0.0.1", "port": str(self.port), "user": user, "dbname": dbname})

    # -- lifecycle ------------------------------------------------------------------------------
    @classmethod
    def prepare(cls, purpose: str = "scratch", runtime_dir: Path | None = None) -> LocalCluster:
        """Make the folder and its marker (before any server exists, so a sweep can find it)."""
        runtime = runtime_dir or DEFAULT_RUNTIME_DIR
        runtime.mkdir(parents=True, exist_ok=True)
        os.chmod(runtime, 0o755)
        # the owner is in the name: the folder never exists without it (see the module docstring)
        owner_pid, owner_start = os.getpid(), process_start(os.getpid())
        root = Path(tempfile.mkdtemp(prefix=f"{purpose}-{owner_pid}-{owner_start}-", dir=runtime))
        os.chmod(root, 0o755)
        cluster = cls(root=root, port=free_port(), purpose=purpose)
        cluster.socket_dir.mkdir()
        cluster._write_marker()
        _chown_tree(root)
        return cluster

    def _write_marker(self) -> None:
        marker = {
            "owner_pid": os.getpid(),
            "owner_start": process_start(os.getpid()),
            "port": self.port,
            "purpose": self.purpose,
            "created": time.time(),
        }
        tmp = self.root / f".{MARKER}.tmp"
        tmp.write_text(json.dumps(marker))
        os.replace(tmp, self.root / MARKER)  # whole or absent: a sweep never reads half a marker

    def initdb(self) -> None:
        _run(
            [
                tool("initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SERVER_USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            "initdb",
        )
        conf = self.data_dir / "postgresql.conf"
        with open(conf, "a") as fh:
            fh.write(
                "\n# migsafe throw-away cluster\nlisten_addresses = '127.0.0.1'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "wal_level = replica\nmax_wal_senders = 4\nshared_buffers = 128MB\n"
                "max_wal_size = 2GB\ncheckpoint_timeout = 30min\n"
            )

    def start(self, timeout: float = 60) -> None:
        # the port is set on the command line: a cluster copied by pg_basebackup reuses the conf
        for _attempt in range(3):
            proc = subprocess.run(
                _as_server_user(
                    [
                        tool("pg_ctl"),
                        "-D",
                        str(self.data_dir),
                        "-l",
                        str(self.log_file),
                        "-w",
                        "-t",
                        str(int(timeout)),
                        "-o",
                        f"-p {self.port} -k {self.socket_dir}",
                        "start",
                    ]
                ),
                capture_output=True,
                text=True,
                env=tool_env(),
            )
            if proc.returncode == 0:
                self.started = True
                return
            log = self.log_file.read_text(errors="replace")[-1500:] if self.log_file.exists() else ""
            if "Address already in use" in log or "could not bind" in log:
                self.port = free_port()
                self._write_marker()
                continue
            raise ScratchFailed(f"could not start PostgreSQL in {self.root}: {proc.stderr.strip()} {log}")
        raise ScratchFailed(f"could not find a free port for PostgreSQL in {self.root}")

    def stop(self, mode: str = "fast") -> None:
        if not (self.data_dir / "postmaster.pid").exists():
            self.started = False
            return
        subprocess.run(
            _as_server_user([tool("pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop"]),
            capture_output=True,
            text=True,
            env=tool_env(),
        )
        _kill_postmaster(self.data_dir)
        self.started = False

    def destroy(self) -> None:
        """Stop the server (immediately) and delete every file, the marker last; safe to call twice."""
        with contextlib.suppress(ScratchFailed, OSError):
            self.stop("immediate")
        _remove_cluster_dir(self.root)

    @classmethod
    def create(cls, purpose: str = "scratch", runtime_dir: Path | None = None) -> LocalCluster:
        cluster = cls.prepare(purpose, runtime_dir)
        try:
            cluster.initdb()
            cluster.start()
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def _kill_postmaster(data_dir: Path) -> None:
    pidfile = data_dir / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGQUIT)
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


def process_start(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name in (...) may hold spaces
    except (IndexError, ValueError):
        return None


def _alive(pid: int, start: int | None = None) -> bool:
    """True if ``pid`` runs and, when ``start`` is known, is still the same process (not a reused pid)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    if start is None:
        return True
    now = process_start(pid)
    return now is None or now == start  # no /proc (not Linux): trust the pid


_OWNED = re.compile(r"^[a-z]+-(?P<pid>\d+)-(?P<start>\d+|None)-[A-Za-z0-9_]+$")


def owner_of(root: Path) -> tuple[int, int | None] | None:
    """The (pid, start time) that owns a cluster folder: from its marker, else from its name."""
    try:
        marker = json.loads((root / MARKER).read_text())
        start = marker.get("owner_start")
        return int(marker["owner_pid"]), int(start) if start is not None else None
    except (OSError, ValueError, KeyError, TypeError):
        pass
    m = _OWNED.match(root.name)
    if m:
        return int(m.group("pid")), None if m.group("start") == "None" else int(m.group("start"))
    return None


def orphans(runtime_dir: Path | None = None) -> Iterator[Path]:
    """Cluster folders whose owner is dead (a folder of unknown owner is not ours: left alone)."""
    runtime = runtime_dir or DEFAULT_RUNTIME_DIR
    if not runtime.is_dir():
        return
    for root in sorted(runtime.iterdir()):
        if not root.is_dir() or root.is_symlink():
            continue
        owner = owner_of(root)
        if owner is None:
            continue
        if not _alive(*owner):
            yield root


def _remove_cluster_dir(root: Path) -> bool:
    """Delete a cluster folder with its marker last, so a folder that survives still names its owner."""
    for child in list(root.iterdir()) if root.is_dir() else []:
        if child.name == MARKER:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                child.unlink()
    with contextlib.suppress(OSError):
        if any(c.name != MARKER for c in root.iterdir()):
            return False  # something still writes there (a sweep finds it later)
        (root / MARKER).unlink(missing_ok=True)
        root.rmdir()
    return not root.exists()


def _kill_helpers(root: Path) -> None:
    """Kill processes still working on a dead run's cluster folder (an orphaned pg_basebackup, say)."""
    needle = str(root).encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def sweep(runtime_dir: Path | None = None) -> list[str]:
    """Stop and delete every cluster whose owning process is gone; return their ids."""
    removed = []
    for root in list(orphans(runtime_dir)):
        try:
            marker = json.loads((root / MARKER).read_text())
        except (OSError, ValueError):
            marker = {}
        cluster = LocalCluster(root=root, port=int(marker.get("port", 0)), purpose=marker.get("purpose", "?"))
        with contextlib.suppress(ScratchFailed, OSError):
            cluster.stop("immediate")  # the server first: a clean immediate stop
        _kill_helpers(root)  # then whatever else still works on the folder
        _remove_cluster_dir(root)
        removed.append(root.name)
    return removed
