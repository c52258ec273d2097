"""A source that hangs rather than dies: the stall watchdog.

A dead server closes its connections, and every read of migsafe's fails at once. A server that hangs
(its processes stopped, a VM frozen, a network partition that drops packets) closes nothing: libpq,
pg_dump, psql and pg_basebackup wait on a read with no deadline, and migsafe with them -- holding a
snapshot, locks or a walsender with its replication slot on production until somebody notices. TCP
keepalives (on every session, see :data:`migsafe.dsn.KEEPALIVES`) end a partitioned connection, but
a stopped server's kernel still answers them: only progress tells a hung server from a busy one.

Progress, precisely. A single stream may be silent for a long time and be healthy: pg_dump reads the
whole catalog before its first byte, a count-and-fingerprint scan of a large table returns one row at
its end, pg_basebackup waits for a checkpoint. So the watchdog does not time each stream: it keeps
one clock, the source's last *sign of life* -- a byte on any stream read from it, or an answer to its
heartbeat (``select 1`` on a session of its own, every few seconds; an error is an answer too: the
server is there). The source is **stalled** when that clock is older than ``stall_timeout``. A slow
store is not a stall either: the heartbeat still answers while the writers wait on it.

On a stall the watchdog cancels the operation the way an interrupt does: the callbacks registered
with :meth:`Watchdog.on_stall` stop the children's process groups, and the sockets of the sessions
registered with :meth:`Watchdog.session` are shut down, so a thread blocked in a query returns at once
with an error. The operation then raises :class:`~migsafe.exceptions.SourceStalled` (exit 3), having
removed what it wrote. When the server runs again, each of its backends finds its client gone and
ends: no session, walsender or slot of migsafe's stays.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

from .dsn import KEEPALIVES, Dsn
from .exceptions import SourceStalled

DEFAULT_STALL_TIMEOUT = 120.0  # seconds; the plan's source.stall_timeout_seconds, --stall-timeout


def shutdown_socket(conn: psycopg.Connection[Any]) -> None:
    """Shut a session's socket down (both ways) under whoever is blocked reading it.

    The blocked read returns at once (end of stream), libpq reports the connection lost, and psycopg
    raises OperationalError in that thread. The fd stays open: its owner closes the connection.
    """
    with contextlib.suppress(Exception):
        fd = conn.pgconn.socket
        with socket.socket(fileno=os.dup(fd)) as dup:
            dup.shutdown(socket.SHUT_RDWR)


class Watchdog:
    """Watches one source while an operation reads from it; see the module docstring.

    Use as a context manager. ``during`` names the operation in the message (``"the backup"``); it
    may be made more precise as the operation goes (``"the scratch copy (pg_basebackup)"``).
    """

    def __init__(self, dsn: Dsn, stall_timeout: float, during: str) -> None:
        self.dsn = dsn
        self.timeout = float(stall_timeout)
        self.during = during
        self.stalled: str | None = None  # the reason, once stalled
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._sessions: list[psycopg.Connection[Any]] = []
        self._beat_every = max(0.2, min(5.0, self.timeout / 6))
        self._threads: list[threading.Thread] = []

    # -- signs of life -------------------------------------------------------------------------
    def alive(self, _n: int = 0) -> None:
        """A sign of life from the source (a byte read from it, an answer); cheap enough per chunk."""
        self._last = time.monotonic()

    # -- what to cancel on a stall -------------------------------------------------------------
    @contextlib.contextmanager
    def on_stall(self, callback: Callable[[], None]) -> Iterator[None]:
        """Run ``callback`` (stop a child, cancel workers) if the source stalls while in this block."""
        with self._lock:
            self._callbacks.append(callback)
            fired = self.stalled is not None
        if fired:  # stalled just before: cancel this one too
            with contextlib.suppress(Exception):
                callback()
        try:
            yield
        finally:
            with self._lock:
                self._callbacks.remove(callback)

    @contextlib.contextmanager
    def session(self, conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
        """Shut ``conn``'s socket down if the source stalls while in this block.

        Leave this block before closing ``conn`` (``with connect(...) as c, watch.session(c):`` does),
        so its fd is never shut down once it could belong to another file.
        """
        with self._lock:
            self._sessions.append(conn)
            if self.stalled is not None:
                shutdown_socket(conn)
        try:
            yield conn
        finally:
            with self._lock:
                self._sessions.remove(conn)

    # -- the outcome -----------------------------------------------------------------------------
    def error(self, prefix: str = "") -> SourceStalled:
        return SourceStalled(prefix + (self.stalled or "the source stalled"))

    def check(self, prefix: str = "") -> None:
        """Raise SourceStalled if the source stalled (after the operation's own error, to name it)."""
        if self.stalled is not None:
            raise self.error(prefix)

    # -- threads ---------------------------------------------------------------------------------
    def __enter__(self) -> Watchdog:
        self._last = time.monotonic()
        for target, name in ((self._heartbeat, "migsafe-heartbeat"), (self._watch, "migsafe-watchdog")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        with self._lock:
            for conn in self._sessions:  # the heartbeat's, if it is blocked on a stalled source
                shutdown_socket(conn)
        for t in self._threads:
            t.join(timeout=1.0)  # daemons: one still in a connect attempt ends with its timeout

    def _watch(self) -> None:
        tick = min(1.0, self.timeout / 4)
        while not self._done.wait(tick):
            silent = time.monotonic() - self._last
            if silent > self.timeout:
                self._fire(silent)
                return

    def _fire(self, silent: float) -> None:
        where = f"{self.dsn.host}:{self.dsn.port}/{self.dsn.dbname}"
        with self._lock:
            self.stalled = (
                f"the source {where} stalled during {self.during}: nothing came from it, no byte and no "
                f"answer to a query, for {silent:.0f}s (stall timeout {self.timeout:g}s); migsafe stopped "
                "and left nothing running against it"
            )
            callbacks = list(self._callbacks)
        # the operation is cancelled first (its children stopped), and only then are the threads
        # blocked on the source released: a thread that wakes up finds the cancellation done
        for callback in callbacks:
            with contextlib.suppress(Exception):
                callback()
        with self._lock:  # the sessions still open now (a closed one has left the list: its fd is not ours)
            for conn in self._sessions:
                shutdown_socket(conn)

    def _heartbeat(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        session: dict[str, str] = {k: v for k, v in KEEPALIVES.items() if k not in self.dsn.params}
        session["application_name"] = "migsafe watchdog"
        session["connect_timeout"] = str(max(2, min(10, int(self.timeout))))
        conninfo = self.dsn.conninfo(with_password=True, **session)
        try:
            while not self._done.is_set() and self.stalled is None:
                try:
                    if conn is None:
                        conn = psycopg.connect(conninfo, autocommit=True)
                        with self._lock:
                            self._sessions.append(conn)
                    conn.execute("select 1")
                    self.alive()
                except psycopg.errors.ConnectionTimeout:
                    pass  # no answer at all: no sign of life
                except psycopg.Error:
                    self.alive()  # the server answered, if only with an error (too many clients, ...)
                    self._drop(conn)
                    conn = None
                    self._done.wait(self._beat_every)  # and do not hammer it
                self._done.wait(self._beat_every)
        finally:
            self._drop(conn)

    def _drop(self, conn: psycopg.Connection[Any] | None) -> None:
        if conn is None:
            return
        with self._lock:
            if conn in self._sessions:
                self._sessions.remove(conn)
        with contextlib.suppress(Exception):
            conn.close()


__all__ = ["DEFAULT_STALL_TIMEOUT", "Watchdog", "shutdown_socket"]
