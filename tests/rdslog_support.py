"""A local PostgreSQL that logs like an RDS scratch with migsafe's parameter group, and the two RDS
log calls served from its files at botocore's boundary.

- :func:`enable_csvlog` turns a throw-away cluster's logging into what the scratch parameter group
  asks of RDS (``log_destination = csvlog``, ``log_min_duration_statement = 0``), with RDS's
  collector settings (``logging_collector``, hourly ``postgresql.log.%Y-%m-%d-%H`` files) and restarts
  it: the records the tests read are PostgreSQL's own csvlog output, never hand-written lines.
- :func:`serve_log_files` answers ``DescribeDBLogFiles`` and ``DownloadDBLogFilePortion`` (which
  moto does not implement) with the RDS XML body, built from the files of the cluster behind the
  instance (``error/<file>`` names, ``LastWritten`` in ms, byte-offset markers, blocks of
  ``NumberOfLines`` lines), in a ``before-send`` handler: the code under test runs botocore's real
  request serialisation and response parsing.
- :func:`rds_error` answers one operation with an RDS error body (AccessDenied, ...).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

import boto3
import psycopg
from migsafe.localpg import LocalCluster

XMLNS = "http://rds.amazonaws.com/doc/2014-10-31/"
CSVLOG = {"logging_collector": "on", "log_destination": "csvlog", "log_directory": "log",
          "log_filename": "postgresql.log.%Y-%m-%d-%H", "log_rotation_age": "60", "log_min_duration_statement": "0"}


def enable_csvlog(cluster: LocalCluster, settings: dict[str, str] | None = None) -> None:
    """Log as the scratch parameter group makes RDS log (``settings`` overrides some), restarted."""
    with psycopg.connect(host=str(cluster.socket_dir), port=cluster.port, dbname="postgres", user="postgres",
                         autocommit=True) as conn:
        for name, value in {**CSVLOG, **(settings or {})}.items():
            conn.execute(psycopg.sql.SQL("alter system set {} = {}").format(
                psycopg.sql.Identifier(name), psycopg.sql.Literal(value)))
    cluster.stop()
    cluster.start()


def log_dir(cluster: LocalCluster) -> Path:
    return cluster.data_dir / "log"


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.data


def _answer(request: Any, status: int, body: str) -> Any:
    """The response; the request is then pointed nowhere, so moto's own handler (which botocore
    calls next, and which crashes on these operations) leaves it alone."""
    from botocore.awsrequest import AWSResponse

    response = AWSResponse(request.url, status, {"Content-Type": "text/xml"}, _Body(body.encode()))
    request.url = "https://answered-by-the-test.invalid/"
    return response


def _params(request: Any) -> dict[str, str]:
    body = request.body.decode() if isinstance(request.body, bytes) else str(request.body or "")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


def _envelope(operation: str, result: str) -> str:
    return (f'<{operation}Response xmlns="{XMLNS}"><{operation}Result>{result}</{operation}Result>'
            f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata></{operation}Response>")


def _not_found(request: Any, ident: str) -> Any:
    return _answer(request, 404, f'<ErrorResponse xmlns="{XMLNS}"><Error><Type>Sender</Type>'
                                 f"<Code>DBInstanceNotFound</Code><Message>DBInstance {escape(ident)} not found."
                                 f"</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>")


@contextlib.contextmanager
def serve_log_files(log_dir_of: Callable[[str], Path | None], calls: list[tuple[str, dict[str, str]]] | None = None,
                    ) -> Iterator[None]:
    """Serve the two RDS log calls from ``log_dir_of(instance id)`` (None: no such instance)."""

    def describe(request: Any, **_: Any) -> Any:
        params = _params(request)
        if calls is not None:
            calls.append(("DescribeDBLogFiles", params))
        ident = params.get("DBInstanceIdentifier", "")
        folder = log_dir_of(ident)
        if folder is None:
            return _not_found(request, ident)
        contains, since = params.get("FilenameContains", ""), int(params.get("FileLastWritten") or 0)
        rows = []
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            stat = path.stat()
            written = int(stat.st_mtime * 1000)
            if contains in path.name and written >= since:
                rows.append(f"<DescribeDBLogFilesDetails><LogFileName>error/{escape(path.name)}</LogFileName>"
                            f"<LastWritten>{written}</LastWritten><Size>{stat.st_size}</Size>"
                            "</DescribeDBLogFilesDetails>")
        return _answer(request, 200, _envelope("DescribeDBLogFiles",
                                               f"<DescribeDBLogFiles>{''.join(rows)}</DescribeDBLogFiles>"))

    def download(request: Any, **_: Any) -> Any:
        params = _params(request)
        if calls is not None:
            calls.append(("DownloadDBLogFilePortion", params))
        ident = params.get("DBInstanceIdentifier", "")
        folder = log_dir_of(ident)
        if folder is None:
            return _not_found(request, ident)
        path = folder / params["LogFileName"].removeprefix("error/")
        data = path.read_bytes()
        start = int(params.get("Marker") or 0)
        lines = int(params.get("NumberOfLines") or 10_000)
        end = start
        for _ in range(lines):  # whole lines only: a record still being written waits for the next call
            newline = data.find(b"\n", end)
            if newline < 0:
                break
            end = newline + 1
        pending = "true" if data.find(b"\n", end) >= 0 else "false"
        text = escape(data[start:end].decode("utf-8", "replace"))
        return _answer(request, 200, _envelope("DownloadDBLogFilePortion",
                                               f"<LogFileData>{text}</LogFileData><Marker>{end}</Marker>"
                                               f"<AdditionalDataPending>{pending}</AdditionalDataPending>"))

    events = boto3._get_default_session().events
    handlers = [("before-send.rds.DescribeDBLogFiles", describe), ("before-send.rds.DownloadDBLogFilePortion", download)]
    for event, handler in handlers:
        events.register_first(event, handler)
    try:
        yield
    finally:
        for event, handler in handlers:
            events.unregister(event, handler)


@contextlib.contextmanager
def rds_error(operation: str, code: str, message: str, status: int = 403) -> Iterator[None]:
    """RDS answers ``operation`` with ``code`` (an XML error body), ahead of anything else."""

    def answer(request: Any, **_: Any) -> Any:
        return _answer(request, status, f'<ErrorResponse xmlns="{XMLNS}"><Error><Type>Sender</Type><Code>{code}'
                                        f"</Code><Message>{escape(message)}</Message></Error>"
                                        f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>")

    events = boto3._get_default_session().events
    event = f"before-send.rds.{operation}"
    events.register_first(event, answer)
    try:
        yield
    finally:
        events.unregister(event, answer)


def wait_for_text(folder: Path, needle: str, timeout: float = 10) -> str:
    """The csv files' text once ``needle`` is in it (the collector writes asynchronously)."""
    end = time.monotonic() + timeout
    while True:
        text = "".join(p.read_text(errors="replace") for p in sorted(folder.glob("*.csv")))
        if needle in text or time.monotonic() > end:
            return text
        time.sleep(0.05)
