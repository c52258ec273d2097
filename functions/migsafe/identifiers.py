"""Qualified table and type names: parsed strictly, never interpolated.

A name is ``table`` or ``schema.table``; each part is a plain identifier (folded to lower case, as
PostgreSQL does) or a double-quoted one. Anything else -- ``users; drop table x``, quotes inside
names, control characters -- is refused before any connection is made. SQL is always composed with
:class:`psycopg.sql.Identifier`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, NamedTuple

from .exceptions import UnsafeIdentifier

if TYPE_CHECKING:
    from psycopg import sql

_PART = r'(?:[A-Za-z_][A-Za-z0-9_$]{0,62}|"[^"\x00-\x1f]{1,63}")'
_QUALIFIED = re.compile(rf"^(?P<first>{_PART})(?:\.(?P<second>{_PART}))?$")


def _unquote(part: str) -> str:
    return part[1:-1] if part.startswith('"') else part.lower()


class QualifiedName(NamedTuple):
    schema: str
    name: str

    @classmethod
    def parse(cls, text: str, default_schema: str = "public") -> QualifiedName:
        match = _QUALIFIED.match(text.strip()) if isinstance(text, str) else None
        if not match:
            raise UnsafeIdentifier(f"not a valid table name: {text!r} (expected name or schema.name)")
        first, second = match.group("first"), match.group("second")
        if second is None:
            return cls(default_schema, _unquote(first))
        return cls(_unquote(first), _unquote(second))

    @property
    def ident(self) -> sql.Identifier:
        from psycopg import sql  # lazily: the Lambda steps parse names but have no libpq

        return sql.Identifier(self.schema, self.name)

    @property
    def pattern(self) -> str:
        """A pg_dump ``--table`` pattern matching exactly this relation (wildcards quoted)."""
        return f'"{self.schema}"."{self.name}"'

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"
