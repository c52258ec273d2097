"""The manifest is sealed by a sha256 written after it: any change to it is caught (exit 1)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from backup_helpers import backup_dir, backup_id_from, file_url
from migsafe import inventory
from migsafe.exceptions import BackupIncomplete, ManifestCorrupt
from migsafe.store import FileStore
from pgsupport import CliResult, Database, write_plan

Cli = Callable[..., CliResult]


@pytest.fixture
def backed_up(seeded: Database, migsafe: Cli, tmp_path: Path) -> tuple[Path, str]:
    store = tmp_path / "store"
    plan = write_plan(tmp_path / "plan.toml", seeded, file_url(store))
    res = migsafe("backup", "--plan", str(plan))
    assert res.code == 0, res.output
    return store, backup_id_from(res.stdout)


def _edit_rows(manifest: Path) -> None:
    data = json.loads(manifest.read_text())
    data["tables"][0]["rows"] += 1
    manifest.write_text(json.dumps(data, indent=2))


@pytest.mark.parametrize(
    "damage",
    [
        _edit_rows,
        lambda m: m.write_text(m.read_text()[:-40]),  # no longer JSON
        lambda m: m.write_text(m.read_text().replace('"rows"', '"rows" ', 1)),  # same content, other bytes
    ],
    ids=["rows-edited", "not-json", "whitespace"],
)
def test_a_changed_manifest_fails_verify_and_restore_with_exit_1(
    damage: Callable[[Path], None], backed_up: tuple[Path, str], migsafe: Cli, make_database: Callable[..., Database]
) -> None:
    # Given: a complete backup whose manifest was edited afterwards
    store, bid = backed_up
    damage(backup_dir(store, bid) / "manifest.json")
    target = make_database()
    # When
    verified = migsafe("verify", "--store", file_url(store), "--backup-id", bid)
    restored = migsafe("restore", "--store", file_url(store), "--backup-id", bid, "--target-dsn", target.conninfo)
    # Then: both say the manifest changed, exit 1, and the target is untouched
    for res in (verified, restored):
        assert res.code == 1, res.output
        assert "manifest changed/corrupt" in res.stderr and "Traceback" not in res.output
    assert target.scalar("select count(*) from pg_tables where schemaname = 'public'") == 0


def test_a_manifest_without_its_seal_is_incomplete_not_complete(backed_up: tuple[Path, str]) -> None:
    # Given: a backup killed between writing its manifest and its seal
    store, bid = backed_up
    (backup_dir(store, bid) / "manifest.json.sha256").unlink()
    # When / Then
    fs = FileStore(store)
    assert not next(r for r in inventory.list_backups(fs) if r.backup_id == bid).complete
    with pytest.raises(BackupIncomplete):
        inventory.load_manifest(fs, bid)


def test_the_seal_is_the_sha256_of_the_manifest_bytes(backed_up: tuple[Path, str]) -> None:
    store, bid = backed_up
    folder = backup_dir(store, bid)
    sealed = (folder / "manifest.json.sha256").read_text().split()[0]
    assert sealed == hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
    # a consistent re-seal is accepted (the seal is a checksum, not a signature: it catches accidents
    # and careless edits; the store's permissions keep out the rest)
    _edit_rows(folder / "manifest.json")
    with pytest.raises(ManifestCorrupt):
        inventory.load_manifest(FileStore(store), bid)


def test_a_row_count_differing_from_a_consistently_resealed_manifest_rolls_the_restore_back(
    backed_up: tuple[Path, str], migsafe: Cli, make_database: Callable[..., Database]
) -> None:
    # Given: a manifest whose row count was changed *and* resealed, so that only the restore's own
    # count check (inside its transaction) can notice
    store, bid = backed_up
    folder = backup_dir(store, bid)
    _edit_rows(folder / "manifest.json")
    digest = hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
    (folder / "manifest.json.sha256").write_text(f"{digest}  manifest.json\n")
    target = make_database()
    # When
    res = migsafe("restore", "--store", file_url(store), "--backup-id", bid, "--target-dsn", target.conninfo)
    # Then: a verification failure, rolled back: the target holds nothing
    assert res.code == 1, res.output
    assert "Traceback" not in res.output
    assert target.scalar("select count(*) from pg_tables where schemaname = 'public'") == 0


def test_a_seal_changed_anywhere_is_corrupt(backed_up: tuple[Path, str]) -> None:
    # Given: one byte of the seal's file name part flipped (found by the chaos suite's byte flips)
    store, bid = backed_up
    seal = backup_dir(store, bid) / "manifest.json.sha256"
    data = bytearray(seal.read_bytes())
    data[70] ^= 0x01
    seal.write_bytes(bytes(data))
    # When / Then
    with pytest.raises(ManifestCorrupt):
        inventory.load_manifest(FileStore(store), bid)
