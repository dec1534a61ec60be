"""Per-account generation of live fleet state: a counter every write through `fleet.store` moves."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey
from sqlalchemy.orm import Mapped, mapped_column

from fleet_mcp.db.base import Base, utcnow


class LiveGeneration(Base):
    """Lets the drift sensor see "nothing changed" with one primary-key read, whatever the fleet size."""

    __tablename__ = "fleet_live_generations"

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
