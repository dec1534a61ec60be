"""Vault: the transit (pepper) backends, the credential store and pepper rotation."""
