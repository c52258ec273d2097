"""Throw-away local PostgreSQL clusters: the demo's source, the tests' servers, local scratch copies.

PostgreSQL refuses to run as root, so when we are root the cluster's files belong to the
``postgres`` user and every server command runs through ``runuser -u postgres --``. Each cluster
folder holds ``migsafe-cluster.json`` naming the process that owns it; :func:`sweep` stops and
removes clusters whose owner died (a SIGKILLed rehearsal leaves no server behind for long).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

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
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=tool_env())
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
        root = Path(tempfile.mkdtemp(prefix=f"{purpose}-", dir=runtime))
        os.chmod(root, 0o755)
        cluster = cls(root=root, port=free_port(), purpose=purpose)
        cluster.socket_dir.mkdir()
        cluster._write_marker()
        _chown_tree(root)
        return cluster

    def _write_marker(self) -> None:
        marker = {
            "owner_pid": os.getpid(),
            "port": self.port,
            "purpose": self.purpose,
            "created": time.time(),
        }
        (self.root / MARKER).write_text(json.dumps(marker))

    def initdb(self) -> None:
        _run(
            _as_server_user(
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
                ]
            ),
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
        """Stop the server (immediately) and delete every file; safe to call twice."""
        with contextlib.suppress(ScratchFailed, OSError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def orphans(runtime_dir: Path | None = None) -> Iterator[Path]:
    runtime = runtime_dir or DEFAULT_RUNTIME_DIR
    if not runtime.is_dir():
        return
    for marker in runtime.glob(f"*/{MARKER}"):
        try:
            owner = int(json.loads(marker.read_text())["owner_pid"])
        except (OSError, ValueError, KeyError):
            owner = -1
        if owner <= 0 or not _alive(owner):
            yield marker.parent


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
        marker = json.loads((root / MARKER).read_text()) if (root / MARKER).exists() else {}
        cluster = LocalCluster(root=root, port=int(marker.get("port", 0)), purpose=marker.get("purpose", "?"))
        cluster.destroy()  # the server first: a clean immediate stop
        _kill_helpers(root)  # then whatever else still works on the folder
        shutil.rmtree(root, ignore_errors=True)
        removed.append(root.name)
    return removed
