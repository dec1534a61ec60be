"""Which principal an identity provider's subject is: one row per (issuer, subject, account)."""

from __future__ import annotations

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fleet_mcp.db.base import Base, TimestampMixin


class OAuthIdentity(TimestampMixin, Base):
    """Binds an OAuth subject to the principal created for it on first use. A principal name is never taken
    over by another subject (or by a static-token principal): a second subject asking for the same name in the
    same account is refused, so separation of duties keeps meaning "a different person"."""

    __tablename__ = "oauth_identities"
    __table_args__ = (UniqueConstraint("issuer", "subject", "account_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    issuer: Mapped[str] = mapped_column(String(500))
    subject: Mapped[str] = mapped_column(String(255))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    principal_id: Mapped[int] = mapped_column(ForeignKey("principals.id", ondelete="CASCADE"), unique=True)
