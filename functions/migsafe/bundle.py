"""The migration bundle: the user's alembic code, carried to the AWS worker as a checked tarball.

A bundle is a deterministic ``tar.gz`` of ``alembic.ini``, its script directory and any paths the
plan lists under ``[migration] bundle``, plus ``requirements.txt`` when the plan's folder has one.
It is content-addressed: stored at ``bundles/<sha256>.tar.gz`` in the plan's store, so the same
code always has the same name and a push of unchanged code writes nothing.

The worker fetches it by digest, checks the sha256 *before* extracting anything, extracts safely
(no absolute paths, no ``..``, no links, no devices), and installs a ``requirements.txt`` into a
separate virtual environment, so the user's dependencies never mix with the worker's own.
"""

from __future__ import annotations

import configparser
import gzip
import hashlib
import io
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .exceptions import ChecksumMismatch, InputError, ObjectMissing, PlanInvalid, ToolFailed
from .plan import Plan
from .store import Store

BUNDLE_PREFIX = "bundles/"
REQUIREMENTS = "requirements.txt"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SKIP_DIRS = {"__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}

Runner = Callable[..., subprocess.CompletedProcess[str]]


def bundle_key(sha256: str) -> str:
    if not _SHA256.match(sha256 or ""):
        raise InputError(f"not a bundle digest: {sha256!r} (expected 64 lowercase hex characters)")
    return f"{BUNDLE_PREFIX}{sha256}.tar.gz"


@dataclass(frozen=True)
class Bundle:
    sha256: str
    key: str
    bytes: int
    files: list[str] = field(default_factory=list)
    uploaded: bool = False  # False when the store already had it


def _script_location(ini: Path) -> Path:
    """The alembic script directory named in ``alembic.ini`` (``%(here)s`` is the ini's folder)."""
    parser = configparser.ConfigParser(defaults={"here": str(ini.parent)})
    try:
        parser.read(ini, encoding="utf-8")
        location = parser.get("alembic", "script_location")
    except (configparser.Error, OSError, UnicodeDecodeError) as exc:
        raise PlanInvalid(f"migration.alembic_ini: cannot read script_location from {ini}: {exc}") from None
    path = Path(location)
    return path if path.is_absolute() else ini.parent / path


def _relative(plan: Plan, path: Path, what: str) -> PurePosixPath:
    base = plan.base_dir.resolve()
    try:
        rel = path.resolve().relative_to(base)
    except ValueError:
        raise PlanInvalid(f"{what}: {path} is outside the plan's folder {base}; bundles hold only files "
                          "under it") from None
    return PurePosixPath(rel.as_posix())


def _walk(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*")):
        if any(part in _SKIP_DIRS for part in path.relative_to(root).parts):
            continue
        if path.is_file() and not path.is_symlink() and path.suffix not in _SKIP_SUFFIXES:
            yield path


def bundle_files(plan: Plan) -> list[tuple[PurePosixPath, Path]]:
    """``(name in the tarball, file on disk)`` for everything the bundle holds, sorted by name."""
    roots: list[tuple[Path, str]] = []
    if plan.migration.config_factory is None:  # a factory's package travels as a migration.bundle path
        ini = plan.path(plan.migration.ini)
        if not ini.is_file():
            raise PlanInvalid(f"migration.alembic_ini: {ini} does not exist")
        roots = [(ini, "migration.alembic_ini"), (_script_location(ini), "alembic script_location")]
    roots += [(plan.path(p), f"migration.bundle: {p}") for p in plan.migration.bundle]
    requirements = plan.base_dir / REQUIREMENTS
    if requirements.is_file():
        roots.append((requirements, REQUIREMENTS))
    found: dict[PurePosixPath, Path] = {}
    for root, what in roots:
        if not root.exists():
            raise PlanInvalid(f"{what}: {root} does not exist")
        _relative(plan, root, what)
        for path in _walk(root):
            found[_relative(plan, path, what)] = path
    return sorted(found.items())


def build(plan: Plan) -> tuple[bytes, list[str]]:
    """The bundle's bytes (identical for identical content: no times, owners or modes) and names."""
    files = bundle_files(plan)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in files:
            data = path.read_bytes()
            info = tarfile.TarInfo(str(name))
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue(), [str(n) for n, _ in files]


def push(plan: Plan, store: Store) -> Bundle:
    """Build the plan's bundle and store it under its digest (a no-op when it is already there)."""
    data, names = build(plan)
    digest = hashlib.sha256(data).hexdigest()
    key = bundle_key(digest)
    uploaded = False
    if not store.exists(key):
        store.put_bytes(key, data)
        uploaded = True
    return Bundle(sha256=digest, key=key, bytes=len(data), files=names, uploaded=uploaded)


def _check_member(member: tarfile.TarInfo, dest: Path) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or not member.name or "\\" in member.name:
        raise ChecksumMismatch(f"bundle member {member.name!r} escapes the bundle folder")
    if not (member.isfile() or member.isdir()):
        raise ChecksumMismatch(f"bundle member {member.name!r} is a link or device, refused")
    target = (dest / name).resolve()
    if dest != target and dest not in target.parents:
        raise ChecksumMismatch(f"bundle member {member.name!r} escapes the bundle folder")


def fetch(store: Store, sha256: str, dest: Path) -> Path:
    """Download bundle ``sha256``, verify its digest, and extract it safely into ``dest``."""
    key = bundle_key(sha256)
    try:
        data = store.get_bytes(key)
    except ObjectMissing:
        raise InputError(f"bundle {sha256} is not in {store.url}: push it with `migsafe bundle push`") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ChecksumMismatch(f"bundle {key}: sha256 is {actual}, expected {sha256}; refusing to run it")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, dest)
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ChecksumMismatch(f"bundle {key} cannot be extracted: {exc}") from None
    return dest


def install_requirements(bundle_dir: Path, venv_dir: Path, *, python: str = sys.executable,
                         runner: Runner = subprocess.run) -> Path | None:
    """Install ``requirements.txt`` (if any) into a new virtualenv; return its interpreter.

    The venv sees the worker's site-packages (alembic, psycopg) underneath, but what the user
    installs lands in the venv only: the worker's own environment is never changed.
    """
    requirements = Path(bundle_dir) / REQUIREMENTS
    if not requirements.is_file():
        return None
    venv_dir = Path(venv_dir)
    steps = [
        [python, "-m", "venv", "--system-site-packages", str(venv_dir)],
        [str(venv_dir / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
         "-q", "-r", str(requirements)],
    ]
    for argv in steps:
        proc = runner(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
            raise ToolFailed(f"installing the bundle's requirements failed ({argv[2]}): {' / '.join(tail)}")
    return venv_dir / "bin" / "python"
