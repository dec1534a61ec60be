"""The one Settings object (env prefix FLEET_MCP_), built once by the CLI and passed down."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_POLICY = PACKAGE_DIR / "policies" / "default.yaml"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEET_MCP_", extra="ignore")

    data_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("fleet-mcp")),
        description="Where the SQLite file, master key and git caches live.",
    )
    database_url: str | None = Field(
        default=None, description="sqlite+aiosqlite:///… or postgresql+asyncpg://…; default SQLite in the data dir."
    )
    policy: Path = Field(default=DEFAULT_POLICY, description="Intervention policy file.")
    allow_local_repos: bool = Field(default=False, description="Allow file:// and local-path git repositories.")

    # Who a stdio session acts as.
    account: str = Field(default="default", description="Account of the stdio principal.")
    principal: str = Field(default="local", description="Name of the stdio principal.")
    roles: str = Field(default="admin", description="Comma-separated roles of the stdio principal.")

    # Keyed digests of call arguments (audit rows, approval bindings).
    audit_key: SecretStr | None = Field(
        default=None, description="Secret the audit digest key is derived from (same in every process); "
        "default: the key file.")
    audit_key_file: Path | None = Field(default=None, description="Audit digest key; default data_dir/audit.key "
                                        "(created 0600 on first start).")

    # HTTP transport.
    host: str = Field(default="127.0.0.1", description="Address `serve --transport http` listens on.")
    port: int = Field(default=8765, ge=1, le=65535, description="Port `serve --transport http` listens on.")
    allowed_hosts: str = Field(default="", description="Extra Host header values accepted over HTTP (comma list).")
    allowed_origins: str = Field(default="", description="Origin header values accepted over HTTP (comma list).")
    request_state_key_file: Path | None = Field(
        default=None,
        description="Keys sealing in-client approval state (protocol 2026-07-28), shared by every replica: one "
        "base64 key (>= 32 bytes) per line, the first seals, every line unseals. Default: a key per process.",
    )

    # OAuth 2.1 for HTTP (off unless an issuer is set): fleet-mcp is a protected resource (RFC 9728) that
    # accepts JWT access tokens (or, with an introspection endpoint, opaque ones) minted for `oauth_resource`.
    oauth_issuer: str | None = Field(default=None, description="Authorization server issuer URL; enables OAuth.")
    oauth_resource: str | None = Field(
        default=None, description="This server's canonical resource URI (the /mcp URL clients use); tokens must "
        "carry it as audience (RFC 8707).")
    oauth_jwks_uri: str | None = Field(default=None, description="JWKS URL; default: from the issuer's metadata.")
    oauth_jwks_ttl: float = Field(default=300.0, ge=10, le=86_400, description="Seconds a fetched JWKS is trusted.")
    oauth_algorithms: str = Field(default="RS256,PS256,ES256,ES384,EdDSA",
                                  description="JWS algorithms accepted (comma list; never none or HS*).")
    oauth_leeway: int = Field(default=30, ge=0, le=300, description="Clock skew allowed on exp/nbf/iat (s).")
    oauth_allow_http_loopback: bool = Field(
        default=False, description="Allow http:// issuer/JWKS/introspection URLs on loopback hosts (tests only).")
    oauth_introspection_url: str | None = Field(default=None, description="RFC 7662 endpoint for opaque tokens.")
    oauth_introspection_cache_ttl: float = Field(
        default=30.0, ge=0, le=300,
        description="Seconds an 'active' introspection answer is reused for the same token (never past its exp; "
                    "0: ask every time). A token revoked at the authorization server is accepted at most this long.",
    )
    oauth_client_id: str | None = Field(default=None, description="fleet-mcp's client id at the introspection endpoint.")
    oauth_client_secret: SecretStr | None = Field(
        default=None, description="fleet-mcp's client secret at the introspection endpoint (client_secret_basic).")
    oauth_read_scope: str = Field(default="fleet:read", description="Scope every OAuth request needs ('' = none).")
    oauth_write_scope: str = Field(default="fleet:write",
                                   description="Scope a call of a non-read-only tool needs ('' = none).")
    oauth_account_claim: str = Field(default="fleet_account", description="Claim naming the fleet account.")
    oauth_default_account: str | None = Field(default=None,
                                              description="Account for tokens without the account claim.")
    oauth_name_claims: str = Field(default="preferred_username,sub",
                                   description="Claims tried in order for the principal name (comma list).")
    oauth_roles_claim: str = Field(default="groups", description="Claim holding groups/roles ('scope' works too).")
    oauth_role_map: dict[str, list[str]] = Field(
        default_factory=dict, description='JSON: claim value -> fleet roles, e.g. {"fleet-ops": ["operator"]}; '
        "empty: values that name a role are taken as that role.")

    # Transit (pepper) backend.
    transit: Literal["local", "vault"] = Field(
        default="local", description="Pepper backend: `local` (a keyring in the database under the master key) or "
        "`vault` (Vault/OpenBao transit; plaintext keys never leave it).")
    master_key_file: Path | None = Field(default=None, description="Local transit master key; default data_dir/master.key")
    master_key: SecretStr | None = Field(
        default=None, description="Local transit master key itself (base64, 32 bytes) instead of the key file.")
    vault_addr: str | None = Field(default=None, validation_alias=AliasChoices("FLEET_MCP_VAULT_ADDR", "VAULT_ADDR"),
                                   description="Vault/OpenBao address (also read from VAULT_ADDR).")
    vault_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("FLEET_MCP_VAULT_TOKEN", "VAULT_TOKEN"),
        description="Runtime token (also VAULT_TOKEN): encrypt, decrypt, rewrap, read the key (fleet-mcp-runtime.hcl).",
    )
    vault_role_id: str | None = Field(default=None, description="Runtime AppRole role id (instead of a token).")
    vault_secret_id: SecretStr | None = Field(default=None, description="Runtime AppRole secret id.")
    vault_cacert: Path | None = Field(
        default=None, validation_alias=AliasChoices("FLEET_MCP_VAULT_CACERT", "VAULT_CACERT"),
        description="CA bundle that verifies Vault's TLS certificate (also VAULT_CACERT).",
    )
    vault_skip_verify: bool = Field(default=False, description="Do not verify Vault's TLS certificate (never in "
                                    "production: anyone on the path could read every secret sent to Vault).")
    # Least privilege: used only to create, rotate, reconfigure (min versions) and trim the key; the token
    # above then needs only encrypt/decrypt/rewrap (policies: fleet_mcp/vault/policies/*.hcl).
    vault_admin_token: SecretStr | None = Field(
        default=None, description="Rotation token (fleet-mcp-rotation.hcl): create, rotate, set minimum versions, "
        "trim the key; needed only for rotation and finalize.")
    vault_admin_role_id: str | None = Field(default=None, description="Rotation AppRole role id (instead of a token).")
    vault_admin_secret_id: SecretStr | None = Field(default=None, description="Rotation AppRole secret id.")
    vault_namespace: str | None = Field(default=None, description="Vault Enterprise / OpenBao namespace, if any.")
    transit_mount: str = Field(default="transit", description="Mount path of the transit secrets engine.")
    pepper_key: str = Field(default="fleet-pepper", description="Name of the transit key that encrypts every "
                            "stored secret (the pepper).")
    pepper_backup_min_version: int | None = Field(
        default=None, ge=1,
        description="Oldest pepper key version a backup you may still restore needs; trim refuses to delete it or later.",
    )
    rotation_batch_size: int = Field(default=1000, ge=1, le=10_000, description="Rows per committed rotation batch; Vault requests are chunked to ≤ 250 and halved when too complex.")

    # GitOps.
    git_timeout: float = Field(default=60.0, gt=0, description="Seconds one git fetch may take.")
    max_proposals_per_sync: int = Field(default=25, ge=1, description="Proposals one sync run opens at most; the "
                                        "rest make the run `partial`.")
    drift_interval: float = Field(default=60.0, gt=0, description="Seconds between drift checks of each enabled "
                                  "repository.")
    auto_sync_interval: float | None = Field(default=None, description="Seconds between auto-syncs; off when unset.")

    # Federation.
    federation_token_ttl: int = Field(default=86_400, ge=60, le=7 * 86_400,
                                      description="Seconds a peering token stays valid (at most 7 days).")
    node_cert_hours: int = Field(default=24, ge=1, le=24 * 30, description="Lifetime of issued node certificates.")
    cross_cert_days: int = Field(default=7, ge=1, le=90, description="Lifetime of cross certificates (renewed "
                                 "past half their life while the peer is accepted or active).")
    federation_advertise_url: str | None = Field(
        default=None, description="URL peers dial for this instance's federation endpoint (default https://HOST:PORT)."
    )
    federation_refresh_seconds: int = Field(
        default=300, ge=30, le=3600, description="Seconds between polls of remote instances' trust bundles."
    )
    federation_rate_burst: int = Field(
        default=30, ge=1, le=10_000,
        description="Requests one source address may send the federation endpoint in a burst (per kind: "
        "without a client certificate, and channel requests); more are refused with 429 at once.",
    )
    federation_rate_per_second: float = Field(
        default=1.0, gt=0, le=1000, description="Rate at which a source's federation request budget refills."
    )
    federation_channel_timeout_seconds: float = Field(
        default=10.0, ge=1, le=600,
        description="Bound on each call to another instance over an established channel (bundle poll, "
        "lifecycle push, channel renewal); none of them holds a write transaction while it waits.",
    )
    federation_channel_cert_seconds: int = Field(
        default=365 * 86_400, ge=60, le=2 * 365 * 86_400,
        description="Lifetime of the channel client certificates this instance issues to its peers; each side "
        "renews its own over the channel at two thirds of its life.",
    )

    scheduler: bool = Field(default=True, description="Run background jobs inside `serve`.")
    max_concurrent_calls: int = Field(default=256, ge=1, description="Calls one process runs at once; more are "
                                      "refused as busy (retry after), never queued without limit.")
    max_concurrent_calls_per_principal: int = Field(default=32, ge=1,
                                                    description="Calls one principal may have in progress at once.")
    drain_timeout: float = Field(
        default=30.0, ge=0, le=3600,
        description="On SIGTERM (HTTP): seconds to let in-flight calls finish and background jobs stop at a batch "
        "boundary before the process exits anyway.")
    job_lease_seconds: float = Field(
        default=120.0, gt=0, le=86_400,
        description="A running job whose heartbeat is older than this is taken over by another replica.")
    job_takeover_interval: float = Field(
        default=15.0, gt=0, le=3600,
        description="Seconds between the scheduler ticks that look for abandoned jobs to take over.")
    log_level: str = Field(default="INFO", description="Log level (DEBUG, INFO, WARNING, ERROR); logs go to stderr.")

    @field_validator("data_dir", "policy", "master_key_file", "audit_key_file", "vault_cacert",
                     "request_state_key_file", mode="after")
    @classmethod
    def _expand(cls, v: Path | None) -> Path | None:
        return v.expanduser() if v is not None else None

    @field_validator("oauth_role_map", mode="before")
    @classmethod
    def _role_lists(cls, v: object) -> object:
        if isinstance(v, dict):
            return {k: [r] if isinstance(r, str) else r for k, r in v.items()}
        return v

    @field_validator("oauth_algorithms", mode="after")
    @classmethod
    def _asymmetric_only(cls, v: str) -> str:
        algs = [a.strip() for a in v.split(",") if a.strip()]
        bad = [a for a in algs if a.lower() == "none" or a.upper().startswith("HS")]
        if bad or not algs:
            raise ValueError(f"oauth_algorithms must list asymmetric JWS algorithms only (refused: {bad or 'empty'})")
        return ",".join(algs)

    @cached_property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'fleet.db'}"

    @property
    def effective_master_key_file(self) -> Path:
        return self.master_key_file or self.data_dir / "master.key"

    @property
    def git_cache_dir(self) -> Path:
        return self.data_dir / "git-cache"

    @property
    def role_list(self) -> list[str]:
        return [r.strip() for r in self.roles.split(",") if r.strip()]
