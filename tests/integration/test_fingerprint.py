"""The per-table content fingerprint: what it must see, where it must agree, and old manifests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from migsafe import catalog
from migsafe.backup import run_backup
from migsafe.identifiers import QualifiedName
from migsafe.inventory import load_manifest, write_manifest
from migsafe.restore import RestoreOptions, run_restore
from migsafe.store.file import FileStore
from pgsupport import Database

T = QualifiedName("public", "t")
U = QualifiedName("public", "u")

# an enum column, an enum array, a domain over the enum, a text, and types hashed through their text
SHAPE = """
create type colour as enum ('red', 'green', 'blue');
create domain shade as colour;
create table t (id int primary key, c colour, cs colour[], s shade, note text, amount numeric, doc jsonb);
"""
ROWS = """
insert into t values (1, 'red', '{red,green}', 'blue', 'one', 1.5, '{"a": 1}'),
                     (2, 'green', '{}', 'red', '', 2.0, null),
                     (3, null, null, null, null, null, '[]');
"""


def _fingerprint(db: Database, table: QualifiedName = T, method: catalog.FingerprintMethod = "record") -> str:
    with db.connect() as conn:
        return catalog.fingerprint(conn, table, method)


@pytest.fixture
def shaped(make_database: Callable[..., Database]) -> Database:
    db = make_database()
    with db.connect() as conn:
        conn.execute(SHAPE)
        conn.execute(ROWS)
    return db


@pytest.mark.parametrize("method", ["record", "text"])
@pytest.mark.parametrize(
    "change",
    [
        "update t set c = 'blue' where id = 1",  # an enum column
        "update t set cs = '{green,red}' where id = 1",  # an enum array, same labels in another order
        "update t set s = 'green' where id = 2",  # a domain over the enum
        "update t set note = null where id = 2",  # '' becomes NULL
        "update t set note = '' where id = 3",  # NULL becomes ''
        "update t set cs = null where id = 2",  # an empty array becomes NULL
        "update t set amount = 1.50 where id = 1",  # an equal numeric, another scale
    ],
)
def test_fingerprint_sees_every_changed_value(shaped: Database, method: catalog.FingerprintMethod,
                                              change: str) -> None:
    # Given the fingerprint of a table with enums, arrays, a domain, texts and NULLs
    before = _fingerprint(shaped, method=method)

    # When one value changes
    with shaped.connect() as conn:
        conn.execute(change)

    # Then the fingerprint changes
    assert _fingerprint(shaped, method=method) != before


@pytest.mark.parametrize("method", ["record", "text"])
def test_fingerprint_sees_values_swapped_between_rows_and_between_tables(
    shaped: Database, method: catalog.FingerprintMethod
) -> None:
    # Given a second table of the same shape, and both fingerprints
    with shaped.connect() as conn:
        conn.execute("create table u (like t)")
        conn.execute("insert into u select id, 'blue', cs, s, 'other', amount, doc from t")
    before = (_fingerprint(shaped, T, method), _fingerprint(shaped, U, method))

    # When two rows of t swap their enum values (every column's values stay in the table)
    with shaped.connect() as conn:
        conn.execute("update t set c = case id when 1 then 'green'::colour else 'red'::colour end where id in (1, 2)")
    swapped_rows = _fingerprint(shaped, T, method)
    # and, after that is undone, a row of t swaps its note with the row of u of the same id
    with shaped.connect() as conn:
        conn.execute("update t set c = case id when 1 then 'red'::colour else 'green'::colour end where id in (1, 2)")
        assert _fingerprint(shaped, T, method) == before[0]
        conn.execute("update t set note = 'other' where id = 1")
        conn.execute("update u set note = 'one' where id = 1")

    # Then every swap changes the fingerprint of each table it touched
    assert swapped_rows != before[0]
    assert _fingerprint(shaped, T, method) != before[0]
    assert _fingerprint(shaped, U, method) != before[1]


def test_fingerprint_of_equal_rows_agrees_across_databases_whatever_the_enum_oids(
    shaped: Database, make_database: Callable[..., Database]
) -> None:
    # Given a second database with the same table, its types created after others (other OIDs),
    # and its rows inserted in another order
    other = make_database()
    with other.connect() as conn:
        conn.execute("create type filler as enum ('x'); create table spacer (f filler)")
        conn.execute(SHAPE)
        conn.execute(ROWS.replace("(1, 'red'", "(0, 'red'"))  # id 0 for now: inserted first ...
        conn.execute("update t set id = 1 where id = 0")  # ... and rewritten last, elsewhere on disk
    with shaped.connect() as a, other.connect() as b:
        oids = [c.execute("select 'colour'::regtype::oid").fetchone() for c in (a, b)]
    assert oids[0] != oids[1]

    # When both are fingerprinted
    prints = [_fingerprint(shaped), _fingerprint(other)]

    # Then they are equal, and marked with their method
    assert prints[0] == prints[1]
    assert prints[0].startswith("rec:3:")
    assert catalog.fingerprint_method(prints[0]) == "record"
    assert catalog.fingerprint_rows(prints[0]) == 3


def _rewrite_fingerprints(store: FileStore, backup_id: str, prints: dict[str, str]) -> None:
    """Rewrite a manifest's fingerprints and seal it again, as an older migsafe would have written it."""
    ref, manifest = load_manifest(store, backup_id)
    tables = [t.model_copy(update={"fingerprint": prints[t.name]}) for t in manifest.tables]
    write_manifest(store, ref.prefix, manifest.model_copy(update={"tables": tables}))


