"""The console's own table: sign-in sessions and one-time login links, kept only as digests."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from fleet_mcp.db.base import Base, utcnow


class ConsoleSession(Base):
    """A browser session (kind "session") or an unused one-time login link (kind "link").

    `id` is the SHA-256 digest of the secret the browser holds (cookie or link code); the secret itself is
    never stored. `token_digest` names the fleet token the session acts as: every request re-checks it, so
    revoking the token ends the session at once."""

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    token_digest: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
