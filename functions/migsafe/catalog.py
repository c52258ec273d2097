"""What the catalog says about tables: existence, shape, types, counts and content fingerprints.

Every query takes OIDs or :class:`psycopg.sql.Identifier`-composed names; no name is ever
formatted into SQL text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from .dsn import KEEPALIVES, Dsn, mask
from .exceptions import DatabaseError, DatabaseUnreachable, UnknownTable
from .identifiers import QualifiedName
from .models import ColumnInfo, ConstraintInfo


def connect(
    dsn: Dsn, *, autocommit: bool = True, application_name: str = "migsafe", **kw: Any
) -> psycopg.Connection[Any]:
    """Connect, turning libpq failures into DatabaseUnreachable (with any password masked).

    TCP keepalives are on (unless the DSN sets them): a session whose server vanished errors out.
    """
    keepalives = {k: v for k, v in KEEPALIVES.items() if k not in dsn.params}
    try:
        return psycopg.connect(
            dsn.conninfo(), autocommit=autocommit, application_name=application_name, connect_timeout=10,
            **{**keepalives, **kw},
        )
    except psycopg.OperationalError as exc:
        raise DatabaseUnreachable(
            f"cannot connect to {dsn.host}:{dsn.port}/{dsn.dbname}: {mask(str(exc)).strip()}"
        ) from None


def resolve_tables(conn: psycopg.Connection[Any], names: Sequence[QualifiedName]) -> dict[QualifiedName, int]:
    """OID of each table; UnknownTable naming every one that is missing (or not a table)."""
    rows = conn.execute(
        """
        select n.nspname, c.relname, c.oid, c.relkind
        from unnest(%s::text[], %s::text[]) with ordinality as want(nsp, rel, ord)
        left join pg_namespace n on n.nspname = want.nsp
        left join pg_class c on c.relnamespace = n.oid and c.relname = want.rel
        order by want.ord
        """,
        ([n.schema for n in names], [n.name for n in names]),
    ).fetchall()
    found: dict[QualifiedName, int] = {}
    missing: list[str] = []
    for name, row in zip(names, rows, strict=True):
        if row[2] is None or row[3] not in ("r", "p"):
            missing.append(str(name))
        else:
            found[name] = int(row[2])
    if missing:
        raise UnknownTable(f"no such table: {', '.join(missing)}")
    return found


def partitions(conn: psycopg.Connection[Any], oid: int) -> list[QualifiedName]:
    """Every partition below a partitioned table (all levels); empty for a plain table.

    PostgreSQL 15's ``pg_dump -t parent`` dumps the parent alone -- no rows, since they live in the
    partitions -- so a partitioned table is dumped with each of its partitions named too.
    """
    rows = conn.execute(
        """
        with recursive tree(relid) as (
            select inhrelid from pg_inherits where inhparent = %s
          union
            select i.inhrelid from pg_inherits i join tree t on i.inhparent = t.relid
        )
        select n.nspname, c.relname from tree join pg_class c on c.oid = tree.relid
        join pg_namespace n on n.oid = c.relnamespace where c.relispartition order by 1, 2
        """,
        (oid,),
    ).fetchall()
    return [QualifiedName(r[0], r[1]) for r in rows]


def existing_tables(
    conn: psycopg.Connection[Any], names: Iterable[QualifiedName]
) -> dict[QualifiedName, int]:
    """OIDs of those of ``names`` that exist as tables (no error for the others)."""
    names = list(names)
    rows = conn.execute(
        """
        select want.nsp, want.rel, c.oid
        from unnest(%s::text[], %s::text[]) as want(nsp, rel)
        join pg_namespace n on n.nspname = want.nsp
        join pg_class c on c.relnamespace = n.oid and c.relname = want.rel and c.relkind in ('r', 'p')
        """,
        ([n.schema for n in names], [n.name for n in names]),
    ).fetchall()
    return {QualifiedName(r[0], r[1]): int(r[2]) for r in rows}


def describe(conn: psycopg.Connection[Any], oid: int) -> dict[str, Any]:
    """Columns, indexes, constraints, owner, relation size and the user types a table uses."""
    cur = conn.cursor(row_factory=dict_row)
    head = cur.execute(
        """
        select pg_get_userbyid(c.relowner) as owner, pg_total_relation_size(c.oid) as relation_bytes
        from pg_class c where c.oid = %s
        """,
        (oid,),
    ).fetchone()
    assert head is not None
    columns = [
        ColumnInfo(**r)
        for r in cur.execute(
            """
            select a.attname as name, format_type(a.atttypid, a.atttypmod) as type,
                   not a.attnotnull as nullable, pg_get_expr(d.adbin, d.adrelid) as default
            from pg_attribute a left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
            where a.attrelid = %s and a.attnum > 0 and not a.attisdropped order by a.attnum
            """,
            (oid,),
        ).fetchall()
    ]
    indexes = [
        r["def"]
        for r in cur.execute(
            "select pg_get_indexdef(indexrelid) as def from pg_index where indrelid = %s order by 1", (oid,)
        ).fetchall()
    ]
    constraints = [
        ConstraintInfo(**r)
        for r in cur.execute(
            """
            select con.conname as name, con.contype::text as type, pg_get_constraintdef(con.oid) as definition,
                   con.convalidated as validated,
                   case when con.contype = 'f' then fn.nspname || '.' || fc.relname end as references
            from pg_constraint con
            left join pg_class fc on fc.oid = con.confrelid
            left join pg_namespace fn on fn.oid = fc.relnamespace
            where con.conrelid = %s order by con.conname
            """,
            (oid,),
        ).fetchall()
    ]
    return {
        "owner": head["owner"],
        "relation_bytes": int(head["relation_bytes"]),
        "columns": columns,
        "indexes": indexes,
        "constraints": constraints,
        "types": [t["name"] for t in user_types(conn, [oid])],
    }


_USER_TYPES = """
with recursive used(oid) as (
    select a.atttypid from pg_attribute a
    where a.attrelid = any(%(rels)s::oid[]) and a.attnum > 0 and not a.attisdropped
  union
    select coalesce(nullif(t.typelem, 0), nullif(t.typbasetype, 0), r.rngsubtype, ca.atttypid)
    from used u
    join pg_type t on t.oid = u.oid
    left join pg_range r on r.rngtypid = t.oid
    left join pg_attribute ca on t.typtype = 'c' and ca.attrelid = t.typrelid and ca.attnum > 0
    where coalesce(nullif(t.typelem, 0), nullif(t.typbasetype, 0), r.rngsubtype, ca.atttypid) is not null
)
select t.oid, n.nspname || '.' || t.typname as name,
       case t.typtype when 'e' then 'enum' when 'd' then 'domain' when 'c' then 'composite'
                      when 'r' then 'range' else t.typtype::text end as kind,
       coalesce((select array_agg(e.enumlabel order by e.enumsortorder) from pg_enum e where e.enumtypid = t.oid),
                '{}') as labels
