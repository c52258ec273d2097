"""Observation on an RDS or Aurora scratch: its csvlog, read through the RDS API.

RDS and Aurora PostgreSQL fix ``log_line_prefix`` at ``%t:%r:%u@%d:[%p]:`` (a timestamp in whole
seconds, no application name): the stderr log cannot carry what :mod:`migsafe.serverlog` needs. The
scratch's own parameter group (the state machine makes it, docs/deploy.md) sets
``log_destination = csvlog`` and ``log_min_duration_statement = 0`` instead: RDS then also writes
``postgresql.log.<hour>.csv`` files whose records have the millisecond ``log_time``, the
``process_id``, the ``application_name``, the ``message`` and its ``detail`` in columns. They become
the same :class:`~migsafe.serverlog.LogEntry` records as the local stderr log, read by the same
:func:`~migsafe.serverlog.interpret`.

A phase's records are the ones between two *fences*: a ``LOG`` line ``migsafe-fence <token>`` that a
migsafe session writes before the phase starts and after it ends. Every statement the migration ran
was logged before it returned, so once the second fence can be downloaded the phase is complete,
whatever delay RDS has in making the file readable, and whatever else the hour's file holds.
``DescribeDBLogFiles`` lists the csv files written since the phase began; ``DownloadDBLogFilePortion``
pages through each from where the last read stopped (``Marker``, ``AdditionalDataPending``).

Anything that stops this (the parameter group not applied, the API denied, the fence never showing)
raises :class:`~migsafe.exceptions.ServerLogUnreadable`: the rehearsal carries on with pg_locks
sampling only and says why.
"""

from __future__ import annotations

import csv
import io
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import psycopg
from psycopg import sql

from . import serverlog
from .dsn import Dsn, mask
from .exceptions import ServerLogUnreadable

CSV = ".csv"
FENCE = "migsafe-fence "
APPLICATION_NAME = "migsafe serverlog"
# what the scratch's parameter group sets (infra/workflows.py names the same two)
SETTINGS = {"log_destination": "csvlog", "log_min_duration_statement": "0"}
# csvlog's columns (PostgreSQL 15, "Using CSV-Format Log Output"); these positions hold since 9.0
LOG_TIME, PROCESS_ID, ERROR_SEVERITY, MESSAGE, DETAIL, APP = 0, 3, 11, 13, 14, 22
MAX_PORTIONS = 10_000  # per file and read: a bound, never a loop on a marker that does not move


def parse_log_time(text: str, zone: tzinfo | None = None) -> float:
    """Epoch seconds of a csvlog ``log_time`` (``2026-12-02 07:01:02.123 UTC``): in the abbreviation's
    zone when it is UTC/GMT or numeric (``+03``, ``-0330``), else in ``zone`` (the server's
    ``log_timezone``; UTC, RDS's default, when unknown)."""
    stamp, _, abbrev = text.strip().rpartition(" ")
    naive = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f")
    tz: tzinfo
    if abbrev in ("UTC", "GMT", "Z"):
        tz = UTC
    elif abbrev[:1] in "+-" and abbrev[1:].replace(":", "").isdigit():
        digits = abbrev[1:].replace(":", "")
        minutes = int(digits[:2]) * 60 + (int(digits[2:4]) if len(digits) >= 4 else 0)
        tz = timezone((-1 if abbrev[0] == "-" else 1) * timedelta(minutes=minutes))
    else:
        tz = zone or UTC
    return naive.replace(tzinfo=tz).timestamp()


def entries_from_csv(text: str, zone: tzinfo | None = None) -> list[serverlog.LogEntry]:
    """The records of csvlog output, in order; a record cut short (a file still being written) is left out."""
    out: list[serverlog.LogEntry] = []
    for row in csv.reader(io.StringIO(text)):
        if len(row) <= APP:
            continue
        try:
            out.append(serverlog.LogEntry(epoch=parse_log_time(row[LOG_TIME], zone), pid=int(row[PROCESS_ID] or 0),
                                          app=row[APP], level=row[ERROR_SEVERITY], message=row[MESSAGE],
                                          detail=row[DETAIL]))
        except ValueError:
            continue
    return out


def _zone(name: str) -> tzinfo | None:
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(name)
    except Exception:  # no tz database here, or a POSIX-style name: the abbreviations decide
        return None


