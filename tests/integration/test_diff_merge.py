"""Delayed discovery (the seed's scenario D): diff a backup against the live tables, then merge."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from backup_helpers import backup_id_from, file_url
from pgsupport import CliResult, Database, table_fingerprints, write_plan

from examples.enum_uppercase import seed

TABLES = seed.TABLES
Cli = Callable[..., CliResult]


def _backup(migsafe: Cli, tmp_path: Path, db: Database, tables: list[str] | None = None) -> tuple[Path, str]:
    store = tmp_path / "store"
    plan = write_plan(tmp_path / "plan.toml", db, file_url(store), tables)
    result = migsafe("backup", "--plan", str(plan))
    assert result.code == 0, result.output
    return store, backup_id_from(result.stdout)


def _lived_in(make_database: Callable[..., Database], migsafe: Cli, store: Path, backup_id: str) -> Database:
    """A target restored from the backup, then: 7 invitations deleted, 4 changed, 3 new; 2 new users."""
    target = make_database()
    restored = migsafe("restore", "--store", file_url(store), "--backup-id", backup_id, "--target-dsn", target.url)
    assert restored.code == 0, restored.output
    with target.connect() as conn:
        conn.execute("delete from user_invitations where id in (3, 5, 8, 13, 21, 34, 55)")
        conn.execute("update user_invitations set status = 'revoked', email = 'x@y' where id in (100, 200, 300)")
        conn.execute("update user_invitations set expires_at = now() where id = 400")
        conn.execute("insert into users (email, full_name) values ('late1@x', 'late'), ('late2@x', 'late')")
        conn.execute("insert into user_invitations (email, invited_by, application) "
                     "select 'late' || g || '@x', 1, 'market_edge' from generate_series(1, 3) g")
    return target


def _diff(migsafe: Cli, store: Path, backup_id: str, target: Database, *args: str) -> CliResult:
    return migsafe("diff", "--store", file_url(store), "--backup-id", backup_id, "--target-dsn", target.url, *args)


def test_diff_finds_exactly_the_seeded_changes(
    seeded: Database, make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a backup, and a target that was restored from it and then changed in known ways
    store, backup_id = _backup(migsafe, tmp_path, seeded)
    untouched = make_database()
    assert migsafe("restore", "--store", file_url(store), "--backup-id", backup_id,
                   "--target-dsn", untouched.url).code == 0
    target = _lived_in(make_database, migsafe, store, backup_id)
    before = table_fingerprints(target, TABLES)

    # When each is diffed against the backup
    same = _diff(migsafe, store, backup_id, untouched)
    result = _diff(migsafe, store, backup_id, target, "--json")

    # Then the untouched one is equal (exit 0), and the changed one differs by exactly the seeded rows
    assert same.code == 0, same.output
    assert result.code == 1, result.output
    report = json.loads(result.stdout)
    assert report["equal"] is False
    by_name = {t["name"]: t for t in report["tables"]}
    inv = by_name["public.user_invitations"]
    assert (inv["only_in_backup"], inv["only_in_target"], inv["changed"]) == (7, 3, 4)
    assert sorted(k["id"] for k in inv["sample"]["only_in_backup"]) == [3, 5, 8, 13, 21, 34, 55]
    changed = {c["key"]["id"]: c["columns"] for c in inv["sample"]["changed"]}
    assert changed == {100: ["email", "status"], 200: ["email", "status"], 300: ["email", "status"],
                       400: ["expires_at"]}
    users = by_name["public.users"]
    assert (users["only_in_backup"], users["only_in_target"], users["changed"]) == (0, 2, 0)
    assert by_name["public.user_application_access"]["equal"] is True
    # and the target was not touched, no staging left behind
    assert table_fingerprints(target, TABLES) == before
    assert target.scalar("select count(*) from pg_namespace where starts_with(nspname, 'migsafe_')") == 0


def test_diff_tells_values_apart_as_their_text_does(
    make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a backup of a table with columns compared as they are (int, text, timestamptz) and
    # columns compared through their text (numeric, interval, jsonb, an array of numerics)
    db = make_database()
    with db.connect() as conn:
        conn.execute("create table public.m (id int primary key, n numeric, i interval, j jsonb, a numeric[], "
                     "t text, ts timestamptz, k int)")
        conn.execute("""insert into public.m select g, 1.0, '1 day', '{"a": 1}', '{1.5}', 'x', '2026-01-01', 7 """
                     "from generate_series(1, 20) g")
    store, backup_id = _backup(migsafe, tmp_path, db, ["public.m"])
    # and values changed since: some only in their text form (equal as numbers or as intervals)
    with db.connect() as conn:
        conn.execute("update public.m set n = 1.00 where id = 1")
        conn.execute("update public.m set i = '24 hours' where id = 2")
        conn.execute("""update public.m set j = '{"a": 2}' where id = 3""")
        conn.execute("update public.m set a = '{1.50}' where id = 4")
        conn.execute("update public.m set t = 'y' where id = 5")
        conn.execute("update public.m set ts = ts + interval '1 microsecond' where id = 6")
        conn.execute("update public.m set k = 8, t = 'z' where id = 7")
        conn.execute("update public.m set n = 1.0, ts = '2026-01-01' where id = 8")  # rewritten, same values

    # When the table is diffed against its backup
    result = _diff(migsafe, store, backup_id, db, "--json")

    # Then every changed row is found, naming exactly its changed columns, and no other
    assert result.code == 1, result.output
    m = json.loads(result.stdout)["tables"][0]
    assert (m["only_in_backup"], m["only_in_target"], m["changed"]) == (0, 0, 7)
    assert {c["key"]["id"]: c["columns"] for c in m["sample"]["changed"]} == {
        1: ["n"], 2: ["i"], 3: ["j"], 4: ["a"], 5: ["t"], 6: ["ts"], 7: ["t", "k"]}


def test_merge_brings_back_deleted_rows_and_keeps_new_ones(
    seeded: Database, make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a lived-in target
    store, backup_id = _backup(migsafe, tmp_path, seeded)
    target = _lived_in(make_database, migsafe, store, backup_id)

    # When the backup is merged into it
    result = migsafe("restore", "--store", file_url(store), "--backup-id", backup_id, "--target-dsn", target.url,
                     "--merge", "--json")

    # Then the deleted invitations are back, the new rows stay, changed rows keep their new values
    assert result.code == 0, result.output
    merged = {m["name"]: (m["inserted"], m["updated"]) for m in json.loads(result.stdout)["merged"]}
    assert merged == {"public.users": (0, 0), "public.user_application_access": (0, 0),
                      "public.user_invitations": (7, 0)}
    assert target.scalar("select count(*) from user_invitations") == 1000 + 3
    assert target.scalar("select count(*) from user_invitations where starts_with(email, 'late')") == 3
    assert target.scalar("select count(*) from users") == 2002
    assert target.scalar("select status::text from user_invitations where id = 100") == "revoked"
    # and a diff now only sees the rows written since and the changed ones
    after = json.loads(_diff(migsafe, store, backup_id, target, "--json").stdout)
    inv = {t["name"]: t for t in after["tables"]}["public.user_invitations"]
    assert (inv["only_in_backup"], inv["only_in_target"], inv["changed"]) == (0, 3, 4)


def test_merge_overwrite_also_rewrites_changed_rows(
    seeded: Database, make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a lived-in target
    store, backup_id = _backup(migsafe, tmp_path, seeded)
    target = _lived_in(make_database, migsafe, store, backup_id)

    # When the backup is merged with --merge=overwrite
    result = migsafe("restore", "--store", file_url(store), "--backup-id", backup_id, "--target-dsn", target.url,
                     "--merge=overwrite", "--json")

    # Then deleted rows are back, changed rows hold the backup's values, and the new rows stay
    assert result.code == 0, result.output
    merged = {m["name"]: (m["inserted"], m["updated"]) for m in json.loads(result.stdout)["merged"]}
    assert merged["public.user_invitations"] == (7, 4)
    after = json.loads(_diff(migsafe, store, backup_id, target, "--json").stdout)
    inv = {t["name"]: t for t in after["tables"]}["public.user_invitations"]
    assert (inv["only_in_backup"], inv["only_in_target"], inv["changed"]) == (0, 3, 0)
    assert target.scalar("select status::text from user_invitations where id = 100") == seeded.scalar(
        "select status::text from user_invitations where id = 100")


def test_tables_without_a_primary_key_are_refused_by_diff_and_merge(
    make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a backup of a table with a primary key and one without
    source = make_database()
    with source.connect() as conn:
        conn.execute("create table keyed (id int primary key, v text); create table loose (v text); "
                     "insert into keyed values (1, 'a'); insert into loose values ('a')")
    store, backup_id = _backup(migsafe, tmp_path, source, ["public.keyed", "public.loose"])
    target = make_database()
    assert migsafe("restore", "--store", file_url(store), "--backup-id", backup_id,
                   "--target-dsn", target.url).code == 0

    # When it is diffed, and merged
    diffed = _diff(migsafe, store, backup_id, target)
    merged = migsafe("restore", "--store", file_url(store), "--backup-id", backup_id, "--target-dsn", target.url,
                     "--merge")

    # Then both are refused as bad input, naming the table without a key, and nothing was staged
    for result in (diffed, merged):
        assert result.code == 2, result.output
        assert "public.loose" in result.output and "primary key" in result.output
        assert "public.keyed" not in result.output.split("primary key")[1]
    assert target.scalar("select count(*) from pg_namespace where starts_with(nspname, 'migsafe_')") == 0