from pg_type t join pg_namespace n on n.oid = t.typnamespace
where t.oid in (select oid from used)
  and t.typtype in ('e', 'd', 'c', 'r')
  and (t.typtype <> 'c' or (select relkind from pg_class where oid = t.typrelid) = 'c')
  and n.nspname not in ('pg_catalog', 'information_schema')
  and not exists (select 1 from pg_depend dep where dep.classid = 'pg_type'::regclass and dep.objid = t.oid
                  and dep.deptype = 'e')
order by t.oid
"""


def user_types(conn: psycopg.Connection[Any], rel_oids: Sequence[int]) -> list[dict[str, Any]]:
    """User-defined types (enums, domains, composites, ranges) the relations' columns depend on."""
    cur = conn.cursor(row_factory=dict_row)
    return list(cur.execute(_USER_TYPES, {"rels": list(rel_oids)}).fetchall())


def enum_labels(conn: psycopg.Connection[Any], type_name: str) -> list[str] | None:
    schema, _, name = type_name.partition(".")
    row = conn.execute(
        """
        select coalesce(array_agg(e.enumlabel order by e.enumsortorder) filter (where e.enumlabel is not null), '{}')
        from pg_type t join pg_namespace n on n.oid = t.typnamespace
        left join pg_enum e on e.enumtypid = t.oid
        where n.nspname = %s and t.typname = %s group by t.oid
        """,
        (schema, name),
    ).fetchone()
    return list(row[0]) if row else None


def count_rows(conn: psycopg.Connection[Any], table: QualifiedName) -> int:
    row = conn.execute(sql.SQL("select count(*) from {}").format(table.ident)).fetchone()
    assert row is not None
    return int(row[0])


# How a fingerprint was taken, marked in its text (the manifest's ``fingerprint`` field):
# - "record" (``rec:<rows>:<hex>``, the default): the sum of ``hash_record_extended`` over a row of
#   the columns, where every column whose hash is not exact is cast to text first (see _HASHED_AS_IS);
# - "text" (``<rows>:<hex>``, manifests written before): the sum of ``hashtextextended(row::text)``.
# Both sums are of 64-bit hashes, so they do not depend on the physical order of the rows.
FingerprintMethod = Literal["record", "text"]
_RECORD_MARK = "rec:"

