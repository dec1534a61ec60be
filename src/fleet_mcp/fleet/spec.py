"""The strict resource schema of fleet.yaml and live state: specs, names, canonical attributes, fingerprints.

The same models validate a `fleet.yaml` (GitOps) and the `spec` argument of the live-state tools,
so a resource written by hand and one applied from git have identical canonical attributes and
therefore identical fingerprints.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator

from fleet_mcp.errors import InvalidArgument

Kind = Literal["template", "module", "assignment", "provider_config"]
KINDS: tuple[str, ...] = ("template", "module", "assignment", "provider_config")
#: fleet.yaml section name of each kind.
SECTION_BY_KIND: dict[str, str] = {
    "template": "templates",
    "module": "modules",
    "assignment": "assignments",
    "provider_config": "provider_configs",
}
KIND_BY_SECTION: dict[str, str] = {v: k for k, v in SECTION_BY_KIND.items()}

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_NAME_RE = re.compile(rf"^{NAME_PATTERN}$")
_ASSIGNMENT_RE = re.compile(rf"^({NAME_PATTERN}):({NAME_PATTERN})$")

# Compared against the key with every non-alphanumeric removed, lower-cased, so "clientSecret",
# "AWS_SECRET_ACCESS_KEY" and "api-key" all match.
_SECRET_KEY_PARTS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "privatekey",
    "apikey",
    "accesskey",
)
_SECRET_KEY_EXEMPT_SUFFIXES = ("credential", "credentialname", "credentialref")
_PEM_PRIVATE = "PRIVATE KEY-----"

MASK = "***"


def is_secret_key(key: str) -> bool:
    """True for keys that look like they hold a secret (password, token, private_key, api-key, ...)."""
    norm = re.sub(r"[^a-z0-9]", "", key.lower())
    if norm.endswith(_SECRET_KEY_EXEMPT_SUFFIXES):
        return False
    return any(part in norm for part in _SECRET_KEY_PARTS)


def looks_like_secret_value(value: Any) -> bool:
    return isinstance(value, str) and _PEM_PRIVATE in value


def _check_map(value: dict[str, Any], *, refuse_secrets: bool) -> dict[str, Any]:
    """Refuse non-finite floats (not JSON) and, where asked, secret-looking keys at any depth."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                sub = f"{path}.{k}" if path else k
                if refuse_secrets and is_secret_key(k):
                    raise ValueError(
                        f"key {sub!r} looks like a secret; secrets do not belong in fleet state — store "
                        "it with system_vault_store_credential and reference it by name (credential: <name>)"
                    )
                stack.append((sub, v))
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(node))
        elif isinstance(node, float) and not math.isfinite(node):
            raise ValueError(f"{path or 'value'}: non-finite numbers are not allowed")
        elif refuse_secrets and looks_like_secret_value(node):
            raise ValueError(f"{path or 'value'}: looks like a private key; reference a stored credential by name")
    return value


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TemplateSpec(_Spec):
    """A node template: what platform, region and instance type nodes built from it get."""

    description: str = Field(default="", max_length=2000)
    node_platform: str | None = Field(default=None, max_length=120)
    provider_region: str | None = Field(default=None, max_length=120)
    instance_type: str | None = Field(default=None, max_length=120)
    metadata: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_map(v, refuse_secrets=False)


