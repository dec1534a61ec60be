"""Every tool of TOOLS.md transcribed by hand (annotations, permission, toolset, arguments, default.yaml's
decision), so the policy tests do not depend on the registry; a registry-based test pins the real catalog."""

from __future__ import annotations

from dataclasses import dataclass

from fleet_mcp.policy import ToolFacts


@dataclass(frozen=True)
class Row:
    name: str
    toolset: str
    permission: str
    flags: str  # "RO", "D", "I" as in TOOLS.md's "ann." column
    args: tuple[str, ...] | None  # None: not known yet
    default: str  # default.yaml's decision for the tool with default arguments
    sod: bool = False  # default.yaml demands separation of duties


A, R, N = "auto_approve", "require_approval", "deny"

# fmt: off
ROWS: tuple[Row, ...] = (
    # GitOps
    Row("system_gitops_register_repository", "gitops", "system.gitops.write", "",
        ("name", "repo_url", "branch", "path_prefix", "credential", "auto_apply"), A),
    Row("system_gitops_list_repositories", "gitops", "system.gitops.read", "RO", (), A),
    Row("system_gitops_get_repository", "gitops", "system.gitops.read", "RO", ("repository_id",), A),
    Row("system_gitops_update_repository", "gitops", "system.gitops.write", "I",
        ("repository_id", "branch", "path_prefix", "credential", "auto_apply", "enabled"), A),
    Row("system_gitops_delete_repository", "gitops", "system.gitops.write", "D", ("repository_id",), R),
    Row("system_gitops_sync_repository", "gitops", "system.gitops.sync", "", ("repository_id",), A),
    Row("system_gitops_list_sync_runs", "gitops", "system.gitops.read", "RO", ("repository_id", "limit"), A),
    Row("system_gitops_get_sync_run", "gitops", "system.gitops.read", "RO", ("sync_run_id",), A),
    Row("system_gitops_get_drift_report", "gitops", "system.gitops.read", "RO", ("repository_id",), A),
    Row("system_gitops_list_proposals", "gitops", "system.gitops.read", "RO",
        ("repository_id", "sync_run_id", "status"), A),
    Row("system_gitops_get_proposal", "gitops", "system.gitops.read", "RO", ("proposal_id",), A),
    Row("system_gitops_apply_proposal", "gitops", "system.gitops.apply", "D", ("proposal_id", "force"), R),
    Row("system_gitops_apply_sync_run", "gitops", "system.gitops.apply", "D", ("sync_run_id", "force"), R),
    Row("system_gitops_reject_proposal", "gitops", "system.gitops.apply", "", ("proposal_id", "reason"), A),
    Row("system_gitops_suppress_drift", "gitops", "system.gitops.write", "",
        ("kind", "name", "reason", "until"), R),
    # Live fleet state
    Row("system_list_templates", "fleet", "system.fleet.read", "RO", (), A),
    Row("system_list_modules", "fleet", "system.fleet.read", "RO", (), A),
    Row("system_list_assignments", "fleet", "system.fleet.read", "RO", (), A),
    Row("system_list_provider_configs", "fleet", "system.fleet.read", "RO", (), A),
    Row("system_get_template", "fleet", "system.fleet.read", "RO", ("name",), A),
    Row("system_get_module", "fleet", "system.fleet.read", "RO", ("name",), A),
    Row("system_get_provider_config", "fleet", "system.fleet.read", "RO", ("name",), A),
    Row("system_put_template", "fleet", "system.fleet.write", "I", ("name", "spec"), A),
    Row("system_put_module", "fleet", "system.fleet.write", "I", ("name", "spec"), A),
    Row("system_put_provider_config", "fleet", "system.fleet.write", "I", ("name", "spec"), A),
    Row("system_delete_template", "fleet", "system.fleet.write", "D", ("name",), R),
    Row("system_delete_module", "fleet", "system.fleet.write", "D", ("name",), R),
    Row("system_delete_provider_config", "fleet", "system.fleet.write", "D", ("name",), R),
    Row("system_assign_module_to_template", "fleet", "system.fleet.write", "I",
        ("template", "module", "enabled", "priority", "config"), A),
    Row("system_unassign_module_from_template", "fleet", "system.fleet.write", "D",
        ("template", "module"), R),
    Row("system_recent_signals", "fleet", "system.fleet.read", "RO", ("kind", "limit"), A),
    # SD-WAN federation
    Row("system_sdwan_propose_federation_peer", "federation", "sdwan.federation.manage", "",
        ("remote_account", "remote_prefix_advertisement", "token_ttl_seconds", "remote_federation_domain"), R),
    Row("system_sdwan_accept_federation_peer", "federation", "sdwan.federation.manage", "",
        ("federation_peer_id", "acceptance_token"), R),
    Row("system_sdwan_accept_remote_federation_peer", "federation", "sdwan.federation.manage", "",
        ("peering_token",), R),
    Row("system_sdwan_refresh_federation_peer", "federation", "sdwan.federation.manage", "",
        ("federation_peer_id",), A),
    Row("system_sdwan_rotate_intermediate_ca", "federation", "sdwan.federation.manage", "", (), R),
    Row("system_sdwan_regenerate_acceptance_token", "federation", "sdwan.federation.manage", "",
        ("federation_peer_id", "token_ttl_seconds"), R),
    Row("system_sdwan_list_federation_peers", "federation", "sdwan.federation.read", "RO", ("status",), A),
    Row("system_sdwan_get_federation_peer", "federation", "sdwan.federation.read", "RO",
        ("federation_peer_id",), A),
    Row("system_sdwan_verify_federation_handshake", "federation", "sdwan.federation.manage", "",
        ("federation_peer_id",), A),
    Row("system_sdwan_suspend_federation_peer", "federation", "sdwan.federation.manage", "",
        ("federation_peer_id", "reason"), R),
    Row("system_sdwan_resume_federation_peer", "federation", "sdwan.federation.manage", "",
        ("federation_peer_id", "reason"), R),
    Row("system_sdwan_revoke_federation_peer", "federation", "sdwan.federation.manage", "D",
        ("federation_peer_id", "reason"), R),
    Row("system_sdwan_federation_scan", "federation", "sdwan.federation.read", "RO", (), A),
    Row("system_sdwan_issue_node_certificate", "federation", "sdwan.federation.manage", "",
        ("node_name", "csr_pem"), A),
    Row("system_sdwan_get_trust_bundle", "federation", "sdwan.federation.read", "RO", ("include_crls",), A),
    # Vault
    Row("system_vault_store_credential", "vault", "system.credentials.write", "I",
        ("name", "kind", "secret", "metadata"), A),
    Row("system_vault_list_credentials", "vault", "system.credentials.read", "RO", ("kind",), A),
    Row("system_vault_delete_credential", "vault", "system.credentials.write", "D", ("name",), R),
    Row("system_vault_get_pepper_status", "vault", "system.credentials.read", "RO", (), A),
    Row("system_rotate_vault_transit_pepper", "vault", "system.fleet.autonomy", "D",
        ("reencrypt_existing", "batch_size", "wait"), R, sod=True),
    Row("system_vault_get_rotation_job", "vault", "system.credentials.read", "RO", ("job_id",), A),
    Row("system_vault_resume_rotation_job", "vault", "system.fleet.autonomy", "I", ("job_id",), A),
    Row("system_vault_verify_credentials", "vault", "system.credentials.read", "RO", ("account",), A),
    Row("system_vault_finalize_pepper_rotation", "vault", "system.fleet.autonomy", "D",
        ("min_decryption_version",), R),
    Row("system_vault_trim_pepper_key", "vault", "system.fleet.autonomy", "D", None, R, sod=True),
    # Approvals, audit, policy
    Row("system_approvals_list", "approvals", "system.approvals.read", "RO", ("status",), A),
    Row("system_approvals_get", "approvals", "system.approvals.read", "RO", ("approval_id",), A),
    Row("system_approvals_decide", "approvals", "system.approvals.decide", "",
        ("approval_id", "decision", "reason"), A),
    Row("system_approvals_cancel", "approvals", "system.approvals.read", "", ("approval_id", "reason"), A),
    Row("system_approvals_collect_result", "approvals", "system.approvals.read", "", ("approval_id",), A),
    Row("system_audit_query", "audit", "system.audit.read", "RO",
        ("tool", "principal", "since", "limit", "approval_id"), A),
    Row("system_audit_verify", "audit", "system.audit.read", "RO", (), A),
    Row("system_policy_explain", "audit", "system.audit.read", "RO", ("tool", "arguments"), A),
)
# fmt: on

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
        # a read-only tool is idempotent too (the registry sets both; TOOLS.md writes only "RO")
        idempotent=bool({"I", "RO"} & set(row.flags.split())),
        arg_names=None if row.args is None else frozenset(row.args),
    )


def build_catalog(rows: tuple[Row, ...] = ROWS) -> dict[str, ToolFacts]:
    """A policy catalog (tool name -> ToolFacts) from rows transcribed from TOOLS.md."""
    return {r.name: facts(r) for r in rows}


def default_arguments(row: Row) -> dict[str, object]:
    """Arguments as a validated input model would dump them: `force` present and false."""
    return {"force": False} if row.args and "force" in row.args else {}
