"""Extensions the tables depend on travel with the backup: recorded in the manifest, installed on restore.

pg_trgm (a GIN ``gin_trgm_ops`` index), citext (a column, and a domain over it), hstore (a column)
and uuid-ossp (a default): all in PostgreSQL's contrib package.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from backup_helpers import backup_dir, file_url, user_relations
from migsafe import pgtools
from migsafe.backup import BackupOptions, run_backup
from migsafe.dsn import Dsn
from migsafe.exceptions import ChecksumMismatch
from migsafe.identifiers import QualifiedName
from migsafe.inventory import load_manifest
from migsafe.restore import RestoreOptions, run_restore
from migsafe.store.file import FileStore
from pgsupport import CliResult, Database, table_fingerprints

Cli = Callable[..., CliResult]

SCHEMA = """
create extension pg_trgm;
create extension citext;
create extension hstore;
create extension "uuid-ossp";
create extension ltree;  -- installed, but no backed-up table uses it
create domain public.email as citext check (value like '%@%');
create table public.articles (
    id bigint primary key,
    title text not null,
    author citext not null,
    contact public.email,
    attrs hstore
);
create index articles_title_trgm on public.articles using gin (title gin_trgm_ops);
create table public.tokens (
    id uuid primary key default uuid_generate_v4(),
    article_id bigint references public.articles (id)
);
insert into public.articles
select g, 'title number ' || g, 'Author' || (g % 7), 'Who' || g || '@example.org',
       hstore('k', g::text)
