"""Runs inside the user's Python, in a subprocess: migsafe never imports the user's env.py itself.

Usage: python _alembic_driver.py probe|upgrade|downgrade INI REVISION
Input through the environment (never argv, so no password shows in the process list):
  MIGSAFE_ALEMBIC_URL   the scratch database URL, set as sqlalchemy.url
  MIGSAFE_CONFIG_FACTORY  ``package.module:function`` returning the alembic Config (INI is then ignored);
                        migsafe sets ``sqlalchemy.url`` on what it returns
  MIGSAFE_PROBE_ENV     (probe) also run env.py, read-only, as ``alembic current`` does: proves that the
                        driver imports, env.py runs and connects, before anything is backed up
  MIGSAFE_OBSERVER_FAULT  test-only: the observation hook of that name (or ``*``) raises
  MIGSAFE_LOCK_REPORT   a file to write, at each COMMIT, the relation locks the transaction holds
  MIGSAFE_PROBE_SOURCE  (probe) the source's current revision, MIGSAFE_PROBE_DOWN the downgrade target
  MIGSAFE_CAPTURE       a file to write, as JSON lines, every statement the migration executes (with its
                        timing and the locks it newly holds) and, after each revision, that revision's
                        time, locks and rewritten tables. ``offline`` writes the ``--sql`` text instead.
This file imports only alembic and sqlalchemy, so it works in the user's own virtual environment.
The capture is instrumentation: any error in it is recorded as a warning and the migration goes on,
unchanged and unobserved (its statements, their order and their transaction are never touched): every
hook runs through :meth:`_Capture.guard`, and the first error there turns all observation off.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import time
import traceback


def _config(ini: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    factory = os.environ.get("MIGSAFE_CONFIG_FACTORY")
    if factory:
        module, _, name = factory.partition(":")
        cfg = getattr(importlib.import_module(module), name)()
        if not isinstance(cfg, Config):
            raise TypeError(f"{factory} returned {type(cfg).__name__}, not an alembic Config")
    else:
        cfg = Config(ini)
    url = os.environ.get("MIGSAFE_ALEMBIC_URL")
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _jsonable(value: object) -> object:
    """json.dumps' fallback: asyncpg returns ``"char"`` columns (``relkind``) as bytes."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


_COMMIT_LOCKS_SQL = (
    "select n.nspname, c.relname, c.relkind::text, l.mode,"
    " extract(epoch from clock_timestamp() - a.xact_start)::float8"
    " from pg_locks l join pg_class c on c.oid = l.relation"
    " join pg_namespace n on n.oid = c.relnamespace"
    " join pg_stat_activity a on a.pid = l.pid"
    " where l.pid = pg_backend_pid() and l.locktype = 'relation' and l.granted"
    " and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg_toast%%'"
)


def _install_lock_hook(cap: _Capture | None) -> None:
    """At each COMMIT, every relation lock the transaction holds (they are all still held there)."""
    path = os.environ.get("MIGSAFE_LOCK_REPORT")
    if not path or cap is None:
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def observe(conn) -> None:  # type: ignore[no-untyped-def]
        rows = cap._query(conn.connection.dbapi_connection, _COMMIT_LOCKS_SQL)
        record = {
            "at": time.time(),
            "locks": [[_jsonable(v) if isinstance(v, bytes) else v for v in r[:4]] for r in rows],
            "xact_seconds": float(rows[0][4]) if rows and rows[0][4] is not None else 0.0,
        }
        with open(path, "a") as fh:
            fh.write(json.dumps(record, default=_jsonable) + "\n")

    def before_commit(conn) -> None:  # type: ignore[no-untyped-def]
        if not cap.busy:
            cap.guard("commit locks", observe, conn)

    event.listen(Engine, "commit", before_commit)


MAX_SQL = 20_000  # characters of one statement kept
MAX_LOCKED_STATEMENTS = 2_000  # statements whose new locks are looked up (each costs one query)

