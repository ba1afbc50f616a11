"""Hospital IT's store (node/hl7): messages taken by the MLLP listener, orders by accession number, their retention.

Part of :class:`node.store.state.Store`. :meth:`HospitalItPart.record_hl7_message` writes a message, its order
and whatever the message type's handlers write in one transaction, before the listener answers AA.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine

from node.store.schema import hl7_messages, hl7_orders, now, studies

#: order fields a later message for the same accession replaces only when it gives them
ORDER_TEXT_FIELDS = ("patient_id", "patient_issuer", "placer_number", "filler_number", "order_status", "reason",
                     "clinical_info", "procedure", "study_uid")


def order_matched(accession: str, study_uid: str) -> Callable[[Connection], None]:
    """A write (fn(connection)) recording that ``study_uid`` used the order of ``accession``: retention then
    purges the order with the study. For :class:`node.models.base.JobOutput` ``writes``."""
    def write(conn: Connection) -> None:
        conn.execute(update(hl7_orders).where(hl7_orders.c.accession == accession)
                     .values(matched_study_uid=study_uid, matched_at=now()))
    return write


class HospitalItPart:
    """HL7 v2 messages and orders."""

    engine: Engine

    def find_hl7_message(self, sending_application: str, control_id: str, text: str) -> int | None:
        """The id of a message already taken with the same sender, MSH-10 and text (a sender's resend), or None."""
        with self.engine.connect() as conn:
            return conn.execute(select(hl7_messages.c.id).where(and_(
                hl7_messages.c.sending_application == sending_application, hl7_messages.c.control_id == control_id,
                hl7_messages.c.text == text)).limit(1)).scalar()

    def record_hl7_message(self, message: dict[str, Any], orders: Sequence[dict[str, Any]] = (),
                           handlers: Sequence[Callable[[Connection, int], None]] = ()) -> int:
        """Keep one message (and its orders, and its handlers' writes) in one transaction; returns its id.

        ``orders``: ``hl7_orders`` fields from this message (``accession`` and ``order_control`` required); an order
        already stored for the accession is updated with the fields given.
        ``handlers``: fn(connection, message id), run inside the transaction (node/hl7/handlers.py).
        """
        t = now()
        with self.engine.begin() as conn:
            message_id = int(conn.execute(insert(hl7_messages).values(received_at=t, **message))
                             .inserted_primary_key[0])
            for order in orders:
                old = conn.execute(select(hl7_orders).where(hl7_orders.c.accession == order["accession"])).mappings().first()
                values = {k: v for k, v in order.items() if v not in (None, "") or k == "order_control"}
                if old is None:
                    conn.execute(insert(hl7_orders).values({**{k: "" for k in ORDER_TEXT_FIELDS}, **values,
                                                            "message_id": message_id, "received_at": t,
                                                            "updated_at": t}))
                else:
                    conn.execute(update(hl7_orders).where(hl7_orders.c.accession == order["accession"])
                                 .values(**values, message_id=message_id, updated_at=t))
            for handler in handlers:
                handler(conn, message_id)
        return message_id

    def order_for_accession(self, accession: str) -> dict[str, Any] | None:
        """The order stored for an accession number (whatever its order control), or None."""
        if not accession:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(select(hl7_orders).where(hl7_orders.c.accession == accession)).mappings().first()
        return dict(row) if row else None

    def purge_hl7(self, keep_messages_seconds: float, keep_unmatched_orders_seconds: float) -> tuple[int, int]:
        """Retention: messages older than ``keep_messages_seconds``; orders whose study was purged, or that no
        study matched within ``keep_unmatched_orders_seconds``. Returns (messages, orders) deleted."""
        t = now()
        with self.engine.begin() as conn:
            messages = conn.execute(delete(hl7_messages).where(
                hl7_messages.c.received_at < t - keep_messages_seconds)).rowcount
            held = select(studies.c.study_uid)
            orders = conn.execute(delete(hl7_orders).where(or_(
                and_(hl7_orders.c.matched_study_uid.is_not(None), hl7_orders.c.matched_study_uid.not_in(held)),
                and_(hl7_orders.c.matched_study_uid.is_(None),
                     hl7_orders.c.updated_at < t - keep_unmatched_orders_seconds)))).rowcount
        return messages, orders

    def hl7_messages_of(self, message_type: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest messages taken (of one type, e.g. ``ORU^R01``), newest first."""
        q = select(hl7_messages).order_by(hl7_messages.c.id.desc()).limit(limit)
        if message_type:
            q = q.where(hl7_messages.c.message_type == message_type)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]