def test_a_manifest_with_text_fingerprints_still_verifies_on_restore(
    shaped: Database, make_database: Callable[..., Database], tmp_path: Path
) -> None:
    # Given a backup whose manifest holds text-method fingerprints, as migsafe wrote them before
    store = FileStore(tmp_path / "store")
    backup = run_backup(shaped.dsn, store, [T])
    assert catalog.fingerprint_method(backup.tables[0].fingerprint or "") == "record"
    legacy = _fingerprint(shaped, method="text")
    assert catalog.fingerprint_method(legacy) == "text"
    _rewrite_fingerprints(store, backup.backup_id, {"public.t": legacy})

    # When it is restored into an empty database
    report = run_restore(store, backup.backup_id, make_database().dsn, RestoreOptions())

    # Then the staged table is checked with the text method, and passes
    assert report.ok, report.problems()


@pytest.mark.parametrize("method", ["record", "text"])
def test_a_fingerprint_that_differs_stops_the_restore(
    shaped: Database, make_database: Callable[..., Database], tmp_path: Path, method: catalog.FingerprintMethod
) -> None:
    # Given a backup whose manifest fingerprint (of either method) is that of other content
    store = FileStore(tmp_path / "store")
    backup = run_backup(shaped.dsn, store, [T])
    with shaped.connect() as conn:
        conn.execute("update t set c = 'blue' where id = 2")
    _rewrite_fingerprints(store, backup.backup_id, {"public.t": _fingerprint(shaped, method=method)})
    target = make_database()

    # When it is restored
    from migsafe.exceptions import RestoreVerificationFailed

    with pytest.raises(RestoreVerificationFailed, match="content fingerprint"):
        run_restore(store, backup.backup_id, target.dsn, RestoreOptions())

    # Then nothing is left in the target
    assert target.scalar("select count(*) from pg_class where relname = 't'") == 0


def test_a_domain_over_an_enum_in_public_round_trips(
    shaped: Database, make_database: Callable[..., Database], tmp_path: Path
) -> None:
    # Given a backup of a table with a domain over an enum, both in public (on the search path)
    store = FileStore(tmp_path / "store")
    backup = run_backup(shaped.dsn, store, [T])
    target = make_database()

    # When it is restored into an empty database
    report = run_restore(store, backup.backup_id, target.dsn, RestoreOptions())

    # Then the types are created and the rows are the source's
    assert report.ok, report.problems()
    assert _fingerprint(target) == _fingerprint(shaped)
