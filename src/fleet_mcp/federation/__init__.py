"""SD-WAN federation: per-account CAs, one-time acceptance tokens, cross-signing, verified mTLS, scans."""
