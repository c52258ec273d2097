"""Bytes that change as the restore streams them are caught before anything is swapped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from migsafe.backup import BackupOptions, run_backup
from migsafe.exceptions import ChecksumMismatch
from migsafe.identifiers import QualifiedName
from migsafe.restore import RestoreOptions, run_restore
from migsafe.store.file import FileStore
from pgsupport import Database

from examples.enum_uppercase import seed


class FlipsWhileStreaming(FileStore):
    """Serves one dump with a changed byte (the restore hashes as it streams: there is no earlier pass)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: dict[str, int] = {}
        self.flipped = 0  # dumps served with a changed byte

    def read(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        self.reads[key] = self.reads.get(key, 0) + 1
        first = True
        for chunk in super().read(key, chunk_size):
            if "user_invitations.dump" in key and first and len(chunk) > 100:
                chunk = chunk[:-50] + bytes([chunk[-50] ^ 0x01]) + chunk[-49:]
                self.flipped += 1
            first = False
            yield chunk


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_bytes_changing_during_restore_roll_everything_back(
    tmp_path: Path, seeded: Database, make_database, compression: str
) -> None:  # type: ignore[no-untyped-def]
    # Given: a good backup, read back through a store that changes a byte of one dump
    store = FlipsWhileStreaming(tmp_path / "store")
    backup = run_backup(
        seeded.dsn, store, [QualifiedName.parse(t) for t in seed.TABLES], BackupOptions(compression=compression)
    )
    target = make_database()
    # When / Then: the changed bytes are caught (by zstd's frame check or our digest), never committed
    with pytest.raises(ChecksumMismatch, match="checksum mismatch"):
        run_restore(store, backup.backup_id, target.dsn, RestoreOptions())
    # (the changed bytes were really served: the refusal is theirs, not a restore that read nothing)
    assert store.flipped >= 1
    assert target.scalar("select count(*) from pg_tables where schemaname = 'public'") == 0


class CountingStore(FileStore):
    """Records every key read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.read_keys: list[str] = []

    def read(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        self.read_keys.append(key)
        yield from super().read(key, chunk_size)


def test_finding_one_backup_reads_only_its_own_folder(tmp_path: Path, seeded: Database) -> None:
    # Given: two backups in one store
    from migsafe.inventory import load_manifest

    store = CountingStore(tmp_path / "store")
    tables = [QualifiedName.parse("users")]
    first = run_backup(seeded.dsn, store, tables)
    second = run_backup(seeded.dsn, store, tables)
    store.read_keys.clear()
    # When
    _, manifest = load_manifest(store, first.backup_id)
    # Then: a restore or verify of one backup never reads the other backups' manifests
    assert manifest.backup_id == first.backup_id
    assert store.read_keys and all(first.backup_id in k for k in store.read_keys)
    assert not any(second.backup_id in k for k in store.read_keys)
