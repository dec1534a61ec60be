"""The domain error tree: every failure a tool can report, each carrying its subject.

    FleetError                 base: message (what was wrong), hint (what to do), subject
    ├── InvalidArgument        the caller's input is wrong (schema, limits, hostile values)
    ├── NotFound               the named thing does not exist
    ├── Conflict               the thing exists but is in the wrong state
    │   └── Busy               another operation holds the resource (sync, rotation), or the server or
    │                          principal is at its concurrency limit (then with retry_after)
    ├── PermissionDenied       the principal lacks the tool's permission or role
    ├── Unauthenticated        no principal could be established (bad or revoked token)
    ├── RateLimited            too many attempts; retry later
    └── ExternalError          git, Vault/OpenBao or TLS peer failed or timed out
        └── Unavailable        the database could not be reached; nothing was changed; retry

Services raise these; the gate turns them into error results the model can act on. Any other
exception is a bug: the gate logs it and returns a reference id, never its text.
Messages never contain secrets: build them from names and ids, not values.
"""

from __future__ import annotations

from typing import Any


class FleetError(Exception):
    """Base of every domain error; `code` is stable and machine-readable."""

    code = "error"
    #: When True the gate keeps what the failing call wrote (e.g. a failed-attempt counter) instead of
    #: rolling it back; the error is still reported. Never set it for a partial domain change.
    keep_changes = False

    def __init__(self, message: str, *, hint: str | None = None, **subject: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.subject = subject

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        if self.subject:
            out["subject"] = self.subject
        return out

    def __str__(self) -> str:
        if not self.hint:
            return self.message
        sep = " " if self.message.endswith((".", "!", "?", ":")) else ". "
        return f"{self.message}{sep}{self.hint[:1].upper()}{self.hint[1:]}"


class InvalidArgument(FleetError):
    code = "invalid_argument"


class NotFound(FleetError):
    code = "not_found"


class Conflict(FleetError):
    code = "conflict"


class Busy(Conflict):
    code = "busy"


class PermissionDenied(FleetError):
    code = "permission_denied"


class Unauthenticated(FleetError):
    code = "unauthenticated"


class RateLimited(FleetError):
    code = "rate_limited"


class ExternalError(FleetError):
    code = "external_error"


class Unavailable(ExternalError):
    """The database could not be reached (restarting, unreachable, failed over): the call changed nothing and
    can be retried as it is."""

    code = "unavailable"


def database_unreachable(exc: BaseException) -> bool:
    """Whether an exception (or one it was raised from) means the database connection was lost or refused,
    as opposed to a statement the database rejected."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, InterfaceError | ConnectionError | TimeoutError):
            return True
        if isinstance(seen, OperationalError) and any(
                word in str(seen.orig).lower() for word in ("connect", "closed", "unable to open", "terminat")):
            return True
        if type(seen).__module__.startswith("asyncpg") and type(seen).__name__ in (
                "ConnectionDoesNotExistError", "CannotConnectNowError", "ConnectionFailureError",
                "AdminShutdownError", "InterfaceError"):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def value_out_of_range(exc: BaseException) -> bool:
    """Whether the database refused a value as out of range for its column (a 32-bit id, say)."""
    from sqlalchemy.exc import DBAPIError

    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, OverflowError) or (isinstance(seen, DBAPIError) and "out of" in str(seen.orig)
                                               and "range" in str(seen.orig)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


UNAVAILABLE_HINT = "retry in a few seconds; if it persists, check the database server"
