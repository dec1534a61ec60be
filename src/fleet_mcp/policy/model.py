"""The policy file grammar (pydantic, unknown keys refused) and the tool facts a policy is matched against."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    model_validator,
)

from fleet_mcp.policy.roles import PERMISSION_PATTERN

DecisionKind = Literal["auto_approve", "require_approval", "deny"]
ApprovalMode = Literal["elicit", "queue", "elicit_or_queue"]

MAX_EXPIRY = timedelta(days=7)
DEFAULT_EXPIRY = timedelta(hours=24)
DEFAULT_APPROVERS: tuple[str, ...] = ("approver", "admin")


@dataclass(frozen=True, slots=True)
class ToolFacts:
    """What the policy may know about a tool: its name, permission, toolset and annotations.

    `arg_names` (the tool's argument names) lets the loader refuse `args` keys no tool has; None = unknown.
    """

    name: str
    permission: str
    toolset: str
    read_only: bool
    destructive: bool
    idempotent: bool
    arg_names: frozenset[str] | None = None


_DURATION = re.compile(r"^(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?$")


def parse_duration(value: Any) -> timedelta:
    """Parse "30m", "24h", "7d", "1h30m" (units d, h, m, s) into a timedelta in (0, 7d]."""
    if isinstance(value, timedelta):
        td = value
    elif (
        isinstance(value, str)
        and value
        and (m := _DURATION.match(value.strip()))
        and any(m.groupdict().values())
    ):
        parts = {k: int(v) for k, v in m.groupdict().items() if v}
        td = timedelta(
            days=parts.get("d", 0),
            hours=parts.get("h", 0),
            minutes=parts.get("m", 0),
            seconds=parts.get("s", 0),
        )
    else:
        raise ValueError(f"a duration is written like '30m', '24h' or '7d', not {value!r}")
    if td <= timedelta(0):
        raise ValueError("a duration must be longer than zero")
    if td > MAX_EXPIRY:
        raise ValueError("a duration can be at most 7d")
    return td


def format_duration(td: timedelta) -> str:
    """The compact form parse_duration reads back: 1d, 12h, 1h30m, 45s."""
    seconds = int(td.total_seconds())
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(out) or "0s"


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ValueError("an argument value must be a string, number, boolean or null")


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _permission_pattern(value: str) -> str:
    if not PERMISSION_PATTERN.match(value):
        raise ValueError(
            f"{value!r} is not a permission pattern (like 'system.gitops.read' or 'system.*.read')"
        )
    return value


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
RuleName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")]
RoleName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
ToolGlob = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_*?\[\]!-]{1,200}$")]
ToolsetName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
ArgName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")]
ArgValue = Annotated[Any, AfterValidator(_scalar)]
PermissionPattern = Annotated[str, AfterValidator(_permission_pattern)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Match(_Strict):
    """Conditions a call must meet, all of them; lists are alternatives. Empty = every tool."""

    tools: Annotated[tuple[ToolGlob, ...], BeforeValidator(_as_tuple), Field(min_length=1)] | None = None
    read_only: bool | None = None
    destructive: bool | None = None
    idempotent: bool | None = None
    toolsets: Annotated[tuple[ToolsetName, ...], BeforeValidator(_as_tuple), Field(min_length=1)] | None = (
        None
    )
    args: Annotated[dict[ArgName, ArgValue], Field(min_length=1)] | None = None


class ApprovalSpec(_Strict):
    """How a `require_approval` decision is satisfied."""

    mode: ApprovalMode = "elicit_or_queue"
    approvers: Annotated[tuple[RoleName, ...], BeforeValidator(_as_tuple), Field(min_length=1)] = (
        DEFAULT_APPROVERS
    )
    min_approvals: Annotated[int, Field(ge=1)] = 1
    separation_of_duties: bool = False
    expires_in: Duration = DEFAULT_EXPIRY

    @model_validator(mode="after")
    def _satisfiable(self) -> ApprovalSpec:
        if self.mode == "elicit" and (self.separation_of_duties or self.min_approvals > 1):
            raise ValueError(
                "mode 'elicit' asks the caller's own human and cannot satisfy separation_of_duties or "
                "min_approvals > 1; use mode 'queue' or 'elicit_or_queue'"
            )
        return self

    @property
    def needs_second_person(self) -> bool:
        return self.separation_of_duties or self.min_approvals > 1

    @property
    def allows_elicitation(self) -> bool:
        """Whether the human at the caller's client may approve (otherwise the request is queued)."""
        return self.mode != "queue" and not self.needs_second_person

    @property
    def allows_queue(self) -> bool:
        return self.mode != "elicit"

    @property
    def expires_in_seconds(self) -> int:
        return int(self.expires_in.total_seconds())


class Rule(_Strict):
    """One ordered rule: the first rule whose `match` holds decides."""

    name: RuleName
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    match: Match
    decision: DecisionKind
    approval: ApprovalSpec | None = None

    @model_validator(mode="after")
    def _approval_only_when_required(self) -> Rule:
        if self.approval is not None and self.decision != "require_approval":
            raise ValueError(
                f"'approval' is only allowed with decision require_approval, not {self.decision}"
            )
        return self

    @property
    def effective_approval(self) -> ApprovalSpec | None:
        if self.decision != "require_approval":
            return None
        return self.approval or ApprovalSpec()


class PolicyFile(_Strict):
    """A whole policy file."""

    version: Literal[1]
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    default: DecisionKind = "deny"
    roles: dict[RoleName, list[PermissionPattern]] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)


class Decision(BaseModel):
    """The policy's answer for one call."""

    model_config = ConfigDict(frozen=True)

    decision: DecisionKind
    rule: str  # the deciding rule's name, "default", or "unknown-tool"
    approval: ApprovalSpec | None = None
    reason: str

    @property
    def allowed(self) -> bool:
        return self.decision == "auto_approve"
