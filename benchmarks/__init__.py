"""fleet-mcp's benchmark suite: every hot path measured against its floor in the same run (`python -m benchmarks`)."""

from __future__ import annotations

#: Families in run order; each is a module `benchmarks.<name>` with TITLE, DESCRIPTION and `async run(ctx)`.
FAMILIES = ("toolcalls", "gitops", "rotation", "federation", "console", "memory", "scaleout")
