"""Marks on result models that the rest of the house acts on: which fields are secrets."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel

#: Marks a result field as a secret (`Field(json_schema_extra=SECRET)`): it is returned once, to whoever
#: made the call, and never stored, audited or shown to anyone else (an approver sees it masked).
SECRET: dict[str, Any] = {"x-secret": True}
_SECRETISH = ("token", "secret", "private_key", "password", "passphrase")


def _field_models(annotation: Any) -> list[type[BaseModel]]:
    """Models nested in a field's type (`Model`, `Model | None`, `list[Model]`, `dict[str, Model]`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _field_models(arg)]


def _key(model: type[BaseModel], name: str) -> str:
    info = model.model_fields[name]
    return info.alias if info.alias and model.model_config.get("serialize_by_alias") else name


def split_secrets(model: type[BaseModel], data: Any) -> tuple[Any, Any]:
    """(what may be stored or shown to others, with secret fields masked; the secret values alone, in the
    same shape — None when there are none), by the model's own SECRET marks."""
    if not isinstance(data, dict):
        return data, None
    public = dict(data)
    hidden: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        key = _key(model, name)
        value = data.get(key)
        if value is None:
            continue
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("x-secret"):
            public[key], hidden[key] = "***", value
            continue
        for sub in _field_models(info.annotation):
            if isinstance(value, list):
                pairs = [split_secrets(sub, v) for v in value]
                public[key] = [p for p, _ in pairs]
                if any(h is not None for _, h in pairs):
                    hidden[key] = [h for _, h in pairs]
            else:
                public[key], inner = split_secrets(sub, value)
                if inner is not None:
                    hidden[key] = inner
            break
    return public, (hidden or None)


def unmarked_secrets(model: type[BaseModel], where: str, seen: set[type[BaseModel]] | None = None) -> list[str]:
    """Text fields whose names say secret but that carry no SECRET mark (a mistake caught at import)."""
    seen = seen if seen is not None else set()
    if model in seen:
        return []
    seen.add(model)
    out = []
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra
        marked = isinstance(extra, dict) and extra.get("x-secret")
        texty = info.annotation is str or str in typing.get_args(info.annotation)
        if texty and not marked and any(s in name for s in _SECRETISH):
            out.append(f"{where}.{name}")
        for sub in _field_models(info.annotation):
            out += unmarked_secrets(sub, f"{where}.{name}", seen)
    return out
