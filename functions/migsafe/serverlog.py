"""Observation at the server, for migrations that run through the project's own command.

With ``[migration] command`` the migration runs in a process migsafe does not instrument, so there
is no in-process statement capture. The scratch server observes it instead:

- ``log_min_duration_statement = 0`` logs every statement when it ends, with its duration, and
  ``log_line_prefix = '%n [%p] {%a} '`` stamps each line with the epoch (ms), the backend pid and
  the application name (migsafe's own sessions are named ``migsafe ...`` and left out);
- a row trigger on ``alembic_version`` (in a schema of its own, ``migsafe_observe``) writes to the
  same log, in the migration's transaction, the revision it just recorded, the relation locks the
  transaction holds and the tables' relfilenodes. Its body cannot fail the migration (an
  ``EXCEPTION WHEN OTHERS`` block swallows any error of its own) and it writes no row.

Statements are attributed to the revision whose version update follows them. Locally the settings
are made with ``ALTER SYSTEM`` on the throw-away scratch (:class:`LocalFileLog`). RDS and Aurora fix
``log_line_prefix`` (``%t:%r:%u@%d:[%p]:``: seconds, no application name), so there the scratch's own
parameter group turns on ``csvlog`` instead, whose records carry the same fields in columns
(:mod:`migsafe.rdslog`). Both formats become the same :class:`LogEntry` records, read by one
:func:`interpret`. pg_locks sampling runs as in every mode.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import sql

from .dsn import Dsn
from .exceptions import ServerLogUnreadable  # noqa: F401 - re-exported: the ServerLog contract names it

PREFIX = "%n [%p] {%a} "
SETTINGS = {"log_min_duration_statement": "0", "log_line_prefix": PREFIX, "log_statement": "none"}
SCHEMA = "migsafe_observe"
MARK = "migsafe-revision "

_LINE = re.compile(r"^(\d{9,}\.\d+) \[(\d+)\] \{(.*?)\} ([A-Z]+):  (.*)$")
_DURATION = re.compile(r"^duration: ([\d.]+) ms  (?:statement|execute [^:]*): (.*)$", re.DOTALL)
_PARAM = re.compile(r"\$(\d+) = ('(?:[^']|'')*'|NULL)")
_CONTROL = re.compile(r"^\s*(begin|commit|rollback|savepoint|release|start transaction|end)\b", re.I)

_TRIGGER_FN = """
create or replace function migsafe_observe.revision() returns trigger language plpgsql as $body$
begin
  begin
    raise log 'migsafe-revision %', json_build_object(
      'op', tg_op,
      'new', case when tg_op <> 'DELETE' then new.version_num end,
      'old', case when tg_op <> 'INSERT' then old.version_num end,
      'xact_seconds', extract(epoch from clock_timestamp() - now()),
      'locks', (select coalesce(json_agg(json_build_array(n.nspname || '.' || c.relname, l.mode)), '[]')
                from pg_locks l join pg_class c on c.oid = l.relation
                join pg_namespace n on n.oid = c.relnamespace
                where l.pid = pg_backend_pid() and l.locktype = 'relation' and l.granted
                  and c.relkind in ('r', 'p', 'm')
                  and n.nspname not in ('pg_catalog', 'information_schema', 'migsafe_observe')
                  and n.nspname not like 'pg_toast%'),
      'nodes', (select coalesce(json_object_agg(n.nspname || '.' || c.relname, pg_relation_filenode(c.oid)), '{}')
                from pg_class c join pg_namespace n on n.oid = c.relnamespace
                where c.relkind in ('r', 'm')
                  and n.nspname not in ('pg_catalog', 'information_schema', 'migsafe_observe')
                  and n.nspname not like 'pg_toast%'));
  exception when others then
    null;  -- observation never fails the migration
  end;
  return null;
end
$body$
"""


@dataclass
class LogEntry:
    """One server log record, whatever the log's format: what :func:`interpret` reads."""

    epoch: float  # when it was logged (server clock, milliseconds)
    pid: int
    app: str  # application_name ('' when none)
    level: str  # LOG, DETAIL (stderr continuation records), ERROR, ...
    message: str
    detail: str = ""  # csvlog's detail column; a stderr DETAIL line is folded in here too