# Base types whose hash function tells apart every two values their text forms tell apart, and
# does not depend on the database (an enum hashes its OID, a numeric 1.0 and 1.00 alike, a float
# 0 and -0 alike, an interval '1 day' and '24 hours' alike, a nondeterministic collation 'a' and 'A'
# alike): these are hashed as they are, which skips their output function -- the bulk of the
# text method's cost. Everything else (enums, numerics, arrays of them, composites, ranges,
# domains over them, types without a hash function) is hashed through its text form.
_HASHED_AS_IS = ("int2", "int4", "int8", "bool", "text", "varchar", "uuid", "date", "timestamp",
                 "timestamptz", "bytea", "oid", "name", "time", "char")

_COLUMNS_TO_HASH = """
select a.attname,
       (bt.typnamespace = 'pg_catalog'::regnamespace and bt.typname = any(%(as_is)s)
        and coalesce(coll.collisdeterministic, true)) as as_is,
       case when t.typtype = 'd' then format_type(t.typbasetype, t.typtypmod) end as base
from pg_attribute a
join pg_type t on t.oid = a.atttypid
-- a domain is judged by its base type, an array by its element type (an array of domains too)
join pg_type bt on bt.oid = (
    select coalesce(nullif(e.typbasetype, 0), e.oid) from pg_type e
    where e.oid = coalesce(nullif((select b.typelem from pg_type b
                                  where b.oid = coalesce(nullif(t.typbasetype, 0), t.oid) and b.typlen = -1
                                    and b.typcategory = 'A'), 0),
                           coalesce(nullif(t.typbasetype, 0), t.oid)))
left join pg_collation coll on coll.oid = a.attcollation
where a.attrelid = %(rel)s and a.attnum > 0 and not a.attisdropped
order by a.attnum
"""


def count_and_fingerprint(
    conn: psycopg.Connection[Any], table: QualifiedName, method: FingerprintMethod = "record"
) -> tuple[int, str]:
    """Row count and content fingerprint in one scan of the table."""
    digest = fingerprint(conn, table, method)
    return fingerprint_rows(digest), digest


def fingerprint_method(digest: str) -> FingerprintMethod:
    """The method a fingerprint was taken with (manifests before the record method: text)."""
    return "record" if digest.startswith(_RECORD_MARK) else "text"


def fingerprint_rows(digest: str) -> int:
    return int(digest.removeprefix(_RECORD_MARK).split(":", 1)[0])


def fingerprint(conn: psycopg.Connection[Any], table: QualifiedName, method: FingerprintMethod = "record") -> str:
    """An order-independent digest of a table's content, computed inside the database.

    The sum of a 64-bit hash of every row (plus the row count) does not depend on the physical
    order, so a table rewritten by a migration and back compares equal when its data is unchanged,
    and so do the same rows in another database (where an enum has other OIDs). ``method`` says how
    a row is hashed (see FingerprintMethod); a digest is only ever compared with one of its method.
    """
    with conn.transaction():
        # a row's text form depends on session settings (a timestamptz on TimeZone, ...): fix them,
        # so a backup taken from one client and a restore checked from another compare equal
        conn.execute(
            "select set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO, MDY', true), "
            "set_config('IntervalStyle', 'postgres', true), set_config('extra_float_digits', '1', true), "
            "set_config('bytea_output', 'hex', true)"
        )
        row_hash = _record_hash(conn, table) if method == "record" else sql.SQL("hashtextextended(t::text, 0)")
        # sum(bigint) accumulates in 128-bit integers: exact, and cheaper than summing numerics
        row = conn.execute(
            sql.SQL("select count(*), coalesce(sum({}), 0) from {} as t").format(row_hash, table.ident)
        ).fetchone()
    assert row is not None
    digest = f"{int(row[0])}:{int(row[1]):x}".replace("-", "n")
    return _RECORD_MARK + digest if method == "record" else digest


def exact_columns(conn: psycopg.Connection[Any], table: QualifiedName) -> set[str]:
    """Columns whose equality tells apart every two values their text forms tell apart (_HASHED_AS_IS).

    Comparing them as they are gives the same answer as comparing their text, without the output
    function: what diff and merge compare changed rows with.
    """
    oid = resolve_tables(conn, [table])[table]
    return {r[0] for r in conn.execute(_COLUMNS_TO_HASH, {"rel": oid, "as_is": list(_HASHED_AS_IS)}).fetchall()
            if r[1]}


def _record_hash(conn: psycopg.Connection[Any], table: QualifiedName) -> sql.Composable:
    """``hash_record_extended(row(<columns>), 0)``, each column as it is or as text (see _HASHED_AS_IS)."""
    oid = resolve_tables(conn, [table])[table]
    columns = conn.execute(_COLUMNS_TO_HASH, {"rel": oid, "as_is": list(_HASHED_AS_IS)}).fetchall()
    if not columns:
        return sql.SQL("0::bigint")
    parts: list[sql.Composable] = []
    for name, as_is, base in columns:
        col = sql.SQL("t.{}").format(sql.Identifier(name))
        if not as_is:
            parts.append(sql.SQL('({}::text collate "C")').format(col))
        elif base is not None:  # a domain over a type hashed as it is: hash its base value
            parts.append(sql.SQL("({}::{})").format(col, sql.SQL(base)))
        else:
            parts.append(col)
    return sql.SQL("hash_record_extended(row({}), 0)").format(sql.SQL(", ").join(parts))


