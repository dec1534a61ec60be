"""The vault part of `fleet-mcp demo`: write-only credentials, a pepper rotation queued for a second
person, approved by another principal, rewrapping every ciphertext; then verify and finalize."""

from __future__ import annotations

from typing import Any

import anyio

from fleet_mcp.vault.background import wait_for_launched


async def vault_section(d: Any, *, alice: Any, bob: Any, admin: Any, **_: Any) -> None:
    d.section("Vault: write-only credentials, pepper rotation by two people, finalize")
    for name, kind, meta in (("aws-prod", "api_key", {"owner": "ops"}),
                             ("git-deploy", "git_https", {"owner": "ops", "host": "git.example.com"})):
        await d.call(alice, "alice", "system_vault_store_credential",
                     {"name": name, "kind": kind, "secret": "s3cr3t-" + name, "metadata": meta},
                     show=lambda r: f"stored {r['credential']['name']} at key v{r['credential']['key_version']} "
                                    "(the secret is never returned)")
    await d.call(admin, "root", "system_vault_get_pepper_status", {},
                 show=lambda r: f"key v{r['latest_version']}, ciphertexts by version {r['ciphertexts_by_version']}")
    print("\n  Rotation rewraps every secret: the policy wants a second person, so it is queued.")
    queued = await d.call(admin, "root", "system_rotate_vault_transit_pepper", {}, expect_error=True)
    approval_id = queued["approval_id"]
    decided = await d.call(bob, "bob", "system_approvals_decide",
                           {"approval_id": approval_id, "decision": "approve", "reason": "quarterly rotation"},
                           show=lambda r: f"approved by bob; executed once as root: {r['approval']['status']}")
    job_id = decided["result"]["job"]["id"]
    with anyio.fail_after(60):
        # The approval launched the job in this process once it committed: wait for that run to end.
        await wait_for_launched(job_id)
    await d.call(admin, "root", "system_vault_get_rotation_job", {"job_id": job_id},
                 show=lambda r: f"job {job_id} {r['job']['status']}: v{r['job']['from_version']} → "
                                f"v{r['job']['to_version']}, {r['job']['rewrapped']}/{r['job']['total']} rewrapped")
    await d.call(admin, "root", "system_vault_verify_credentials", {},
                 show=lambda r: f"{r['ok']}/{r['checked']} decrypt, {r['failed']} failed (no secret returned)")
    await d.call(admin, "root", "system_vault_finalize_pepper_rotation", {},
                 show=lambda r: f"min_decryption_version={r['min_decryption_version']} "
                                f"(refused={r['refused']}, {r['remaining_below']} left below)")