class ServerLog(Protocol):
    """Where the scratch server's statement log is read (``migration.command`` mode)."""

    def enable(self) -> list[str]:
        """Make sure statements are logged and the version trigger is in place; warnings, if any.
        Raises :class:`ServerLogUnreadable` (or ``psycopg.Error``) when the log cannot serve."""
        ...

    def mark(self) -> Any:
        """A position before a phase starts (what :meth:`read` reads from)."""
        ...

    def read(self, mark: Any) -> Observed:
        """What was logged since ``mark``, by sessions that are not migsafe's."""
        ...


@dataclass
class LoggedStatement:
    epoch: float  # when it started (server clock)
    seconds: float
    sql: str
    pid: int


@dataclass
class RevisionMark:
    epoch: float
    pid: int
    revision: str  # the revision applied (upgrade) or undone (downgrade)
    locks: dict[str, str]
    nodes: dict[str, int]
    xact_seconds: float


@dataclass
class Observed:
    statements: list[LoggedStatement] = field(default_factory=list)
    marks: list[RevisionMark] = field(default_factory=list)
    events: list[LoggedStatement | RevisionMark] = field(default_factory=list)  # in the log's order


def enable(dsn: Dsn, timeout: float = 10) -> list[str]:
    """Turn on statement logging and the version trigger on a scratch we own; the warnings, if any."""
    warnings: list[str] = []
    with psycopg.connect(dsn.conninfo(), autocommit=True, application_name="migsafe serverlog") as conn:
        for name, value in SETTINGS.items():
            conn.execute(sql.SQL("alter system set {} = {}").format(sql.Identifier(name), sql.Literal(value)))
        conn.execute("select pg_reload_conf()")
        try:
            install_trigger(conn)
        except psycopg.Error as exc:
            warnings.append(f"server observation: no per-revision locks ({str(exc).strip()})")
    deadline = time.monotonic() + timeout
    while True:  # the reload is asynchronous: new sessions see it once the postmaster has read it
        with psycopg.connect(dsn.conninfo(), application_name="migsafe serverlog") as conn:
            row = conn.execute("show log_line_prefix").fetchone()
        if row and row[0] == PREFIX:
            return warnings
        if time.monotonic() > deadline:
            raise psycopg.OperationalError("the scratch did not take the logging settings")
        time.sleep(0.05)


def install_trigger(conn: psycopg.Connection[Any]) -> bool:
    """The row trigger on ``alembic_version`` (False when the table does not exist yet)."""
    row = conn.execute(
        "select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where c.oid = to_regclass('alembic_version')"
    ).fetchone()
    if row is None:
        return False
    with conn.transaction():
        conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(SCHEMA)))
        conn.execute(_TRIGGER_FN.encode())
        conn.execute(
            sql.SQL(
                "create or replace trigger migsafe_observe after insert or update or delete on {} "
                "for each row execute function {}.revision()"
            ).format(sql.Identifier(row[0], row[1]), sql.Identifier(SCHEMA))
        )
    return True


_NODES_SQL = """
select n.nspname || '.' || c.relname, pg_relation_filenode(c.oid) from pg_class c
join pg_namespace n on n.oid = c.relnamespace where c.relkind in ('r', 'm')
  and n.nspname not in ('pg_catalog', 'information_schema', 'migsafe_observe')
  and n.nspname not like 'pg_toast%'
"""


def filenodes(dsn: Dsn) -> dict[str, int]:
    """Every table's relfilenode now (the first revision's rewrites are against these)."""
    with psycopg.connect(dsn.conninfo(), autocommit=True, application_name="migsafe serverlog") as conn:
        return {r: int(n) for r, n in conn.execute(_NODES_SQL).fetchall() if n is not None}


