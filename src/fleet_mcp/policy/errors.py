"""PolicyError: a policy that cannot be used, with every problem located by file, line and rule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fleet_mcp.errors import InvalidArgument


@dataclass(frozen=True)
class PolicyProblem:
    """One thing wrong with a policy file."""

    file: str
    line: int | None
    rule: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        rule = f"rule '{self.rule}': " if self.rule else ""
        return f"{where}: {rule}{self.message}"


class PolicyError(InvalidArgument):
    """The policy was refused; `problems` lists every problem found, `file`/`line`/`rule` the first."""

    code = "invalid_policy"

    def __init__(self, problems: Sequence[PolicyProblem]) -> None:
        if not problems:
            raise ValueError("a PolicyError needs at least one problem")
        self.problems: tuple[PolicyProblem, ...] = tuple(problems)
        first = self.problems[0]
        self.file = first.file
        self.line = first.line
        self.rule = first.rule
        super().__init__(
            "\n".join(str(p) for p in self.problems),
            hint="fix the policy file; the previous policy (if any) stays in force",
            file=first.file,
            line=first.line,
            rule=first.rule,
        )

    @classmethod
    def single(
        cls, file: str, message: str, *, line: int | None = None, rule: str | None = None
    ) -> PolicyError:
        return cls([PolicyProblem(file, line, rule, message)])

    def __str__(self) -> str:  # the located problems only; the hint would repeat on every CLI line
        return self.message
