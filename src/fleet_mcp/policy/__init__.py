"""The declarative intervention policy: which tool calls run, need approval, or are denied."""

from __future__ import annotations

from fleet_mcp.policy.engine import (
    DEFAULT_RULE,
    UNKNOWN_TOOL_RULE,
    Explanation,
    Policy,
    RuleTrace,
    argument_equals,
)
from fleet_mcp.policy.errors import PolicyError, PolicyProblem
from fleet_mcp.policy.loader import compile_policy, load_policy, parse_policy
from fleet_mcp.policy.model import ApprovalSpec, Decision, Match, PolicyFile, Rule, ToolFacts
from fleet_mcp.policy.roles import ALL_PERMISSIONS, BUILTIN_ROLES, has_permission, permissions_for
from fleet_mcp.policy.watcher import PolicyHolder, ReloadResult, install_sighup_reload

__all__ = [
    "ALL_PERMISSIONS",
    "BUILTIN_ROLES",
    "DEFAULT_RULE",
    "UNKNOWN_TOOL_RULE",
    "ApprovalSpec",
    "Decision",
    "Explanation",
    "Match",
    "Policy",
    "PolicyError",
    "PolicyFile",
    "PolicyHolder",
    "PolicyProblem",
    "ReloadResult",
    "Rule",
    "RuleTrace",
    "ToolFacts",
    "argument_equals",
    "compile_policy",
    "has_permission",
    "install_sighup_reload",
    "load_policy",
    "parse_policy",
    "permissions_for",
]