def size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def read(path: Path, offset: int) -> Observed:
    """The statements and revision marks logged since ``offset`` by sessions that are not migsafe's."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        text = fh.read().decode("utf-8", "replace")
    return interpret(entries_from_stderr(text))


def entries_from_stderr(text: str) -> list[LogEntry]:
    """Records of a stderr log written with :data:`PREFIX` (continuation lines folded in)."""
    entries: list[LogEntry] = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            entry = LogEntry(epoch=float(m[1]), pid=int(m[2]), app=m[3], level=m[4], message=m[5])
            last = entries[-1] if entries else None
            if entry.level == "DETAIL" and last is not None and last.pid == entry.pid and not last.detail:
                last.detail = entry.message  # csvlog carries it in the record itself
                continue
            entries.append(entry)
        elif entries and line.startswith("\t"):  # a continuation line of a multi-line message
            last = entries[-1]
            if last.detail:
                last.detail += "\n" + line[1:]
            else:
                last.message += "\n" + line[1:]
    return entries


def interpret(entries: list[LogEntry]) -> Observed:
    """The statements and revision marks among ``entries`` (in the log's order), leaving out
    migsafe's own sessions and transaction control; bound parameters filled in from the detail."""
    out = Observed()
    for e in entries:
        if e.app.startswith("migsafe") or e.level != "LOG":
            continue
        if e.message.startswith(MARK):
            mark = _mark(e.epoch, e.pid, e.message.removeprefix(MARK))
            if mark is not None:
                out.marks.append(mark)
                out.events.append(mark)
            continue
        d = _DURATION.match(e.message)
        if d is None:
            continue
        seconds = float(d[1]) / 1000
        stmt = LoggedStatement(epoch=e.epoch - seconds, seconds=seconds, sql=d[2].strip(), pid=e.pid)
        if e.detail.startswith("parameters: "):
            stmt.sql = _bind(stmt.sql, {int(k): v for k, v in _PARAM.findall(e.detail)})
        if not _CONTROL.match(stmt.sql):
            out.statements.append(stmt)
            out.events.append(stmt)
    return out


class LocalFileLog:
    """The local scratch's stderr log file: settings by ``ALTER SYSTEM``, positions are byte offsets."""

    def __init__(self, path: Path, admin: Dsn) -> None:
        self.path, self.admin = path, admin

    def enable(self) -> list[str]:
        return enable(self.admin)

    def mark(self) -> int:
        return size(self.path)

    def read(self, mark: Any) -> Observed:
        return read(self.path, int(mark))


def _bind(text: str, params: dict[int, str]) -> str:
    """``$n`` replaced by the literal the DETAIL line gives (what the statement ran with)."""

    def one(m: re.Match[str]) -> str:
        return params.get(int(m[1]), m[0])

    return re.sub(r"\$(\d+)\b", one, text)


def _mark(epoch: float, pid: int, payload: str) -> RevisionMark | None:
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    revision = data.get("new") if data.get("op") == "INSERT" else data.get("old")
    if data.get("op") == "UPDATE":
        revision = None  # decided by the phase: the new one on upgrade, the old one on downgrade
    locks: dict[str, str] = {}
    for rel, mode in data.get("locks") or []:
        locks[rel] = mode if rel not in locks else _stronger(locks[rel], mode)
    return RevisionMark(
        epoch=epoch,
        pid=pid,
        revision=revision or json.dumps([data.get("old"), data.get("new")]),
        locks=locks,
        nodes={k: int(v) for k, v in (data.get("nodes") or {}).items() if v is not None},
        xact_seconds=float(data.get("xact_seconds") or 0.0),
    )


def revision_of(mark: RevisionMark, upgrade: bool) -> str:
    """The revision a mark stands for: applied on upgrade (the new one), undone on downgrade (the old)."""
    if mark.revision.startswith("["):
        old, new = json.loads(mark.revision)
        return str(new if upgrade else old)
    return mark.revision


def _stronger(a: str, b: str) -> str:
    from .migrate import LOCK_STRENGTH

    return a if LOCK_STRENGTH.index(a) >= LOCK_STRENGTH.index(b) else b
