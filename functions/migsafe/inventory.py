"""What a store holds: listing backups, loading manifests, re-verifying checksums, pruning.

A backup is *complete* when its folder holds ``manifest.json`` and, written after it,
``manifest.json.sha256``: the sha256 of the manifest's exact bytes. The manifest lists every
object's sha256 and size, and the checksum file seals the manifest itself, so editing a row count
or an object's sha256 in it is caught. A folder without both files died midway (*incomplete*, never
restored from, exit 2); a manifest that no longer matches its checksum, or is not valid JSON, is
*corrupt* (verify and restore exit 1: "manifest changed/corrupt"). Hidden partial files (file
store) and unfinished multipart uploads (S3) left by killed writers count towards their folder's
bytes, make it incomplete, and are removed by ``prune``.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError

from .exceptions import (
    BackupFailed,
    BackupIncomplete,
    BackupNotFound,
    ChecksumMismatch,
    InputError,
    ManifestCorrupt,
    ObjectMissing,
)
from .models import MANIFEST_NAME, BackupRef, Manifest, ObjectCheck, VerifyReport
from .store import ObjectInfo, Store

MANIFEST_SUM = MANIFEST_NAME + ".sha256"
LEASE_NAME = "writer.lease"  # a running backup's heartbeat: prune leaves its folder alone
LEASE_SECONDS = 600  # a heartbeat older than this is a dead writer's
HEARTBEAT_SECONDS = 60


class WriterLease:
    """The heartbeat of a backup in progress: ``<folder>/writer.lease`` rewritten every minute.

    Prune deletes incomplete backups older than a day; a backup that runs longer than that must not
    lose its dumps to it, so prune skips a folder whose lease is fresh. The lease goes when the
    writer finishes (or fails); a killed writer's lease just ages out.
    """

    def __init__(self, store: Store, prefix: str) -> None:
        import threading

        self._store, self._key = store, prefix + LEASE_NAME
        self._stop = threading.Event()
        self._beat()
        self._thread = threading.Thread(target=self._run, name="migsafe-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        import json
        import os
        import socket

        body = {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": datetime.now(UTC).isoformat()}
        self._store.put_bytes(self._key, json.dumps(body).encode())

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self._beat()
            except Exception:  # noqa: S112 - a missed beat only risks a prune; the backup goes on
                continue

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(Exception):  # a stale lease ages out by itself
            self._store.delete([self._key])


def writer_alive(store: Store, prefix: str, now: datetime) -> bool:
    """True while the folder's lease (if any) is fresh: its writer may still be running."""
    import json

    try:
        lease = json.loads(store.get_bytes(prefix + LEASE_NAME))
        beat = datetime.fromisoformat(lease["heartbeat"])
    except (ObjectMissing, ValueError, KeyError, TypeError):
        return False
    return (now - beat).total_seconds() < LEASE_SECONDS

_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")
_FOLDER = re.compile(r"^(?P<date>\d{4}-\d{2}-\d{2})/(?P<id>\d{8}T\d{6}Z-[0-9a-f]{6})/(?P<name>.+)$")


def _created(backup_id: str) -> datetime:
    return datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def check_backup_id(backup_id: str) -> str:
    if not _ID.match(backup_id or ""):
        raise InputError(f"not a backup id: {backup_id!r} (expected YYYYMMDDTHHMMSSZ-xxxxxx)")
    return backup_id


def manifest_bytes(manifest: Manifest) -> bytes:
    return manifest.model_dump_json(indent=2).encode()


def write_manifest(store: Store, prefix: str, manifest: Manifest) -> None:
    """Seal a backup: its objects are checked to still be there, then the manifest, then its sha256.

    The check catches a prune (or anyone) that removed a long-running backup's dumps meanwhile: a
    manifest is never written over missing objects.
    """
    present = {o.key: o.size for o in store.list(prefix)}
    listed = [(o.key, o.bytes) for o in manifest.objects()]  # dumps, table parts, types
    gone = [key for key, size in listed if present.get(prefix + key) != size]
    if gone:
        raise BackupFailed(
            f"objects of backup {manifest.backup_id} disappeared before its manifest was written: {', '.join(gone)}"
        )
    data = manifest_bytes(manifest)
    store.put_bytes(prefix + MANIFEST_NAME, data)
    try:
        store.put_bytes(prefix + MANIFEST_SUM, _seal(data))
    except BaseException:
        store.delete([prefix + MANIFEST_NAME])  # no seal, no manifest: the backup stays incomplete
        raise


