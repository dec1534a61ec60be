# fleet-mcp: the server's runtime token (VAULT_TOKEN, or the AppRole FLEET_MCP_VAULT_ROLE_ID/SECRET_ID).
#
# Least privilege: it uses the pepper key and cannot manage it. It encrypts new secrets, decrypts them for
# the server's own use (git credentials, CA keys), rewraps ciphertexts during a rotation (ciphertext in,
# ciphertext out), and reads the key's metadata (versions and policy; never key material: the key is not
# exportable). It can neither rotate, reconfigure, trim nor delete the key: those need the rotation token
# (fleet-mcp-rotation.hcl, FLEET_MCP_VAULT_ADMIN_TOKEN).
#
# Written for the mount "transit" and the key "fleet-pepper" (FLEET_MCP_TRANSIT_MOUNT, FLEET_MCP_PEPPER_KEY);
# change both names here if yours differ. Load with: bao policy write fleet-mcp-runtime fleet-mcp-runtime.hcl

path "transit/encrypt/fleet-pepper" {
  capabilities = ["update"]
}

path "transit/decrypt/fleet-pepper" {
  capabilities = ["update"]
}

path "transit/rewrap/fleet-pepper" {
  capabilities = ["update"]
}

path "transit/keys/fleet-pepper" {
  capabilities = ["read"]
}