from generate_series(1, 300) g;
insert into public.tokens (article_id) select g from generate_series(1, 50) g;
"""
TABLES = ["public.articles", "public.tokens"]


@pytest.fixture
def with_extensions(make_database: Callable[..., Database]) -> Database:
    source = make_database()
    with source.connect() as conn:
        conn.execute(SCHEMA)
    return source


def _backup(source: Database, store: FileStore, tables: list[str] = TABLES) -> str:
    return run_backup(source.dsn, store, [QualifiedName.parse(t) for t in tables]).backup_id


def _extensions(db: Database) -> dict[str, str]:
    with db.connect() as conn:
        return dict(conn.execute("select extname, extversion from pg_extension").fetchall())


def test_the_manifest_lists_exactly_the_extensions_the_tables_need(
    tmp_path: Path, with_extensions: Database
) -> None:
    # Given
    store = FileStore(tmp_path / "store")
    installed = _extensions(with_extensions)
    # When
    backup_id = _backup(with_extensions, store)
    # Then: through an index's operator class, column types, a domain, a default; not plpgsql or ltree
    _, manifest = load_manifest(store, backup_id)
    got = {e.name: (e.schema_name, e.version, e.used_by) for e in manifest.extensions}
    assert got == {
        "pg_trgm": ("public", installed["pg_trgm"], ["public.articles"]),
        "citext": ("public", installed["citext"], ["public.articles"]),
        "hstore": ("public", installed["hstore"], ["public.articles"]),
        "uuid-ossp": ("public", installed["uuid-ossp"], ["public.tokens"]),
    }


def test_tables_using_extensions_round_trip_into_an_empty_database(
    tmp_path: Path, with_extensions: Database, make_database: Callable[..., Database]
) -> None:
    # Given
    store = FileStore(tmp_path / "store")
    backup_id = _backup(with_extensions, store)
    target = make_database()
    # When
    report = run_restore(store, backup_id, target.dsn, RestoreOptions())
    # Then
    assert report.ok, report.problems()
    assert table_fingerprints(target, TABLES) == table_fingerprints(with_extensions, TABLES)
    assert set(_extensions(target)) == {"plpgsql", "pg_trgm", "citext", "hstore", "uuid-ossp"}
    assert target.scalar(
        "select count(*) from public.articles where author = 'AUTHOR3'"  # citext compares case-blind
    ) == 43
    indexdef = "select pg_get_indexdef('public.articles_title_trgm'::regclass)"
    assert target.scalar(indexdef) == with_extensions.scalar(indexdef)
    assert target.scalar(  # the trigram index answers similarity searches
        "select count(*) from public.articles where similarity(title, 'title number 42') > 0.5"
    ) >= 1
    with target.connect() as conn:
        conn.execute("insert into public.tokens (article_id) values (1)")  # the default still works
    assert target.scalar("select count(*) from public.tokens") == 51


def test_the_restore_hint_s_extension_sql_lets_stock_tools_restore_into_an_empty_database(
    tmp_path: Path, with_extensions: Database, make_database: Callable[..., Database]
) -> None:
    # Given a backup of tables that need extensions, uncompressed so pg_restore reads its archives
    store = FileStore(tmp_path / "store")
    backup_id = run_backup(with_extensions.dsn, store, [QualifiedName.parse(t) for t in TABLES],
                           BackupOptions(compression="none")).backup_id
    _, manifest = load_manifest(store, backup_id)
    target = make_database()
    bindir = Path(str(pgtools.bindir()))
    folder = backup_dir(tmp_path / "store", backup_id)

    def run(*argv: object) -> None:
        done = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    # When the hint is followed with psql and pg_restore alone: its SQL, the types, each table's archive
    extension_sql = manifest.restore_hint.split("extensions first, as SQL: ", 1)[1].split(" then: ", 1)[0]
    psql = [bindir / "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", target.conninfo]
    run(*psql, "-c", extension_sql)
    assert manifest.types_object is not None
    run(*psql, "-f", folder / manifest.types_object.key)
    for entry in sorted(manifest.tables, key=lambda e: e.name):  # articles before the tokens that refer to it
        run(bindir / "pg_restore", "--exit-on-error", "-d", target.conninfo, folder / entry.key)

    # Then the tables are the source's, and the extensions are the recorded ones
    assert table_fingerprints(target, TABLES) == table_fingerprints(with_extensions, TABLES)
    assert _extensions(target) == {e.name: e.version for e in manifest.extensions} | {"plpgsql": "1.0"}


def test_a_target_role_that_cannot_install_an_extension_is_refused_and_nothing_changes(
    tmp_path: Path, with_extensions: Database, make_database: Callable[..., Database], migsafe: Cli
) -> None:
    # Given: hstore is a trusted extension, but the role lacks CREATE on the target database
    store = FileStore(tmp_path / "store")
    backup_id = _backup(with_extensions, store)
    target = make_database()
    role = f"no_create_{target.name}"
    with target.connect() as conn:
        conn.execute(psycopg.sql.SQL("create role {} login").format(psycopg.sql.Identifier(role)))
    try:
        as_role = Dsn({**target.dsn.params, "user": role})
        # When
        res = migsafe("restore", "--store", file_url(tmp_path / "store"), "--backup-id", backup_id,
                      "--target-dsn", as_role.conninfo(), "--no-owner")
        # Then: exit 2, each extension and version named, and the target untouched
        assert res.code == 2, res.output
        for name, version in _extensions(with_extensions).items():
            if name in ("pg_trgm", "citext", "hstore", "uuid-ossp"):
                assert f"extension {name} {version}" in res.stderr, res.stderr
        assert "no CREATE privilege on the database" in res.stderr
        assert user_relations(target) == []
        assert set(_extensions(target)) == {"plpgsql"}
    finally:
        with target.connect() as conn:
            conn.execute(psycopg.sql.SQL("drop role {}").format(psycopg.sql.Identifier(role)))


def test_an_older_installed_version_is_refused_naming_the_version_needed(
    tmp_path: Path, with_extensions: Database, make_database: Callable[..., Database]
) -> None:
    # Given: the target has pg_trgm at 1.3; the backup's tables were dumped with a newer one
    store = FileStore(tmp_path / "store")
    backup_id = _backup(with_extensions, store, ["public.articles"])
    needed = _extensions(with_extensions)["pg_trgm"]
    target = make_database()
    with target.connect() as conn:
        conn.execute("create extension pg_trgm version '1.3'")
    # When
    from migsafe.exceptions import RestoreRefused

    with pytest.raises(RestoreRefused) as refused:
        run_restore(store, backup_id, target.dsn, RestoreOptions())
    # Then
    assert f"extension pg_trgm {needed}" in str(refused.value)
    assert f"installed at version 1.3 in the target: version {needed} or newer is needed" in str(refused.value)
    assert user_relations(target) == []
    assert set(_extensions(target)) == {"plpgsql", "pg_trgm"}  # citext and hstore were not installed either


def test_an_extension_in_another_schema_is_refused(
    tmp_path: Path, with_extensions: Database, make_database: Callable[..., Database]
) -> None:
    # Given: the target has citext in schema ext; the dumped tables name public.citext
    store = FileStore(tmp_path / "store")
    backup_id = _backup(with_extensions, store, ["public.articles"])
    target = make_database()
    with target.connect() as conn:
        conn.execute("create schema ext; create extension citext schema ext")
    # When
    from migsafe.exceptions import RestoreRefused

    with pytest.raises(RestoreRefused) as refused:
        run_restore(store, backup_id, target.dsn, RestoreOptions())
    # Then
    assert "is installed in schema ext in the target: the backup's tables name it in public" in str(refused.value)
    assert user_relations(target) == []


def test_a_manifest_written_before_extensions_were_recorded_still_restores(
    tmp_path: Path, make_database: Callable[..., Database]
) -> None:
    # Given: a backup whose manifest has no "extensions" field at all (as older migsafe wrote it)
    import json

    from migsafe import inventory

    source = make_database(users=20)
    store = FileStore(tmp_path / "store")
    backup_id = _backup(source, store, ["public.users"])
    manifest = next((tmp_path / "store").rglob(f"{backup_id}/manifest.json"))
    data = json.loads(manifest.read_text())
    assert data.pop("extensions") == []
    body = json.dumps(data, indent=2).encode()
    manifest.write_bytes(body)
    (manifest.parent / inventory.MANIFEST_SUM).write_bytes(inventory._seal(body))
    target = make_database()
    # When
    report = run_restore(store, backup_id, target.dsn, RestoreOptions(tables=["public.users"]))
    # Then
    assert report.ok, report.problems()
    assert table_fingerprints(target, ["public.users"]) == table_fingerprints(source, ["public.users"])


@pytest.fixture
def trgm_in_own_schema(make_database: Callable[..., Database]) -> Database:
    """A table in public whose index needs pg_trgm, installed in schema "Ext Schema" (made for it)."""
    source = make_database()
    with source.connect() as conn:
        conn.execute('create schema "Ext Schema"; create extension pg_trgm schema "Ext Schema"; '
                     'create table public.docs (id int primary key, body text); '
                     'create index docs_body on public.docs using gist (body "Ext Schema".gist_trgm_ops); '
                     "insert into public.docs select g, 'doc ' || g from generate_series(1, 100) g")
    return source


def test_an_extension_in_its_own_schema_is_installed_there_schema_and_all(
    tmp_path: Path, trgm_in_own_schema: Database, make_database: Callable[..., Database]
) -> None:
    # Given: pg_trgm lives in schema "Ext Schema" (created for it); the table is in public
    source = trgm_in_own_schema
    store = FileStore(tmp_path / "store")
    backup_id = _backup(source, store, ["public.docs"])
    target = make_database()
    # When
    report = run_restore(store, backup_id, target.dsn, RestoreOptions())
    # Then
    assert report.ok, report.problems()
    assert target.scalar("select n.nspname from pg_extension e join pg_namespace n on n.oid = e.extnamespace "
                         "where e.extname = 'pg_trgm'") == "Ext Schema"
    assert table_fingerprints(target, ["public.docs"]) == table_fingerprints(source, ["public.docs"])


def test_a_failed_restore_takes_back_the_extension_and_the_schema_it_created(
    tmp_path: Path, trgm_in_own_schema: Database, make_database: Callable[..., Database]
) -> None:
    # Given a backup whose table needs pg_trgm from a schema of its own, and its dump then tampered with
    source = trgm_in_own_schema
    store = FileStore(tmp_path / "store")
    backup_id = _backup(source, store, ["public.docs"])
    dump = backup_dir(tmp_path / "store", backup_id) / "public.docs.dump.zst"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    target = make_database()
    before = user_relations(target)

    # When the restore fails on the changed dump
    with pytest.raises(ChecksumMismatch):
        run_restore(store, backup_id, target.dsn, RestoreOptions())

    # Then neither the extension nor the schema made for it is left in the target
    assert set(_extensions(target)) == {"plpgsql"}
    assert target.scalar("select count(*) from pg_namespace where nspname = 'Ext Schema'") == 0
    assert user_relations(target) == before


def test_the_version_rule_installs_the_recorded_or_the_lowest_newer_version_and_refuses_older_ones(
    make_database: Callable[..., Database]
) -> None:
    # Given: the versions this server offers for citext (1.4 .. 1.6 in PostgreSQL 15's contrib)
    from migsafe.extensions import plan_installs
    from migsafe.models import ExtensionInfo

    target = make_database()
    with target.connect() as conn:
        offered = sorted(r[0] for r in conn.execute(
            "select version from pg_available_extension_versions where name = 'citext'").fetchall())
        assert "1.4" in offered and "1.5" in offered

        def decide(version: str, name: str = "citext") -> tuple[list[str], list[str]]:
            installs, problems = plan_installs(conn, [ExtensionInfo(name=name, schema_name="public", version=version)])
            return [i.version for i in installs], problems

        # When / Then
        assert decide("1.4") == (["1.4"], [])  # the recorded version, exactly
        assert decide("1.4.5") == (["1.5"], [])  # not offered: the lowest newer one
        versions, problems = decide("99.0")  # only older ones offered: refused, naming the version needed
        assert versions == [] and len(problems) == 1
        assert problems[0].startswith("extension citext 99.0 (schema public)")
        assert "version 99.0 or newer is needed" in problems[0] and "1.6" in problems[0]
        versions, problems = decide("1.0", name="no_such_extension")
        assert versions == [] and "is not available on the target server" in problems[0]
    assert set(_extensions(target)) == {"plpgsql"}  # deciding changes nothing
