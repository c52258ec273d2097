"""Runs inside the user's Python, in a subprocess: migsafe never imports the user's env.py itself.

Usage: python _alembic_driver.py probe|upgrade|downgrade INI REVISION
Input through the environment (never argv, so no password shows in the process list):
  MIGSAFE_ALEMBIC_URL   the scratch database URL, set as sqlalchemy.url
  MIGSAFE_LOCK_REPORT   a file to write, at each COMMIT, the relation locks the transaction holds
  MIGSAFE_PROBE_SOURCE  (probe) the source's current revision, MIGSAFE_PROBE_DOWN the downgrade target
  MIGSAFE_CAPTURE       a file to write, as JSON lines, every statement the migration executes (with its
                        timing and the locks it newly holds) and, after each revision, that revision's
                        time, locks and rewritten tables. ``offline`` writes the ``--sql`` text instead.
This file imports only alembic and sqlalchemy, so it works in the user's own virtual environment.
The capture is instrumentation: any error in it is recorded as a warning and the migration goes on,
unchanged (its statements, their order and their transaction are never touched).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback


def _config(ini: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config(ini)
    url = os.environ.get("MIGSAFE_ALEMBIC_URL")
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _install_lock_hook() -> None:
    path = os.environ.get("MIGSAFE_LOCK_REPORT")
    if not path:
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def before_commit(conn) -> None:  # type: ignore[no-untyped-def]
        # relation locks are held to the end of the transaction: at COMMIT they are all still here
        try:
            cur = conn.connection.dbapi_connection.cursor()
            cur.execute(
                "select n.nspname, c.relname, c.relkind, l.mode,"
                " extract(epoch from clock_timestamp() - xact_start)"
                " from pg_locks l join pg_class c on c.oid = l.relation"
                " join pg_namespace n on n.oid = c.relnamespace"
                " join pg_stat_activity a on a.pid = l.pid"
                " where l.pid = pg_backend_pid() and l.locktype = 'relation' and l.granted"
                " and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg_toast%'"
            )
            rows = cur.fetchall()
            cur.close()
        except Exception:
            return
        with open(path, "a") as fh:
            fh.write(
                json.dumps(
                    {
                        "at": time.time(),
                        "locks": [list(r[:4]) for r in rows],
                        "xact_seconds": float(rows[0][4]) if rows else 0.0,
                    }
                )
                + "\n"
            )

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
    """Records statements and per-revision figures into MIGSAFE_CAPTURE; never raises."""

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
        self.warned: set[str] = set()
        self.text: list[str] = []  # offline: the SQL alembic writes

    def emit(self, record: dict) -> None:
        with contextlib.suppress(Exception):  # instrumentation never aborts the migration
            self.fh.write(json.dumps(record, default=str) + "\n")

    def warn(self, where: str, exc: BaseException) -> None:
        if where not in self.warned:
            self.warned.add(where)
            self.emit(
                {"kind": "warning", "message": f"statement capture ({where}): {type(exc).__name__}: {exc}"}
            )

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
            except Exception:
                if status == 2:
                    cur.execute("ROLLBACK TO SAVEPOINT migsafe_capture")
                    cur.execute("RELEASE SAVEPOINT migsafe_capture")
                raise
            if status == 2:
                cur.execute("RELEASE SAVEPOINT migsafe_capture")
            return rows
        finally:
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
            try:
                conn.info["migsafe_t"] = time.time()
            except Exception as exc:
                self.warn("before_cursor_execute", exc)

    def after(self, conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if self.busy:
            return
        try:
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
                rec["locks"] = self.new_locks(cursor.connection)
            self.emit(rec)
        except Exception as exc:
            self.warn("after_cursor_execute", exc)

    def commit(self, conn) -> None:  # type: ignore[no-untyped-def]
        try:
            if not self.busy:
                self.emit({"kind": "commit", "at": time.time()})
            self.locks.clear()
            self.lock_since.clear()
        except Exception as exc:
            self.warn("commit", exc)

    # -- alembic --
    def begin(self, ctx) -> None:  # type: ignore[no-untyped-def]
        self.revision_started = time.time()
        if self.offline or ctx.connection is None:
            return
        try:
            self.nodes = dict(self._query(ctx.connection.connection.dbapi_connection, _NODES_SQL))
        except Exception as exc:
            self.warn("filenodes", exc)

    def applied(self, ctx, step, heads, run_args) -> None:  # type: ignore[no-untyped-def]
        try:
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
                try:
                    rec["locks"] = self.new_locks(dbapi)
                    nodes = dict(self._query(dbapi, _NODES_SQL))
                    if self.nodes is not None:
                        rec["rewrites"] = sorted(
                            r for r, n in nodes.items() if r in self.nodes and self.nodes[r] != n
                        )
                    self.nodes = nodes
                except Exception as exc:
                    self.warn("revision figures", exc)
            self.emit(rec)
            self.revision_started = time.time()
        except Exception as exc:
            self.warn("on_version_apply", exc)

    # -- offline: alembic writes the SQL to its output buffer --
    def write(self, text: str) -> int:
        self.text.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def _transaction_status(dbapi_conn) -> int | None:  # type: ignore[no-untyped-def]
    """libpq's PQtransactionStatus through psycopg 3 or psycopg2 (None when neither)."""
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
            try:
                cap.begin(self)
                self.on_version_apply_callbacks = (*tuple(self.on_version_apply_callbacks), cap.applied)
            except Exception as exc:
                cap.warn("run_migrations", exc)
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

    script = ScriptDirectory.from_config(_config(ini))
    source = os.environ.get("MIGSAFE_PROBE_SOURCE") or None
    upgrade_to = os.environ["MIGSAFE_PROBE_UP"]
    downgrade_to = os.environ["MIGSAFE_PROBE_DOWN"]
    out: dict = {"heads": list(script.get_heads()), "source": source}
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
    if dest != source:
        out["error"] = (
            f"downgrade_to {downgrade_to!r} leads to {dest or 'base'}, not to the source's revision "
            f"{source or 'base'}: the rehearsal must return to where the source is"
        )
    return out


def main() -> int:
    action, ini = sys.argv[1], sys.argv[2]
    if action == "probe":
        print(json.dumps(_probe(ini)))
        return 0
    from alembic import command

    offline = len(sys.argv) > 4 and sys.argv[4] == "--sql"
    cfg = _config(ini)
    if not offline:
        _install_lock_hook()
    _install_capture(cfg, offline)
    try:
        if action == "upgrade":
            command.upgrade(cfg, sys.argv[3], sql=offline)
        elif action == "downgrade":
            command.downgrade(cfg, sys.argv[3], sql=offline)
        else:
            print(f"unknown action {action}", file=sys.stderr)
            return 2
    except Exception as exc:
        cause = exc
        while getattr(cause, "orig", None) is not None:
            cause = cause.orig  # type: ignore[attr-defined]
        message = str(cause).strip().splitlines()
        traceback.print_exc(file=sys.stderr)
        print(
            "MIGSAFE-ERROR: "
            + json.dumps({"type": type(cause).__name__, "message": " ".join(message)[:2000]}),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
