"""User types the tables depend on travel with the backup: enums, domains, composites, ranges."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from migsafe.backup import run_backup
from migsafe.identifiers import QualifiedName
from migsafe.inventory import load_manifest
from migsafe.restore import RestoreOptions, run_restore
from migsafe.store.file import FileStore
from pgsupport import Database, table_fingerprints

SCHEMA = """
create schema billing;
create type billing.currency as enum ('EUR', 'USD', 'it''s odd');
create domain billing.amount as numeric(12, 2) default 0 not null check (value >= 0);
create domain billing.price_currency as billing.currency check (value <> 'it''s odd');
create type billing.money_pair as (amount billing.amount, currency billing.currency);
create type billing.span as range (subtype = int4);
create table billing.invoices (
    id bigint primary key,
    total billing.amount,
    currency billing.price_currency not null,
    split billing.money_pair,
    valid billing.span
);
insert into billing.invoices
select g, g * 1.5, (array['EUR', 'USD'])[1 + g % 2]::billing.currency, row(g, 'EUR')::billing.money_pair,
       billing.span(g, g + 10)
from generate_series(1, 500) g;
"""


def test_enum_domain_composite_and_range_types_round_trip(
    tmp_path: Path, make_database: Callable[..., Database]
) -> None:
    # Given
    source = make_database()
    with source.connect() as conn:
        conn.execute(SCHEMA)
    store = FileStore(tmp_path / "store")
    tables = ["billing.invoices"]
    # When
    backup = run_backup(source.dsn, store, [QualifiedName.parse(t) for t in tables])
    target = make_database()
    report = run_restore(store, backup.backup_id, target.dsn, RestoreOptions())
    # Then
    _, manifest = load_manifest(store, backup.backup_id)
    kinds = {t.name: t.kind for t in manifest.types}
    assert kinds == {
        "billing.currency": "enum",
        "billing.amount": "domain",
        "billing.price_currency": "domain",
        "billing.money_pair": "composite",
        "billing.span": "range",
    }
    assert report.ok, report.problems()
    assert table_fingerprints(target, tables) == table_fingerprints(source, tables)
    assert target.scalar("select count(*) from billing.invoices where currency::text = 'USD'") == 250
    assert target.scalar(
        "select pg_get_constraintdef(oid) from pg_constraint where conname = 'amount_check'"
    ) == ("CHECK ((VALUE >= (0)::numeric))")


def test_enum_and_domain_only_backup_needs_no_schema_dump(
    tmp_path: Path, make_database: Callable[..., Database]
) -> None:
    # Given: no range type, so every DDL is written from the catalog
    source = make_database()
    with source.connect() as conn:
        conn.execute(
            SCHEMA.replace("create type billing.span as range (subtype = int4);", "")
            .replace("    valid billing.span\n", "    valid int4range\n")
            .replace("billing.span(g, g + 10)", "int4range(g, g + 10)")
            .replace("split billing.money_pair,", "split billing.money_pair,")
        )
    store = FileStore(tmp_path / "store")
    # When
    backup = run_backup(source.dsn, store, [QualifiedName.parse("billing.invoices")])
    # Then: the catalog's DDL recreates the types exactly in an empty database
    _, manifest = load_manifest(store, backup.backup_id)
    currency = next(t for t in manifest.types if t.name == "billing.currency")
    assert currency.ddl == "CREATE TYPE \"billing\".\"currency\" AS ENUM ('EUR', 'USD', 'it''s odd');"
    target = make_database()
    assert run_restore(store, backup.backup_id, target.dsn, RestoreOptions()).ok
    assert target.scalar("select enum_range(null::billing.currency)::text") == '{EUR,USD,"it\'s odd"}'