def _seal(manifest: bytes) -> bytes:
    """The seal's exact bytes (``sha256sum`` format, so ``sha256sum -c`` checks it by hand too)."""
    return f"{hashlib.sha256(manifest).hexdigest()}  {MANIFEST_NAME}\n".encode()


def _examine(store: Store, folder: str, backup_id: str, names: set[str]) -> tuple[str, Manifest | None, str]:
    """``("complete", manifest, "")``, ``("incomplete", None, why)`` or ``("corrupt", None, why)``."""
    if MANIFEST_NAME not in names:
        return "incomplete", None, f"no {MANIFEST_NAME}: it died midway"
    if MANIFEST_SUM not in names:
        return "incomplete", None, f"no {MANIFEST_SUM}: it died before its manifest was sealed"
    try:
        data = store.get_bytes(folder + MANIFEST_NAME)
        sealed = store.get_bytes(folder + MANIFEST_SUM)
    except ObjectMissing:
        return "incomplete", None, "its manifest disappeared while it was read"
    if sealed != _seal(data):  # byte for byte: a seal that changed at all is not trusted
        return "corrupt", None, f"{MANIFEST_NAME} changed after it was written (its sha256 differs from {MANIFEST_SUM})"
    try:
        manifest = Manifest.model_validate_json(data)
    except (ValidationError, ValueError):
        return "corrupt", None, f"{MANIFEST_NAME} is not a valid manifest"
    if manifest.backup_id != backup_id:
        return "corrupt", None, f"{MANIFEST_NAME} names another backup ({manifest.backup_id})"
    return "complete", manifest, ""


def _scan(store: Store, prefix: str = "") -> list[BackupRef]:
    groups: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
    for obj in [*store.list(prefix), *store.partials(prefix)]:
        m = _FOLDER.match(obj.key)
        if m:
            groups[(m.group("date"), m.group("id"))].append((m.group("name"), obj.size))
    refs = []
    for (date, backup_id), objects in groups.items():
        folder = f"{date}/{backup_id}/"
        status, manifest, _why = _examine(store, folder, backup_id, {n for n, _ in objects})
        tables = [t.name for t in manifest.tables] if manifest else []
        refs.append(
            BackupRef(backup_id=backup_id, date=date, prefix=folder, complete=status == "complete", tables=tables,
                      bytes=sum(s for _, s in objects), created_at=_created(backup_id), objects=len(objects))
        )
    return sorted(refs, key=lambda r: r.backup_id, reverse=True)


def list_backups(store: Store) -> list[BackupRef]:
    """Every backup folder, newest first (partial-only ones too); complete means sealed and intact."""
    return _scan(store)


def find_backup(store: Store, backup_id: str) -> BackupRef:
    """One backup, found by its folder (the id names its date): no scan of the whole store."""
    check_backup_id(backup_id)
    folder = f"{_created(backup_id):%Y-%m-%d}/{backup_id}/"
    for ref in _scan(store, folder):
        if ref.backup_id == backup_id:
            return ref
    raise BackupNotFound(f"no backup {backup_id} in {store.url}")


def load_manifest(store: Store, backup_id: str) -> tuple[BackupRef, Manifest]:
    """The manifest of a complete backup; BackupIncomplete (died midway) or ManifestCorrupt (changed)."""
    ref = find_backup(store, backup_id)
    names = {o.key[len(ref.prefix):] for o in store.list(ref.prefix)}
    status, manifest, why = _examine(store, ref.prefix, backup_id, names)
    if status == "corrupt":
        raise ManifestCorrupt(f"backup {backup_id}: manifest changed/corrupt: {why}; it is never restored from")
    if manifest is None:
        raise BackupIncomplete(f"backup {backup_id} is incomplete ({why}) and is never restored from")
    return ref, manifest