class ModuleSpec(_Spec):
    """A module that templates can be assigned."""

    variety: Literal["subscription", "role", "config", "instance"]
    priority: int = Field(default=0, ge=-1_000_000, le=1_000_000)
    version: str | None = Field(default=None, max_length=120)
    config: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("config")
    @classmethod
    def _config(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_map(v, refuse_secrets=False)


class AssignmentSpec(_Spec):
    """A module assigned to a template; its name is "<template>:<module>"."""

    enabled: bool = True
    priority: int = Field(default=0, ge=-1_000_000, le=1_000_000)
    config: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("config")
    @classmethod
    def _config(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_map(v, refuse_secrets=False)


class ProviderConfigSpec(_Spec):
    """Cloud provider settings; secrets are referenced by stored-credential name, never inlined."""

    provider: str = Field(min_length=1, max_length=120)
    region: str | None = Field(default=None, max_length=120)
    settings: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("settings")
    @classmethod
    def _settings(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_map(v, refuse_secrets=True)


class FleetSection(_Spec):
    """Fleet-wide defaults (the `fleet:` section of fleet.yaml)."""

    default_template: str | None = Field(default=None, max_length=128)
    provider: str | None = Field(default=None, max_length=120)


SPEC_BY_KIND: dict[str, type[_Spec]] = {
    "template": TemplateSpec,
    "module": ModuleSpec,
    "assignment": AssignmentSpec,
    "provider_config": ProviderConfigSpec,
}


def check_kind(kind: str) -> str:
    if kind not in SPEC_BY_KIND:
        raise InvalidArgument(f"unknown resource kind {kind!r}", hint=f"use one of: {', '.join(KINDS)}", kind=kind)
    return kind


def name_error(kind: str, name: str) -> str | None:
    """Why `name` is not a valid name for `kind`, or None when it is."""
    if kind == "assignment":
        if not isinstance(name, str) or not _ASSIGNMENT_RE.fullmatch(name):
            return "assignment names are '<template>:<module>', each part 1-128 letters, digits, '.', '_' or '-'"
        return None
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        return "names are 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
    return None


def check_name(kind: str, name: str) -> str:
    check_kind(kind)
    problem = name_error(kind, name)
    if problem:
        raise InvalidArgument(f"invalid {kind} name {name!r}", hint=problem, kind=kind, name=name)
    return name


def assignment_name(template: str, module: str) -> str:
    return f"{template}:{module}"


def split_assignment_name(name: str) -> tuple[str, str]:
    """ "web:nginx" → ("web", "nginx")."""
    m = _ASSIGNMENT_RE.fullmatch(name)
    if not m:
        raise InvalidArgument(f"invalid assignment name {name!r}", hint="use '<template>:<module>'", name=name)
    return m.group(1), m.group(2)


def _sorted_deep(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted_deep(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_deep(v) for v in value]
    return value


def dump_attributes(spec: _Spec) -> dict[str, Any]:
    """Canonical attributes of an already validated spec: field order, defaults filled, maps key-sorted."""
    return {k: _sorted_deep(v) for k, v in spec.model_dump(mode="json").items()}


def validate_spec(kind: str, spec: Mapping[str, Any] | BaseModel) -> _Spec:
    """Validate `spec` for `kind`; InvalidArgument lists every problem with its dotted path."""
    model = SPEC_BY_KIND[check_kind(kind)]
    if isinstance(spec, model):
        return spec
    if isinstance(spec, BaseModel):
        spec = spec.model_dump(mode="python")
    try:
        return model.model_validate(dict(spec))
    except ValidationError as exc:
        errors = error_lines(exc)
        raise InvalidArgument(
            f"invalid {kind} spec: " + "; ".join(errors),
            hint=f"a {kind} takes: {', '.join(model.model_fields)}",
            kind=kind,
            errors=errors,
        ) from None


def canonical_attributes(kind: str, spec: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
    """JSON-ready attributes of a resource with stable key order and every default filled in."""
    return dump_attributes(validate_spec(kind, spec))


def canonical_json(attributes: Mapping[str, Any]) -> str:
    return json.dumps(attributes, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def fingerprint(attributes: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of `attributes` (sorted keys, compact separators)."""
    return hashlib.sha256(canonical_json(attributes).encode("utf-8")).hexdigest()


def error_lines(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[str]:
    """One "dotted.path: message" line per validation error."""
    lines = []
    for e in exc.errors(include_url=False):
        msg = e["msg"].removeprefix("Value error, ")
        loc = (*prefix, *e["loc"])
        lines.append(f"{format_loc(loc)}: {msg}" if loc else msg)
    return lines


def format_loc(loc: tuple[Any, ...] | list[Any]) -> str:
    """('modules', 'web', 'priority') → "modules.web.priority"; odd keys are quoted in brackets."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            out += " (key)"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{json.dumps(str(part))}]"
    return out
