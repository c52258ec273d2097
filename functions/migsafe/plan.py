"""The plan: one pydantic model, read from TOML (locally) or JSON (the Step Functions input).

Unknown keys are errors that name the key; relative paths are resolved against the plan's folder.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from .dsn import Dsn, mask_tree
from .exceptions import PlanInvalid, UnsafeIdentifier
from .identifiers import QualifiedName


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    dsn: str | None = None
    dsn_env: str | None = None
    secret_arn: str | None = None
    tables: list[str] = Field(min_length=1)
    # a source that hangs (stopped, frozen, cut off) rather than dies: when nothing comes from it -- no
    # byte of a dump or copy, no answer to a query -- for this long, the backup or the scratch copy
    # stops (SourceStalled, exit 3) instead of waiting on it forever (docs/reliability.md)
    stall_timeout_seconds: float = Field(default=120, gt=0)

    @field_validator("tables")
    @classmethod
    def _names_are_safe(cls, tables: list[str]) -> list[str]:
        """Keep the names as written (quotes matter: ``"Orders"`` is not ``orders``), once checked."""
        try:
            names = [QualifiedName.parse(t) for t in tables]
        except UnsafeIdentifier as exc:
            raise ValueError(str(exc)) from None
        if len(set(names)) != len(names):
            raise ValueError("a table is listed twice")
        return [t.strip() for t in tables]

    @property
    def table_names(self) -> list[str]:
        """Canonical ``schema.name`` of each table (the names manifests and results use)."""
        return [str(q) for q in self.qualified_tables]

    @model_validator(mode="after")
    def _one_dsn_source(self) -> Source:
        given = [k for k in ("dsn", "dsn_env", "secret_arn") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of dsn, dsn_env, secret_arn")
        return self

    @property
    def qualified_tables(self) -> list[QualifiedName]:
        return [QualifiedName.parse(t) for t in self.tables]

    def resolve_dsn(self, environ: Mapping[str, str]) -> Dsn:
        """The source DSN; ``environ`` is passed in by the caller (logic never reads os.environ)."""
        if self.dsn:
            return Dsn.parse(self.dsn)
        if self.dsn_env:
            value = environ.get(self.dsn_env)
            if not value:
                raise PlanInvalid(f"source.dsn_env: environment variable {self.dsn_env} is not set")
            return Dsn.parse(value)
        value = environ.get("MIGSAFE_SOURCE_DSN")
        if not value:
            raise PlanInvalid(
                "source.secret_arn: the secret is resolved by the AWS runner (MIGSAFE_SOURCE_DSN)"
            )
        return Dsn.parse(value)


class Migration(_Strict):
    """How the migration runs: alembic from an ini, from a Config built in code, or the project's command.

    ``alembic_ini`` or ``config_factory`` (one of them) is how migsafe reads the revisions; with
    ``command`` the project's own tool runs them and migsafe observes at the server (docs/cli.md).
    """

    alembic_ini: str | None = None  # default "alembic.ini" in the plan's folder, unless config_factory
    config_factory: str | None = None  # "package.module:function" returning an alembic Config
    command: list[str] | None = None  # e.g. ["myapp", "db", "upgrade", "{revision}"]
    downgrade_command: list[str] | None = None
    upgrade_to: str = "head"
    downgrade_to: str = "-1"
    url_env: str | None = None
    bundle: list[str] = Field(default_factory=list)
    python: str | None = None  # the interpreter with the project's dependencies (default: migsafe's own)
    sqlalchemy_driver: str = "postgresql+psycopg"  # URL scheme env.py gets; "postgresql" for psycopg2
    timeout_seconds: float = Field(default=3600, gt=0)  # a migration running longer is stopped

    @field_validator("config_factory")
    @classmethod
    def _factory_is_a_path(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
            raise ValueError(f"must be 'package.module:function' (got {value!r})")
        return value

    @model_validator(mode="after")
    def _one_way_to_run(self) -> Migration:
        if self.alembic_ini is not None and self.config_factory is not None:
            raise ValueError("give alembic_ini or config_factory, not both")
        if (self.command is None) != (self.downgrade_command is None):
            raise ValueError("command and downgrade_command go together (the rehearsal runs both ways)")
        for key in ("command", "downgrade_command"):
            argv = getattr(self, key)
            if argv is not None and (not argv or not all(isinstance(a, str) and a for a in argv)):
                raise ValueError(f"{key} must be a non-empty list of arguments")
            if argv is not None and not any("{revision}" in a for a in argv):
                raise ValueError(f"{key} must pass the revision: put {{revision}} in one argument")
        if self.command is not None and not self.url_env:
            raise ValueError("command needs url_env: the variable the project reads the database URL from")
        return self

    @property
    def ini(self) -> str:
        """The alembic ini migsafe reads the revisions from (unused with config_factory)."""
        return self.alembic_ini or "alembic.ini"


# an RDS instance or cluster identifier: a letter first, letters, digits and single hyphens, 1-63
_RDS_IDENTIFIER = re.compile(r"^[A-Za-z](?!.*--)[A-Za-z0-9-]{0,62}(?<!-)$")
AURORA_KINDS = ("aurora-clone", "aurora-snapshot")


class Scratch(_Strict):
    """Where the rehearsal runs.

    Locally: ``local`` (a throw-away cluster copied from the source) or ``dsn`` (an existing server).
    On AWS the state machine makes the scratch from the source it names (``cluster_identifier`` for
    an Aurora cluster, ``instance_identifier`` for an RDS instance; neither: the deploy's source):
    ``rds-snapshot`` restores the instance's latest snapshot, ``aurora-clone`` clones the cluster
    (copy-on-write, production's state of now), ``aurora-snapshot`` restores the cluster's latest
    snapshot, ``auto`` (and ``local``, the default, on AWS) clones an Aurora source and restores an
    instance's snapshot.
    """

    kind: Literal["local", "dsn", "auto", "rds-snapshot", "aurora-clone", "aurora-snapshot"] = "local"
    dsn: str | None = None  # kind = "dsn": an existing scratch server (e.g. the RDS endpoint on AWS)
    cluster_identifier: str | None = None  # AWS: the source is this Aurora cluster
    instance_identifier: str | None = None  # AWS: the source is this RDS instance
    instance_class: str | None = None  # AWS: the scratch instance's class (default: see docs/deploy.md)

    @field_validator("cluster_identifier", "instance_identifier")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        if value is not None and not _RDS_IDENTIFIER.match(value):
            raise ValueError(f"{value!r} is not an RDS identifier (a letter, then letters, digits, single hyphens)")
        return value

    @field_validator("instance_class")
    @classmethod
    def _instance_class(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^db\.[a-z0-9-]+(\.[a-z0-9-]+)?$", value):
            raise ValueError(f"{value!r} is not a DB instance class (like db.t4g.medium or db.serverless)")
        return value

    @model_validator(mode="after")
    def _source_matches_kind(self) -> Scratch:
        if self.cluster_identifier and self.instance_identifier:
            raise ValueError("give cluster_identifier or instance_identifier, not both")
        if self.kind == "rds-snapshot" and self.cluster_identifier:
            raise ValueError(f"kind = \"rds-snapshot\" restores an RDS instance's snapshot, but cluster_identifier "
                             f"names the Aurora cluster {self.cluster_identifier}: use kind = \"aurora-clone\", "
                             "\"aurora-snapshot\" or \"auto\"")
        if self.kind in AURORA_KINDS and self.instance_identifier:
            raise ValueError(f"kind = \"{self.kind}\" copies an Aurora cluster, but instance_identifier names an "
                             "RDS instance: name the cluster (cluster_identifier) or use kind = \"rds-snapshot\"")
        return self


class Store(_Strict):
    url: str = "file://./migsafe-backups"
    retention_days: int = Field(default=30, ge=1)


class Backup(_Strict):
    compression: Literal["zstd", "gzip", "none"] = "zstd"
    jobs: int | None = Field(default=None, ge=1, le=64)
    zstd_level: int = Field(default=1, ge=1, le=19)  # docs/benchmarks.md: less CPU, no larger here


class Thresholds(_Strict):
    upgrade_seconds: float = 120
    downgrade_seconds: float = 120
    lock_seconds: float = 120
    lossy_downgrade: Literal["fail", "warn"] = "fail"
    lint_fail: list[str] = Field(default_factory=list)  # squawk rules that FAIL (others warn); "*" = all
    max_blocked_seconds: float = Field(default=5, ge=0)  # longest lock wait a traffic client may have
    max_traffic_errors: int = Field(default=0, ge=0)


class TrafficQuery(_Strict):
    """A hot query of the application; ``:name`` placeholders are bound from a sampled row."""

    name: str
    sql: str
    weight: float = Field(default=1, gt=0)
    table: str | None = None  # the table whose rows bind the placeholders (default: the first touched)


class Traffic(_Strict):
    enabled: bool = True
    clients: int = Field(default=4, ge=1, le=64)
    rate: float = Field(default=50, gt=0, le=1000)  # transactions per second per client, open loop
    baseline_seconds: float = Field(default=2, ge=0.5, le=60)
    default_workload: bool = True  # point reads, inserts, updates derived from the catalog
    queries: list[TrafficQuery] = Field(default_factory=list)


_EXPECT = re.compile(
    r"^\s*(==|=|!=|>=|<=|>|<)\s*(-?\d+(?:\.\d+)?|'[^']*'|true|false|null)\s*$", re.IGNORECASE
)


When = Literal["before", "after_upgrade", "after_downgrade"]
ALL_WHEN: tuple[When, ...] = ("before", "after_upgrade", "after_downgrade")


class Check(_Strict):
    name: str
    sql: str
    expect: str
    when: list[When] = Field(default_factory=lambda: list(ALL_WHEN))

    @field_validator("expect")
    @classmethod
    def _expect_parses(cls, value: str) -> str:
        if not _EXPECT.match(value):
            raise ValueError(f"expect must be an operator and a value, like '>= 1' (got {value!r})")
        return value


_ROWS_DELTA = re.compile(r"^[+-]?\d+$")


class Expect(_Strict):
    """A row-count difference the plan declares as intended (a data migration that moves rows).

    ``rows_after_upgrade`` / ``rows_after_downgrade``: the signed change of the table's row count
    against before the upgrade, e.g. ``"-3"``. When what happened matches, that difference is a
    PASS with a note naming ``reason``; when it does not, it stays a FAIL that says both figures.
    """

    table: str
    rows_after_upgrade: str | None = None
    rows_after_downgrade: str | None = None
    reason: str = Field(min_length=1)

    @field_validator("table")
    @classmethod
    def _table_parses(cls, value: str) -> str:
        try:
            return str(QualifiedName.parse(value))
        except UnsafeIdentifier as exc:
            raise ValueError(str(exc)) from None

    @field_validator("rows_after_upgrade", "rows_after_downgrade", mode="before")
    @classmethod
    def _signed_count(cls, value: object) -> object:
        if isinstance(value, bool) or value is None:
            return value if value is None else str(value)
        text = str(value).strip()
        if not _ROWS_DELTA.match(text):
            raise ValueError(f"must be a signed whole number of rows, like \"-3\" or \"+3\" (got {value!r})")
        return f"{int(text):+d}"

    @field_validator("reason")
    @classmethod
    def _reason_says_something(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("say why this difference is intended")
        return value.strip()

    @model_validator(mode="after")
    def _something_expected(self) -> Expect:
        if self.rows_after_upgrade is None and self.rows_after_downgrade is None:
            raise ValueError("give rows_after_upgrade or rows_after_downgrade (or both)")
        return self

    def delta(self, phase: str) -> int | None:
        value = self.rows_after_upgrade if phase == "upgrade" else self.rows_after_downgrade
        return None if value is None else int(value)


class Notify(_Strict):
    sns_topic_arn: str | None = None


class Plan(_Strict):
    name: str | None = None
    source: Source
    migration: Migration = Field(default_factory=Migration)
    scratch: Scratch = Field(default_factory=Scratch)
    store: Store = Field(default_factory=Store)
    backup: Backup = Field(default_factory=Backup)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    traffic: Traffic = Field(default_factory=Traffic)
    checks: list[Check] = Field(default_factory=list)
    notify: Notify = Field(default_factory=Notify)
    expect: list[Expect] = Field(default_factory=list)

    @model_validator(mode="after")
    def _expectations_name_backed_up_tables(self) -> Plan:
        tables = set(self.source.table_names)
        seen: set[str] = set()
        for i, e in enumerate(self.expect):
            if e.table not in tables:
                raise ValueError(f"expect.{i}.table: {e.table} is not one of source.tables")
            if e.table in seen:
                raise ValueError(f"expect.{i}.table: {e.table} has two [[expect]] sections (merge them)")
            seen.add(e.table)
        return self

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    def path(self, relative: str) -> Path:
        """A plan path resolved against the plan file's folder."""
        p = Path(relative)
        return p if p.is_absolute() else (self._base_dir / p)

    @property
    def display_name(self) -> str:
        return self.name or ",".join(self.source.table_names)

    def digest(self) -> str:
        """sha256 of the plan's canonical JSON, with DSN passwords masked first.

        The digest names executions and sits in manifests: a password hashed into it could be
        guessed offline, so it never goes in.
        """
        data = mask_tree(self.model_dump(mode="json"))
        if not data.get("expect"):
            data.pop("expect", None)  # plans without [[expect]] keep the digest they had before it existed
        # how long to wait on a hung source says nothing of what is backed up or rehearsed (and
        # --stall-timeout overrides it): plans keep the digest they had before it existed
        data["source"].pop("stall_timeout_seconds", None)
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def with_stall_timeout(self, seconds: float | None) -> Plan:
        """This plan with ``source.stall_timeout_seconds`` overridden (``--stall-timeout``), or itself."""
        if seconds is None:
            return self
        plan = self.model_copy(update={"source": self.source.model_copy(update={"stall_timeout_seconds": seconds})})
        plan._base_dir = self._base_dir
        return plan

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], base_dir: Path | None = None) -> Plan:
        try:
            plan = cls.model_validate(dict(data))
        except ValidationError as exc:
            raise PlanInvalid(_describe(exc)) from None
        plan._base_dir = (base_dir or Path.cwd()).resolve()
        return plan

    @classmethod
    def from_json(cls, text: str | bytes, base_dir: Path | None = None) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanInvalid(f"plan is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise PlanInvalid("plan must be a JSON object")
        return cls.from_mapping(data, base_dir)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise PlanInvalid(f"cannot read plan {path}: {exc.strerror}") from None
        if path.suffix == ".json":
            return cls.from_json(raw, path.parent)
        try:
            data = tomllib.loads(raw.decode())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise PlanInvalid(f"plan {path} is not valid TOML: {exc}") from None
        return cls.from_mapping(data, path.parent)


def _describe(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "plan"
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key '{where}'")
        elif err["type"] == "missing":
            problems.append(f"missing key '{where}'")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {msg}")
    return "invalid plan: " + "; ".join(problems)