def copy_columns(conn: psycopg.Connection[Any], oid: int) -> list[str]:
    """The columns a table's COPY holds, in order, as pg_dump writes them (generated columns left out)."""
    rows = conn.execute(
        "select attname from pg_attribute where attrelid = %s and attnum > 0 and not attisdropped "
        "and attgenerated = '' order by attnum", (oid,)).fetchall()
    return [r[0] for r in rows]


def foreign_keys(conn: psycopg.Connection[Any], rel_oids: Sequence[int]) -> list[dict[str, Any]]:
    """FK constraints on the relations, with whether each is validated."""
    cur = conn.cursor(row_factory=dict_row)
    return list(
        cur.execute(
            """
            select con.oid, con.conname as name, n.nspname || '.' || c.relname as table,
                   fn.nspname || '.' || fc.relname as references, con.convalidated as validated
            from pg_constraint con
            join pg_class c on c.oid = con.conrelid join pg_namespace n on n.oid = c.relnamespace
            join pg_class fc on fc.oid = con.confrelid join pg_namespace fn on fn.oid = fc.relnamespace
            where con.contype = 'f' and con.conrelid = any(%s::oid[]) order by 3, 2
            """,
            (list(rel_oids),),
        ).fetchall()
    )


def alembic_revision(conn: psycopg.Connection[Any]) -> str | None:
    """The current alembic revision(s) when an ``alembic_version`` table is on the search path."""
    exists = conn.execute("select to_regclass('alembic_version') is not null").fetchone()
    if not exists or not exists[0]:
        return None
    try:
        rows = conn.execute("select version_num from alembic_version order by 1").fetchall()
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot read alembic_version: {exc}") from exc
    return ",".join(r[0] for r in rows) or None


def server_version(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("show server_version").fetchone()
    assert row is not None
    return str(row[0])


def type_ddl(conn: psycopg.Connection[Any], oid: int, kind: str) -> str | None:
    """CREATE statement for an enum, domain or composite type, from the catalog; None for others.

    Reading the catalog costs milliseconds whatever the database's size, where a schema-only
    ``pg_dump`` (the fallback, for ranges) grows with the whole catalog. Type names and
    expressions come from ``format_type``/``pg_get_constraintdef``/``pg_get_expr`` (quoted by the
    server); every name we add is a ``sql.Identifier`` and every label a ``sql.Literal``.
    """
    head = conn.execute(
        """
        select n.nspname, t.typname, format_type(t.typbasetype, t.typtypmod), t.typnotnull,
               pg_get_expr(t.typdefaultbin, 0), t.typrelid
        from pg_type t join pg_namespace n on n.oid = t.typnamespace where t.oid = %s
        """,
        (oid,),
    ).fetchone()
    if head is None:
        return None
    name = sql.Identifier(head[0], head[1])
    stmt: sql.Composable
    if kind == "enum":
        labels = conn.execute(
            "select enumlabel from pg_enum where enumtypid = %s order by enumsortorder", (oid,)
        ).fetchall()
        stmt = sql.SQL("CREATE TYPE {} AS ENUM ({});").format(
            name, sql.SQL(", ").join(sql.Literal(r[0]) for r in labels)
        )
    elif kind == "domain":
        parts: list[sql.Composable] = [sql.SQL("CREATE DOMAIN {} AS {}").format(name, sql.SQL(head[2]))]
        if head[4] is not None:
            parts.append(sql.SQL("DEFAULT {}").format(sql.SQL(head[4])))
        if head[3]:
            parts.append(sql.SQL("NOT NULL"))
        for conname, definition in conn.execute(
            "select conname, pg_get_constraintdef(oid) from pg_constraint where contypid = %s and contype = 'c' "
            "order by conname",
            (oid,),
        ).fetchall():
            parts.append(sql.SQL("CONSTRAINT {} {}").format(sql.Identifier(conname), sql.SQL(definition)))
        stmt = sql.SQL(" ").join(parts) + sql.SQL(";")
    elif kind == "composite":
        attrs = conn.execute(
            """
            select a.attname, format_type(a.atttypid, a.atttypmod) from pg_attribute a
            where a.attrelid = %s and a.attnum > 0 and not a.attisdropped order by a.attnum
            """,
            (head[5],),
        ).fetchall()
        stmt = sql.SQL("CREATE TYPE {} AS ({});").format(
            name, sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(a), sql.SQL(t)) for a, t in attrs)
        )
    else:
        return None
    return stmt.as_string(conn)