def check_object(store: Store, key: str, expected_sha256: str, expected_bytes: int) -> ObjectCheck:
    digest = hashlib.sha256()
    size = 0
    try:
        for chunk in store.read(key):
            digest.update(chunk)
            size += len(chunk)
    except ObjectMissing:
        return ObjectCheck(key=key, expected_sha256=expected_sha256, actual_sha256=None,
                           expected_bytes=expected_bytes, actual_bytes=None, ok=False, problem="missing")
    actual = digest.hexdigest()
    problem = None
    if actual != expected_sha256:
        problem = "checksum mismatch"
    elif size != expected_bytes:
        problem = "size mismatch"
    return ObjectCheck(key=key, expected_sha256=expected_sha256, actual_sha256=actual, expected_bytes=expected_bytes,
                       actual_bytes=size, ok=problem is None, problem=problem)


def verify_backup(store: Store, backup_id: str, tables: list[str] | None = None) -> VerifyReport:
    """Re-read every object (or those of ``tables`` and the types) and check sha256 and size."""
    ref, manifest = load_manifest(store, backup_id)
    return verify_objects(store, ref.prefix, manifest, tables)


def verify_objects(store: Store, prefix: str, manifest: Manifest, tables: list[str] | None = None) -> VerifyReport:
    """The checks of :func:`verify_backup` for a manifest already loaded from ``prefix``."""
    wanted = set(tables) if tables else None
    checks = []
    for entry in manifest.tables:
        if wanted is None or entry.name in wanted:
            checks.append(check_object(store, prefix + entry.key, entry.sha256, entry.bytes))
            checks.extend(check_object(store, prefix + p.key, p.sha256, p.bytes) for p in entry.parts)
    if manifest.types_object:
        o = manifest.types_object
        checks.append(check_object(store, prefix + o.key, o.sha256, o.bytes))
    return VerifyReport(backup_id=manifest.backup_id, objects=checks)


def require_intact(report: VerifyReport) -> None:
    bad = [o for o in report.objects if not o.ok]
    if bad:
        details = "; ".join(f"{o.key}: {o.problem}" for o in bad)
        raise ChecksumMismatch(f"backup {report.backup_id} failed verification: {details}")


def prune(store: Store, older_than: timedelta, *, now: datetime | None = None, dry_run: bool = False,
          incomplete_after: timedelta = timedelta(days=1)) -> list[BackupRef]:
    """Delete complete backups older than ``older_than`` and incomplete ones older than a day.

    An incomplete backup younger than ``incomplete_after``, or whose writer's lease is fresh, may
    still be running, so it is kept.
    """
    now = now or datetime.now(UTC)
    doomed = []
    for ref in list_backups(store):
        assert ref.created_at is not None
        age = now - ref.created_at
        stale = not ref.complete and age > incomplete_after and not writer_alive(store, ref.prefix, now)
        if (ref.complete and age > older_than) or stale:
            doomed.append(ref)
    if not dry_run:
        for ref in doomed:
            # the seal and the manifest go first, so a prune that dies midway leaves an incomplete
            # backup, never a "complete" one with objects missing; then the objects, then what killed
            # writers left (hidden partial files, unfinished multipart uploads)
            store.delete([ref.prefix + MANIFEST_SUM, ref.prefix + MANIFEST_NAME])
            store.delete([o.key for o in store.list(ref.prefix)])
            store.delete_partials(store.partials(ref.prefix))
    return doomed


def leftovers(store: Store, prefix: str = "") -> list[ObjectInfo]:
    """Partial objects under ``prefix`` (for tests and the chaos suite)."""
    return store.partials(prefix)


def parse_age(text: str) -> timedelta:
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text or "")
    if not m:
        raise InputError(f"not a duration: {text!r} (use e.g. 36h, 7d, 2w)")
    n, unit = int(m.group(1)), m.group(2)
    return timedelta(seconds=n * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit])
