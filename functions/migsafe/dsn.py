"""Connection strings: parse once, mask passwords everywhere, hand tools a password-free conninfo.

A DSN may carry a password (``postgresql://app:s3cret@db/app``), or the passphrase of an SSL key
(``sslpassword``). Neither may reach a log, a report, a manifest or a process list (``ps`` shows every
argv), so tools get a conninfo without any secret key: the password travels in ``PGPASSWORD``, and the
other secrets (libpq has no environment variable for them) in a private 0600 service file named by
``PGSERVICEFILE``, which the conninfo points at with ``service=``. ``str(Dsn)`` masks every secret
key, and everything printed goes through :func:`mask`.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .exceptions import InputError

SECRET_KEYS = ("password", "sslpassword")  # conninfo keys whose values are secrets
# TCP keepalives on every session with the source (psycopg's and the tools'): a connection whose peer
# vanished (a network partition, a host gone) errors out after idle + interval * count = 60 s instead
# of waiting on a read forever. A hung server's kernel still answers them: that is the watchdog's
# part (watchdog.py). Values the DSN gives itself win.
KEEPALIVES = {"keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10", "keepalives_count": "3"}
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

        # a SQLAlchemy URL names its driver (postgresql+psycopg://, the form a project's DATABASE_URL
        # often has): libpq wants the plain scheme
        dsn = re.sub(r"^postgres(?:ql)?\+[A-Za-z0-9_]+://", "postgresql://", dsn)
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

    @property
    def _other_secrets(self) -> dict[str, str]:
        return {k: v for k, v in self.params.items() if k in SECRET_KEYS and k != "password"}

    def conninfo(self, *, with_password: bool = True, **override: str) -> str:
        """A libpq conninfo string; without any secret unless asked (with them: for psycopg only).

        Without secrets it is what a tool's argv carries: the secrets reach the tool through
        :meth:`tool_env` (and ``service=``, when there are secrets other than the password).
        """
        params = {**self.params, **override}
        if not with_password:
            for key in SECRET_KEYS:
                params.pop(key, None)
            if self._other_secrets:
                params["service"] = _SERVICE
        import psycopg.conninfo

        return psycopg.conninfo.make_conninfo(**params)

    def tool_conninfo(self, **override: str) -> str:
        """The conninfo a tool's argv carries: no secret, keepalives on, a connect timeout (unless given)."""
        session = {**KEEPALIVES, "connect_timeout": "10"}
        return self.conninfo(with_password=False, **{k: v for k, v in session.items() if k not in self.params},
                             **override)

    def with_db(self, dbname: str) -> Dsn:
        return Dsn({**self.params, "dbname": dbname})

    def tool_env(self) -> dict[str, str]:
        """Environment for libpq tools: the secrets travel here, never on a command line."""
        env = {"PGPASSWORD": self.password} if self.password else {}
        if self._other_secrets:
            env["PGSERVICEFILE"] = _service_file(tuple(sorted(self._other_secrets.items())))
        return env

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
        shown = {k: ("***" if k in SECRET_KEYS else v) for k, v in self.params.items()}
        return " ".join(f"{k}={v}" for k, v in shown.items())

    __repr__ = __str__


_SERVICE = "migsafe"


@functools.cache
def _secrets_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="migsafe-secrets-"))  # 0700
    atexit.register(shutil.rmtree, path, True)
    return path


def remove_secrets() -> None:
    """Remove the service files holding passwords now (a run ending with ``os._exit`` skips atexit)."""
    if _secrets_dir.cache_info().currsize:
        shutil.rmtree(_secrets_dir(), ignore_errors=True)


@functools.cache
def _service_file(secrets: tuple[tuple[str, str], ...]) -> str:
    """A 0600 libpq service file holding ``secrets`` in the ``[migsafe]`` service; its path."""
    body = f"[{_SERVICE}]\n" + "".join(f"{k}={v}\n" for k, v in secrets)
    path = _secrets_dir() / f"{hashlib.sha256(body.encode()).hexdigest()[:16]}.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(body)
    return str(path)
