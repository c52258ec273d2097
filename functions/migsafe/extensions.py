"""The extensions backed-up tables depend on: recorded by the backup, installed (or refused) by a restore.

A table dump does not carry extensions: ``pg_dump -t`` writes ``USING gin (title public.gin_trgm_ops)``
or ``email public.citext`` and expects the target to have them. So the backup walks ``pg_depend``
from the tables -- their columns' types, indexes (operator classes, expressions), defaults,
constraints and triggers, through domains, arrays and composite types -- in the backup's snapshot,
and records each extension reached (with the extensions it requires) in the manifest.

A restore then decides up front, with every other reason to refuse:

* already installed in the same schema at the recorded version or newer: nothing to do;
* installed in another schema, or at an older version: refused (the dumped SQL names the schema
  and may use objects the older version lacks);
* not installed: installed with ``CREATE EXTENSION IF NOT EXISTS .. WITH SCHEMA .. VERSION ..``
  when the server offers the recorded version, or else the lowest newer one (newer versions keep
  the objects older ones made; a lower one may lack them, so it is refused, naming the version
  needed), and when the target role may install it -- tried in a transaction that is rolled back,
  since only the server knows (a managed server's admin role may install extensions the catalog
  calls untrusted); otherwise refused, with the reason the catalog suggests (not a superuser and
  not a trusted extension, no CREATE on the database or schema) or the server's own.

Staging renames only the restored relations (``public.t`` -> ``migsafe_staging_..t``): an
extension's objects stay where the extension is, so ``public.gin_trgm_ops`` keeps resolving.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from .models import ExtensionInfo

# objects whose own dependencies are followed: what a table dump holds, and the types it uses.
# Functions are not followed (a trigger's plpgsql function is not part of a table dump).
_FOLLOW = ("pg_class", "pg_type", "pg_constraint", "pg_attrdef", "pg_trigger")

_START = """
with recursive rels(oid) as (
    select unnest(%(rels)s::oid[])
  union
    select i.inhrelid from pg_inherits i join rels r on i.inhparent = r.oid
)
select 'pg_class'::regclass::oid, oid from rels
union all select 'pg_class'::regclass::oid, i.indexrelid from pg_index i where i.indrelid in (select oid from rels)
union all select 'pg_attrdef'::regclass::oid, d.oid from pg_attrdef d where d.adrelid in (select oid from rels)
union all select 'pg_constraint'::regclass::oid, k.oid from pg_constraint k where k.conrelid in (select oid from rels)
union all select 'pg_trigger'::regclass::oid, t.oid from pg_trigger t
          where t.tgrelid in (select oid from rels) and not t.tgisinternal
