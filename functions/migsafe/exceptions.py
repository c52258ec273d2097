"""Every error migsafe raises on purpose.

The class names are a contract: Step Functions ``Retry``/``Catch`` rules match them by name, and the
CLI maps the three families to exit codes (``InputError`` → 2, ``EnvironmentFault`` → 3,
``VerificationFailed`` → 1; an interrupt, SIGINT or SIGTERM, → 130). Wrap lower-level errors at the boundary and chain them
(``raise X(...) from exc``); never put a password in a message.
"""

from __future__ import annotations


class MigsafeError(Exception):
    """Root of every error migsafe raises on purpose."""

    exit_code = 3


# --- bad input: nothing was done -------------------------------------------------------------
class InputError(MigsafeError):
    """The request itself is wrong; nothing was changed."""

    exit_code = 2


class PlanInvalid(InputError):
    """The plan file is missing, malformed or has unknown keys."""


class UnsafeIdentifier(InputError):
    """A table, schema or type name is not a plain qualified identifier."""


class UnknownTable(InputError):
    """A table named in the request does not exist in the source catalog."""


class BackupNotFound(InputError):
    """No backup with that id exists in the store."""


class BackupIncomplete(InputError):
    """The backup has no manifest (it died midway) and is never restored from."""


class StoreNotFound(InputError):
    """The store named does not exist (a mistyped path or bucket); nothing was read or created."""


class ReportExists(InputError):
    """The report folder already holds a report; migsafe never overwrites one."""


class RestoreRefused(InputError):
    """The restore target or table selection is unsafe (data present, missing FK targets, ...)."""


class ConfirmationMismatch(InputError):
    """A dangerous target was named without the matching confirmation."""


class RevisionUnknown(InputError):
    """An alembic revision in the plan is unknown or the downgrade does not return to the source."""


class MigrationEnvironmentInvalid(InputError):
    """The plan's migration environment (its config, env.py, driver or Python) cannot load or finds no revisions."""


# --- verification: the work ran and found a difference ----------------------------------------
class VerificationFailed(MigsafeError):
    """Something was checked and did not match what the manifest promises."""

    exit_code = 1


class ChecksumMismatch(VerificationFailed):
    """A stored object's sha256 or size differs from the manifest (tampered or corrupt)."""


class RestoreVerificationFailed(VerificationFailed):
    """Restored tables differ from the manifest; the restore was rolled back."""


class ManifestCorrupt(VerificationFailed):
    """The manifest changed after it was written, or is not valid JSON: the backup is not trusted."""


# --- environment faults: something we depend on is unreachable or broken -----------------------
class EnvironmentFault(MigsafeError):
    """A dependency (database, store, AWS, tool) failed; nothing was left half-done."""

    exit_code = 3


class DatabaseUnreachable(EnvironmentFault):
    """The database could not be connected to."""


class DatabaseError(EnvironmentFault):
    """The database rejected a statement migsafe needed to run."""


class LockNotAcquired(DatabaseError):
    """A lock migsafe needs was held by another session for longer than the lock timeout."""


class SourceStalled(EnvironmentFault):
    """The source stopped answering mid-operation (hung, not dead); migsafe stopped and removed what it wrote."""


class StoreUnreachable(EnvironmentFault):
    """The backup store could not be read or written."""


class ObjectMissing(StoreUnreachable):
    """An object the manifest lists is missing from the store."""


class ToolFailed(EnvironmentFault):
    """A PostgreSQL client tool (pg_dump, pg_restore, psql, ...) exited non-zero."""


class ToolMissing(EnvironmentFault):
    """A required PostgreSQL client tool is not installed."""


class BackupFailed(EnvironmentFault):
    """The backup could not be completed; what it wrote was removed where possible."""


class RestoreFailed(EnvironmentFault):
    """pg_restore or the restore transaction failed; the target was rolled back."""


class ScratchFailed(EnvironmentFault):
    """The scratch database could not be created, reached or destroyed."""


class MigrationFailed(MigsafeError):
    """The migration under rehearsal raised an error (a FAIL verdict, not a fault of migsafe)."""

    exit_code = 1


class ScratchStale(MigrationFailed):
    """The scratch copy is at another alembic revision than the source: rehearsing it proves nothing."""


class NotifyFailed(EnvironmentFault):
    """The verdict could not be published."""


class TransientAwsError(EnvironmentFault):
    """AWS throttled or briefly failed; safe to retry."""


# --- observation: reported as a warning, never a failure -----------------------------------------
class ServerLogUnreadable(MigsafeError):
    """The scratch's statement log cannot be read or logs no statements; the rehearsal goes on sampling."""
