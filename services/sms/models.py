"""The SMS service's tables: a delivery log for operators ("was my code sent?")."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import DateTime, Index, Integer, MetaData, SmallInteger, String, Table
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    metadata = MetaData()


class Delivery(Base):
    """One delivery attempt; the recipient only as blind index and masked."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Unique per record, made before it is written: a replay of the durable journal
    # (BatchWriter) after a partial write inserts nothing twice. NULL in older rows.
    delivery_id: Mapped[str | None] = mapped_column(
        String(32), nullable=True, index=True, unique=True
    )
    channel: Mapped[str] = mapped_column(String(8))
    recipient_index: Mapped[str] = mapped_column(String(64))
    masked_recipient: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[int] = mapped_column(SmallInteger)
    provider: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_deliveries_recipient_created", "recipient_index", "created_at"),)


deliveries = cast(Table, Delivery.__table__)