_LOCKS_SQL = (
    "select n.nspname || '.' || c.relname, l.mode from pg_locks l"
    " join pg_class c on c.oid = l.relation join pg_namespace n on n.oid = c.relnamespace"
    " where l.pid = pg_backend_pid() and l.locktype = 'relation' and l.granted"
    " and c.relkind in ('r', 'p', 'm')"
    " and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg_toast%%'"
)
_NODES_SQL = (
    "select n.nspname || '.' || c.relname, pg_relation_filenode(c.oid) from pg_class c"
    " join pg_namespace n on n.oid = c.relnamespace where c.relkind in ('r', 'm')"
    " and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg_toast%%'"
)
_STRENGTH = [
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
]


class _Capture:
    """Records statements and per-revision figures into MIGSAFE_CAPTURE; never raises.

    Every hook runs through :meth:`guard`: an error there (a bug of ours, a driver we do not know,
    a catalog query refused) is written down as a warning and turns observation off for the rest of
    the run, so the migration goes on exactly as it would without migsafe.
    """

    def __init__(self, path: str, offline: bool) -> None:
        self.path = path
        self.offline = offline
        self.fh = open(path, "a", buffering=1)  # noqa: SIM115 - open for the process's life
        self.revision_started = time.time()
        self.statements = 0
        self.locks: dict[str, str] = {}  # relation -> mode, held by this transaction so far
        self.lock_since: dict[str, float] = {}
        self.nodes: dict[str, int] | None = None
        self.busy = False  # our own queries are not the migration's
        self.active = True  # False after the first error in a hook: the rest runs unobserved
        self.warned: set[str] = set()
        self.text: list[str] = []  # offline: the SQL alembic writes
        self.fault = os.environ.get("MIGSAFE_OBSERVER_FAULT") or None

    def emit(self, record: dict) -> None:
        with contextlib.suppress(Exception):  # instrumentation never aborts the migration
            self.fh.write(json.dumps(record, default=_jsonable) + "\n")

    def warn(self, where: str, exc: BaseException) -> None:
        if where not in self.warned:
            self.warned.add(where)
            self.emit(
                {
                    "kind": "warning",
                    "message": f"migsafe's observation failed ({where}: {type(exc).__name__}: {exc}); "
                    "the migration ran on unobserved from there",
                }
            )

    def guard(self, where: str, fn, *args):  # type: ignore[no-untyped-def]
        """Run one observation hook; any error is a warning and stops observing (never raised)."""
        if not self.active:
            return None
        try:
            if self.fault in (where, "*"):
                raise RuntimeError(f"injected observer fault ({where})")
            return fn(*args)
        except Exception as exc:
            self.active = False
            self.busy = False
            self.warn(where, exc)
            return None

    def _query(self, dbapi_conn, sql: str) -> list:  # type: ignore[no-untyped-def]
        """Our catalog query on the migration's connection, never able to abort its transaction.

        Inside a transaction it runs in a savepoint (rolled back to on any error, released otherwise);
        outside one it is a statement of its own. With a connection whose state cannot be read, it
        does not run at all.
        """
        status = _transaction_status(dbapi_conn)
        if status not in (0, 2):  # 0 idle, 2 in transaction; 1 active, 3 failed, 4 unknown: keep out
            raise RuntimeError(f"connection state {status}: not queried")
        self.busy = True
        cur = dbapi_conn.cursor()
        try:
            if status == 2:
                cur.execute("SAVEPOINT migsafe_capture")
            try:
                cur.execute(sql)
                rows = list(cur.fetchall())
            except BaseException:
                if status == 2:
                    cur.execute("ROLLBACK TO SAVEPOINT migsafe_capture")
                    cur.execute("RELEASE SAVEPOINT migsafe_capture")
                raise
            if status == 2:
                cur.execute("RELEASE SAVEPOINT migsafe_capture")
            return rows
        finally:
            with contextlib.suppress(Exception):
                cur.close()
            self.busy = False

    def new_locks(self, dbapi_conn) -> dict[str, str]:  # type: ignore[no-untyped-def]
        """Locks this transaction holds now that it did not hold (or held weaker) before."""
        held: dict[str, str] = {}
        for rel, mode in self._query(dbapi_conn, _LOCKS_SQL):
            if rel not in held or _STRENGTH.index(mode) > _STRENGTH.index(held[rel]):
                held[rel] = mode
        new = {
            r: m
            for r, m in held.items()
            if r not in self.locks or _STRENGTH.index(m) > _STRENGTH.index(self.locks[r])
        }
        now = time.time()
        for r in new:
            self.lock_since.setdefault(r, now)
        self.locks.update(new)
        return new

    # -- SQLAlchemy events (online) --
    def before(self, conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if not self.busy:
            self.guard("before_cursor_execute", self._before, conn)

    def _before(self, conn) -> None:  # type: ignore[no-untyped-def]
        conn.info["migsafe_t"] = time.time()

    def after(self, conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if not self.busy:
            self.guard("after_cursor_execute", self._after, conn, cursor, statement, executemany)

    def _after(self, conn, cursor, statement, executemany) -> None:  # type: ignore[no-untyped-def]
        t = conn.info.pop("migsafe_t", time.time())
        end = time.time()
        self.statements += 1
        rec = {
            "kind": "statement",
            "sql": statement[:MAX_SQL],
            "at": t,
            "seconds": round(end - t, 6),
            "executemany": bool(executemany),
        }
        if self.statements <= MAX_LOCKED_STATEMENTS and not _is_query(statement):
            rec["locks"] = self.new_locks(conn.connection.dbapi_connection)
        self.emit(rec)

    def commit(self, conn) -> None:  # type: ignore[no-untyped-def]
        if not self.busy:
            self.guard("commit", self._commit)

    def _commit(self) -> None:
        self.emit({"kind": "commit", "at": time.time()})
        self.locks.clear()
        self.lock_since.clear()

    # -- alembic --
    def begin(self, ctx) -> None:  # type: ignore[no-untyped-def]
        self.guard("run_migrations", self._begin, ctx)

    def _begin(self, ctx) -> None:  # type: ignore[no-untyped-def]
        self.revision_started = time.time()
        if self.offline or ctx.connection is None:
            return
        self.nodes = dict(self._query(ctx.connection.connection.dbapi_connection, _NODES_SQL))

    def applied(self, ctx, step, heads, run_args) -> None:  # type: ignore[no-untyped-def]
        self.guard("on_version_apply", self._applied, ctx, step)

    def _applied(self, ctx, step) -> None:  # type: ignore[no-untyped-def]
        now = time.time()
        ids = list(getattr(step, "up_revision_ids", None) or [getattr(step, "up_revision_id", None)])
        rec: dict = {
            "kind": "revision",
            "revision": ",".join(str(i) for i in ids if i),
            "is_upgrade": bool(getattr(step, "is_upgrade", True)),
            "started": self.revision_started,
            "at": now,
            "seconds": round(now - self.revision_started, 6),
        }
        if self.offline:
            rec["sql"] = "".join(self.text)
            self.text.clear()
        elif ctx.connection is not None:
            dbapi = ctx.connection.connection.dbapi_connection
            rec["locks"] = self.new_locks(dbapi)
            nodes = dict(self._query(dbapi, _NODES_SQL))
            if self.nodes is not None:
                rec["rewrites"] = sorted(r for r, n in nodes.items() if r in self.nodes and self.nodes[r] != n)
            self.nodes = nodes
        self.emit(rec)
        self.revision_started = time.time()

    # -- offline: alembic writes the SQL to its output buffer --
    def write(self, text: str) -> int:
        self.text.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def _transaction_status(dbapi_conn) -> int | None:  # type: ignore[no-untyped-def]
    """libpq's PQtransactionStatus through psycopg 3, psycopg2 or asyncpg (None when none of them)."""
    raw = getattr(dbapi_conn, "_connection", None)  # SQLAlchemy's asyncpg adapter: the asyncpg one
    if raw is not None and hasattr(raw, "is_in_transaction"):
        return 2 if raw.is_in_transaction() else 0
    info = getattr(dbapi_conn, "info", None)
    if info is not None and hasattr(info, "transaction_status"):
        return int(info.transaction_status)
    getter = getattr(dbapi_conn, "get_transaction_status", None)
    return int(getter()) if getter else None


def _is_query(statement: str) -> bool:
    head = statement.lstrip().split(None, 1)[:1]
    return bool(head) and head[0].lower() in ("select", "show", "values")


def _install_capture(cfg, offline: bool) -> _Capture | None:  # type: ignore[no-untyped-def]
    path = os.environ.get("MIGSAFE_CAPTURE")
    if not path:
        return None
    try:
        cap = _Capture(path, offline)
    except Exception:
        return None
    try:
        from alembic.runtime.migration import MigrationContext

        original = MigrationContext.run_migrations

        def run_migrations(self, **kw):  # type: ignore[no-untyped-def]
            cap.begin(self)
            with contextlib.suppress(Exception):
                self.on_version_apply_callbacks = (*tuple(self.on_version_apply_callbacks), cap.applied)
            return original(self, **kw)

        MigrationContext.run_migrations = run_migrations  # type: ignore[method-assign]
        if offline:
            cfg.output_buffer = cap
        else:
            from sqlalchemy import event
            from sqlalchemy.engine import Engine

            event.listen(Engine, "before_cursor_execute", cap.before)
            event.listen(Engine, "after_cursor_execute", cap.after)
            event.listen(Engine, "commit", cap.commit)
    except Exception as exc:
        cap.warn("install", exc)
    return cap


def _probe(ini: str) -> dict:
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        cfg = _config(ini)
        script = ScriptDirectory.from_config(cfg)
        heads = list(script.get_heads())
    except Exception as exc:
        return {"env_error": _describe(exc), "where": "config"}
    source = os.environ.get("MIGSAFE_PROBE_SOURCE") or None
    upgrade_to = os.environ["MIGSAFE_PROBE_UP"]
    downgrade_to = os.environ["MIGSAFE_PROBE_DOWN"]
    out: dict = {"heads": heads, "source": source}
    if not heads:
        return {
            **out,
            "env_error": f"the script directory {script.dir} has no revisions at all "
            f"(version_locations: {', '.join(str(v) for v in getattr(script, 'version_locations', None) or []) or 'script_location/versions'})",
            "where": "config",
        }
    try:
        targets = script.get_revisions(upgrade_to)
    except (CommandError, KeyError, ValueError) as exc:
        return {**out, "error": f"upgrade_to {upgrade_to!r} is unknown to the script directory: {exc}"}
    if len(targets) != 1 or targets[0] is None:
        return {**out, "error": f"upgrade_to {upgrade_to!r} must name exactly one revision"}
    target = targets[0].revision
    out["upgrade_to"] = target
    if source is not None:
        try:
            script.get_revision(source)
        except (CommandError, KeyError, ValueError):
            return {**out, "error": f"the source's revision {source} is unknown to the script directory"}
    # the revisions the upgrade applies, newest first
    try:
        path = [r.revision for r in script.iterate_revisions(target, source or "base")]
    except (CommandError, KeyError, ValueError) as exc:
        return {**out, "error": f"cannot upgrade from {source or 'base'} to {target}: {exc}"}
    out["path"] = path
    if downgrade_to.startswith("-") and downgrade_to[1:].isdigit():
        rev = script.get_revision(target)
        for _ in range(int(downgrade_to[1:])):
            if rev is None:
                break
            down = rev.down_revision
            if isinstance(down, tuple):
                return {
                    **out,
                    "error": f"downgrade_to {downgrade_to}: {rev.revision} is a merge point; name a revision",
                }
            rev = script.get_revision(down) if isinstance(down, str) else None  # type: ignore[assignment]
        dest = rev.revision if rev else None
    elif downgrade_to == "base":
        dest = None
    else:
        try:
            found = script.get_revision(downgrade_to)
        except (CommandError, KeyError, ValueError) as exc:
            return {
                **out,
                "error": f"downgrade_to {downgrade_to!r} is unknown to the script directory: {exc}",
            }
        dest = found.revision if found else None
    out["downgrade_dest"] = dest
    if os.environ.get("MIGSAFE_PROBE_OFFLINE"):  # `migsafe lint`: no database, the range is the plan's
        try:
            out["path"] = [r.revision for r in script.iterate_revisions(target, dest or "base")]
        except (CommandError, KeyError, ValueError) as exc:
            return {**out, "error": f"cannot upgrade from {dest or 'base'} to {target}: {exc}"}
        return out
    if os.environ.get("MIGSAFE_PROBE_ENV"):
        problem = _run_env_read_only(cfg)
        if problem is not None:
            return {**out, "env_error": problem, "where": "env"}
    if dest != source:
        out["error"] = (
            f"downgrade_to {downgrade_to!r} leads to {dest or 'base'}, not to the source's revision "
            f"{source or 'base'}: the rehearsal must return to where the source is"
        )
    return out


def _describe(exc: BaseException) -> str:
    cause = exc
    while getattr(cause, "orig", None) is not None:
        cause = cause.orig  # type: ignore[attr-defined]
    text = " ".join(str(cause).strip().splitlines())[:500]
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def _run_env_read_only(cfg) -> str | None:  # type: ignore[no-untyped-def]
    """Run env.py online as ``alembic current`` does (it reads the version, never writes it).

    Every connection it opens is made read-only first, so env.py runs against the source unable to
    change it. The error, if any, as one line; None when env.py loaded, connected and finished.
    """
    from alembic import command
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    def read_only(dbapi_conn, record) -> None:  # type: ignore[no-untyped-def]
        cur = dbapi_conn.cursor()
        cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        cur.close()
        dbapi_conn.commit()

    event.listen(Pool, "connect", read_only)
    cfg.stdout = sys.stderr  # `current` prints; our stdout is the JSON answer
    try:
        with contextlib.redirect_stdout(sys.stderr):  # and so may env.py
            command.current(cfg)
    except (Exception, SystemExit) as exc:  # env.py may raise anything, SystemExit included
        traceback.print_exc(file=sys.stderr)
        return _describe(exc)
    finally:
        event.remove(Pool, "connect", read_only)
    return None


def main() -> int:
    action, ini = sys.argv[1], sys.argv[2]
    if action == "probe":
        print(json.dumps(_probe(ini)))
        return 0
    from alembic import command

    offline = len(sys.argv) > 4 and sys.argv[4] == "--sql"
    try:
        cfg = _config(ini)
    except Exception as exc:
        return _failed(exc)
    cap = _install_capture(cfg, offline)
    if not offline:
        try:
            _install_lock_hook(cap)
        except Exception as exc:
            if cap is not None:
                cap.warn("install commit locks", exc)
    try:
        if action == "upgrade":
            command.upgrade(cfg, sys.argv[3], sql=offline)
        elif action == "downgrade":
            command.downgrade(cfg, sys.argv[3], sql=offline)
        else:
            print(f"unknown action {action}", file=sys.stderr)
            return 2
    except Exception as exc:
        return _failed(exc)
    return 0


def _failed(exc: BaseException) -> int:
    """The migration's own error, on one marked line of stderr (its cause, not SQLAlchemy's wrapper)."""
    cause = exc
    while getattr(cause, "orig", None) is not None:
        cause = cause.orig  # type: ignore[attr-defined]
    message = str(cause).strip().splitlines()
    traceback.print_exc(file=sys.stderr)
    print(
        "MIGSAFE-ERROR: " + json.dumps({"type": type(cause).__name__, "message": " ".join(message)[:2000]}),
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