class RdsCsvLog:
    """The scratch instance's csvlog through ``DescribeDBLogFiles`` / ``DownloadDBLogFilePortion``."""

    def __init__(self, instance_id: str, rds: Any, admin: Dsn, *, wait_seconds: float = 120,
                 poll_seconds: float = 2, lines: int = 2000) -> None:
        self.instance_id, self.rds, self.admin = instance_id, rds, admin
        self.wait_seconds, self.poll_seconds, self.lines = wait_seconds, poll_seconds, lines
        self.zone: tzinfo | None = None
        self._files: dict[str, tuple[str, list[str]]] = {}  # name -> (marker, text downloaded so far)

    # --- the ServerLog contract ---------------------------------------------------------------
    def enable(self) -> list[str]:
        """Check the parameter group took effect, install the version trigger, prove the log is readable."""
        warnings: list[str] = []
        with psycopg.connect(self.admin.conninfo(), autocommit=True, application_name=APPLICATION_NAME,
                             connect_timeout=30) as conn:
            found = {name: str((conn.execute(sql.SQL("show {}").format(sql.Identifier(name))).fetchone() or [""])[0])
                     for name in (*SETTINGS, "log_timezone")}
            destinations = [d.strip() for d in found["log_destination"].split(",")]
            if "csvlog" not in destinations:
                raise ServerLogUnreadable(f"the scratch logs to {found['log_destination']!r}, not csvlog: its parameter "
                                          "group (log_destination = csvlog) was not applied")
            if found["log_min_duration_statement"] not in ("0", "0ms"):
                raise ServerLogUnreadable(f"the scratch's log_min_duration_statement is "
                                          f"{found['log_min_duration_statement']}, not 0: statements are not all logged")
            self.zone = _zone(found["log_timezone"])
            try:
                serverlog.install_trigger(conn)
            except psycopg.Error as exc:
                warnings.append(f"server observation: no per-revision locks ({str(exc).strip()})")
        since = time.time()
        self._wait_for(self._fence(), since)  # the files can be listed and downloaded, and the fence shows
        return warnings

    def mark(self) -> tuple[str, float]:
        since = time.time()
        return self._fence(), since

    def read(self, mark: Any) -> serverlog.Observed:
        start, since = mark
        end = self._fence()
        entries = self._wait_for(end, since)
        tokens = [FENCE + start, FENCE + end]
        at = [next((i for i, e in enumerate(entries) if e.message == t), -1) for t in tokens]
        if at[0] < 0:
            raise ServerLogUnreadable("the phase's start is not in the scratch's csv log files (rotated away?)")
        return serverlog.interpret(entries[at[0] + 1: at[1]])

    # --- fences and files ---------------------------------------------------------------------
    def _fence(self) -> str:
        """Write ``migsafe-fence <token>`` to the server log from a migsafe session; the token."""
        token = uuid.uuid4().hex
        try:
            with psycopg.connect(self.admin.conninfo(), autocommit=True, application_name=APPLICATION_NAME,
                                 connect_timeout=30) as conn:
                body = sql.SQL("begin raise log {}; end").format(sql.Literal(FENCE + token)).as_string(conn)
                conn.execute(sql.SQL("do {}").format(sql.Literal(body)))
        except psycopg.Error as exc:
            raise ServerLogUnreadable(f"cannot mark the scratch's log: {mask(str(exc)).strip()}") from exc
        return token

    def _wait_for(self, token: str, since: float) -> list[serverlog.LogEntry]:
        """Every record of the csv files written since ``since``, once the fence ``token`` is among them."""
        from botocore.exceptions import BotoCoreError, ClientError

        deadline = time.monotonic() + self.wait_seconds
        while True:
            try:
                names = self._csv_files(since)
                entries = [e for name in names for e in entries_from_csv(self._download(name), self.zone)]
            except (ClientError, BotoCoreError) as exc:
                code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else type(exc).__name__
                raise ServerLogUnreadable(f"cannot read the scratch {self.instance_id}'s log files ({code}): "
                                          f"{mask(str(exc))}") from exc
            if any(e.message == FENCE + token and e.app == APPLICATION_NAME for e in entries):
                return entries
            if time.monotonic() > deadline:
                raise ServerLogUnreadable(
                    f"the scratch {self.instance_id}'s csv log did not show migsafe's mark within "
                    f"{self.wait_seconds:.0f} s ({len(names)} csv file(s) written since the phase began)")
            time.sleep(self.poll_seconds)

    def _csv_files(self, since: float) -> list[str]:
        """The csv log files written since ``since`` (a margin for the two clocks), oldest first."""
        after = int((since - 300) * 1000)
        names: list[str] = []
        kwargs: dict[str, Any] = {"DBInstanceIdentifier": self.instance_id, "FilenameContains": CSV,
                                  "FileLastWritten": after}
        while True:
            page = self.rds.describe_db_log_files(**kwargs)
            names += [f["LogFileName"] for f in page.get("DescribeDBLogFiles", [])
                      if str(f.get("LogFileName", "")).endswith(CSV)]
            if not page.get("Marker"):
                return sorted(set(names))  # postgresql.log.<Y-m-d-H[M]>.csv: the name orders them
            kwargs["Marker"] = page["Marker"]

    def _download(self, name: str) -> str:
        """The file's text so far: what earlier reads downloaded, then the rest from their marker."""
        marker, chunks = self._files.get(name, ("0", []))
        for _ in range(MAX_PORTIONS):
            portion = self.rds.download_db_log_file_portion(DBInstanceIdentifier=self.instance_id, LogFileName=name,
                                                            Marker=marker, NumberOfLines=self.lines)
            chunks.append(portion.get("LogFileData") or "")
            marker = portion.get("Marker") or marker
            if not portion.get("AdditionalDataPending"):
                break
        else:
            raise ServerLogUnreadable(f"{name}: more than {MAX_PORTIONS} portions of {self.lines} lines")
        self._files[name] = (marker, chunks)
        return "".join(chunks)
