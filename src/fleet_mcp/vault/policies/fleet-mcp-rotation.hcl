# fleet-mcp: the rotation token (FLEET_MCP_VAULT_ADMIN_TOKEN, or the AppRole
# FLEET_MCP_VAULT_ADMIN_ROLE_ID/SECRET_ID). fleet-mcp uses it only to create the pepper key on first start,
# rotate it, change its min_decryption/min_encryption versions (finalize) and trim old versions.
#
# Least privilege: it manages the key and cannot use it — no encrypt, decrypt or rewrap, so a leak of this
# token reveals no secret. It cannot delete the key (deletion_allowed stays false; config is needed for the
# min versions). Keep it out of the everyday environment if you can: only the rotation job, finalize and
# trim need it.
#
# Written for the mount "transit" and the key "fleet-pepper" (FLEET_MCP_TRANSIT_MOUNT, FLEET_MCP_PEPPER_KEY);
# change both names here if yours differ. Load with: bao policy write fleet-mcp-rotation fleet-mcp-rotation.hcl

path "transit/keys/fleet-pepper" {
  capabilities = ["create", "read", "update"]
}

path "transit/keys/fleet-pepper/rotate" {
  capabilities = ["update"]
}

path "transit/keys/fleet-pepper/config" {
  capabilities = ["update"]
}

path "transit/keys/fleet-pepper/trim" {
  capabilities = ["update"]
}
