"""Typed records shared by the steps: the manifest, backup listings, restore and verify reports."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ColumnInfo(_Model):
    name: str
    type: str
    nullable: bool
    default: str | None = None


class ConstraintInfo(_Model):
    name: str
    type: Literal["p", "u", "f", "c", "x", "t", "n"] | str
    definition: str
    validated: bool = True
    references: str | None = None  # for foreign keys: the referenced table, schema.name


class TypeInfo(_Model):
    """A user-defined type the backed-up tables use; created before the tables on restore."""

    name: str  # schema.name
    kind: Literal["enum", "domain", "composite", "range"] | str
    labels: list[str] = Field(default_factory=list)
    ddl: str  # CREATE statement as pg_dump wrote it (owner statements stripped)


class ExtensionInfo(_Model):
    """An extension the backed-up tables depend on (a type, an operator class, a default's function...)."""

    name: str
    schema_name: str  # where its objects live: the dumped SQL names them there (public.gin_trgm_ops)
    version: str
    requires: list[str] = Field(default_factory=list)  # other extensions it needs (listed before it)
    used_by: list[str] = Field(default_factory=list)  # the backed-up tables that need it


class ObjectEntry(_Model):
    key: str
    bytes: int
    sha256: str


class TableEntry(_Model):
    name: str  # schema.name
    key: str  # object key, relative to the backup folder
    bytes: int
    sha256: str
    rows: int
    relation_bytes: int
    owner: str
    columns: list[ColumnInfo]
    indexes: list[str]
    constraints: list[ConstraintInfo]
    types: list[str] = Field(default_factory=list)
    partitions: list[str] = Field(default_factory=list)  # dumped in the same archive as the parent
    seconds: float = 0.0
    # order-independent content digest (catalog.fingerprint), taken in the dump's snapshot; None in
    # manifests written before it existed (their restores skip the comparison). Its text marks its
    # method: "rec:<rows>:<hex>" (record hash), or "<rows>:<hex>" (text hash, manifests before it)
    fingerprint: str | None = None
    schema_name: str | None = None  # the schema, verbatim (``name`` is ambiguous when it holds a dot)
    # a large table split into parallel parts (issue 11): ``key`` is then pg_dump's archive of its
    # schema (and its sequences' values) without rows, and its rows are in ``parts``, each the
    # text-format COPY output (UTF8) of a ctid range of the same snapshot, holding ``copy_columns``.
    # Empty in manifests written before, and for tables dumped whole.
    parts: list[ObjectEntry] = Field(default_factory=list)
    copy_columns: list[str] = Field(default_factory=list)

    @property
    def foreign_keys(self) -> list[ConstraintInfo]:
        return [c for c in self.constraints if c.type == "f"]


class SourceInfo(_Model):
    host: str
    port: int
    database: str
    user: str | None = None
    server_version: str


class Manifest(_Model):
    format: int = MANIFEST_FORMAT
    backup_id: str
    created_at: datetime
    completed_at: datetime
    tool: str = "migsafe"
    tool_version: str
    source: SourceInfo
    plan_sha256: str | None = None
    alembic_revision: str | None = None
    compression: Literal["zstd", "gzip", "none"]
    snapshot_consistent: bool = True
    tables: list[TableEntry]
    types: list[TypeInfo] = Field(default_factory=list)
    types_object: ObjectEntry | None = None
    # installed by a restore before the tables, required ones first; empty in manifests written
    # before it existed (those restore as before)
    extensions: list[ExtensionInfo] = Field(default_factory=list)
    restore_hint: str = ""

    def table(self, name: str) -> TableEntry:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def total_bytes(self) -> int:
        return sum(t.bytes + sum(p.bytes for p in t.parts) for t in self.tables) + (
            self.types_object.bytes if self.types_object else 0)

    def objects(self) -> list[ObjectEntry]:
        out = [o for t in self.tables for o in (ObjectEntry(key=t.key, bytes=t.bytes, sha256=t.sha256), *t.parts)]
        if self.types_object:
            out.append(self.types_object)
        return out


class BackupRef(_Model):
    """One backup folder in a store, as listed."""

    backup_id: str
    date: str
    prefix: str  # key prefix of the folder, ending in '/'
    complete: bool
    tables: list[str] = Field(default_factory=list)
    bytes: int
    created_at: datetime | None = None
    objects: int = 0


class BackupResult(_Model):
    backup_id: str
    url: str
    bytes: int
    seconds: float
    tables: list[TableEntry]
    manifest_key: str


class ObjectCheck(_Model):
    key: str
    expected_sha256: str
    actual_sha256: str | None
    expected_bytes: int
    actual_bytes: int | None
    ok: bool
    problem: str | None = None


class VerifyReport(_Model):
    backup_id: str
    objects: list[ObjectCheck]

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.objects)


class TableRestoreCheck(_Model):
    name: str
    rows_expected: int
    rows_restored: int
    foreign_keys: int
    foreign_keys_valid: int
    problems: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class TypeRestoreCheck(_Model):
    name: str
    labels_expected: list[str]
    labels_found: list[str] | None
    created: bool

    @property
    def ok(self) -> bool:
        return self.labels_found == self.labels_expected


class MergeCount(_Model):
    """What ``restore --merge`` did to one table."""

    name: str
    inserted: int = 0
    updated: int = 0


class RestoreReport(_Model):
    backup_id: str
    target: str  # masked
    tables: list[TableRestoreCheck]
    types: list[TypeRestoreCheck]
    replaced: list[str] = Field(default_factory=list)
    seconds: float = 0.0
    restore_id: str = ""
    # how long the target tables were held ACCESS EXCLUSIVE by the swap (0 when nothing was replaced)
    lock_window_seconds: float = 0.0
    undo_schema: str | None = None  # where the replaced tables wait for `restore --undo` or prune
    merged: list[MergeCount] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    # incoming foreign keys (of tables outside the restore) that failed VALIDATE after the swap: the
    # restored tables lack rows those tables still reference. The swap stands (undo reverts it).
    invalid_foreign_keys: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (all(t.ok for t in self.tables) and all(t.ok for t in self.types)
                and not self.invalid_foreign_keys)

    def problems(self) -> list[str]:
        out = [p for t in self.tables for p in t.problems]
        out += [
            f"{fk} (the tables are swapped in: fix the referencing rows and VALIDATE CONSTRAINT, or run "
            f"restore --undo {self.restore_id})"
            for fk in self.invalid_foreign_keys
        ]
        out += [
            f"type {t.name}: labels {t.labels_found} differ from the backup's {t.labels_expected}"
            for t in self.types
            if not t.ok
        ]
        return out


class TableDiff(_Model):
    """One table of a backup compared with the live table, by primary key."""

    name: str
    key: list[str]  # primary-key columns
    only_in_backup: int  # rows deleted since the backup
    only_in_target: int  # rows written since the backup
    changed: int  # rows whose key exists in both, with other values
    sample: dict[str, list[dict[str, object]]] = Field(default_factory=dict)  # category -> keys (+ columns)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def equal(self) -> bool:
        return not (self.only_in_backup or self.only_in_target or self.changed)


class DiffReport(_Model):
    backup_id: str
    target: str  # masked
    restore_id: str = ""
    tables: list[TableDiff]
    seconds: float = 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def equal(self) -> bool:
        return all(t.equal for t in self.tables)
