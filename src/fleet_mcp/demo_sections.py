"""Demo sections of the three capabilities (GitOps, federation, vault), run in order by `fleet-mcp demo`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

SECTIONS: list[Callable[..., Awaitable[None]]] = []