"""

_STEP = """
with objs(classid, objid) as (select * from unnest(%(classes)s::oid[], %(objs)s::oid[]))
select d.refclassid, d.refobjid from pg_depend d join objs o on d.classid = o.classid and d.objid = o.objid
where d.deptype in ('n', 'a', 'i') and d.refclassid <> 'pg_extension'::regclass
  -- another table (a foreign key's target) is not part of this one's dump; a composite type's relation is
  and (d.refclassid <> 'pg_class'::regclass or (select relkind from pg_class where oid = d.refobjid) = 'c')
union
select 'pg_class'::regclass::oid, t.typrelid from pg_type t
join objs o on o.classid = 'pg_type'::regclass and o.objid = t.oid where t.typrelid <> 0
union
select 'pg_constraint'::regclass::oid, k.oid from pg_constraint k
join objs o on o.classid = 'pg_type'::regclass and o.objid = k.contypid
"""

_MEMBER_OF = """
with objs(classid, objid) as (select * from unnest(%(classes)s::oid[], %(objs)s::oid[]))
select o.classid, o.objid, m.refobjid from objs o
join pg_depend m on m.classid = o.classid and m.objid = o.objid
where m.refclassid = 'pg_extension'::regclass and m.deptype = 'e'
"""


def _reached_extensions(conn: psycopg.Connection[Any], rel_oids: Sequence[int]) -> set[int]:
    """OIDs of the extensions the relations' objects reach through ``pg_depend``."""
    follow = {int(r[0]) for r in conn.execute(
        "select oid from pg_class where relname = any(%s) and relnamespace = 'pg_catalog'::regnamespace",
        (list(_FOLLOW),)).fetchall()}
    frontier = {(int(a), int(b)) for a, b in conn.execute(_START, {"rels": list(rel_oids)}).fetchall()}
    seen = set(frontier)
    found: set[int] = set()
    while frontier:
        classes, objs = [c for c, _ in frontier], [o for _, o in frontier]
        members = {(int(c), int(o)): int(e) for c, o, e in conn.execute(
            _MEMBER_OF, {"classes": classes, "objs": objs}).fetchall()}
        found.update(members.values())
        expand = [(c, o) for c, o in frontier if (c, o) not in members and c in follow]
        if not expand:
            break
        rows = conn.execute(_STEP, {"classes": [c for c, _ in expand], "objs": [o for _, o in expand]}).fetchall()
        frontier = {(int(a), int(b)) for a, b in rows} - seen
        seen |= frontier
    return found


def required(conn: psycopg.Connection[Any], tables: dict[str, int]) -> list[ExtensionInfo]:
    """The extensions ``tables`` (name -> oid) depend on, required ones first, each with its users.

    Read in the caller's transaction: in the backup, the snapshot the dumps read.
    """
    users: dict[int, list[str]] = {}
    for name, oid in tables.items():
        for ext in _reached_extensions(conn, [oid]):
            users.setdefault(ext, []).append(name)
    # the extensions those require (earthdistance needs cube): installed first
    requires: dict[int, list[int]] = {}
    todo = list(users)
    while todo:
        ext = todo.pop()
        if ext in requires:
            continue
        requires[ext] = [int(r[0]) for r in conn.execute(
            "select refobjid from pg_depend where classid = 'pg_extension'::regclass and objid = %s "
            "and refclassid = 'pg_extension'::regclass order by 1", (ext,)).fetchall()]
        todo.extend(requires[ext])
    if not requires:
        return []
    rows = conn.execute(
        "select e.oid, e.extname, n.nspname, e.extversion from pg_extension e "
        "join pg_namespace n on n.oid = e.extnamespace where e.oid = any(%s)", (list(requires),)).fetchall()
    info = {int(r[0]): (str(r[1]), str(r[2]), str(r[3])) for r in rows}
    ordered: list[int] = []

    def visit(ext: int, path: frozenset[int]) -> None:
        if ext in ordered or ext in path:
            return
        for r in requires[ext]:
            visit(r, path | {ext})
        ordered.append(ext)

    for ext in sorted(requires, key=lambda e: info[e][0]):
        visit(ext, frozenset())
    return [
        ExtensionInfo(name=info[e][0], schema_name=info[e][1], version=info[e][2],
                      requires=sorted(info[r][0] for r in requires[e]), used_by=sorted(users.get(e, [])))
        for e in ordered
    ]


# --- restore --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Install:
    """One ``CREATE EXTENSION`` a restore runs before the tables."""

    name: str
    schema: str
    version: str
    create_schema: bool
    fixed_schema: bool  # the control file names the schema: no SCHEMA clause


def _version_key(version: str) -> tuple[int, ...] | None:
    return tuple(int(p) for p in version.split(".")) if re.fullmatch(r"\d+(\.\d+)*", version) else None


def at_least(have: str, need: str) -> bool:
    """``have`` is ``need`` or newer (dotted numbers compared as numbers; other spellings must be equal)."""
    if have == need:
        return True
    h, n = _version_key(have), _version_key(need)
    return h is not None and n is not None and h > n


def plan_installs(conn: psycopg.Connection[Any], needed: Sequence[ExtensionInfo]) -> tuple[list[Install], list[str]]:
    """What to install in the target, and every reason it cannot (nothing is changed here)."""
    if not needed:
        return [], []
    names = [e.name for e in needed]
    installed = {r[0]: (r[1], r[2]) for r in conn.execute(
        "select e.extname, n.nspname, e.extversion from pg_extension e join pg_namespace n on n.oid = e.extnamespace "
        "where e.extname = any(%s)", (names,)).fetchall()}
    offered: dict[str, dict[str, tuple[bool, bool, str | None]]] = {}
    for name, version, superuser, trusted, schema in conn.execute(
        "select name, version, superuser, trusted, schema from pg_available_extension_versions where name = any(%s)",
        (names,),
    ).fetchall():
        offered.setdefault(name, {})[version] = (bool(superuser), bool(trusted), schema)
    row = conn.execute(
        "select current_user, (select rolsuper from pg_roles where rolname = current_user), "
        "has_database_privilege(current_database(), 'CREATE')").fetchone()
    assert row is not None
    role, is_super, db_create = str(row[0]), bool(row[1]), bool(row[2])
    schemas = {r[0]: bool(r[1]) for r in conn.execute(
        "select nspname, has_schema_privilege(oid, 'CREATE') from pg_namespace where nspname = any(%s)",
        ([e.schema_name for e in needed],)).fetchall()}
    installs: list[Install] = []
    problems: list[str] = []
    reasons: dict[str, tuple[str, str | None]] = {}
    for ext in needed:
        what = f"extension {ext.name} {ext.version} (schema {ext.schema_name}" + (
            f", used by {', '.join(ext.used_by)})" if ext.used_by else ")")
        if ext.name in installed:
            schema, version = installed[ext.name]
            if schema != ext.schema_name:
                problems.append(f"{what} is installed in schema {schema} in the target: the backup's tables "
                                f"name it in {ext.schema_name}")
            elif not at_least(version, ext.version):
                problems.append(f"{what} is installed at version {version} in the target: version {ext.version} "
                                f"or newer is needed (ALTER EXTENSION {ext.name} UPDATE)")
            continue
        versions = offered.get(ext.name, {})
        newer = sorted((v for v in versions if at_least(v, ext.version)),
                       key=lambda v: _version_key(v) or (0,))
        if not versions:
            problems.append(f"{what} is not available on the target server (install its package, e.g. "
                            "postgresql-contrib, or restore elsewhere)")
            continue
        if not newer:
            problems.append(f"{what} is needed, but the target server offers only version(s) "
                            f"{', '.join(sorted(versions))}: version {ext.version} or newer is needed")
            continue
        version = ext.version if ext.version in versions else newer[0]
        superuser, trusted, fixed = versions[version]
        schema_ok = schemas.get(ext.schema_name)
        why_not = None  # what the catalog predicts would stop the role (the trial below decides)
        if not is_super:
            if superuser and not trusted:
                why_not = f"not a superuser, and {ext.name} is not a trusted extension"
            elif not db_create:
                why_not = "no CREATE privilege on the database"
            elif schema_ok is False and not fixed:
                why_not = f"no CREATE privilege on schema {ext.schema_name}"
        installs.append(Install(name=ext.name, schema=ext.schema_name, version=version,
                                create_schema=schema_ok is None and not fixed, fixed_schema=fixed is not None))
        reasons[ext.name] = (what, why_not)
    if not problems:
        problems += _trial(conn, installs, reasons, role)
    return installs, problems


def _trial(conn: psycopg.Connection[Any], installs: Sequence[Install],
           reasons: dict[str, tuple[str, str | None]], role: str) -> list[str]:
    """Install in a transaction that is rolled back: may the role really do it?

    The catalog cannot tell everything (a managed server's admin role installs extensions it does
    not trust for others, e.g. ``rds_superuser``), so the server answers; nothing stays behind.
    """
    problems: list[str] = []
    if not installs:
        return problems
    with conn.transaction(force_rollback=True):
        for i in installs:
            try:
                with conn.transaction():
                    _create(conn, i)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                what, why_not = reasons[i.name]
                said = (str(exc).strip().splitlines() or ["refused"])[0]
                problems.append(f"{what} is not installed in the target and role {role} cannot install it "
                                f"({why_not or said})")
    return problems


def for_tables(needed: Sequence[ExtensionInfo], tables: Sequence[str]) -> list[ExtensionInfo]:
    """The extensions the selected tables need, and those these require (in the manifest's order)."""
    by_name = {e.name: e for e in needed}
    want: set[str] = set()
    todo = [e.name for e in needed if set(e.used_by) & set(tables)]
    while todo:
        name = todo.pop()
        if name not in want and name in by_name:
            want.add(name)
            todo.extend(by_name[name].requires)
    return [e for e in needed if e.name in want]


@dataclass
class Created:
    """What one restore's ``install`` made, for ``drop`` to take back when the restore does not swap."""

    extensions: list[str] = field(default_factory=list)
    schemas: list[str] = field(default_factory=list)  # made for an extension that lives in its own


def install(conn: psycopg.Connection[Any], installs: Sequence[Install], created: Created) -> None:
    """Run the ``CREATE EXTENSION`` statements; ``created`` gets each extension (and schema) this call made."""
    for i in installs:
        with conn.transaction():
            exists = conn.execute("select 1 from pg_extension where extname = %s", (i.name,)).fetchone()
            if exists:
                continue
            new_schema = i.create_schema and conn.execute(
                "select 1 from pg_namespace where nspname = %s", (i.schema,)).fetchone() is None
            _create(conn, i)
        created.extensions.append(i.name)
        if new_schema:
            created.schemas.append(i.schema)


def _create(conn: psycopg.Connection[Any], i: Install) -> None:
    if i.create_schema:
        conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(i.schema)))
    stmt = sql.SQL("create extension if not exists {}").format(sql.Identifier(i.name))
    if not i.fixed_schema:
        stmt += sql.SQL(" with schema {}").format(sql.Identifier(i.schema))
    stmt += sql.SQL(" version {}").format(sql.Literal(i.version))
    conn.execute(stmt)


def drop(conn: psycopg.Connection[Any], created: Created) -> None:
    """Drop what a failed restore created: extensions newest first, then their schemas (best effort;
    never CASCADE, so a schema someone has put an object in since is left alone)."""
    for name in reversed(created.extensions):
        with contextlib.suppress(psycopg.Error):
            conn.execute(sql.SQL("drop extension if exists {}").format(sql.Identifier(name)))
    for schema in reversed(created.schemas):
        with contextlib.suppress(psycopg.Error):
            conn.execute(sql.SQL("drop schema if exists {}").format(sql.Identifier(schema)))


def stock_sql(needs: Sequence[ExtensionInfo]) -> str:
    """The ``CREATE EXTENSION`` statements a restore with stock tools runs first (the manifest's hint).

    In the manifest's order (an extension after those it requires), each in its recorded schema at
    its recorded version; identifiers and versions are quoted as SQL, so the text runs as it is.
    """

    def ident(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    return " ".join(
        f"CREATE EXTENSION IF NOT EXISTS {ident(e.name)} WITH SCHEMA {ident(e.schema_name)} "
        f"VERSION '{e.version.replace(chr(39), chr(39) * 2)}';"
        for e in needs
    )
