"""The policy tests' catalog: every tool's facts (annotations, permission, toolset, arguments) come from the
registry itself, so they cannot drift from it; by hand is only what `policies/default.yaml` is expected to
decide for each tool (the shipped default policy's decision per tool), and that table must name exactly the registry's tools."""

from __future__ import annotations

from dataclasses import dataclass

from fleet_mcp.policy import ToolFacts
from fleet_mcp.registry import ToolSpec, load_tools


@dataclass(frozen=True)
class Row:
    name: str
    toolset: str
    permission: str
    flags: str  # "RO", "D", "I" as in docs/API.md's annotations (read-only tools are also idempotent)
    args: tuple[str, ...]
    default: str  # default.yaml's decision for the tool with default arguments
    sod: bool = False  # default.yaml demands separation of duties


A, R, N = "auto_approve", "require_approval", "deny"

# default.yaml's expected decision for each tool with default arguments, and whether it demands separation of
# duties. A tool added to the registry without a line here fails test_expected_decisions_name_every_tool.
# fmt: off
EXPECTED: dict[str, tuple[str, bool]] = {
    # GitOps
    "system_gitops_register_repository": (A, False),
    "system_gitops_list_repositories": (A, False),
    "system_gitops_get_repository": (A, False),
    "system_gitops_update_repository": (A, False),
    "system_gitops_delete_repository": (R, False),
    "system_gitops_sync_repository": (A, False),
    "system_gitops_list_sync_runs": (A, False),
    "system_gitops_get_sync_run": (A, False),
    "system_gitops_get_drift_report": (A, False),
    "system_gitops_list_proposals": (A, False),
    "system_gitops_get_proposal": (A, False),
    "system_gitops_apply_proposal": (R, False),
    "system_gitops_apply_sync_run": (R, False),
    "system_gitops_reject_proposal": (A, False),
    "system_gitops_suppress_drift": (R, False),
    # Live fleet state
    "system_list_templates": (A, False),
    "system_list_modules": (A, False),
    "system_list_assignments": (A, False),
    "system_list_provider_configs": (A, False),
    "system_get_template": (A, False),
    "system_get_module": (A, False),
    "system_get_provider_config": (A, False),
    "system_put_template": (A, False),
    "system_put_module": (A, False),
    "system_put_provider_config": (A, False),
    "system_delete_template": (R, False),
    "system_delete_module": (R, False),
    "system_delete_provider_config": (R, False),
    "system_assign_module_to_template": (A, False),
    "system_unassign_module_from_template": (R, False),
    "system_recent_signals": (A, False),
    # SD-WAN federation
    "system_sdwan_propose_federation_peer": (R, False),
    "system_sdwan_accept_federation_peer": (R, False),
    "system_sdwan_accept_remote_federation_peer": (R, False),
    "system_sdwan_refresh_federation_peer": (A, False),
    "system_sdwan_rotate_intermediate_ca": (R, False),
    "system_sdwan_regenerate_acceptance_token": (R, False),
    "system_sdwan_list_federation_peers": (A, False),
    "system_sdwan_get_federation_peer": (A, False),
    "system_sdwan_verify_federation_handshake": (A, False),
    "system_sdwan_suspend_federation_peer": (R, False),
    "system_sdwan_resume_federation_peer": (R, False),
    "system_sdwan_revoke_federation_peer": (R, False),
    "system_sdwan_federation_scan": (A, False),
    "system_sdwan_issue_node_certificate": (A, False),
    "system_sdwan_get_trust_bundle": (A, False),
    # Vault
    "system_vault_store_credential": (A, False),
    "system_vault_list_credentials": (A, False),
    "system_vault_delete_credential": (R, False),
    "system_vault_get_pepper_status": (A, False),
    "system_rotate_vault_transit_pepper": (R, True),
    "system_vault_get_rotation_job": (A, False),
    "system_vault_resume_rotation_job": (A, False),
    "system_vault_verify_credentials": (A, False),
    "system_vault_finalize_pepper_rotation": (R, False),
    "system_vault_trim_pepper_key": (R, True),
    # Approvals, audit, policy
    "system_approvals_list": (A, False),
    "system_approvals_get": (A, False),
    "system_approvals_decide": (A, False),
    "system_approvals_cancel": (A, False),
    "system_approvals_collect_result": (A, False),
    "system_audit_query": (A, False),
    "system_audit_verify": (A, False),
    "system_policy_explain": (A, False),
}
# fmt: on


def _flags(spec: ToolSpec) -> str:
    if spec.read_only:
        return "RO"
    return " ".join(f for f, on in (("D", spec.destructive), ("I", spec.idempotent)) if on)


def _row(spec: ToolSpec) -> Row:
    default, sod = EXPECTED.get(spec.name, (N, False))
    return Row(spec.name, spec.toolset, spec.permission, _flags(spec), tuple(spec.input_model.model_fields),
               default, sod)


ROWS: tuple[Row, ...] = tuple(_row(spec) for spec in load_tools().values())
BY_NAME: dict[str, Row] = {r.name: r for r in ROWS}

# Tools whose `force: true` needs approval by a second person in default.yaml.
FORCE_TOOLS = ("system_gitops_apply_proposal", "system_gitops_apply_sync_run")


def facts(row: Row) -> ToolFacts:
    return ToolFacts(
        name=row.name,
        permission=row.permission,
        toolset=row.toolset,
        read_only="RO" in row.flags.split(),
        destructive="D" in row.flags.split(),
        idempotent=bool({"I", "RO"} & set(row.flags.split())),
        arg_names=frozenset(row.args),
    )


def build_catalog(rows: tuple[Row, ...] = ROWS) -> dict[str, ToolFacts]:
    """A policy catalog (tool name -> ToolFacts) from the rows; from all rows it is the registry's catalog."""
    return {r.name: facts(r) for r in rows}


def default_arguments(row: Row) -> dict[str, object]:
    """Arguments as a validated input model would dump them: `force` present and false."""
    return {"force": False} if "force" in row.args else {}
