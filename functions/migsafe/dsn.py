"""Connection strings: parse once, mask passwords everywhere, hand tools a password-free conninfo.

A DSN may carry a password (``postgresql://app:s3cret@db/app``). It must never reach a log, a report,
a manifest or a process list, so tools get ``PGPASSWORD`` in their environment and a conninfo
without it, and everything printed goes through :func:`mask`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .exceptions import InputError

_URL_PASSWORD = re.compile(r"(://[^:/?#@]*:)([^@/?#]*)(@)")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def mask(text: str) -> str:
    """Return ``text`` with any DSN password replaced by ``***`` (URL or key=value form)."""
    text = _URL_PASSWORD.sub(r"\1***\3", text)
    return _KV_PASSWORD.sub(r"\1***", text)


def mask_tree(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings) with :func:`mask` applied to every string."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: mask_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_tree(v) for v in value]
    return value


@dataclass(frozen=True)
class Dsn:
    """A parsed connection string; ``str()`` is always masked."""

    params: dict[str, str]

    @classmethod
    def parse(cls, dsn: str) -> Dsn:
        import psycopg.conninfo  # lazily: the Lambda steps mask DSNs but never connect (no libpq there)

        try:
            params = psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise InputError(f"invalid connection string: {mask(str(exc))}") from None
        parsed = cls({k: str(v) for k, v in params.items() if v is not None})
        for port in parsed.params.get("port", "5432").split(","):
            if not port.strip().isdigit() or not 0 < int(port) < 65536:
                raise InputError(f"invalid connection string: port {port.strip()!r} is not a port number")
        return parsed

    @property
    def password(self) -> str | None:
        return self.params.get("password")

    @property
    def host(self) -> str:
        return self.params.get("host", "localhost")

    @property
    def port(self) -> int:
        return int(self.params.get("port", "5432"))

    @property
    def dbname(self) -> str:
        return self.params.get("dbname", self.params.get("user", "postgres"))

    @property
    def user(self) -> str | None:
        return self.params.get("user")

    def conninfo(self, *, with_password: bool = True, **override: str) -> str:
        """A libpq conninfo string; without the password unless asked (for psycopg only)."""
        params = {**self.params, **override}
        if not with_password:
            params.pop("password", None)
        import psycopg.conninfo

        return psycopg.conninfo.make_conninfo(**params)

    def with_db(self, dbname: str) -> Dsn:
        return Dsn({**self.params, "dbname": dbname})

    def tool_env(self) -> dict[str, str]:
        """Environment for libpq tools: the password travels here, never on a command line."""
        return {"PGPASSWORD": self.password} if self.password else {}

    def url(self) -> str:
        """A ``postgresql://`` URL with the password (for alembic's sqlalchemy.url)."""
        from urllib.parse import quote

        auth = quote(self.user or "", safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        host = self.host
        query = "&".join(
            f"{k}={quote(v, safe='')}"
            for k, v in self.params.items()
            if k not in {"user", "password", "host", "port", "dbname"}
        )
        hostpart = f"[{host}]" if ":" in host else host
        if host.startswith("/"):
            query = "&".join(filter(None, [f"host={quote(host, safe='')}", query]))
            hostpart = ""
        return f"postgresql://{auth}{'@' if auth else ''}{hostpart}:{self.port}/{self.dbname}" + (
            f"?{query}" if query else ""
        )

    def __str__(self) -> str:
        shown = {k: v for k, v in self.params.items() if k != "password"}
        if self.password:
            shown["password"] = "***"  # noqa: S105 - the mask itself
        return " ".join(f"{k}={v}" for k, v in shown.items())

    __repr__ = __str__
