"""Runs inside the user's Python, in a subprocess: migsafe never imports the user's env.py itself.

Usage: python _alembic_driver.py probe|upgrade|downgrade INI REVISION
Input through the environment (never argv, so no password shows in the process list):
  MIGSAFE_ALEMBIC_URL   the scratch database URL, set as sqlalchemy.url
  MIGSAFE_LOCK_REPORT   a file to write, at each COMMIT, the relation locks the transaction holds
  MIGSAFE_PROBE_SOURCE  (probe) the source's current revision, MIGSAFE_PROBE_DOWN the downgrade target
This file imports only alembic and sqlalchemy, so it works in the user's own virtual environment.
"""

from __future__ import annotations

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

    _install_lock_hook()
    cfg = _config(ini)
    try:
        if action == "upgrade":
            command.upgrade(cfg, sys.argv[3])
        elif action == "downgrade":
            command.downgrade(cfg, sys.argv[3])
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
